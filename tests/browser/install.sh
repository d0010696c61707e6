#!/usr/bin/env bash
# Installs what the browser test (services/collector/tests/browser.rs) drives, into this folder:
#   node_modules/   @segment/analytics-next (analytics.js, its UMD bundles) and playwright-core
#                   (drives the system's Chromium over CDP; downloads no browser), from npm at
#                   the versions in package-lock.json
# and checks that Debian's `chromium` is there (deploy/local/install-deps.sh installs it).
# Idempotent and quiet when everything is installed; fails loudly when something is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

chromium="${CORRAL_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
    echo "tests/browser/install.sh: $chromium is missing; run deploy/local/install-deps.sh (apt-get install chromium) or set CORRAL_CHROMIUM" >&2
    exit 1
fi

stamp="$here/node_modules/.corral-installed"
if [[ ! -f "$stamp" ]] || ! cmp -s package-lock.json "$stamp"; then
    command -v npm >/dev/null || { echo "tests/browser/install.sh: npm is missing (apt-get install nodejs npm)" >&2; exit 1; }
    # playwright-core never downloads browsers; this only makes that explicit.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null
    cp package-lock.json "$stamp"
fi
for f in node_modules/@segment/analytics-next/dist/umd/index.js node_modules/@segment/analytics-next/dist/umd/standalone.js node_modules/playwright-core/package.json; do
    [[ -f "$f" ]] || { echo "tests/browser/install.sh: $f is missing after npm ci" >&2; exit 1; }
done

#!/usr/bin/env bash
# Installs Segment's real client libraries into this folder for the collector's end-to-end tests:
#   .venv/          segment-analytics-python (PyPI, version in requirements.txt)
#   node_modules/   @segment/analytics-node (npm, version in package-lock.json)
# Idempotent and quiet when everything is already installed. Needs python3 (with venv) and npm.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

venv="$here/.venv"
stamp_py="$venv/.corral-installed"
if [[ ! -f "$stamp_py" ]] || ! cmp -s requirements.txt "$stamp_py"; then
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv" || {
            echo "python3 -m venv failed; install python3-venv (deploy/local/install-deps.sh)" >&2
            exit 1
        }
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt "$stamp_py"
fi

stamp_js="$here/node_modules/.corral-installed"
if [[ ! -f "$stamp_js" ]] || ! cmp -s package-lock.json "$stamp_js"; then
    command -v npm >/dev/null || { echo "npm is missing (apt-get install nodejs npm)" >&2; exit 1; }
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    cp package-lock.json "$stamp_js"
fi

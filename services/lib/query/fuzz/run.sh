#!/usr/bin/env bash
# Runs the parser fuzz target briefly (for `make test-fuzz`).
#
#   services/lib/query/fuzz/run.sh [SECONDS]     # default 60, or $FUZZ_SECONDS
#
# Needs a nightly toolchain and cargo-fuzz; installs either when missing. If that is
# impossible (offline, no rustup), it FALLS BACK to running the same harness function
# (corral_query::fuzz::harness) over proptest-generated input instead; that fallback is not
# coverage-guided, and the script says so loudly.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
secs="${1:-${FUZZ_SECONDS:-60}}"

fallback() {
    echo "run.sh: cargo-fuzz is not usable ($1)." >&2
    echo "run.sh: FALLBACK: running corral_query::fuzz::harness over ${FALLBACK_CASES:-20000} proptest cases (not coverage-guided fuzzing)." >&2
    cd "$root"
    PROPTEST_CASES="${FALLBACK_CASES:-20000}" \
        cargo test -p corral-query --test properties -- --exact fuzz_harness_fallback
    exit $?
}

command -v rustup >/dev/null 2>&1 || fallback "rustup not found"
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "run.sh: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal || fallback "cannot install nightly"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked || fallback "cannot install cargo-fuzz"
fi

cd "$here"
cargo +nightly fuzz build parse || fallback "the fuzz target does not build"
mkdir -p corpus/parse
cp -n seeds/* corpus/parse/ 2>/dev/null || true
# A crash exits non-zero and leaves the input under artifacts/parse/.
exec cargo +nightly fuzz run parse corpus/parse -- -max_total_time="$secs" -max_len=4096

#!/usr/bin/env bash
# Ensures the system packages Corral's Rust build and tests need, on a Debian machine of this kind.
# Idempotent and quiet when nothing is missing; runs `apt-get update` once, and only when something
# has to be installed. Works as root (no sudo needed) or as a user with sudo.
#
#   deploy/local/install-deps.sh          install what is missing
#   deploy/local/install-deps.sh --check  only report what is missing (exit 1 if anything is)
#
# The Kafka jars are not installed here: `deploy/local/kafka.sh fetch` fetches them with Maven.
set -euo pipefail

CHECK_ONLY=0
case "${1:-}" in
  --check) CHECK_ONLY=1 ;;
  "") ;;
  -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install-deps.sh: unknown argument '$1' (use --check or nothing)" >&2; exit 2 ;;
esac

log() { echo "install-deps.sh: $*" >&2; }

installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]; }

java_major() {
  command -v java >/dev/null 2>&1 || { echo 0; return; }
  local v
  v="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  v="${v#1.}"
  echo "${v%%[.+-]*}" | grep -E '^[0-9]+$' || echo 0
}

missing=()
need_pkg() { installed "$1" || missing+=("$1"); }

# build tools (a tool already on PATH from elsewhere counts as present)
need_pkg build-essential
need_pkg pkg-config
command -v cmake >/dev/null 2>&1 || need_pkg cmake
# bindgen (rocksdb, rdkafka) needs libclang; rdkafka's build wants curl headers
need_pkg libclang-dev
need_pkg libcurl4-openssl-dev
# librdkafka's TLS and SASL (SCRAM, PLAIN) link the system OpenSSL; the TLS tests make their CA
# and certificates with the openssl command and the JDK's keytool
need_pkg libssl-dev
need_pkg openssl
# the local Kafka broker: Maven fetches the jars, Kafka 4 needs Java 17+
command -v mvn >/dev/null 2>&1 || need_pkg maven
if [[ "$(java_major)" -lt 17 ]]; then need_pkg openjdk-17-jdk-headless; fi
# Python test clients run in a venv
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_pkg python3-venv
fi

# the browser test (services/collector/tests/browser.rs): analytics.js in headless Chromium
command -v chromium >/dev/null 2>&1 || need_pkg chromium

# the image (deploy/container/build.sh) and the chart-to-process test: podman with runc, and a
# Debian base made with mmdebstrap (no container registry is reachable on these machines)
need_pkg podman
need_pkg runc
need_pkg mmdebstrap

if ! command -v cargo >/dev/null 2>&1; then
  log "warning: cargo is not on PATH (on this kind of machine Rust comes from rustup, preinstalled)"
fi

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ((CHECK_ONLY)); then
  echo "missing: ${missing[*]}"
  exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    log "missing ${missing[*]}, and not root and no sudo to install them"; exit 1
  fi
fi
command -v apt-get >/dev/null 2>&1 || { log "missing ${missing[*]}, and no apt-get"; exit 1; }

log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# java may just have been installed next to an older one: say which is on PATH
if [[ " ${missing[*]} " == *" openjdk-17-jdk-headless "* && "$(java_major)" -lt 17 ]]; then
  log "warning: openjdk-17 is installed but 'java' on PATH is still older; set JAVA_HOME=/usr/lib/jvm/java-17-openjdk-$(dpkg --print-architecture)"
fi
log "done"

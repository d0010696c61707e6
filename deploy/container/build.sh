#!/usr/bin/env bash
# Builds Corral's image (deploy/container/Containerfile) with podman on a machine of this kind:
# no container registry, so the Debian base is made with mmdebstrap and imported once.
#
#   deploy/container/build.sh --from-host   copy target/debug binaries into the runtime stage (quick; tests)
#   deploy/container/build.sh --from-source compile in the build stage (BUILD_BASE must exist locally)
#   deploy/container/build.sh --print-env   the podman settings, for `eval` (CONTAINERS_CONF, PODMAN)
#
# Variables: CORRAL_IMAGE (default localhost/corral:dev), BIN_DIR (default target/debug),
# RUNTIME_BASE (default localhost/corral-base:bookworm, made here when missing),
# BUILD_BASE (default docker.io/library/rust:1-bookworm, for --from-source).
#
# podman runs with runc, the cgroupfs manager and a containers.conf without default ulimits
# (crun and the default RLIMIT settings are refused on these machines); `podman_cmd` below is
# the one way scripts here call podman.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/deploy/container"
image="${CORRAL_IMAGE:-localhost/corral:dev}"
bin_dir="${BIN_DIR:-$root/target/debug}"
runtime_base="${RUNTIME_BASE:-localhost/corral-base:bookworm}"
build_base="${BUILD_BASE:-docker.io/library/rust:1-bookworm}"
work="$root/.run/container"
BINARIES=(corral-collector corral-validator corral-identity corral-compute corral-fanout corralctl)
# what the binaries link (ldd): libssl3, libstdc++6, libgcc-s1, zlib1g; plus ca-certificates
BASE_PACKAGES="ca-certificates,libssl3,libstdc++6,libgcc-s1,zlib1g"

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

mkdir -p "$work"
conf="$work/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' >"$conf"
export CONTAINERS_CONF="$conf"
podman_cmd() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

need_tools() {
  local t
  for t in podman runc mmdebstrap; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing: run deploy/local/install-deps.sh"
  done
}

ensure_base() {
  if podman_cmd image exists "$runtime_base"; then return; fi
  [[ "$runtime_base" == localhost/corral-base:* ]] || die "RUNTIME_BASE $runtime_base is not in podman's store"
  local tar="$work/base-bookworm.tar" t0=$SECONDS
  log "making the Debian bookworm base with mmdebstrap (about a minute): $runtime_base"
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
    bookworm "$tar" >&2
  podman_cmd import --quiet "$tar" "$runtime_base" >/dev/null
  rm -f "$tar"
  log "base ready in $((SECONDS - t0)) s"
}

from_host() {
  local ctx="$work/context" b
  rm -rf "$ctx"; mkdir -p "$ctx/bin"
  for b in "${BINARIES[@]}"; do
    [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b is missing: run 'cargo build --workspace --bins' (make build) first"
    # debug info only: the code is the one the tests ran
    objcopy --strip-debug "$bin_dir/$b" "$ctx/bin/$b"
  done
  podman_cmd build --quiet -f "$here/Containerfile" \
    --build-arg RUNTIME_BASE="$runtime_base" --build-arg BINARIES=prebuilt \
    --target runtime -t "$image" "$ctx" >/dev/null
}

from_source() {
  podman_cmd image exists "$build_base" || die "BUILD_BASE $build_base is not in podman's store (no registry here); import a Rust image or set BUILD_BASE"
  podman_cmd build -f "$here/Containerfile" \
    --build-arg RUNTIME_BASE="$runtime_base" --build-arg BUILD_BASE="$build_base" --build-arg BINARIES=build \
    --target runtime -t "$image" "$root"
}

case "${1:-}" in
  --print-env)
    echo "export CONTAINERS_CONF=$conf"
    echo "PODMAN='podman --runtime runc --cgroup-manager=cgroupfs'"
    exit 0 ;;
  --from-host | "") need_tools; ensure_base; t0=$SECONDS; from_host ;;
  --from-source) need_tools; ensure_base; t0=$SECONDS; from_source ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (--from-host, --from-source, --print-env)" ;;
esac
# The image this tag named before is now dangling: drop it, or each rebuild keeps half a gigabyte.
podman_cmd image prune --force >/dev/null || true
size="$(podman_cmd image inspect --format '{{.Size}}' "$image")"
log "built $image in $((SECONDS - t0)) s, $((size / 1000000)) MB"

#!/usr/bin/env bash
# Measures the image and the chart's pods for BENCHMARKS.md: the image's size, and how long a
# stream pod (identity, as helm/corral renders it with ci/minimal-values.yaml) takes from
# `podman run` to ready on /readyz
# (a stream pod is ready once its partitions are restored):
#   (1) with no state (a new group: nothing to restore),
#   (2) with BENCH_STATE_MB of changelog (default 1024) and an empty disk: a full restore, as a
#       pod with an emptyDir or a new PVC does,
#   (3) again with the disk of (2) kept: what a restarted pod with its PVC restores.
#
#   deploy/container/bench.sh        (needs make build, the local broker; about 3 minutes)
#
# The changelog is filled with Kafka's ConsoleProducer (BENCH_VALUE_BYTES, default 1000, per
# record, random so incompressible, distinct keys) into identity's graph changelog (its coordinator's
# store) before (2). The validator has no changelog to fill: events.valid logs its store. Topics are deleted after.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
chart="$root/helm/corral"
cache="${CORRAL_CACHE:-${HOME:-/root}/.cache/corral}"
helm="$cache/helm-${HELM_VERSION:-v3.22.0}/helm"
py="$cache/chart-venv/bin/python"
state_mb="${BENCH_STATE_MB:-1024}"
value_bytes="${BENCH_VALUE_BYTES:-1000}"
run="rb$(date +%s)"
work="$root/.run/container-bench/$run"
bootstrap="127.0.0.1:${KAFKA_PORT:-9092}"
port="${BENCH_ADMIN_PORT:-19400}"
mkdir -p "$work/state"

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
eval "$("$root/deploy/container/build.sh" --print-env)"
[[ -x "$helm" && -x "$py" ]] || "$root/helm/test.sh" --install
"$root/deploy/local/kafka.sh" status >/dev/null || die "no broker on $bootstrap"

cleanup() {
  $PODMAN rm -f -t 5 "$run-pod" "$run-setup" >/dev/null 2>&1 || true
  "$root/deploy/local/kafka.sh" topics-cli --delete --topic "$run\\..*" >/dev/null 2>&1 || true
  rm -rf "$work/state"
}
trap cleanup EXIT

"$root/deploy/container/build.sh" --from-host
size="$($PODMAN image inspect --format '{{.Size}}' localhost/corral:dev)"

"$helm" template corral "$chart" --namespace corral --kube-version 1.33.0 -f "$chart/ci/minimal-values.yaml" \
  --set kafka.bootstrapServers="$bootstrap" --set-string kafka.topicPrefix="$run." \
  --set identity.applicationId="$run-identity" --set adminPort="$port" >"$work/render.yaml"
echo '{}' >"$work/secrets.json"
spec() { "$py" "$root/helm/tests/pod_to_podman.py" "$work/render.yaml" "$1" "$2" --secrets "$work/secrets.json" \
  --files "$work/files" --container-name "$run-$3" | "$py" -c 'import json,sys; sys.stdout.write("\0".join(json.load(sys.stdin)["argv"]) + "\0")'; }
mapfile -d '' -t job < <(spec Job corral-setup setup)
mapfile -d '' -t stream_pod < <(spec StatefulSet corral-identity pod)
$PODMAN run --rm "${job[@]}" >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; die "setup job failed"; }

start_to_ready() { # label [--keep-disk]: prints seconds from podman run to /readyz 200
  local argv=("${stream_pod[@]}") i
  if [[ "${2:-}" == --keep-disk ]]; then
    for i in "${!argv[@]}"; do
      [[ "${argv[$i]}" == /var/lib/corral/state:rw,U ]] && argv[i]="$work/state:/var/lib/corral/state:U" && argv[i - 1]=--volume
    done
  fi
  local t0 t1
  t0="$(date +%s.%N)"
  $PODMAN run -d "${argv[@]}" >/dev/null
  until curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz"; do
    [[ "$($PODMAN inspect -f '{{.State.Running}}' "$run-pod")" == true ]] || { $PODMAN logs "$run-pod" | tail; die "$1: exited"; }
    sleep 0.1
  done
  t1="$(date +%s.%N)"
  restored="$(curl -fs "http://127.0.0.1:$port/metrics" | awk '/^corral_state_restored_records_total/ {s += $NF} END {print s + 0}')"
  $PODMAN stop -t 60 "$run-pod" >/dev/null
  $PODMAN rm "$run-pod" >/dev/null
  python3 -c "print(f'{$t1 - $t0:.2f} $restored')"
}

read -r empty_s _ < <(start_to_ready empty); [[ -n "$empty_s" ]] || die "(1) failed"
log "(1) no state: ready in $empty_s s"

records=$(( state_mb * 1024 * 1024 / (value_bytes + 12) ))
changelog="$run.$run-identity.graph-changelog"
log "filling $changelog with $records records of $value_bytes bytes ($state_mb MB)"
t0=$SECONDS
python3 -c "
import base64, os, sys
n = $value_bytes
out = sys.stdout
for i in range($records):
    # random bytes, so neither Kafka nor RocksDB can compress the state away
    out.write(f'k{i:010d}\t{base64.b64encode(os.urandom(n * 3 // 4 + 3)).decode()[:n]}\n')
" | "$root/deploy/local/kafka.sh" run org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$bootstrap" \
  --topic "$changelog" --property parse.key=true --property key.separator=$'\t' \
  --producer-property acks=all --producer-property linger.ms=20 --producer-property batch.size=1048576 \
  --producer-property max.request.size=4194304 >/dev/null
log "filled in $((SECONDS - t0)) s"

read -r full_s full_records < <(start_to_ready full-restore --keep-disk); [[ -n "$full_s" ]] || die "(2) failed"
log "(2) empty disk, $state_mb MB changelog: ready in $full_s s, $full_records records restored"
du_mb="$(du -sm "$work/state" | cut -f1)"
read -r kept_s kept_records < <(start_to_ready kept-disk --keep-disk); [[ -n "$kept_s" ]] || die "(3) failed"
log "(3) disk kept: ready in $kept_s s, $kept_records records restored"

echo "image localhost/corral:dev size_mb=$((size / 1000000))"
echo "start_to_ready empty_state_s=$empty_s"
echo "start_to_ready full_restore state_mb=$state_mb records=$full_records rocksdb_mb=$du_mb s=$full_s mb_per_s=$(python3 -c "print(f'{$state_mb / $full_s:.1f}')")"
echo "start_to_ready kept_disk s=$kept_s"

#!/usr/bin/env bash
# The whole pipeline under load (`make bench`, part `pipeline`): the five services of `make up`
# (release build) with the example tracking plan, audiences and computed traits on the bench's
# broker; collector-loadgen POSTs PIPELINE_MESSAGES track calls in batches of 100; the figure is
# events/s from the first request to the last event compute consumed, with each service's
# CPU-seconds per 1,000 events and the records the services wrote per event.
#
# Prints `pipeline ...` lines; bench.sh sets CORRAL_KAFKA_BOOTSTRAP to its fresh broker.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
messages="${PIPELINE_MESSAGES:-200000}"
bin=target/release
log() { echo "bench-pipeline.sh: $*" >&2; }

cargo build --release --workspace --bins >&2
export CORRAL_BIN_DIR="$root/$bin"
run_dir="$root/.run/services"
# Fresh state: the bench broker is new, so is every service's state.
CORRAL_BIN_DIR="$root/$bin" deploy/local/services.sh stop >/dev/null 2>&1 || true
rm -rf "$root/.run/state"
"$bin/corralctl" topics apply --manifest deploy/topics.yaml >&2
"$bin/corralctl" plans apply examples/tracking-plan.yaml >&2
"$bin/corralctl" audiences apply examples/definitions.yaml >&2
deploy/local/services.sh start >&2
trap 'deploy/local/services.sh stop >/dev/null 2>&1 || true' EXIT

# name -> admin port, as deploy/local/services.sh starts them.
declare -A admin=([collector]=9101 [validator]=9102 [identity]=9103 [compute]=9104 [fanout]=9105)
sample() { # port metric-line-filter -> sum of matching samples
  curl -fsS "127.0.0.1:$1/metrics" | grep -E "^$2" | awk '{s += $NF} END {printf "%.0f", s}'
}
cpu_ticks() { # pid -> utime + stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
declare -A cpu_before
for s in "${!admin[@]}"; do cpu_before[$s]="$(cpu_ticks "$(cat "$run_dir/$s.pid")")"; done
produced_before="$(for s in validator identity compute fanout; do sample "${admin[$s]}" 'corral_kafka_records_produced_total'; echo; done | awk '{s += $1} END {print s}')"

start_ns="$(date +%s%N)"
"$bin/collector-loadgen" --target 127.0.0.1:8080 --pid "$(cat "$run_dir/collector.pid")" \
  --write-key corral-demo --batch-requests $((messages / 100)) --single-requests 0 | sed 's/^/pipeline collector-loadgen /'

# Done when compute's consumed count of events.resolved stops growing for 5 s (every message
# that passed the plan reached it); the end is the last time it grew.
last=-1 last_change_ns="$start_ns" still=0
while ((still < 50)); do
  now="$(sample "${admin[compute]}" 'corral_kafka_records_consumed_total\{[^}]*events\.resolved')"
  if [[ "$now" != "$last" ]]; then last="$now" last_change_ns="$(date +%s%N)" still=0; else still=$((still + 1)); fi
  sleep 0.1
done
seconds="$(awk -v a="$start_ns" -v b="$last_change_ns" 'BEGIN {printf "%.2f", (b - a) / 1e9}')"
raw="$(sample "${admin[validator]}" 'corral_kafka_records_consumed_total\{[^}]*events\.raw')"
produced_after="$(for s in validator identity compute fanout; do sample "${admin[$s]}" 'corral_kafka_records_produced_total'; echo; done | awk '{s += $1} END {print s}')"
# Per event sent: events.raw consumption also counts what the validator forwards back to it, so
# the denominator is the number of calls sent, not what was read.
per_event="$(awk -v p="$((produced_after - produced_before))" -v n="$messages" 'BEGIN {printf "%.2f", (p + n) / n}')"
echo "pipeline end_to_end messages=$messages raw_consumed=$raw resolved_consumed_by_compute=$last seconds=$seconds events_per_sec=$(awk -v n="$messages" -v s="$seconds" 'BEGIN {printf "%.0f", n / s}') records_written_per_event=$per_event"
tck="$(getconf CLK_TCK)"
for s in collector validator identity compute fanout; do
  after="$(cpu_ticks "$(cat "$run_dir/$s.pid")")"
  awk -v s="$s" -v a="$after" -v b="${cpu_before[$s]}" -v t="$tck" -v n="$messages" \
    'BEGIN {printf "pipeline cpu service=%s cpu_seconds=%.1f cpu_seconds_per_1000_events=%.3f\n", s, (a - b) / t, (a - b) / t / n * 1000}'
done

#!/usr/bin/env bash
# The whole pipeline under load (`make bench`, part `pipeline`): the five services of `make up`
# (release build) with the example tracking plan, audiences and computed traits on the bench's
# broker.
#
# - Baseline, same run, before the services start: the runtime's exactly-once pass-through
#   (corral-loadgen, 6 partitions, 1 KB records, 100 ms commits, records/s) and the latency of one
#   exactly-once hop at the latency rate (what each of the pipeline's hops costs at least).
# - PIPELINE_RUNS (3) runs on the same running stack for each of three loads: collector-loadgen
#   POSTs PIPELINE_MESSAGES track calls of 5,000 users in batches of 100, with one anonymous id per
#   user and run (`per-user`) or a new one on every call (`unique`), of `Product Added` (not in
#   the example plan: an `Unplanned Event` violation per call), or, in `planned`, per-user calls
#   of the plan's `Session Started` and `Feature Used`, which the example definitions read; events/s from the first request to the last event compute
#   consumed, each service's CPU-seconds per 1,000 events, the records the services wrote per
#   event. The summary gives the median with min and max, and the ratio (events/s x records
#   written per event) / pass-through records/s: how close the pipeline comes to what the broker
#   and the runtime allow on this machine.
# - Latency, PIPELINE_RUNS runs: pipeline-latency sends PIPELINE_LATENCY_RATE (5,000) events/s for
#   20 s, 20 of them per second from new (or, second, returning) users who enter the audience `bench_latency`
#   (deploy/local/bench/); p50/p99 from the HTTP request to the committed membership record and
#   to the webhook request.
#
# PIPELINE_ONLY="throughput latency" picks the halves, PIPELINE_LOADS the loads. Prints `pipeline ...` lines; bench.sh sets
# CORRAL_KAFKA_BOOTSTRAP to its fresh broker.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
messages="${PIPELINE_MESSAGES:-200000}"
runs="${PIPELINE_RUNS:-3}"
only="${PIPELINE_ONLY:-throughput latency}" # which halves to run
want() { [[ " $only " == *" $1 "* ]]; }
latency_rate="${PIPELINE_LATENCY_RATE:-5000}"
bin=target/release
log() { echo "bench-pipeline.sh: $*" >&2; }

cargo build --release --workspace --bins >&2
log "baseline: the runtime's exactly-once pass-through and its latency per hop at $latency_rate records/s"
baseline="$("$bin/corral-loadgen" --parts throughput,latency --partitions 6 --records 300000 \
  --latency-rate "$latency_rate" | tee /dev/stderr)"
passthrough="$(sed -n 's/.*commit_interval_ms=100 .*records_per_sec=\([0-9]*\).*/\1/p' <<<"$baseline" | head -1)"
echo "pipeline baseline passthrough_records_per_sec=$passthrough"
echo "pipeline baseline hop_latency $(grep -m1 '^runtime latency' <<<"$baseline" | cut -d' ' -f3-)"
export CORRAL_BIN_DIR="$root/$bin"
run_dir="$root/.run/services"
# Fresh state: the bench broker is new, so is every service's state.
CORRAL_BIN_DIR="$root/$bin" deploy/local/services.sh stop >/dev/null 2>&1 || true
rm -rf "$root/.run/state"
"$bin/corralctl" topics apply --manifest deploy/topics.yaml >&2
"$bin/corralctl" plans apply examples/tracking-plan.yaml >&2
"$bin/corralctl" audiences apply examples/definitions.yaml >&2
# The five services of the pipeline only (make up also starts corral-profiles, a reader).
deploy/local/services.sh start collector validator identity compute fanout >&2
trap 'deploy/local/services.sh stop >/dev/null 2>&1 || true' EXIT

# name -> admin port, as deploy/local/services.sh starts them.
declare -A admin=([collector]=9101 [validator]=9102 [identity]=9103 [compute]=9104 [fanout]=9105)
sample() { # port metric-line-filter -> sum of matching samples
  # A labelled series appears with its first sample: none yet counts as 0.
  curl -fsS "127.0.0.1:$1/metrics" | { grep -E "^$2" || true; } | awk '{s += $NF} END {printf "%.0f", s}'
}
cpu_ticks() { # pid -> utime + stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
median() { sort -n | awk '{v[NR] = $1} END {printf "median=%s min=%s max=%s", v[int((NR + 1) / 2)], v[1], v[NR]}'; }
tck="$(getconf CLK_TCK)"
# per-user: one anonymous id per user and run (a browser's), so most events carry identifiers
# identity already linked; unique: a new anonymous id on every message (the first figures' load,
# every event new to identity).
declare -A load_flags=([per-user]="--anonymous-ids per-user --events product"
  [planned]="--anonymous-ids per-user --events planned" [unique]="--anonymous-ids unique --events product")
want throughput && for workload in ${PIPELINE_LOADS:-per-user planned unique}; do
: >"$run_dir/pipeline-rates" ; : >"$run_dir/pipeline-records"
for run in $(seq 1 "$runs"); do
  declare -A cpu_before
  for s in "${!admin[@]}"; do cpu_before[$s]="$(cpu_ticks "$(cat "$run_dir/$s.pid")")"; done
  produced_before="$(for s in validator identity compute fanout; do sample "${admin[$s]}" 'corral_kafka_records_produced_total'; echo; done | awk '{s += $1} END {print s}')"
  resolved_before="$(sample "${admin[compute]}" 'corral_kafka_records_consumed_total\{[^}]*events\.resolved')"

  start_ns="$(date +%s%N)"
  "$bin/collector-loadgen" --target 127.0.0.1:8080 --pid "$(cat "$run_dir/collector.pid")" \
    --write-key corral-demo --batch-requests $((messages / 100)) --single-requests 0 ${load_flags[$workload]} \
    | sed "s/^/pipeline workload=$workload run=$run collector-loadgen /"

  # Done when compute's consumed count of events.resolved stops growing for 5 s (every message
  # that passed the plan reached it); the end is the last time it grew.
  last=-1 last_change_ns="$start_ns" still=0
  while ((still < 50)); do
    now="$(sample "${admin[compute]}" 'corral_kafka_records_consumed_total\{[^}]*events\.resolved')"
    if [[ "$now" != "$last" ]]; then last="$now" last_change_ns="$(date +%s%N)" still=0; else still=$((still + 1)); fi
    sleep 0.1
  done
  seconds="$(awk -v a="$start_ns" -v b="$last_change_ns" 'BEGIN {printf "%.2f", (b - a) / 1e9}')"
  produced_after="$(for s in validator identity compute fanout; do sample "${admin[$s]}" 'corral_kafka_records_produced_total'; echo; done | awk '{s += $1} END {print s}')"
  # Per event sent: events.raw consumption also counts what the validator forwards back to it, so
  # the denominator is the number of calls sent, not what was read.
  per_event="$(awk -v p="$((produced_after - produced_before))" -v n="$messages" 'BEGIN {printf "%.2f", (p + n) / n}')"
  rate="$(awk -v n="$messages" -v s="$seconds" 'BEGIN {printf "%.0f", n / s}')"
  echo "$rate" >>"$run_dir/pipeline-rates"; echo "$per_event" >>"$run_dir/pipeline-records"
  echo "pipeline end_to_end workload=$workload run=$run messages=$messages resolved_consumed_by_compute=$((last - resolved_before)) seconds=$seconds events_per_sec=$rate records_written_per_event=$per_event"
  for s in collector validator identity compute fanout; do
    after="$(cpu_ticks "$(cat "$run_dir/$s.pid")")"
    awk -v s="$s" -v a="$after" -v b="${cpu_before[$s]}" -v t="$tck" -v n="$messages" -v r="$workload run=$run" \
      'BEGIN {printf "pipeline cpu workload=%s service=%s cpu_seconds=%.1f cpu_seconds_per_1000_events=%.3f\n", r, s, (a - b) / t, (a - b) / t / n * 1000}'
  done
done
rate_median="$(median <"$run_dir/pipeline-rates")"
records_median="$(median <"$run_dir/pipeline-records")"
ratio="$(awk -v r="${rate_median#median=}" -v w="${records_median#median=}" -v p="$passthrough" \
  'BEGIN {split(r, a, " "); split(w, b, " "); printf "%.2f", a[1] * b[1] / p}')"
echo "pipeline summary workload=$workload runs=$runs events_per_sec_$rate_median records_written_per_event_$records_median broker_ratio=$ratio"
done

want latency || exit 0
log "latency: $latency_rate events/s, 20 new audience members per second, to the membership topic and the webhook"
"$bin/corralctl" audiences apply deploy/local/bench/latency-audience.yaml >&2
"$bin/corralctl" destinations apply deploy/local/bench/latency-destination.yaml >&2
sleep 3 # compute and fanout load the new definitions from the definitions topic
# Probes from new users (identity's coordinator resolves them: one hop more) and from returning
# users (the common path: a stitcher hit).
for probes in ${PIPELINE_PROBE_USERS:-new returning}; do
  : >"$run_dir/pipeline-latency"
  for run in $(seq 1 "$runs"); do
    "$bin/pipeline-latency" --rate "$latency_rate" --seconds 20 --probe-users "$probes" \
      | sed "s/^pipeline latency/pipeline latency run=$run/" | tee -a "$run_dir/pipeline-latency"
  done
  for f in membership_p50_ms membership_p99_ms webhook_p50_ms webhook_p99_ms; do
    echo "pipeline latency_summary probe_users=$probes $f $(sed -n "s/.* $f=\([0-9.]*\).*/\1/p" "$run_dir/pipeline-latency" | median)"
  done
done

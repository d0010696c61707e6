#!/usr/bin/env bash
# `make bench`: every benchmark in one run against the local broker, so the figures compare.
# Results go to stdout and to .run/bench/RUN_ID/ (one file per part); BENCHMARKS.md records them.
#
#   deploy/local/bench.sh            everything
#   BENCH_ONLY="baseline runtime" deploy/local/bench.sh    some parts
#
# Parts: baseline (Kafka's own ProducerPerformance/ConsumerPerformance, 1 KB records),
# runtime (exactly-once pass-through at 100 ms and 1 s commit intervals, latency, restore, the
# latency pause when a second instance joins),
# criterion (codec and query micro-benchmarks), each service's own load generator
# (collector, validator, identity, compute, fanout), merges (the merge hand-over latency through
# identity and compute), security (the runtime's pass-through and latency with the service under
# test on the broker's SASL_SSL listener against the plaintext one, in the same run), pipeline
# (the five services of `make up` under collector-loadgen: events/s end to end, CPU per 1,000
# events per service, records written per event; deploy/local/bench-pipeline.sh), and tmpfs: the runtime's and compute's
# latency again against a second broker whose log lives in /dev/shm (started for the part on
# port 9292, stopped after), which separates the broker's disk stalls from our own tail;
# profiles: corral-profiles over 1,000,000 profiles (PROFILES_BENCH_PROFILES): the Profile API's
# latency at 1,000 requests/s against the HTTP floor, resident memory, and an audience preview
# over 1,000,000 events against reading them;
# accounts: compute's ACCOUNTS definitions, 1,000 accounts x 50 users with 10 account definitions
# through the broker (group calls/s, track events/s, a user's flip to its account's change p50/p99)
# and one user's flip in an account of 10,000 users (through the broker, and in process against
# recounting the account's users);
# privacy: deletion through identity and compute over PRIVACY_BENCH_PROFILES (1,000,000) profiles and
# PRIVACY_BENCH_EVENTS (10,000,000) events of history: corralctl privacy delete -> committed exit
# against a new user's order -> committed entry, and the status check (docs/privacy.md);
# privacy_scale: erasing the retained history: PRIVACY_SCALE_PROFILES (1,000,000) profiles built by
# compute from PRIVACY_SCALE_EVENTS (10,000,000) events written to events.resolved, delete ->
# status finished (erasure scan included) for one user and for one request of 12, and compute's
# events/s with no deletion pending against during an erasure scan (~3 GB of broker log: set
# BENCH_KAFKA_DATA_DIR to a tmpfs folder when the disk is short).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
parts="${BENCH_ONLY:-baseline runtime security pipeline criterion collector validator identity compute accounts merges privacy privacy_scale fanout profiles tmpfs}"
out="$root/.run/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
log() { echo "bench.sh: $*" >&2; }
want() { [[ " $parts " == *" $1 "* ]]; }
# Criterion's progress lines end in carriage returns; keep each benchmark's name and time.
criterion_summary() { tr '\r' '\n' | grep -vE '^(Benchmarking|Gnuplot|\s*$|\s*(Compiling|Finished|Running))' | grep -E '^[[:alnum:]_/ -]+$|time:'; }

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "rustc: $(rustc --version)"
  echo "kafka: ${KAFKA_VERSION:-4.3.1} (deploy/local, one fresh broker for the run on port ${BENCH_KAFKA_PORT:-9192})"
} | tee "$out/machine.txt"

cargo build --release -p corral-tests --bins

# A fresh broker for the run, so runs compare: the development broker on 9092 collects every
# test's topics (12,500 partitions after a day), and their housekeeping shows in latency tails
# (compute's p99 at 5,000 events/s: ~270 ms there, ~130-220 ms on a fresh broker).
BENCH_KAFKA_PORT="${BENCH_KAFKA_PORT:-9192}"
export KAFKA_PORT="$BENCH_KAFKA_PORT" KAFKA_DATA_DIR="${BENCH_KAFKA_DATA_DIR:-$root/.run/kafka-bench-$BENCH_KAFKA_PORT}"
export CORRAL_TEST_BOOTSTRAP="127.0.0.1:$BENCH_KAFKA_PORT"
cleanup() {
  deploy/local/kafka.sh stop >/dev/null 2>&1 || true
  rm -rf "$KAFKA_DATA_DIR"
  KAFKA_PORT=9292 KAFKA_DATA_DIR=/dev/shm/corral-bench-kafka-9292 deploy/local/kafka.sh stop >/dev/null 2>&1 || true
  rm -rf /dev/shm/corral-bench-kafka-9292
}
trap cleanup EXIT
rm -rf "$KAFKA_DATA_DIR"
deploy/local/kafka.sh start
# The broker's JIT warms up on its first load; keep that out of the figures.
log "warming up the broker"
target/release/corral-loadgen --parts latency --latency-seconds 10 >/dev/null

if want baseline; then
  log "broker baseline (Kafka's perf tools, 1 KB records)"
  PERF_RECORDS="${PERF_RECORDS:-300000}" deploy/local/kafka.sh perf | tee "$out/baseline.txt"
fi

if want runtime; then
  log "runtime: exactly-once pass-through, latency, restore"
  target/release/corral-loadgen --records "${RUNTIME_RECORDS:-300000}" | tee "$out/runtime.txt"
fi

if want security; then
  log "security: pass-through and latency, the service on SASL_SSL (SCRAM-SHA-512, TLS) vs plaintext"
  # A principal allowed everything on this throwaway broker: the figure is TLS and SASL's cost,
  # not the authorizer's (ACL checks are per request and cached).
  deploy/local/kafka.sh user corral-bench bench-password
  deploy/local/kafka.sh acl --add --allow-principal User:corral-bench --operation All \
    --topic '*' --group '*' --transactional-id '*'
  secure_bootstrap="$(deploy/local/kafka.sh env | sed -n 's/^KAFKA_SECURE_BOOTSTRAP=//p')"
  ca="$(deploy/local/kafka.sh env | sed -n 's/^KAFKA_CA=//p')"
  for run in plaintext sasl_ssl plaintext sasl_ssl; do
    extra=()
    if [[ $run == sasl_ssl ]]; then
      extra=(--service-bootstrap "$secure_bootstrap" --service-kafka security.protocol=SASL_SSL
        --service-kafka sasl.mechanism=SCRAM-SHA-512 --service-kafka sasl.username=corral-bench
        --service-kafka sasl.password=bench-password --service-kafka "ssl.ca.location=$ca")
    fi
    target/release/corral-loadgen --parts throughput,latency --records "${RUNTIME_RECORDS:-300000}" "${extra[@]}" \
      | sed "s/^/$run /" | tee -a "$out/security.txt"
  done
fi

if want pipeline; then
  log "pipeline: the five services, release build, example plan and definitions, ${PIPELINE_MESSAGES:-200000} track calls"
  CORRAL_KAFKA_BOOTSTRAP="127.0.0.1:$BENCH_KAFKA_PORT" deploy/local/bench-pipeline.sh | tee "$out/pipeline.txt"
fi

if want criterion; then
  log "criterion: codec and query"
  cargo bench -p corral-codec 2>&1 | criterion_summary | tee "$out/criterion-codec.txt"
  cargo bench -p corral-query 2>&1 | criterion_summary | tee "$out/criterion-query.txt"
fi

if want collector; then
  log "collector: Segment HTTP API to events.raw (batches of 100, single messages)"
  cargo build --release -p corral-collector
  target/release/collector-loadgen | tee "$out/collector.txt"
fi

if want validator; then
  log "validator: validation per event (criterion) and pipeline throughput"
  cargo bench -p corral-validator --bench validate 2>&1 | criterion_summary | tee "$out/validator-criterion.txt"
  VALIDATOR_BENCH_N="${VALIDATOR_BENCH_N:-100000}" cargo test -p corral-validator --release --test pipeline \
    -- --ignored --nocapture throughput 2>&1 | grep -E 'throughput' | tee "$out/validator-pipeline.txt"
fi

if want identity; then
  log "identity: events/s through the stitcher and coordinator vs the runtime pass-through, state per profile, merge latency"
  cargo bench -p corral-identity --bench pipeline 2>&1 | grep -vE '^\s*(Compiling|Finished|Running)' | tee "$out/identity.txt"
fi

if want compute; then
  log "compute: engine events/s with 10 and 100 definitions, state per profile (in process)"
  cargo run --release -p corral-compute --bin compute-bench -- --events 200000 --profiles 20000 2>&1 \
    | grep -vE '^\s*(Compiling|Finished|Running)' | tee "$out/compute.txt"
  log "compute through the broker: latency at 5,000 events/s, backfill, throughput with 10 and 100 definitions"
  cargo bench -p corral-compute --bench pipeline 2>&1 | grep -E '^compute ' | tee "$out/compute-pipeline.txt"
fi

if want accounts; then
  log "accounts: one user's flip by account size, counters vs recounting every user (in process)"
  cargo run --release -p corral-compute --bin compute-bench -- --accounts 2>&1 \
    | grep -E '^accounts ' | tee "$out/accounts.txt"
  log "accounts baseline: a USERS audience's change latency at the flips' rate (200 events/s), same broker"
  COMPUTE_BENCH_RATE=200 COMPUTE_BENCH_SECONDS=5 cargo bench -p corral-compute --bench pipeline -- latency 2>&1 \
    | grep -E '^compute ' | sed 's/^/baseline /' | tee -a "$out/accounts.txt"
  log "accounts through the broker: 1,000 accounts x 50 users, 10 account definitions; an account of 10,000 users"
  cargo bench -p corral-compute --bench accounts 2>&1 | grep -E '^compute ' | tee -a "$out/accounts.txt"
fi

if want merges; then
  log "merges: identify that causes a merge -> survivor's entered committed, at 1,000 events/s with 10 % merge-causing (identity + compute)"
  cargo build --release --workspace --bins
  cargo bench -p corral-e2e --bench merge_handover 2>&1 | grep -E '^compute ' | tee "$out/merges.txt"
fi

if want privacy; then
  log "privacy: delete one user among ${PRIVACY_BENCH_PROFILES:-1000000} profiles and ${PRIVACY_BENCH_EVENTS:-10000000} events (identity + compute)"
  cargo build --release --workspace --bins
  cargo bench -p corral-e2e --bench privacy 2>&1 | grep -E '^privacy ' | tee "$out/privacy.txt"
fi

if want privacy_scale; then
  log "privacy_scale: erase one user's history among ${PRIVACY_SCALE_PROFILES:-1000000} profiles and ${PRIVACY_SCALE_EVENTS:-10000000} events (compute)"
  cargo build --release --workspace --bins
  cargo bench -p corral-e2e --bench privacy_scale 2>&1 | grep -E '^privacy_scale ' | tee "$out/privacy_scale.txt"
fi

if want fanout; then
  log "fanout: delivery ceiling, limiter accuracy at 100/s and 500/s over 60 s, latency"
  cargo bench -p corral-fanout --bench delivery 2>&1 | grep -vE '^\s*(Compiling|Finished|Running)' | tee "$out/fanout.txt"
fi

if want profiles; then
  log "profiles: the Profile API at 1,000 requests/s over ${PROFILES_BENCH_PROFILES:-1000000} profiles, resident memory, a preview over as many events"
  cargo build --release -p corral-profiles --bins
  target/release/profiles-bench --profiles "${PROFILES_BENCH_PROFILES:-1000000}" --rate 1000 --seconds 30 \
    | tee "$out/profiles.txt"
fi

if want tmpfs; then
  log "tmpfs: runtime and compute latency against a broker with its log in /dev/shm"
  KAFKA_PORT=9292 KAFKA_DATA_DIR=/dev/shm/corral-bench-kafka-9292 deploy/local/kafka.sh start
  # The first run after a broker starts measures its JIT warming up; run it once unrecorded.
  CORRAL_TEST_BOOTSTRAP=127.0.0.1:9292 target/release/corral-loadgen --parts latency >/dev/null
  CORRAL_TEST_BOOTSTRAP=127.0.0.1:9292 target/release/corral-loadgen --parts latency | sed 's/^/tmpfs /' | tee "$out/tmpfs.txt"
  for _ in 1 2; do
    CORRAL_TEST_BOOTSTRAP=127.0.0.1:9292 cargo bench -p corral-compute --bench pipeline -- latency 2>&1 \
      | grep -E '^compute ' | sed 's/^/tmpfs /' | tee -a "$out/tmpfs.txt"
  done
fi

log "results in ${out#"$root"/}"

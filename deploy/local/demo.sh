#!/usr/bin/env bash
# The demo of `make run` (after `make up`): loads the examples, sends Segment calls to the
# collector the way a Segment client would, and shows each stage's output topic.
#
#   deploy/local/demo.sh
#
# Needs the local stack (`make up`): Kafka on 127.0.0.1:9092, the collector on 127.0.0.1:8080.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
ctl=target/debug/corralctl
collector="${CORRAL_COLLECTOR_URL:-http://127.0.0.1:8080}"
write_key="${CORRAL_DEMO_WRITE_KEY:-corral-demo}"
run_id="$(date +%s)"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
post() { # path json
  local code
  code="$(curl -sS -o /tmp/corral-demo-resp -w '%{http_code}' -u "$write_key:" \
    -H 'Content-Type: application/json' "$collector$1" -d "$2")"
  echo "POST $1 -> $code $(cat /tmp/corral-demo-resp)"
}
show() { # topic title
  say "$2 ($1)"
  "$ctl" tail "$1" --last 6 | head -n 12 | cut -c1-400
}

say "Validate the example audiences and computed traits"
"$ctl" definitions validate examples/definitions.yaml | tail -n 5

say "Apply the example tracking plan (Segment Protocols)"
"$ctl" plans apply examples/tracking-plan.yaml

say "Send Segment calls to the collector, as analytics.js or analytics-python would"
now="$(date -u +%Y-%m-%dT%H:%M:%S.000Z)"
user="ada-$run_id"
post /v1/identify "{\"userId\":\"$user\",\"anonymousId\":\"anon-$run_id\",\"traits\":{\"email\":\"ada-$run_id@example.com\",\"plan\":\"trial\"},\"timestamp\":\"$now\"}"
post /v1/batch "{\"batch\":[
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-1\",\"userId\":\"$user\",\"event\":\"Account Created\",\"timestamp\":\"$now\"},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-2\",\"userId\":\"$user\",\"event\":\"Session Started\",\"properties\":{\"session_id\":\"s-1\",\"platform\":\"web\"}},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-3\",\"userId\":\"$user\",\"event\":\"Feature Used\",\"properties\":{\"feature_name\":\"dashboards\",\"time_spent_seconds\":42,\"debug_blob\":\"not in the plan: omitted\"}},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-4\",\"userId\":\"$user\",\"event\":\"Feature Used\",\"properties\":{\"time_spent_seconds\":-1}},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-2\",\"userId\":\"$user\",\"event\":\"Session Started\",\"properties\":{\"session_id\":\"s-1\",\"platform\":\"web\"}},
  {\"type\":\"track\",\"event\":\"No identity at all\"}
]}"
echo "(demo-$run_id-2 is sent twice: the validator de-duplicates it; the last call has no userId or anonymousId: dead-lettered with a reason)"
sleep "${DEMO_SETTLE_SECONDS:-3}"

show events.raw "Everything the collector accepted"
show events.valid "Passed the tracking plan (unplanned properties omitted, annotated in context.protocols)"
show events.blocked "Blocked by the tracking plan, intact for replay"
show events.violations "One record per violation"
show events.dlq "Dead letters, with the reason"
for stage in events.resolved audiences.membership traits.changes; do
  if [[ -n "$("$ctl" tail "$stage" --last 1 2>/dev/null | head -n 1)" ]]; then
    show "$stage" "$stage"
  fi
done

say "Metrics (collector and validator)"
curl -fsS http://127.0.0.1:9101/metrics | grep -E '^corral_collector_messages_total' | head -n 5 || true
curl -fsS http://127.0.0.1:9102/metrics | grep -E '^corral_validator_messages_total' | head -n 5 || true
echo
echo "The stack keeps running: send more with"
echo "  curl -u $write_key: $collector/v1/track -d '{\"userId\":\"ada\",\"event\":\"Feature Used\",\"properties\":{\"feature_name\":\"x\"}}'"
echo "watch with '$ctl tail events.valid -f', stop with 'make down'."

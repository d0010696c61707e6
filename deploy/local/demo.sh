#!/usr/bin/env bash
# The demo of `make run` (after `make up`): loads the examples, sends Segment calls to the
# collector the way a Segment client would, and shows what each stage made of them, ending with
# a user entering an audience and leaving it again, delivered to a webhook.
#
#   deploy/local/demo.sh
#
# Needs the local stack (`make up`): Kafka on 127.0.0.1:9092, the services, the collector on
# 127.0.0.1:8080. Starts a webhook receiver on 127.0.0.1:9999 (requests in .run/webhook.jsonl).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
ctl=target/debug/corralctl
collector="${CORRAL_COLLECTOR_URL:-http://127.0.0.1:8080}"
write_key="${CORRAL_DEMO_WRITE_KEY:-corral-demo}"
run_id="$(date +%s)"
user="ada-$run_id"
webhook_log="$root/.run/webhook.jsonl"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
post() { # path json
  local code
  code="$(curl -sS -o "$root/.run/demo-response" -w '%{http_code}' -u "$write_key:" \
    -H 'Content-Type: application/json' "$collector$1" -d "$2")"
  echo "POST $1 -> $code $(cat "$root/.run/demo-response")"
}
# Records of a topic that mention this run's user, one compact line each.
show() { # topic title [python expression over the record r giving a one-line summary]
  say "$2 ($1)"
  "$ctl" tail "$1" --last 50 | grep -F "$run_id" | python3 -c '
import json, sys
expr = sys.argv[1]
for line in sys.stdin:
    r = json.loads(line)
    v = r["value"]
    try:
        print("  " + eval(expr))
    except Exception as e:
        print("  " + line.strip()[:240])
' "${3:-json.dumps(v)[:240]}" || true
}
# Waits until a topic has a record for this run matching a fixed string.
await_record() { # topic needle seconds
  local deadline=$((SECONDS + $3))
  until "$ctl" tail "$1" --last 200 | grep -F "$run_id" | grep -qF "$2"; do
    if ((SECONDS > deadline)); then echo "  (nothing with '$2' in $1 after $3 s; see .run/services/*.log)"; return 0; fi
    sleep 0.5
  done
}

if ! curl -fsS -o /dev/null -X POST --max-time 1 http://127.0.0.1:9999/ping 2>/dev/null; then
  nohup setsid python3 deploy/local/webhook-receiver.py 9999 "$webhook_log" >/dev/null 2>&1 </dev/null &
  echo $! >"$root/.run/services/webhook-receiver.pid"
  sleep 0.5
fi

say "Load the examples: tracking plan, audiences and computed traits, destinations"
"$ctl" plans apply examples/tracking-plan.yaml
"$ctl" audiences apply examples/definitions.yaml | tail -n 4
deploy/local/kafka.sh topics-cli --create --if-not-exists --topic corral.destinations.demo --partitions 6 >/dev/null
"$ctl" destinations apply deploy/local/demo-destinations.yaml
sleep "${DEMO_SETTLE_SECONDS:-2}" # the services pick definitions up from the compacted topic

say "Send Segment calls to the collector, as analytics.js or analytics-python would"
now="$(date -u +%Y-%m-%dT%H:%M:%S.000Z)"
three_days_ago="$(date -u -d '3 days ago' +%Y-%m-%dT%H:%M:%S.000Z)"
post /v1/identify "{\"userId\":\"$user\",\"anonymousId\":\"anon-$run_id\",\"traits\":{\"email\":\"ada-$run_id@example.com\",\"plan\":\"trial\"},\"timestamp\":\"$three_days_ago\"}"
post /v1/batch "{\"batch\":[
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-1\",\"userId\":\"$user\",\"event\":\"Account Created\",\"timestamp\":\"$three_days_ago\"},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-2\",\"userId\":\"$user\",\"event\":\"Session Started\",\"properties\":{\"session_id\":\"s-1\",\"platform\":\"web\"}},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-3\",\"userId\":\"$user\",\"event\":\"Feature Used\",\"properties\":{\"feature_name\":\"dashboards\",\"time_spent_seconds\":42,\"debug_blob\":\"not in the plan\"}},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-4\",\"userId\":\"$user\",\"event\":\"Feature Used\",\"properties\":{\"time_spent_seconds\":-1}},
  {\"type\":\"track\",\"messageId\":\"demo-$run_id-2\",\"userId\":\"$user\",\"event\":\"Session Started\",\"properties\":{\"session_id\":\"s-1\",\"platform\":\"web\"}},
  {\"type\":\"track\",\"event\":\"No identity $run_id\"}
]}"
echo "  (Account Created is dated 3 days ago; demo-$run_id-2 is sent twice; the last call has no userId or anonymousId)"

await_record audiences.membership stuck_before_activation 30
show events.valid "Passed the tracking plan (unplanned property omitted, noted in context.protocols)" \
  '"%-24s omitted=%s" % (v["message"].get("event") or v["message"]["type"], v["protocols"]["omitted"])'
show events.blocked "Blocked by the tracking plan, intact for replay" \
  '"%s: %s" % (v["message"]["event"], v["reason"])'
show events.violations "One record per violation" '"%-16s %-18s %-26s %s" % (v["event_name"], v["violation_type"], v["violation_field"], v["violation_description"][:80])'
show events.dlq "Dead letters, with the reason" '"%s: %s" % (v["reason"], v["error"])'
show events.resolved "Resolved to a profile" \
  '"%s <- %-18s ids=%s" % (v["profile_id"], v["message"].get("event") or v["message"]["type"], [i["type"] + ":" + i["id"] for i in v["external_ids"]])'
show audiences.membership "Audiences entered" \
  '"%s %-7s %s" % (v["profile_id"], v["change"], v["audience_key"])'
show traits.changes "Computed traits" \
  '"%s %s: %s -> %s" % (v["profile_id"], v["trait_key"], json.dumps(v.get("previous_value")), json.dumps(v["value"]))'

say "The user activates: 'Activation Milestone Reached' takes them out of stuck_before_activation"
post /v1/track "{\"userId\":\"$user\",\"event\":\"Activation Milestone Reached\",\"messageId\":\"demo-$run_id-5\"}"
await_record audiences.membership exited 30
show audiences.membership "Audience membership changes" \
  '"%s %-7s %s" % (v["profile_id"], v["change"], v["audience_key"])'

say "What the webhook destination received (Segment's payloads, .run/webhook.jsonl)"
deadline=$((SECONDS + 20))
until grep -qF "$user" "$webhook_log" 2>/dev/null && grep -F "$user" "$webhook_log" | grep -q 'Audience Exited' || ((SECONDS > deadline)); do sleep 0.5; done
grep -F "$user" "$webhook_log" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    b = json.loads(line)["body"]
    print("  %-8s %-18s userId=%s %s" % (b.get("type"), b.get("event", ""), b.get("userId"),
          json.dumps(b.get("properties") or b.get("traits"))[:120]))
' || echo "  (no delivery yet; see .run/services/fanout.log)"

say "Accounts: group calls put users in accounts; the two example account audiences follow them"
acme="acme-$run_id"
post /v1/batch "{\"batch\":[
  {\"type\":\"group\",\"userId\":\"$user\",\"groupId\":\"$acme\",\"traits\":{\"name\":\"Acme\",\"plan\":\"business\"}},
  {\"type\":\"group\",\"userId\":\"bo-$run_id\",\"groupId\":\"$acme\",\"traits\":{\"name\":\"Acme\",\"plan\":\"business\"}}
]}"
echo "  (acme is a business account; none of its two users logged in or viewed a dashboard)"
await_record audiences.membership "account:$acme" 30
show audiences.membership "Account audiences: the account, and each of its users" \
  '"%-28s %-7s %-28s group=%s" % (v["profile_id"], v["change"], v["audience_key"], [i["id"] for i in v["external_ids"] if i["type"] == "group_id"])'
post /v1/track "{\"userId\":\"bo-$run_id\",\"event\":\"Logged In\"}"
echo "  (bo logs in: acme is no longer at risk, for the account and both users)"
deadline=$((SECONDS + 20))
until grep -F "$acme" "$webhook_log" 2>/dev/null | grep -q 'Audience Exited' || ((SECONDS > deadline)); do sleep 0.5; done
grep -F "$acme" "$webhook_log" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    b = json.loads(line)["body"]
    print("  %-8s %-16s %s %s" % (b.get("type"), b.get("event", ""),
          "groupId=%s" % b["groupId"] if "groupId" in b else "userId=%s context.groupId=%s" % (b.get("userId"), b.get("context", {}).get("groupId")),
          json.dumps(b.get("properties") or b.get("traits"))[:100]))
' || echo "  (no delivery yet; see .run/services/fanout.log)"

say "The Profile API (corral-profiles on 127.0.0.1:8090; token of space default in .run/profile-api-token)"
profile_token="$(cat "$root/.run/profile-api-token" 2>/dev/null || true)"
echo "  token: $profile_token"
profile_url="http://127.0.0.1:8090/v1/spaces/default/collections/users/profiles/user_id:$user"
deadline=$((SECONDS + 20))
until curl -fsS -o /dev/null -u "$profile_token:" "$profile_url/traits" 2>/dev/null || ((SECONDS > deadline)); do sleep 0.5; done
for what in "traits?class=audience" "traits?limit=5" "events?limit=3"; do
  echo "  GET .../user_id:$user/$what"
  curl -sS -u "$profile_token:" "$profile_url/$what" | python3 -c '
import json, sys
body = json.load(sys.stdin)
items = body.get("traits") if "traits" in body else [
    "%s %s" % (e.get("type"), e.get("event") or "") for e in body.get("data", [])]
print("    %s  (has_more=%s)" % (json.dumps(items)[:200], body.get("cursor", {}).get("has_more")))
' || echo "    (no answer; see .run/services/profiles.log)"
done
echo "  try: curl -u \$(cat .run/profile-api-token): '$profile_url/traits'"

say "Metrics: messages by outcome"
for port in 9101 9102; do
  curl -fsS "http://127.0.0.1:$port/metrics" | grep -E '^corral_(collector|validator)_messages_total' || true
done
echo
echo "The stack keeps running. Send more with"
echo "  curl -u $write_key: $collector/v1/track -d '{\"userId\":\"ada\",\"event\":\"Feature Used\",\"properties\":{\"feature_name\":\"x\"}}'"
echo "watch with '$ctl tail audiences.membership -f'; stop with 'make down'."

#!/usr/bin/env bash
# "Chart to process": what offline validation cannot show. Renders helm/corral with
# ci/minimal-values.yaml and starts every workload exactly as rendered (image, command, args,
# env, mounts, user, read-only root) under podman against the local broker, then sends the
# demo's calls through the containers and waits for the audience change at a webhook.
#
#   helm/chart-to-process.sh      (make test runs it; needs `make build` and the local broker)
#
# Steps: the image from the host's binaries (deploy/container/build.sh --from-host); the setup
# Job (topics apply, and the examples' tracking plan, audiences and a webhook destination as
# definitions as code); the collector and the four StatefulSets (pod ordinal 0), each until
# its readinessProbe (/readyz) answers; Segment calls to the collector's Service port; the
# webhook gets "Audience Entered" then "Audience Exited"; then every StatefulSet scales
# 1 -> 3 -> 1 (ordinals 1 and 2 started from the same render, so with the chart's instance ids,
# then stopped with SIGTERM) while C2P_SCALE_USERS users (300; 0 skips this) are sent: every call
# resolved exactly once and every user's memberships as a run without scaling gives them; every
# stream pod's consumer lag metric is back to 0; SIGTERM stops every container within its
# terminationGracePeriodSeconds. Each run has its own topic prefix and consumer groups, so
# it runs next to other tests and `make up`; its topics are deleted afterwards.
#
# With --network host the containers share the host's ports, so each workload comes from a
# render with its own adminPort/queryPort/collector.port (C2P_PORT_BASE, default 19300); every
# other value is ci/minimal-values.yaml's.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
chart="$root/helm/corral"
cache="${CORRAL_CACHE:-${HOME:-/root}/.cache/corral}"
helm="$cache/helm-${HELM_VERSION:-v3.22.0}/helm"
py="$cache/chart-venv/bin/python"
base="${C2P_PORT_BASE:-19300}"
run="c2p$(date +%s)"
work="$root/.run/chart-to-process/$run"
bootstrap="${CORRAL_TEST_BOOTSTRAP:-127.0.0.1:${KAFKA_PORT:-9092}}"
prefix="$run."
write_key="$run-key"
hook_port=$((base + 90))
t_start=$SECONDS

log() { echo "chart-to-process: $*" >&2; }
die() { echo "chart-to-process: error: $*" >&2; exit 1; }

eval "$("$root/deploy/container/build.sh" --print-env)"
podman_() { $PODMAN "$@"; }

[[ -x "$helm" && -x "$py" ]] || "$root/helm/test.sh" --install
"$root/deploy/local/kafka.sh" status >/dev/null || die "no broker on $bootstrap (deploy/local/kafka.sh start)"
mkdir -p "$work"

started=()
hook_pid=""
cleanup() {
  local rc=$? c
  for c in "${started[@]}"; do
    if podman_ container exists "$c"; then
      if ((rc != 0)); then log "log of $c (last 15 lines):"; podman_ logs --tail 15 "$c" >&2 2>&1 || true; fi
      podman_ rm -f -t 5 "$c" >/dev/null 2>&1 || true
    fi
  done
  [[ -n "$hook_pid" ]] && kill "$hook_pid" 2>/dev/null || true
  "$root/deploy/local/kafka.sh" topics-cli --delete --topic "$run\\..*" >/dev/null 2>&1 || true
  if ((rc == 0)); then rm -rf "$work"; else log "renders, podman arguments and logs: $work"; fi
  exit "$rc"
}
trap cleanup EXIT

t0=$SECONDS
"$root/deploy/container/build.sh" --from-host
image_s=$((SECONDS - t0))

# the secrets the values refer to, and the definitions the setup job applies
cat >"$work/secrets.json" <<JSON
{"corral-write-keys": {"write-keys": "$write_key=demo:default"}}
JSON
cat >"$work/destinations.yaml" <<YAML
space_id: default
destinations:
  - key: c2p_webhook
    type: webhook
    url: http://127.0.0.1:$hook_port/hook
    rate_limit_per_second: 50
    connections:
      - audience: stuck_before_activation
        mode: track
YAML

render() { # name port-offset -> $work/NAME.yaml
  "$helm" template corral "$chart" --namespace corral --kube-version 1.33.0 \
    -f "$chart/ci/minimal-values.yaml" \
    --set kafka.bootstrapServers="$bootstrap" --set-string kafka.topicPrefix="$prefix" \
    --set validator.applicationId="$run-validator" --set identity.applicationId="$run-identity" \
    --set compute.applicationId="$run-compute" --set fanout.applicationId="$run-fanout" \
    --set adminPort=$((base + $2)) --set queryPort=$((base + 100 + $2)) --set collector.port=$((base + 60)) \
    --set definitions.enabled=true \
    --set-file 'definitions.files.tracking-plans\.yaml'="$root/examples/tracking-plan.yaml" \
    --set-file 'definitions.files.definitions\.yaml'="$root/examples/definitions.yaml" \
    --set-file 'definitions.files.destinations\.yaml'="$work/destinations.yaml" \
    >"$work/$1.yaml"
}

start() { # workload-name kind object-name port-offset [--foreground | --ordinal N]
  local wl="$1" kind="$2" obj="$3" spec ordinal=0
  [[ "${5:-}" == --ordinal ]] && ordinal="$6"
  render "$wl" "$4"
  spec="$("$py" "$root/helm/tests/pod_to_podman.py" "$work/$wl.yaml" "$kind" "$obj" --ordinal "$ordinal" \
    --secrets "$work/secrets.json" --files "$work/files-$wl" --container-name "$run-$wl")" \
    || die "$kind/$obj: cannot reproduce it (above)"
  echo "$spec" >"$work/$wl.json"
  mapfile -d '' -t argv < <("$py" -c 'import json,sys; sys.stdout.write("\0".join(json.load(sys.stdin)["argv"]) + "\0")' <<<"$spec")
  started+=("$run-$wl")
  if [[ "${5:-}" == --foreground ]]; then
    podman_ run "${argv[@]}" >"$work/$wl.log" 2>&1 || { cat "$work/$wl.log" >&2; die "$kind/$obj failed"; }
  else
    podman_ run -d "${argv[@]}" >/dev/null
  fi
}

probe() { "$py" -c 'import json,sys; print(json.load(sys.stdin)["probes"].get(sys.argv[1], ""))' "$2" <"$work/$1.json"; }

log "run $run: topics $prefix*, ports $base+, image localhost/corral:dev ($image_s s)"
t0=$SECONDS
start setup Job corral-setup 0 --foreground
log "setup job: $(grep -c . "$work/setup.log") lines, last: $(tail -n 1 "$work/setup.log") ($((SECONDS - t0)) s)"

t0=$SECONDS
start collector Deployment corral-collector 0
start validator StatefulSet corral-validator 2
start identity StatefulSet corral-identity 4
start compute StatefulSet corral-compute 6
start fanout StatefulSet corral-fanout 8
await_ready() { # workload... : each answers its readinessProbe (and then its livenessProbe)
  local wl url live deadline
  for wl in "$@"; do
    url="$(probe "$wl" readinessProbe)"; live="$(probe "$wl" livenessProbe)"
    [[ -n "$url" && -n "$live" ]] || die "$wl has no readiness or liveness probe"
    deadline=$((SECONDS + ${C2P_READY_TIMEOUT:-120}))
    until curl -fs -o /dev/null --max-time 2 "$url"; do
      [[ "$(podman_ inspect -f '{{.State.Running}}' "$run-$wl")" == true ]] || die "$wl exited before it was ready"
      ((SECONDS < deadline)) || { curl -sS --max-time 2 "$url" >&2 || true; die "$wl not ready on $url"; }
      sleep 0.5
    done
    curl -fsS -o /dev/null --max-time 2 "$live" || die "$wl ready but not live on $live"
    log "$wl ready on $url ($((SECONDS - t0)) s after the first start)"
  done
}
await_ready collector validator identity compute fanout
ready_s=$((SECONDS - t0))

# the demo: a trial user who created the account 3 days ago enters stuck_before_activation,
# and leaves it on "Activation Milestone Reached"
python3 "$root/deploy/local/webhook-receiver.py" "$hook_port" "$work/webhook.jsonl" >/dev/null 2>&1 &
hook_pid=$!
collector="http://127.0.0.1:$((base + 60))"
user="ada-$run"
post() {
  local code
  code="$(curl -sS -o "$work/response" -w '%{http_code}' -u "$write_key:" -H 'Content-Type: application/json' \
    "$collector$1" -d "$2")"
  [[ "$code" == 200 ]] || die "POST $1 answered $code: $(cat "$work/response")"
}
await_webhook() { # event seconds
  local deadline=$((SECONDS + $2))
  until [[ -f "$work/webhook.jsonl" ]] && grep -F "$user" "$work/webhook.jsonl" | grep -qF "\"$1\""; do
    ((SECONDS < deadline)) || die "no '$1' for $user at the webhook after $2 s"
    sleep 0.5
  done
}
t0=$SECONDS
three_days_ago="$(date -u -d '3 days ago' +%Y-%m-%dT%H:%M:%S.000Z)"
post /v1/identify "{\"userId\":\"$user\",\"traits\":{\"plan\":\"trial\"},\"timestamp\":\"$three_days_ago\"}"
post /v1/track "{\"userId\":\"$user\",\"event\":\"Account Created\",\"timestamp\":\"$three_days_ago\"}"
await_webhook "Audience Entered" 60
entered_s=$((SECONDS - t0))
post /v1/track "{\"userId\":\"$user\",\"event\":\"Activation Milestone Reached\"}"
await_webhook "Audience Exited" 60
log "webhook: Audience Entered after ${entered_s} s, Audience Exited $((SECONDS - t0 - entered_s)) s after the next call"

# ---- scale 1 -> 3 -> 1 while a stream runs: ordinals 1 and 2 of every StatefulSet join (the
# chart's instance ids), then leave on SIGTERM (scale-down removes the highest ordinals first).
# Nothing lost, nothing doubled: every call resolved exactly once, and the memberships are the
# ones a run without scaling gives (every user entered once; the activated ones exited once).
if ((${C2P_SCALE_USERS:-300} > 0)); then
  users="${C2P_SCALE_USERS:-300}"
  send_users() { # first last [activate]: identify + Account Created (3 days ago) per user, in batches of 50
    "$py" - "$1" "$2" "${3:-}" "$run" "$three_days_ago" >"$work/batches.jsonl" <<'PY'
import json, sys
first, last, activate, run, ago = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
calls = []
for i in range(first, last):
    u = f"{run}-s{i}"
    if activate:
        if i % 2 == 0:
            calls.append({"type": "track", "userId": u, "event": "Activation Milestone Reached", "messageId": f"{u}-3"})
        continue
    calls.append({"type": "identify", "userId": u, "traits": {"plan": "trial"}, "timestamp": ago, "messageId": f"{u}-1"})
    calls.append({"type": "track", "userId": u, "event": "Account Created", "timestamp": ago, "messageId": f"{u}-2"})
for k in range(0, len(calls), 50):
    print(json.dumps({"batch": calls[k:k + 50]}))
PY
    local line
    while IFS= read -r line; do post /v1/batch "$line"; sleep 0.05; done <"$work/batches.jsonl"
  }
  check_scale() { # upto activated: users [0, upto) sent, the even ones below `activated` activated
    CORRAL_TOPIC_PREFIX="$prefix" "$root/target/debug/corralctl" --bootstrap "$bootstrap" tail events.resolved --from-beginning >"$work/resolved.jsonl"
    CORRAL_TOPIC_PREFIX="$prefix" "$root/target/debug/corralctl" --bootstrap "$bootstrap" tail audiences.membership --from-beginning >"$work/membership.jsonl"
    "$py" - "$run" "$1" "$2" "$work/resolved.jsonl" "$work/membership.jsonl" <<'PY'
import collections, json, sys
run, users, activated = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tag = f"{run}-s"
ids = collections.Counter()
for line in open(sys.argv[4]):
    v = json.loads(line)["value"]
    mid = v["message"].get("messageId") or ""
    if mid.startswith(tag):
        ids[mid] += 1
want_ids = 2 * users + len(range(0, activated, 2))
changes = collections.defaultdict(list)
for line in open(sys.argv[5]):
    v = json.loads(line)["value"]
    if v["audience_key"] != "stuck_before_activation":
        continue
    us = [e["id"] for e in v["external_ids"] if e["id"].startswith(tag)]
    if us:
        changes[us[0]].append(v["change"])
expect = {}
for i in range(users):
    expect[f"{tag}{i}"] = ["entered", "exited"] if i < activated and i % 2 == 0 else ["entered"]
doubled = sorted(m for m, n in ids.items() if n > 1)
wrong = sorted(u for u in expect if changes.get(u, []) != expect[u])
done = len(ids) == want_ids and not doubled and not wrong
print(f"resolved {len(ids)}/{want_ids} calls, doubled {len(doubled)}, users with other memberships than expected {len(wrong)}"
      + ("" if done else f" (first: {[(u, changes.get(u)) for u in wrong[:3]]}, doubled {doubled[:3]})"))
sys.exit(0 if done else 1)
PY
  }
  stream=(validator identity compute fanout)
  third=$((users / 3))
  t0=$SECONDS
  send_users 0 "$third"
  for o in 1 2; do
    i=0
    for wl in "${stream[@]}"; do
      start "$wl-$o" StatefulSet "corral-$wl" $((10 + 8 * (o - 1) + 2 * i)) --ordinal "$o"; i=$((i + 1))
    done
  done
  send_users "$third" $((2 * third))
  await_ready "${stream[@]/%/-1}" "${stream[@]/%/-2}"
  # every new member gets partitions of its group (identity: of both groups' runtimes, here the coordinator's)
  deadline=$((SECONDS + 60))
  for wl in "${stream[@]/%/-1}" "${stream[@]/%/-2}"; do
    url="$(probe "$wl" readinessProbe)"; url="${url%/readyz}/metrics"
    until parts="$(curl -fs --max-time 2 "$url" | awk '/^corral_kafka_assigned_partitions/ {s += $NF} END {print s + 0}')" && ((parts > 0)); do
      ((SECONDS < deadline)) || die "$wl joined but holds no partition after 60 s"
      sleep 1
    done
  done
  log "scaled to 3: ordinals 1 and 2 of every StatefulSet ready and holding partitions ($((SECONDS - t0)) s)"
  # the activations go out once the users they end are in (an activation read first would keep
  # its user out: a different, but not a wrong, result)
  deadline=$((SECONDS + 90))
  until summary="$(check_scale $((2 * third)) 0)"; do
    ((SECONDS < deadline)) || die "with 3 instances: $summary"
    sleep 2
  done
  log "with 3 instances: $summary"
  send_users 0 $((2 * third)) activate
  for o in 2 1; do
    stops=()
    for wl in "${stream[@]}"; do podman_ stop -t 60 "$run-$wl-$o" >/dev/null & stops+=($!); done
    wait "${stops[@]}"
    for wl in "${stream[@]}"; do
      code="$(podman_ inspect -f '{{.State.ExitCode}}' "$run-$wl-$o")"
      [[ "$code" == 0 ]] || die "$wl-$o exited $code on SIGTERM"
    done
  done
  send_users $((2 * third)) "$users"
  log "scaled back to 1 ($((SECONDS - t0)) s); waiting for the memberships"
  deadline=$((SECONDS + 120))
  until summary="$(check_scale "$users" $((2 * third)))"; do
    ((SECONDS < deadline)) || die "after scaling 1 -> 3 -> 1: $summary"
    sleep 3
  done
  log "scale 1 -> 3 -> 1 of every stream service while sending $users users: $summary ($((SECONDS - t0)) s)"
fi

# the lag the dashboard and the CorralConsumerLag alert read: every stream pod exposes it on its
# admin port, and once the demo is through it is back to 0 (it is refreshed every 5 s)
deadline=$((SECONDS + 30))
for wl in validator identity compute fanout; do
  url="$(probe "$wl" readinessProbe)"; url="${url%/readyz}/metrics"
  until lag="$(curl -fs --max-time 2 "$url" | awk '/^corral_kafka_consumer_lag_records/ {n++; s += $NF} END {if (n) print s}')" \
      && [[ "$lag" == 0 ]]; do
    ((SECONDS < deadline)) || die "$wl: corral_kafka_consumer_lag_records is '${lag:-absent}', not 0, 30 s after the demo"
    sleep 1
  done
done
log "lag: every stream pod reports corral_kafka_consumer_lag_records, 0 after the demo"

# SIGTERM, as the kubelet stops a pod: each must exit 0 within its grace period
for wl in collector validator identity compute fanout; do
  grace="$("$py" -c 'import json,sys; print(json.load(sys.stdin)["grace"])' <"$work/$wl.json")"
  t0=$SECONDS
  podman_ stop -t "$grace" "$run-$wl" >/dev/null
  code="$(podman_ inspect -f '{{.State.ExitCode}}' "$run-$wl")"
  [[ "$code" == 0 ]] || die "$wl exited $code on SIGTERM"
  ((SECONDS - t0 < grace)) || die "$wl needed the whole grace period ($grace s) to stop"
done
log "ok: setup job, 5 workloads ready in $ready_s s, demo through the containers, scale 1 -> 3 -> 1, lag 0, clean SIGTERM ($((SECONDS - t_start)) s in all)"

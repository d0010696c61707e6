#!/usr/bin/env bash
# Starts and stops Corral's services on this machine for `make up` / `make down`, in the
# background, each with its admin endpoint on 127.0.0.1, its log in .run/services/NAME.log and
# its pid in .run/services/NAME.pid. `start` returns once every service answers /readyz.
#
#   deploy/local/services.sh start [NAME...]   start (all by default); a running one is left alone
#   deploy/local/services.sh stop [NAME...]    SIGTERM (the runtime commits and closes), then SIGKILL after 30 s
#   deploy/local/services.sh status
#
# Binaries come from target/debug (build them with `make build`). Every service reads
# CORRAL_KAFKA_BOOTSTRAP (default 127.0.0.1:9092) and keeps its state below .run/state.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
run_dir="$root/.run/services"
state_dir="$root/.run/state"
bin_dir="${CORRAL_BIN_DIR:-$root/target/debug}"
export CORRAL_KAFKA_BOOTSTRAP="${CORRAL_KAFKA_BOOTSTRAP:-127.0.0.1:${KAFKA_PORT:-9092}}"
mkdir -p "$run_dir" "$state_dir"

log() { echo "services.sh: $*" >&2; }

# name | admin port | command line (after the binary). Order is start order.
# A service appears here once it exists; the local stack starts every one listed.
SERVICES=(
  "collector|9101|--listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9101 --write-key corral-demo=demo:default"
  "validator|9102|--admin 127.0.0.1:9102 --instance 0 --state-dir $state_dir"
  "identity|9103|--admin 127.0.0.1:9103 --query 127.0.0.1:9113 --query-auth off --instance 0 --state-dir $state_dir --rules $root/examples/identity.yaml"
  "compute|9104|--admin 127.0.0.1:9104 --query 127.0.0.1:9114 --query-auth off --instance 0 --state-dir $state_dir/compute"
  "fanout|9105|--admin 127.0.0.1:9105 --instance 0 --state-dir $state_dir/fanout"
  "profiles|9106|--admin 127.0.0.1:9106 --listen 127.0.0.1:8090 --instance 0 --state-dir $state_dir/profiles"
)

# The Profile API (corral-profiles, 127.0.0.1:8090) requires a token of the space it reads:
# a demo token of space `default` (id demo-profile-api) is kept in .run/profile-api-token,
# created when the file is missing or the token is no longer in the definitions topic.
token_file="$root/.run/profile-api-token"
ensure_profile_token() {
  local ctl="$bin_dir/corralctl"
  if [[ -s "$token_file" ]] && "$ctl" tokens list --space default 2>/dev/null | grep -qw demo-profile-api; then
    return 0
  fi
  "$ctl" tokens create --space default --id demo-profile-api --by make-up >"$token_file.tmp"
  mv "$token_file.tmp" "$token_file"
  chmod 600 "$token_file"
  log "Profile API token for space default written to .run/profile-api-token"
}

field() { cut -d'|' -f"$2" <<<"$1"; }

selected() {
  local want=("$@") entry name
  for entry in "${SERVICES[@]}"; do
    name="$(field "$entry" 1)"
    if ((${#want[@]} == 0)) || [[ " ${want[*]} " == *" $name "* ]]; then
      echo "$entry"
    fi
  done
}

pid_of() {
  local f="$run_dir/$1.pid"
  [[ -f "$f" ]] || return 1
  local pid
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

ready() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/readyz" 2>/dev/null; }

start() {
  local entry name port args bin
  local waiting=()
  while IFS= read -r entry; do
    [[ -n "$entry" ]] || continue
    name="$(field "$entry" 1)"; port="$(field "$entry" 2)"; args="$(field "$entry" 3)"
    bin="$bin_dir/corral-$name"
    if [[ ! -x "$bin" ]]; then
      log "$bin is missing; run 'make build' first"; exit 1
    fi
    [[ "$name" != profiles ]] || ensure_profile_token
    if pid_of "$name" >/dev/null; then
      log "$name already runs (pid $(pid_of "$name"))"
    else
      # shellcheck disable=SC2086 # args is a trusted, space-separated command line from above
      # corral-profiles: glibc's per-thread arenas keep ~200 MiB of what loading its replicas
      # freed (BENCHMARKS.md, "Profile API"); two arenas are enough for it.
      extra_env=()
      [[ "$name" != profiles ]] || extra_env=("MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}")
      RUST_LOG="${RUST_LOG:-info}" nohup setsid env "${extra_env[@]}" "$bin" $args >"$run_dir/$name.log" 2>&1 </dev/null &
      echo $! >"$run_dir/$name.pid"
      log "started $name (pid $!, log .run/services/$name.log, admin 127.0.0.1:$port)"
    fi
    waiting+=("$name|$port")
  done < <(selected "$@")

  local deadline=$((SECONDS + ${SERVICES_START_TIMEOUT:-120})) w
  for w in "${waiting[@]}"; do
    name="${w%%|*}"; port="${w##*|}"
    until ready "$port"; do
      if ! pid_of "$name" >/dev/null; then
        log "$name exited during start-up; the end of its log:"; tail -n 30 "$run_dir/$name.log" >&2; exit 1
      fi
      if ((SECONDS > deadline)); then
        log "$name is not ready after ${SERVICES_START_TIMEOUT:-120} s; the end of its log:"
        tail -n 30 "$run_dir/$name.log" >&2; exit 1
      fi
      sleep 0.5
    done
    log "$name is ready"
  done
}

stop() {
  local entry name pid
  while IFS= read -r entry; do
    [[ -n "$entry" ]] || continue
    name="$(field "$entry" 1)"
    if pid="$(pid_of "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop within 30 s; sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
      fi
      log "stopped $name"
    fi
    rm -f "$run_dir/$name.pid"
  done < <(selected "$@")
}

status() {
  local entry name port rc=0
  while IFS= read -r entry; do
    name="$(field "$entry" 1)"; port="$(field "$entry" 2)"
    if pid_of "$name" >/dev/null; then
      if ready "$port"; then echo "$name: ready (pid $(pid_of "$name"))"; else echo "$name: running, not ready"; rc=1; fi
    else
      echo "$name: stopped"; rc=3
    fi
  done < <(selected)
  return "$rc"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) status ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

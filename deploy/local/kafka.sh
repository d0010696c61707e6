#!/usr/bin/env bash
# A real Apache Kafka 4.x broker for local development, tests and benchmarks.
#
# One combined KRaft broker+controller on 127.0.0.1, run from the Maven Central jars
# (fetched by deploy/local/pom.xml into a cache folder outside git). See deploy/local/README.md.
#
#   kafka.sh fetch | start | stop | status | reset | perf | topics-cli ARGS... | run CLASS ARGS... | env
#            | user NAME PASSWORD | acl ARGS...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$REPO/.run/kafka-$KAFKA_PORT}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms768m -Xmx768m}"
KAFKA_LOG_LEVEL="${KAFKA_LOG_LEVEL:-INFO}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-1}"
# the SASL_SSL listener (SCRAM-SHA-512, TLS from a local test CA, ACLs); the controller is PORT+1
KAFKA_SECURE_PORT="${KAFKA_SECURE_PORT:-$((KAFKA_PORT + 2))}"
CORRAL_CACHE="${CORRAL_CACHE:-${HOME:-/root}/.cache/corral}"
KAFKA_DIST="$CORRAL_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIB="$KAFKA_DIST/lib"
STAMP="$KAFKA_DIST/.fetched"

BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
CONF="$KAFKA_DATA_DIR/server.properties"
TLS_DIR="$KAFKA_DATA_DIR/tls"
LOG_DIR="$KAFKA_DATA_DIR/data"
LOGS="$KAFKA_DATA_DIR/logs"
SERVER_LOG="$LOGS/server.log"
LOG4J="$HERE/log4j2.properties"

JAVA="java"
SETSID=""; command -v setsid >/dev/null 2>&1 && SETSID="setsid"
if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; fi

log() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

java_major() {
  # prints the major version of $JAVA, or 0 when there is no java
  command -v "$JAVA" >/dev/null 2>&1 || { echo 0; return; }
  local v
  v="$("$JAVA" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  v="${v#1.}"
  echo "${v%%[.+-]*}" | grep -E '^[0-9]+$' || echo 0
}

check_java() {
  local major
  major="$(java_major)"
  [[ "$major" -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, found '${major}' ($JAVA). Run deploy/local/install-deps.sh or set JAVA_HOME."
}

ensure_tools() {
  # maven and a JDK 17+, installed with apt-get only when missing
  local pkgs=()
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  [[ "$(java_major)" -ge 17 ]] || pkgs+=(openjdk-17-jdk-headless)
  if ((${#pkgs[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and no apt-get to install them"
    log "installing ${pkgs[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  check_java
}

pom_stamp() { echo "kafka=$KAFKA_VERSION pom=$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"; }

fetched() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_stamp)" && -d "$KAFKA_LIB" ]]; }

cmd_fetch() {
  if fetched; then return 0; fi
  ensure_tools
  mkdir -p "$CORRAL_CACHE"
  (
    # one fetch at a time (make up and a test may race here)
    flock -w 600 9 || die "timed out waiting for another fetch ($CORRAL_CACHE/.kafka-$KAFKA_VERSION.lock)"
    if fetched; then exit 0; fi
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIB"
    local tmp="$KAFKA_DIST.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
          -DoutputDirectory="$tmp/lib" -DincludeScope=runtime \
          org.apache.maven.plugins:maven-dependency-plugin:3.7.1:copy-dependencies >&2; then
      rm -rf "$tmp"
      die "mvn copy-dependencies failed (is Maven Central reachable?)"
    fi
    [[ -f "$tmp/lib/kafka_2.13-$KAFKA_VERSION.jar" && -f "$tmp/lib/kafka-tools-$KAFKA_VERSION.jar" ]] \
      || { rm -rf "$tmp"; die "fetch finished but kafka_2.13/kafka-tools $KAFKA_VERSION jars are missing"; }
    rm -rf "$KAFKA_LIB"
    mkdir -p "$KAFKA_DIST"
    mv "$tmp/lib" "$KAFKA_LIB"
    rm -rf "$tmp"
    pom_stamp >"$STAMP"
    log "fetched $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars"
  ) 9>"$CORRAL_CACHE/.kafka-$KAFKA_VERSION.lock"
}

# java with the Kafka classpath and our log4j2 config. First arg: root log level.
kjava() {
  local level="$1"; shift
  "$JAVA" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$LOG4J" -Dcorral.log.level="$level" \
    -cp "$KAFKA_LIB/*" "$@"
}

# a short-lived CLI tool: small heap, fast start
ktool() {
  kjava WARN -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "$@"
}

admin_conf() {
  local f="$KAFKA_DATA_DIR/admin.properties"
  mkdir -p "$KAFKA_DATA_DIR"
  printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=10000\n' >"$f"
  echo "$f"
}

# Does a Kafka broker answer on host:port? Sends an ApiVersions v0 request over bash's /dev/tcp and
# checks the response carries our correlation id. No JVM, answers in milliseconds. A broker only
# processes requests once it has started up, so this is also the readiness signal.
kafka_ping() {
  local out
  # shellcheck disable=SC2016  # the inner script expands its own $0 $1
  out="$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    # size=10 | api_key=18 ApiVersions | api_version=0 | correlation_id=0x2a2b2c2d | client_id=null
    printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x2a\x2b\x2c\x2d\xff\xff" >&3
    head -c 8 <&3' "$KAFKA_HOST" "$KAFKA_PORT" 2>/dev/null | od -An -tx1 | tr -d ' \n')" || true
  [[ "$out" =~ ^[0-9a-f]{8}2a2b2c2d$ ]]
}

port_in_use() {
  # shellcheck disable=SC2016
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$KAFKA_HOST" "$1" 2>/dev/null
}

# pid of our broker: from the pid file, else by scanning for a java process whose command line holds
# this data dir's server.properties (covers a lost pid file). Prints nothing when not running.
broker_pid() {
  local pid=""
  if [[ -f "$PID_FILE" ]]; then
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && is_our_broker "$pid"; then echo "$pid"; return 0; fi
  fi
  local f p
  for f in $(grep -lsF -- "$CONF" /proc/[0-9]*/cmdline 2>/dev/null || true); do
    p="${f#/proc/}"; p="${p%/cmdline}"
    if is_our_broker "$p"; then echo "$p"; return 0; fi
  done
  return 0
}

is_our_broker() {
  local cmd
  cmd="$( { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null)" || return 1
  [[ "$cmd" == *" kafka.Kafka $CONF"* ]]
}

# A test CA and the broker's certificate for the secured listener, made once per data dir with
# openssl: $TLS_DIR/ca.pem is what clients trust (ssl.ca.location).
ensure_tls() {
  [[ -f "$TLS_DIR/broker-keystore.pem" && -f "$TLS_DIR/ca.pem" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl is needed for the TLS listener (deploy/local/install-deps.sh installs it)"
  mkdir -p "$TLS_DIR"
  local t="$TLS_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Corral local test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null || die "making the test CA failed"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$KAFKA_HOST" \
    -keyout "$t/broker.key.pkcs1" -out "$t/broker.csr" 2>/dev/null || die "making the broker key failed"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost%s\n' \
    "$([[ "$KAFKA_HOST" != 127.0.0.1 ]] && echo ",DNS:$KAFKA_HOST")" >"$t/san.ext"
  openssl x509 -req -in "$t/broker.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 3650 -extfile "$t/san.ext" -out "$t/broker.pem" 2>/dev/null || die "signing the broker certificate failed"
  # Kafka's PEM keystore: an unencrypted PKCS#8 key followed by the certificate chain
  openssl pkcs8 -topk8 -nocrypt -in "$t/broker.key.pkcs1" -out "$t/broker.key" || die "converting the broker key failed"
  cat "$t/broker.key" "$t/broker.pem" "$t/ca.pem" >"$t/broker-keystore.pem"
  rm -f "$t/broker.key.pkcs1" "$t/broker.csr" "$t/san.ext"
}

render_conf() {
  local cport="$1"
  mkdir -p "$KAFKA_DATA_DIR" "$LOG_DIR" "$LOGS"
  ensure_tls
  sed -e "s|@HOST@|$KAFKA_HOST|g" -e "s|@PORT@|$KAFKA_PORT|g" \
      -e "s|@CONTROLLER_PORT@|$cport|g" -e "s|@LOG_DIR@|$LOG_DIR|g" \
      -e "s|@SECURE_PORT@|$KAFKA_SECURE_PORT|g" -e "s|@TLS_DIR@|$TLS_DIR|g" \
      -e "s|@NUM_PARTITIONS@|$KAFKA_NUM_PARTITIONS|g" \
      "$HERE/server.properties.in" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

controller_port() {
  # The controller endpoint is written into the quorum at format time, so once formatted the data
  # dir keeps its controller port.
  local recorded="$KAFKA_DATA_DIR/controller.port"
  if [[ -f "$LOG_DIR/meta.properties" && -f "$recorded" ]]; then
    local rp; rp="$(cat "$recorded")"
    if [[ -n "${KAFKA_CONTROLLER_PORT:-}" && "$KAFKA_CONTROLLER_PORT" != "$rp" ]]; then
      die "data dir $KAFKA_DATA_DIR was formatted with controller port $rp, not $KAFKA_CONTROLLER_PORT; run 'kafka.sh reset' first"
    fi
    echo "$rp"
  else
    echo "${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
  fi
}

tail_log() {
  if [[ -f "$SERVER_LOG" ]]; then
    echo "---- last lines of $SERVER_LOG ----" >&2
    tail -n 60 "$SERVER_LOG" >&2
    echo "----" >&2
  fi
}

# wait until the broker answers requests, then until the admin API lists topics
wait_ready() {
  local pid="$1" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ! kafka_ping; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail_log; die "broker process $pid exited during startup"
    fi
    ((SECONDS < deadline)) || { tail_log; die "broker did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT}s"; }
    sleep 0.5
  done
  local conf; conf="$(admin_conf)"
  until ktool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
          --command-config "$conf" --list >/dev/null 2>"$KAFKA_DATA_DIR/ready-check.err"; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail_log; die "broker process $pid exited during startup"
    fi
    ((SECONDS < deadline)) || { cat "$KAFKA_DATA_DIR/ready-check.err" >&2; tail_log; die "broker answers but the admin API is not ready after ${KAFKA_START_TIMEOUT}s"; }
    sleep 1
  done
}

cmd_start() {
  # reuse whatever Kafka already answers there (ours from an earlier start, or someone else's)
  if kafka_ping; then
    log "a Kafka broker already answers on $BOOTSTRAP; reusing it"
    return 0
  fi
  cmd_fetch
  check_java
  mkdir -p "$KAFKA_DATA_DIR"
  (
    flock -w 180 9 || die "timed out waiting for another kafka.sh on $KAFKA_DATA_DIR/.lock"
    local pid
    pid="$(broker_pid)"
    if [[ -n "$pid" ]]; then
      log "broker (pid $pid) is starting; waiting for it"
      wait_ready "$pid"
      log "ready on $BOOTSTRAP (pid $pid)"
      exit 0
    fi
    rm -f "$PID_FILE"
    port_in_use "$KAFKA_PORT" && die "port $KAFKA_PORT on $KAFKA_HOST is taken by something that is not a Kafka broker"
    local cport; cport="$(controller_port)"
    port_in_use "$cport" && die "controller port $cport on $KAFKA_HOST is taken (set KAFKA_CONTROLLER_PORT)"
    port_in_use "$KAFKA_SECURE_PORT" && die "secured listener port $KAFKA_SECURE_PORT on $KAFKA_HOST is taken (set KAFKA_SECURE_PORT)"
    render_conf "$cport"

    if [[ ! -f "$LOG_DIR/meta.properties" ]]; then
      local id
      id="$(ktool kafka.tools.StorageTool random-uuid)"
      log "formatting KRaft storage in $LOG_DIR (cluster id $id)"
      ktool kafka.tools.StorageTool format --standalone -t "$id" -c "$CONF" >"$LOGS/format.log" 2>&1 \
        || { cat "$LOGS/format.log" >&2; die "storage format failed"; }
      echo "$id" >"$KAFKA_DATA_DIR/cluster.id"
      echo "$cport" >"$KAFKA_DATA_DIR/controller.port"
    fi

    [[ -f "$SERVER_LOG" ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.1"
    log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller $KAFKA_HOST:$cport, data $KAFKA_DATA_DIR)"
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS holds several words on purpose
    # own session (setsid): a Ctrl-C or a process-group kill aimed at the caller does not reach it
    $SETSID nohup "$JAVA" -server $KAFKA_HEAP_OPTS \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="file:$LOG4J" -Dcorral.log.level="$KAFKA_LOG_LEVEL" \
      -Dkafka.logs.dir="$LOGS" \
      -cp "$KAFKA_LIB/*" kafka.Kafka "$CONF" </dev/null >"$SERVER_LOG" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local t0=$SECONDS
    wait_ready "$pid"
    log "ready on $BOOTSTRAP (pid $pid, $((SECONDS - t0))s)"
  ) 9>"$KAFKA_DATA_DIR/.lock"
}

cmd_stop() {
  [[ -d "$KAFKA_DATA_DIR" ]] || { log "not running (no data dir $KAFKA_DATA_DIR)"; return 0; }
  (
    flock -w 180 9 || die "timed out waiting for another kafka.sh on $KAFKA_DATA_DIR/.lock"
    local pid
    pid="$(broker_pid)"
    if [[ -z "$pid" ]]; then
      rm -f "$PID_FILE"
      if kafka_ping; then
        log "a Kafka broker answers on $BOOTSTRAP but was not started from $KAFKA_DATA_DIR; leaving it alone"
      else
        log "not running"
      fi
      exit 0
    fi
    log "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 60; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "broker did not stop within 30s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$PID_FILE"
    log "stopped"
  ) 9>"$KAFKA_DATA_DIR/.lock"
}

cmd_status() {
  local pid=""
  [[ -d "$KAFKA_DATA_DIR" ]] && pid="$(broker_pid)"
  if kafka_ping; then
    if [[ -n "$pid" ]]; then echo "running: Kafka answers on $BOOTSTRAP (pid $pid, data $KAFKA_DATA_DIR)"
    else echo "running: Kafka answers on $BOOTSTRAP (not started from $KAFKA_DATA_DIR)"; fi
    return 0
  fi
  if [[ -n "$pid" ]]; then
    echo "starting or unhealthy: pid $pid runs but $BOOTSTRAP does not answer (log: $SERVER_LOG)"
    return 1
  fi
  echo "stopped: nothing answers on $BOOTSTRAP"
  return 3
}

cmd_reset() {
  cmd_stop
  if [[ -n "$(broker_pid)" ]]; then die "broker still running; not deleting $KAFKA_DATA_DIR"; fi
  rm -rf "$KAFKA_DATA_DIR"
  log "deleted $KAFKA_DATA_DIR"
}

cmd_topics() {
  cmd_fetch
  check_java
  local args=("$@") a has_bs=0
  for a in "${args[@]}"; do [[ "$a" == "--bootstrap-server" ]] && has_bs=1; done
  if ((has_bs)); then ktool org.apache.kafka.tools.TopicCommand "${args[@]}"
  else ktool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "${args[@]}"; fi
}

cmd_run() {
  (($#)) || die "usage: kafka.sh run CLASS [ARGS...] (e.g. org.apache.kafka.tools.ConsoleProducer)"
  cmd_fetch
  check_java
  kjava WARN -Xmx512m "$@"
}

# SCRAM-SHA-512 credentials for a principal of the secured listener (created or replaced).
cmd_user() {
  (($# == 2)) || die "usage: kafka.sh user NAME PASSWORD"
  cmd_fetch
  check_java
  ktool kafka.admin.ConfigCommand --bootstrap-server "$BOOTSTRAP" --command-config "$(admin_conf)" \
    --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$2]" >&2
}

# Kafka's ACL tool against the local broker (as the super user), e.g.
#   kafka.sh acl --add --allow-principal User:validator --operation Read --topic corral.events.raw
cmd_acl() {
  (($#)) || die "usage: kafka.sh acl AclCommand-ARGS... (see docs/security.md)"
  cmd_fetch
  check_java
  ktool org.apache.kafka.tools.AclCommand --bootstrap-server "$BOOTSTRAP" --command-config "$(admin_conf)" "$@" >&2
}

cmd_env() {
  echo "KAFKA_VERSION=$KAFKA_VERSION"
  echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
  echo "KAFKA_SECURE_BOOTSTRAP=$KAFKA_HOST:$KAFKA_SECURE_PORT"
  echo "KAFKA_CA=$TLS_DIR/ca.pem"
  echo "KAFKA_LIB=$KAFKA_LIB"
  echo "KAFKA_DATA_DIR=$KAFKA_DATA_DIR"
  echo "KAFKA_SERVER_LOG=$SERVER_LOG"
}

cmd_perf() {
  local records="${PERF_RECORDS:-500000}" size="${PERF_RECORD_SIZE:-1024}"
  local parts="${PERF_PARTITIONS:-3}" txn_ms="${PERF_TXN_MS:-}"
  local linger="${PERF_LINGER_MS:-5}" batch="${PERF_BATCH_SIZE:-131072}"
  local topic="${PERF_TOPIC:-corral-perf-baseline-$(date +%s)}"
  cmd_start
  log "perf: topic $topic, $parts partitions, $records records of $size bytes${txn_ms:+, transactions of ${txn_ms} ms}"
  ktool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --command-config "$(admin_conf)" \
    --create --if-not-exists --topic "$topic" --partitions "$parts" --replication-factor 1 >&2

  local out="$KAFKA_DATA_DIR/perf" pargs=() cargs=()
  mkdir -p "$out"
  if [[ -n "$txn_ms" ]]; then
    pargs+=(--transaction-duration-ms "$txn_ms" --transactional-id "corral-perf-$$")
    cargs+=(--command-property isolation.level=read_committed)
  fi
  # shellcheck disable=SC2086  # PERF_PRODUCER_PROPS: extra space-separated name=value pairs
  kjava WARN -Xmx512m org.apache.kafka.tools.ProducerPerformance --bootstrap-server "$BOOTSTRAP" \
    --topic "$topic" --num-records "$records" --record-size "$size" --throughput -1 \
    --command-property acks=all linger.ms="$linger" batch.size="$batch" ${PERF_PRODUCER_PROPS:-} "${pargs[@]}" | tee "$out/produce.txt" >&2
  local last
  last="$(grep 'records sent' "$out/produce.txt" | tail -n 1)"
  [[ -n "$last" ]] || die "ProducerPerformance printed no summary"
  # "500000 records sent, 84889.3 records/sec (82.90 MB/sec), 301.2 ms avg latency, 712.0 ms max latency, 289 ms 50th, ..."
  local p_rps p_mbps p_avg p_p99
  p_rps="$(sed -E 's/.* ([0-9.]+) records\/sec.*/\1/' <<<"$last")"
  p_mbps="$(sed -E 's/.*\(([0-9.]+) MB\/sec\).*/\1/' <<<"$last")"
  p_avg="$(sed -E 's/.* ([0-9.]+) ms avg latency.*/\1/' <<<"$last")"
  p_p99="$(sed -E 's/.* ([0-9.]+) ms 99th,.*/\1/' <<<"$last")"

  kjava WARN -Xmx512m org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$BOOTSTRAP" \
    --topic "$topic" --num-records "$records" --timeout 30000 --group "corral-perf-$$" \
    ${cargs[@]+"${cargs[@]}"} | tee "$out/consume.txt" >&2
  # header: start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
  #         rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
  local row
  row="$(grep -E '^[0-9]{4}-' "$out/consume.txt" | tail -n 1)"
  [[ -n "$row" ]] || die "ConsumerPerformance printed no result row"
  local c_n c_mbps c_rps c_reb c_fmbps c_frps
  IFS=',' read -r _ _ _ c_mbps c_n c_rps c_reb _ c_fmbps c_frps <<<"$(tr -d ' ' <<<"$row")"

  if [[ "${PERF_KEEP_TOPIC:-0}" != 1 ]]; then
    ktool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --command-config "$(admin_conf)" \
      --delete --topic "$topic" >&2 || log "could not delete $topic"
  fi

  local mode="plain"; [[ -n "$txn_ms" ]] && mode="txn${txn_ms}ms"
  local s1 s2
  s1="baseline produce records=$records record_bytes=$size partitions=$parts mode=$mode linger_ms=$linger batch_size=$batch records_per_sec=$p_rps mb_per_sec=$p_mbps avg_latency_ms=$p_avg p99_latency_ms=$p_p99"
  s2="baseline consume records=$c_n record_bytes=$size partitions=$parts mode=$mode records_per_sec=$c_frps mb_per_sec=$c_fmbps wall_records_per_sec=$c_rps wall_mb_per_sec=$c_mbps rebalance_ms=$c_reb"
  echo "$s1"
  echo "$s2"
  if [[ -n "${PERF_OUT:-}" ]]; then printf '%s\n%s\n' "$s1" "$s2" >>"$PERF_OUT"; fi
}

usage() {
  cat <<EOF
usage: deploy/local/kafka.sh COMMAND [ARGS]

  fetch              download the Kafka $KAFKA_VERSION jars into $KAFKA_LIB (once)
  start              start a broker on $BOOTSTRAP and wait until it answers (reuses a running one)
  stop               stop the broker started from $KAFKA_DATA_DIR (SIGTERM, SIGKILL after 30 s)
  status             say whether it runs and answers (exit 0 running, 1 unhealthy, 3 stopped)
  reset              stop and delete $KAFKA_DATA_DIR
  perf               broker baseline: ProducerPerformance then ConsumerPerformance, 1 KB records
  topics-cli ARGS    org.apache.kafka.tools.TopicCommand with --bootstrap-server $BOOTSTRAP
  run CLASS ARGS     any Java main class on the Kafka classpath (console tools, TransactionsCommand, ...)
  env                print KAFKA_BOOTSTRAP, KAFKA_SECURE_BOOTSTRAP, KAFKA_CA, ... as NAME=value lines
  user NAME PASSWORD SCRAM-SHA-512 credentials for NAME on the secured listener ($KAFKA_HOST:$KAFKA_SECURE_PORT)
  acl ARGS           org.apache.kafka.tools.AclCommand as the super user (--add/--remove/--list ...)
EOF
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    fetch) cmd_fetch; log "Kafka $KAFKA_VERSION jars in $KAFKA_LIB" ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    perf) cmd_perf ;;
    topics-cli | topics) cmd_topics "$@" ;;
    run) cmd_run "$@" ;;
    env) cmd_env ;;
    user) cmd_user "$@" ;;
    acl) cmd_acl "$@" ;;
    -h | --help | help) usage ;;
    "") usage; exit 2 ;;
    *) usage >&2; die "unknown command '$cmd'" ;;
  esac
}

main "$@"

#!/usr/bin/env bash
# The local stack as real processes on 127.0.0.1: Kafka (KRaft), Redis, the Pub/Sub
# emulator and kinesalite. Usage: stack/stack.sh up|down|status|restart [service...]
# Services: kafka redis pubsub kinesis (default: all). Idempotent: `up` reuses a
# healthy service on its port. Data and logs live under $AD_STACK_DIR (default .stack/).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${AD_STACK_DIR:-$ROOT/.stack}
KAFKA_PORT=${AD_STACK_KAFKA_PORT:-19092}
KAFKA_CTRL_PORT=${AD_STACK_KAFKA_CTRL_PORT:-19093}
REDIS_PORT=${AD_STACK_REDIS_PORT:-16379}
PUBSUB_PORT=${AD_STACK_PUBSUB_PORT:-18085}
KINESIS_PORT=${AD_STACK_KINESIS_PORT:-14567}
KINESALITE_VERSION=3.3.3
PY=${PYTHON:-$ROOT/.venv/bin/python}
ALL=(kafka redis pubsub kinesis)

log() { echo "[stack] $*" >&2; }
die() { echo "[stack] ERROR: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required for $2 but was not found on PATH ($3)"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pidfile() { echo "$STACK_DIR/run/$1.pid"; }
alive() { local f; f=$(pidfile "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

wait_for() { # name timeout_s command...
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "$name did not become healthy in ${timeout}s; last log lines:"
      tail -n 30 "$STACK_DIR/logs/$name.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- health checks
health_kafka() { "$PY" "$ROOT/stack/kafka_health.py" "127.0.0.1:$KAFKA_PORT" 2>/dev/null; }
health_redis() { redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
health_pubsub() { curl -sf "http://127.0.0.1:$PUBSUB_PORT/v1/projects/health-check/topics" >/dev/null; }
health_kinesis() {
  curl -sf -X POST "http://127.0.0.1:$KINESIS_PORT/" \
    -H 'Content-Type: application/x-amz-json-1.1' -H 'X-Amz-Target: Kinesis_20131202.ListStreams' \
    -H 'X-Amz-Date: 20200101T000000Z' -H 'Authorization: AWS4-HMAC-SHA256 Credential=x/20200101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=x' \
    -d '{}' | grep -q StreamNames
}

# ---------------------------------------------------------------- kafka
kafka_install() {
  local libs="$STACK_DIR/kafka-libs"
  if [ ! -f "$libs/.complete" ]; then
    need java Kafka "install OpenJDK 17+"
    need mvn Kafka "install Maven, e.g. apt-get install maven"
    log "downloading Kafka jars from Maven Central into $libs"
    rm -rf "$libs"
    (cd "$ROOT/stack" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$libs") \
      || die "mvn could not fetch the Kafka jars (see output above)"
    touch "$libs/.complete"
  fi
}
kafka_up() {
  need java Kafka "install OpenJDK 17+"
  kafka_install
  local dir="$STACK_DIR/kafka" props="$STACK_DIR/kafka/server.properties"
  mkdir -p "$dir/data"
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
transaction.abort.timed.out.transaction.cleanup.interval.ms=10000
log.retention.hours=24
EOF
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cid
    cid=$(java -cp "$STACK_DIR/kafka-libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    java -cp "$STACK_DIR/kafka-libs/*" kafka.tools.StorageTool format -t "$cid" -c "$props" \
      >>"$STACK_DIR/logs/kafka.log" 2>&1 || die "kafka storage format failed (see $STACK_DIR/logs/kafka.log)"
  fi
  cat >"$dir/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    Console: {name: STDOUT, PatternLayout: {Pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
    Logger: [{name: kafka.server.KafkaServer, level: INFO}, {name: kafka.Kafka, level: INFO}]
EOF
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j2.configurationFile="$dir/log4j2.yaml" \
    -cp "$STACK_DIR/kafka-libs/*" kafka.Kafka "$props" >>"$STACK_DIR/logs/kafka.log" 2>&1 &
  echo $! >"$(pidfile kafka)"
}

# ---------------------------------------------------------------- redis
redis_up() {
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing redis-server from Debian"
      (apt-get install -y redis-server >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y redis-server >/dev/null)) \
        || die "could not install redis-server with apt-get"
    fi
    need redis-server Redis "apt-get install redis-server"
  fi
  mkdir -p "$STACK_DIR/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$STACK_DIR/redis" --pidfile "$(pidfile redis)" --logfile "$STACK_DIR/logs/redis.log"
}

# ---------------------------------------------------------------- pubsub
pubsub_up() {
  local bin=""
  if command -v gcloud >/dev/null 2>&1; then
    bin="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
  fi
  [ -x "$bin" ] || bin=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  [ -x "$bin" ] || die "the Pub/Sub emulator was not found (install google-cloud-cli-pubsub-emulator)"
  need java "the Pub/Sub emulator" "install OpenJDK 17+"
  mkdir -p "$STACK_DIR/pubsub"
  nohup "$bin" --host=127.0.0.1 --port="$PUBSUB_PORT" >>"$STACK_DIR/logs/pubsub.log" 2>&1 &
  echo $! >"$(pidfile pubsub)"
}

# ---------------------------------------------------------------- kinesis
kinesis_up() {
  local nodedir="$STACK_DIR/node" bin="$STACK_DIR/node/node_modules/.bin/kinesalite"
  if [ ! -x "$bin" ]; then
    need node kinesalite "install Node.js 20"
    need npm kinesalite "install npm"
    log "installing kinesalite@$KINESALITE_VERSION from npm"
    mkdir -p "$nodedir"
    (cd "$nodedir" && npm install --no-audit --no-fund "kinesalite@$KINESALITE_VERSION" >/dev/null) \
      || die "npm install kinesalite failed"
  fi
  mkdir -p "$STACK_DIR/kinesis"
  nohup "$bin" --port "$KINESIS_PORT" --path "$STACK_DIR/kinesis" --shardLimit 100 --createStreamMs 0 \
    --deleteStreamMs 0 --updateStreamMs 0 >>"$STACK_DIR/logs/kinesis.log" 2>&1 &
  echo $! >"$(pidfile kinesis)"
}

# ---------------------------------------------------------------- dispatch
port_of() { case $1 in kafka) echo "$KAFKA_PORT" ;; redis) echo "$REDIS_PORT" ;; pubsub) echo "$PUBSUB_PORT" ;; kinesis) echo "$KINESIS_PORT" ;; *) die "unknown service $1 (use: ${ALL[*]})" ;; esac; }
timeout_of() { case $1 in kafka) echo 120 ;; pubsub) echo 90 ;; *) echo 30 ;; esac; }

up_one() {
  local s=$1 port
  port=$(port_of "$s")
  if "health_$s"; then log "$s already healthy on 127.0.0.1:$port"; return 0; fi
  if port_open "$port" && ! alive "$s"; then
    die "port $port is taken by another process that is not a healthy $s; set AD_STACK_${s^^}_PORT"
  fi
  if ! alive "$s"; then log "starting $s on 127.0.0.1:$port"; "${s}_up"; fi
  wait_for "$s" "$(timeout_of "$s")" "health_$s" || die "$s failed its health check"
  log "$s healthy on 127.0.0.1:$port"
}

down_one() {
  local s=$1 f pid
  f=$(pidfile "$s")
  if [ -f "$f" ]; then
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $s (pid $pid)"
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  fi
  if [ "$s" = pubsub ]; then pkill -f "cloud-pubsub-emulator.*--port=$PUBSUB_PORT" 2>/dev/null || true; pkill -f "pubsub-emulator.*$PUBSUB_PORT" 2>/dev/null || true; fi
}

status_one() {
  local s=$1
  if "health_$s"; then echo "$s: healthy on 127.0.0.1:$(port_of "$s")"; else echo "$s: down (127.0.0.1:$(port_of "$s"))"; return 1; fi
}

cmd=${1:-status}; shift || true
services=("$@"); [ ${#services[@]} -gt 0 ] || services=("${ALL[@]}")
mkdir -p "$STACK_DIR/run" "$STACK_DIR/logs"
need curl "health checks" "apt-get install curl"
case $cmd in
  up) for s in "${services[@]}"; do up_one "$s"; done ;;
  down) for s in "${services[@]}"; do down_one "$s"; done ;;
  restart) for s in "${services[@]}"; do down_one "$s"; up_one "$s"; done ;;
  status) rc=0; for s in "${services[@]}"; do status_one "$s" || rc=1; done; exit $rc ;;
  env) echo "AD_STACK_KAFKA_PORT=$KAFKA_PORT AD_STACK_REDIS_PORT=$REDIS_PORT AD_STACK_PUBSUB_PORT=$PUBSUB_PORT AD_STACK_KINESIS_PORT=$KINESIS_PORT" ;;
  *) die "usage: stack.sh up|down|restart|status [kafka redis pubsub kinesis]" ;;
esac

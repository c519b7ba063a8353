#!/usr/bin/env bash
# Real Apache Kafka (KRaft mode, no ZooKeeper) for development, tests and benchmarks.
#
#   scripts/kafka.sh fetch                     download broker jars (once) into the cache dir
#   scripts/kafka.sh start  [--cluster]        fresh broker(s): wipe, format, start, wait until ready;
#                                              prints the bootstrap string on stdout (restarts if running)
#   scripts/kafka.sh start  --keep [--cluster] the same, but keeping the data of a node formatted
#                                              before (topics, records, offsets); fresh if there is none
#   scripts/kafka.sh restart [--cluster]       = start --keep: stop (if running), start with the data kept
#   scripts/kafka.sh stop   [--cluster]        SIGTERM, up to 30 s, then SIGKILL (exit 0 if nothing runs);
#                                              stop never deletes data (only a fresh start does)
#   scripts/kafka.sh kill   [--cluster]        SIGKILL the broker(s) at once; the data stays (restart)
#   scripts/kafka.sh pause | resume            SIGSTOP / SIGCONT the single node (a hung broker)
#   scripts/kafka.sh status [--cluster]        exit 0 if ready, 1 otherwise
#   scripts/kafka.sh bootstrap [--cluster]     print the bootstrap string only
#   scripts/kafka.sh libs                      print the jar directory (after fetch), for java -cp "$(...)/*"
#   scripts/kafka.sh kill-node N               3-node cluster only: SIGKILL node N (1..3)
#   scripts/kafka.sh start-node N              3-node cluster only: restart node N, keeping its data
#   scripts/kafka.sh pause-node N | resume-node N   3-node cluster only: SIGSTOP / SIGCONT node N
#   scripts/kafka.sh controller [--cluster]    print the node id of the active KRaft controller
#                                              (the metadata quorum's leader, asked with Kafka's own tool)
#   scripts/kafka.sh leaders [--cluster] TOPIC print one line per partition: PARTITION LEADER REPLICAS ISR
#                                              (node ids; lists comma-separated; leader -1 = none)
#   scripts/kafka.sh create-topic [--cluster] NAME [PARTITIONS [REPLICATION [MIN_ISR]]]
#                                              (needs python3 + confluent_kafka; default RF = broker default,
#                                              MIN_ISR sets the topic's min.insync.replicas)
#
# Secured single node: start, restart, stop, kill, pause, resume, status and bootstrap take
# --secure to act on a second single node, with its own state dir (FEEDHANDLER_KAFKA_STATE/secure)
# and ports, that never touches the plaintext one. It listens on 127.0.0.1 only:
#   SASL_PLAINTEXT  secure port      (default 19192)  SASL PLAIN and SCRAM-SHA-512
#   SSL             secure port + 1  (default 19193)  server certificate only (no client certificate)
#   SASL_SSL        secure port + 2  (default 19194)  both, over TLS
#   CONTROLLER      secure port + 3  (default 19195)  plaintext, the node's own quorum
# Users (throw-away): PLAIN feed_plain / plain-secret, SCRAM-SHA-512 feed_scram / scram-secret
# (added when the storage is formatted: StorageTool format --add-scram), admin / admin-secret (PLAIN,
# the broker's own). A fresh start makes a new CA and broker certificate (for 127.0.0.1 and
# localhost) with openssl; clients trust FEEDHANDLER_KAFKA_STATE/secure/tls/ca.pem
# (librdkafka: ssl.ca.location).
#   scripts/kafka.sh start --secure            prints, on stdout, shell assignments for clients:
#                                              KAFKA_SECURE_SASL_PLAINTEXT, _SSL, _SASL_SSL (bootstraps),
#                                              KAFKA_SECURE_CA, KAFKA_SECURE_{PLAIN,SCRAM}_{USER,PASSWORD}
#   scripts/kafka.sh bootstrap --secure        prints the same; status --secure checks it over SASL
#
# Environment:
#   FEEDHANDLER_KAFKA_VERSION          Kafka version to fetch/run (default below)
#   FEEDHANDLER_KAFKA_HOME             jar cache (default ~/.cache/feedhandler/kafka-<version>); jars in ./libs
#   FEEDHANDLER_KAFKA_STATE            state dir (default /tmp/feedhandler-kafka); ./single and ./cluster/node-N
#   FEEDHANDLER_KAFKA_PORT             single-node broker port (default 19092)
#   FEEDHANDLER_KAFKA_CONTROLLER_PORT  single-node controller port (default broker port + 1)
#   FEEDHANDLER_KAFKA_SECURE_PORT      secured node's first port (default 19192; it uses 4 in a row)
#   FEEDHANDLER_KAFKA_CLUSTER_PORT     cluster node 1 broker port (default 29092); node N uses
#                                      base + 100*(N-1) for the broker and that + 1 for its controller
#   FEEDHANDLER_KAFKA_HEAP_OPTS        JVM heap flags (default -Xms512m -Xmx1g single, -Xms256m -Xmx512m cluster)
#   FEEDHANDLER_KAFKA_TIMEOUT          seconds to wait for readiness (default 90)
#   FEEDHANDLER_KAFKA_PROBE            readiness probe: auto (default) | kcat | python | log
# Choose ports below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and up by
# default), as the defaults are: a killed node's port in that range can be taken by an outgoing
# connection before restart, and then restart fails with "Address already in use".
#
# Informational messages go to stderr; stdout carries only what a caller may capture
# (the bootstrap string from start/bootstrap, the status line from status).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/kafka-pom.xml"

KAFKA_VERSION="${FEEDHANDLER_KAFKA_VERSION:-4.4.0}"
KAFKA_HOME="${FEEDHANDLER_KAFKA_HOME:-${HOME:-/tmp}/.cache/feedhandler/kafka-$KAFKA_VERSION}"
LIBS="$KAFKA_HOME/libs"
STATE="${FEEDHANDLER_KAFKA_STATE:-/tmp/feedhandler-kafka}"
HOST=127.0.0.1
PORT="${FEEDHANDLER_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${FEEDHANDLER_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
CLUSTER_PORT="${FEEDHANDLER_KAFKA_CLUSTER_PORT:-29092}"
CLUSTER_NODES=3
READY_TIMEOUT="${FEEDHANDLER_KAFKA_TIMEOUT:-90}"
PROBE="${FEEDHANDLER_KAFKA_PROBE:-auto}"
STOP_TIMEOUT=30

SINGLE_DIR="$STATE/single"
CLUSTER_DIR="$STATE/cluster"

# The secured single node (--secure): its own state dir and ports, next to the plaintext one.
SECURE=0
SECURE_PORT="${FEEDHANDLER_KAFKA_SECURE_PORT:-19192}"
SECURE_DIR="$STATE/secure"
# Throw-away credentials of the secured node (it listens on 127.0.0.1 only and its CA is made
# afresh by every fresh start). The admin user is the broker's own (inter-broker, probe).
SECURE_ADMIN_USER=admin
SECURE_ADMIN_PASSWORD=admin-secret
SECURE_PLAIN_USER=feed_plain
SECURE_PLAIN_PASSWORD=plain-secret
SECURE_SCRAM_USER=feed_scram
SECURE_SCRAM_PASSWORD=scram-secret
SECURE_KEYSTORE_PASSWORD=keystore-secret

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit "${1:-2}"
}

# ---------------------------------------------------------------- helpers

node_dir() { echo "$CLUSTER_DIR/node-$1"; }
cluster_broker_port() { echo $((CLUSTER_PORT + 100 * ($1 - 1))); }
cluster_controller_port() { echo $((CLUSTER_PORT + 100 * ($1 - 1) + 1)); }

single_bootstrap() {
    if ((SECURE)); then secure_env; else echo "$HOST:$PORT"; fi
}

single_what() { if ((SECURE)); then echo "secured single-node"; else echo "single-node"; fi; }

# --secure: the single-node commands act on the secured node instead. Its listeners:
# SASL_PLAINTEXT on the secure port, SSL on +1, SASL_SSL on +2, the controller on +3.
select_secure() {
    SECURE=1
    SINGLE_DIR=$SECURE_DIR
    PORT=$SECURE_PORT
    CONTROLLER_PORT=$((SECURE_PORT + 3))
}
secure_ports() { echo "$SECURE_PORT" $((SECURE_PORT + 1)) $((SECURE_PORT + 2)) $((SECURE_PORT + 3)); }

# What a client of the secured node needs, as shell assignments (eval-able).
secure_env() {
    cat <<EOF
KAFKA_SECURE_SASL_PLAINTEXT=$HOST:$SECURE_PORT
KAFKA_SECURE_SSL=$HOST:$((SECURE_PORT + 1))
KAFKA_SECURE_SASL_SSL=$HOST:$((SECURE_PORT + 2))
KAFKA_SECURE_CA=$SECURE_DIR/tls/ca.pem
KAFKA_SECURE_PLAIN_USER=$SECURE_PLAIN_USER
KAFKA_SECURE_PLAIN_PASSWORD=$SECURE_PLAIN_PASSWORD
KAFKA_SECURE_SCRAM_USER=$SECURE_SCRAM_USER
KAFKA_SECURE_SCRAM_PASSWORD=$SECURE_SCRAM_PASSWORD
EOF
}

# cluster_list broker|voter: every node's HOST:BROKER_PORT, or its N@HOST:CONTROLLER_PORT
# (controller.quorum.voters), comma-separated.
cluster_list() {
    local n out=""
    for ((n = 1; n <= CLUSTER_NODES; n++)); do
        case "$1" in
            broker) out+="${out:+,}$HOST:$(cluster_broker_port "$n")" ;;
            voter) out+="${out:+,}$n@$HOST:$(cluster_controller_port "$n")" ;;
        esac
    done
    echo "$out"
}
cluster_bootstrap() { cluster_list broker; }

# Refuse to rm -rf something silly if the env var is misconfigured.
check_state_dir() {
    case "$STATE" in
        "" | / | /tmp | /tmp/ | /root | /home | "${HOME:-/nonexistent}") die "refusing to use FEEDHANDLER_KAFKA_STATE='$STATE'" ;;
    esac
    mkdir -p "$STATE"
}

# Serialize start/stop/kill/restart on the same state dir (fd 8 is closed for the JVMs).
lock_state() {
    check_state_dir
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$STATE/.lock"
        flock -w 300 8 || die "timed out waiting for the lock on $STATE"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# pid of the JVM serving node dir $1, or nothing. Checks the command line too, so a
# stale pid file whose pid was reused by another process is not mistaken for Kafka.
node_pid() {
    local dir=$1 pid
    [[ -f "$dir/kafka.pid" ]] || return 0
    pid=$(<"$dir/kafka.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/server.properties"; then
        echo "$pid"
    fi
}

tail_logs() {
    local dir=$1 f
    for f in "$dir/server.log" "$dir/stdout.log"; do
        if [[ -s "$f" ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

gen_uuid() { # Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'
    local u
    while :; do
        u=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ "$u" != -* ]] && break
    done
    echo "$u"
}

# ---------------------------------------------------------------- fetch

libs_ok() { [[ -f "$LIBS/.complete" && "$(<"$LIBS/.complete")" == "$KAFKA_VERSION" ]]; }

cmd_fetch() {
    libs_ok && return 0
    command -v java >/dev/null 2>&1 || die "java not found (Java 17+ required)"
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once, to download the Kafka jars)"
    [[ -f "$POM" ]] || die "missing $POM"
    mkdir -p "$KAFKA_HOME"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$KAFKA_HOME/.fetch.lock"
        flock -w 900 9 || die "timed out waiting for another fetch"
        libs_ok && return 0
    fi
    local tmp="$KAFKA_HOME/libs.tmp.$$"
    rm -rf "$tmp"
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS ..."
    # The Maven output goes to a file (shown on failure): the command line is the one from
    # the header of kafka-pom.xml, plus batch mode and no progress bars.
    if ! mvn -B -ntp -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        >"$KAFKA_HOME/fetch.log" 2>&1; then
        grep -E '\[(ERROR|WARNING)\]' "$KAFKA_HOME/fetch.log" | head -n 30 >&2 || tail -n 30 "$KAFKA_HOME/fetch.log" >&2
        rm -rf "$tmp"
        die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (full log: $KAFKA_HOME/fetch.log)"
    fi
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    echo "$KAFKA_VERSION" >"$LIBS/.complete"
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1))"
}

# ---------------------------------------------------------------- config

# plaintext_listeners BROKER_PORT CONTROLLER_PORT: the listener settings of a plaintext node.
plaintext_listeners() {
    cat <<EOF
listeners=PLAINTEXT://$HOST:$1,CONTROLLER://$HOST:$2
advertised.listeners=PLAINTEXT://$HOST:$1
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
EOF
}

# write_config DIR NODE_ID BROKER_PORT CONTROLLER_PORT VOTERS REPLICATION MIN_ISR [LISTENERS]
# LISTENERS: the listener and security settings (default: plaintext_listeners); the first
# advertised listener is the one the readiness probe asks (with DIR/probe.properties if any).
write_config() {
    local dir=$1 id=$2 bport=$3 cport=$4 voters=$5 rf=$6 isr=$7
    local listeners=${8:-$(plaintext_listeners "$bport" "$cport")}
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
# generated by scripts/kafka.sh -- combined broker+controller KRaft node
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
$listeners
controller.listener.names=CONTROLLER
log.dirs=$dir/data

num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0

# 16 MiB messages
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
socket.request.max.bytes=104857600

# retention: 7 days, no size limit (a fresh start wipes the state dir anyway)
log.retention.hours=168
log.retention.bytes=-1
log.segment.bytes=1073741824

# small machine (2 cores)
num.network.threads=3
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=33554432
EOF
    cat >"$dir/log4j2.properties" <<EOF
status = warn
name = feedhandler-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $dir/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

# secure_listeners DIR: the listener and security settings of the secured node. SASL users:
# PLAIN ones live in the listener's JAAS line, SCRAM ones in the cluster metadata (added when
# the storage is formatted, start_single). The broker itself talks SASL PLAIN as admin.
secure_listeners() {
    local dir=$1 sasl_port=$SECURE_PORT ssl_port=$((SECURE_PORT + 1)) sasl_ssl_port=$((SECURE_PORT + 2))
    local plain="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$SECURE_ADMIN_USER\" password=\"$SECURE_ADMIN_PASSWORD\" user_$SECURE_ADMIN_USER=\"$SECURE_ADMIN_PASSWORD\" user_$SECURE_PLAIN_USER=\"$SECURE_PLAIN_PASSWORD\";"
    local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
    cat <<EOF
listeners=SASL_PLAINTEXT://$HOST:$sasl_port,SSL://$HOST:$ssl_port,SASL_SSL://$HOST:$sasl_ssl_port,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=SASL_PLAINTEXT://$HOST:$sasl_port,SSL://$HOST:$ssl_port,SASL_SSL://$HOST:$sasl_ssl_port
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=$plain
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$scram
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$SECURE_KEYSTORE_PASSWORD
ssl.key.password=$SECURE_KEYSTORE_PASSWORD
ssl.client.auth=none
EOF
}

# make_tls DIR: a throw-away CA (DIR/tls/ca.pem, what clients trust: ssl.ca.location) and the
# broker's key and certificate for 127.0.0.1 / localhost signed by it, as a PKCS12 keystore.
make_tls() {
    local tls=$1/tls
    command -v openssl >/dev/null 2>&1 || die "openssl not found (needed for the secured node's certificates)"
    mkdir -p "$tls"
    (
        cd "$tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout ca.key -out ca.pem \
            -subj "/CN=feedhandler throw-away CA $(date +%s)"
        openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost"
        printf '%s\n' "subjectAltName=IP:$HOST,DNS:localhost" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile broker.ext -out broker.pem
        openssl pkcs12 -export -name broker -in broker.pem -inkey broker.key -certfile ca.pem \
            -passout "pass:$SECURE_KEYSTORE_PASSWORD" -out broker.p12
    ) >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "could not make the TLS certificates"; }
}

# The readiness probe's client settings for the secured node: SASL PLAIN as the admin.
write_probe_properties() {
    cat >"$1/probe.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.username=$SECURE_ADMIN_USER
sasl.password=$SECURE_ADMIN_PASSWORD
EOF
}

format_storage() { # DIR CLUSTER_ID [STORAGE TOOL ARGUMENTS...] (e.g. --add-scram ...)
    local dir=$1 cid=$2
    shift 2
    if ! java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
        -Dlog4j2.configurationFile="file:$dir/log4j2.properties" \
        -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" "$@" \
        >"$dir/format.log" 2>&1; then
        cat "$dir/format.log" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- process control

launch() { # DIR HEAP_OPTS
    local dir=$1 heap=$2
    : >"$dir/stdout.log"
    echo $(($(stat -c %s "$dir/server.log" 2>/dev/null || echo 0) + 1)) >"$dir/.log_offset"
    # setsid: own session, survives the caller's terminal/CI step; the inner bash writes
    # its own pid (== the JVM's pid after exec) so the pid file is exact.
    # shellcheck disable=SC2086,SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
        java $heap -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="file:$dir/log4j2.properties" \
        -Dkafka.logs.dir="$dir" \
        -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
        </dev/null >>"$dir/stdout.log" 2>&1 8>&- 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$dir/kafka.pid" ]] && return 0
        sleep 0.1
    done
    die "could not start the JVM for $dir"
}

# Sends SIGTERM to all given node dirs, waits up to STOP_TIMEOUT s, then SIGKILLs.
stop_dirs() {
    local dir pid pids=() deadline
    for dir in "$@"; do
        pid=$(node_pid "$dir")
        if [[ -n "$pid" ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((${#pids[@]})); do
        local alive=()
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive+=("$pid")
        done
        pids=("${alive[@]+"${alive[@]}"}")
        ((${#pids[@]})) || break
        if ((SECONDS >= deadline)); then
            log "still running after ${STOP_TIMEOUT}s, sending SIGKILL to ${pids[*]}"
            kill -KILL "${pids[@]}" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    for dir in "$@"; do rm -f "$dir/kafka.pid"; done
    return 0
}

# ---------------------------------------------------------------- readiness

# Resolves FEEDHANDLER_KAFKA_PROBE=auto once per run (call resolve_probe before probing).
resolve_probe() { PROBE=$(probe_mode); }

probe_mode() {
    local mode=$PROBE
    if [[ "$mode" == auto ]]; then
        if command -v kcat >/dev/null 2>&1; then
            mode=kcat
        elif python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
            mode=python
        else
            mode=log
        fi
    fi
    case "$mode" in
        kcat | python | log) echo "$mode" ;;
        *) die "unknown FEEDHANDLER_KAFKA_PROBE=$mode (auto|kcat|python|log)" ;;
    esac
}

# probe_brokers BOOTSTRAP [CLIENT_PROPERTIES]: the ids of the live (unfenced) brokers in the
# metadata that BOOTSTRAP returns; CLIENT_PROPERTIES, a file of librdkafka key=value lines
# (security settings), is used when it exists.
probe_brokers() {
    local bs=$1 props=${2:-}
    [[ -n "$props" && -f "$props" ]] || props=""
    case "$(probe_mode)" in
        kcat)
            kcat -b "$bs" ${props:+-F "$props"} -L -m 3 2>/dev/null | sed -n 's/^ *broker \([0-9][0-9]*\) at .*/\1/p' || true
            ;;
        python)
            python3 - "$bs" "$props" 2>/dev/null <<'EOF' || true
import sys
from confluent_kafka.admin import AdminClient
settings = {}
if sys.argv[2]:
    with open(sys.argv[2]) as lines:
        settings = dict(line.strip().split("=", 1) for line in lines
                        if "=" in line and not line.startswith("#"))
md = AdminClient({**settings, "bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=3)
for b in sorted(md.brokers):
    print(b)
EOF
            ;;
    esac
}

dir_id() { sed -n 's/^node\.id=//p' "$1/server.properties"; }
dir_port() { sed -n 's/^advertised\.listeners=[^,]*:\([0-9][0-9]*\)\(,.*\)\{0,1\}$/\1/p' "$1/server.properties"; }

# True when the node in DIR serves client requests. It is asked on its own listener:
# a Kafka 4 broker only processes requests once the controller has unfenced it, so this
# also holds right after kill-node + start-node, while the other nodes may still list the
# old incarnation. Without kcat or confluent_kafka: its log says started + its port is open.
node_ready() {
    local dir=$1 id port
    [[ -f "$dir/server.properties" ]] || return 1
    id=$(dir_id "$dir")
    port=$(dir_port "$dir")
    port_in_use "$port" || return 1
    if [[ "$(probe_mode)" == log ]]; then
        tail -c +"$(cat "$dir/.log_offset" 2>/dev/null || echo 1)" "$dir/server.log" 2>/dev/null |
            grep -q "Kafka Server started"
        return
    fi
    probe_brokers "$HOST:$port" "$dir/probe.properties" | grep -qx "$id"
}

# wait_ready DIR... : waits until every node is ready; fails early if a JVM dies.
wait_ready() {
    local dir pending=("$@")
    resolve_probe
    local deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        local still=()
        for dir in "${pending[@]}"; do
            if [[ -z "$(node_pid "$dir")" ]]; then
                log "the Kafka JVM in $dir exited during startup"
                tail_logs "$dir"
                return 1
            fi
            node_ready "$dir" || still+=("$dir")
        done
        pending=("${still[@]+"${still[@]}"}")
        ((${#pending[@]})) || return 0
        if ((SECONDS >= deadline)); then
            log "timed out after ${READY_TIMEOUT}s waiting for: ${pending[*]}"
            for dir in "${pending[@]}"; do tail_logs "$dir"; done
            return 1
        fi
        sleep 0.5
    done
}

check_ports_free() {
    local p
    for p in "$@"; do
        port_in_use "$p" && die "port $HOST:$p is already in use by another process"
    done
    return 0
}

# ---------------------------------------------------------------- commands

# A node dir that was formatted and can start with its data.
formatted() { [[ -f "$1/server.properties" && -f "$1/data/meta.properties" ]]; }

start_single() { # KEEP (1: keep the data of a formatted node)
    local keep=$1
    cmd_fetch
    lock_state
    if [[ -n "$(node_pid "$SINGLE_DIR")" ]]; then
        log "$(single_what) Kafka already running: restarting it ($( ((keep)) && echo "keeping its data" || echo "fresh"))"
        stop_dirs "$SINGLE_DIR"
    fi
    local t0ns heap="${FEEDHANDLER_KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}" how="fresh" listeners="" format_args=()
    if ((SECURE)); then
        # shellcheck disable=SC2046
        check_ports_free $(secure_ports)
        heap="${FEEDHANDLER_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
        format_args=(--add-scram "SCRAM-SHA-512=[name=$SECURE_SCRAM_USER,password=$SECURE_SCRAM_PASSWORD]")
    else
        check_ports_free "$PORT" "$CONTROLLER_PORT"
    fi
    t0ns=$(date +%s%N)
    if ((keep)) && formatted "$SINGLE_DIR"; then
        how="with its data kept"
        # The ports may differ from the run that formatted it; the data stays.
        ((SECURE)) && listeners=$(secure_listeners "$SINGLE_DIR")
        write_config "$SINGLE_DIR" 1 "$PORT" "$CONTROLLER_PORT" "1@$HOST:$CONTROLLER_PORT" 1 1 "$listeners"
        echo "----- restarted by kafka.sh at $(date -Is), data kept -----" >>"$SINGLE_DIR/server.log"
    else
        rm -rf "$SINGLE_DIR"
        if ((SECURE)); then
            make_tls "$SINGLE_DIR"
            write_probe_properties "$SINGLE_DIR"
            listeners=$(secure_listeners "$SINGLE_DIR")
        fi
        write_config "$SINGLE_DIR" 1 "$PORT" "$CONTROLLER_PORT" "1@$HOST:$CONTROLLER_PORT" 1 1 "$listeners"
        format_storage "$SINGLE_DIR" "$(gen_uuid)" "${format_args[@]+"${format_args[@]}"}" || die "storage format failed"
    fi
    launch "$SINGLE_DIR" "$heap"
    if ! wait_ready "$SINGLE_DIR"; then
        stop_dirs "$SINGLE_DIR"
        die "$(single_what) Kafka did not become ready"
    fi
    log "Kafka $KAFKA_VERSION $(single_what) ready $how in $(elapsed "$t0ns") (pid $(node_pid "$SINGLE_DIR"), state $SINGLE_DIR)"
    single_bootstrap
}

start_cluster() { # KEEP (1: keep the data if every node was formatted)
    local keep=$1
    cmd_fetch
    lock_state
    local n dirs=() ports=() voters running=0 all_formatted=1
    voters=$(cluster_list voter)
    for ((n = 1; n <= CLUSTER_NODES; n++)); do
        dirs+=("$(node_dir "$n")")
        ports+=("$(cluster_broker_port "$n")" "$(cluster_controller_port "$n")")
        [[ -n "$(node_pid "$(node_dir "$n")")" ]] && running=1
        formatted "$(node_dir "$n")" || all_formatted=0
    done
    ((keep && all_formatted)) || keep=0
    if ((running)); then
        log "Kafka cluster already running: restarting it ($( ((keep)) && echo "keeping its data" || echo "fresh"))"
        stop_dirs "${dirs[@]}"
    fi
    check_ports_free "${ports[@]}"
    local t0ns heap="${FEEDHANDLER_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}" cid pids=() rc=0
    t0ns=$(date +%s%N)
    if ((keep)); then
        for ((n = 1; n <= CLUSTER_NODES; n++)); do
            write_config "$(node_dir "$n")" "$n" "$(cluster_broker_port "$n")" "$(cluster_controller_port "$n")" "$voters" 3 2
            echo "----- restarted by kafka.sh at $(date -Is), data kept -----" >>"$(node_dir "$n")/server.log"
        done
    else
        cid=$(gen_uuid)
        rm -rf "$CLUSTER_DIR"
        for ((n = 1; n <= CLUSTER_NODES; n++)); do
            write_config "$(node_dir "$n")" "$n" "$(cluster_broker_port "$n")" "$(cluster_controller_port "$n")" "$voters" 3 2
            echo "$cid" >"$(node_dir "$n")/cluster.id"
            format_storage "$(node_dir "$n")" "$cid" &
            pids+=($!)
        done
        for n in "${pids[@]}"; do wait "$n" || rc=1; done
        ((rc == 0)) || die "storage format failed"
    fi
    for ((n = 1; n <= CLUSTER_NODES; n++)); do
        launch "$(node_dir "$n")" "$heap"
    done
    if ! wait_ready "${dirs[@]}"; then
        stop_dirs "${dirs[@]}"
        die "Kafka cluster did not become ready"
    fi
    log "Kafka $KAFKA_VERSION $CLUSTER_NODES-node cluster ready $( ((keep)) && echo "with its data kept" || echo "fresh") in $(elapsed "$t0ns") (state $CLUSTER_DIR)"
    cluster_bootstrap
}

elapsed() { # START_NS -> "12.3s"
    local d=$(($(date +%s%N) - $1))
    printf '%d.%01ds' $((d / 1000000000)) $((d % 1000000000 / 100000000))
}

cmd_stop() {
    local cluster=$1 dirs=() n pid any=""
    lock_state
    if ((cluster)); then
        for ((n = 1; n <= CLUSTER_NODES; n++)); do dirs+=("$(node_dir "$n")"); done
    else
        dirs=("$SINGLE_DIR")
    fi
    for n in "${dirs[@]}"; do
        pid=$(node_pid "$n")
        [[ -n "$pid" ]] && any+="${any:+ }$pid"
    done
    stop_dirs "${dirs[@]}"
    if [[ -n "$any" ]]; then
        log "stopped $( ((cluster)) && echo "cluster" || single_what) Kafka (pids $any)"
    else
        log "$( ((cluster)) && echo "cluster" || single_what) Kafka not running"
    fi
}

pid_desc() { if [[ -n "$1" ]]; then echo "pid $1"; else echo "down"; fi; }

cmd_status() {
    local cluster=$1 n dir pid ready=1 desc="" bs dirs=() what
    if ((cluster)); then
        bs=$(cluster_bootstrap)
        what="kafka $KAFKA_VERSION $CLUSTER_NODES-node cluster"
        for ((n = 1; n <= CLUSTER_NODES; n++)); do dirs+=("$(node_dir "$n")"); done
    else
        bs=$HOST:$PORT
        what="kafka $KAFKA_VERSION $(single_what)"
        dirs=("$SINGLE_DIR")
    fi
    resolve_probe
    for dir in "${dirs[@]}"; do
        pid=$(node_pid "$dir")
        if [[ -z "$pid" ]]; then
            n="down"
            ready=0
        elif node_ready "$dir"; then
            n="ready, pid $pid"
        else
            n="NOT ready, pid $pid"
            ready=0
        fi
        if ((cluster)); then desc+="${desc:+; }node${dir##*-}: $n"; else desc=${n#ready, }; fi
    done
    if ((ready)); then
        echo "$what: ready ($desc) bootstrap=$bs"
        return 0
    fi
    echo "$what: NOT ready ($desc) bootstrap=$bs"
    return 1
}

cluster_node_arg() {
    if ! [[ "${1:-}" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > CLUSTER_NODES)); then
        die "node number must be 1..$CLUSTER_NODES"
    fi
}

# kill_dir DIR WHAT: SIGKILL the node in DIR and wait until it is gone; its data stays.
kill_dir() {
    local dir=$1 what=$2 pid i
    pid=$(node_pid "$dir")
    if [[ -z "$pid" ]]; then
        rm -f "$dir/kafka.pid"
        log "$what not running"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$dir/kafka.pid"
    log "killed $what (pid $pid, SIGKILL)"
}

# signal_dir DIR STOP|CONT WHAT: pause or resume the node's JVM (a broker that hangs).
signal_dir() {
    local dir=$1 sig=$2 what=$3 pid
    pid=$(node_pid "$dir")
    [[ -n "$pid" ]] || die "$what not running"
    kill -"$sig" "$pid"
    log "$( [[ $sig == STOP ]] && echo paused || echo resumed) $what (pid $pid, SIG$sig)"
}

cmd_kill() {
    local cluster=$1 n
    lock_state
    if ((cluster)); then
        for ((n = 1; n <= CLUSTER_NODES; n++)); do kill_dir "$(node_dir "$n")" "node $n"; done
    else
        kill_dir "$SINGLE_DIR" "$(single_what) Kafka"
    fi
}

cmd_kill_node() {
    cluster_node_arg "${1:-}"
    lock_state
    kill_dir "$(node_dir "$1")" "node $1"
}

cmd_start_node() {
    cluster_node_arg "${1:-}"
    cmd_fetch
    lock_state
    local n=$1 dir t0ns
    dir=$(node_dir "$n")
    formatted "$dir" ||
        die "node $n was never formatted; run 'scripts/kafka.sh start --cluster' first"
    if [[ -n "$(node_pid "$dir")" ]]; then
        log "node $n already running (pid $(node_pid "$dir"))"
        return 0
    fi
    check_ports_free "$(cluster_broker_port "$n")" "$(cluster_controller_port "$n")"
    t0ns=$(date +%s%N)
    echo "----- restarted by kafka.sh start-node at $(date -Is) -----" >>"$dir/server.log"
    launch "$dir" "${FEEDHANDLER_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
    wait_ready "$dir" || die "node $n did not rejoin the cluster"
    log "node $n back in the cluster in $(elapsed "$t0ns") (pid $(node_pid "$dir"))"
}

cmd_create_topic() {
    local cluster=$1 name=${2:-} parts=${3:-1} rf=${4:--1} min_isr=${5:-} bs
    [[ -n "$name" ]] || die "usage: kafka.sh create-topic [--cluster] NAME [PARTITIONS [REPLICATION [MIN_ISR]]]"
    if ((cluster)); then bs=$(cluster_bootstrap); else bs=$(single_bootstrap); fi
    python3 - "$bs" "$name" "$parts" "$rf" "$min_isr" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
bs, name, parts, rf, min_isr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
config = {"min.insync.replicas": min_isr} if min_isr else {}
admin = AdminClient({"bootstrap.servers": bs})  # keep a reference while the future is pending
fut = admin.create_topics([NewTopic(name, num_partitions=parts, replication_factor=rf, config=config)],
                          operation_timeout=30)
try:
    fut[name].result(60)
except Exception as e:  # noqa: BLE001
    sys.exit(f"kafka.sh: create-topic {name} failed: {e}")
print(f"kafka.sh: created topic {name} (partitions={parts}, replication={'default' if rf < 0 else rf}"
      f"{', min.insync.replicas=' + min_isr if min_isr else ''})", file=sys.stderr)
EOF
}

# The partitions of TOPIC as the cluster's metadata has them: PARTITION LEADER REPLICAS ISR.
cmd_leaders() {
    local cluster=$1 topic=${2:-} bs
    [[ -n "$topic" ]] || die "usage: kafka.sh leaders [--cluster] TOPIC"
    if ((cluster)); then bs=$(cluster_bootstrap); else bs=$(single_bootstrap); fi
    python3 - "$bs" "$topic" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
bs, topic = sys.argv[1], sys.argv[2]
try:
    metadata = AdminClient({"bootstrap.servers": bs, "log_level": 0}).list_topics(topic, timeout=10)
except Exception as e:  # noqa: BLE001
    sys.exit(f"kafka.sh: leaders {topic}: {e}")
described = metadata.topics[topic]
if described.error is not None:
    sys.exit(f"kafka.sh: leaders {topic}: {described.error.str()}")
for p in sorted(described.partitions.values(), key=lambda p: p.id):
    print(p.id, p.leader, ",".join(map(str, p.replicas)), ",".join(map(str, p.isrs)))
EOF
}

# The active controller: the KRaft metadata quorum's leader, from DescribeQuorum sent to the
# controllers' own listeners (DescribeCluster through a broker names a random broker instead,
# KIP-919). The broker jars have no CLI for it, so a few lines of Java run against
# kafka-clients (Java's single-file source launcher; about 3 s).
cmd_controller() {
    local cluster=$1 controllers="" n out src="$KAFKA_HOME/QuorumLeader.java"
    cmd_fetch
    if ((cluster)); then
        for ((n = 1; n <= CLUSTER_NODES; n++)); do
            port_in_use "$(cluster_controller_port "$n")" && controllers+="${controllers:+,}$HOST:$(cluster_controller_port "$n")"
        done
    else
        port_in_use "$CONTROLLER_PORT" && controllers="$HOST:$CONTROLLER_PORT"
    fi
    [[ -n "$controllers" ]] || die "no controller listening"
    cat >"$src.$$" <<'EOF'
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class QuorumLeader {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_CONTROLLERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "20000");
        try (Admin admin = Admin.create(props)) {
            System.out.println("leader " + admin.describeMetadataQuorum().quorumInfo().get().leaderId());
        }
    }
}
EOF
    mv "$src.$$" "$src"
    out=$(timeout 60 java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" \
        "$src" "$controllers" 2>&1) || die "could not describe the metadata quorum: $(tail -n 3 <<<"$out")"
    out=$(sed -n 's/^leader \(-\{0,1\}[0-9][0-9]*\)$/\1/p' <<<"$out")
    [[ -n "$out" ]] || die "no leader in the metadata quorum's description"
    echo "$out"
}

# ---------------------------------------------------------------- main

main() {
    local cmd=${1:-} cluster=0 keep=0 args=() a
    [[ -n "$cmd" ]] || usage 2
    shift
    for a in "$@"; do
        case "$a" in
            --cluster) cluster=1 ;;
            --keep) keep=1 ;;
            --secure) select_secure ;;
            -h | --help) usage 0 ;;
            *) args+=("$a") ;;
        esac
    done
    if ((SECURE)); then
        ((cluster)) && die "--secure is a single node; it does not go with --cluster"
        case "$cmd" in
            start | restart | stop | kill | pause | resume | status | bootstrap) ;;
            *) die "$cmd does not take --secure" ;;
        esac
    fi
    case "$cmd" in
        fetch) cmd_fetch ;;
        libs) libs_ok || die "no Kafka jars in $LIBS (scripts/kafka.sh fetch)"; echo "$LIBS" ;;
        start | restart)
            [[ "$cmd" == restart ]] && keep=1
            if ((cluster)); then start_cluster "$keep"; else start_single "$keep"; fi ;;
        stop) cmd_stop "$cluster" ;;
        kill) cmd_kill "$cluster" ;;
        pause | resume)
            ((cluster)) && die "$cmd is for the single node; use $cmd-node N on the cluster"
            lock_state
            signal_dir "$SINGLE_DIR" "$([[ $cmd == pause ]] && echo STOP || echo CONT)" "$(single_what) Kafka" ;;
        pause-node | resume-node)
            cluster_node_arg "${args[0]:-}"
            lock_state
            signal_dir "$(node_dir "${args[0]}")" "$([[ $cmd == pause-node ]] && echo STOP || echo CONT)" "node ${args[0]}" ;;
        controller) cmd_controller "$cluster" ;;
        leaders) cmd_leaders "$cluster" "${args[0]:-}" ;;
        status) cmd_status "$cluster" ;;
        bootstrap) if ((cluster)); then cluster_bootstrap; else single_bootstrap; fi ;;
        kill-node) cmd_kill_node "${args[0]:-}" ;;
        start-node) cmd_start_node "${args[0]:-}" ;;
        create-topic) cmd_create_topic "$cluster" "${args[@]+"${args[@]}"}" ;;
        -h | --help | help) usage 0 ;;
        *) log "unknown command '$cmd'"; usage 2 ;;
    esac
}

main "$@"

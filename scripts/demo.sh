#!/usr/bin/env bash
# The main job, end to end on this machine: build, start a local Kafka broker, start the
# exchange simulator, run the handler against it (live throughput on stderr), then count what
# landed in Kafka with kcat. Settings: DEMO_COUNT (messages, default 2000000), DEMO_FORMAT
# (struct|json|raw|batched, default struct), DEMO_WORKERS (default 2), DEMO_SYMBOLS (default 500).
set -euo pipefail
cd "$(dirname "$0")/.."

count=${DEMO_COUNT:-2000000}
format=${DEMO_FORMAT:-struct}
workers=${DEMO_WORKERS:-2}
symbols=${DEMO_SYMBOLS:-500}
port=${DEMO_PORT:-9009}
prefix="demo$(date +%s)."

step() { printf '\n== %s\n' "$*" >&2; }

step "1/5 build: apt packages, Python dependencies, the Cython extensions (scripts/bootstrap.sh)"
bash scripts/bootstrap.sh
step "2/5 Kafka: a real Apache Kafka 4.x broker in KRaft mode on 127.0.0.1 (scripts/kafka.sh)"
bootstrap=$(bash scripts/kafka.sh start)
simulator_pid=
cleanup() {
    [ -n "$simulator_pid" ] && kill "$simulator_pid" 2>/dev/null || true
    bash scripts/kafka.sh stop
}
trap cleanup EXIT

step "3/5 exchange: the simulator serves a synthetic TotalView-ITCH 5.0 session of $count messages" \
     "($symbols stocks) on 127.0.0.1:$port"
python3 -m feedhandler simulate --listen "127.0.0.1:$port" --count "$count" --symbols "$symbols" \
    --exit-after-end --quiet &
simulator_pid=$!
# The simulator listens at once and generates the session behind it; wait for the socket only.
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

step "4/5 handler: log in, decode on $workers threads, publish every tick as '$format' records" \
     "to $bootstrap (one status line a second, then the account)"
status=0
python3 -m feedhandler run --connect "127.0.0.1:$port" --bootstrap-servers "$bootstrap" \
    --format "$format" --workers "$workers" --topic-prefix "$prefix" || status=$?

step "5/5 what landed: every topic read back from Kafka by kcat, an independent reader"
total=0
for topic in orders trades reference noii deadletter; do
    records=$(kcat -b "$bootstrap" -C -t "$prefix$topic" -o beginning -e -q -f '%o\n' | wc -l)
    printf '  %-28s %10d records\n' "$prefix$topic" "$records" >&2
    total=$((total + records))
done
printf '  %-28s %10d records\n' "total" "$total" >&2
if [ "$format" != batched ]; then
    if [ "$total" -eq "$count" ]; then
        echo "  every one of the $count messages of the session is in Kafka, once" >&2
    else
        echo "  MISMATCH: $count messages sent, $total records in Kafka" >&2
        status=1
    fi
fi
exit "$status"

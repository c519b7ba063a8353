"""Run inside a network namespace of its own by tests/test_moldudp.py (see tests/netns.py):
the simulator publishes a seeded session as MoldUDP64 on two multicast groups (A and B, the
same port) from 127.0.0.1, with independent loss on each, and a MoldSource joins both groups
on 127.0.0.1 and re-requests what both lines lost. With --capture PATH, tshark records the
loopback traffic meanwhile. Prints one JSON object: what was sent, lost, asked for, received."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]

from feedhandler.exchange import orderflow  # noqa: E402
from feedhandler.exchange.moldudp_server import MoldSimulator, mold_config  # noqa: E402
from feedhandler.session.moldudp import MoldSource  # noqa: E402
from moldudp_helpers import read_all  # noqa: E402

GROUPS = ("239.192.0.1", "239.192.0.2")
PORT = 31001
REQUEST_PORT = 31002
INTERFACE = "127.0.0.1"


def capture(path: str) -> subprocess.Popen:
    # A 64 MiB capture buffer: a busy machine must not make the capture drop packets.
    tshark = subprocess.Popen(["tshark", "-i", "lo", "-B", "64", "-f", "udp", "-w", path],
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    for line in tshark.stderr:
        if "Capturing on" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    return tshark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--drop-rate", type=float, default=0.01)
    parser.add_argument("--capture")
    args = parser.parse_args()
    tshark = capture(args.capture) if args.capture else None
    exchange = MoldSimulator(mold_config(
        group=(GROUPS[0], PORT), line_b=(GROUPS[1], PORT), interface=INTERFACE,
        request_server=(INTERFACE, REQUEST_PORT), count=args.count, seed=9, symbols=20,
        rate=200_000, drop_rate=args.drop_rate, drop_rate_b=args.drop_rate, live_clock=False,
        status_interval=None))
    source = MoldSource([(group, PORT) for group in GROUPS], interface=INTERFACE,
                        request_server=(INTERFACE, REQUEST_PORT))
    source.open()
    with exchange:
        blocks, _ = read_all(source)
    capture_report = ""
    if tshark is not None:
        time.sleep(0.5)
        tshark.terminate()
        capture_report = tshark.communicate(timeout=30)[1]
    expected = orderflow.generate(args.count, symbols=20, seed=9).data
    print(json.dumps({
        "whole": blocks == expected, "ended": source.ended, "missing": source.tracker.missing,
        "dropped": [line.dropped for line in exchange.lines],
        "served": exchange.requests_served, "requested": source.requested,
        "stats": source.stats(), "port": PORT, "request_port": REQUEST_PORT,
        "capture_report": capture_report}))


if __name__ == "__main__":
    main()

"""Simulator and session client throughput over loopback.

    PYTHONPATH=. python -m pytest bench/bench_simulator.py -o python_files='bench_*.py'

The simulator runs as `python -m feedhandler simulate` in its own process, as it would in use;
each round logs in from sequence 1 and reads the whole session. Three figures (bench/conftest.py
prints them as messages/s and MB/s):

- generation: `orderflow.generate` (synthetic session, once per simulator start);
- serve: the simulator's rate into a minimal reader that only looks for the end of session;
- receive: `SessionClient.frames()`, which splits frames and follows sequence numbers.
"""

import socket
import subprocess
import sys
import time

import pytest

from feedhandler.exchange import orderflow
from feedhandler.session import protocol as sessionproto
from feedhandler.session import SessionClient
from feedhandler.exchange.server import DEFAULT_PASSWORD, DEFAULT_SESSION, DEFAULT_USERNAME

MESSAGES = 5_000_000
MESSAGES_PER_PACKET = 500
SYMBOLS = 100
ROUNDS = 5


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def simulator_port():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "feedhandler", "simulate", "--listen", f"127.0.0.1:{port}",
         "--count", str(MESSAGES), "--symbols", str(SYMBOLS),
         "--messages-per-packet", str(MESSAGES_PER_PACKET), "--quiet"])
    try:
        deadline = time.monotonic() + 120          # generating the session takes a while
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def record(benchmark, messages, frames, size):
    """Sizes for bench/conftest.py's throughput table (messages/s, MB/s of the median round)."""
    benchmark.extra_info.update(messages=messages, frames=frames, bytes=size)


def test_generation_rate(benchmark):
    count = 1_000_000
    block = benchmark.pedantic(orderflow.generate, args=(count,), kwargs={"symbols": SYMBOLS},
                               rounds=3, iterations=1)
    record(benchmark, count, 0, len(block.data))


def read_raw_session(port: int) -> tuple[int, int]:
    """Log in and read until the end-of-session frame; returns (bytes, frames) read."""
    end = sessionproto.end_of_session(DEFAULT_SESSION.ljust(10), MESSAGES + 1)
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, len(buffer))
        sock.sendall(sessionproto.login_request(DEFAULT_USERNAME, DEFAULT_PASSWORD, b"", 1))
        tail = b""
        while True:
            n = sock.recv_into(view)
            assert n, "the simulator closed the connection early"
            received += n
            tail = (tail + bytes(view[max(0, n - len(end)):n]))[-len(end):]
            if tail == end:
                return received, MESSAGES // MESSAGES_PER_PACKET


def test_simulator_serve_rate(benchmark, simulator_port):
    size, frames = benchmark.pedantic(read_raw_session, args=(simulator_port,), rounds=ROUNDS,
                                      iterations=1)
    record(benchmark, MESSAGES, frames, size)


def read_with_client(port: int) -> tuple[int, int]:
    feed = SessionClient("127.0.0.1", port, username=DEFAULT_USERNAME, password=DEFAULT_PASSWORD)
    size = frames = 0
    for frame in feed.frames():
        size += len(frame)
        frames += 1
    assert feed.messages_received == MESSAGES and not feed.gaps and not feed.duplicates
    return size, frames


def test_client_receive_rate(benchmark, simulator_port):
    size, frames = benchmark.pedantic(read_with_client, args=(simulator_port,), rounds=ROUNDS,
                                      iterations=1)
    record(benchmark, MESSAGES, frames, size)

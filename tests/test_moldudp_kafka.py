"""MoldUDP64 end to end on the real broker: the simulator publishing datagrams on 127.0.0.1,
`feedhandler run --transport moldudp64` as a process of its own, every sequence number counted
in Kafka (tests/faults/checker.py)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faults.checker import check_topics
from feedhandler.kafka.routing import Routes
from feedhandler.session.moldudp import open_line_socket
from feedhandler.wire import moldudp, packet
from moldudp_helpers import HOST, closed_port, free_port, sequences, simulator

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
COUNT = 30_000
SEED = 17
RATE = 300_000


def start_handler(kafka: str, prefix: str, lines: list[int], request_port: int,
                  log: Path, *extra: str) -> subprocess.Popen:
    """`feedhandler run` on the lines, once it reads them (its log says so)."""
    argv = [sys.executable, "-m", "feedhandler", "run", "--transport", "moldudp64",
            "--group", f"{HOST}:{lines[0]}", "--request-server", f"{HOST}:{request_port}",
            "--bootstrap-servers", kafka, "--topic-prefix", prefix, "--partitions", "3",
            "--json-stats"]
    if len(lines) > 1:
        argv += ["--line-b", f"{HOST}:{lines[1]}"]
    argv += extra
    handler = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    deadline = time.monotonic() + 60
    while "reading MoldUDP64 line" not in log.read_text():
        assert handler.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the handler did not start reading"
        time.sleep(0.05)
    return handler


def run_session(kafka, prefix, tmp_path, *, lines=1, request_server=True, ports=None,
                send_to=None, handler_args=(), **loss):
    """A simulated session into `feedhandler run` on `ports` (default: `lines` free ones);
    the simulator sends to `send_to` (default: the same ports). (exit code, final account,
    simulator, log)."""
    ports = ports or [free_port() for _ in range(lines)]
    request_port = free_port() if request_server else closed_port()
    log = tmp_path / "handler.log"
    handler = start_handler(kafka, prefix, ports, request_port, log, *handler_args)
    exchange = simulator(send_to or ports, request_port if request_server else None,
                         count=COUNT, seed=SEED, rate=RATE, symbols=40, **loss)
    try:
        with exchange:
            stdout, _ = handler.communicate(timeout=120)
    finally:
        if handler.poll() is None:
            handler.kill()
    final = next(json.loads(line)["final"] for line in stdout.splitlines() if '"final"' in line)
    return handler.returncode, final, exchange, log.read_text()


def assert_exactly_once(kafka, prefix):
    result = check_topics(kafka, Routes.by_category(prefix), "struct",
                          expected=range(1, COUNT + 1))
    assert result.ok, result.summary()


def test_a_seeded_session_lands_exactly_once_in_feed_order(kafka, topic_prefix, tmp_path):
    code, final, _, log = run_session(kafka, topic_prefix, tmp_path)
    assert code == 0, log
    assert final["delivered"] == COUNT and final["lost"] == 0
    assert_exactly_once(kafka, topic_prefix)


def test_one_percent_loss_is_recovered_and_nothing_is_lost(kafka, topic_prefix, tmp_path):
    code, final, exchange, log = run_session(kafka, topic_prefix, tmp_path, drop_rate=0.01)
    assert exchange.lines[0].dropped
    assert code == 0, log
    assert final["lost"] == 0 and final["missing"] == 0
    recovery = final["feed"]["recovery"]
    assert recovery["requests_sent"] > 0
    assert recovery["messages_first"] >= len(sequences(exchange.lines[0].dropped))
    assert "line A" in log and "recovery" in log          # the per-line figures are printed
    assert_exactly_once(kafka, topic_prefix)


def test_a_b_lines_with_independent_loss_lose_nothing(kafka, topic_prefix, tmp_path):
    code, final, exchange, log = run_session(kafka, topic_prefix, tmp_path, lines=2,
                                             drop_rate=0.01, drop_rate_b=0.01)
    lost_a, lost_b = (sequences(line.dropped) for line in exchange.lines)
    assert code == 0, log
    assert final["lost"] == 0
    # A re-request only for what both lines lost.
    assert sequences(exchange.requests_served) <= lost_a & lost_b
    lines = final["feed"]["lines"]
    assert lines["A"]["gap_messages"] == len(lost_a) and lines["B"]["gap_messages"] == len(lost_b)
    assert_exactly_once(kafka, topic_prefix)


def test_without_the_request_server_the_loss_is_missing_and_the_run_fails(kafka, topic_prefix,
                                                                         tmp_path):
    code, final, exchange, log = run_session(kafka, topic_prefix, tmp_path,
                                             request_server=False, drop_every=40)
    lost = sequences(exchange.lines[0].dropped)
    assert code == 1, log                   # ExitCode.TICKS_LOST
    assert final["missing"] == len(lost) == final["lost"]
    assert final["delivered"] == COUNT - len(lost)
    assert "request server 127.0.0.1" in log and "unreachable" in log


class LastDatagramLateOnB:
    """UDP forwarders of our own between the simulator's A and B lines and the handler's, on
    127.0.0.1: line A loses the session's last data datagram, and line B brings it `lag`
    seconds after A's end of session went out (a B line a little behind). Each forwarder holds
    the newest data datagram until the next one comes, so it knows the last one when end of
    session follows it; everything else goes through in order."""

    def __init__(self, handler_ports: list[int], lag: float):
        self.targets = [(HOST, port) for port in handler_ports]
        self.lag = lag
        # The handler's own receive buffers: this thread shares the simulator's GIL, and a
        # default-sized buffer overflows while it waits (both lines losing the same datagrams).
        self.inbound = [open_line_socket((HOST, 0), None) for _ in handler_ports]
        self.ports = [sock.getsockname()[1] for sock in self.inbound]
        self.lost_on_a: tuple[int, int] | None = None     # (first, count)
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._held: list[bytes | None] = [None, None]
        self._b_tail: list[bytes] = []      # B's last data datagram and what follows it
        self._a_ended_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._forward, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        for sock in (*self.inbound, self._out):
            sock.close()

    def _forward(self):
        with selectors.DefaultSelector() as selector:
            for line, sock in enumerate(self.inbound):
                selector.register(sock, selectors.EVENT_READ, line)
            while not self._stop.is_set():
                for key, _ in selector.select(0.01):
                    self._take(key.data, key.fileobj.recv(65536))
                if self._b_tail and self._a_ended_at is not None and \
                        time.monotonic() >= self._a_ended_at + self.lag:
                    for datagram in self._b_tail:
                        self._out.sendto(datagram, self.targets[1])
                    self._b_tail = []

    def _take(self, line: int, datagram: bytes) -> None:
        count = moldudp.header(datagram)[2]
        target = self.targets[line]
        if line == 1 and self._b_tail:
            self._b_tail.append(datagram)
            return
        if count == packet.HEARTBEAT_COUNT:
            self._out.sendto(datagram, target)
            return
        held, self._held[line] = self._held[line], None
        if count != packet.END_OF_SESSION_COUNT:
            if held is not None:
                self._out.sendto(held, target)
            self._held[line] = datagram
        elif line == 0:
            if held is not None:
                self.lost_on_a = moldudp.header(held)[1:]
            self._out.sendto(datagram, target)
            if self._a_ended_at is None:
                self._a_ended_at = time.monotonic()
        elif held is not None:
            self._b_tail = [held, datagram]
        else:
            self._out.sendto(datagram, target)


def test_end_of_session_on_line_a_waits_for_the_b_lines_copy_of_the_last_datagram(
        kafka, topic_prefix, tmp_path):
    """Found in CI: line A lost a day's last datagram and sent end of session; the gap was
    given up at once (no request server), though line B's copy was on its way. End of session
    on one of two lines now leaves the gap its --gap-wait; the run ends with every tick in
    Kafka once."""
    handler_ports = [free_port(), free_port()]
    with LastDatagramLateOnB(handler_ports, lag=0.3) as lines:
        code, final, _, log = run_session(kafka, topic_prefix, tmp_path, request_server=False,
                                          ports=handler_ports, send_to=lines.ports,
                                          handler_args=("--gap-wait", "3"))
    assert lines.lost_on_a is not None and lines.lost_on_a[0] + lines.lost_on_a[1] == COUNT + 1
    assert code == 0, log
    assert final["missing"] == final["lost"] == 0 and final["delivered"] == COUNT, final
    assert_exactly_once(kafka, topic_prefix)


def test_a_restart_resumes_from_the_checkpoint_and_re_requests_what_it_missed(
        kafka, topic_prefix, tmp_path):
    """The first run is stopped mid-session; the second, started while the feed goes on (so
    the stream is ahead of it), starts from the checkpoint, re-requests the messages in
    between, and Kafka holds every message once."""
    count = 300_000
    port, request_port = free_port(), free_port()
    first = start_handler(kafka, topic_prefix, [port], request_port, tmp_path / "first.log")
    exchange = simulator([port], request_port, count=count, seed=SEED, rate=100_000,
                         symbols=40)
    with exchange:
        # The session is generated once the simulator runs; stop the first run mid-feed.
        exchange.wait_prepared()
        time.sleep(1.5)
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
        assert first.returncode == 0, (tmp_path / "first.log").read_text()
        second = start_handler(kafka, topic_prefix, [port], request_port,
                               tmp_path / "second.log")
        stdout, _ = second.communicate(timeout=120)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log
    assert "resuming session SIMULATOR at sequence" in log
    final = next(json.loads(line)["final"] for line in stdout.splitlines() if '"final"' in line)
    assert final["feed"]["recovery"]["requests_sent"] > 0 and final["lost"] == 0, (final, log)
    result = check_topics(kafka, Routes.by_category(topic_prefix), "struct",
                          expected=range(1, count + 1))
    assert result.ok, result.summary()

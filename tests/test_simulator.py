"""The simulator: bad peers, slow clients, retention, pacing, replay of files, the command line."""

import contextlib
import gzip
import logging
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from feedhandler.exchange import orderflow
from feedhandler.session import protocol as sessionproto
from feedhandler.exchange import server as simulator
from feedhandler.exchange.orderflow import MessageBlock, OrderFlow
from feedhandler.session import SessionClient
from feedhandler.exchange.server import (
    Pacing, RatePacing, Simulator, SimulatorConfig, TimestampPacing, synthetic_blocks,
)

SYMBOLS = 10


@contextlib.contextmanager
def serving(**settings):
    config = SimulatorConfig(**{"port": 0, "status_interval": None, "symbols": SYMBOLS, **settings})
    with Simulator(config) as running:
        yield running


def client(port, **settings) -> SessionClient:
    settings = {"username": "feed", "password": "feed", "backoff": (0.01, 0.05), "timeout": 5.0,
                **settings}
    return SessionClient("127.0.0.1", port, **settings)


def messages_of(frames) -> bytes:
    return b"".join(sessionproto.message_block(frame) for frame in frames)


def read_frames_until_closed(sock: socket.socket, timeout: float = 5.0) -> list[bytes]:
    """Every frame the server sends until it closes the connection."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(1 << 16):
            received += data
    frames, at = [], 0
    while at + 4 <= len(received):
        length, = struct.unpack_from(">I", received, at)
        frames.append(received[at:at + 4 + length])
        at += 4 + length
    return frames


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def wait_for_log(caplog, text: str, timeout: float = 2.0):
    wait_until(lambda: text in caplog.text, timeout, f"{text!r} not logged:\n{caplog.text}")


LOGIN = sessionproto.login_request(b"feed", b"feed", b"", 1)
BAD_PEERS = {
    "frame too long": (b"\x00\x01\x00\x00L" + bytes(100), "frame too long: 65536 bytes"),
    "unknown type": (b"\x00\x00\x00\x01Z", "unknown frame type 0x5a"),
    "data before login": (sessionproto.empty_frame(sessionproto.CLIENT_HEARTBEAT),
                          "'R' frame before login"),
    "garbage": (bytes(range(200, 256)) * 3, "frame too long"),
    "silent (slowloris)": (b"", "no login request within 0.3 s"),
    "partial frame (slowloris)": (LOGIN[:10], "incomplete frame for 0.3 s"),
    "partial frame after login": (LOGIN + b"\x00\x00", "incomplete frame for 0.3 s"),
    "second login": (LOGIN + LOGIN, "'L' frame after login"),
}


@pytest.fixture(scope="module")
def strict_server():
    expected = orderflow.generate(3_000, symbols=SYMBOLS, seed=21)
    with serving(count=expected.count, seed=21, login_timeout=0.3, partial_frame_timeout=0.3,
                 max_clients=8) as sim:
        yield sim, expected


@pytest.mark.parametrize("case", BAD_PEERS)
def test_bad_peer_is_closed_with_a_reason_and_others_are_still_served(strict_server, caplog, case):
    sim, expected = strict_server
    sent, reason = BAD_PEERS[case]
    caplog.set_level(logging.INFO, "feedhandler.simulator")
    with socket.create_connection(("127.0.0.1", sim.port)) as bad:
        bad.sendall(sent)
        started = time.monotonic()
        frames = read_frames_until_closed(bad)
    assert time.monotonic() - started < 2
    wait_for_log(caplog, reason)
    # The peer was told why, in a debug frame.
    assert frames and frames[-1][4] == sessionproto.DEBUG
    assert reason in sessionproto.parse_debug(frames[-1])
    feed = client(sim.port)
    assert messages_of(feed.frames()) == expected.data


@pytest.mark.parametrize(("login", "code", "reason"), [
    (sessionproto.login_request(b"feed", b"guess", b"", 1), b"A", "wrong username or password"),
    (sessionproto.login_request(b"feed", b"feed", b"NOSUCH", 1), b"S", "asked for session"),
])
def test_bad_login_is_rejected_then_closed(strict_server, caplog, login, code, reason):
    sim, _ = strict_server
    caplog.set_level(logging.INFO, "feedhandler.simulator")
    with socket.create_connection(("127.0.0.1", sim.port)) as peer:
        peer.sendall(login)
        frames = read_frames_until_closed(peer)
    assert frames == [sessionproto.login_rejected(code)]
    wait_for_log(caplog, reason)


def test_connections_beyond_max_clients_are_refused(caplog):
    with serving(count=1_000, max_clients=2) as sim:
        caplog.set_level(logging.WARNING, "feedhandler.simulator")
        held = [socket.create_connection(("127.0.0.1", sim.port)) for _ in range(2)]
        try:
            wait_until(lambda: len(sim.clients) == 2, 2, "the first two were not accepted")
            with socket.create_connection(("127.0.0.1", sim.port)) as extra:
                frames = read_frames_until_closed(extra)
            assert [sessionproto.parse_debug(f) for f in frames] == ["server full"]
            wait_for_log(caplog, "refused: 2 clients already connected")
        finally:
            for sock in held:
                sock.close()


def test_slow_client_neither_stalls_others_nor_grows_server_memory(monkeypatch, caplog):
    monkeypatch.setattr(simulator, "SOCKET_BUFFER", 1 << 16)     # kernel buffers hide less
    count = 400_000                                              # about 12 MB
    with serving(count=count, codec="none", timeout=1.0) as sim:
        caplog.set_level(logging.INFO, "feedhandler.simulator")
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        slow.connect(("127.0.0.1", sim.port))
        slow.sendall(LOGIN)
        # Alive (it sends heartbeats) but it never reads.
        stop_heartbeats = threading.Event()

        def heartbeats():
            while not stop_heartbeats.wait(0.2):
                slow.sendall(sessionproto.empty_frame(sessionproto.CLIENT_HEARTBEAT))

        threading.Thread(target=heartbeats, daemon=True).start()
        # The session is generated after the simulator starts listening: measure serving only.
        sim.wait_prepared()
        wait_until(lambda: any(c.cursor is not None for c in sim.clients), 5, "no login")
        stalled, = sim.clients          # the server's side of the slow client, even once closed
        fast = client(sim.port)
        tracemalloc.start()
        try:
            started = time.monotonic()
            received = sum(len(frame) for frame in fast.frames())
            elapsed = time.monotonic() - started
            growth = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert fast.messages_received == count and elapsed < 3
        assert received > 10_000_000
        # Clients are served from the shared store: nothing is queued per client.
        assert growth < 2_000_000
        assert stalled.messages_sent < count // 4
        wait_for_log(caplog, "client not reading: could not send for 1 s", timeout=3)
        stop_heartbeats.set()
        slow.close()


def test_endless_session_matches_the_generator_and_retention_is_bounded(monkeypatch, caplog):
    monkeypatch.setattr(simulator, "SYNTHETIC_CHUNK_MESSAGES", 20_000)
    monkeypatch.setattr(simulator, "SOCKET_BUFFER", 1 << 16)
    config = dict(seed=22, retain_bytes=300_000)
    blocks = synthetic_blocks(SimulatorConfig(symbols=SYMBOLS, **config))
    expected = MessageBlock.join([next(blocks) for _ in range(12)])
    wanted = 200_000
    with serving(**config) as sim:
        caplog.set_level(logging.INFO, "feedhandler.simulator")
        # A client that stops reading early falls behind what the store retains, is told so,
        # and on reconnecting records the messages it can no longer get as a gap.
        laggard = client(sim.port, receive_buffer=1)
        laggard_frames = laggard.frames()
        next(laggard_frames)
        fast = client(sim.port)
        frames = []
        for frame in fast.frames():
            frames.append(frame)
            if fast.next_sequence > wanted:
                break
        fast.close()
        prefix = expected.offsets[wanted]
        assert messages_of(frames)[:prefix] == expected.data[:prefix]
        store = sim.store
        assert store.retained_bytes <= 300_000 or len(store.chunks) == 1
        while not laggard.gaps:
            next(laggard_frames)
        laggard.close()
    assert laggard.reconnects == 1 and laggard.gaps[0][0] < wanted
    assert "fell behind the retransmission store" in caplog.text


def test_rate_pacing_spreads_messages_over_time():
    count = 3_000
    with serving(count=count, rate=6_000) as sim:
        started = time.monotonic()
        feed = client(sim.port)
        received = sum(1 for _ in feed.frames())
        elapsed = time.monotonic() - started
    assert feed.messages_received == count and received == count // 6
    assert 0.35 < elapsed < 1.5


def test_burst_pacing_keeps_the_average_and_bunches_packets():
    block = orderflow.generate(100_000, symbols=SYMBOLS, seed=23)
    even = RatePacing(500, rate=100_000, burst=1, seed=1)
    bursty = RatePacing(500, rate=100_000, burst=5, seed=1)
    (cuts, steady), (_, bursts) = even.cut(block), bursty.cut(block)
    assert (np.diff(cuts) <= 100).all()       # a millisecond's worth at 100k/s
    assert steady[-1] == pytest.approx(1.0) and (np.diff(steady) > 0).all()
    assert (np.diff(bursts) >= 0).all()
    assert bursts[-1] == pytest.approx(1.0, rel=0.5)
    gaps = np.diff(bursts)
    # Inside a burst packets come five times faster; between bursts there are silences.
    assert np.median(gaps) == pytest.approx(0.001 / 5, rel=0.05)
    assert gaps.max() > 0.02


def write_itch_file(path, block: MessageBlock, compress: bool):
    path.write_bytes(gzip.compress(block.data, compresslevel=1) if compress else block.data)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_replay_serves_a_file_byte_for_byte(tmp_path, monkeypatch, compress):
    monkeypatch.setattr("feedhandler.exchange.replay.READ_SIZE", 100_000)   # many chunks, split messages
    block = orderflow.generate(40_000, symbols=SYMBOLS, seed=24)
    path = tmp_path / ("day.itch.gz" if compress else "day.itch")
    write_itch_file(path, block, compress)
    with serving(replay=str(path)) as sim:
        assert messages_of(client(sim.port).frames()) == block.data
    with serving(replay=str(path), count=12_345) as sim:
        assert messages_of(client(sim.port).frames()) == block.data[:block.offsets[12_345]]


def test_replay_of_a_truncated_file_ends_the_session_after_the_last_whole_message(tmp_path, caplog):
    block = orderflow.generate(2_000, symbols=SYMBOLS, seed=25)
    path = tmp_path / "cut.itch"
    path.write_bytes(block.data[:block.offsets[1_500] + 5])
    with serving(replay=str(path)) as sim:
        assert messages_of(client(sim.port).frames()) == block.data[:block.offsets[1_500]]
    assert "file ends inside a message" in caplog.text


def test_replay_paced_by_timestamps(tmp_path):
    flow = OrderFlow(SYMBOLS, seed=26, mean_gap_ns=100_000)   # 10,000 messages per ITCH second
    flow.opening()
    block = flow.flow(5_000)
    stamps = [int.from_bytes(block.data[o + 7:o + 13], "big") for o in block.offsets[[0, -2]]]
    span = (stamps[1] - stamps[0]) / 1e9
    path = tmp_path / "paced.itch"
    write_itch_file(path, block, compress=False)
    speed = span / 0.6                                      # should take 0.6 s
    with serving(replay=str(path), speed=speed) as sim:
        started = time.monotonic()
        feed = client(sim.port)
        received = messages_of(feed.frames())
        elapsed = time.monotonic() - started
    assert received == block.data
    assert 0.5 < elapsed < 1.5
    boundaries, due = TimestampPacing(500, speed).cut(block)
    assert (np.diff(due) >= 0).all() and due[-1] == pytest.approx(0.6, rel=0.01)


def test_as_fast_as_possible_packets_are_full():
    block = orderflow.generate(1_234, symbols=SYMBOLS, seed=27)
    boundaries, due = Pacing(500).cut(block)
    assert boundaries.tolist() == [0, 500, 1000, 1234] and due is None


def test_status_line(capsys):
    with serving(count=50_000, status_interval=0.2) as sim:
        feed = client(sim.port)
        for _ in feed.frames():
            time.sleep(0.005)                  # slow enough to be seen being served
        time.sleep(0.3)
    line = next(line for line in capsys.readouterr().err.splitlines() if "ratio" in line)
    assert re.search(r"msg/s .* pkt/s .* clients lz4 ratio \d+\.\d\d", line), line


def run_cli(*arguments):
    return subprocess.Popen([sys.executable, "-m", "feedhandler", *arguments],
                            stderr=subprocess.PIPE, text=True)


def test_command_line_serves_and_exits_after_the_end():
    count = 5_000
    process = run_cli("simulate", "--listen", "127.0.0.1:0", "--count", str(count), "--seed", "7",
                      "--symbols", str(SYMBOLS), "--messages-per-packet", "250", "--exit-after-end")
    try:
        port = None
        for line in process.stderr:
            if found := re.search(r"serving session SIMULATOR on 127\.0\.0\.1:(\d+)", line):
                port = int(found.group(1))
                break
        assert port, "the simulator did not say where it listens"
        threading.Thread(target=process.stderr.read, daemon=True).start()
        feed = client(port)
        frames = list(feed.frames())
        assert messages_of(frames) == orderflow.generate(count, symbols=SYMBOLS, seed=7).data
        assert len(frames) == count // 250
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()


@pytest.mark.parametrize(("arguments", "complaint"), [
    (["--speed", "10"], "needs replay"),
    (["--replay", "/nonexistent/day.itch"], "No such file"),
    (["--messages-per-packet", "0"], "messages per packet"),
])
def test_command_line_refuses_bad_options(arguments, complaint):
    process = run_cli("simulate", "--listen", "127.0.0.1:0", *arguments)
    _, errors = process.communicate(timeout=20)
    assert process.returncode == 2 and complaint in errors


def test_listens_at_once_while_the_session_is_generated(monkeypatch, caplog):
    """Clients may connect and log in while a --count session is still being generated; they
    get the whole session once it is ready (no 'connection refused' at start-up)."""
    release = threading.Event()
    generate = simulator.orderflow.generate

    def slow_generate(*args, **kwargs):
        release.wait(10)
        return generate(*args, **kwargs)

    monkeypatch.setattr(simulator.orderflow, "generate", slow_generate)
    caplog.set_level(logging.INFO, "feedhandler.exchange")
    started = []
    starter = threading.Thread(target=lambda: started.append(
        Simulator(SimulatorConfig(port=0, status_interval=None, symbols=SYMBOLS,
                                  count=3000)).start()), daemon=True)
    starter.start()
    starter.join(5)
    try:
        assert started, "the simulator did not listen while its session was being generated"
        sim = started[0]
        wait_for_log(caplog, "preparing the session: generating 3000 messages", timeout=3)
        feed = client(sim.port)
        # The connection is accepted at once; the login is answered once the session is ready.
        threading.Timer(0.2, release.set).start()
        feed.open()
        assert release.is_set()
        for _ in feed.frames():
            pass
        assert feed.messages_received == 3000 and feed.gaps == []
    finally:
        release.set()
        for sim in started:
            sim.stop()


def test_a_connection_closed_without_a_word_is_not_a_warning(caplog):
    """Port probes (the demo waits for the port this way) and health checks are routine; a
    client that sends half a login and goes is worth a warning."""
    with serving(count=100) as sim:
        caplog.set_level(logging.INFO, "feedhandler.exchange")
        socket.create_connection(("127.0.0.1", sim.port)).close()
        wait_for_log(caplog, "without a word")
        half = socket.create_connection(("127.0.0.1", sim.port))
        half.sendall(LOGIN[:10])
        half.close()
        wait_for_log(caplog, "in the middle of a frame")
    probe, = [r for r in caplog.records if "without a word" in r.getMessage()]
    partial, = [r for r in caplog.records if "in the middle of a frame" in r.getMessage()]
    assert (probe.levelno, partial.levelno) == (logging.INFO, logging.WARNING)


def test_a_paced_session_starts_its_clock_when_it_is_ready(monkeypatch):
    """Generating a --count session takes time; a paced session must not make up for it by
    publishing that time's worth of frames at once."""
    generate = simulator.orderflow.generate

    def slow_generate(*args, **kwargs):
        time.sleep(1.0)
        return generate(*args, **kwargs)

    monkeypatch.setattr(simulator.orderflow, "generate", slow_generate)
    count = 3_000
    with serving(count=count, rate=6_000) as sim:
        feed = client(sim.port)
        sim.wait_prepared()
        ready = time.monotonic()
        assert sum(1 for _ in feed.frames()) == count // 6
        elapsed = time.monotonic() - ready
    assert feed.messages_received == count
    assert 0.35 < elapsed < 1.5

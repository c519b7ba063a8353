"""SoupBinTCP sessions on real sockets (127.0.0.1): `SoupBinClient` against the simulator
(whole session, login inside a frame, link cuts through tests/faults/proxy.py, failover to line
B, heartbeats both ways) and against hostile servers of the test's own (every one ends in a
count or one clear error, within a bound)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from faults.proxy import TcpProxy
from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.soupbin_server import SoupBinSimulator
from feedhandler.session import ConnectionLost, LoginRejected, SessionChanged
from feedhandler.session.soupbin import SoupBinClient
from feedhandler.wire import packet, soupbin

COUNT = 60_000


def simulator(**options) -> SoupBinSimulator:
    config = dict(port=0, count=COUNT, seed=11, symbols=20, status_interval=None)
    return SoupBinSimulator(SimulatorConfig(**{**config, **options}))


def client(port: int, **options) -> SoupBinClient:
    return SoupBinClient("127.0.0.1", port, username="feed", password="feed",
                         **{"backoff": (0.05, 0.2), **options})


def read_all(source, deadline: float = 60.0) -> list[tuple[int, int, bytes]]:
    """(first sequence, count, session) of every frame, each decoded."""
    seen = []
    started = time.monotonic()
    for batch in source.batches():
        for frame in batch:
            decoded = packet.decode(frame)
            seen.append((decoded.sequence, decoded.count, decoded.session))
        assert time.monotonic() - started < deadline, "session did not end"
    return seen


def assert_contiguous(seen, first: int, last: int):
    expected = first
    for sequence, count, _ in seen:
        assert sequence == expected, (sequence, expected)
        expected += count
    assert expected == last + 1


def test_whole_session_into_frames():
    with simulator() as server, client(server.port) as source:
        seen = read_all(source)
    assert_contiguous(seen, 1, COUNT)
    assert {session for _, _, session in seen} == {b"SIMULATOR "}
    assert source.ended and source.tracker.messages == COUNT and not source.tracker.gaps
    assert len(seen) < COUNT / 50           # gathered per read, not one frame per message


def test_login_at_a_sequence_number_inside_a_stored_frame():
    with simulator(messages_per_packet=500) as server, client(server.port, sequence=1234) as source:
        seen = read_all(source)
    assert_contiguous(seen, 1234, COUNT)


def test_login_from_now_on_at_the_end_gets_end_of_session():
    with simulator() as server, client(server.port, sequence=0) as source:
        assert read_all(source) == []
    assert source.ended and source.next_sequence == COUNT + 1


def test_login_rejected_for_a_wrong_password_and_another_session():
    with simulator() as server:
        with pytest.raises(LoginRejected, match="not authorized"):
            SoupBinClient("127.0.0.1", server.port, username="feed", password="nope").open()
        with pytest.raises(LoginRejected, match="session not available"):
            client(server.port, session="OTHER").open()


@pytest.mark.parametrize("cuts", [(40,), (30_000, 100_003, 77)])
def test_link_cuts_resume_at_the_next_sequence_number(cuts):
    """The proxy cuts the link after each number of bytes (inside the login answer or inside a
    packet); the client logs in again where it left off: every message once, in order."""
    with simulator() as server, TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.cut_successive_links_at(cuts)
        with client(proxy.port) as source:
            seen = read_all(source)
        assert proxy.links_opened == len(cuts) + 1
    assert_contiguous(seen, 1, COUNT)
    assert source.reconnects == len(cuts) and source.tracker.duplicates == 0


def test_failover_to_line_b_when_the_primary_is_lost():
    """Line A (through a proxy) is cut and refuses new connections; the client logs in to line
    B, a second simulator of the same session, at its next sequence number."""
    with simulator() as line_a, simulator() as line_b, \
            TcpProxy(("127.0.0.1", line_a.port)) as proxy:
        proxy.cut_at(200_000)
        seen = []
        with client(proxy.port, backup=("127.0.0.1", line_b.port)) as source:
            for batch in source.batches():
                proxy.refuse_new()          # line A is gone for good once it has delivered
                seen += [packet.peek(frame) for frame in batch]
    assert_contiguous([(first, count, session) for session, first, count in seen], 1, COUNT)
    assert source.failovers == 1 and source.address == ("127.0.0.1", line_b.port)
    # Line A delivered the start (its 200,000 bytes), line B the rest from where it stopped.
    # (Line A's own count is no measure of it: the simulator counts a 1 MB send once the
    # kernel has taken all of it, and the cut can come first.)
    assert 0 < source.tracker.messages - line_b.served()[0] < COUNT


def test_server_sends_heartbeats_after_a_second_of_silence():
    """A paced session with seconds between messages: the simulator's H packets in between."""
    with simulator(count=None, rate=0.3, burst=1.0) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(soupbin.login_request("feed", "feed", "", 0))
        received = bytearray()
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                received += sock.recv(65536)
            except TimeoutError:
                break
    types = [kind for kind, _ in split_packets(bytes(received))]
    assert types[0] == soupbin.LOGIN_ACCEPTED
    assert types.count(soupbin.SERVER_HEARTBEAT) >= 2, types


def split_packets(data: bytes) -> list[tuple[int, bytes]]:
    packets, at = [], 0
    while at + 3 <= len(data):
        length = int.from_bytes(data[at:at + 2], "big")
        if at + 2 + length > len(data):
            break
        packets.append(soupbin.parse(data[at:at + 2 + length]))
        at += 2 + length
    return packets


# ---- hostile servers -----------------------------------------------------------------------------
TRICKLE = 0.3


class FakeServer:
    """Accepts connections on 127.0.0.1; for each, reads the login request, then sends
    `script(connection_number)` (bytes, or a list of pieces sent TRICKLE s apart) and keeps the connection open `hold` seconds (or until the
    client goes). Records what each client sent."""

    def __init__(self, script, hold: float = 5.0):
        self.script, self.hold = script, hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.received: list[bytearray] = []
        self.logins: list[tuple] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with sock:
                got = bytearray()
                self.received.append(got)
                sock.settimeout(0.1)
                deadline = time.monotonic() + self.hold
                while len(got) < 49 and time.monotonic() < deadline:
                    try:
                        data = sock.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    got += data
                if len(got) < 49:
                    continue
                self.logins.append(soupbin.parse_login_request(bytes(got[:49])))
                script = self.script(len(self.received))
                try:
                    # A list is sent a piece at a time, TRICKLE seconds apart.
                    for number, piece in enumerate([script] if isinstance(script, bytes)
                                                   else script):
                        time.sleep(TRICKLE if number else 0)
                        sock.sendall(piece)
                except OSError:
                    continue
                while time.monotonic() < deadline and not self._closing.is_set():
                    try:
                        data = sock.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    got += data

    def close(self):
        self._closing.set()
        self.listener.close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


ACCEPTED = soupbin.login_accepted(b"SIMULATOR", 1)
MESSAGES = [bytes.fromhex("53000000000d18c2e280004f")] * 3     # System Event


def data(*messages) -> bytes:
    return b"".join(soupbin.sequenced_data(m) for m in messages)


@pytest.mark.parametrize("name,script,match", [
    ("truncated packet", ACCEPTED + data(*MESSAGES)[:-4], "in the middle of a frame"),
    ("oversized length", ACCEPTED + b"\xff\xffA" + b"x" * 100, "packet length 65535"),
    ("zero length", ACCEPTED + data(MESSAGES[0]) + b"\x00\x00S", "length field of 0"),
    ("zero-length message", ACCEPTED + b"\x00\x01S", "without a message"),
    ("unknown type", ACCEPTED + b"\x00\x01Q", "unexpected packet type 0x51"),
    ("client type from the server", ACCEPTED + b"\x00\x01R", "unexpected packet type 0x52"),
    ("garbage after login", ACCEPTED + bytes(range(7, 256)) * 4, "bad SoupBinTCP packet"),
    ("data before login", data(MESSAGES[0]), "before login accepted"),
    ("second login accepted", ACCEPTED + ACCEPTED, "second login accepted"),
])
def test_hostile_server_is_one_clear_error(name, script, match):
    with FakeServer(lambda _: script, hold=2.0) as server:
        source = client(server.port, max_reconnects=0)
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=match):
            read_all(source)
        assert time.monotonic() - started < 10
    # Whatever came whole before the fault was delivered, once.
    assert source.tracker.duplicates == 0


def test_hostile_server_reconnects_until_max_reconnects():
    with FakeServer(lambda _: ACCEPTED + b"\x00\x00S", hold=2.0) as server:
        source = client(server.port, max_reconnects=2)
        with pytest.raises(ConnectionLost, match="gave up after 2 reconnect attempts"):
            read_all(source)
    assert len(server.received) == 3


def test_wrong_session_in_login_accepted_ends_the_session():
    with FakeServer(lambda _: soupbin.login_accepted(b"OTHER", 1) + data(*MESSAGES)) as server:
        source = client(server.port, session="SIMULATOR")
        with pytest.raises(SessionChanged, match="OTHER"):
            read_all(source)
    assert server.logins[0][2] == b"SIMULATOR"
    assert source.tracker.messages == 0


def test_a_flood_of_heartbeats_unsequenced_and_debug_packets_is_counted_not_delivered():
    flood = soupbin.server_heartbeat() * 200_000
    script = (ACCEPTED + flood + data(MESSAGES[0]) + soupbin.unsequenced_data(b"hello")
              + soupbin.debug("maintenance at 17:00") + flood + data(*MESSAGES[1:])
              + soupbin.end_of_session())
    with FakeServer(lambda _: script) as server, client(server.port) as source:
        started = time.monotonic()
        seen = read_all(source)
        assert time.monotonic() - started < 10
    assert_contiguous(seen, 1, 3)
    assert (source.unsequenced, source.debug_packets, source.ended) == (1, 1, True)


def test_login_asks_for_the_trackers_next_sequence_after_a_lost_link():
    def script(connection):
        if connection == 1:
            return ACCEPTED + data(*MESSAGES[:2])       # then the link goes
        return soupbin.login_accepted(b"SIMULATOR", 3) + data(MESSAGES[2]) + \
            soupbin.end_of_session()

    with FakeServer(script, hold=0.5) as server, client(server.port) as source:
        seen = read_all(source)
    assert_contiguous(seen, 1, 3)
    assert [login[2:] for login in server.logins] == [(b"", 1), (b"SIMULATOR", 3)]
    # The requested session went out left-padded, as the spec's session field is.
    assert server.received[1][2 + 1 + 16:2 + 1 + 26] == b" SIMULATOR"


def test_client_sends_heartbeats_and_drops_a_silent_server():
    """Logged in and then silence: the client sends R every second of its own silence and,
    after the link timeout without a byte, counts the link as dead."""
    with FakeServer(lambda _: ACCEPTED, hold=6.0) as server:
        source = client(server.port, timeout=3.0, max_reconnects=0)
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="nothing from the server for 3 s"):
            read_all(source)
        elapsed = time.monotonic() - started
    assert 2.5 < elapsed < 6
    heartbeats = [kind for kind, _ in split_packets(bytes(server.received[0][49:]))]
    assert heartbeats.count(soupbin.CLIENT_HEARTBEAT) >= 2, heartbeats
    assert set(heartbeats) <= {soupbin.CLIENT_HEARTBEAT, soupbin.LOGOUT_REQUEST}


def test_close_logs_out():
    with FakeServer(lambda _: ACCEPTED, hold=3.0) as server:
        source = client(server.port)
        source.open()
        source.close()
        deadline = time.monotonic() + 3
        while soupbin.logout_request() not in bytes(server.received[0][49:]):
            assert time.monotonic() < deadline, server.received
            time.sleep(0.02)


@pytest.mark.parametrize("argv,problem", [
    (["--transport", "soupbintcp", "--listen", "127.0.0.1:1"], "needs --connect"),
    (["--connect", "127.0.0.1:1", "--line-b", "127.0.0.1:2"], "--line-b needs --transport"),
])
def test_cli_refuses_soupbintcp_without_a_connection_to_make(argv, problem, capsys):
    from feedhandler.cli import main

    assert main(["run", *argv, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert problem in capsys.readouterr().err


def test_a_packet_stalled_midway_is_a_dead_link():
    """A sequenced data packet trickled a byte every TRICKLE seconds: the stall timeout ends
    the link, and says how much of the packet (its u16 length) came."""
    packet_bytes = data(MESSAGES[0])
    script = [ACCEPTED + packet_bytes[:4]] + [bytes([b]) for b in packet_bytes[4:]]
    with FakeServer(lambda _: script, hold=6.0) as server:
        source = client(server.port, stall_timeout=1.0, max_reconnects=0)
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"stalled in the middle of a frame: incomplete "
                                                 r"after 1\.\d s \([4-7] bytes of 15\)"):
            read_all(source)
        assert time.monotonic() - started < 4

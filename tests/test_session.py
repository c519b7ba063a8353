"""SessionClient against the simulator (and against scripted servers for the corner cases)."""

import contextlib
import logging
import socket
import threading
import time

import pytest

from feedhandler.exchange import orderflow
from feedhandler.wire import packet
from feedhandler.session import protocol as sessionproto
from feedhandler.session import ConnectionLost, LoginRejected, SessionChanged, SessionClient
from feedhandler.exchange.server import Simulator, SimulatorConfig

SYMBOLS = 20
SESSION = b"TEST01    "


@contextlib.contextmanager
def simulator(**settings):
    config = SimulatorConfig(port=0, status_interval=None, symbols=SYMBOLS, session=SESSION.strip(),
                             **settings)
    with Simulator(config) as running:
        yield running


def client(port, **settings) -> SessionClient:
    settings = {"username": "feed", "password": "feed", "backoff": (0.01, 0.05),
                "timeout": 5.0, **settings}
    return SessionClient("127.0.0.1", port, **settings)


def messages_of(frames) -> bytes:
    """The frames' messages, decompressed, in NASDAQ file framing."""
    return b"".join(sessionproto.message_block(frame) for frame in frames)


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_every_message_arrives_in_order_byte_for_byte(codec):
    count = 20_000
    expected = orderflow.generate(count, symbols=SYMBOLS, seed=11)
    with simulator(count=count, seed=11, codec=codec, messages_per_packet=100) as sim:
        feed = client(sim.port)
        frames = list(feed.frames())
    assert messages_of(frames) == expected.data
    assert [packet.peek(f)[1] for f in frames] == list(range(1, count + 1, 100))
    decoded = [packet.decode(frame) for frame in frames]          # strict: all valid
    assert sum(len(records) for p in decoded for records in p.messages.values()) == count
    assert feed.ended and feed.next_sequence == count + 1
    assert feed.messages_received == count and feed.frames_received == len(frames) == 200
    assert feed.gaps == [] and feed.duplicates == 0 and feed.reconnects == 0
    assert feed.session == SESSION


class CuttingProxy:
    """A TCP relay to the simulator that drops each of its first `cuts` connections once
    `after` bytes have come from the server, as a flaky network would."""

    def __init__(self, upstream_port: int, after: int, cuts: int):
        self.upstream_port, self.after, self.cuts_left = upstream_port, after, cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            limit = self.after if self.cuts_left > 0 else None
            self.cuts_left -= 1
            both = (upstream, downstream)
            for source, sink, cap in ((upstream, downstream, limit), (downstream, upstream, None)):
                threading.Thread(target=self._relay, args=(source, sink, cap, both),
                                 daemon=True).start()

    @staticmethod
    def _relay(source, sink, limit, both):
        relayed = 0
        try:
            while data := source.recv(1 << 16):
                if limit is not None and relayed + len(data) >= limit:
                    sink.sendall(data[:limit - relayed])
                    break
                sink.sendall(data)
                relayed += len(data)
        except OSError:
            pass
        for sock in both:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.listener.close()


def test_disconnect_mid_frame_then_resume_has_no_gap_and_no_duplicate(caplog):
    count = 30_000
    expected = orderflow.generate(count, symbols=SYMBOLS, seed=12)
    with simulator(count=count, seed=12, messages_per_packet=250) as sim:
        # Cut inside the 11th frame (after the 23-byte login accepted), three times.
        sim.wait_prepared()
        cut = sessionproto.LOGIN_ACCEPTED_LENGTH + 4 + int(sim.store.chunks[0].offsets[10]) + 7
        proxy = CuttingProxy(sim.port, after=cut, cuts=3)
        try:
            with caplog.at_level(logging.WARNING, "feedhandler.session"):
                feed = client(proxy.port)
                frames = list(feed.frames())
        finally:
            proxy.close()
    assert feed.reconnects == 3
    assert "in the middle of a frame" in caplog.text
    assert messages_of(frames) == expected.data
    assert feed.gaps == [] and feed.duplicates == 0 and feed.next_sequence == count + 1


def test_resume_point_inside_a_frame_gets_exactly_the_rest():
    count = 5_000
    expected = orderflow.generate(count, symbols=SYMBOLS, seed=13)
    with simulator(count=count, seed=13, messages_per_packet=100) as sim:
        feed = client(sim.port, sequence=151)
        frames = list(feed.frames())
    assert packet.peek(frames[0])[1:] == (151, 50)      # the server trimmed the first frame
    assert messages_of(frames) == expected.data[expected.offsets[150]:]
    assert feed.gaps == [] and feed.duplicates == 0


def test_sequence_zero_means_from_now_on():
    with simulator(count=2_000) as sim:
        feed = client(sim.port, sequence=0)
        assert list(feed.frames()) == []
    assert feed.ended and feed.next_sequence == 2_001 and feed.gaps == []


def scripted_server(script, login=sessionproto.login_accepted(SESSION, 1)):
    """A one-connection server: it reads the login request, answers `login` (accepted from
    sequence 1), sends the scripted frames and closes. Returns its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        with listener, listener.accept()[0] as connection:
            connection.recv(64)
            connection.sendall(login)
            for frame in script:
                connection.sendall(frame)
            with contextlib.suppress(OSError):
                while connection.recv(64):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def test_duplicates_are_dropped_overlaps_trimmed_and_gaps_recorded():
    block = orderflow.generate(400, symbols=SYMBOLS, seed=14)

    def frame(first, count):
        data = block.data[block.offsets[first - 1]:block.offsets[first - 1 + count]]
        return packet.encode_block(data, count, session=SESSION, sequence=first)

    def messages(first, last):
        return block.data[block.offsets[first - 1]:block.offsets[last]]

    port = scripted_server([
        frame(1, 100),
        frame(51, 100),                         # 51..100 again, then 101..150
        frame(1, 100),                          # all seen
        frame(201, 100),                        # 151..200 never sent
        sessionproto.heartbeat(SESSION, 350),   # 301..349 never sent
        frame(350, 51),
        sessionproto.end_of_session(SESSION, 401),
    ])
    feed = client(port, reconnect=False)
    frames = list(feed.frames())
    assert [packet.peek(f)[1:] for f in frames] == [(1, 100), (101, 50), (201, 100), (350, 51)]
    assert messages_of(frames) == messages(1, 150) + messages(201, 300) + messages(350, 400)
    assert feed.duplicates == 150
    assert feed.gaps == [(151, 200), (301, 349)]
    assert feed.next_sequence == 401 and feed.ended


def script_frame(first, count, session=SESSION):
    block = orderflow.generate(200, symbols=SYMBOLS, seed=15)
    data = block.data[block.offsets[first - 1]:block.offsets[first - 1 + count]]
    return packet.encode_block(data, count, session=session, sequence=first)


def read_until_error(source):
    """(frames, the error that ended the source or None)."""
    frames = []
    try:
        for batch in source.batches():
            frames.extend(batch)
    except Exception as error:  # noqa: BLE001 - the test looks at which one
        return frames, error
    return frames, None


def test_a_frame_of_another_session_ends_the_session_after_the_frames_before_it():
    # All in one read: the frames before the foreign one must still be delivered.
    port = scripted_server([b"".join([script_frame(1, 50), script_frame(51, 50),
                                      script_frame(101, 50, session=b"OTHER00001"),
                                      script_frame(151, 50)])])
    feed = client(port)
    frames, error = read_until_error(feed)
    assert [packet.peek(f)[1:] for f in frames] == [(1, 50), (51, 50)]
    assert isinstance(error, SessionChanged) and error.sequence == 101
    assert feed.tracker.other_session_frames == 1 and feed.next_sequence == 101
    assert feed.reconnects == 0


def test_frames_read_before_a_protocol_error_are_not_lost():
    # A broken frame right behind good ones in the same read: the good ones are delivered,
    # then the link fails (and the client would resume after them).
    port = scripted_server([script_frame(1, 50) + script_frame(51, 50) +
                            sessionproto.empty_frame(ord("Z"))])
    feed = client(port, reconnect=False)
    frames, error = read_until_error(feed)
    assert [packet.peek(f)[1:] for f in frames] == [(1, 50), (51, 50)]
    assert isinstance(error, ConnectionLost) and "unknown frame type 0x5a" in str(error)
    assert feed.next_sequence == 101


def test_open_logs_in_and_keeps_what_came_with_the_login():
    frames = [script_frame(1, 50), script_frame(51, 50)]
    port = scripted_server([], login=b"".join([sessionproto.login_accepted(SESSION, 1), *frames,
                                               sessionproto.end_of_session(SESSION, 101)]))
    feed = client(port, reconnect=False)
    feed.open()
    feed.open()                     # idempotent
    assert feed.session == SESSION and feed.next_sequence == 1
    assert list(feed.frames()) == frames and feed.ended


def test_open_raises_a_rejected_login():
    port = scripted_server([], login=sessionproto.login_rejected(sessionproto.NOT_AUTHORIZED))
    with pytest.raises(LoginRejected, match="not authorized"):
        client(port).open()


def test_silent_server_is_a_dead_link():
    port = scripted_server([])      # logs in, then says nothing (no heartbeats either)
    listener_gone = time.monotonic()
    feed = client(port, timeout=0.3, heartbeat_interval=0.05, reconnect=False)
    with pytest.raises(ConnectionLost, match="(nothing from the server|closed)"):
        list(feed.frames())
    assert time.monotonic() - listener_gone < 3


def test_heartbeats_keep_an_idle_link_alive_both_ways():
    # One message a second: the link is idle most of the time. The server gives up on silent
    # clients after 0.5 s and the client on a silent server after 0.5 s.
    with simulator(rate=1, heartbeat_interval=0.1, timeout=0.5) as sim:
        feed = client(sim.port, heartbeat_interval=0.1, timeout=0.5)
        stopper = threading.Timer(1.6, feed.close)
        stopper.start()
        frames = list(feed.frames())
        stopper.join()
    assert feed.reconnects == 0 and feed.gaps == []
    assert 1 <= feed.messages_received <= 2


def test_close_from_another_thread_unblocks_the_reader():
    with simulator(rate=100) as sim:
        feed = client(sim.port)
        threading.Timer(0.3, feed.close).start()
        started = time.monotonic()
        for _ in feed.frames():
            pass
        assert time.monotonic() - started < 2
        assert not feed.ended and feed.messages_received > 0


@pytest.mark.parametrize(("settings", "reason"), [
    ({"password": "wrong"}, b"A"),
    ({"session": "OTHER"}, b"S"),
])
def test_login_rejected_raises(settings, reason):
    with simulator(count=1_000) as sim:
        with pytest.raises(LoginRejected) as rejected:
            list(client(sim.port, **settings).frames())
    assert rejected.value.reason == reason


def test_reconnecting_gives_up_after_max_reconnects():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    feed = client(port, max_reconnects=2)
    with pytest.raises(ConnectionLost, match="gave up after 2"):
        list(feed.frames())

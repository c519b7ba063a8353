"""The session client against faults, on real sockets: a consumer that stops pulling, gaps on
the live link that the server can or cannot fill, and hostile servers (garbage after login, a
2^31 length prefix, a trickled frame, sequence numbers running backwards or jumping, a login
refused on reconnect), through `SessionClient` and through `feedhandler run`."""

import contextlib
import logging
import socket
import threading
import time

import pytest

from feedhandler.cli.exit_codes import ExitCode
from feedhandler.exchange import orderflow
from feedhandler.session import ConnectionLost, LoginRejected
from feedhandler.session import protocol as sessionproto
from feedhandler.wire import packet
from streams import SESSION
from test_handler import final_account, run_cli
from test_session import client, messages_of, read_until_error, simulator
from test_sources import MESSAGES, block, frame, ranges

GARBAGE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
HUGE_PREFIX = (1 << 31).to_bytes(4, "big") + b"S" + bytes(27)


class HostileServer:
    """A feed server on a real socket. Each connection's login request is read and recorded in
    `logins` as (time, requested sequence); then `serve(number, connection, requested)` plays
    the connection (number 1 is the first) and the server waits for the client to go."""

    def __init__(self, serve):
        self.serve = serve
        self.logins: list[tuple[float, int]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        for number in range(1, 1_000_000):
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._play, args=(number, connection), daemon=True).start()

    def _play(self, number, connection):
        with connection, contextlib.suppress(OSError):
            request = b""
            while len(request) < 4 + sessionproto.LOGIN_REQUEST_LENGTH:
                received = connection.recv(64)
                if not received:
                    return
                request += received
            requested = sessionproto.parse_login_request(request)[3]
            self.logins.append((time.monotonic(), requested))
            self.serve(number, connection, requested)
            connection.settimeout(10)
            while connection.recv(64):
                pass

    def close(self):
        self.listener.close()


@contextlib.contextmanager
def hostile(serve):
    server = HostileServer(serve)
    try:
        yield server
    finally:
        server.close()


def accepted(sequence: int) -> bytes:
    return sessionproto.login_accepted(SESSION, sequence)


def frames_from(first: int, last: int, size: int = 100) -> bytes:
    """Frames of `size` messages from `first` up to `last` (inclusive), back to back."""
    return b"".join(frame(start, min(size, last - start + 1))
                    for start in range(first, last + 1, size))


def read_for(source, seconds: float):
    """(frames, error) of `read_until_error`, with `close()` after `seconds` should the source
    hang (then the test fails on what it got)."""
    stopper = threading.Timer(seconds, source.close)
    stopper.start()
    try:
        return read_until_error(source)
    finally:
        stopper.cancel()


# ---- heartbeats while the consumer is blocked -------------------------------------------------

def test_heartbeats_keep_flowing_while_the_consumer_stops_pulling(caplog):
    """Kafka backpressure stops the handler's reader: the client must keep the session alive.
    The simulator drops a client it has not heard from for 2 s; the consumer stops for 3 s,
    while the session still has 2 s to go (a drop after end of session was sent would hide)."""
    count = 5_000
    expected = orderflow.generate(count, symbols=20, seed=21)
    with caplog.at_level(logging.INFO, "feedhandler.exchange.server"), \
            simulator(count=count, seed=21, rate=1_000, heartbeat_interval=0.5, timeout=2.0,
                      live_clock=False) as sim:     # the bytes are compared with the generator's
        feed = client(sim.port, heartbeat_interval=0.5, timeout=2.0)
        frames = []
        for number, batch in enumerate(feed.batches()):
            frames += batch
            if number == 0:
                time.sleep(3.0)
    assert "no heartbeat from the client" not in caplog.text
    assert feed.reconnects == 0 and feed.ended
    assert messages_of(frames) == expected.data
    assert feed.gaps == [] and feed.duplicates == 0 and feed.next_sequence == count + 1


def test_a_stall_at_full_rate_longer_than_the_server_waits_is_resumed_without_loss(caplog):
    """Heartbeats do not make the server wait for a client it cannot send to: the simulator
    drops it once its send is blocked for its link timeout, and the client logs in again from
    `next_sequence` when the consumer resumes."""
    count = 800_000         # about 26 MB: more than the socket buffers hold
    with caplog.at_level(logging.INFO, "feedhandler.exchange.server"), \
            simulator(count=count, seed=22, codec="none", heartbeat_interval=0.25,
                      timeout=1.0) as sim:
        feed = client(sim.port, heartbeat_interval=0.25, timeout=1.0, receive_buffer=0)
        messages = 0
        for number, batch in enumerate(feed.batches()):
            messages += sum(packet.peek(f)[2] for f in batch)
            if number == 0:
                time.sleep(2.5)
    assert "client not reading" in caplog.text
    assert feed.ended and feed.reconnects == 1
    assert messages == count and feed.next_sequence == count + 1
    assert feed.gaps == [] and feed.duplicates == 0


# ---- gaps on the live link ----------------------------------------------------------------------

def test_a_late_frame_inside_an_open_gap_fills_it():
    # One connection: 101..200 comes after 201..300, and must not count as a duplicate.
    with hostile(lambda number, sock, requested: sock.sendall(
            accepted(1) + frame(1, 100) + frame(201, 100) + frame(101, 100)
            + sessionproto.end_of_session(SESSION, 301))) as server:
        feed = client(server.port, reconnect=False)
        frames, error = read_for(feed, 10)
    assert error is None and feed.ended
    assert ranges(frames) == [(1, 100), (101, 100), (201, 100)]
    assert messages_of(frames) == block(1, 300)
    assert feed.gaps == [] and feed.duplicates == 0 and feed.tracker.gaps_filled == 1


def skipping_once(number, sock, requested):
    """The first connection skips 101..200 (and keeps sending); a login from 101 gets them."""
    sock.sendall(accepted(requested))
    if number == 1:
        sock.sendall(frames_from(1, 100) + frames_from(201, 1000))
        time.sleep(2)
    else:
        sock.sendall(frames_from(requested, 1000) + sessionproto.end_of_session(SESSION, 1001))


def test_a_gap_on_the_live_link_is_re_requested_and_filled():
    with hostile(skipping_once) as server:
        feed = client(server.port)             # waits 0.5 s for a late frame, then asks
        started = time.monotonic()
        frames, error = read_for(feed, 10)
        elapsed = time.monotonic() - started
    assert error is None and feed.ended
    # In sequence order: what came after the gap was held until the gap was filled.
    assert ranges(frames) == [(first, 100) for first in range(1, 1001, 100)]
    assert messages_of(frames) == block(1, 1000)
    assert feed.gaps == [] and feed.tracker.gaps_filled == 1
    assert feed.rerequests == 1 and feed.reconnects == 0
    assert [requested for _, requested in server.logins] == [1, 101]
    assert feed.duplicates == 800          # the held frames, sent again after the re-request
    assert elapsed < 2, f"gap recovered in {elapsed:.2f} s"


def test_a_gap_the_server_cannot_fill_is_given_up_after_its_re_requests():
    def always_skipping(number, sock, requested):
        sock.sendall(accepted(requested))
        if requested <= 100:
            sock.sendall(frames_from(requested, 100))
        sock.sendall(frames_from(201, 300) + sessionproto.end_of_session(SESSION, 301))

    with hostile(always_skipping) as server:
        feed = client(server.port)             # asks three times
        frames, error = read_for(feed, 10)
    assert error is None and feed.ended
    assert ranges(frames) == [(1, 100), (201, 100)]
    assert feed.gaps == [(101, 200)] and feed.tracker.missing == 100
    assert [requested for _, requested in server.logins] == [1, 101, 101, 101]
    assert feed.rerequests == 3 and feed.reconnects == 0


def test_sequence_numbers_running_backwards_and_jumping():
    jump = 1_000_001

    def erratic(number, sock, requested):
        sock.sendall(accepted(requested))
        if number == 1:
            sock.sendall(frames_from(1, 100) + frame(50, 31) + frame(101, 50))
        sock.sendall(packet.encode(MESSAGES[:10], session=SESSION, sequence=jump, codec="lz4")
                     + sessionproto.end_of_session(SESSION, jump + 10))

    with hostile(erratic) as server:
        feed = client(server.port, max_gap_requests=1)
        frames, error = read_for(feed, 10)
    assert error is None and feed.ended
    assert ranges(frames) == [(1, 100), (101, 50), (jump, 10)]
    assert feed.duplicates == 31 + 10      # 50..80, and the held frame sent again
    assert feed.gaps == [(151, jump - 1)] and feed.next_sequence == jump + 10
    assert [requested for _, requested in server.logins] == [1, 151]


def test_sequence_numbers_running_past_the_last_one_are_a_protocol_error():
    # Delivering messages up to 2^64 + 4 would leave nothing a login could ask for next.
    def wrapping(number, sock, requested):
        sock.sendall(accepted(requested) + frames_from(1, 100) + packet.encode(
            MESSAGES[:10], session=SESSION, sequence=(1 << 64) - 5, codec="lz4"))

    with hostile(wrapping) as server:
        feed = client(server.port, reconnect=False)
        frames, error = read_for(feed, 10)
    assert ranges(frames) == [(1, 100)] and feed.next_sequence == 101
    assert isinstance(error, ConnectionLost)
    assert "runs past the last sequence number 18446744073709551615" in str(error)


# ---- hostile servers ----------------------------------------------------------------------------

def test_garbage_after_login_backs_off_and_gives_up():
    """A server that accepts every login and then sends garbage: the backoff must not reset at
    each login (it did: about ten logins a second, forever)."""
    def garbage(number, sock, requested):
        sock.sendall(accepted(requested) + GARBAGE)

    with hostile(garbage) as server:
        feed = client(server.port, backoff=(0.1, 0.4), max_reconnects=3)
        started = time.monotonic()
        frames, error = read_for(feed, 10)
        elapsed = time.monotonic() - started
    assert frames == []
    assert isinstance(error, ConnectionLost) and "gave up after 3 reconnect attempts" in str(error)
    assert "unknown frame type" in str(error)
    logins = [at for at, _ in server.logins]
    assert len(logins) == 4
    # Waits of 0.1, 0.2 and 0.4 s between them: never shorter (a reset backoff would be), and
    # longer only by what a loaded machine adds.
    for waited, backoff in zip((b - a for a, b in zip(logins, logins[1:])), (0.1, 0.2, 0.4)):
        assert backoff - 0.01 <= waited < backoff + 0.5
    assert elapsed < 3


def test_a_length_prefix_of_two_gigabytes_is_refused_before_it_is_buffered():
    def huge(number, sock, requested):
        sock.sendall(accepted(requested) + (frames_from(1, 100) if number == 1 else b"")
                     + HUGE_PREFIX)

    with hostile(huge) as server:
        feed = client(server.port, backoff=(0.05, 0.2), max_reconnects=2)
        frames, error = read_for(feed, 10)
    assert ranges(frames) == [(1, 100)] and feed.next_sequence == 101
    assert isinstance(error, ConnectionLost)
    assert "data frame length 2147483648 outside 32..8388608" in str(error)
    # The first session delivered data; then two reconnects that got nowhere.
    assert [requested for _, requested in server.logins] == [1, 101, 101]
    assert len(feed._buffer) < 64 << 20


def test_a_trickled_frame_is_a_stalled_link_and_the_client_resumes(caplog):
    def trickle(number, sock, requested):
        sock.sendall(accepted(requested))
        if number == 1:
            sock.sendall(frames_from(1, 100))
            for byte in frame(101, 100):           # one byte every 0.1 s: minutes for a frame
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        else:
            sock.sendall(frames_from(requested, 200)
                         + sessionproto.end_of_session(SESSION, 201))

    with hostile(trickle) as server, caplog.at_level(logging.WARNING, "feedhandler.session"):
        feed = client(server.port, timeout=1.0)     # the stall timeout defaults to it
        started = time.monotonic()
        frames, error = read_for(feed, 10)
        elapsed = time.monotonic() - started
    assert error is None and feed.ended
    assert messages_of(frames) == block(1, 200) and feed.reconnects == 1
    assert "server stalled in the middle of a frame: incomplete after" in caplog.text
    assert 1.0 < elapsed < 3


def refusing_after(count: int):
    """A server whose first connection sends `count` messages and closes; it refuses every
    login after that."""
    def refusing(number, sock, requested):
        if number == 1:
            sock.sendall(accepted(requested) + frames_from(1, count))
            sock.shutdown(socket.SHUT_RDWR)
        else:
            sock.sendall(sessionproto.login_rejected(sessionproto.NOT_AUTHORIZED))
    return refusing


def test_a_login_refused_on_reconnect_ends_the_source_after_what_came_before():
    with hostile(refusing_after(100)) as server:
        feed = client(server.port)
        frames, error = read_for(feed, 10)
    assert isinstance(error, LoginRejected) and error.reason == b"A"
    assert ranges(frames) == [(1, 100)] and feed.next_sequence == 101
    assert feed.gaps == [] and feed.messages_received == 100


# ---- a quarantined whole frame ------------------------------------------------------------------

def test_a_frame_with_a_corrupt_body_still_advances_the_tracker():
    """The header says which messages a frame holds even when its body is corrupt: the tracker
    counts them, and the whole-frame quarantine entry carries the frame to read them from."""
    corrupt = bytearray(frame(101, 100))
    corrupt[-10] ^= 0xFF
    with hostile(lambda number, sock, requested: sock.sendall(
            accepted(1) + frame(1, 100) + bytes(corrupt) + frame(201, 100)
            + sessionproto.end_of_session(SESSION, 301))) as server:
        feed = client(server.port, reconnect=False)
        frames, error = read_for(feed, 10)
    assert error is None and feed.ended
    assert feed.next_sequence == 301 and feed.messages_received == 300 and feed.gaps == []
    decoded = packet.decode_many(frames, policy="quarantine")
    assert [p.count for p in decoded] == [100, None, 100]
    (entry,) = decoded[1].quarantined
    assert packet.peek(entry.raw) == (SESSION, 101, 100)


# ---- feedhandler run ----------------------------------------------------------------------------

def run_connected(server, kafka, topic_prefix, *flags):
    """`feedhandler run --connect` to `server`, one partition, JSON stats; (exit code, stdout,
    stderr)."""
    handler = run_cli("run", "--connect", f"127.0.0.1:{server.port}", *flags,
                      "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                      "--partitions", "1", "--json-stats")
    stdout, stderr = handler.communicate(timeout=60)
    return handler.returncode, stdout, stderr


@pytest.mark.kafka
def test_run_gives_up_on_a_garbage_server_with_the_feed_failed_code(kafka, topic_prefix):
    with hostile(lambda number, sock, requested: sock.sendall(accepted(requested)
                                                              + GARBAGE)) as server:
        code, stdout, stderr = run_connected(server, kafka, topic_prefix, "--max-reconnects", "2")
    assert code == ExitCode.FEED_FAILED, stderr
    assert "the feed ended early: gave up after 2 reconnect attempts" in stderr
    assert "Traceback" not in stderr
    assert len(server.logins) == 3
    assert final_account(stdout)["lost"] == 0


@pytest.mark.kafka
def test_run_exits_feed_failed_when_a_reconnect_login_is_refused(kafka, topic_prefix):
    with hostile(refusing_after(500)) as server:
        code, stdout, stderr = run_connected(server, kafka, topic_prefix)
    assert code == ExitCode.FEED_FAILED, stderr
    account = final_account(stdout)
    assert (account["delivered"], account["lost"], account["gaps"]) == (500, 0, 0), stderr
    assert "the feed ended early: login rejected: not authorized" in stderr
    assert "Traceback" not in stderr


@pytest.mark.kafka
def test_run_recovers_a_gap_and_a_trickled_frame(kafka, topic_prefix):
    def faulty(number, sock, requested):
        sock.sendall(accepted(requested))
        if number == 1:                 # skips 101..200
            sock.sendall(frames_from(1, 100) + frames_from(201, 400))
            time.sleep(2)
        elif number == 2:               # fills it, then trickles the frame from 501
            sock.sendall(frames_from(requested, 500))
            for byte in frame(501, 100):
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        else:
            sock.sendall(frames_from(requested, 1000)
                         + sessionproto.end_of_session(SESSION, 1001))

    with hostile(faulty) as server:
        code, stdout, stderr = run_connected(server, kafka, topic_prefix, "--stall-timeout", "1")
    assert code == ExitCode.OK, stderr
    account = final_account(stdout)
    assert (account["delivered"], account["gaps"], account["missing"], account["lost"]) == \
        (1000, 0, 0, 0), stderr
    assert [requested for _, requested in server.logins] == [1, 101, 501], stderr


@pytest.mark.parametrize(("flag", "value", "problem"), [
    ("--max-reconnects", "-1", "must not be negative, not -1"),
    ("--max-reconnects", "many", "expected a whole number, got 'many'"),
    ("--stall-timeout", "0", "must be a positive number of seconds, not 0"),
    ("--gap-wait", "-0.5", "must be 0 or a finite number of seconds, not -0.5"),
    ("--gap-wait", "inf", "must be 0 or a finite number of seconds, not inf"),
    ("--gap-wait", "soon", "expected seconds, got 'soon'"),
])
def test_run_refuses_bad_fault_settings_in_one_line(flag, value, problem):
    handler = run_cli("run", "--connect", "127.0.0.1:9", flag, value)
    _, stderr = handler.communicate(timeout=60)
    assert handler.returncode == ExitCode.USAGE
    assert stderr.strip().splitlines()[-1] == f"feedhandler run: error: argument {flag}: {problem}"

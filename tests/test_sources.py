"""Frame sources: the shared sequence tracker, the --listen source against real TCP peers, and
`feedhandler run --listen` end to end."""

import contextlib
import errno
import socket
import threading
import time

import pytest

from faults.processes import free_port
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.exchange import orderflow
from feedhandler.session import ConnectionLost, ListenSource, SequenceTracker, SessionChanged
from feedhandler.session import protocol as sessionproto
from feedhandler.wire import packet
from streams import SESSION, split_block
from test_handler import final_account, run_cli
from test_session import read_until_error

OTHER_SESSION = b"OTHER00001"
MESSAGES = split_block(orderflow.generate(2_000, symbols=20, seed=31).data)


def frame(first: int, count: int, session: bytes = SESSION, codec: str = "lz4") -> bytes:
    return packet.encode(MESSAGES[first - 1:first - 1 + count], session=session, sequence=first,
                         codec=codec)


def block(first: int, last: int) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in MESSAGES[first - 1:last])


# The feed of issue 8, finding 1: messages 1-500, then 1001-1500, then a frame of another
# session, then end of session.
GAP_FEED = [frame(1, 250), frame(251, 250), frame(1001, 500), frame(1501, 100, OTHER_SESSION),
            sessionproto.end_of_session(SESSION, 1501)]


# ---- the tracker ----------------------------------------------------------------------------------

def ranges(frames) -> list[tuple[int, int]]:
    """(first sequence number, message count) of each frame."""
    return [packet.peek(f)[1:] for f in frames]


def test_tracker_counts_gaps_duplicates_and_trims_overlaps():
    # The same rules through the client: test_session.py's scripted-server tests.
    tracker = SequenceTracker()
    assert ranges(tracker.accept(frame(1, 100))) == [(1, 100)]
    assert tracker.accept(sessionproto.heartbeat(SESSION, 151)) == []     # 101..150 not here
    assert tracker.open_gap == (101, 150)
    assert tracker.accept(frame(141, 30)) == []                 # held behind the gap
    assert tracker.accept(frame(1, 100)) == []                  # all seen
    assert tracker.open_gap == (101, 140) and tracker.gaps == []
    assert ranges(tracker.give_up()) == [(141, 30)]             # 101..140 missing
    trimmed = tracker.accept(frame(161, 20))                    # 161..170 repeat; 171..180 new
    assert ranges(trimmed) == [(171, 10)]
    assert sessionproto.message_block(trimmed[0]) == block(171, 180)
    assert tracker.accept(sessionproto.end_of_session(SESSION, 200)) == []  # 181..199 open
    assert not tracker.ended and tracker.gap_due(0.0, 3600)    # end of session: due at once
    assert tracker.give_up() == [] and tracker.ended and tracker.next_sequence == 200
    assert tracker.gaps == [(101, 140), (181, 199)] and tracker.missing == 59
    assert tracker.duplicates == 110 and tracker.frames == 3 and tracker.messages == 140
    assert tracker.gaps_filled == 0


def test_tracker_a_late_frame_fills_the_open_gap_in_sequence_order():
    tracker = SequenceTracker()
    tracker.accept(frame(1, 100))
    assert tracker.accept(frame(301, 100)) == [] and tracker.accept(frame(201, 100)) == []
    assert tracker.open_gap == (101, 200) and tracker.held_bytes > 0
    assert not tracker.gap_due(time.monotonic(), 60)
    # The late frame is delivered, then everything held behind it, in sequence order.
    assert ranges(tracker.accept(frame(101, 100))) == [(101, 100), (201, 100), (301, 100)]
    assert tracker.open_gap is None and tracker.held_bytes == 0
    assert tracker.gaps == [] and tracker.duplicates == 0 and tracker.gaps_filled == 1
    assert tracker.messages == 400 and tracker.next_sequence == 401


def test_tracker_gap_is_due_after_its_wait_or_when_the_hold_is_full():
    tracker = SequenceTracker(max_held_bytes=2 * len(frame(101, 100)))
    tracker.accept(frame(1, 100))
    tracker.accept(frame(201, 100))
    opened = time.monotonic()
    assert not tracker.gap_due(opened, 60) and tracker.gap_due(opened + 60, 60)
    tracker.accept(frame(301, 100))
    assert not tracker.gap_due(opened, 60)                      # exactly at the limit
    tracker.accept(frame(401, 100))
    assert tracker.gap_due(opened, 60)                          # over it: due at once
    tracker.note_rerequest()
    tracker.note_rerequest()
    assert tracker.gap_requests == 2 and tracker.rerequests == 2
    tracker.login(SESSION, 101)                                 # the server has them
    assert tracker.gap_requests == 2 and tracker.gaps == []
    assert not tracker.gap_due(time.monotonic(), 60)           # the new link gets its wait
    assert ranges(tracker.give_up_all()) == [(201, 100), (301, 100), (401, 100)]
    assert tracker.gaps == [(101, 200)] and tracker.gap_requests == 0


def test_tracker_refuses_another_session_and_counts_it():
    tracker = SequenceTracker()
    assert tracker.accept(frame(1, 10)) is not None          # the first frame fixes the session
    with pytest.raises(SessionChanged, match="from 'TEST000001' to 'OTHER00001'") as changed:
        tracker.accept(frame(11, 10, OTHER_SESSION))
    assert changed.value.sequence == 11
    assert tracker.other_session_frames == 1
    assert tracker.next_sequence == 11 and tracker.gaps == [] and tracker.messages == 10


def test_tracker_asked_session_and_sequence():
    asked = SequenceTracker("OTHER00001", 0)               # 0: from whatever comes first
    with pytest.raises(SessionChanged):
        asked.accept(frame(1, 10))
    from_now_on = SequenceTracker(b"", 0)
    assert from_now_on.accept(frame(501, 10)) is not None
    assert from_now_on.gaps == [] and from_now_on.next_sequence == 511
    whole_session = SequenceTracker()                      # 1: a later start is a gap
    whole_session.login(SESSION, 101)
    assert whole_session.gaps == [(1, 100)] and whole_session.next_sequence == 101
    with pytest.raises(SessionChanged):
        whole_session.login(OTHER_SESSION, 200)


# ---- ListenSource against a real TCP peer ---------------------------------------------------------

def push(port: int, script, hold: threading.Event | None = None) -> threading.Thread:
    """A feed that connects to the listener on `port` (OSError if it cannot) and plays
    `script` on a thread: bytes are sent, numbers are pauses in seconds. Then it closes, or
    with `hold` waits for it first."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)

    def play():
        # A listener that gives up on the feed closes the connection: the feed stops too.
        with connection as sock, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for step in script:
                if isinstance(step, bytes):
                    sock.sendall(step)
                else:
                    time.sleep(step)
            if hold is not None:
                hold.wait(10)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def listen(**settings) -> ListenSource:
    source = ListenSource("127.0.0.1", 0, **settings)
    source.open()
    return source


def test_listen_records_the_gap_and_ends_at_a_frame_of_another_session():
    source = listen()
    feed = push(source.address[1], GAP_FEED)
    frames, error = read_until_error(source)
    feed.join(5)
    # Everything before the foreign frame is delivered, then the source ends with the reason.
    assert [packet.peek(f)[1:] for f in frames] == [(1, 250), (251, 250), (1001, 500)]
    assert isinstance(error, SessionChanged) and error.got == OTHER_SESSION
    tracker = source.tracker
    assert tracker.gaps == [(501, 1000)] and tracker.missing == 500
    assert tracker.other_session_frames == 1 and tracker.messages == 1000
    assert not source.ended


def test_listen_fills_a_gap_with_a_late_frame_and_gives_up_one_that_stays_open():
    source = listen(gap_wait=0.3)
    hold = threading.Event()
    push(source.address[1], [frame(1, 100), frame(201, 100), frame(101, 100),   # late: fills
                             frame(401, 100), 1.0,                              # 301..400 never
                             frame(501, 100), sessionproto.end_of_session(SESSION, 601)],
         hold=hold)
    try:
        received, error = read_until_error(source)
    finally:
        hold.set()
    assert error is None and source.ended
    assert ranges(received) == [(first, 100) for first in (1, 101, 201, 401, 501)]
    tracker = source.tracker
    assert tracker.gaps == [(301, 400)] and tracker.duplicates == 0
    assert tracker.gaps_filled == 1 and tracker.rerequests == 0


def test_listen_survives_a_pause_inside_a_frame():
    frames = [frame(1, 300), frame(301, 300, codec="none"), frame(601, 300)]
    cut = len(frames[1]) // 2
    source = listen()
    feed = push(source.address[1], [frames[0], frames[1][:3], 0.6, frames[1][3:cut], 1.5,
                                    frames[1][cut:], frames[2],
                                    sessionproto.heartbeat(SESSION, 901),
                                    sessionproto.end_of_session(SESSION, 901)])
    received, error = read_until_error(source)
    feed.join(5)
    assert error is None and source.ended
    assert received == frames
    assert source.tracker.gaps == [] and source.tracker.next_sequence == 901


def test_listen_ends_with_a_clear_error_when_a_frame_stalls():
    source = listen(stall_timeout=0.3)
    hold = threading.Event()
    started = time.monotonic()
    push(source.address[1], [frame(1, 100), frame(101, 100)[:40]], hold=hold)
    try:
        frames, error = read_until_error(source)
    finally:
        hold.set()
    assert [packet.peek(f)[1:] for f in frames] == [(1, 100)]
    assert isinstance(error, ConnectionLost)
    assert "stalled in the middle of a frame: nothing for 0.3 s" in str(error)
    assert time.monotonic() - started < 3


def test_listen_ends_when_a_frame_is_trickled_past_the_stall_timeout():
    source = listen(stall_timeout=0.5)
    trickled = []
    for byte in frame(101, 100)[:60]:              # a byte every 0.1 s: 6 s for 60 bytes
        trickled += [bytes([byte]), 0.1]
    started = time.monotonic()
    push(source.address[1], [frame(1, 100), *trickled])
    frames, error = read_until_error(source)
    assert ranges(frames) == [(1, 100)]
    assert isinstance(error, ConnectionLost)
    assert "feed stalled in the middle of a frame: incomplete after" in str(error)
    assert time.monotonic() - started < 3


def test_listen_eof_between_frames_ends_without_end_of_session():
    source = listen()
    push(source.address[1], [frame(1, 100), frame(101, 100)])
    frames, error = read_until_error(source)
    assert error is None and len(frames) == 2
    assert not source.ended and source.tracker.next_sequence == 201


@pytest.mark.parametrize(("script", "reason"), [
    ([frame(1, 100), frame(101, 100)[:50]], "feed closed the connection in the middle of a frame"),
    ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], "frame type 0x2f where only data frames"),
    ([sessionproto.login_accepted(SESSION, 1)], "frame type 0x41 where only data frames"),
])
def test_listen_refuses_what_is_not_a_whole_feed(script, reason):
    source = listen()
    push(source.address[1], script)
    _, error = read_until_error(source)
    assert isinstance(error, ConnectionLost) and reason in str(error)


def test_listen_port_in_use_names_the_address():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"^cannot listen on 127.0.0.1:{port}: ") as refused:
            ListenSource("127.0.0.1", port).open()
    assert refused.value.errno == errno.EADDRINUSE


def test_close_stops_a_listener_waiting_for_its_feed():
    source = listen()
    threading.Timer(0.2, source.close).start()
    started = time.monotonic()
    assert list(source.batches()) == []
    assert time.monotonic() - started < 2


# ---- feedhandler run --listen ---------------------------------------------------------------------

def run_listening(kafka, topic_prefix, script):
    """`feedhandler run --listen` on a free port, fed `script` (see `push`); (exit code,
    stdout, stderr)."""
    port = free_port()
    handler = run_cli("run", "--listen", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
                      "--topic-prefix", topic_prefix, "--partitions", "1", "--json-stats")
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError):
            # The handler listens before it sets up Kafka; the feed may connect at once.
            push(port, script).join(20)
            break
        assert handler.poll() is None and time.monotonic() < deadline, "never listened"
        time.sleep(0.1)
    stdout, stderr = handler.communicate(timeout=120)
    return handler.returncode, stdout, stderr


@pytest.mark.kafka
def test_run_listen_reports_the_gap_and_the_session_change(kafka, topic_prefix):
    code, stdout, stderr = run_listening(kafka, topic_prefix, GAP_FEED)
    account = final_account(stdout)
    assert (account["gaps"], account["missing"], account["lost"]) == (1, 500, 500), stderr
    assert account["delivered"] == 1000
    assert code == 1
    assert "the feed ended early: session changed from 'TEST000001' to 'OTHER00001'" in stderr
    assert "Traceback" not in stderr


@pytest.mark.kafka
def test_run_listen_ends_with_the_feed_failed_code_when_nothing_was_lost(kafka, topic_prefix):
    """A session change with no gap before it: every tick read is delivered, and the exit
    status still tells the operator that the feed broke off (4), not that all is well."""
    code, stdout, stderr = run_listening(
        kafka, topic_prefix, [frame(1, 500), frame(501, 100, OTHER_SESSION)])
    account = final_account(stdout)
    assert (account["delivered"], account["lost"], account["gaps"]) == (500, 0, 0), stderr
    assert code == ExitCode.FEED_FAILED
    assert "Traceback" not in stderr


@pytest.mark.kafka
def test_run_listen_survives_a_pause_inside_a_frame(kafka, topic_prefix):
    frames = [frame(1, 500), frame(501, 500), sessionproto.end_of_session(SESSION, 1001)]
    code, stdout, stderr = run_listening(kafka, topic_prefix,
                                         [frames[0][:100], 1.5, frames[0][100:], *frames[1:]])
    assert code == 0, stderr
    account = final_account(stdout)
    assert account["delivered"] == 1000 and account["lost"] == 0 and account["gaps"] == 0


@pytest.mark.kafka
def test_run_listen_on_a_port_in_use_is_one_line(kafka):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        handler = run_cli("run", "--listen", f"127.0.0.1:{port}", "--bootstrap-servers", kafka)
        _, stderr = handler.communicate(timeout=60)
    assert handler.returncode == ExitCode.COULD_NOT_START
    assert stderr.strip() == \
        f"feedhandler run: cannot listen on 127.0.0.1:{port}: Address already in use"

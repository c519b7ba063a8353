"""`MoldSource`: the frame source of a MoldUDP64 feed (`feedhandler run --transport moldudp64`).

Downstream packets come as UDP datagrams on one line (a multicast group joined on a chosen
interface, or a unicast address) or two (A/B: the same session on two groups). Each datagram
is checked (header, size, blocks, session, per-line order), wrapped as a frame
(`packet.wrap`) and passed to the one `SequenceTracker`, so every sequence number is taken
from whichever line brings it first and the rest of the pipeline sees the same frames as on
the other transports. What one wake-up of the reader finds on its sockets (until EAGAIN, up to
a cap) is one batch, decoded as one task.

A gap that stays open for `gap_wait` seconds (both lines missed it) is re-requested from the
request server with MoldUDP64 request packets over unicast UDP: at most `max_outstanding`
requests of at most `max_request_count` messages each, again after `request_timeout`, and given
up (counted as missing) after `max_requests` tries, after `give_up_after` seconds, or at once
when the request server is unreachable. The rules are in docs/protocol.md, "MoldUDP64".
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import selectors
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from feedhandler.session.errors import ConnectionLost
from feedhandler.session.protocol import LINK_TIMEOUT, ProtocolError
from feedhandler.session.source import FrameSource
from feedhandler.session.tracker import SequenceTracker
from feedhandler.wire import moldudp, packet

RECEIVE_BUFFER = 32 << 20
# Datagrams one wake-up reads from its sockets before it hands them on as one batch.
MAX_BATCH = 256
GAP_WAIT = 0.1              # seconds a gap may wait for the other line before a re-request
REQUEST_TIMEOUT = 0.25      # seconds before a request with no answer is sent again
MAX_REQUESTS = 5            # tries per gap
GIVE_UP_AFTER = 5.0         # seconds of re-requesting a gap before it is counted as missing
MAX_OUTSTANDING = 4         # requests in flight at once
MAX_REQUEST_COUNT = 1024    # messages asked for by one request
WAKE_UP_INTERVAL = 0.05
LOG_INTERVAL = 5.0          # seconds between log lines about refused datagrams of one reason
FEED_SILENCE = 3.0          # seconds without a datagram (heartbeats come every second): down
# Arrival times of first copies kept for lateness (by first sequence number of the datagram).
LATENESS_WINDOW = 8192
LATENESS_SAMPLES = 100_000


@dataclass
class LineStats:
    """What one line brought: `messages_first` messages delivered first by this line, `late`
    messages that came after another line (or a re-request) had delivered them, with their
    lateness; `gaps` / `gap_messages` jumps in the line's own sequence numbers; `backwards`
    datagrams that went back in the line's own order (passed on: the tracker drops what was
    delivered); `refused` datagrams by reason (never passed on)."""

    name: str
    datagrams: int = 0
    messages: int = 0
    heartbeats: int = 0
    messages_first: int = 0
    late: int = 0
    gaps: int = 0
    gap_messages: int = 0
    backwards: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    # the latest lateness samples (seconds); bounded, a day's A/B feed is late all day
    lateness: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENESS_SAMPLES), repr=False)
    next_sequence: int = 0          # the line's own: after the last message it brought

    def as_dict(self) -> dict:
        figures = {name: getattr(self, name) for name in (
            "datagrams", "messages", "heartbeats", "messages_first", "late", "gaps",
            "gap_messages", "backwards")}
        figures["refused"] = dict(self.refused)
        if self.lateness:
            figures["lateness_ms"] = {
                "p50": round(statistics.median(self.lateness) * 1e3, 3),
                "max": round(max(self.lateness) * 1e3, 3)}
        return figures


class _Line:
    def __init__(self, name: str, sock: socket.socket, address: tuple[str, int]):
        self.stats = LineStats(name)
        self.sock = sock
        self.address = address


def is_multicast(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False


def _receive_buffer(sock: socket.socket, size: int) -> None:
    """SO_RCVBUF as large as allowed: SO_RCVBUFFORCE passes the kernel's rmem_max for root."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def open_line_socket(address: tuple[str, int], interface: str | None,
                     receive_buffer: int = RECEIVE_BUFFER) -> socket.socket:
    """A UDP socket receiving `address`: a multicast group (bound to the group's port and
    joined on `interface`, default any) or a local unicast address."""
    host, port = address
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _receive_buffer(sock, receive_buffer)
        if is_multicast(host):
            # Bound to the group address, the socket gets no other group's datagrams.
            sock.bind((host, port))
            membership = socket.inet_aton(host) + socket.inet_aton(interface or "0.0.0.0")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        else:
            sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def merge_frames(frames: list[bytes]) -> list[bytes]:
    """Frames in sequence order, each run of consecutive ones merged into one frame (as many
    messages as a packet's count holds): one datagram carries a few dozen messages, and the
    pipeline's cost per frame (decode call set-up, publishing) would otherwise dominate. A run
    of one frame is passed on as it is, not copied and checksummed again."""
    if len(frames) < 2:
        return frames
    skip = packet.FRAME_HEADER_SIZE + packet.PACKET_HEADER_SIZE
    merged: list[bytes] = []
    run: list[bytes] = []
    session = first = count = 0

    def close_run():
        if len(run) == 1:
            merged.append(run[0])
        else:
            merged.append(packet.encode_block(b"".join(memoryview(f)[skip:] for f in run),
                                              count, session=session, sequence=first,
                                              codec="none"))

    for frame in frames:
        frame_session, frame_first, frame_count = packet.peek(frame)
        if run and (frame_first != first + count
                    or count + frame_count >= packet.END_OF_SESSION_COUNT):
            close_run()
            run = []
        if not run:
            session, first, count = frame_session, frame_first, 0
        run.append(frame)
        count += frame_count
    close_run()
    return merged


class MoldSource(FrameSource):
    """The frame source of a MoldUDP64 session on one line or two (A/B); see the module text.
    Each datagram is read whole into a buffer of its own.

    lines: ADDRESS:PORT pairs, the A line first; request_server: (host, port) or None (gaps
    are then given up after `gap_wait`). `session` and `sequence` as for the tracker: "" = the
    first datagram fixes the session, 1 = the whole session (re-requested from the start if the
    stream is ahead), 0 = from the first datagram on. `max_datagram`: larger datagrams are
    refused. `stall_timeout`: silence on every line (not even a heartbeat) for this long ends
    the source with ConnectionLost."""

    peer = "MoldUDP64 feed"

    def __init__(self, lines: list[tuple[str, int]], *, interface: str | None = None,
                 request_server: tuple[str, int] | None = None, session: str | bytes = b"",
                 sequence: int = 1, gap_wait: float = GAP_WAIT,
                 request_timeout: float = REQUEST_TIMEOUT, max_requests: int = MAX_REQUESTS,
                 give_up_after: float = GIVE_UP_AFTER, max_outstanding: int = MAX_OUTSTANDING,
                 max_request_count: int = MAX_REQUEST_COUNT,
                 max_datagram: int = moldudp.MAX_UDP_PAYLOAD,
                 stall_timeout: float = LINK_TIMEOUT, receive_buffer: int = RECEIVE_BUFFER,
                 logger: logging.Logger | None = None):
        if not 1 <= len(lines) <= 2:
            raise ValueError("a MoldUDP64 source reads one line or two (A/B)")
        if not moldudp.HEADER_SIZE <= max_datagram <= moldudp.MAX_UDP_PAYLOAD:
            raise ValueError(f"max_datagram must be {moldudp.HEADER_SIZE}.."
                             f"{moldudp.MAX_UDP_PAYLOAD}")
        if not 1 <= max_request_count <= moldudp.MAX_REQUEST_COUNT:
            raise ValueError(f"max_request_count must be 1..{moldudp.MAX_REQUEST_COUNT}")
        if max_requests < 1 or max_outstanding < 1 or gap_wait < 0 or request_timeout <= 0:
            raise ValueError("max_requests and max_outstanding must be >= 1, gap_wait >= 0 and "
                             "request_timeout > 0")
        logger = logger or logging.getLogger(__name__)
        super().__init__(SequenceTracker(session, sequence, name="moldudp64", logger=logger),
                         stall_timeout=stall_timeout, gap_wait=gap_wait, logger=logger)
        self.addresses = list(lines)
        self.interface = interface
        self.request_server = request_server
        self.request_timeout = request_timeout
        self.max_requests = max_requests
        self.give_up_after = give_up_after
        self.max_outstanding = max_outstanding
        self.max_request_count = max_request_count
        self.max_datagram = max_datagram
        self.receive_buffer = receive_buffer
        self.lines: list[_Line] = []
        self.recovery = LineStats("recovery")     # what the request server sent
        self.requests_sent = 0
        self.requested: list[tuple[int, int]] = []  # (first, count) of every request sent
        self.requests_refused = 0                   # the request server was unreachable
        # per stretch of missing messages: seen missing -> filled (the latest ones)
        self.recovery_seconds: collections.deque[float] = collections.deque(
            maxlen=LATENESS_SAMPLES)
        # 2 bytes more than allowed: a datagram that fills it was larger than max_datagram.
        self._buffer = bytearray(max_datagram + 1)
        self._view = memoryview(self._buffer)
        self._selector: selectors.BaseSelector | None = None
        self._requests: socket.socket | None = None
        # first sequence number -> (count, arrival) of the packets taken, the newest last
        self._first_arrival: collections.OrderedDict[int, tuple[int, float]] = \
            collections.OrderedDict()
        self._last_heard = 0.0
        self._horizon = 0               # after the last message any datagram showed exists
        self._lines_ended: set[str] = set()     # lines that sent end of session
        # (first missing message, when) of each stretch found missing, oldest first
        self._missing_since: collections.deque[tuple[int, float]] = collections.deque()
        self._reading_since = 0.0          # batches() started
        self._first_datagram: float | None = None
        self._progress_mark = 0         # the gap's first message when the tries began
        self._progress_at = 0.0
        self._tries = 0                 # request rounds since the gap last moved on
        self._requested_end = 0         # after the last message requested
        self._last_request = 0.0
        self._server_unreachable = False
        self._server_silent = False                         # a gap given up without an answer
        self._answered = False
        self._log_times: dict[str, float] = {}

    # ---- public ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Bind (and join) the line sockets and the request socket; OSError if one cannot be
        made. Idempotent."""
        if self._selector is not None:
            return
        selector = selectors.DefaultSelector()
        try:
            for name, address in zip("AB", self.addresses):
                line = _Line(name, open_line_socket(address, self.interface,
                                                    self.receive_buffer), address)
                self.lines.append(line)
                selector.register(line.sock, selectors.EVENT_READ, line)
            if self.request_server is not None:
                requests = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._requests = requests
                _receive_buffer(requests, self.receive_buffer)
                # Connected: answers come back here, and an ICMP port unreachable becomes
                # ECONNREFUSED instead of silence.
                requests.connect(self.request_server)
                requests.setblocking(False)
                selector.register(requests, selectors.EVENT_READ, None)
        except BaseException:
            selector.close()
            self._close_sockets()
            raise
        self._selector = selector
        self._last_heard = time.monotonic()
        for line in self.lines:
            self.log.info("reading MoldUDP64 line %s on %s:%d%s", line.stats.name,
                          *line.address, f" (joined on {self.interface})"
                          if self.interface and is_multicast(line.address[0]) else "")

    def feed_state(self) -> tuple[bool, str]:
        if self._selector is None:
            return False, "not reading the lines yet"
        if self._first_datagram is None:
            return False, "no datagram received yet"
        # Heartbeats come every second on a healthy line; a few missed ones are a problem.
        silent = time.monotonic() - self._last_heard
        if silent > FEED_SILENCE:
            return False, f"nothing on any line for {silent:.0f} s"
        return True, f"receiving on line{'s A/B' if len(self.lines) > 1 else ' A'}"

    def batches(self, max_frames: int = MAX_BATCH) -> Iterator[list[bytes]]:
        """Frames in sequence order, one list per wake-up (at most `max_frames` datagrams read);
        ends at end of session (with nothing open before it) or at `close()`."""
        self.open()
        self._reading_since = time.monotonic()
        try:
            while not self._closing.is_set() and not self.tracker.ended:
                events = self._selector.select(WAKE_UP_INTERVAL)
                now = time.monotonic()
                batch: list[bytes] = []
                # The wake-up's datagrams shared among the ready sockets, so that no line
                # starves the other.
                share = max(1, max_frames // max(1, len(events)))
                caught_up = True
                for key, _ in events:
                    if self._closing.is_set():
                        break
                    caught_up &= self._drain(key.data, batch, len(batch) + share, now)
                batch += self._recover(now, caught_up)
                self._follow_gap(now)
                if batch:
                    self._last_heard = now
                    yield merge_frames(batch)
                elif events:
                    self._last_heard = now
                elif now - self._last_heard > self.stall_timeout:
                    raise ConnectionLost(f"nothing from the {self.peer} for "
                                         f"{self.stall_timeout:g} s (not even a heartbeat)")
        finally:
            self._close_sockets()

    def stats(self) -> dict:
        """Per-line figures, the request server's part and the refused datagrams, for the
        final account of `feedhandler run`."""
        recovery = self.recovery.as_dict()
        figures = {
            "lines": {line.stats.name: line.stats.as_dict() for line in self.lines},
            "recovery": {"datagrams": recovery["datagrams"],
                         "messages_first": recovery["messages_first"],
                         "requests_sent": self.requests_sent,
                         "requests_refused": self.requests_refused,
                         "gaps_filled": self.tracker.gaps_filled},
        }
        if self._first_datagram is not None:
            # Time the reader waited for the feed to start, e.g. to take it out of a rate.
            figures["waited_for_first_s"] = round(self._first_datagram - self._reading_since, 3)
        if self.recovery_seconds:
            figures["recovery"]["gap_filled_ms"] = {
                "p50": round(statistics.median(self.recovery_seconds) * 1e3, 1),
                "max": round(max(self.recovery_seconds) * 1e3, 1)}
        return figures

    # ---- reading ---------------------------------------------------------------------------------
    def _drain(self, line: _Line | None, batch: list[bytes], cap: int, now: float) -> bool:
        """Read the socket until EAGAIN (then True) or until the batch holds `cap` frames; a
        line's datagrams or (line None) the request server's answers."""
        sock = self._requests if line is None else line.sock
        stats = self.recovery if line is None else line.stats
        view, limit = self._view, self.max_datagram
        while len(batch) < cap:
            try:
                length = sock.recv_into(view)
            except BlockingIOError:
                return True
            except ConnectionRefusedError:
                self._refused_by_server()
                continue
            except OSError:
                if self._closing.is_set():
                    return True
                raise
            if line is None:
                self._answered = True
                self._server_unreachable = self._server_silent = False
            stats.datagrams += 1
            if self._first_datagram is None:
                self._first_datagram = now
            if length > limit:
                self._refuse(stats, "oversized", f"a datagram of more than {limit} bytes")
                continue
            try:
                session, first, count = moldudp.header(view[:length])
                moldudp.check_blocks(view, length, count)
            except moldudp.MoldError as error:
                self._refuse(stats, error.reason, str(error))
                continue
            tracker = self.tracker
            if tracker.session and session != tracker.session:
                tracker.other_session_frames += 1
                self._refuse(stats, "other_session",
                             f"session {session!r}, following {tracker.session!r}")
                continue
            self._take(stats, line is not None, packet.wrap(view[:length]), first, count, batch,
                       now)
        return False

    def _take(self, stats: LineStats, in_order: bool, frame: bytes, first: int, count: int,
              batch: list[bytes], now: float) -> None:
        tracker = self.tracker
        control = count in (packet.HEARTBEAT_COUNT, packet.END_OF_SESSION_COUNT)
        if control:
            stats.heartbeats += count == packet.HEARTBEAT_COUNT
            if in_order and count == packet.END_OF_SESSION_COUNT:
                self._lines_ended.add(stats.name)
        else:
            stats.messages += count
        if in_order and stats.next_sequence:
            if first > stats.next_sequence:
                stats.gaps += 1
                stats.gap_messages += first - stats.next_sequence
            elif first < stats.next_sequence and not control:
                stats.backwards += 1
                self._note(stats.name + " backwards",
                           f"line {stats.name}: sequence went back from {stats.next_sequence} "
                           f"to {first}")
        if in_order:
            stats.next_sequence = max(stats.next_sequence, first + (0 if control else count))
        known = max(self._horizon, tracker.next_sequence)
        if first > known > 0:
            # Messages before `first` are known to exist and have not come: missing since now.
            self._missing_since.append((known, now))
        self._horizon = max(self._horizon, first + (0 if control else count))
        if not control:
            # The same packet from another line (A/B lines carry identical packets): late, and
            # nothing for the tracker to do, whether the first copy was delivered or is held.
            known = self._first_arrival.get(first)
            if known is not None and known[0] == count:
                stats.late += count
                stats.lateness.append(now - known[1])
                tracker.duplicates += count
                return
        duplicates = tracker.duplicates
        try:
            batch += tracker.accept(frame)
        except ProtocolError as error:
            self._refuse(stats, "overflow", str(error))
            return
        if control:
            return
        late = tracker.duplicates - duplicates
        stats.late += late
        if late < count:
            stats.messages_first += count - late
            arrivals = self._first_arrival
            arrivals[first] = (count, now)
            if len(arrivals) > LATENESS_WINDOW:
                arrivals.popitem(last=False)

    def _refuse(self, stats: LineStats, reason: str, detail: str) -> None:
        stats.refused[reason] += 1
        self._note(reason, f"{stats.name}: datagram refused ({reason}): {detail}")

    def _note(self, key: str, message: str) -> None:
        """A warning, at most one per LOG_INTERVAL for each kind of trouble."""
        now = time.monotonic()
        if now - self._log_times.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._log_times[key] = now
            self.log.warning("%s (further ones of this kind are counted, logged at most every "
                             "%g s)", message, LOG_INTERVAL)

    # ---- gaps --------------------------------------------------------------------------------
    def _follow_gap(self, now: float) -> None:
        """Time each stretch of missing messages from when a later one showed it missing to
        when it was filled (recovery_seconds); stretches given up are not timed."""
        tracker = self.tracker
        missing = self._missing_since
        while missing and missing[0][0] < tracker.next_sequence:
            self.recovery_seconds.append(now - missing.popleft()[1])
        if tracker.open_gap is None:
            self._progress_mark, self._tries, self._requested_end = 0, 0, 0

    def _recover(self, now: float, caught_up: bool) -> list[bytes]:
        """Re-request the open gap once it is due, again after request_timeout, and give it up
        by the rules; returns the frames a give-up released.

        While datagrams are still waiting in a socket (the reader is behind: `caught_up` is
        false), what a gap waits for may be among them, even with end of session seen on one
        line: only held frames over the tracker's limit make it act then."""
        tracker = self.tracker
        released: list[bytes] = []
        if not caught_up and tracker.held_bytes <= tracker.max_held_bytes:
            return released
        # End of session on one line of two is not final: the other line may be a little
        # behind and still bring what the gap waits for, so the gap keeps its gap_wait.
        end_is_final = len(self._lines_ended) == len(self.lines)
        while tracker.gap_due(now, self.gap_wait, end_is_final=end_is_final) \
                or self._answers_in():
            if self._requests is None or self._server_unreachable:
                released += self._give_up("no request server" if self._requests is None
                                          else "request server unreachable")
                continue
            first, last = tracker.open_gap
            if first < self._requested_end and now - self._last_request < self.request_timeout:
                break           # the requests in flight cover it: wait for their answers
            if first > self._progress_mark:
                # Answers (or the lines) moved the gap on: the rules count from here.
                self._progress_mark, self._tries, self._progress_at = first, 0, now
            if self._tries >= (1 if self._server_silent else self.max_requests):
                released += self._give_up(f"no progress after {self._tries} requests")
                continue
            if now - self._progress_at > self.give_up_after:
                released += self._give_up(f"no progress for {self.give_up_after:g} s")
                continue
            if self._tries == 0:
                self._answered = False
            self._requested_end = self._request(first, last)
            if self._server_unreachable:
                continue
            self._tries += 1
            tracker.note_rerequest()
            self._last_request = now
            break
        return released

    def _answers_in(self) -> bool:
        """A recovery under way has had every message it asked for (the gap starts at or after
        them): the next stretch is asked for at once, without another gap_wait."""
        gap = self.tracker.open_gap
        return gap is not None and 0 < self._requested_end <= gap[0]

    def _request(self, first: int, last: int) -> int:
        """Up to max_outstanding requests for first..last; returns the sequence number after
        the last one requested."""
        session = self.tracker.session
        end = last + 1
        for _ in range(self.max_outstanding):
            if first >= end:
                break
            count = min(end - first, self.max_request_count)
            try:
                self._requests.send(moldudp.request(session, first, count))
            except ConnectionRefusedError:
                self._refused_by_server()
                break
            except BlockingIOError:
                break
            self.requests_sent += 1
            self.requested.append((first, count))
            first += count
        return first

    def _refused_by_server(self) -> None:
        self.requests_refused += 1
        if not self._server_unreachable:
            self.log.warning("request server %s:%d unreachable (port unreachable): open gaps "
                             "are given up", *self.request_server)
        self._server_unreachable = True

    def _give_up(self, why: str) -> list[bytes]:
        first, last = self.tracker.open_gap
        self.log.warning("moldudp64: giving up messages %d..%d: %s", first, last, why)
        if not self._answered and self._requests is not None:
            # Not one answer to any try: the next gaps get one try each until one comes.
            self._server_silent = True
        self._tries, self._requested_end = 0, 0
        missing = self._missing_since
        while missing and missing[0][0] <= last:
            missing.popleft()
        return self.tracker.give_up()

    def _close_sockets(self) -> None:
        if self._selector is not None:
            self._selector.close()
        for line in self.lines:
            line.sock.close()
        if self._requests is not None:
            self._requests.close()

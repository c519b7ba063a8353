"""MoldUDP64 sequence numbers of one session, followed frame by frame: the one place that
decides what is a gap, a duplicate or a frame of another session, for every frame source."""

from __future__ import annotations

import heapq
import itertools
import logging
import time

from feedhandler.wire import packet
from feedhandler.session.errors import SessionChanged
from feedhandler.session.protocol import ProtocolError, pad, trim_frame

log = logging.getLogger(__name__)

# Bytes of frames held behind an open gap before the gap is due at once (the source then
# re-requests it or gives it up); a source may exceed it by one socket read.
MAX_HELD_BYTES = 64 << 20
# MoldUDP64 sequence numbers are u64, and a login asks for the one after the last delivered.
LAST_SEQUENCE = (1 << 64) - 1


class SequenceTracker:
    """Follows the sequence numbers of the data frames of one session (`packet.peek`, so nothing
    is decompressed unless a frame partly repeats what was delivered).

    session: the session to follow (padded here); "" = the first login or frame fixes it.
    next_sequence: first sequence number wanted; 1 = the whole session, 0 = whatever the
        login or the first frame starts with.
    max_held_bytes: frames held behind an open gap before it is due at once.

    `accept(frame)` per data frame, in arrival order, returns the frames to deliver, always in
    sequence order. A frame that starts after `next_sequence` opens a *gap*: it is held (with
    every later frame) until the gap is filled by a late frame, or given up (`give_up()`: the
    missing messages count in `gaps`, and the held frames are released). Whether to wait,
    re-request or give up is the source's decision: `gap_due()` says when waiting is over.

    State, always up to date: `next_sequence` (first sequence number not yet delivered),
    `session`, `open_gap` ((first, last) not yet received and not given up, or None), `gaps`
    (list of (first, last) given up: missing, inclusive), `missing` (messages in them),
    `gaps_filled` (gaps closed by a late or re-requested frame), `rerequests` (re-requests
    noted), `duplicates` (messages received again and dropped), `frames` and `messages`
    (delivered), `held_bytes`, `other_session_frames` (frames of another session refused) and
    `ended` (end of session seen, with nothing open before it)."""

    def __init__(self, session: str | bytes = b"", next_sequence: int = 1, *,
                 name: str = "feed", logger: logging.Logger | None = None,
                 max_held_bytes: int = MAX_HELD_BYTES):
        if next_sequence < 0:
            raise ValueError("sequence must be 0 (from now on) or a sequence number")
        session = session.encode("ascii") if isinstance(session, str) else bytes(session)
        self.session = pad(session, packet.SESSION_LENGTH, "session") if session else b""
        self.next_sequence = next_sequence
        self.name = name
        self.log = logger or log
        self.max_held_bytes = max_held_bytes
        self.gaps: list[tuple[int, int]] = []
        self.gaps_filled = 0
        self.rerequests = 0
        self.duplicates = 0
        self.frames = 0
        self.messages = 0
        self.other_session_frames = 0
        self.ended = False
        self.held_bytes = 0
        # A held frame that could not be trimmed, found while releasing frames behind it: the
        # next accept() raises it, once the frames released before it have been handed out.
        self._pending_error: ProtocolError | None = None
        # Frames after next_sequence: (first, arrival, end, frame), the earliest first.
        self._held: list[tuple[int, int, int, bytes]] = []
        self._arrivals = itertools.count()
        self._horizon = 0               # the sequence number after the last one known to exist
        self._end_at: int | None = None  # end of session seen behind an open gap
        self._gap_first: int | None = None  # first message of the open gap, while one is open
        self._gap_opened = 0.0
        self._gap_since = 0.0           # when the open gap's wait started (opened, or login)
        self._over_limit = False        # held frames went over max_held_bytes behind the gap
        self._requested_at = 0          # where the open gap's re-requests asked from
        self._requests = 0

    @property
    def missing(self) -> int:
        """Messages in the gaps given up: never delivered, and the feed had no more to give."""
        return sum(last - first + 1 for first, last in self.gaps)

    @property
    def open_gap(self) -> tuple[int, int] | None:
        """(first, last) messages not received yet with later ones known to exist, or None."""
        if self._held:
            stop = self._held[0][0]
        elif self._horizon > self.next_sequence > 0:
            stop = self._horizon
        else:
            return None
        return self.next_sequence, stop - 1

    @property
    def gap_requests(self) -> int:
        """Re-requests noted for the open gap (`note_rerequest`)."""
        return self._requests if self._requested_at == self.next_sequence else 0

    def gap_due(self, now: float, wait: float, *, end_is_final: bool = True) -> bool:
        """True when an open gap has waited `wait` seconds since it opened (or since the last
        login), or cannot wait: held frames over `max_held_bytes`, or end of session behind
        it. `end_is_final` false: the end of session seen may not be the last word (another
        line of an A/B pair may still carry the gap), so it does not cut the wait short."""
        if self._gap_first is None:
            return False
        ended = end_is_final and self._end_at is not None
        return self._over_limit or ended or now - self._gap_since >= wait

    def login(self, session: bytes, next_sequence: int) -> None:
        """A login accepted: the server's session and the first sequence number it will send.
        Raises SessionChanged if the session was fixed and this is another one. An open gap
        waits afresh on the new connection."""
        self._check_session(session, next_sequence)
        requested = self.next_sequence
        if requested == 0:
            self.next_sequence = next_sequence
        elif next_sequence > requested:
            # The server no longer has what was asked for.
            self._gap(requested, next_sequence - 1)
            self.next_sequence = next_sequence
        self._end_at, self._over_limit = None, False
        self._gap_since = time.monotonic()
        self._gap_moved(given_up=next_sequence > requested > 0)

    def note_rerequest(self) -> None:
        """The source asks the server again for the open gap (a fresh login from
        `next_sequence`); `gap_requests` counts these per gap."""
        if self._requested_at == self.next_sequence:
            self._requests += 1
        else:
            self._requested_at, self._requests = self.next_sequence, 1
        self.rerequests += 1
        first, last = self.open_gap
        self.log.info("%s: re-requesting messages %d..%d (request %d)", self.name, first, last,
                      self._requests)

    def accept(self, frame: bytes) -> list[bytes]:
        """The frames to deliver now, in sequence order (often just this one, or none).

        A frame wholly before `next_sequence` is dropped (its messages count as duplicates);
        one that starts before it and ends after is trimmed to the new messages (`trim_frame`);
        one that starts after it is held behind a gap until the gap is filled or given up.
        Heartbeats and end of session carry the next sequence number (a gap if it is ahead) and
        are not delivered; end of session sets `ended` once nothing is open before it. A frame
        of another session raises SessionChanged and is counted in `other_session_frames`; one
        whose messages run past sequence number 2^64 - 1 raises ProtocolError."""
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        session, first, count = packet.peek(frame)
        if session != self.session:
            if self.session:
                self.other_session_frames += 1
            self._check_session(session, first)
        if self.next_sequence == 0:
            self.next_sequence = first
        delivered: list[bytes] = []
        if count == packet.HEARTBEAT_COUNT or count == packet.END_OF_SESSION_COUNT:
            if first > self.next_sequence:
                self._horizon = max(self._horizon, first)
            if count == packet.END_OF_SESSION_COUNT:
                self._end_at = first
            self._gap_moved(given_up=False)
            return delivered
        end = first + count
        if end > LAST_SEQUENCE:
            raise ProtocolError(f"frame at sequence {first} with {count} messages runs past the "
                                f"last sequence number {LAST_SEQUENCE}")
        if first == self.next_sequence and self._gap_first is None:
            # The common case: the next frame, nothing open (so nothing held).
            self.next_sequence = end
            self.frames += 1
            self.messages += count
            return [frame]
        if first > self.next_sequence:
            heapq.heappush(self._held, (first, next(self._arrivals), end, frame))
            self.held_bytes += len(frame)
            self._horizon = max(self._horizon, end)
            if self.held_bytes > self.max_held_bytes:
                self._over_limit = True
        else:
            self._deliver(frame, first, end, delivered)
        self._release(delivered)
        self._gap_moved(given_up=False)
        return delivered

    def give_up(self) -> list[bytes]:
        """Count the open gap as missing and return the held frames it released (which may
        open the next gap)."""
        gap = self.open_gap
        if gap is None:
            return []
        first, last = gap
        self._gap(first, last)
        self.next_sequence = last + 1
        released: list[bytes] = []
        self._release(released)
        self._gap_moved(given_up=True)
        return released

    def give_up_all(self) -> list[bytes]:
        """`give_up()` until no gap is open: every held frame, in sequence order."""
        released: list[bytes] = []
        while self.open_gap is not None:
            released += self.give_up()
        return released

    # ---- internals ----------------------------------------------------------------------------
    def _deliver(self, frame: bytes, first: int, end: int, delivered: list[bytes]) -> None:
        expected = self.next_sequence
        if end <= expected:
            self.duplicates += end - first
            return
        if first < expected:
            frame = trim_frame(frame, expected)
            self.duplicates += expected - first
        self.next_sequence = end
        self.frames += 1
        self.messages += end - max(first, expected)
        delivered.append(frame)

    def _release(self, delivered: list[bytes]) -> None:
        held = self._held
        while held and held[0][0] <= self.next_sequence:
            first, _, end, frame = heapq.heappop(held)
            self.held_bytes -= len(frame)
            try:
                self._deliver(frame, first, end, delivered)
            except ProtocolError as error:     # after the frames already in `delivered`
                self._pending_error = error
                return

    def _gap_moved(self, *, given_up: bool) -> None:
        """After next_sequence or what is known ahead of it changed: open, close or move the
        gap's clock, and end the session once nothing is open before its end."""
        gap = self.open_gap
        first = None if gap is None else gap[0]
        if first != self._gap_first:
            if self._gap_first is not None and not given_up:
                self.gaps_filled += 1
                self.log.info("%s: gap from %d filled after %.3f s", self.name, self._gap_first,
                              time.monotonic() - self._gap_opened)
            if first is not None:
                self.log.warning("%s: gap: messages %d..%d not received, waiting for them",
                                 self.name, *gap)
                self._gap_opened = self._gap_since = time.monotonic()
            self._gap_first = first
        if first is None:
            self._over_limit = False
            if self._end_at is not None and not self.ended:
                self.ended = True
                self.log.info("%s: end of session at sequence %d", self.name, self._end_at)

    def _check_session(self, session: bytes, sequence: int) -> None:
        if not self.session:
            self.session = session
        elif session != self.session:
            raise SessionChanged(self.session, session, sequence)

    def _gap(self, first: int, last: int) -> None:
        self.gaps.append((first, last))
        self.log.warning("%s: gap: messages %d..%d missing", self.name, first, last)

"""MoldUDP64 sequence numbers of one session, followed frame by frame: the one place that
decides what is a gap, a duplicate or a frame of another session, for every frame source."""

from __future__ import annotations

import logging

from feedhandler.wire import packet
from feedhandler.session.errors import SessionChanged
from feedhandler.session.protocol import pad, trim_frame

log = logging.getLogger(__name__)


class SequenceTracker:
    """Follows the sequence numbers of the data frames of one session (`packet.peek`, so nothing
    is decompressed unless a frame partly repeats what was delivered).

    session: the session to follow (padded here); "" = the first login or frame fixes it.
    next_sequence: first sequence number wanted; 1 = the whole session, 0 = whatever the
        login or the first frame starts with.

    `accept(frame)` per data frame, in arrival order. State, always up to date:
    `next_sequence` (first sequence number not yet delivered), `session`, `gaps` (list of
    (first, last) missing sequence numbers, inclusive), `missing` (messages in gaps),
    `duplicates` (messages received again and dropped), `frames` and `messages` (delivered),
    `other_session_frames` (frames of another session refused) and `ended` (end of session
    seen)."""

    def __init__(self, session: str | bytes = b"", next_sequence: int = 1, *,
                 name: str = "feed", logger: logging.Logger | None = None):
        if next_sequence < 0:
            raise ValueError("sequence must be 0 (from now on) or a sequence number")
        session = session.encode("ascii") if isinstance(session, str) else bytes(session)
        self.session = pad(session, packet.SESSION_LENGTH, "session") if session else b""
        self.next_sequence = next_sequence
        self.name = name
        self.log = logger or log
        self.gaps: list[tuple[int, int]] = []
        self.duplicates = 0
        self.frames = 0
        self.messages = 0
        self.other_session_frames = 0
        self.ended = False

    @property
    def missing(self) -> int:
        """Messages in the gaps: never delivered, and the feed has no more to give."""
        return sum(last - first + 1 for first, last in self.gaps)

    def login(self, session: bytes, next_sequence: int) -> None:
        """A login accepted: the server's session and the first sequence number it will send.
        Raises SessionChanged if the session was fixed and this is another one."""
        self._check_session(session, next_sequence)
        requested = self.next_sequence
        if requested == 0:
            self.next_sequence = next_sequence
        elif next_sequence > requested:
            # The server no longer has what was asked for.
            self._gap(requested, next_sequence - 1)
            self.next_sequence = next_sequence

    def accept(self, frame: bytes) -> bytes | None:
        """The frame to deliver, or None. A frame wholly before `next_sequence` is dropped (its
        messages count as duplicates); one that starts before it and ends after is trimmed to
        the new messages (`trim_frame`); one that starts after it records a gap. Heartbeats and
        end of session carry the next sequence number (a gap if it is ahead) and give None; end
        of session sets `ended`. A frame of another session raises SessionChanged and is
        counted in `other_session_frames`."""
        session, first, count = packet.peek(frame)
        if session != self.session:
            if self.session:
                self.other_session_frames += 1
            self._check_session(session, first)
        expected = self.next_sequence
        if expected == 0:
            expected = self.next_sequence = first
        if count == packet.HEARTBEAT_COUNT or count == packet.END_OF_SESSION_COUNT:
            if first > expected:
                self._gap(expected, first - 1)
                self.next_sequence = first
            if count == packet.END_OF_SESSION_COUNT:
                self.ended = True
                self.log.info("%s: end of session at sequence %d", self.name, first)
            return None
        last = first + count
        if first != expected:
            if last <= expected:
                self.duplicates += count
                return None
            if first < expected:
                frame = trim_frame(frame, expected)
                self.duplicates += expected - first
            else:
                self._gap(expected, first - 1)
        self.next_sequence = last
        self.frames += 1
        self.messages += last - max(first, expected)
        return frame

    def _check_session(self, session: bytes, sequence: int) -> None:
        if not self.session:
            self.session = session
        elif session != self.session:
            raise SessionChanged(self.session, session, sequence)

    def _gap(self, first: int, last: int) -> None:
        self.gaps.append((first, last))
        self.log.warning("%s: gap: messages %d..%d missing", self.name, first, last)

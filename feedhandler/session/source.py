"""Frame sources: where the pipeline's frames come from, one class per transport.

`FrameSource` is what the pipeline sees of any transport: `open()`, `batches()` of frames in
sequence order, `close()`, `feed_state()`, and the `SequenceTracker` every data frame passes
through, so gaps, duplicates and session changes mean the same for every transport.

`StreamSource` is what the TCP transports share: they read length-prefixed packets from one
connection at a time into a large buffer with `recv_into` and turn what they read into feed
frames (`_scan`, the one thing each transport's framing decides); it holds the buffer, reads,
stalls, close() and the error kept until a batch is out.

`Lz4FramedSource` reads the feed's own frames (u32 length, then a frame as `packet` writes it):
`SessionClient` (`feedhandler.session.client`) logs in to a feed server and reconnects;
`ListenSource` (`feedhandler.session.listener`) accepts one connection that pushes data frames.
`SoupBinClient` (`feedhandler.session.soupbin`) reads SoupBinTCP 4.1 and gathers its sequenced
data packets into frames. `MoldSource` (`feedhandler.session.moldudp`) reads MoldUDP64
datagrams from one or two lines.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

from feedhandler.session.protocol import (
    LENGTH_PREFIX, LINK_TIMEOUT, MAX_SERVER_FRAME_LENGTH, MIN_DATA_FRAME_LENGTH, SEQUENCED_DATA,
    ProtocolError, check_server_frame,
)
from feedhandler.session.tracker import SequenceTracker

RECEIVE_BUFFER = 4 << 20
# Read into at least this much free space; a frame's unread tail is moved to the front of the
# buffer when less is left.
MIN_READ = 256 << 10
# Frames per list from batches(): enough to spread a hand-off's cost, few enough to keep them
# prompt.
MAX_BATCH = 64
# Seconds an open gap waits for a late frame on the live connection before the source
# re-requests it (SessionClient) or gives it up (ListenSource).
GAP_WAIT = 0.5
# The longest a source blocks in accept() or recv() before it looks at close(), a stalled
# frame and a due gap.
WAKE_UP_INTERVAL = 0.5


class _LinkDown(Exception):
    """The peer closed the current connection; `mid_frame` if it did so inside a frame."""

    def __init__(self, reason: str, mid_frame: bool):
        super().__init__(reason)
        self.mid_frame = mid_frame


class FrameSource:
    """Yields the data frames of one feed session, each exactly one frame as a `bytes` object
    (valid for as long as the caller keeps it, ready for `packet.decode` on any thread).

    `open()` makes the source ready to read (connect and log in, or bind and listen) and raises
    at once what would keep it from reading (LoginRejected, OSError, ConnectionLost); it is
    idempotent, and `batches()` calls it if nobody did. `batches()` yields lists of frames in
    sequence order, each list what one socket read brought in; it ends at end of session (then
    `ended` is true), at `close()`, or when the peer goes away (for sources that do not
    reconnect), and raises a SessionError when the session cannot go on, after yielding every
    frame before the fault. `close()` may be called from any thread and stops `batches()`
    promptly. `tracker` holds the sequence numbers: gaps, missing, duplicates, next_sequence.
    `feed_state()` says whether the feed is up, for health checks from any thread.
    """

    peer = "peer"       # how errors and log lines name the other end

    def __init__(self, tracker: SequenceTracker, *, stall_timeout: float = LINK_TIMEOUT,
                 gap_wait: float = GAP_WAIT, logger: logging.Logger | None = None):
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        if gap_wait < 0:
            raise ValueError("gap_wait must not be negative")
        self.tracker = tracker
        self.stall_timeout = stall_timeout
        self.gap_wait = gap_wait
        self.log = logger or logging.getLogger(type(self).__module__)
        self._closing = threading.Event()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def ended(self) -> bool:
        """End of session seen: the feed has nothing more to send."""
        return self.tracker.ended

    def open(self) -> None:
        raise NotImplementedError

    def batches(self, max_frames: int = MAX_BATCH) -> Iterator[list[bytes]]:
        raise NotImplementedError

    def feed_state(self) -> tuple[bool, str]:
        """(up, why): whether frames can come now (logged in, connected, datagrams arriving)."""
        raise NotImplementedError

    def frames(self) -> Iterator[bytes]:
        """Like `batches()`, one frame at a time."""
        for batch in self.batches(max_frames=1):
            yield batch[0]

    def close(self) -> None:
        """Stop `batches()`; safe to call from another thread, and more than once."""
        self._closing.set()


class StreamSource(FrameSource):
    """A frame source reading a TCP byte stream of length-prefixed packets (see the module)."""

    # The transport's packet prefix: a big-endian length of the bytes after it, then a type byte.
    length_field = LENGTH_PREFIX

    def __init__(self, tracker: SequenceTracker, *, stall_timeout: float = LINK_TIMEOUT,
                 gap_wait: float = GAP_WAIT, receive_buffer: int = RECEIVE_BUFFER,
                 logger: logging.Logger | None = None):
        super().__init__(tracker, stall_timeout=stall_timeout, gap_wait=gap_wait, logger=logger)
        self._wake_up = min(WAKE_UP_INTERVAL, stall_timeout / 4, max(gap_wait, 0.01))
        self._buffer = bytearray(max(receive_buffer, 2 * MIN_READ))
        self._view = memoryview(self._buffer)
        self._start = self._end = 0         # unread bytes: _buffer[_start:_end]
        self._sock: socket.socket | None = None
        self._quiet_since = 0.0             # when the source last heard from the peer
        self._frame_since = 0.0             # when the first unread frame's first byte came
        self._last_read = 0.0
        self._deferred: Exception | None = None

    def feed_state(self) -> tuple[bool, str]:
        if self._sock is not None:
            return True, "feed connected"
        return False, "no feed connection"

    def close(self) -> None:
        super().close()
        sock = self._sock
        if sock is not None:
            try:
                # Wakes the reader thread out of recv().
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- what each transport decides -------------------------------------------------------------
    def _control(self, frame_type: int, frame: bytes) -> bool:
        """A packet the framing let through that is not data; True stops the reading of
        the buffer after it (the frame changed what comes next, e.g. login accepted)."""
        raise ProtocolError(f"unexpected frame type 0x{frame_type:02x}")

    def _accept_data(self, frame: bytes) -> bytes | None:
        return self.tracker.accept(frame)

    def _waited(self, now: float, mid_frame: bool) -> None:
        """After every wait for the socket (data or timeout), once a stalled frame was ruled
        out: the transport's own time-outs."""

    def _gap_due(self) -> list[bytes]:
        """An open gap waited long enough (`tracker.gap_due`): by default it is given up;
        returns the frames that releases."""
        return self.tracker.give_up()

    def _check_stall(self, now: float) -> None:
        """A frame must complete within `stall_timeout` of its first byte: a peer that pauses
        inside a frame, or trickles it a byte at a time, is a dead link (mid_frame)."""
        waited = now - self._frame_since
        if waited <= self.stall_timeout:
            return
        buffered = self._end - self._start
        if now - self._quiet_since > self.stall_timeout:
            reason = f"nothing for {self.stall_timeout:g} s"
        else:
            reason = f"incomplete after {waited:.1f} s ({buffered} bytes"
            size = self.length_field.size
            if buffered >= size:
                reason += f" of {size + self.length_field.unpack_from(self._buffer, self._start)[0]}"
            reason += ")"
        raise _LinkDown(f"{self.peer} stalled in the middle of a frame: {reason}", True)

    def _flush(self, frames: list[bytes], max_frames: int) -> Iterator[list[bytes]]:
        """`frames` as lists of at most `max_frames` (a gap filled or given up may release
        many at once)."""
        for start in range(0, len(frames), max_frames):
            yield frames[start:start + max_frames]

    # ---- reading ---------------------------------------------------------------------------------
    def _attach(self, sock: socket.socket) -> None:
        """Read from a new connection; whatever the last one left unread is dropped."""
        self._sock = sock
        self._start = self._end = 0
        self._quiet_since = self._frame_since = self._last_read = time.monotonic()

    def _receive(self, max_frames: int) -> Iterator[list[bytes]]:
        """Batches of the current connection until end of session or close() (return), or a
        failure (raise, once the frames before it are yielded)."""
        closing = self._closing.is_set
        tracker = self.tracker
        while not closing():
            batch = self._parse(max_frames)
            if batch:
                yield from self._flush(batch, max_frames)
                # Time spent in the consumer (backpressure) is not silence of the peer, nor
                # a frame's slowness.
                self._quiet_since = self._frame_since = time.monotonic()
            if self._deferred is not None:
                error, self._deferred = self._deferred, None
                raise error
            if tracker.gap_due(time.monotonic(), self.gap_wait):
                yield from self._flush(self._gap_due(), max_frames)
                self._quiet_since = self._frame_since = time.monotonic()
                continue
            if tracker.ended:
                return
            if not self._frame_buffered():
                self._fill()

    def _frame_buffered(self) -> bool:
        """A whole packet (prefix, type byte and payload) is in the buffer."""
        start, end = self._start, self._end
        size = self.length_field.size
        return end - start > size and \
            start + size + self.length_field.unpack_from(self._buffer, start)[0] <= end

    def _parse(self, max_frames: int) -> list[bytes]:
        """The data frames to deliver among the complete packets in the buffer (at most
        `max_frames`; up to end of session or a control packet that stops reading). An error
        after some frames were accepted is kept for `_receive` to raise once they are yielded,
        since the tracker already counts them as delivered."""
        batch: list[bytes] = []
        start = self._start
        needed = 0
        try:
            needed = self._scan(batch, max_frames)
        except Exception as error:
            if not batch:
                raise
            self._deferred = error
        finally:
            if self._start != start:
                # The next packet's first byte came with the last read at the earliest.
                self._frame_since = self._last_read
        if needed + MIN_READ > len(self._buffer):
            self._grow(needed + MIN_READ)
        return batch

    def _scan(self, batch: list[bytes], max_frames: int) -> int:
        """The transport's framing: consume whole packets from `_start` (moving it past each
        one, also when it raises), append the data frames to deliver to `batch`; return the size
        of an incomplete packet at the front (0 if none or unknown)."""
        raise NotImplementedError

    def _grow(self, needed: int) -> None:
        """A bigger buffer, for a frame longer than the free space a read needs after it."""
        grown = bytearray(max(needed, 2 * len(self._buffer)))
        start, end = self._start, self._end
        grown[:end - start] = self._view[start:end]
        self._view.release()
        self._buffer, self._view = grown, memoryview(grown)
        self._start, self._end = 0, end - start

    def _fill(self) -> None:
        """One read from the socket (or one socket timeout) into the buffer."""
        buffer, start, end = self._buffer, self._start, self._end
        if start == end:
            start = end = 0
        elif len(buffer) - end < MIN_READ:
            # A copy first: the tail may overlap where it goes.
            buffer[:end - start] = bytes(self._view[start:end])
            start, end = 0, end - start
        self._start, self._end = start, end
        try:
            received = self._sock.recv_into(self._view[end:])
        except TimeoutError:
            received = None
        now = time.monotonic()
        if self._closing.is_set():
            return
        if received == 0:
            mid_frame = end > start
            where = " in the middle of a frame" if mid_frame else ""
            raise _LinkDown(f"{self.peer} closed the connection{where}", mid_frame)
        if received:
            if end == start:
                self._frame_since = now
            self._end = end = end + received
            self._quiet_since = self._last_read = now
        if end > start:
            self._check_stall(now)
        self._waited(now, end > start)


class Lz4FramedSource(StreamSource):
    """A source of the feed's own frames: u32 length, type byte, and for data (type S) a frame
    exactly as `packet.encode_block` writes it."""

    def _check_prefix(self, frame_type: int, length: int) -> None:
        """Refuse a frame from its 5-byte prefix (ProtocolError); called for every frame but a
        data frame of a legal length. By default only data frames are allowed."""
        if frame_type != SEQUENCED_DATA:
            raise ProtocolError(f"frame type 0x{frame_type:02x} where only data frames are "
                                "expected")
        check_server_frame(frame_type, length)

    def _scan(self, batch: list[bytes], max_frames: int) -> int:
        buffer, view = self._buffer, self._view
        start, end = self._start, self._end
        accept = self._accept_data
        unpack_length = self.length_field.unpack_from
        try:
            while end - start >= 5:
                length = unpack_length(buffer, start)[0]
                frame_type = buffer[start + 4]
                if frame_type != SEQUENCED_DATA or not (
                        MIN_DATA_FRAME_LENGTH <= length <= MAX_SERVER_FRAME_LENGTH):
                    self._check_prefix(frame_type, length)
                stop = start + 4 + length
                if stop > end:
                    return stop - start
                frame = bytes(view[start:stop])
                start = stop
                if frame_type != SEQUENCED_DATA:
                    if self._control(frame_type, frame):
                        break
                    continue
                batch += accept(frame)
                if len(batch) >= max_frames or self.tracker.ended:
                    break
        finally:
            self._start = start
        return 0

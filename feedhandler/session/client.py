"""Client end of the feed's TCP session (docs/protocol.md, "Session protocol").

`SessionClient.frames()` connects, logs in and yields every data frame as its own `bytes`
object (valid for as long as the caller keeps it, ready for `packet.decode` on any thread). It
follows sequence numbers from the frames' uncompressed MoldUDP64 headers (`packet.peek`), drops
repeated messages, records gaps, answers the link's heartbeat rules, and after a lost connection
logs in again with backoff, asking for the first sequence number it has not seen.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

from feedhandler.wire import packet
from feedhandler.session.protocol import (
    CLIENT_HEARTBEAT, DEBUG, HEARTBEAT_INTERVAL, LENGTH_PREFIX, LINK_TIMEOUT, LOGIN_ACCEPTED,
    LOGIN_REJECTED, LOGOUT_REQUEST, MAX_SERVER_FRAME_LENGTH, MIN_DATA_FRAME_LENGTH,
    PASSWORD_LENGTH, REJECT_REASONS, SEQUENCED_DATA, USERNAME_LENGTH, ProtocolError,
    check_server_frame, empty_frame, login_request, pad, parse_debug, parse_login_accepted,
    parse_login_rejected, trim_frame,
)

RECEIVE_BUFFER = 4 << 20
# Read into at least this much free space; a frame's unread tail is moved to the front of the
# buffer when less is left.
MIN_READ = 256 << 10
_HEARTBEAT = empty_frame(CLIENT_HEARTBEAT)
_LOGOUT = empty_frame(LOGOUT_REQUEST)


class SessionError(Exception):
    """The session cannot go on."""


class LoginRejected(SessionError):
    """The server refused the login; retrying would not help."""

    def __init__(self, reason: bytes):
        super().__init__(f"login rejected: {REJECT_REASONS.get(reason, repr(reason))}")
        self.reason = reason


class ConnectionLost(SessionError):
    """The link failed and reconnecting is disabled or gave up."""


class _LinkDown(Exception):
    """The current connection ended (EOF, silence, socket error); reconnecting may help."""


def _ascii(value: str | bytes) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else bytes(value)


class SessionClient:
    """One session with a feed server, used from a single reader thread.

    sequence: first sequence number wanted; 1 = the whole session, 0 = from now on.
    max_reconnects: consecutive failed connection attempts before giving up (None: never).
    backoff: (first, longest) wait in seconds between attempts; it doubles per failure and
        resets once a login succeeds.

    Attributes kept up to date while iterating: `next_sequence` (first sequence number not yet
    delivered; 0 until known), `session`, `gaps` (list of (first, last) missing sequence numbers,
    inclusive), `duplicates` (messages received again and dropped), `reconnects` (successful
    logins after the first), `frames_received`, `messages_received`, `ended`.

    `close()` may be called from any thread; it logs out and makes `frames()` stop."""

    def __init__(self, host: str, port: int, *, username: str | bytes, password: str | bytes,
                 session: str | bytes = b"", sequence: int = 1,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, timeout: float = LINK_TIMEOUT,
                 reconnect: bool = True, backoff: tuple[float, float] = (0.1, 5.0),
                 max_reconnects: int | None = None, receive_buffer: int = RECEIVE_BUFFER,
                 logger: logging.Logger | None = None):
        if sequence < 0:
            raise ValueError("sequence must be 0 (from now on) or a sequence number")
        self.address = (host, port)
        # Validated now so that a typo fails here rather than at the first login.
        self._login_fields = (pad(_ascii(username), USERNAME_LENGTH, "username"),
                              pad(_ascii(password), PASSWORD_LENGTH, "password"))
        requested_session = _ascii(session)
        self.session = pad(requested_session, packet.SESSION_LENGTH, "session") \
            if requested_session else b""
        self.next_sequence = sequence
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_reconnects = max_reconnects
        self.log = logger or logging.getLogger(__name__)
        self.gaps: list[tuple[int, int]] = []
        self.duplicates = 0
        self.reconnects = 0
        self.frames_received = 0
        self.messages_received = 0
        self.ended = False
        self._buffer = bytearray(max(receive_buffer, 2 * MIN_READ))
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._last_sent = 0.0
        self._logged_in = False
        self._logins = 0
        self._closing = threading.Event()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- public ----------------------------------------------------------------------------------
    def frames(self) -> Iterator[bytes]:
        """Data frames in sequence order, each exactly one frame. Ends after end of session or
        `close()`; raises LoginRejected, or ConnectionLost once reconnecting is off or gives up."""
        for batch in self.frame_batches(max_frames=1):
            yield batch[0]

    def frame_batches(self, max_frames: int = 64) -> Iterator[list[bytes]]:
        """Like `frames()`, but a list at a time: the complete frames that one read from the
        socket brought in (at most `max_frames`), so a consumer pays per read, not per frame.
        `next_sequence` and the counters already include every frame of a yielded list."""
        failures = 0
        try:
            while not self._closing.is_set():
                try:
                    self._connect()
                    yield from self._receive(max_frames)
                    return
                except (OSError, ProtocolError, _LinkDown) as error:
                    if self._closing.is_set():
                        return
                    self._disconnect(logout=isinstance(error, ProtocolError))
                    failures = 0 if self._logged_in else failures + 1
                    self._logged_in = False
                    self.log.warning("%s:%s: connection lost: %s", *self.address, error)
                    if not self.reconnect:
                        raise ConnectionLost(str(error)) from error
                    if self.max_reconnects is not None and failures > self.max_reconnects:
                        raise ConnectionLost(f"gave up after {failures - 1} reconnect attempts: "
                                             f"{error}") from error
                    first, longest = self.backoff
                    if self._closing.wait(min(longest, first * 2 ** max(failures - 1, 0))):
                        return
        finally:
            self._disconnect(logout=True)

    def close(self):
        """Log out and stop `frames()`; safe to call from another thread, and more than once."""
        self._closing.set()
        sock = self._sock
        if sock is None:
            return
        try:
            if self._logged_in:
                self._send(sock, _LOGOUT)
            # Wakes the reader thread out of recv().
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- connection ------------------------------------------------------------------------------
    def _connect(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock = sock
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, len(self._buffer))
        sock.connect(self.address)
        # recv() wakes up at least this often, to send heartbeats and notice close().
        sock.settimeout(self.heartbeat_interval)
        self._send(sock, login_request(*self._login_fields, self.session, self.next_sequence))

    def _disconnect(self, *, logout: bool):
        sock, self._sock = self._sock, None
        if sock is None:
            return
        # After close() the logout has gone out already.
        if logout and self._logged_in and not self._closing.is_set():
            try:
                self._send(sock, _LOGOUT)
            except OSError:
                pass
        sock.close()

    def _send(self, sock: socket.socket, frame: bytes):
        with self._send_lock:
            sock.sendall(frame)
            self._last_sent = time.monotonic()

    def _login_accepted(self, frame):
        session, next_sequence = parse_login_accepted(frame)
        if self.session and session != self.session:
            raise ProtocolError(f"asked for session {self.session!r}, got {session!r}")
        self.session = session
        self._logged_in = True
        self._logins += 1
        if self._logins > 1:
            self.reconnects += 1
        requested = self.next_sequence
        if requested == 0:
            self.next_sequence = next_sequence
        elif next_sequence > requested:
            # The server no longer has what we asked for.
            self._gap(requested, next_sequence - 1)
            self.next_sequence = next_sequence
        self.log.info("%s:%s: logged in to session %s, next sequence %d (asked for %d)",
                      *self.address, session.decode().strip(), next_sequence, requested)

    def _gap(self, first: int, last: int):
        self.gaps.append((first, last))
        self.log.warning("%s:%s: gap: messages %d..%d missing", *self.address, first, last)

    # ---- receiving -------------------------------------------------------------------------------
    def _receive(self, max_frames: int) -> Iterator[list[bytes]]:
        """Frames of the current connection until end of session (return), close() (return) or a
        failure (raise)."""
        sock = self._sock
        buffer = self._buffer
        view = memoryview(buffer)
        start = end = 0                    # unread bytes: buffer[start:end]
        last_received = time.monotonic()
        unpack_length = LENGTH_PREFIX.unpack_from
        peek = packet.peek
        closing = self._closing.is_set
        batch: list[bytes] = []
        try:
            while True:
                while end - start >= 5 and not closing():
                    length = unpack_length(buffer, start)[0]
                    frame_type = buffer[start + 4]
                    if frame_type != SEQUENCED_DATA or not (
                            MIN_DATA_FRAME_LENGTH <= length <= MAX_SERVER_FRAME_LENGTH):
                        check_server_frame(frame_type, length)
                    stop = start + 4 + length
                    if stop > end:
                        if stop - start + MIN_READ > len(buffer):
                            view.release()
                            buffer = self._grow(buffer, start, end, stop - start)
                            view = memoryview(buffer)
                            start, end = 0, end - start
                        break
                    frame = bytes(view[start:stop])
                    start = stop
                    if frame_type != SEQUENCED_DATA:
                        self._control(frame_type, frame)
                        continue
                    if not self._logged_in:
                        raise ProtocolError("data frame before login accepted")
                    session, first, count = peek(frame)
                    if session != self.session:
                        raise ProtocolError(f"frame of session {session!r} in {self.session!r}")
                    expected = self.next_sequence
                    if count == packet.HEARTBEAT_COUNT or count == packet.END_OF_SESSION_COUNT:
                        # Both carry the server's next sequence number.
                        if first > expected:
                            self._gap(expected, first - 1)
                            self.next_sequence = first
                        if count == packet.END_OF_SESSION_COUNT:
                            if batch:
                                yield batch
                            self.ended = True
                            self.log.info("%s:%s: end of session at sequence %d",
                                          *self.address, first)
                            return
                        continue
                    last = first + count
                    if first != expected:
                        if last <= expected:
                            self.duplicates += count
                            continue
                        if first < expected:
                            frame = trim_frame(frame, expected)
                            self.duplicates += expected - first
                        else:
                            self._gap(expected, first - 1)
                    self.next_sequence = last
                    self.frames_received += 1
                    self.messages_received += last - max(first, expected)
                    batch.append(frame)
                    if len(batch) == max_frames:
                        yield batch
                        batch = []
                if batch:
                    yield batch
                    batch = []
                if start == end:
                    start = end = 0
                elif len(buffer) - end < MIN_READ:
                    tail = bytes(view[start:end])
                    buffer[:len(tail)] = tail
                    start, end = 0, len(tail)
                try:
                    received = sock.recv_into(view[end:])
                except TimeoutError:
                    received = None
                now = time.monotonic()
                if self._closing.is_set():
                    return
                if received == 0:
                    where = " in the middle of a frame" if end > start else ""
                    raise _LinkDown(f"server closed the connection{where}")
                if received:
                    end += received
                    last_received = now
                elif now - last_received > self.timeout:
                    raise _LinkDown(f"nothing from the server for {self.timeout:g} s")
                if self._logged_in and now - self._last_sent >= self.heartbeat_interval:
                    self._send(sock, _HEARTBEAT)
        finally:
            view.release()
            self._buffer = buffer

    def _grow(self, buffer: bytearray, start: int, end: int, needed: int) -> bytearray:
        grown = bytearray(max(needed + MIN_READ, 2 * len(buffer)))
        grown[:end - start] = buffer[start:end]
        return grown

    def _control(self, frame_type: int, frame: bytes):
        if frame_type == LOGIN_ACCEPTED:
            if self._logged_in:
                raise ProtocolError("second login accepted")
            self._login_accepted(frame)
        elif frame_type == LOGIN_REJECTED:
            raise LoginRejected(parse_login_rejected(frame))
        elif frame_type == DEBUG:
            self.log.warning("%s:%s: server says: %s", *self.address, parse_debug(frame))

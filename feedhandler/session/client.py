"""Client end of the feed's TCP session (docs/protocol.md, "Session protocol").

`SessionClient` is the frame source of `--connect`: it connects, logs in and yields every data
frame, following sequence numbers with its `SequenceTracker` (gaps, duplicates, session
changes), answers the link's heartbeat rules, and after a lost connection logs in again with
backoff, asking for the first sequence number it has not delivered.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

from feedhandler.session.errors import ConnectionLost, LoginRejected, SessionError
from feedhandler.session.protocol import (
    CLIENT_HEARTBEAT, DEBUG, HEARTBEAT_INTERVAL, LINK_TIMEOUT, LOGIN_ACCEPTED, LOGIN_REJECTED,
    LOGOUT_REQUEST, PASSWORD_LENGTH, USERNAME_LENGTH, ProtocolError, check_server_frame,
    empty_frame, login_request, pad, parse_debug, parse_login_accepted, parse_login_rejected,
)
from feedhandler.session.source import MAX_BATCH, RECEIVE_BUFFER, FrameSource, _LinkDown
from feedhandler.session.tracker import SequenceTracker

__all__ = ["ConnectionLost", "LoginRejected", "SessionClient", "SessionError"]

_HEARTBEAT = empty_frame(CLIENT_HEARTBEAT)
_LOGOUT = empty_frame(LOGOUT_REQUEST)


def _from_tracker(name: str) -> property:
    return property(lambda self: getattr(self.tracker, name),
                    doc=f"The tracker's `{name}` (read only).")


def _ascii(value: str | bytes) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else bytes(value)


class SessionClient(FrameSource):
    """One session with a feed server, read from a single thread (`FrameSource`).

    sequence: first sequence number wanted; 1 = the whole session, 0 = from now on.
    max_reconnects: consecutive failed connection attempts before giving up (None: never).
    backoff: (first, longest) wait in seconds between attempts; it doubles per failure and
        resets once a login succeeds.

    The session is the one asked for, or else the one the first login accepted; a login or a
    frame of another session ends the source with SessionChanged. Attributes kept up to date
    while iterating, from the tracker: `next_sequence` (first sequence number not yet
    delivered; 0 until known), `session`, `gaps` (list of (first, last) missing sequence
    numbers, inclusive), `duplicates` (messages received again and dropped),
    `frames_received`, `messages_received`, `ended`; and `reconnects` (successful logins after
    the first).

    `close()` may be called from any thread; it logs out and makes `frames()` stop."""

    peer = "server"

    def __init__(self, host: str, port: int, *, username: str | bytes, password: str | bytes,
                 session: str | bytes = b"", sequence: int = 1,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, timeout: float = LINK_TIMEOUT,
                 reconnect: bool = True, backoff: tuple[float, float] = (0.1, 5.0),
                 max_reconnects: int | None = None, receive_buffer: int = RECEIVE_BUFFER,
                 logger: logging.Logger | None = None):
        self.address = (host, port)
        # Validated now so that a typo fails here rather than at the first login.
        self._login_fields = (pad(_ascii(username), USERNAME_LENGTH, "username"),
                              pad(_ascii(password), PASSWORD_LENGTH, "password"))
        logger = logger or logging.getLogger(__name__)
        super().__init__(SequenceTracker(session, sequence, name=f"{host}:{port}", logger=logger),
                         receive_buffer=receive_buffer, logger=logger)
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_reconnects = max_reconnects
        self.reconnects = 0
        self._send_lock = threading.Lock()
        self._last_sent = 0.0
        self._logged_in = False
        self._logins = 0
        self._failures = 0          # consecutive failed attempts

    # The tracker's figures, under the names the client always had.
    session = _from_tracker("session")
    next_sequence = _from_tracker("next_sequence")
    gaps = _from_tracker("gaps")
    duplicates = _from_tracker("duplicates")
    frames_received = _from_tracker("frames")
    messages_received = _from_tracker("messages")

    # ---- public ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and log in, unless logged in already. Failed attempts are retried as a lost
        link is; raises LoginRejected at once, ConnectionLost once reconnecting is off or gives
        up. Returns without a login only if `close()` was called."""
        while not self._logged_in and not self._closing.is_set():
            try:
                self._connect()
                self._await_login()
            except (OSError, ProtocolError, _LinkDown) as error:
                self._link_failed(error)
            except SessionError:        # rejected, or another session: no retry
                self._disconnect(logout=False)
                raise

    def batches(self, max_frames: int = MAX_BATCH) -> Iterator[list[bytes]]:
        """Data frames in sequence order, a list per socket read (at most `max_frames`), so a
        consumer pays per read, not per frame; `next_sequence` and the counters already include
        every frame of a yielded list. Ends after end of session or `close()`; raises
        LoginRejected, SessionChanged, or ConnectionLost once reconnecting is off or gives up."""
        try:
            while True:
                self.open()
                if self._closing.is_set():
                    return
                try:
                    yield from self._receive(max_frames)
                    return
                except (OSError, ProtocolError, _LinkDown) as error:
                    self._link_failed(error)
        finally:
            self._disconnect(logout=True)

    def frame_batches(self, max_frames: int = MAX_BATCH) -> Iterator[list[bytes]]:
        """`batches()` under its older name."""
        return self.batches(max_frames)

    def close(self):
        """Log out and stop `frames()`; safe to call from another thread, and more than once."""
        self._closing.set()
        sock = self._sock
        if sock is not None and self._logged_in:
            try:
                self._send(sock, _LOGOUT)
            except OSError:
                pass
        super().close()

    # ---- connection ------------------------------------------------------------------------------
    def _connect(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._attach(sock)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, len(self._buffer))
        sock.connect(self.address)
        # recv() wakes up at least this often, to send heartbeats and notice close().
        sock.settimeout(self.heartbeat_interval)
        self._send(sock, login_request(*self._login_fields, self.tracker.session,
                                       self.tracker.next_sequence))

    def _await_login(self):
        """Read until login accepted (or close()); what follows it stays in the buffer."""
        while not self._logged_in and not self._closing.is_set():
            self._parse(1)          # stops after login accepted; data before it is refused
            if not self._logged_in and not self._frame_buffered():
                self._fill()

    def _link_failed(self, error: Exception):
        """A failed attempt or a lost link: raise ConnectionLost if reconnecting is off or has
        given up, else wait the backoff (or until close())."""
        if self._closing.is_set():
            return
        self._disconnect(logout=isinstance(error, ProtocolError))
        self._failures = 0 if self._logged_in else self._failures + 1
        self._logged_in = False
        self.log.warning("%s:%s: connection lost: %s", *self.address, error)
        if not self.reconnect:
            raise ConnectionLost(str(error)) from error
        if self.max_reconnects is not None and self._failures > self.max_reconnects:
            raise ConnectionLost(f"gave up after {self._failures - 1} reconnect attempts: "
                                 f"{error}") from error
        first, longest = self.backoff
        self._closing.wait(min(longest, first * 2 ** max(self._failures - 1, 0)))

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
        requested = self.tracker.next_sequence
        self.tracker.login(session, next_sequence)
        self._logged_in = True
        self._logins += 1
        if self._logins > 1:
            self.reconnects += 1
        self.log.info("%s:%s: logged in to session %s, next sequence %d (asked for %d)",
                      *self.address, session.decode().strip(), next_sequence, requested)

    # ---- receiving (FrameSource hooks) -----------------------------------------------------------
    def _check_prefix(self, frame_type: int, length: int):
        check_server_frame(frame_type, length)

    def _control(self, frame_type: int, frame: bytes) -> bool:
        if frame_type == LOGIN_ACCEPTED:
            if self._logged_in:
                raise ProtocolError("second login accepted")
            self._login_accepted(frame)
            return True
        if frame_type == LOGIN_REJECTED:
            raise LoginRejected(parse_login_rejected(frame))
        if frame_type == DEBUG:
            self.log.warning("%s:%s: server says: %s", *self.address, parse_debug(frame))
        return False

    def _accept_data(self, frame: bytes) -> bytes | None:
        if not self._logged_in:
            raise ProtocolError("data frame before login accepted")
        return self.tracker.accept(frame)

    def _waited(self, now: float, mid_frame: bool):
        if now - self._quiet_since > self.timeout:
            raise _LinkDown(f"nothing from the server for {self.timeout:g} s", mid_frame)
        if self._logged_in and now - self._last_sent >= self.heartbeat_interval:
            self._send(self._sock, _HEARTBEAT)

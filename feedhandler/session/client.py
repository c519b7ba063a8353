"""Client end of the feed's TCP session (docs/protocol.md, "Session protocol").

`SessionClient` is the frame source of `--connect`: it connects, logs in and yields every data
frame, following sequence numbers with its `SequenceTracker` (gaps, duplicates, session
changes), answers the link's heartbeat rules from a thread of its own (so that a consumer that
stops pulling does not silence it), re-requests a gap with a fresh login from its first
missing message, and after a lost connection logs in again with backoff, asking for the first
sequence number it has not delivered.
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
from feedhandler.session.source import (GAP_WAIT, MAX_BATCH, RECEIVE_BUFFER, Lz4FramedSource,
                                        _LinkDown)
from feedhandler.session.tracker import SequenceTracker

__all__ = ["ConnectionLost", "LoginRejected", "SessionClient", "SessionError"]

_HEARTBEAT = empty_frame(CLIENT_HEARTBEAT)
_LOGOUT = empty_frame(LOGOUT_REQUEST)
# Re-requests of one gap (fresh logins from its first message) before it is given up.
MAX_GAP_REQUESTS = 3


class _ReRequest(Exception):
    """Log in again from the first missing message: the server skipped some on this link."""


def _from_tracker(name: str) -> property:
    return property(lambda self: getattr(self.tracker, name),
                    doc=f"The tracker's `{name}` (read only).")


def _ascii(value: str | bytes) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else bytes(value)


class SessionClient(Lz4FramedSource):
    """One session with a feed server, read from a single thread (`FrameSource`).

    sequence: first sequence number wanted; 1 = the whole session, 0 = from now on.
    max_reconnects: consecutive failed connection attempts before giving up (None: never).
        A login that is lost again before the session made progress (delivered a message, or
        stayed up for the longest backoff) is a failed attempt too.
    backoff: (first, longest) wait in seconds between attempts; it doubles per failure and
        resets once a session made progress.
    stall_timeout: seconds a frame may take from its first byte to its last (default: the
        link timeout); a frame trickled or paused for longer is a lost link.
    gap_wait, max_gap_requests: a gap (a frame ahead of `next_sequence`) waits `gap_wait`
        seconds for a late frame, then is re-requested with a fresh login from its first
        message, up to `max_gap_requests` times, before it is given up and counts as
        missing. Frames behind an open gap are held, so batches() stays in sequence order.
        Without `reconnect` a gap is given up when due, without asking.

    The session is the one asked for, or else the one the first login accepted; a login or a
    frame of another session ends the source with SessionChanged. Attributes kept up to date
    while iterating, from the tracker: `next_sequence` (first sequence number not yet
    delivered; 0 until known), `session`, `gaps` (list of (first, last) missing sequence
    numbers, inclusive), `duplicates` (messages received again and dropped),
    `frames_received`, `messages_received`, `rerequests` (gap re-requests), `ended`; and
    `reconnects` (logins after a lost link), `logins` (every login, re-requests included).

    `close()` may be called from any thread; it logs out and makes `frames()` stop. Heartbeats
    go out from a thread of the client's own, under the same lock as every other send."""

    peer = "server"
    # What the link sends besides the login (the transport's own packets).
    heartbeat_packet = _HEARTBEAT
    logout_packet = _LOGOUT

    def __init__(self, host: str, port: int, *, username: str | bytes, password: str | bytes,
                 session: str | bytes = b"", sequence: int = 1,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, timeout: float = LINK_TIMEOUT,
                 reconnect: bool = True, backoff: tuple[float, float] = (0.1, 5.0),
                 max_reconnects: int | None = None, stall_timeout: float | None = None,
                 gap_wait: float = GAP_WAIT, max_gap_requests: int = MAX_GAP_REQUESTS,
                 receive_buffer: int = RECEIVE_BUFFER, logger: logging.Logger | None = None):
        self.address = (host, port)
        # Validated now so that a typo fails here rather than at the first login.
        self._login_fields = (pad(_ascii(username), USERNAME_LENGTH, "username"),
                              pad(_ascii(password), PASSWORD_LENGTH, "password"))
        logger = logger or logging.getLogger(__name__)
        super().__init__(SequenceTracker(session, sequence, name=f"{host}:{port}", logger=logger),
                         stall_timeout=timeout if stall_timeout is None else stall_timeout,
                         gap_wait=gap_wait, receive_buffer=receive_buffer, logger=logger)
        if max_reconnects is not None and max_reconnects < 0:
            raise ValueError("max_reconnects must not be negative")
        self._wake_up = min(self._wake_up, heartbeat_interval, timeout / 4)
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_reconnects = max_reconnects
        self.max_gap_requests = max_gap_requests
        self.reconnects = 0
        self.logins = 0
        self._send_lock = threading.Lock()
        self._last_sent = 0.0
        self._logged_in = False
        self._rerequesting = False
        self._failures = 0          # consecutive failed attempts
        self._login_time = 0.0
        self._messages_at_login = 0
        self._heartbeats: threading.Thread | None = None
        self._done = threading.Event()      # batches() has ended: no more heartbeats

    # The tracker's figures, under the names the client always had.
    session = _from_tracker("session")
    next_sequence = _from_tracker("next_sequence")
    gaps = _from_tracker("gaps")
    duplicates = _from_tracker("duplicates")
    frames_received = _from_tracker("frames")
    messages_received = _from_tracker("messages")
    rerequests = _from_tracker("rerequests")

    # ---- public ----------------------------------------------------------------------------------
    def feed_state(self) -> tuple[bool, str]:
        if self._logged_in:
            return True, f"logged in to session {self.tracker.session.decode().strip()}"
        return False, "not logged in (connecting)"

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
        LoginRejected, SessionChanged, or ConnectionLost once reconnecting is off or gives up.
        A source that ends with an open gap does not deliver the frames held behind it: they
        are after `next_sequence`, the point to resume from."""
        try:
            while True:
                self.open()
                if self._closing.is_set():
                    return
                try:
                    yield from self._receive(max_frames)
                    return
                except _ReRequest:
                    self._disconnect(logout=True)
                    self._logged_in = False
                    self._rerequesting = True
                except (OSError, ProtocolError, _LinkDown) as error:
                    self._link_failed(error)
        finally:
            self._done.set()
            self._disconnect(logout=True)

    def frame_batches(self, max_frames: int = MAX_BATCH) -> Iterator[list[bytes]]:
        """`batches()` under its older name."""
        return self.batches(max_frames)

    def close(self):
        """Log out and stop `frames()`; safe to call from another thread, and more than once."""
        self._closing.set()
        self._done.set()
        sock = self._sock
        if sock is not None and self._logged_in:
            try:
                self._send(sock, self.logout_packet)
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
        sock.settimeout(self._wake_up)
        self._send(sock, self._login_request())

    def _login_request(self) -> bytes:
        """The login for the tracker's session and next sequence number."""
        return login_request(*self._login_fields, self.tracker.session,
                             self.tracker.next_sequence)

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
        # Only a session that got somewhere resets the backoff: a server that accepts the
        # login and then sends garbage must not be logged in to as fast as it fails.
        progressed = self._logged_in and (
            self.tracker.messages > self._messages_at_login
            or time.monotonic() - self._login_time >= self.backoff[1])
        # A session that made progress and is lost starts the count again at 1, as the first
        # failed connection attempt does; reconnect attempts are the failures after it.
        self._failures = 1 if progressed else self._failures + 1
        self._logged_in = False
        self._rerequesting = False          # the next login follows a failure
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
                self._send(sock, self.logout_packet)
            except OSError:
                pass
        sock.close()

    def _send(self, sock: socket.socket, frame: bytes):
        with self._send_lock:
            sock.sendall(frame)
            self._last_sent = time.monotonic()

    def _login_accepted(self, session: bytes, next_sequence: int):
        """Login accepted for `session` (padded as the tracker keeps it), next `next_sequence`."""
        requested = self.tracker.next_sequence
        self.tracker.login(session, next_sequence)
        self._logged_in = True
        self._login_time = time.monotonic()
        self._messages_at_login = self.tracker.messages
        self.logins += 1
        if self.logins > 1 and not self._rerequesting:
            self.reconnects += 1
        self._rerequesting = False
        if self._heartbeats is None:
            self._heartbeats = threading.Thread(target=self._send_heartbeats, daemon=True,
                                                name=f"heartbeats {self.tracker.name}")
            self._heartbeats.start()
        self.log.info("%s:%s: logged in to session %s, next sequence %d (asked for %d)",
                      *self.address, session.decode().strip(), next_sequence, requested)

    # ---- receiving (FrameSource hooks) -----------------------------------------------------------
    def _check_prefix(self, frame_type: int, length: int):
        check_server_frame(frame_type, length)

    def _control(self, frame_type: int, frame: bytes) -> bool:
        if frame_type == LOGIN_ACCEPTED:
            if self._logged_in:
                raise ProtocolError("second login accepted")
            self._login_accepted(*parse_login_accepted(frame))
            return True
        if frame_type == LOGIN_REJECTED:
            raise LoginRejected(parse_login_rejected(frame))
        if frame_type == DEBUG:
            self.log.warning("%s:%s: server says: %s", *self.address, parse_debug(frame))
        return False

    def _accept_data(self, frame: bytes) -> list[bytes]:
        if not self._logged_in:
            raise ProtocolError("data frame before login accepted")
        return self.tracker.accept(frame)

    def _waited(self, now: float, mid_frame: bool):
        if now - self._quiet_since > self.timeout:
            raise _LinkDown(f"nothing from the server for {self.timeout:g} s", mid_frame)

    def _gap_due(self) -> list[bytes]:
        tracker = self.tracker
        if self.reconnect and tracker.gap_requests < self.max_gap_requests:
            tracker.note_rerequest()
            raise _ReRequest()
        return tracker.give_up()

    # ---- heartbeats ------------------------------------------------------------------------------
    def _send_heartbeats(self):
        """A heartbeat whenever nothing was sent for `heartbeat_interval`, from login until
        batches() ends or close(), whether or not the consumer is pulling frames. A failed send
        is left to the reader, which notices the dead link."""
        interval = self.heartbeat_interval
        while not self._done.wait(interval / 4):
            sock = self._sock
            if sock is None or not self._logged_in:
                continue
            if time.monotonic() - self._last_sent >= interval:
                try:
                    self._send(sock, self.heartbeat_packet)
                except OSError:
                    pass

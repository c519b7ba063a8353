"""Why a frame source stopped: the errors every source raises (`feedhandler.session.source`)."""

from __future__ import annotations

from feedhandler.session.protocol import REJECT_REASONS


class SessionError(Exception):
    """The session cannot go on."""


class LoginRejected(SessionError):
    """The server refused the login; retrying would not help."""

    def __init__(self, reason: bytes):
        super().__init__(f"login rejected: {REJECT_REASONS.get(reason, repr(reason))}")
        self.reason = reason


class ConnectionLost(SessionError):
    """The link failed (EOF or silence inside a frame, a protocol violation, a socket error) and
    the source cannot or may no longer reconnect."""


class SessionChanged(SessionError):
    """A login or a frame of another session than the one the source follows. Sequence numbers
    of two sessions cannot be compared, so the source ends there, after every frame before it."""

    def __init__(self, expected: bytes, got: bytes, sequence: int):
        super().__init__(f"session changed from {_name(expected)!r} to {_name(got)!r} "
                         f"(at its sequence number {sequence})")
        self.expected = expected
        self.got = got
        self.sequence = sequence


def _name(session: bytes) -> str:
    return session.decode("ascii", "replace").rstrip(" ")

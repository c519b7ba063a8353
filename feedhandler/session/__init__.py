"""The feed's TCP session: the protocol's frames (`protocol`) and its client (`client`)."""

from feedhandler.session.client import ConnectionLost, LoginRejected, SessionClient, SessionError

__all__ = ["ConnectionLost", "LoginRejected", "SessionClient", "SessionError"]

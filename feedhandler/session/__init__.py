"""The feed's TCP session: the protocol's frames (`protocol`), the sequence tracker every frame
source shares (`tracker`), and the frame sources (`source`): the session client of `--connect`
(`client`) and the listener of `--listen` (`listener`)."""

from feedhandler.session.client import SessionClient
from feedhandler.session.errors import ConnectionLost, LoginRejected, SessionChanged, SessionError
from feedhandler.session.listener import ListenSource
from feedhandler.session.source import FrameSource, Lz4FramedSource
from feedhandler.session.tracker import SequenceTracker

__all__ = ["ConnectionLost", "FrameSource", "ListenSource", "Lz4FramedSource", "LoginRejected", "SequenceTracker",
           "SessionChanged", "SessionClient", "SessionError"]

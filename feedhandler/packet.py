"""Public import path of `feedhandler.wire.packet` (kept for users' code)."""

from feedhandler.wire.packet import *  # noqa: F401,F403

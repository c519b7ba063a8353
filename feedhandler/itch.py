"""Public import path of `feedhandler.wire.itch` (kept for users' code)."""

from feedhandler.wire.itch import *  # noqa: F401,F403

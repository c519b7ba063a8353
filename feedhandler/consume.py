"""Public import path of `feedhandler.kafka.consume` (kept for users' code)."""

from feedhandler.kafka.consume import *  # noqa: F401,F403

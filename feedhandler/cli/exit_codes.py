"""Exit codes of `feedhandler run`, defined once: the `--help` epilog is made from MEANING, and
the README's list is checked against it by the tests."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    TICKS_LOST = 1
    USAGE = 2
    COULD_NOT_START = 3
    FEED_FAILED = 4
    INTERRUPTED = 130


MEANING = {
    ExitCode.OK: "every tick accepted from the feed was acknowledged by Kafka and the feed had "
                 "no unfilled gap",
    ExitCode.TICKS_LOST: "ticks were lost: failed, never acknowledged, or missing from the feed",
    ExitCode.USAGE: "bad arguments or configuration (an -X setting, a route, a topic name, a "
                    "count, --format arrow without pyarrow installed); nothing was created",
    ExitCode.COULD_NOT_START: "could not start: Kafka unreachable, refusing the credentials, "
                              "the certificate or the topics, the feed refusing the login or "
                              "not answering within --login-timeout, the --listen port in use, "
                              "--producer-link require unavailable, or --realtime-priority not "
                              "permitted; no topic was created",
    ExitCode.FEED_FAILED: "the feed ended before its end of session and could not be resumed "
                          "(link lost for good, session changed, a frame that never "
                          "completed); every tick read was delivered (see the account)",
    ExitCode.INTERRUPTED: "SIGINT or SIGTERM before the feed was read (a stop while reading "
                          "drains, flushes and exits 0 or 1)",
}


def epilog() -> str:
    """The exit statuses, for `feedhandler run --help`."""
    return "exit status:\n" + "\n".join(
        textwrap.fill(MEANING[code], 79, initial_indent=f"  {code.value:<4} ",
                      subsequent_indent=" " * 7) for code in ExitCode)

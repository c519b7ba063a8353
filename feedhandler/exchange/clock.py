"""The exchange's clock. ITCH times are nanoseconds since midnight in New York; a live
(paced, synthetic) session is stamped with the time of day at which each packet goes out, as
a real feed is, rather than with the synthetic day's clock that starts at 09:30 whenever the
session starts."""

from __future__ import annotations

import datetime
import time
from zoneinfo import ZoneInfo

import numpy as np

from feedhandler.exchange.orderflow import MessageBlock
from feedhandler.exchange.replay import with_timestamps
from feedhandler.wire.itch import NANOSECONDS_PER_DAY

EXCHANGE_TIMEZONE = ZoneInfo("America/New_York")
NANOSECONDS_PER_SECOND = 1_000_000_000


def time_of_day_ns(epoch_ns: int) -> int:
    """Nanoseconds since midnight in New York at `epoch_ns` (ITCH's timestamp)."""
    moment = datetime.datetime.fromtimestamp(epoch_ns // NANOSECONDS_PER_SECOND,
                                             EXCHANGE_TIMEZONE)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return epoch_ns - int(midnight.timestamp()) * NANOSECONDS_PER_SECOND


class LiveClock:
    """Stamps paced packets with the New York time of day they are due at.

    `origin_ns` is the time of day when the clock is made (the simulator's start); a packet due
    `due` seconds later carries origin + due on each of its messages. The day's last
    nanosecond is as far as it goes (ITCH times never reach midnight)."""

    def __init__(self, epoch_ns: int | None = None):
        self.origin_ns = time_of_day_ns(time.time_ns() if epoch_ns is None else epoch_ns)

    def stamp(self, block: MessageBlock, boundaries: np.ndarray, due: np.ndarray) -> MessageBlock:
        """`block` cut into packets at `boundaries`, packet i due at due[i] seconds: the block
        with each message stamped with its packet's time of day."""
        per_message = np.repeat(np.asarray(due, np.float64), np.diff(boundaries))
        stamps = self.origin_ns + np.round(per_message * NANOSECONDS_PER_SECOND).astype(np.int64)
        return with_timestamps(block, np.minimum(stamps, NANOSECONDS_PER_DAY - 1))

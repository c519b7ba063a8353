"""Record timestamps the broker accepts.

With `--headers` a per-tick record carries the ITCH time as its timestamp (midnight New York of
the trade date plus the message's nanoseconds since midnight). A broker refuses a record whose
timestamp is more than `log.message.timestamp.after.max.ms` ahead of its clock (1 hour by
default in Kafka 4), and the refusal fails the whole batch it travels in, valid records
included; a wrong `--trade-date`, a replay of another day or a synthetic clock produce exactly
that. A record far behind is accepted by default (`log.message.timestamp.before.max.ms` is
unbounded), though a segment whose newest timestamp is older than the topic's retention is
deleted at the next retention check; a deployment that bounds either sets `max_behind_ms`.

`TimestampWindow` keeps record timestamps where the broker keeps the records: an ITCH-derived
timestamp outside [wall clock - max_behind_ms, wall clock + max_ahead_ms] is replaced by 0, which
librdkafka stamps with the produce time, and the replacement is counted (`fallbacks`).

Two delivery paths use it:
- the Producer API path (`ProducerTickSink` with headers): `apply(records)` per batch of record
  dicts, before they are produced;
- the ProducerLink path, whose timestamps are computed in C: `window_ms()` gives the bounds as
  two int64 epoch milliseconds (min, max) for the batch about to be produced; the C code uses 0
  for a timestamp outside them and reports how many it replaced through `count(n)`.
"""

from __future__ import annotations

import datetime
import logging
import time

log = logging.getLogger(__name__)

# Kafka 4's default log.message.timestamp.after.max.ms is one hour; the window stops short of
# it by a margin for clock differences between this host and the brokers, and for the time a
# record may wait in the producer (which only brings it closer to the broker's clock).
BROKER_AFTER_MAX_MS = 3_600_000
CLOCK_MARGIN_MS = 300_000
DEFAULT_MAX_AHEAD_MS = BROKER_AFTER_MAX_MS - CLOCK_MARGIN_MS
PRODUCE_TIME = 0        # a record timestamp of 0: librdkafka uses the time of produce()
EARLIEST_MS = PRODUCE_TIME + 1      # the lower bound when nothing behind is refused


class TimestampWindow:
    """The range of record timestamps sent as they are; outside it, produce time, counted."""

    def __init__(self, max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS,
                 max_behind_ms: int | None = None, clock=time.time):
        """`max_behind_ms` None: no bound behind (as a broker's default)."""
        if max_ahead_ms < 0 or (max_behind_ms is not None and max_behind_ms < 0):
            raise ValueError("the timestamp window's bounds must not be negative")
        self.max_ahead_ms = max_ahead_ms
        self.max_behind_ms = max_behind_ms
        self.fallbacks = 0          # records sent with the produce time instead of the ITCH time
        self._clock = clock

    def window_ms(self) -> tuple[int, int]:
        """(min, max) epoch milliseconds a record timestamp may have now, both included."""
        now_ms = int(self._clock() * 1000)
        low = EARLIEST_MS if self.max_behind_ms is None else now_ms - self.max_behind_ms
        return low, now_ms + self.max_ahead_ms

    def count(self, fallbacks: int) -> None:
        """Account for `fallbacks` records that were sent with the produce time (the C path
        reports its own through here)."""
        if fallbacks and not self.fallbacks:
            low, high = self.window_ms()
            log.warning("ITCH times outside %s .. %s (this host's clock %s): such records "
                        "carry the produce time instead (counted as timestamp fallbacks); "
                        "check --trade-date", _utc(low), _utc(high),
                        _utc(int(self._clock() * 1000)))
        self.fallbacks += fallbacks

    def apply(self, records: list[dict]) -> None:
        """Replace each record dict's "timestamp" outside the window by the produce time."""
        low, high = self.window_ms()
        replaced = 0
        for record in records:
            if not low <= record["timestamp"] <= high:
                record["timestamp"] = PRODUCE_TIME
                replaced += 1
        self.count(replaced)


def _utc(epoch_ms: int) -> str:
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.timezone.utc).isoformat(
        timespec="seconds")

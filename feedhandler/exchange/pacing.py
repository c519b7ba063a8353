"""When the simulator's packets are cut and published: as fast as possible, at a message rate
(optionally in bursts), or by a replayed file's ITCH timestamps."""

from __future__ import annotations

import numpy as np

from feedhandler.exchange import replay
from feedhandler.exchange.orderflow import MessageBlock

PACING_TICK = 0.001           # paced packets hold what falls due within about a millisecond
MEAN_BURST = 0.02             # seconds; mean length of a burst with --burst > 1


class Pacing:
    """As fast as possible: packets of `messages_per_packet`, published at once."""

    paced = False

    def __init__(self, messages_per_packet: int):
        self.messages_per_packet = messages_per_packet

    def cut(self, block: MessageBlock) -> tuple[np.ndarray, np.ndarray | None]:
        """(packet boundaries as message indices, from 0 to block.count; due time per packet)."""
        return _fixed_size_boundaries(block.count, self.messages_per_packet), None


def _fixed_size_boundaries(count: int, size: int) -> np.ndarray:
    """0, size, 2 * size, ..., count."""
    return np.unique(np.append(np.arange(0, count, size), count))


class RatePacing(Pacing):
    """`rate` messages a second on average. With burst B > 1 messages come in bursts at B times
    the rate (random lengths, MEAN_BURST on average), each followed by a silence B - 1 times as
    long. Packets hold about a tick's worth of messages at the average rate."""

    paced = True

    def __init__(self, messages_per_packet: int, rate: float, burst: float, seed: int):
        super().__init__(max(1, min(messages_per_packet, round(rate * PACING_TICK))))
        self.rate, self.burst = rate, burst
        self._rng = np.random.default_rng(seed)
        self._messages = 0                      # messages cut so far
        # Bursts not yet used up: messages sent before each begins, and when it starts (s).
        # The last one's length is not drawn yet.
        self._burst_first = np.zeros(1)
        self._burst_start = np.zeros(1)

    def cut(self, block):
        boundaries, _ = super().cut(block)
        # A packet is due once its last message is.
        sent = self._messages + boundaries[1:].astype(float)
        self._messages += block.count
        if self.burst == 1:
            return boundaries, sent / self.rate
        return boundaries, self._burst_times(sent)

    def _burst_times(self, sent: np.ndarray) -> np.ndarray:
        peak = self.rate * self.burst
        while self._burst_first[-1] < sent[-1]:
            # A burst of length l carries l * peak messages and is followed by a silence of
            # l * (B - 1): the next burst starts l * B later.
            lengths = self._rng.exponential(MEAN_BURST, 1024)
            self._burst_first = np.append(self._burst_first,
                                          self._burst_first[-1] + np.cumsum(lengths * peak))
            self._burst_start = np.append(self._burst_start,
                                          self._burst_start[-1] + np.cumsum(lengths * self.burst))
        # The burst in which the sent-th message goes out (at a boundary, the earlier one).
        which = np.maximum(np.searchsorted(self._burst_first, sent, "left") - 1, 0)
        times = self._burst_start[which] + (sent - self._burst_first[which]) / peak
        self._burst_first = self._burst_first[which[-1]:]
        self._burst_start = self._burst_start[which[-1]:]
        return times


class TimestampPacing(Pacing):
    """Replay paced by the ITCH timestamps, `speed` times real time. A packet closes at
    `messages_per_packet` messages or when the timestamps move on to the next tick."""

    paced = True

    def __init__(self, messages_per_packet: int, speed: float):
        super().__init__(messages_per_packet)
        self.speed = speed
        self._origin: int | None = None         # timestamp of the first message

    def cut(self, block):
        stamps = replay.message_timestamps(block)
        if self._origin is None:
            self._origin = int(stamps[0])
        tick = np.uint64(max(1, round(PACING_TICK * self.speed * 1e9)))
        # Timestamps are non-decreasing in a valid file; any that go back are due at once.
        since = np.where(stamps > self._origin, stamps - np.uint64(self._origin), np.uint64(0))
        ticks = since // tick
        new_tick = np.flatnonzero(np.diff(ticks)) + 1
        run_start = np.zeros(block.count, np.int64)
        run_start[new_tick] = new_tick
        np.maximum.accumulate(run_start, out=run_start)
        in_run = np.arange(block.count) - run_start
        starts = np.flatnonzero(in_run % self.messages_per_packet == 0)
        boundaries = np.append(starts, block.count)
        return boundaries, since[boundaries[1:] - 1] / 1e9 / self.speed

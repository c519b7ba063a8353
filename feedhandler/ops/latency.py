"""Fixed-memory latency histograms (HDR-style, log-linear buckets) for the pipeline's stages.

A value in nanoseconds falls into a bucket found from its bit length and its top SUB_BITS bits:
below 2**SUB_BITS every nanosecond has a bucket of its own; above, each power of two is cut into
2**(SUB_BITS - 1) equal buckets, so a bucket is never wider than 1/2**(SUB_BITS - 1) of the
values in it (0.8 %: two to three significant digits) from 1 ns up to HIGHEST_NS (longer values
count in the last bucket; `max` stays exact). Recording is a few integer operations and one
array increment: no allocation, no lock. A histogram is recorded on one thread only (the
pipeline records every stage on its publisher thread); other threads may read it at any time
and see counts at most a few samples behind.

`StageLatencies` holds one histogram per stage of a frame's way through the handler, from its
socket read's arrival (see STAGES)."""

from __future__ import annotations

from array import array

import numpy as np

SUB_BITS = 8
HIGHEST_NS = 100 * 10**9        # 100 s
_HALF = 1 << (SUB_BITS - 1)
_DIRECT = 1 << SUB_BITS          # values below this have a bucket each


def bucket_of(value_ns: int) -> int:
    """The bucket index of a value in nanoseconds (negative values count as 0)."""
    if value_ns < _DIRECT:
        return value_ns if value_ns > 0 else 0
    shift = value_ns.bit_length() - SUB_BITS
    return _DIRECT + (shift - 1) * _HALF + (value_ns >> shift) - _HALF


BUCKETS = bucket_of(HIGHEST_NS) + 1


def bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) value in nanoseconds of every bucket."""
    index = np.arange(BUCKETS, dtype=np.int64)
    above = np.maximum(index - _DIRECT, 0)
    shift = np.where(index < _DIRECT, 0, above // _HALF + 1)
    top = np.where(index < _DIRECT, index, above % _HALF + _HALF)
    return top << shift, ((top + 1) << shift) - 1


_LOWEST, _HIGHEST = bucket_bounds()
# What a bucket's samples are reported as: its midpoint, within half a bucket of any of them.
_MIDPOINTS = (_LOWEST + _HIGHEST) / 2


class LatencyHistogram:
    """Counts of latencies in nanoseconds by log-linear bucket, their sum, and the exact max."""

    __slots__ = ("counts", "total", "sum_ns", "max_ns")

    def __init__(self):
        self.counts = array("q", bytes(8 * BUCKETS))
        self.total = 0
        self.sum_ns = 0
        self.max_ns = 0

    def record(self, value_ns: int) -> None:
        if value_ns < 0:
            value_ns = 0
        self.counts[bucket_of(value_ns) if value_ns <= HIGHEST_NS else BUCKETS - 1] += 1
        self.total += 1
        self.sum_ns += value_ns
        if value_ns > self.max_ns:
            self.max_ns = value_ns

    def merge(self, other: LatencyHistogram) -> None:
        """Add `other`'s samples to this histogram."""
        merged = self.snapshot() + other.snapshot()
        self.counts = array("q", merged.tobytes())
        self.total += other.total
        self.sum_ns += other.sum_ns
        self.max_ns = max(self.max_ns, other.max_ns)

    def snapshot(self) -> np.ndarray:
        """A copy of the bucket counts (safe while the recording thread goes on)."""
        return np.frombuffer(bytes(self.counts), dtype=np.int64).copy()

    def percentiles_ns(self, percents) -> list[float]:
        """The values below which `percents` of the samples fall, each within half a bucket
        (0.4 %) of the sample at that rank; the 100th is the exact max."""
        counts = self.snapshot()
        total = int(counts.sum())
        if not total:
            return [0.0 for _ in percents]
        cumulative = np.cumsum(counts)
        values = []
        for percent in percents:
            if percent >= 100:
                values.append(float(self.max_ns))
                continue
            # the rank numpy's default ("linear") percentile starts from, 1-based
            rank = int(np.floor(percent / 100 * (total - 1))) + 1
            bucket = int(np.searchsorted(cumulative, rank))
            values.append(min(float(_MIDPOINTS[bucket]), float(self.max_ns)))
        return values

    def counts_at_most(self, bounds_ns) -> list[int]:
        """Cumulative counts of samples at most each of `bounds_ns` (ascending), to a bucket:
        a bucket counts below a bound when its midpoint is (for Prometheus' `le` buckets)."""
        cumulative = np.cumsum(self.snapshot())
        where = np.searchsorted(_MIDPOINTS, np.asarray(bounds_ns, dtype=float), side="right")
        return [int(cumulative[i - 1]) if i else 0 for i in where]

    def summary_ms(self) -> dict[str, float]:
        """p50, p99, p99.9 and max in milliseconds, and the sample count; {} without samples."""
        if not self.total:
            return {}
        p50, p99, p999, top = self.percentiles_ns([50, 99, 99.9, 100])
        return {"p50": round(p50 / 1e6, 3), "p99": round(p99 / 1e6, 3),
                "p99.9": round(p999 / 1e6, 3), "max": round(top / 1e6, 3),
                "frames": self.total}


# The stages of a frame, all measured from its socket read's arrival except "kafka":
STAGES = {
    "decoded": "socket read's arrival until its frames were decoded (decode queue and decode)",
    "produced": "arrival until the frame's records were handed to the producer (the "
                "handler's own part)",
    "kafka": "handed to the producer until Kafka acknowledged every record up to the frame",
    "acknowledged": "arrival until Kafka acknowledged every record up to the frame",
}


class StageLatencies:
    """One LatencyHistogram per stage (STAGES), by name."""

    def __init__(self):
        self.stages = {stage: LatencyHistogram() for stage in STAGES}
        self.decoded = self.stages["decoded"]
        self.produced = self.stages["produced"]
        self.kafka = self.stages["kafka"]
        self.acknowledged = self.stages["acknowledged"]

    def summary_ms(self) -> dict[str, dict[str, float]]:
        """p50/p99/p99.9/max (ms) and frames per stage that has samples."""
        return {stage: figures for stage, histogram in self.stages.items()
                if (figures := histogram.summary_ms())}


def format_table(summary: dict[str, dict[str, float]], indent: str = "  ") -> list[str]:
    """Lines of a latency table from `StageLatencies.summary_ms()`."""
    if not summary:
        return []
    lines = [f"{indent}{'latency (ms)':<20} {'p50':>9} {'p99':>9} {'p99.9':>9} {'max':>9}"
             f" {'frames':>9}"]
    for stage, figures in summary.items():
        lines.append(f"{indent}  {stage:<18} " + " ".join(
            f"{figures[key]:>9.3f}" for key in ("p50", "p99", "p99.9", "max"))
            + f" {figures['frames']:>9}")
    return lines

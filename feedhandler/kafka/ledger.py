"""The delivery ledger: every count of what the sink handed to Kafka and what became of it.

Successes are not reported one by one (no Python call per delivered record): librdkafka sends
error-only delivery reports for records produced through the Producer, and the ProducerLink
counts its own records in C. So delivered = produced - failed - still queued. Frames are
acknowledged in the order they were produced: exactly, per partition, by the ProducerLink where
there is one (see Acknowledgements)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque

from feedhandler.kafka._producer_link import ProducerLink
from feedhandler.ops.latency import StageLatencies

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL = 5.0      # seconds between log lines about one failure reason


class DeliveryErrors:
    """Counts failed deliveries by reason: librdkafka's error-only delivery reports for records
    produced through the Producer (this object is their `on_delivery` callback), records refused
    before they were queued, plus the ProducerLink's own count for per-tick records.

    A failure is logged when its reason first appears and then at most every
    FAILURE_LOG_INTERVAL seconds with the count so far, so an outage is visible as it happens
    without one log line per record."""

    def __init__(self, units_of=lambda message: 1):
        self._units_of = units_of
        self._lock = threading.Lock()
        self._records = 0
        self._units = 0
        self._reasons: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self.link: ProducerLink | None = None

    def __call__(self, error, message):
        if error is not None:
            self.count(error.str(), self._units_of(message), message.topic())

    def count(self, reason: str, units: int = 1, topic: str = "") -> None:
        """One failed record carrying `units` ticks."""
        with self._lock:
            self._records += 1
            self._units += units
            self._reasons[reason] += 1
            total = self._reasons[reason]
            now = time.monotonic()
            due = now - self._logged_at.get(reason, -FAILURE_LOG_INTERVAL) >= FAILURE_LOG_INTERVAL
            if due:
                self._logged_at[reason] = now
        if due:
            log.error("delivery failed (%d so far for this reason, latest on %s): %s", total,
                      topic or "?", reason)

    @property
    def records(self) -> int:
        """Failed records."""
        return self._records + (self.link.failed if self.link else 0)

    @property
    def units(self) -> int:
        """Ticks in the failed records (a batched record holds many)."""
        return self._units + (self.link.failed if self.link else 0)

    @property
    def reasons(self) -> Counter[str]:
        return self._reasons + Counter(self.link.failures() if self.link else {})


class Acknowledgements:
    """Which frames Kafka has fully acknowledged, without a Python call per delivered record.

    A frame counts as acknowledged once every record of it and of every frame before it is
    acknowledged (or failed, and counted). `next_sequence` is the sequence number after the
    newest acknowledged frame: every tick before it is in Kafka or counted failed, which is what
    a checkpoint may claim.

    - With a ProducerLink (`link`), exactly: the link tracks each frame's records per
      partition in C and stamps the time each frame settles (ProducerLink.close_frame,
      take_settled).
    - Without one, by totals: records acknowledged = produced - failed - still queued, and a
      frame counts once that figure reaches the running total at its end. Partitions are
      acknowledged independently, so this can count a frame while one of its records is in
      flight and a later frame's record was acknowledged first (the path without a link is
      the fallback for librdkafka versions the link was not tested with: docs/kafka.md).

    Both calls come from the sink's one thread, which records the frames' "produced", "kafka"
    and "acknowledged" stages into `latencies` (feedhandler.ops.latency)."""

    def __init__(self, latencies: StageLatencies | None = None):
        # (records produced through this frame, ticks, receipt ns or None, handed-over ns,
        # next sequence)
        self.frames: deque = deque()
        self.ticks = 0
        self.next_sequence = 0
        self.latencies = latencies if latencies is not None else StageLatencies()
        self.link: ProducerLink | None = None     # set by a sink that has one
        self.checks = 0     # calls of update(): the publisher is alive (service watchdog)

    def frame_produced(self, records_total: int, ticks: int, received_ns: int | None,
                       next_sequence: int | None) -> None:
        """A frame whose records end at `records_total`, just handed to the producer; without
        `received_ns` it made no record of its own and adds no latency sample."""
        produced = 0
        if received_ns is not None:
            produced = time.monotonic_ns()
            self.latencies.produced.record(produced - received_ns)
        self.frames.append((records_total, ticks, received_ns, produced, next_sequence))
        if self.link is not None:
            self.link.close_frame()

    def update(self, acknowledged_records: int, committed: bool = False) -> None:
        """Count the frames acknowledged since the last call: those the link found settled, or
        without a link those `acknowledged_records` covers. `committed`: they count from now
        (exactly-once: when their transaction committed), not from when Kafka acknowledged
        their records."""
        self.checks += 1
        frames = self.frames
        if self.link is not None:
            settled = self.link.take_settled()
        elif frames and frames[0][0] <= acknowledged_records:
            settled = [None] * sum(1 for _ in itertools.takewhile(
                lambda frame: frame[0] <= acknowledged_records, frames))
        else:
            return
        now = time.monotonic_ns()
        kafka, acknowledged = self.latencies.kafka, self.latencies.acknowledged
        for settled_ns in settled:
            _, ticks, received, produced, next_sequence = frames.popleft()
            self.ticks += ticks
            if next_sequence is not None:
                self.next_sequence = next_sequence
            if received is not None:
                at = now if settled_ns is None or committed else settled_ns
                kafka.record(at - produced)
                acknowledged.record(at - received)

    def oldest_age_ms(self) -> float:
        """Age of the oldest frame not yet acknowledged; safe from any thread (the deque may
        change under the look: then the figure is retaken)."""
        while True:
            try:
                oldest = next((frame[2] for frame in self.frames if frame[2] is not None), None)
                break
            except RuntimeError:        # deque mutated during iteration
                continue
        return (time.monotonic_ns() - oldest) / 1e6 if oldest is not None else 0.0


class DeliveryLedger:
    """Records and ticks handed to the producer, their bytes, failures (`errors`), frame
    acknowledgements (`acks`), dead letters and backpressure waits; `settle` turns them into
    delivered, failed and undelivered ticks once the producer has been flushed."""

    def __init__(self, errors: DeliveryErrors, latencies: StageLatencies | None = None):
        self.errors = errors
        self.acks = Acknowledgements(latencies)
        self.records = 0            # records handed to the producer, dead letters included
        self.ticks = 0              # ticks in them (dead letters excluded)
        self.dead_lettered = 0
        self.already_in_kafka = 0   # ticks skipped on resume: their partitions held them
        self.backpressure_waits = 0
        self.bytes = 0              # key and value bytes of the records handed over
        # (records, bytes) running totals after each hand-over, oldest first: what lets
        # queued_bytes() estimate the bytes still queued from the number of queued records.
        self._marks: deque[tuple[int, int]] = deque()
        self._bytes_out = 0         # running byte total at the newest mark known to have left

    def handed_over(self, records: int, nbytes: int) -> None:
        self.records += records
        self.bytes += nbytes
        self._marks.append((self.records, self.bytes))

    def queued_bytes(self, queued_records: int) -> int:
        """Bytes of the `queued_records` newest records, assuming they leave the queue in the
        order they entered it; rounded up to whole hand-overs, so never an underestimate of
        what those hand-overs hold."""
        gone = self.records - queued_records
        while self._marks and self._marks[0][0] <= gone:
            self._bytes_out = self._marks.popleft()[1]
        return self.bytes - self._bytes_out

    def queued_bytes_estimate(self) -> int:
        """The last figure `queued_bytes` took, without updating it: for other threads."""
        return self.bytes - self._bytes_out

    def acknowledged_records(self, queued_records: int) -> int:
        return self.records - queued_records - self.errors.records

    def settle(self, queued_records: int) -> dict[str, int]:
        """Delivered, failed and undelivered ticks, once nothing more will be produced and
        `queued_records` were left in the producer by its final flush."""
        self.acks.update(self.acknowledged_records(queued_records))
        failed = self.errors.units
        # Conservative: every tick of a frame not fully acknowledged counts as undelivered.
        undelivered = max(0, self.ticks - self.acks.ticks - failed) if queued_records else 0
        return {"delivered": max(0, self.ticks - failed - undelivered), "failed": failed,
                "undelivered": undelivered}

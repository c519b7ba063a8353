"""The handler pipeline: frames in, parallel nogil decode, one publisher, one shared producer.

    reader (caller's thread)  --frame-->  worker pool: packet.decode (GIL released)
           |                                   |
           +-- bounded queue of futures, in arrival order
                                               v
    publisher thread: takes decoded packets strictly in feed order, builds records and calls
    produce_batch()/produce() on the one Producer, polls it, and tracks what is acknowledged.

Only the publisher thread touches the producer: librdkafka is thread-safe, but two threads
producing at once contend for the GIL and its locks and reach less than one. Taking packets in
arrival order keeps every symbol's ticks in feed order whatever the number of workers. When
the producer's queue is full the publisher waits, the futures queue fills, and the reader stops
reading the socket: backpressure reaches the exchange instead of memory growing.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from feedhandler.wire import packet as packets
from feedhandler.kafka.config import PRODUCER_DEFAULTS, KafkaClientConfig
from feedhandler.kafka.ledger import DeliveryErrors
from feedhandler.kafka.producer import create_producer
from feedhandler.kafka.topics import ensure_topics
from feedhandler.kafka.routing import (BATCH_DTYPES, Routes, StockDirectory, batched_records,
                                 raw_blocks, tick_records)

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 1_000_000
BATCH_TICKS = 65_536         # batched format: ticks held back at most, to share records,
BATCH_LINGER_NS = 5_000_000  # and for at most this long
POLL_INTERVAL = 0.005
GIL_SWITCH_INTERVAL = 0.001


@dataclass
class HandlerConfig:
    bootstrap_servers: str
    value_format: str = "struct"
    workers: int = 2
    routes: Routes = field(default_factory=Routes.by_category)
    partitions: int = 6
    replication_factor: int = -1
    producer_overrides: dict[str, str] = field(default_factory=dict)
    headers: bool = False
    timestamp_base_ms: int = 0
    flush_timeout: float = 60.0
    queue_reads: int = 0            # socket reads queued for the publisher; 0 = 4 per worker
    producer_link: str = "auto"     # struct/raw ticks from C (ProducerLink): auto, require, off


@dataclass
class Account:
    """What happened to every frame and tick; `lost` must be 0 for a clean run."""

    frames: int = 0
    messages: int = 0
    decoded: int = 0
    quarantined: int = 0
    quarantined_frames: int = 0
    records: int = 0
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0
    dead_lettered: int = 0
    backpressure_waits: int = 0     # times the publisher waited for room in the producer queue
    gaps: int = 0
    missing: int = 0
    duplicates: int = 0
    failure_reasons: dict = field(default_factory=dict)
    producer_path: str = ""         # per-tick records: "producer-link" or "produce-batch"

    @property
    def lost(self) -> int:
        """Ticks that did not make it into Kafka: failed, never acknowledged, or missing from
        the feed (gaps the session could not fill)."""
        return self.failed + self.undelivered + self.missing

    def as_dict(self) -> dict:
        return {**asdict(self), "lost": self.lost}


class Acknowledgements:
    """Which frames Kafka has fully acknowledged, without a Python call per delivered record.

    With error-only delivery reports, records acknowledged = produced - failed - still queued
    in the producer. Frames are produced in order, so a frame counts as acknowledged once that
    figure reaches the running total at its end. This is conservative: a frame waits for every
    record before it, on any partition, and its latency includes that wait."""

    def __init__(self):
        self.frames: deque = deque()    # (records produced through this frame, ticks, receipt ns)
        self.ticks = 0
        self.latencies_ns: list[int] = []

    def frame_produced(self, records_total: int, ticks: int, received_ns: int) -> None:
        self.frames.append((records_total, ticks, received_ns))

    def update(self, acknowledged_records: int) -> None:
        now = time.monotonic_ns()
        while self.frames and self.frames[0][0] <= acknowledged_records:
            _, ticks, received = self.frames.popleft()
            self.ticks += ticks
            if len(self.latencies_ns) < LATENCY_SAMPLES:
                self.latencies_ns.append(now - received)

    def oldest_age_ms(self) -> float:
        return (time.monotonic_ns() - self.frames[0][2]) / 1e6 if self.frames else 0.0

    def percentiles_ms(self) -> dict[str, float]:
        if not self.latencies_ns:
            return {}
        values = np.percentile(np.array(self.latencies_ns), [50, 99, 99.9]) / 1e6
        return {"p50": round(float(values[0]), 3), "p99": round(float(values[1]), 3),
                "p99.9": round(float(values[2]), 3)}


class Handler:
    """Runs the pipeline over an iterable of frames until it ends or `stop()` is called."""

    def __init__(self, config: HandlerConfig):
        self.config = config
        self.account = Account()
        self.errors = DeliveryErrors(self._ticks_in)
        self.acks = Acknowledgements()
        self.directory = StockDirectory()
        self._stopping = threading.Event()
        self._pending: queue.Queue = queue.Queue(config.queue_reads or 4 * config.workers)
        self._publisher_error: BaseException | None = None
        self._next_poll = 0.0
        self._held: list = []       # batched format: (packet, ticks, receipt ns) not yet produced
        self._held_ticks = 0
        self._held_since = 0
        routes = config.routes
        wanted = {topic: config.partitions for topic in routes.topics}
        wanted[routes.dead_letter] = 1
        # The producer first: a ProducerLink that is required but cannot be had leaves no topic.
        client = KafkaClientConfig(config.bootstrap_servers, config.producer_overrides)
        self.producer, self.link, self.account.producer_path = create_producer(
            client, self.errors, config.producer_link)
        self.partitions = ensure_topics(client, wanted, config.replication_factor)
        self.topics = routes.topics
        self.topic_index = {t: self.topics.index(topic) for t, topic in routes.topic_of_type.items()}
        if self.link is not None:
            self.link.open_topics(self.topics, [self.partitions[t] for t in self.topics])
        self._queue_limit = int(config.producer_overrides.get(
            "queue.buffering.max.messages", PRODUCER_DEFAULTS["queue.buffering.max.messages"]))

    def _ticks_in(self, message) -> int:
        """Ticks a failed record carried: a batched record holds many rows."""
        if self.config.value_format != "batched" or \
                message.topic() == self.config.routes.dead_letter:
            return 1
        value = message.value()
        return len(value) // BATCH_DTYPES[chr(value[8])].itemsize

    # ---- the reader side (caller's thread) ------------------------------------------------------

    def run(self, frames) -> Account:
        """Read frames, decode them on the worker pool, publish them; return the account once
        everything accepted has been flushed (or the flush timed out).

        `frames` yields frames, or lists of frames (SessionClient.frame_batches): a list is
        decoded as one task, which spares the per-frame cost of the hand-offs."""
        publisher = threading.Thread(target=self._publish_loop, name="publisher", daemon=True)
        publisher.start()
        # The reader and the publisher hand work to each other constantly; with CPython's
        # default 5 ms switch interval one waits up to that long for the GIL at each hand-off.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="decode") as pool:
            try:
                for batch in frames:
                    received = time.monotonic_ns()
                    if not isinstance(batch, list):
                        batch = [batch]
                    self.account.frames += len(batch)
                    future = pool.submit(packets.decode_many, batch, policy="quarantine")
                    while True:     # blocks while the publisher is behind: backpressure
                        try:
                            self._pending.put((future, received), timeout=0.1)
                            break
                        except queue.Full:
                            if self._publisher_error or not publisher.is_alive():
                                break
                    if self._stopping.is_set() or self._publisher_error:
                        break
            finally:
                self._put_end(publisher)
        publisher.join()
        sys.setswitchinterval(switch_interval)
        if self._publisher_error:
            raise self._publisher_error
        return self.account

    def _put_end(self, publisher: threading.Thread) -> None:
        while publisher.is_alive():
            try:
                self._pending.put(None, timeout=0.1)
                return
            except queue.Full:
                continue

    def stop(self) -> None:
        """Stop reading; what was read is still decoded, produced and flushed."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def queue_depth(self) -> int:
        """Socket reads (lists of frames) decoded or decoding, not yet published."""
        return self._pending.qsize()

    def outstanding(self) -> int:
        return len(self.producer)

    # ---- the publisher thread -------------------------------------------------------------------

    def _publish_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._pending.get(timeout=0.005)
                except queue.Empty:
                    self._release_held()
                    self._service_producer()
                    continue
                if item is None:
                    break
                future, received = item
                for packet in future.result():
                    self._publish(packet, received)
                self._service_producer()
        except BaseException as error:      # surfaced by run() on the reader's thread
            log.exception("publisher failed")
            self._publisher_error = error
        finally:
            self._release_held()
            self._finish()

    def _service_producer(self) -> None:
        # poll() only serves error reports here and costs more than a frame's worth of
        # produce calls, so it runs every few milliseconds rather than after every frame.
        now = time.monotonic()
        if now >= self._next_poll:
            self.producer.poll(0)
            self._next_poll = now + POLL_INTERVAL
        self.acks.update(self.account.records - len(self.producer) - self.errors.records)

    def _make_room(self, records: int) -> None:
        """Wait until the producer queue can take `records` more without refusing any, so a
        batch is never split by a full queue (which could reorder it)."""
        records = min(records, self._queue_limit)
        if len(self.producer) + records > self._queue_limit:
            self.account.backpressure_waits += 1
        while len(self.producer) + records > self._queue_limit:
            self.producer.poll(0.005)
            self.acks.update(self.account.records - len(self.producer) - self.errors.records)

    def _publish(self, packet: packets.Packet, received: int) -> None:
        account = self.account
        records_before = account.records
        ticks = sum(map(len, packet.messages.values()))
        if packet.count is not None and not packet.is_end_of_session:
            account.messages += packet.count
        account.decoded += ticks
        if packet.quarantined:
            self._dead_letter(packet)
        if "R" in packet.messages:
            self.directory.update(packet.messages["R"])
        if ticks and self.config.value_format == "batched":
            account.produced += ticks
            if not self._held:
                self._held_since = time.monotonic_ns()
            self._held.append((packet, ticks, received))
            self._held_ticks += ticks
            if self._held_ticks >= BATCH_TICKS or \
                    time.monotonic_ns() - self._held_since >= BATCH_LINGER_NS:
                self._release_held()
            return
        if ticks and self.link is not None and self.config.value_format in ("struct", "raw"):
            self._make_room(ticks)
            account.records += self.link.produce_ticks(
                packet.messages, packet.sequences, packet.sequence, packet.count,
                self.topic_index, self.directory.keys, self.directory.hashes,
                raw_blocks(packet) if self.config.value_format == "raw" else None,
                packet.session if self.config.headers else None, self.config.timestamp_base_ms)
        elif ticks:
            self._produce_ticks(packet)
        account.produced += ticks
        if account.records > records_before:
            self.acks.frame_produced(account.records, ticks, received)
        else:
            self.acks.ticks += ticks

    def _produce_ticks(self, packet: packets.Packet) -> None:
        """Per-tick records through the Producer's Python API: produce_batch() per topic (json,
        or when there is no ProducerLink), or with --headers one produce() per tick carrying
        type, session and sequence headers and the ITCH time as timestamp."""
        headers = self.config.headers
        groups = tick_records(packet, self.config.value_format, self.topic_index, len(self.topics),
                              self.directory, self.config.timestamp_base_ms, with_metadata=headers)
        for topic, records in zip(self.topics, groups):
            if not records:
                continue
            self._make_room(len(records))
            self.account.records += len(records)
            if not headers:
                if self.producer.produce_batch(topic, records) != len(records):
                    self._count_refused(topic, records)
                continue
            for record in records:
                self.producer.produce(topic, record["value"], record["key"],
                                      timestamp=record["timestamp"],
                                      headers=[("type", record["type"]),
                                               ("session", packet.session),
                                               ("sequence", b"%d" % record["sequence"])])

    def _release_held(self) -> None:
        """Produce the batched records of the frames held so far: one record per message type
        and partition for all of them, rows in feed order. Frames are held up to BATCH_TICKS
        ticks or BATCH_LINGER_NS, and released at once when the feed goes quiet, so records
        grow with the load and stay prompt when it is light."""
        if not self._held:
            return
        held, self._held, self._held_ticks = self._held, [], 0
        first = held[0][0]
        headers_common = [("session", first.session), ("first", b"%d" % first.sequence)]
        for topic, partition, message_type, rows in batched_records(
                [packet for packet, _, _ in held], self.config.routes.topic_of_type,
                self.partitions, self.directory):
            self._make_room(1)
            self.producer.produce(topic, rows, partition=partition,
                                  headers=[("type", message_type.encode()), *headers_common])
            self.account.records += 1
        for _, ticks, received in held:
            self.acks.frame_produced(self.account.records, ticks, received)

    def _count_refused(self, topic: str, records: list[dict]) -> None:
        for record in records:
            if "_error" in record:
                self.errors(record["_error"], _RefusedRecord(topic, record))

    def _dead_letter(self, packet: packets.Packet) -> None:
        for entry in packet.quarantined:
            self._make_room(1)
            headers = [("reason", entry.reason.encode()), ("offset", b"%d" % entry.offset)]
            if entry.sequence is not None:
                headers.append(("sequence", b"%d" % entry.sequence))
            if packet.session is not None:
                headers.append(("session", packet.session))
            self.producer.produce(self.config.routes.dead_letter, entry.raw, headers=headers)
            self.account.records += 1
            self.account.dead_lettered += 1
            if packet.count is None:
                self.account.quarantined_frames += 1
            else:
                self.account.quarantined += 1

    def _finish(self) -> None:
        """Flush, then settle the account: every tick is delivered, failed or undelivered."""
        remaining = self.producer.flush(self.config.flush_timeout)
        self.acks.update(self.account.records - remaining - self.errors.records)
        account = self.account
        account.failed = self.errors.units
        account.failure_reasons = dict(self.errors.reasons)
        if remaining:
            # Conservative: every tick of a frame not fully acknowledged counts as undelivered.
            account.undelivered = max(0, account.produced - self.acks.ticks - account.failed)
        account.delivered = max(0, account.produced - account.failed - account.undelivered)


class _RefusedRecord:
    """Stands in for a confluent_kafka Message when produce_batch refuses a record."""

    def __init__(self, topic: str, record: dict):
        self._topic = topic
        self._record = record

    def topic(self):
        return self._topic

    def partition(self):
        return None

    def value(self):
        return self._record.get("value")

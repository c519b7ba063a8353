"""The Kafka sink: everything between a decoded packet and the broker.

A sink owns the one shared producer (and the ProducerLink into its librdkafka handle), the
topics and their partition counts, record keys, record building, backpressure and the delivery
ledger. The pipeline hands it decoded packets in feed order, from one thread; only that thread
touches the producer. There is one implementation per delivery path:

- `LinkedTickSink`: per-tick `struct`/`raw` records built in C and produced into the producer's
  handle by the ProducerLink, deliveries counted in C.
- `ProducerTickSink`: per-tick records through the Producer API (`json`; `struct`/`raw` where the
  ProducerLink is unavailable or turned off): `produce_batch()`, or `produce()` with headers.
- `BatchedSink`: the `batched` format, one record per message type and partition for the frames
  held together.

Backpressure covers both of the producer queue's limits, messages and bytes: before records are
handed over, the sink waits (polling the producer) until the queue has room for them, so a batch
is never split by a full queue (which could reorder it); a `produce()` refused all the same is
retried in `_produce`, the one place that does so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from feedhandler.kafka.config import PRODUCER_DEFAULTS, KafkaClientConfig
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.producer import BATCH_PATH, LINK_PATH, create_producer
from feedhandler.kafka.routing import (BATCH_DTYPES, Routes, StockDirectory, batched_records,
                                       raw_blocks, tick_records)
from feedhandler.kafka.timestamps import TimestampWindow
from feedhandler.kafka.topics import ensure_topics
from feedhandler.wire.packet import Packet

POLL_INTERVAL = 0.005         # seconds between polls of the producer while records flow
BATCH_TICKS = 65_536          # batched format: ticks held back at most, to share records,
BATCH_LINGER_NS = 5_000_000   # and for at most this long
# The sink fills at most this share of queue.buffering.max.kbytes: its figure for the bytes
# queued is an estimate (records leave partitions at different paces).
QUEUE_BYTES_SHARE = 0.75
KEY_BYTES = 8                 # what a per-tick record's key is counted as (stock symbols)
RECORD_OVERHEAD = 1024        # headers and framing a record carries besides its value


@dataclass
class SinkConfig:
    """Where and how ticks go to Kafka."""

    bootstrap_servers: str
    value_format: str = "struct"
    routes: Routes = field(default_factory=Routes.by_category)
    partitions: int = 6
    replication_factor: int = -1
    producer_overrides: dict[str, str] = field(default_factory=dict)
    headers: bool = False
    timestamp_base_ms: int = 0
    flush_timeout: float = 60.0
    producer_link: str = "auto"     # struct/raw ticks from C (ProducerLink): auto, require, off


def open_sink(config: SinkConfig) -> KafkaSink:
    """Create the producer, then the missing topics (a ProducerLink that is required but cannot
    be had leaves no topic), and the sink for the configured path."""
    client = KafkaClientConfig(config.bootstrap_servers, config.producer_overrides)
    dead_letter = config.routes.dead_letter
    if config.value_format == "batched":
        def ticks_in(message) -> int:
            """Ticks a failed record carried: a batched record holds many rows."""
            if message.topic() == dead_letter:
                return 1
            value = message.value()
            return len(value) // BATCH_DTYPES[chr(value[8])].itemsize
        errors = DeliveryErrors(ticks_in)
    else:
        errors = DeliveryErrors()
    producer, link, _ = create_producer(client, errors, config.producer_link)
    partitions = ensure_topics(client,
                               {**{topic: config.partitions for topic in config.routes.topics},
                                dead_letter: 1},
                               config.replication_factor)
    if config.value_format == "batched":
        sink_class = BatchedSink
    elif link is not None and config.value_format in ("struct", "raw"):
        sink_class = LinkedTickSink
    else:
        sink_class = ProducerTickSink
    return sink_class(config, producer, link, partitions, DeliveryLedger(errors))


def ticks_of(packet: Packet) -> int:
    return sum(map(len, packet.messages.values()))


class KafkaSink:
    """What every delivery path shares: topics, keys, dead letters, the producer's queue limits,
    polling, and the ledger. Subclasses produce the ticks (`_publish_ticks`)."""

    path = ""       # the delivery path's name, for the account

    def __init__(self, config: SinkConfig, producer, link, partitions: dict[str, int],
                 ledger: DeliveryLedger):
        self.config = config
        self.producer = producer
        self.link = link
        self.partitions = partitions
        self.ledger = ledger
        self.routes = config.routes
        self.topics = config.routes.topics
        self.topic_index = {t: self.topics.index(topic)
                            for t, topic in config.routes.topic_of_type.items()}
        self.directory = StockDirectory()
        self.timestamps = TimestampWindow()     # ITCH record timestamps the broker accepts
        settings = {**PRODUCER_DEFAULTS, **config.producer_overrides}
        self.max_queued_records = int(settings["queue.buffering.max.messages"])
        self.max_queued_bytes = int(int(settings["queue.buffering.max.kbytes"]) * 1024
                                    * QUEUE_BYTES_SHARE)
        self.max_record_bytes = min(int(settings["message.max.bytes"]) - RECORD_OVERHEAD,
                                    self.max_queued_bytes // 4)
        self._next_poll = 0.0
        if link is not None:
            link.open_topics(self.topics, [partitions[t] for t in self.topics])

    # ---- what the pipeline calls ----------------------------------------------------------------
    def publish(self, packet: Packet, received_ns: int) -> None:
        """Produce a decoded packet's ticks (and its quarantined input as dead letters)."""
        if packet.quarantined:
            self._dead_letter(packet)
        if "R" in packet.messages:
            self.directory.update(packet.messages["R"])
        ticks = ticks_of(packet)
        if ticks:
            self._publish_ticks(packet, ticks, received_ns)

    def idle(self) -> None:
        """Nothing arrived for a while: serve the producer."""
        self.service()

    def service(self) -> None:
        # poll() only serves error reports here and costs more than a frame's worth of
        # produce calls, so it runs every few milliseconds rather than after every frame.
        now = time.monotonic()
        if now >= self._next_poll:
            self.producer.poll(0)
            self._next_poll = now + POLL_INTERVAL
        self._update_acks()

    def finish(self) -> dict[str, int]:
        """Produce what is held, flush, and settle the ledger (delivered, failed, undelivered)."""
        remaining = self.producer.flush(self.config.flush_timeout)
        return self.ledger.settle(remaining)

    def outstanding(self) -> int:
        """Records in the producer, not yet acknowledged or failed."""
        return len(self.producer)

    # ---- for the delivery paths ------------------------------------------------------------------
    def _publish_ticks(self, packet: Packet, ticks: int, received_ns: int) -> None:
        raise NotImplementedError

    def _update_acks(self) -> None:
        self.ledger.acks.update(self.ledger.acknowledged_records(len(self.producer)))

    def _has_room(self, records: int, nbytes: int) -> bool:
        queued = len(self.producer)
        return (queued + records <= self.max_queued_records
                and self.ledger.queued_bytes(queued) + nbytes <= self.max_queued_bytes)

    def _make_room(self, records: int, nbytes: int) -> None:
        """Wait until the producer queue can take `records` more of `nbytes` in all."""
        records = min(records, self.max_queued_records)
        nbytes = min(nbytes, self.max_queued_bytes)
        if self._has_room(records, nbytes):
            return
        self.ledger.backpressure_waits += 1
        while not self._has_room(records, nbytes):
            self.producer.poll(POLL_INTERVAL)
            self._update_acks()

    def _produce(self, topic: str, value: bytes, *, key: bytes | None = None,
                 partition: int = -1, timestamp: int = 0, headers=None) -> None:
        """One record through the Producer API, waiting for room; a record that can never fit
        the queue is counted as failed instead of waited for."""
        nbytes = len(value) + (len(key) if key else 0)
        if nbytes > self.max_queued_bytes / QUEUE_BYTES_SHARE:
            self.ledger.handed_over(1, nbytes)
            self.ledger.errors.count("record larger than queue.buffering.max.kbytes", 1, topic)
            return
        self._make_room(1, nbytes)
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition,
                                      timestamp=timestamp, headers=headers)
                break
            except BufferError:
                self.ledger.backpressure_waits += 1
                self.producer.poll(POLL_INTERVAL)
                self._update_acks()
        self.ledger.handed_over(1, nbytes)

    def _frame_produced(self, ticks: int, received_ns: int, records_before: int) -> None:
        self.ledger.ticks += ticks
        if self.ledger.records > records_before:
            self.ledger.acks.frame_produced(self.ledger.records, ticks, received_ns)
        else:
            self.ledger.acks.ticks += ticks

    def _dead_letter(self, packet: Packet) -> None:
        for entry in packet.quarantined:
            headers = [("reason", entry.reason.encode()), ("offset", b"%d" % entry.offset)]
            if entry.sequence is not None:
                headers.append(("sequence", b"%d" % entry.sequence))
            if packet.session is not None:
                headers.append(("session", packet.session))
            self._produce(self.routes.dead_letter, entry.raw, headers=headers)
            self.ledger.dead_lettered += 1


class LinkedTickSink(KafkaSink):
    """Per-tick struct/raw records produced from C through the ProducerLink."""

    path = LINK_PATH

    def _publish_ticks(self, packet, ticks, received_ns):
        config = self.config
        # The structs are at least as long as the values, raw or struct.
        nbytes = sum(rows.nbytes for rows in packet.messages.values()) + KEY_BYTES * ticks
        self._make_room(ticks, nbytes)
        records_before = self.ledger.records
        records = self.link.produce_ticks(
            packet.messages, packet.sequences, packet.sequence, packet.count, self.topic_index,
            self.directory.keys, self.directory.hashes,
            raw_blocks(packet) if config.value_format == "raw" else None,
            packet.session if config.headers else None, config.timestamp_base_ms)
        self.ledger.handed_over(records, nbytes)
        self._frame_produced(ticks, received_ns, records_before)


class ProducerTickSink(KafkaSink):
    """Per-tick records through the Producer API: produce_batch() per topic, or with headers
    one produce() per tick carrying type, session and sequence headers and the ITCH time as
    timestamp."""

    path = BATCH_PATH

    def _publish_ticks(self, packet, ticks, received_ns):
        headers = self.config.headers
        records_before = self.ledger.records
        groups = tick_records(packet, self.config.value_format, self.topic_index,
                              len(self.topics), self.directory, self.config.timestamp_base_ms,
                              with_metadata=headers)
        for topic, records in zip(self.topics, groups):
            if not records:
                continue
            if headers:
                self.timestamps.apply(records)
                for record in records:
                    self._produce(topic, record["value"], key=record["key"],
                                  timestamp=record["timestamp"],
                                  headers=[("type", record["type"]), ("session", packet.session),
                                           ("sequence", b"%d" % record["sequence"])])
                continue
            nbytes = sum(len(r["value"]) + len(r["key"]) for r in records)
            self._make_room(len(records), nbytes)
            accepted = self.producer.produce_batch(topic, records)
            self.ledger.handed_over(len(records), nbytes)
            if accepted != len(records):
                for record in records:
                    if "_error" in record:
                        self.ledger.errors.count(record["_error"].str(), 1, topic)
        self._frame_produced(ticks, received_ns, records_before)


class BatchedSink(KafkaSink):
    """The batched format: frames are held up to BATCH_TICKS ticks or BATCH_LINGER_NS and
    released at once when the feed goes quiet, so records grow with the load and stay prompt
    when it is light. Each release is one record per message type and partition (split where
    it would exceed the record size the producer's limits allow), rows in feed order."""

    path = "batched"

    def __init__(self, *args):
        super().__init__(*args)
        self._held: list = []       # (packet, ticks, receipt ns) not yet produced
        self._held_ticks = 0
        self._held_since = 0

    def _publish_ticks(self, packet, ticks, received_ns):
        self.ledger.ticks += ticks
        if not self._held:
            self._held_since = time.monotonic_ns()
        self._held.append((packet, ticks, received_ns))
        self._held_ticks += ticks
        if self._held_ticks >= BATCH_TICKS or \
                time.monotonic_ns() - self._held_since >= BATCH_LINGER_NS:
            self._release_held()

    def idle(self):
        self._release_held()
        super().idle()

    def finish(self):
        self._release_held()
        return super().finish()

    def _release_held(self) -> None:
        if not self._held:
            return
        held, self._held, self._held_ticks = self._held, [], 0
        first = held[0][0]
        common_headers = [("session", first.session), ("first", b"%d" % first.sequence)]
        for topic, partition, message_type, rows in batched_records(
                [packet for packet, _, _ in held], self.routes.topic_of_type, self.partitions,
                self.directory):
            row_bytes = BATCH_DTYPES[message_type].itemsize
            step = max(1, self.max_record_bytes // row_bytes) * row_bytes
            headers = [("type", message_type.encode()), *common_headers]
            for start in range(0, len(rows), step):
                self._produce(topic, rows[start:start + step] if len(rows) > step else rows,
                              partition=partition, headers=headers)
        for _, ticks, received in held:
            self.ledger.acks.frame_produced(self.ledger.records, ticks, received)

"""The Kafka sink: everything between a decoded packet and the broker.

A sink owns the one shared producer (and the ProducerLink into its librdkafka handle), the
topics and their partition counts, record keys, record building, backpressure and the delivery
ledger. The pipeline hands it decoded packets in feed order, from one thread (the handler's
publisher); only that thread touches the producer. There is one implementation per delivery
path:

- `LinkedTickSink`: per-tick `struct`/`raw` records built in C and produced into the producer's
  handle by the ProducerLink, deliveries counted in C.
- `ProducerTickSink`: per-tick records through the Producer API (`json`; `struct`/`raw` where the
  ProducerLink is unavailable or turned off): `produce_batch()`, or `produce()` with headers.
- `BatchedSink`: the `batched` format, one record per message type and partition for the frames
  held together; `ArrowSink`: the same records with Arrow IPC values (the `arrow` format).

Backpressure covers both of the producer queue's limits, messages and bytes: before records are
handed over, the sink waits (polling the producer) until the queue has room for them, so a batch
is never split by a full queue (which could reorder it); a `produce()` refused all the same is
retried in `_produce`, the one place that does so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from feedhandler.kafka.config import PRODUCER_DEFAULTS, KafkaClientConfig, kafka_reason
from feedhandler.kafka.contract import (FORMAT_HEADER, SCHEMA_SETTINGS, marker,
                                        write_schemas)
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.producer import BATCH_PATH, LINK_PATH, create_producer
from feedhandler.kafka.resume import (CHECKPOINT_INTERVAL, CHECKPOINT_SETTINGS, Checkpoint,
                                      ResumeFilter, checkpoint_ends, directory_key,
                                      directory_value, partition_ends, position_key,
                                      position_value)
from feedhandler.kafka.routing import (BATCH_DTYPES, GROUPED_FORMATS, TICK_HEADER_SIZE, Routes,
                                       StockDirectory, batched_records, raw_blocks, tick_records)
from feedhandler.kafka.timestamps import TimestampWindow
from feedhandler.kafka._records import partition_for
from feedhandler.kafka.topics import KafkaStartError, ensure_topics
from feedhandler.errors import DecodeError
from feedhandler.wire.packet import END_OF_SESSION_COUNT, HEARTBEAT_COUNT, Packet, peek

POLL_INTERVAL = 0.005         # seconds between polls of the producer while records flow
BATCH_TICKS = 65_536          # batched format: ticks held back at most, to share records,
BATCH_LINGER_NS = 5_000_000   # and for at most this long
# The sink fills at most this share of queue.buffering.max.kbytes: its figure for the bytes
# queued is an estimate (records leave partitions at different paces).
QUEUE_BYTES_SHARE = 0.75
KEY_BYTES = 8                 # what a per-tick record's key is counted as (stock symbols)
# Exactly-once: a transaction (ticks and the checkpoint that covers them) stays open at most
# this long; its commit waits for every record in it to be acknowledged.
TRANSACTION_INTERVAL = 0.1
RECORD_OVERHEAD = 1024        # headers and framing a record carries besides its value
STATISTICS_INTERVAL_MS = 5000  # librdkafka statistics, when SinkConfig.statistics asks for them


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
    # Resume a feed session where Kafka's data ends: skip the ticks the partitions hold, and
    # key stocks as before (feedhandler.kafka.resume); None for a session of its own.
    resume: Checkpoint | None = None
    # librdkafka's statistics (a JSON string), every `statistics.interval.ms` (an -X setting
    # wins over STATISTICS_INTERVAL_MS); called on the thread that polls the producer.
    statistics: Callable[[str], None] | None = None


def open_sink(config: SinkConfig) -> KafkaSink:
    """Create the producer, then the missing topics (a ProducerLink that is required but cannot
    be had leaves no topic), and the sink for the configured path."""
    client = KafkaClientConfig(config.bootstrap_servers, config.producer_overrides)
    dead_letter, checkpoint = config.routes.dead_letter, config.routes.checkpoint
    grouped = config.value_format in GROUPED_FORMATS

    def ticks_in(message) -> int:
        """Ticks a failed record carried: a checkpoint none, a batched record many rows."""
        if message.topic() == checkpoint:
            return 0
        if not grouped or message.topic() == dead_letter:
            return 1
        value = message.value()
        if config.value_format == "arrow":
            from feedhandler.kafka.arrow_format import row_count
            return row_count(value)
        return len(value) // BATCH_DTYPES[chr(value[8])].itemsize
    errors = DeliveryErrors(ticks_in)
    producer_client = client
    if config.statistics is not None:
        producer_client = KafkaClientConfig(config.bootstrap_servers, {
            "statistics.interval.ms": STATISTICS_INTERVAL_MS, **config.producer_overrides,
            "stats_cb": config.statistics})
    producer, link, _ = create_producer(producer_client, errors, config.producer_link)
    routes = config.routes
    schema = {routes.schema: 1} if routes.schema else {}
    partitions = ensure_topics(client,
                               {**{topic: config.partitions for topic in routes.topics},
                                dead_letter: 1, routes.checkpoint: 1, **schema},
                               config.replication_factor,
                               settings={routes.checkpoint: CHECKPOINT_SETTINGS,
                                         routes.schema: SCHEMA_SETTINGS})
    if routes.schema:
        # Before any tick: a reader finds the format of every record it can see.
        try:
            write_schemas(client.admin(), routes.schema, config.value_format,
                          routes.topic_of_type, config.flush_timeout)
        except KafkaException as error:
            raise KafkaStartError(kafka_reason(error)) from None
    if config.value_format == "batched":
        sink_class = BatchedSink
    elif config.value_format == "arrow":
        sink_class = ArrowSink
    elif link is not None and config.value_format in ("struct", "raw"):
        sink_class = LinkedTickSink
    else:
        sink_class = ProducerTickSink
    sink = sink_class(config, producer, link, partitions, DeliveryLedger(errors))
    try:
        if sink.transactional:
            # Fences an earlier instance with the same transactional.id and aborts what it
            # left open.
            producer.init_transactions(config.flush_timeout)
        if config.resume is not None:
            # Exactly-once: nothing past the committed checkpoint is visible, so what is held
            # is exactly what precedes it (a run asked to start earlier skips that part).
            position = config.resume.next_sequence
            ends = checkpoint_ends({t: partitions[t] for t in [*routes.topics, dead_letter]},
                                   position) \
                if sink.transactional else partition_ends(
                    client, routes, config.value_format, config.resume.session, position)
            sink.resume(config.resume, ends)
    except (KafkaException, TimeoutError, RuntimeError) as error:
        raise KafkaStartError(f"cannot resume: {kafka_reason(error)}") from None
    return sink


def ticks_of(packet: Packet) -> int:
    return sum(map(len, packet.messages.values()))


def frame_header(frame) -> tuple[bytes, int, int] | None:
    """(session, first sequence, message count) of a whole frame set aside by the decoder, if
    its MoldUDP64 header can be read; None otherwise."""
    try:
        session, first, count = peek(frame)
    except DecodeError:
        return None
    if count in (HEARTBEAT_COUNT, END_OF_SESSION_COUNT):
        return session, first, 0
    return session, first, count


def frame_messages(frame) -> int:
    """Messages in a whole frame set aside by the decoder (0 when its header is unreadable)."""
    header = frame_header(frame)
    return header[2] if header else 0


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
        self.resume_filter: ResumeFilter | None = None
        self.session: bytes | None = None     # of the newest packet, for checkpoints
        self._next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
        self._checkpointed = (0, 0)         # (position, stocks known) written last
        self.transactional = "transactional.id" in settings
        self._in_transaction = False
        self._next_commit = 0.0
        self._produced_through = 0          # sequence after the newest frame handed over
        # Where a frame's records can go, by index: the tick topics, then dead letters.
        self.tracked = {topic: index for index, topic in
                        enumerate([*self.topics, self.routes.dead_letter])}
        if link is not None:
            link.open_topics(list(self.tracked), [partitions[t] for t in self.tracked])
            ledger.acks.link = link
            # The producer learns each topic's partitions now: a record the link produces to a
            # topic it does not know yet waits on its unassigned partition, which a
            # transaction would register instead of the real one (and never commit).
            for topic in self.topics:
                producer.list_topics(topic, timeout=config.flush_timeout)

    # ---- what the pipeline calls ----------------------------------------------------------------
    def resume(self, checkpoint: Checkpoint, ends: dict) -> None:
        """Continue `checkpoint`'s session: its stock names, and a filter for the ticks that
        the partitions already hold (`ends`, from resume.partition_ends)."""
        self.directory.restore(checkpoint.stocks)
        self.session = checkpoint.session
        resume_filter = ResumeFilter(ends, self.routes, self.partitions)
        self.resume_filter = resume_filter if resume_filter.through else None

    def publish(self, packet: Packet, received_ns: int) -> None:
        """Produce a decoded packet's ticks (and its quarantined input as dead letters)."""
        self.directory.learn(packet.messages)
        if self.resume_filter is not None and self.resume_filter.covers(packet):
            packet = self.resume_filter.apply(packet, self.directory)
            self.ledger.already_in_kafka = self.resume_filter.skipped
        self._publish_counted(packet, ticks_of(packet), received_ns)

    def publish_read(self, packets: list[Packet], ticks: list[int], received_ns: int) -> None:
        """`publish` each of one socket read's `packets`; `ticks[i]` is packet i's tick count
        (wire._decode.tick_counts), which a sink may go by instead of the packets' arrays."""
        for packet in packets:
            self.publish(packet, received_ns)

    def _publish_counted(self, packet: Packet, ticks: int, received_ns: int) -> None:
        """A packet's dead letters and session, then its `ticks` ticks, or without any its
        place in the order of frames."""
        if packet.quarantined:
            self._dead_letter(packet)
        if packet.session is not None:
            self.session = packet.session
        if ticks:
            self._publish_ticks(packet, ticks, received_ns)
        elif packet.next_sequence is not None:
            self._frame_without_ticks(packet)

    def idle(self) -> None:
        """Nothing arrived for a while: produce what is held, serve the producer."""
        self._release_held()
        self.service()

    def service(self) -> None:
        # poll() only serves error reports here and costs more than a frame's worth of
        # produce calls, so it runs every few milliseconds rather than after every frame.
        now = time.monotonic()
        if now >= self._next_poll:
            self.producer.poll(0)
            self._next_poll = now + POLL_INTERVAL
        self._update_acks()
        if self.transactional:
            if self._in_transaction and now >= self._next_commit:
                self._commit()
        elif now >= self._next_checkpoint:
            self._next_checkpoint = now + CHECKPOINT_INTERVAL
            self._write_checkpoint(self.ledger.acks.next_sequence)

    def finish(self) -> dict[str, int]:
        """Produce what is held, flush (committing the open transaction), settle the ledger
        (delivered, failed, undelivered), and write the final checkpoint."""
        self._release_held()
        if self._in_transaction:
            self._commit()
        remaining = self.producer.flush(self.config.flush_timeout)
        settled = self.ledger.settle(remaining)
        if not remaining and not self.transactional:
            self._write_checkpoint(self.ledger.acks.next_sequence)
            self.producer.flush(self.config.flush_timeout)
        return settled

    def _write_checkpoint(self, position: int) -> None:
        """Checkpoint `position`, and first the stock names if more are known than the last
        checkpoint had."""
        stocks = int(self.directory.known.sum())
        if self.session is None or not position or (position, stocks) <= self._checkpointed:
            return
        if stocks > self._checkpointed[1]:
            self._produce(self.routes.checkpoint, directory_value(self.session,
                                                                  self.directory.entries()),
                          key=directory_key(self.session))
        self._produce(self.routes.checkpoint, position_value(self.session, position),
                      key=position_key(self.session))
        self._checkpointed = (position, stocks)

    def _commit(self) -> None:
        """Commit the open transaction: its ticks and the checkpoint just past them become
        visible to read_committed consumers together, or (on failure) not at all."""
        self._release_held()
        self._write_checkpoint(self._produced_through)
        try:
            self.producer.commit_transaction(self.config.flush_timeout)
        except KafkaException as error:
            if error.args[0].txn_requires_abort():
                self.producer.abort_transaction(self.config.flush_timeout)
            raise
        finally:
            self._in_transaction = False
        self._update_acks()

    @property
    def acknowledgement_fd(self) -> int | None:
        """The ProducerLink's eventfd, signalled whenever frames settle; None without a link."""
        return self.link.acknowledgement_fd if self.link is not None else None

    def acknowledgement_wait(self) -> float | None:
        """How long the caller may wait on `acknowledgement_fd` (the link signals it whenever
        frames settle) before it looks at the producer again; None where no signal can come
        (no ProducerLink)."""
        return None if self.link is None else POLL_INTERVAL

    def outstanding(self) -> int:
        """Records in the producer, not yet acknowledged or failed."""
        return len(self.producer)

    @property
    def checkpointed_sequence(self) -> int:
        """The position the newest checkpoint written says the session resumes from."""
        return self._checkpointed[0]

    # ---- for the delivery paths ------------------------------------------------------------------
    def _publish_ticks(self, packet: Packet, ticks: int, received_ns: int) -> None:
        raise NotImplementedError

    def _frame_without_ticks(self, packet: Packet) -> None:
        """A frame that made no record still moves the acknowledged position, in turn."""
        self.ledger.acks.frame_produced(self.ledger.records, 0, None, packet.next_sequence)
        self._produced_through = packet.next_sequence

    def _update_acks(self) -> None:
        if self._in_transaction:    # exactly-once: a frame counts once its transaction commits
            return
        self.ledger.acks.update(self.ledger.acknowledged_records(len(self.producer)),
                                committed=self.transactional)

    def _count_for_frame(self, topic: str, partition: int, records: int = 1) -> None:
        """Records about to be produced through the Producer to a tracked topic (a frame's
        dead letters, batched records, per-tick records without the link's own path): part of
        the frame the link tracks (-1: one refused after all)."""
        if self.link is not None:
            self.link.count_produced(self.tracked[topic], partition, records)

    def _has_room(self, records: int, nbytes: int) -> bool:
        queued = len(self.producer)
        return (queued + records <= self.max_queued_records
                and self.ledger.queued_bytes(queued) + nbytes <= self.max_queued_bytes)

    def _release_held(self) -> None:
        """Produce what a delivery path holds back (batched); nothing by default."""

    def _before_producing(self, records: int, nbytes: int) -> None:
        """Before records are handed to the producer: open a transaction if exactly-once has
        none open, and wait until the producer queue can take `records` more of `nbytes`."""
        if self.transactional and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True
            self._next_commit = time.monotonic() + TRANSACTION_INTERVAL
        records = min(records, self.max_queued_records)
        nbytes = min(nbytes, self.max_queued_bytes)
        if self._has_room(records, nbytes):
            return
        self.ledger.backpressure_waits += 1
        while not self._has_room(records, nbytes):
            self.producer.poll(POLL_INTERVAL)
            self._update_acks()

    def _produce(self, topic: str, value: bytes, *, key: bytes | None = None,
                 partition: int = -1, timestamp: int = 0, headers=None,
                 of_frame: bool = False) -> None:
        """One record through the Producer API, waiting for room; a record that can never fit
        the queue is counted as failed instead of waited for. `of_frame`: part of the frame
        being produced (to an explicit `partition` of a tracked topic)."""
        nbytes = len(value) + (len(key) if key else 0)
        if nbytes > self.max_queued_bytes / QUEUE_BYTES_SHARE:
            self.ledger.handed_over(1, nbytes)
            self.ledger.errors.count("record larger than queue.buffering.max.kbytes", 1, topic)
            return
        self._before_producing(1, nbytes)
        if of_frame:
            self._count_for_frame(topic, partition)
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

    def _frame_produced(self, packet: Packet, ticks: int, received_ns: int,
                        records_before: int) -> None:
        self.ledger.ticks += ticks
        self.ledger.acks.frame_produced(
            self.ledger.records, ticks,
            received_ns if self.ledger.records > records_before else None, packet.next_sequence)
        self._produced_through = packet.next_sequence

    def _dead_letter(self, packet: Packet) -> None:
        for entry in packet.quarantined:
            headers = [("reason", entry.reason.encode()), ("offset", b"%d" % entry.offset)]
            session, sequence = packet.session, entry.sequence
            if packet.count is None and (header := frame_header(entry.raw)):
                # a whole frame: the sequence of its first message, and how many it holds
                session, sequence, count = header
                headers.append(("count", b"%d" % count))
            if sequence is not None:
                headers.append(("sequence", b"%d" % sequence))
            if session is not None:
                headers.append(("session", session))
            # The link tracks a frame's records by partition, so it needs one chosen here:
            # the first (dead letters are rare, and a reader sees them in feed order).
            self._produce(self.routes.dead_letter, entry.raw, headers=headers,
                          partition=-1 if self.link is None else 0, of_frame=True)
            self.ledger.dead_lettered += 1


class LinkedTickSink(KafkaSink):
    """Per-tick struct/raw records produced from C through the ProducerLink."""

    path = LINK_PATH

    def _publish_ticks(self, packet, ticks, received_ns):
        config = self.config
        # The structs are at least as long as the messages, raw or struct.
        nbytes = sum(rows.nbytes for rows in packet.messages.values()) + \
            (TICK_HEADER_SIZE + KEY_BYTES) * ticks
        self._before_producing(ticks, nbytes)
        records_before = self.ledger.records
        fallbacks_before = self.link.timestamp_fallbacks
        records = self.link.produce_ticks(
            packet.messages, packet.sequences, packet.sequence, packet.count, self.topic_index,
            self.directory.keys, self.directory.hashes, packet.session,
            raw_blocks(packet) if config.value_format == "raw" else None, config.headers,
            config.timestamp_base_ms, *self.timestamps.window_ms())
        self.timestamps.count(self.link.timestamp_fallbacks - fallbacks_before)
        self.ledger.handed_over(records, nbytes)
        self._frame_produced(packet, ticks, received_ns, records_before)


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
                                  partition=-1 if self.link is None else partition_for(
                                      record["key"], self.partitions[topic]),
                                  timestamp=record["timestamp"],
                                  headers=[("type", record["type"]), ("session", packet.session),
                                           ("sequence", b"%d" % record["sequence"])],
                                  of_frame=True)
                continue
            nbytes = sum(len(r["value"]) + len(r["key"]) for r in records)
            self._before_producing(len(records), nbytes)
            if self.link is not None:
                # The partitioner's own choice, made here: the link tracks the frame by it.
                partitions = self.partitions[topic]
                for record in records:
                    record["partition"] = partition_for(record["key"], partitions)
                    self._count_for_frame(topic, record["partition"])
            accepted = self.producer.produce_batch(topic, records)
            self.ledger.handed_over(len(records), nbytes)
            if accepted != len(records):
                for record in records:
                    if "_error" in record:
                        self.ledger.errors.count(record["_error"].str(), 1, topic)
                        if self.link is not None:
                            self._count_for_frame(topic, record["partition"], -1)
        self._frame_produced(packet, ticks, received_ns, records_before)


class BatchedSink(KafkaSink):
    """The batched format: frames are held up to BATCH_TICKS ticks or BATCH_LINGER_NS and
    released at once when the feed goes quiet, so records grow with the load and stay prompt
    when it is light. Each release is one record per message type and partition (split where
    it would exceed the record size the producer's limits allow), rows in feed order.

    A release's records are produced together and hold the rows of all its frames, so its
    frames settle together: the ledger counts a release as one frame (its ticks, the position
    after its last frame, the receipt of its first: the latency samples are per release)."""

    path = "batched"

    def __init__(self, *args):
        super().__init__(*args)
        self._held: list[Packet] = []       # frames not yet produced, in feed order
        self._held_ticks = 0
        self._held_received = 0             # receipt (ns) of the first held frame
        self._held_since = 0

    def _publish_ticks(self, packet, ticks, received_ns):
        self.ledger.ticks += ticks
        if not self._held:
            self._held_since = time.monotonic_ns()
            self._held_received = received_ns
        self._held.append(packet)
        self._held_ticks += ticks
        if self._held_ticks >= BATCH_TICKS or \
                time.monotonic_ns() - self._held_since >= BATCH_LINGER_NS:
            self._release_held()

    def publish_read(self, packets: list[Packet], ticks: list[int], received_ns: int) -> None:
        """Without making the packets' arrays: their stock names are learned when they are
        released. A resumed run's filter rewrites packets: then each goes through `publish`."""
        if self.resume_filter is not None:
            super().publish_read(packets, ticks, received_ns)
            return
        for packet, count in zip(packets, ticks):
            self._publish_counted(packet, count, received_ns)

    def _frame_without_ticks(self, packet):
        if self._held:
            self._held.append(packet)
        else:
            super()._frame_without_ticks(packet)

    def _release_held(self) -> None:
        if not self._held:
            return
        packets, self._held = self._held, []
        ticks, self._held_ticks = self._held_ticks, 0
        received = self._held_received
        # The names every held packet reveals key the release's rows (`publish` learned them
        # already, `publish_read` leaves them to this one call).
        self.directory.learn_packets(packets)
        first, last = packets[0], packets[-1]
        # `first` and `next` bound the release's sequence numbers: a resumed run finds the
        # records that may hold ticks past its checkpoint by them (feedhandler.kafka.resume).
        common_headers = [("session", first.session), ("first", b"%d" % first.sequence),
                          ("next", b"%d" % last.next_sequence),
                          (FORMAT_HEADER, marker(self.config.value_format).encode())]
        self._produce_release([
            (topic, partition, value, [("type", message_type.encode()), *common_headers])
            for topic, partition, message_type, value in self._values(batched_records(
                packets, self.routes.topic_of_type, self.partitions, self.directory))])
        self.ledger.acks.frame_produced(self.ledger.records, ticks, received,
                                        last.next_sequence)
        self._produced_through = last.next_sequence

    def _values(self, groups):
        """(topic, partition, message type, record value) of `batched_records` groups: the
        rows, split where a record would exceed the record size the producer's limits
        allow."""
        for topic, partition, message_type, rows in groups:
            row_bytes = BATCH_DTYPES[message_type].itemsize
            step = max(1, self.max_record_bytes // row_bytes) * row_bytes
            for start in range(0, len(rows), step):
                yield (topic, partition, message_type,
                       rows[start:start + step] if len(rows) > step else rows)

    def _produce_release(self, records: list[tuple[str, int, bytes, list]]) -> None:
        """A release's (topic, partition, value, headers) records: room for all of them is
        waited for once, then each is one produce() (one the queue refuses all the same goes
        through _produce, which waits for room)."""
        self._before_producing(len(records), sum(len(record[2]) for record in records))
        produce, handed_over = self.producer.produce, self.ledger.handed_over
        for topic, partition, value, headers in records:
            self._count_for_frame(topic, partition)
            try:
                produce(topic, value, partition=partition, headers=headers)
            except BufferError:
                self._produce(topic, value, partition=partition, headers=headers)
                continue
            handed_over(1, len(value))


class ArrowSink(BatchedSink):
    """The arrow format: the batched records, each value the rows as an Arrow IPC stream
    (feedhandler.kafka.arrow_format, imported here: pyarrow is needed by this format only)."""

    path = "arrow"

    def __init__(self, *args):
        super().__init__(*args)
        from feedhandler.kafka import arrow_format
        self._arrow = arrow_format
        self._midnight_ns = self.config.timestamp_base_ms * 1_000_000

    def _values(self, groups):
        # batched_records gives a message type's partitions one after another: their columns
        # are built once, each partition's record a slice of them
        for message_type, same_type in groupby(groups, key=itemgetter(2)):
            same_type = list(same_type)
            encoded = self._arrow.encode_parts(message_type, [g[3] for g in same_type],
                                               self._midnight_ns, self.max_record_bytes)
            for (topic, partition, _, _), values in zip(same_type, encoded):
                for value in values:
                    yield topic, partition, message_type, value

"""Resume exactly where Kafka's data ends, with the resume state kept in Kafka itself.

Two things make a restarted handler (same command, any host) continue without losing or
repeating a tick:

- **Checkpoints** in the compacted `<prefix>checkpoint` topic, per feed session: `position`,
  the first sequence number not yet known to be acknowledged (every tick before it is in Kafka,
  or was counted lost or dead-lettered by the run that wrote it), and `directory`, the stock
  names learned so far (record keys must not change across a restart). The handler logs in at
  the position, so the exchange replays only what may be missing.
- **Partition ends**: after a crash the partitions end at different points, past the last
  checkpoint. Every record carries its session and sequence number, so the last record of each
  partition says exactly which of the replayed ticks that partition already holds (records of a
  partition are in feed order: one producing thread, idempotent producer). Those ticks are
  skipped (`ResumeFilter`); the rest are produced.

Checkpoint record (key `position/<session>` or `directory/<session>`, JSON value, version 1):
`{"version": 1, "session": "NASDAQ0001", "next_sequence": 1234567, "written_ms": ...}` and
`{"version": 1, "session": ..., "stocks": {"<locate>": "<symbol>", ...}}`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from feedhandler.kafka.config import KafkaClientConfig
from feedhandler.kafka.routing import (BATCH_DTYPES, GROUPED_FORMATS, TICK_HEADER_SIZE, Routes,
                                       StockDirectory)

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHECKPOINT_INTERVAL = 1.0           # seconds between checkpoints while the position moves
CHECKPOINT_SETTINGS = {"cleanup.policy": "compact"}
READ_TIMEOUT = 30.0
# What a partition created a moment ago answers until its leader is elected.
_NOT_READY = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART}


def _session_text(session: bytes) -> str:
    return session.decode("ascii").rstrip(" ")


def position_key(session: bytes) -> bytes:
    return b"position/" + session.rstrip(b" ")


def directory_key(session: bytes) -> bytes:
    return b"directory/" + session.rstrip(b" ")


def position_value(session: bytes, next_sequence: int) -> bytes:
    return json.dumps({"version": CHECKPOINT_VERSION, "session": _session_text(session),
                       "next_sequence": next_sequence,
                       "written_ms": int(time.time() * 1000)}).encode()


def directory_value(session: bytes, stocks: dict[int, bytes]) -> bytes:
    return json.dumps({"version": CHECKPOINT_VERSION, "session": _session_text(session),
                       "stocks": {str(k): v.decode("latin-1") for k, v in stocks.items()}}
                      ).encode()


@dataclass
class Checkpoint:
    """What the checkpoint topic holds for one feed session."""

    session: bytes                  # space-padded, as on the wire
    next_sequence: int = 1
    written_ms: int = 0
    stocks: dict[int, bytes] = field(default_factory=dict)


def _consumer(client: KafkaClientConfig, isolation: str = "read_uncommitted") -> Consumer:
    return Consumer({**client.admin(), "group.id": "feedhandler-resume",
                     "enable.auto.commit": False, "enable.partition.eof": True,
                     "auto.offset.reset": "earliest", "isolation.level": isolation,
                     "fetch.queue.backoff.ms": 1})


def _read(consumer: Consumer, partitions: list[TopicPartition], timeout: float) -> list:
    """Every message from each partition's given offset to its end."""
    if not partitions:
        return []
    consumer.assign(partitions)
    remaining = {(tp.topic, tp.partition) for tp in partitions}
    messages = []
    deadline = time.monotonic() + timeout
    while remaining:
        batch = consumer.consume(10_000, timeout=0.2)
        if not batch and time.monotonic() > deadline:
            raise TimeoutError(f"resume state not read within {timeout:g} s: {sorted(remaining)}")
        for message in batch:
            error = message.error()
            if error is None:
                messages.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                remaining.discard((message.topic(), message.partition()))
            else:
                raise RuntimeError(error.str())
    return messages


def fence_previous(client: KafkaClientConfig, timeout: float = READ_TIMEOUT) -> None:
    """Exactly-once: fence an earlier instance with the same transactional.id and abort the
    transaction it left open, so that what is committed cannot change while the checkpoint is
    read (and a read_committed read does not wait for that transaction to time out)."""
    producer = Producer(client.producer())
    try:
        producer.init_transactions(timeout)
    finally:
        producer.flush(0)


def read_checkpoints(client: KafkaClientConfig, routes: Routes, timeout: float = READ_TIMEOUT,
                     isolation: str = "read_committed") -> dict[bytes, Checkpoint]:
    """The checkpoint topic's latest state per feed session (space-padded session name); only
    committed checkpoints by default (exactly-once)."""
    partitions = [TopicPartition(topic, partition, low) for (topic, partition), (low, high)
                  in _watermarks_of(client, [routes.checkpoint], timeout).items() if high > low]
    consumer = _consumer(client, isolation)
    try:
        latest = {message.key(): message.value()
                  for message in _read(consumer, partitions, timeout)}
    finally:
        consumer.close()
    checkpoints: dict[bytes, Checkpoint] = {}
    for key, value in latest.items():
        if value is None:
            continue
        fields = json.loads(value)
        if fields.get("version") != CHECKPOINT_VERSION:
            log.warning("checkpoint %r: unknown version %r, ignored", key, fields.get("version"))
            continue
        session = fields["session"].encode("ascii").ljust(10)
        checkpoint = checkpoints.setdefault(session, Checkpoint(session))
        if key.startswith(b"position/"):
            checkpoint.next_sequence = int(fields["next_sequence"])
            checkpoint.written_ms = int(fields["written_ms"])
        elif key.startswith(b"directory/"):
            checkpoint.stocks = {int(k): v.encode("latin-1") for k, v in fields["stocks"].items()}
    return checkpoints


def latest_checkpoint(checkpoints: dict[bytes, Checkpoint]) -> Checkpoint | None:
    """The most recently written position of any session (the feed's current day)."""
    written = [c for c in checkpoints.values() if c.written_ms]
    return max(written, key=lambda c: c.written_ms) if written else None


TYPE_CODES = 128                    # ITCH message types are ASCII letters


def tick_of(message, value_format: str) -> tuple[bytes | None, int, int]:
    """(session, message type byte, sequence) of the last tick a record holds; session None
    when the record does not say (a dead letter of a frame without a readable header)."""
    value = message.value()
    headers = dict(message.headers() or ())
    if "reason" in headers:         # a dead letter: one partition, one order
        return headers.get("session"), 0, int(headers.get("sequence", 0))
    if value_format == "batched":
        itemsize = BATCH_DTYPES[chr(value[8])].itemsize
        return headers.get("session"), value[8], int.from_bytes(value[-itemsize:][:8], "little")
    if value_format == "arrow":
        from feedhandler.kafka.arrow_format import last_sequence
        return headers.get("session"), headers["type"][0], last_sequence(value)
    if value_format == "json":
        fields = json.loads(value)
        return (fields["session"].encode("ascii").ljust(10), ord(fields["message_type"]),
                int(fields["sequence"]))
    return bytes(value[:10]), value[TICK_HEADER_SIZE], \
        int.from_bytes(value[10:TICK_HEADER_SIZE], "little")


def _watermarks_of(client: KafkaClientConfig, topics: list[str],
                   timeout: float) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) offsets of every partition of `topics` (missing topics have none), asked
    for all at once."""
    admin = AdminClient(client.admin())
    existing = admin.list_topics(timeout=timeout).topics
    partitions = [TopicPartition(topic, p) for topic in topics if topic in existing
                  for p in existing[topic].partitions]
    if not partitions:
        return {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = ({(tp.topic, tp.partition): future.result().offset
                          for tp, future in admin.list_offsets(
                              {tp: spec for tp in partitions},
                              request_timeout=timeout).items()}
                         for spec in (OffsetSpec.earliest(), OffsetSpec.latest()))
            return {key: (low[key], high[key]) for key in low}
        except KafkaException as error:
            # a partition created a moment ago may not have its leader yet
            if error.args[0].code() not in _NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _tails(consumer: Consumer, watermarks: dict[tuple[str, int], tuple[int, int]],
           value_format: str, position: int, timeout: float) -> list:
    """The records at the ends of the partitions that may hold ticks at or past `position`,
    read from all partitions at once.

    Per-tick records of a partition are in feed order, so its last record says everything.
    A batched (or arrow) release puts one record per message type into each partition, so the
    types interleave: read back until a record whose release ends before `position` (its
    `next` header), or the partition's start."""
    grouped = value_format in GROUPED_FORMATS
    window = 256 if grouped else 1
    pending = {key: bounds for key, bounds in watermarks.items() if bounds[1] > bounds[0]}
    records = []
    while pending:
        starts = {key: max(low, high - window) for key, (low, high) in pending.items()}
        read = defaultdict(list)
        for message in _read(consumer, [TopicPartition(topic, partition, start) for
                                        (topic, partition), start in starts.items()], timeout):
            read[message.topic(), message.partition()].append(message)
        for key, messages in read.items():
            release_end = int(dict(messages[0].headers() or ()).get("next", b"0"))
            if not grouped or starts[key] == pending[key][0] \
                    or release_end <= position:
                records += messages
                del pending[key]
        window *= 4
    return records


def checkpoint_ends(partitions: dict[str, int], position: int) -> dict[str, np.ndarray]:
    """`partition_ends` tables from the checkpoint alone: every tick before `position` counts
    as held in every partition of every topic. With exactly-once that is exact (ticks and the
    checkpoint that covers them commit together, nothing past it is visible)."""
    return {topic: np.full((count, TYPE_CODES), position - 1, np.uint64)
            for topic, count in partitions.items()}


def partition_ends(client: KafkaClientConfig, routes: Routes, value_format: str,
                   session: bytes, position: int = 1,
                   timeout: float = READ_TIMEOUT) -> dict[str, np.ndarray]:
    """Per tick topic and the dead-letter topic, a table [partition, message type byte] of the
    last sequence number of `session` that the partition holds for that type; every tick
    before the checkpoint `position` counts as held."""
    topics = [*routes.topics, routes.dead_letter]
    watermarks = _watermarks_of(client, topics, timeout)
    ends = checkpoint_ends({topic: 1 + max((p for t, p in watermarks if t == topic), default=-1)
                            for topic in topics}, position)
    consumer = _consumer(client)
    try:
        records = _tails(consumer, watermarks, value_format, position, timeout)
    finally:
        consumer.close()
    for message in records:
        tick_session, message_type, sequence = tick_of(message, value_format)
        if tick_session != session:
            continue
        row = ends[message.topic()][message.partition()]
        if value_format in GROUPED_FORMATS and message.topic() != routes.dead_letter:
            row[message_type] = max(int(row[message_type]), sequence)
        else:           # in feed order whatever the type
            row[:] = np.maximum(row, sequence)
    return ends


@dataclass
class ResumedTicks:
    """A packet with the ticks its partitions already hold taken out (the attributes the Kafka
    sink reads of a decoded packet)."""

    session: bytes
    sequence: int
    count: int
    messages: dict
    sequences: dict
    quarantined: list

    @property
    def next_sequence(self) -> int:
        return self.sequence + self.count


class ResumeFilter:
    """Skips the ticks that Kafka already holds: a tick is skipped when its partition holds
    its sequence number or a later one (for its message type: `partition_ends`)."""

    def __init__(self, ends: dict[str, np.ndarray], routes: Routes, partitions: dict[str, int]):
        self.routes = routes
        self.partitions = partitions
        # A partition added since holds nothing yet (padded with zeros).
        self.ends = {topic: np.pad(table, ((0, max(0, partitions[topic] - len(table))), (0, 0)))
                     for topic, table in ends.items()}
        self.through = int(max((table.max() for table in self.ends.values() if table.size),
                               default=0))
        self.skipped = 0

    def covers(self, packet) -> bool:
        """Whether the packet may hold ticks that Kafka has already."""
        return packet.sequence is not None and packet.sequence <= self.through

    def apply(self, packet, directory: StockDirectory) -> ResumedTicks:
        messages, sequences = {}, {}
        for message_type, rows in packet.messages.items():
            topic = self.routes.topic_of_type[message_type]
            hashes = directory.hashes[rows["stock_locate"]].astype(np.int64)
            partition = (hashes & 0x7FFFFFFF) % self.partitions[topic]
            held = self.ends[topic][partition, ord(message_type)]
            keep = packet.sequences[message_type] > held
            self.skipped += int(len(keep) - keep.sum())
            if keep.any():
                messages[message_type] = np.ascontiguousarray(rows[keep])
                sequences[message_type] = np.ascontiguousarray(
                    packet.sequences[message_type][keep])
        dead_letters_held = int(self.ends[self.routes.dead_letter][0].max())
        quarantined = [q for q in packet.quarantined
                       if q.sequence is None or q.sequence > dead_letters_held]
        return ResumedTicks(packet.session, packet.sequence, packet.count, messages, sequences,
                            quarantined)

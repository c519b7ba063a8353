"""Reads every topic the handler wrote and checks it by feed sequence number.

    result = check_topics(bootstrap, Routes.by_category(prefix), "batched",
                          expected=range(1, count + 1))
    assert result.ok, result.summary()

What it checks:
- every expected sequence number is in Kafka exactly once (`missing` and `duplicates`, as
  ranges and a map of extra copies; `unexpected` for numbers outside the expected range);
- feed order per symbol within each partition: in offset order (and row order inside a batched
  record), a stock locate's sequence numbers only go up. For `batched` the order holds per
  message type too (a release of held frames writes one record per type and partition), so it is
  checked per (partition, type, locate) there;
- a symbol's ticks of one topic stay on one partition (`split_symbols`).

It reads with `isolation.level=read_committed` by default (what an exactly-once consumer sees);
`read_uncommitted` shows what aborted or unfinished transactions left behind as well.

Where each format keeps a tick's sequence number:
- `batched`: every row starts with it (`feedhandler.kafka.routing.BATCH_DTYPES`);
- `arrow`: the `sequence` column of the record's Arrow table (read with pyarrow);
- `json`: its "sequence" (and "session") fields;
- `struct` and `raw`: the target per-tick layout (issue 9), an 18-byte prefix of the 10-byte
  session (ASCII, space padded) and the u64 little-endian sequence number, then the message's
  struct (`struct`) or its ITCH wire bytes without the length prefix (`raw`). `tick_prefix` is
  the one place that reads that prefix.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from feedhandler.kafka.routing import BATCH_DTYPES, GROUPED_FORMATS, TICK_HEADER_SIZE, Routes
from feedhandler.wire.packet import SESSION_LENGTH

TICK_PREFIX_LENGTH = TICK_HEADER_SIZE     # the tick header (feedhandler.kafka.routing)
READ_TIMEOUT = 120.0


def tick_prefix(value: bytes) -> tuple[bytes, int, memoryview]:
    """(session, sequence number, the rest) of a per-tick `struct`/`raw` value: the tick
    header (session, 10 bytes ASCII space padded; sequence number, u64 little-endian), then
    the message. The checker's one place that reads it, independently of feedhandler.consume."""
    if len(value) <= TICK_PREFIX_LENGTH:
        raise ValueError(f"a per-tick value of {len(value)} bytes has no message after its "
                         f"{TICK_PREFIX_LENGTH}-byte session and sequence prefix")
    view = memoryview(value)
    return (bytes(view[:SESSION_LENGTH]),
            int.from_bytes(view[SESSION_LENGTH:TICK_PREFIX_LENGTH], "little"),
            view[TICK_PREFIX_LENGTH:])


def _stock_locate(message: memoryview, value_format: str) -> int:
    """Bytes 1-2 of the message: native little-endian in the struct, big-endian on the wire."""
    return int.from_bytes(message[1:3], "little" if value_format == "struct" else "big")


class Ticks:
    """The ticks of one partition, in the order Kafka holds them: rows of batched records as
    arrays, per-tick records one by one."""

    def __init__(self):
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._ticks: list[tuple[int, int, int]] = []        # (sequence, locate, type)
        self.sessions: Counter = Counter()

    def add_rows(self, rows: np.ndarray, session: bytes | None) -> None:
        """A batched record's rows (BATCH_DTYPES)."""
        self.add_columns(rows["sequence"], rows["stock_locate"],
                         rows["message_type"].view(np.uint8), session)

    def add_columns(self, sequences: np.ndarray, locates: np.ndarray, types: np.ndarray,
                    session: bytes | None) -> None:
        """The ticks of a batched or arrow record, one array per field."""
        self._chunks.append((sequences, locates, types))
        self.sessions[session] += len(sequences)

    def add_tick(self, sequence: int, locate: int, message_type: int, session: bytes) -> None:
        self._ticks.append((sequence, locate, message_type))
        self.sessions[session] += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sequence numbers, stock locates, message types) in partition order."""
        if self._chunks and self._ticks:
            raise ValueError("batched and per-tick records in one partition")
        if self._chunks:
            return tuple(np.concatenate(column) for column in zip(*self._chunks))
        ticks = np.array(self._ticks, np.uint64).reshape(-1, 3)
        return ticks[:, 0], ticks[:, 1].astype(np.uint16), ticks[:, 2].astype(np.uint8)


def add_record(ticks: Ticks, value: bytes, value_format: str, headers) -> None:
    """Add the ticks of one record of `value_format` to its partition's `ticks`."""
    if value_format == "batched":
        rows = np.frombuffer(value, BATCH_DTYPES[chr(value[8])])   # after the u64 sequence
        ticks.add_rows(rows, dict(headers or ()).get("session"))
    elif value_format == "arrow":
        # read with pyarrow itself, not feedhandler's own decoder: what any consumer sees
        import pyarrow as pa

        table = pa.ipc.open_stream(value).read_all()
        message_type = table.schema.metadata[b"fh.message_type"]
        ticks.add_columns(table.column("sequence").to_numpy(),
                          table.column("stock_locate").to_numpy(),
                          np.full(table.num_rows, message_type[0], np.uint8),
                          dict(headers or ()).get("session"))
    elif value_format == "json":
        fields = json.loads(value)
        ticks.add_tick(fields["sequence"], fields["stock_locate"], ord(fields["message_type"]),
                       fields["session"].encode().ljust(SESSION_LENGTH))
    elif value_format in ("struct", "raw"):
        session, sequence, message = tick_prefix(value)
        ticks.add_tick(sequence, _stock_locate(message, value_format), message[0], session)
    else:
        raise ValueError(f"unknown value format {value_format!r}")


def ranges(numbers) -> list[tuple[int, int]]:
    """Sorted distinct integers -> [(first, last), ...] of their consecutive runs."""
    numbers = np.unique(np.asarray(numbers, np.int64))
    if len(numbers) == 0:
        return []
    breaks = np.flatnonzero(np.diff(numbers) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(numbers) - 1]])
    return [(int(numbers[s]), int(numbers[e])) for s, e in zip(starts, ends)]


def format_ranges(runs: list[tuple[int, int]], limit: int = 8) -> str:
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")


@dataclass
class Check:
    """What the topics hold, by sequence number."""

    records: int = 0
    ticks: int = 0                                  # ticks read, copies included
    distinct: int = 0
    duplicates: dict[int, int] = field(default_factory=dict)   # sequence -> extra copies
    missing: list[tuple[int, int]] = field(default_factory=list)
    unexpected: list[tuple[int, int]] = field(default_factory=list)
    order_regressions: int = 0                      # a symbol's sequence not going up
    regression_examples: list = field(default_factory=list)    # (topic, partition, locate, before, after)
    split_symbols: dict = field(default_factory=dict)          # (topic, locate) -> partitions
    dead_lettered: list[tuple[int, int]] = field(default_factory=list)
    sessions: Counter = field(default_factory=Counter)
    ticks_by_topic: Counter = field(default_factory=Counter)

    @property
    def missing_count(self) -> int:
        return sum(b - a + 1 for a, b in self.missing)

    @property
    def duplicate_count(self) -> int:
        return sum(self.duplicates.values())

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.missing or self.unexpected or self.order_regressions
                    or self.split_symbols)

    def summary(self) -> str:
        lines = [f"{self.records} records, {self.ticks} ticks, {self.distinct} distinct sequence "
                 f"numbers, sessions {dict(self.sessions)}",
                 f"duplicates: {self.duplicate_count} extra copies of {len(self.duplicates)} "
                 f"numbers ({format_ranges(ranges(list(self.duplicates)))})",
                 f"missing: {self.missing_count} ({format_ranges(self.missing)})",
                 f"unexpected: {format_ranges(self.unexpected) or 'none'}",
                 f"order regressions: {self.order_regressions} {self.regression_examples[:3]}",
                 f"symbols on several partitions: {len(self.split_symbols)}"]
        if self.dead_lettered:
            lines.append(f"dead-lettered: {format_ranges(self.dead_lettered)}")
        return "\n".join(lines)


PASSING_ERRORS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)


def _watermarks(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """A partition's (low, high) offsets, asked again while its leader settles after a broker
    restart (NOT_LEADER_FOR_PARTITION and the like), until `deadline`."""
    while True:
        try:
            return consumer.get_watermark_offsets(
                partition, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as error:
            if error.args[0].code() not in PASSING_ERRORS or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_partitions(bootstrap: str, topics: list[str], isolation: str = "read_committed",
                    timeout: float = READ_TIMEOUT, settings: dict | None = None):
    """Yield every record of `topics` (a confluent_kafka Message), each partition from its
    beginning to its end (for read_committed: the last stable offset), in offset order within
    a partition. `settings`: more client settings (security, SASL, SSL)."""
    consumer = Consumer({
        **(settings or {}), "bootstrap.servers": bootstrap, "group.id": "feedhandler-fault-checker",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest", "isolation.level": isolation,
        "fetch.queue.backoff.ms": 1, "log_level": 3,
    })
    deadline = time.monotonic() + timeout
    try:
        metadata = consumer.list_topics(timeout=timeout)
        assignment = []
        for topic in topics:
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                continue                    # never created: nothing was written there
            for partition in described.partitions:
                low, high = _watermarks(consumer, TopicPartition(topic, partition), deadline)
                if high > low:
                    assignment.append(TopicPartition(topic, partition, low))
        if not assignment:
            return
        consumer.assign(assignment)
        remaining = {(tp.topic, tp.partition) for tp in assignment}
        while remaining:
            batch = consumer.consume(10_000, timeout=0.2)
            if not batch and time.monotonic() > deadline:
                raise TimeoutError(f"not read to the end within {timeout} s: {sorted(remaining)}")
            for message in batch:
                error = message.error()
                if error is None:
                    yield message
                elif error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard((message.topic(), message.partition()))
                elif error.code() in PASSING_ERRORS or error.retriable():
                    # A broker just restarted: leadership settles and the client retries on
                    # its own; the deadline above still bounds the read.
                    continue
                else:
                    raise RuntimeError(f"reading {message.topic()}: {error.str()}")
    finally:
        consumer.close()


def check_topics(bootstrap: str, routes: Routes, value_format: str, expected: range | None = None,
                 isolation: str = "read_committed", timeout: float = READ_TIMEOUT,
                 settings: dict | None = None) -> Check:
    """Read every topic of `routes` (and its dead-letter topic) and check the ticks of one
    feed session (the sessions seen are in `sessions`).

    `expected`: the sequence numbers the feed sent (None: from the lowest to the highest seen).
    Sequence numbers on dead letters (their `sequence` header) count as accounted for.
    `settings`: more client settings (security, SASL, SSL)."""
    partitions: dict[tuple[str, int], Ticks] = defaultdict(Ticks)
    check = Check()
    dead = []
    for message in read_partitions(bootstrap, routes.topics + [routes.dead_letter], isolation,
                                   timeout, settings):
        if message.topic() == routes.dead_letter:
            headers = dict(message.headers() or ())
            if "sequence" in headers:
                dead.append(int(headers["sequence"]))
            continue
        check.records += 1
        add_record(partitions[message.topic(), message.partition()], message.value(),
                   value_format, message.headers())
    return _check(check, partitions, value_format, expected, dead)


def _check(check: Check, partitions: dict, value_format: str, expected: range | None,
           dead: list[int]) -> Check:
    all_sequences = []
    partitions_of = defaultdict(set)
    for (topic, partition), ticks in sorted(partitions.items()):
        sequences, locates, types = ticks.arrays()
        check.sessions.update(ticks.sessions)
        check.ticks += len(sequences)
        check.ticks_by_topic[topic] += len(sequences)
        all_sequences.append(sequences)
        for locate in np.unique(locates).tolist():
            partitions_of[topic, locate].add(partition)
        _order(check, topic, partition, sequences, locates,
               types if value_format in GROUPED_FORMATS else np.zeros_like(types))
    check.split_symbols = {k: sorted(v) for k, v in partitions_of.items() if len(v) > 1}
    sequences = np.concatenate(all_sequences) if all_sequences else np.empty(0, np.uint64)
    distinct, copies = np.unique(sequences, return_counts=True)
    check.distinct = len(distinct)
    check.duplicates = {int(s): int(c - 1) for s, c in zip(distinct[copies > 1], copies[copies > 1])}
    if expected is None:
        expected = range(int(distinct[0]), int(distinct[-1]) + 1) if len(distinct) else range(0)
    wanted = np.arange(expected.start, expected.stop, expected.step, dtype=np.uint64)
    dead_lettered = np.unique(np.asarray(dead, np.uint64))
    check.dead_lettered = ranges(dead_lettered)
    check.missing = ranges(np.setdiff1d(np.setdiff1d(wanted, distinct, assume_unique=True),
                                        dead_lettered))
    check.unexpected = ranges(np.setdiff1d(distinct, wanted, assume_unique=True))
    return check


def _order(check: Check, topic: str, partition: int, sequences: np.ndarray, locates: np.ndarray,
           streams: np.ndarray) -> None:
    """Count places where a (stream, locate)'s sequence numbers, in partition order, do not
    go up."""
    if len(sequences) < 2:
        return
    group = locates.astype(np.int64) | (streams.astype(np.int64) << 16)
    order = np.argsort(group, kind="stable")        # keeps partition order within a group
    grouped, in_order = group[order], sequences[order]
    same = grouped[1:] == grouped[:-1]
    bad = np.flatnonzero(same & (in_order[1:] <= in_order[:-1]))
    check.order_regressions += len(bad)
    for i in bad[:max(0, 5 - len(check.regression_examples))].tolist():
        check.regression_examples.append((topic, partition, int(grouped[i] & 0xFFFF),
                                          int(in_order[i]), int(in_order[i + 1])))

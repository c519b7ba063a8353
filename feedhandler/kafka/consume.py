"""Reading the handler's records back: in feed order, as numpy structured arrays or pandas.

    for chunk in feedhandler.consume.read("127.0.0.1:9092", ["itch.orders", "itch.trades"]):
        ...   # {"A": array, "P": array, ...}; every sequence number below the next chunk's

    for frame in feedhandler.consume.read(bootstrap, topics, output="pandas", follow=True):
        ...   # one row per tick, feed order, prices decoded, symbols trimmed, times as times

`read` merges every partition of every topic back into feed order by the sequence number each
record carries (see `FeedReader`); `to_arrays(values, format)` decodes record values that
were read some other way.

Every tick comes back with its feed session and sequence number: per-tick `struct` and `raw`
values start with the tick header (session, sequence), `json` values carry both as fields, and
`batched` rows and `arrow` tables start with the sequence (the session is the record's
`session` header).
`messages(array)` drops those fields again, leaving the ITCH message structs.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict
from zoneinfo import ZoneInfo

import numpy as np
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError,
                             KafkaException, TopicPartition)

from feedhandler.kafka.contract import unavailable
from feedhandler.kafka.routing import (BATCH_DTYPES, GROUPED_FORMATS, TICK_DTYPES,
                                       TICK_HEADER_DTYPE, TICK_HEADER_SIZE, VALUE_FORMATS)
from feedhandler.wire.itch import DTYPES, parse

__all__ = ["FeedReader", "decode", "messages", "read", "read_topic", "to_arrays", "to_frame"]

EXCHANGE_TIMEZONE = ZoneInfo("America/New_York")
DEFAULT_MAX_BUFFERED = 500_000  # ticks held for the merge at most (then partitions pause)
SETTLE = 0.5                    # follow mode: seconds a tick waits for a quiet partition
POLL_RECORDS = 10_000
READ_SETTINGS = {
    "group.id": "feedhandler-read", "enable.auto.commit": False,
    "enable.partition.eof": True, "auto.offset.reset": "earliest",
    # Without this the consumer waits between fetches and reads ~10x slower.
    "fetch.queue.backoff.ms": 1,
}


def _by_type(values, type_offset: int) -> dict[str, list[bytes]]:
    grouped = defaultdict(list)
    for value in values:
        grouped[chr(value[type_offset])].append(value)
    return grouped


def _from_json(values) -> dict[str, np.ndarray]:
    rows = defaultdict(list)
    for value in values:
        fields = json.loads(value)
        rows[fields["message_type"]].append(fields)
    arrays = {}
    for message_type, objects in rows.items():
        dtype = TICK_DTYPES[message_type]
        array = np.zeros(len(objects), dtype)
        for name in dtype.names:
            column = [o[name] for o in objects]
            if dtype[name].kind == "S":
                width = dtype[name].itemsize
                column = [v.encode("latin-1").ljust(width) if name != "message_type"
                          else v.encode() for v in column]
            array[name] = column
        arrays[message_type] = array
    return arrays


def _from_raw(values) -> dict[str, np.ndarray]:
    headers = np.frombuffer(b"".join(v[:TICK_HEADER_SIZE] for v in values), TICK_HEADER_DTYPE)
    by_type = defaultdict(list)
    for index, value in enumerate(values):
        by_type[chr(value[TICK_HEADER_SIZE])].append(index)
    arrays = {}
    for message_type, indices in by_type.items():
        wire = parse(b"".join((len(values[i]) - TICK_HEADER_SIZE).to_bytes(2, "big")
                              + values[i][TICK_HEADER_SIZE:] for i in indices))[message_type]
        array = np.empty(len(indices), TICK_DTYPES[message_type])
        for name in TICK_HEADER_DTYPE.names:
            array[name] = headers[name][indices]
        for name in DTYPES[message_type].names:
            array[name] = wire[name]
        arrays[message_type] = array
    return arrays


def to_arrays(values, value_format: str) -> dict[str, np.ndarray]:
    """Record values of one format -> {message type: structured array}, in the given order.

    `struct`, `raw` and `json` give TICK_DTYPES (`session` and `sequence`, then the message),
    `batched` and `arrow` give BATCH_DTYPES (`sequence`, then the message; `arrow` prices as
    their integers, without `time`); for `json` and `arrow` alpha fields come back
    space-padded to their width, as on the wire."""
    values = list(values)
    if value_format == "struct":
        return {t: np.frombuffer(b"".join(v), TICK_DTYPES[t])
                for t, v in _by_type(values, TICK_HEADER_SIZE).items()}
    if value_format == "raw":
        return _from_raw(values)
    if value_format == "batched":
        return {t: np.frombuffer(b"".join(v), BATCH_DTYPES[t])
                for t, v in _by_type(values, 8).items()}
    if value_format == "json":
        return _from_json(values)
    if value_format == "arrow":
        from feedhandler.kafka.arrow_format import to_rows
        parts = defaultdict(list)
        for value in values:
            message_type, rows = to_rows(value)
            parts[message_type].append(rows)
        return {t: np.concatenate(rows) for t, rows in parts.items()}
    raise ValueError(f"unknown value format {value_format!r}")


def messages(array: np.ndarray) -> np.ndarray:
    """The ITCH message structs of `to_arrays` rows, without session and sequence (a copy with
    the dtype of feedhandler.itch.DTYPES)."""
    message_type = chr(array["message_type"][0][0]) if len(array) else None
    if message_type is None:
        raise ValueError("no rows")
    out = np.empty(len(array), DTYPES[message_type])
    for name in out.dtype.names:
        out[name] = array[name]
    return out


def read_topic(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> list:
    """Every record of a topic, from the beginning to its current end, partition by partition
    (the confluent_kafka Message objects, in offset order within each partition): a list in
    memory, not in feed order; `read` is the reader for ticks."""
    consumer = Consumer({**READ_SETTINGS, "bootstrap.servers": bootstrap_servers})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        partitions = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout)
            if high > low:
                partitions.append(TopicPartition(topic, partition, low))
        consumer.assign(partitions)
        remaining = {tp.partition for tp in partitions}
        messages = []
        deadline = time.monotonic() + timeout
        while remaining:
            # consume() waits for the whole batch or the timeout: keep each wait short.
            batch = consumer.consume(10_000, timeout=0.2)
            if not batch and time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(remaining)} not read to the end "
                                   f"within {timeout} s")
            for message in batch:
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                else:
                    raise RuntimeError(error.str())
        return messages
    finally:
        consumer.close()


# ---- the feed-order reader --------------------------------------------------------------------

class ReadError(Exception):
    """Kafka unreachable, or a topic that is not there (one line)."""


def start_position(text: str):
    """`beginning`, `end`, `seq:N` (sequence N), or a time: ISO 8601 date and time
    (exchange time unless it names its zone) or HH:MM[:SS] today in exchange time. Returns
    "beginning", "end", ("sequence", N) or ("time", epoch ms); ValueError otherwise."""
    if text in ("beginning", "end"):
        return text
    if text.startswith("seq:"):
        number = text[4:]
        if not number.isdigit():
            raise ValueError(f"seq:N needs a sequence number, got {text!r}")
        return "sequence", int(number)
    try:
        if len(text) <= 8 and ":" in text:
            clock = dt.time.fromisoformat(text)
            when = dt.datetime.combine(dt.datetime.now(EXCHANGE_TIMEZONE).date(), clock)
        else:
            when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected beginning, end, seq:N or a time (HH:MM[:SS] or ISO 8601), "
                         f"got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=EXCHANGE_TIMEZONE)
    return "time", int(when.timestamp() * 1000)


def schema_topic_of(topic: str) -> str:
    """The schema topic of a data topic named `<prefix><category>`: `<prefix>schema`, where
    the prefix runs to the topic's last dot."""
    return topic[:topic.rfind(".") + 1] + "schema"


class _Partition:
    """One partition's ticks received and not yet released, and how far they are complete."""

    def __init__(self, end: int | None, done: bool):
        self.pending: dict[str, list[np.ndarray]] = defaultdict(list)
        self.arrivals: list[tuple[float, int]] = []    # (time, highest sequence) per batch
        self.count = 0
        self.complete_through = -1  # every tick of this partition up to here has arrived
        self.end = end              # offset where a read that does not follow stops
        self.done = done
        self.paused = False


class FeedReader:
    """Records of one or more topics merged back into feed order, chunk by chunk.

    Every partition holds its ticks in feed order (per-tick formats: one record per tick;
    `batched` and `arrow`: one record per message type per release, releases in order). So
    once a partition has delivered the tick with sequence S (batched, arrow: a record whose release starts
    at F, making S = F - 1), nothing that partition will still deliver is at or below S. The
    reader keeps each partition's received ticks and releases, as one chunk, every tick at or
    below the smallest such S over the partitions that are not at their end: a k-way merge done
    a batch at a time, with numpy. A partition at its end (the high-water mark the read started
    with; in follow mode never) stops holding the others back.

    In follow mode a quiet partition would hold everything back forever, so a tick is also
    released once it has waited `settle` seconds; a record that reaches its partition more than
    `settle` later than ticks after it comes out in a later chunk (counted in `late`).

    Memory: about `max_buffered` ticks are held at most (each poll asks for no more records
    than are left of it; a `batched` record counts as one), besides librdkafka's own fetch
    queue (`queued.max.messages.kbytes` in `settings`); a partition holding more than its share
    is paused (it is never the one holding the merge back: the ticks of the partition that
    holds the merge back all go out at the next release). Ticks of several sessions (days) in one topic are merged by
    sequence number as if they were one session; start at the day's first record instead.

    Chunks are {message type: array of TICK_DTYPES[type]} (every format, `batched` and `arrow` rows with
    the session from their header), rows of each type in feed order; `output="decoded"` gives
    `decode(chunk)` instead and `output="pandas"` `to_frame(chunk)`."""

    def __init__(self, bootstrap_servers: str, topics, start="beginning", *,
                 follow: bool = False, value_format: str | None = None,
                 output: str = "arrays", trade_date: dt.date | None = None,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, settle: float = SETTLE,
                 timeout: float = 30.0, settings: dict | None = None):
        if output not in ("arrays", "decoded", "pandas"):
            raise ValueError(f"output must be arrays, decoded or pandas, not {output!r}")
        if value_format is not None and value_format not in VALUE_FORMATS:
            raise ValueError(f"unknown value format {value_format!r}")
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.start = start_position(start) if isinstance(start, str) else start
        self.follow, self.output, self.trade_date = follow, output, trade_date
        self.max_buffered, self.settle, self.timeout = max_buffered, settle, timeout
        self.settings = {**READ_SETTINGS, **(settings or {}), "bootstrap.servers": bootstrap_servers}
        self.records = 0        # records read
        self.ticks = 0          # ticks released
        self.late = 0           # follow mode: ticks released behind a later one
        self.pauses = 0         # times a partition was paused for holding too much
        self.most_held = 0      # the most ticks held for the merge at once
        self._released_through = -1
        self._consumer = Consumer(self.settings)
        try:
            self.value_format = value_format or self._format_from_schema()
            if problem := unavailable(self.value_format):
                raise ReadError(problem)
            self._partitions = self._assign()
        except BaseException:
            self._consumer.close()
            raise

    # ---- setup ------------------------------------------------------------------------------
    def _metadata(self, topics):
        try:
            found = {t: self._consumer.list_topics(t, timeout=self.timeout).topics[t]
                     for t in topics}
        except KafkaException as error:
            raise ReadError(f"Kafka at {self.settings['bootstrap.servers']} did not answer: "
                            f"{error.args[0].str()}") from None
        missing = [t for t, m in found.items() if m.error is not None or not m.partitions]
        if missing:
            raise ReadError(f"no such topic: {', '.join(missing)}")
        return found

    def _format_from_schema(self) -> str:
        from feedhandler.kafka.contract import read_schemas

        formats = set()
        for schema_topic in {schema_topic_of(t) for t in self.topics}:
            try:
                self._metadata([schema_topic])
            except ReadError:
                raise ReadError(f"no schema topic {schema_topic} says the format of "
                                f"{', '.join(self.topics)}: name it") from None
            schemas = read_schemas(self.settings["bootstrap.servers"], schema_topic,
                                   self.timeout)
            for topic in self.topics:
                if schema_topic_of(topic) == schema_topic and topic in schemas:
                    formats.add(schemas[topic]["format"])
                    if schemas[topic]["version"] != 1:
                        raise ReadError(f"{topic}: format version {schemas[topic]['version']} "
                                        f"is newer than this reader's")
        if len(formats) != 1:
            raise ReadError(f"the schema topic does not give one format for {self.topics} "
                            f"(found {sorted(formats) or 'none'}): name it")
        return formats.pop()

    def _assign(self) -> dict:
        """Assign every partition at the start position; a read that does not follow ends at
        the high-water marks of this moment."""
        metadata = self._metadata(self.topics)
        assignment, partitions, bounds = [], {}, {}
        for topic, meta in metadata.items():
            for number in meta.partitions:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, number),
                                                                 timeout=self.timeout)
                if self.start == "end":
                    offset, first = OFFSET_END, high
                elif isinstance(self.start, tuple) and self.start[0] == "time":
                    offset = self._offset_at(topic, number)
                    first = high if offset == OFFSET_END else offset
                else:
                    offset, first = OFFSET_BEGINNING, low
                partitions[topic, number] = _Partition(None if self.follow else high,
                                                       done=not self.follow and first >= high)
                assignment.append(TopicPartition(topic, number, offset))
                bounds[topic, number] = (low, high)
        if isinstance(self.start, tuple) and self.start[0] == "sequence":
            # Ticks before the sequence number are still dropped as they arrive (_hold): the
            # seek lands on a record, and a grouped record starts before it.
            starts = self._offsets_of_sequence(bounds, self.start[1])
            assignment = [TopicPartition(tp.topic, tp.partition, starts[tp.topic, tp.partition])
                          for tp in assignment]
            for key, offset in starts.items():
                partitions[key].done = not self.follow and offset >= bounds[key][1]
        self._consumer.assign(assignment)
        return partitions

    def _offsets_of_sequence(self, bounds: dict, sequence: int) -> dict:
        """Per partition, the offset to start at for ticks from `sequence` on: a binary search
        over offsets, all partitions in step (one record fetched per partition and step),
        since a partition holds its ticks in feed order. Per-tick formats: the first record
        whose tick is at or after `sequence`. Grouped formats (the `first` header gives a
        release's first sequence number): the first record of the last release that starts
        at or before it. A topic holding several sessions is not in one order; start those
        at the beginning of the day instead."""
        grouped = self.value_format in GROUPED_FORMATS
        # the first offset whose key reaches `target`: [lo, hi) still open
        searches = {key: [low, high] for key, (low, high) in bounds.items() if high > low}
        starts = {key: bounds[key][0] for key in bounds}

        def search(target_of):
            open_ = dict(searches)
            found = {}
            while open_:
                probes = {key: (lo + hi) // 2 for key, (lo, hi) in open_.items()}
                keys = self._probe(probes)
                for key, middle in probes.items():
                    lo, hi = open_[key]
                    if keys[key] is not None and keys[key] >= target_of(key):
                        hi = middle
                    else:
                        lo = middle + 1
                    if lo >= hi:
                        found[key] = lo
                        del open_[key]
                    else:
                        open_[key] = [lo, hi]
            return found

        if not grouped:
            starts.update(search(lambda key: sequence))
            return starts
        # Grouped: the first record of a release after the sequence number, then the last
        # release starting at or before it, then that release's first record.
        after = search(lambda key: sequence + 1)
        release = {}
        before = {key: offset - 1 for key, offset in after.items() if offset > bounds[key][0]}
        for key, first in self._probe(before).items():
            release[key] = first if first is not None else sequence
        starts.update(search(lambda key: release.get(key, 0)))
        return starts

    def _probe(self, offsets: dict) -> dict:
        """The sequence key of the first record at or after each (topic, partition)'s offset:
        its tick's sequence number, or a grouped record's `first` header; None past the end."""
        if not offsets:
            return {}
        self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in offsets.items()])
        keys = {}
        deadline = time.monotonic() + self.timeout
        try:
            while len(keys) < len(offsets):
                if time.monotonic() > deadline:
                    raise ReadError(f"no record within {self.timeout} s while seeking seq:"
                                    f"{self.start[1]}")
                for message in self._consumer.consume(len(offsets), timeout=0.1):
                    key = (message.topic(), message.partition())
                    if key in keys:
                        continue
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        keys[key] = None
                    elif error is not None:
                        raise ReadError(error.str())
                    elif self.value_format in GROUPED_FORMATS:
                        keys[key] = int(dict(message.headers() or ()).get("first", 0))
                    else:
                        rows = next(iter(to_arrays([message.value()],
                                                   self.value_format).values()))
                        keys[key] = int(rows["sequence"][0])
                    self._consumer.pause([TopicPartition(*key)])    # its one record is in
        finally:
            # librdkafka keeps a partition's pause across assignments
            self._consumer.resume([TopicPartition(*key) for key in keys])
            self._consumer.unassign()
        return keys

    def _offset_at(self, topic: str, partition: int) -> int:
        found = self._consumer.offsets_for_times(
            [TopicPartition(topic, partition, self.start[1])], timeout=self.timeout)[0]
        return OFFSET_END if found.offset < 0 else found.offset

    # ---- reading ------------------------------------------------------------------------------
    def __iter__(self):
        try:
            while True:
                held = sum(p.count for p in self._partitions.values())
                batch = self._consumer.consume(
                    max(1, min(POLL_RECORDS, self.max_buffered - held)), timeout=0.1)
                self._take(batch)
                chunk = self._release(all(p.done for p in self._partitions.values()))
                if chunk:
                    yield self._shaped(chunk)
                if not self.follow and all(p.done for p in self._partitions.values()):
                    return
                self._pace()
        finally:
            self.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def _take(self, batch) -> None:
        by_partition = defaultdict(list)
        for message in batch:
            error = message.error()
            key = (message.topic(), message.partition())
            if error is None:
                by_partition[key].append(message)
                end = self._partitions[key].end
                if end is not None and message.offset() >= end - 1:
                    self._partitions[key].done = True
            elif error.code() == KafkaError._PARTITION_EOF:
                if not self.follow:
                    self._partitions[key].done = True
            else:
                raise ReadError(error.str())
        now = time.monotonic()
        for key, messages in by_partition.items():
            self.records += len(messages)
            if self.trade_date is None:
                self.trade_date = self._trade_date_of(messages[0])
            self._hold(self._partitions[key], messages, now)
        self.most_held = max(self.most_held, sum(p.count for p in self._partitions.values()))

    def _trade_date_of(self, message) -> dt.date:
        """The ticks' trade date: an arrow record's own (its `time` column is on the handler's
        --trade-date), otherwise the date in New York of the record's timestamp."""
        if self.value_format == "arrow":
            from feedhandler.kafka.arrow_format import trade_date
            return trade_date(message.value())
        return dt.datetime.fromtimestamp(message.timestamp()[1] / 1000, EXCHANGE_TIMEZONE).date()

    def _hold(self, partition: _Partition, messages, now: float) -> None:
        if self.value_format in GROUPED_FORMATS:
            arrays = defaultdict(list)
            for message in messages:
                headers = dict(message.headers() or ())
                message_type, rows = _grouped_rows(message.value(), self.value_format,
                                                   headers.get("session", b""))
                arrays[message_type].append(rows)
                partition.complete_through = max(partition.complete_through,
                                                 int(headers.get("first", 1)) - 1)
            arrays = {t: np.concatenate(parts) for t, parts in arrays.items()}
        else:
            arrays = to_arrays([m.value() for m in messages], self.value_format)
        highest = -1
        for message_type, rows in arrays.items():
            if isinstance(self.start, tuple) and self.start[0] == "sequence":
                rows = rows[rows["sequence"] >= self.start[1]]
            if len(rows):
                partition.pending[message_type].append(rows)
                partition.count += len(rows)
                highest = max(highest, int(rows["sequence"].max()))
        if self.value_format not in GROUPED_FORMATS:
            partition.complete_through = max(partition.complete_through, highest)
        if highest >= 0:
            partition.arrivals.append((now, highest))

    def _release(self, everything: bool) -> dict[str, np.ndarray]:
        """Every held tick at or below the release point, per type, in feed order."""
        through = min((p.complete_through for p in self._partitions.values() if not p.done),
                      default=None)
        if everything or through is None:
            through = np.iinfo(np.uint64).max
        if self.follow:
            settled = time.monotonic() - self.settle
            for p in self._partitions.values():
                while p.arrivals and p.arrivals[0][0] <= settled:
                    through = max(through, p.arrivals.pop(0)[1])
        out = defaultdict(list)
        for p in self._partitions.values():
            for message_type, parts in list(p.pending.items()):
                rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
                ready = rows["sequence"] <= through
                if ready.all():
                    del p.pending[message_type]
                elif ready.any():
                    p.pending[message_type] = [rows[~ready]]
                else:
                    p.pending[message_type] = [rows]
                    continue
                out[message_type].append(rows[ready])
                p.count -= int(ready.sum())
            p.arrivals = [a for a in p.arrivals if a[1] > through]
        chunk = {}
        for message_type, parts in out.items():
            rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
            rows = rows[np.argsort(rows["sequence"], kind="stable")]
            chunk[message_type] = rows
            self.ticks += len(rows)
            self.late += int((rows["sequence"] <= self._released_through).sum())
        if chunk:
            self._released_through = max(self._released_through,
                                         max(int(r["sequence"][-1]) for r in chunk.values()))
        return chunk

    def _pace(self) -> None:
        """Pause the partitions holding more than their share of max_buffered, resume the
        others."""
        share = max(1, self.max_buffered // len(self._partitions))
        for (topic, number), p in self._partitions.items():
            full = p.count > share
            if full != p.paused:
                (self._consumer.pause if full else self._consumer.resume)(
                    [TopicPartition(topic, number)])
                p.paused = full
                self.pauses += full

    def _shaped(self, chunk):
        if self.output == "arrays":
            return chunk
        if self.output == "decoded":
            return decode(chunk, self.trade_date)
        return to_frame(chunk, self.trade_date)


def read(bootstrap_servers: str, topics, start="beginning", **options) -> FeedReader:
    """The ticks of `topics` in feed order: an iterator of chunks (FeedReader). `start`:
    "beginning", "end", "seq:N", or a time (see start_position); `follow=True` keeps reading
    as records arrive; `value_format` (default: from the topics' schema records), `output`
    ("arrays", "decoded", "pandas"), `trade_date` (default: an arrow record's own, otherwise
    the first record timestamp's date in New York), `max_buffered` ticks."""
    return FeedReader(bootstrap_servers, topics, start, **options)


def _grouped_rows(value: bytes, value_format: str, session: bytes) -> tuple[str, np.ndarray]:
    """(message type, rows as TICK_DTYPES rows) of a batched or arrow record, the session from
    its header."""
    if value_format == "arrow":
        from feedhandler.kafka.arrow_format import to_rows
        message_type, rows = to_rows(value)
    else:
        message_type = chr(value[8])
        rows = np.frombuffer(value, BATCH_DTYPES[message_type])
    out = np.empty(len(rows), TICK_DTYPES[message_type])
    out["session"] = session
    for name in rows.dtype.names:
        out[name] = rows[name]
    return message_type, out


# ---- decoded values ---------------------------------------------------------------------------

def midnight_ns(trade_date: dt.date) -> int:
    """Nanoseconds since the epoch of midnight in New York on `trade_date`."""
    midnight = dt.datetime.combine(trade_date, dt.time(), EXCHANGE_TIMEZONE)
    return int(midnight.timestamp()) * 1_000_000_000


def _decoded_dtype(message_type: str) -> np.dtype:
    from feedhandler.kafka.contract import price_decimals

    fields = []
    for name in TICK_DTYPES[message_type].names:
        field = TICK_DTYPES[message_type][name]
        if field.kind == "S":
            fields.append((name, f"U{field.itemsize}"))
        elif name in DTYPES[message_type].names and price_decimals(message_type, name):
            fields.append((name, "f8"))
        else:
            fields.append((name, field))
        if name == "timestamp":
            fields.append(("time", "datetime64[ns]"))
    return np.dtype(fields)


def decode(chunk: dict[str, np.ndarray], trade_date: dt.date) -> dict[str, np.ndarray]:
    """Rows as a person reads them: alpha fields as trimmed str, prices as float (the integer
    divided by 10**decimals: 4, or 8 for the MWCB levels), and `time`, the ITCH timestamp on
    `trade_date` as a UTC datetime64 (the exchange time is America/New_York)."""
    from feedhandler.kafka.contract import price_decimals

    base = midnight_ns(trade_date)
    out = {}
    for message_type, rows in chunk.items():
        decoded = np.empty(len(rows), _decoded_dtype(message_type))
        for name in rows.dtype.names:
            column = rows[name]
            if column.dtype.kind == "S":
                decoded[name] = np.char.rstrip(np.char.decode(column, "latin-1"), " ")
            elif name in DTYPES[message_type].names and \
                    (decimals := price_decimals(message_type, name)):
                decoded[name] = column / 10 ** decimals
            else:
                decoded[name] = column
        decoded["time"] = (rows["timestamp"].astype(np.int64) + base).view("datetime64[ns]")
        out[message_type] = decoded
    return out


def to_frame(chunk: dict[str, np.ndarray], trade_date: dt.date):
    """One pandas DataFrame of a chunk, one row per tick in feed order, decoded as by `decode`
    with `time` in America/New_York; fields a type does not have are missing (NaN/None).
    pandas is imported only here (an optional dependency)."""
    import pandas as pd

    frames = [pd.DataFrame(rows) for rows in decode(chunk, trade_date).values()]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True).sort_values("sequence", kind="stable")
    frame["time"] = frame["time"].dt.tz_localize("UTC").dt.tz_convert(EXCHANGE_TIMEZONE)
    return frame.reset_index(drop=True)

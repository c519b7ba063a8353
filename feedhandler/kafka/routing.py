"""Where each tick goes in Kafka: topic by message category, key by stock, value by format."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from feedhandler.kafka import _batched, _records
from feedhandler.wire.itch import DTYPES, encode
from feedhandler.wire.packet import Packet

CATEGORIES = {
    "orders": "AFECXDU",
    "trades": "PQB",
    "reference": "SRHYLVWKJhO",
    "noii": "IN",
}
VALUE_FORMATS = ("struct", "json", "raw", "batched", "arrow")
GROUPED_FORMATS = ("batched", "arrow")
"""Formats with one record per message type and partition for the frames released together
(`batched_records`); the others have one record per tick."""
LOCATES = 65536


def _behind(header: np.dtype) -> dict[str, np.dtype]:
    """Each message type's struct dtype with `header`'s fields in front of it."""
    def fields(dtype: np.dtype, shift: int = 0) -> list[tuple[str, np.dtype, int]]:
        return [(name, dtype.fields[name][0], shift + dtype.fields[name][1])
                for name in dtype.names]
    return {message_type: np.dtype({
        "names": [f[0] for f in fields(header) + fields(dtype)],
        "formats": [f[1] for f in fields(header) + fields(dtype)],
        "offsets": [f[2] for f in fields(header) + fields(dtype, header.itemsize)],
        "itemsize": header.itemsize + dtype.itemsize}) for message_type, dtype in DTYPES.items()}


BATCH_DTYPES = _behind(np.dtype([("sequence", "<u8")]))
"""Rows of the batched value format: the sequence number, then the message's struct."""

TICK_HEADER_SIZE = _records.TICK_HEADER_SIZE_BYTES
TICK_HEADER_DTYPE = np.dtype([("session", "S10"), ("sequence", "<u8")])
"""The tick header in front of every per-tick `struct` and `raw` value (ext/record_layout.pxd)."""
TICK_DTYPES = _behind(TICK_HEADER_DTYPE)
"""Per-tick `struct` values: the tick header, then the message's struct."""


@dataclass(frozen=True)
class Routes:
    """Message type -> topic, plus the dead-letter topic for quarantined input, the
    compacted checkpoint topic that lets a restarted handler resume (feedhandler.kafka.resume)
    and the compacted schema topic that describes every data topic's values
    (feedhandler.kafka.contract; None: no schema records)."""

    topic_of_type: dict[str, str]
    dead_letter: str
    checkpoint: str
    schema: str | None = None

    @classmethod
    def by_category(cls, prefix: str = "itch.", overrides: dict[str, str] | None = None,
                    dead_letter: str = "deadletter", checkpoint: str = "checkpoint",
                    schema: str = "schema") -> Routes:
        """Topics `<prefix><category>`; `overrides` maps a message type or a category name to
        another category or topic suffix (e.g. {"I": "orders", "noii": "reference"})."""
        overrides = overrides or {}
        topic_of_type = {}
        for category, types in CATEGORIES.items():
            for message_type in types:
                target = overrides.get(message_type, overrides.get(category, category))
                topic_of_type[message_type] = prefix + target
        unknown = set(overrides) - set(DTYPES) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown message types or categories in routes: {sorted(unknown)}")
        return cls(topic_of_type, prefix + dead_letter, prefix + checkpoint, prefix + schema)

    @property
    def topics(self) -> list[str]:
        """The topics that ticks go to."""
        return sorted(set(self.topic_of_type.values()))

    @property
    def every_topic(self) -> list[str]:
        """Tick topics, the dead-letter, checkpoint and schema topics."""
        return [*self.topics, self.dead_letter, self.checkpoint,
                *([self.schema] if self.schema else [])]


STOCK_TYPES = tuple(t for t, dtype in DTYPES.items() if "stock" in dtype.names)
"""Message types that carry their stock's name as well as its locate code."""
STOCK_FIELDS = tuple((t, DTYPES[t].fields["stock"][1]) for t in STOCK_TYPES)
"""(message type, offset of its `stock` field) for StockDirectory.learn."""


class StockDirectory:
    """Record key of every stock locate code: the stock's name, as every message that carries
    one reveals it (Stock Directory `R`, but also adds, trades, NOII, ...), so that a handler
    joining mid-session keys a stock's ticks the same as one that saw the directory.

    Until a locate's name has been seen its key is `#<locate>` (stable, so its ticks still
    share one partition); system-wide messages use locate 0, key `#0`. `entries()` and
    `restore()` carry the learned names across a restart."""

    def __init__(self):
        self.keys: list[bytes] = [b"#%d" % locate for locate in range(LOCATES)]
        self.hashes = np.array([_records.murmur2(k) & 0xFFFFFFFF for k in self.keys], np.uint32)
        self.known = np.zeros(LOCATES, bool)
        self._known_bytes = self.known.view(np.uint8)

    def learn(self, messages) -> None:
        """Learn the names that a packet's messages (`Packet.messages`) carry: one call into C
        per packet, which finds the few rows of locates not named yet."""
        for locate, key in _records.unknown_stocks(messages, STOCK_FIELDS, self._known_bytes):
            self._name(locate, key)

    def learn_packets(self, packets: list[Packet]) -> None:
        """`learn` each of `packets` in turn, in one call into C that reads their rows where
        decoding left them (their arrays are not made)."""
        for locate, key in _batched.unknown_stocks(packets, STOCK_FIELDS, self._known_bytes):
            self._name(locate, key)

    def update(self, directory: np.ndarray) -> None:
        """Rows with `stock_locate` and `stock` fields name their locates."""
        for locate, stock in zip(directory["stock_locate"].tolist(), directory["stock"].tolist()):
            self._name(locate, stock.rstrip(b" "))

    def entries(self) -> dict[int, bytes]:
        """Every locate whose name is known."""
        return {int(locate): self.keys[locate] for locate in np.flatnonzero(self.known)}

    def restore(self, entries: dict[int, bytes]) -> None:
        for locate, key in entries.items():
            self._name(locate, key)

    def _name(self, locate: int, key: bytes) -> None:
        self.keys[locate] = key
        self.hashes[locate] = _records.murmur2(key) & 0xFFFFFFFF
        self.known[locate] = True


def json_value(row: tuple, names: tuple, session: bytes, sequence: int) -> bytes:
    fields = {"session": session.decode("ascii").rstrip(), "sequence": sequence}
    for name, value in zip(names, row):
        fields[name] = value.decode("latin-1").rstrip(" ") if isinstance(value, bytes) else value
    return json.dumps(fields, separators=(",", ":")).encode()


def json_records(packet: Packet, topic_index: dict[str, int], topics: int,
                 directory: StockDirectory, timestamp_base_ms: int,
                 with_metadata: bool = False) -> list[list[dict]]:
    """The `json` value format: one self-describing object per tick, in feed order per topic."""
    ticks = []
    for message_type, records in packet.messages.items():
        names = DTYPES[message_type].names
        for row, sequence in zip(records.tolist(), packet.sequences[message_type].tolist()):
            ticks.append((sequence, message_type, row, names))
    ticks.sort(key=lambda tick: tick[0])
    out: list[list[dict]] = [[] for _ in range(topics)]
    for sequence, message_type, row, names in ticks:
        record = {"value": json_value(row, names, packet.session, sequence),
                  "key": directory.keys[row[1]]}
        if with_metadata:
            record.update(type=message_type.encode(), sequence=sequence,
                          timestamp=timestamp_base_ms + row[3] // 1_000_000)
        out[topic_index[message_type]].append(record)
    return out


def raw_blocks(packet: Packet) -> dict[str, bytes]:
    """The `raw` value format's source: each type's messages in NASDAQ file framing."""
    return {t: encode(records) for t, records in packet.messages.items()}


def tick_records(packet: Packet, value_format: str, topic_index: dict[str, int], topics: int,
                 directory: StockDirectory, timestamp_base_ms: int,
                 with_metadata: bool = False) -> list[list[dict]]:
    """produce_batch dicts for the per-tick formats, grouped by topic index, feed order.
    `with_metadata` adds "type", "sequence" and "timestamp", for records sent by produce()."""
    if value_format == "json":
        return json_records(packet, topic_index, topics, directory, timestamp_base_ms,
                            with_metadata)
    raw = raw_blocks(packet) if value_format == "raw" else None
    return _records.tick_records(packet.messages, packet.sequences, packet.sequence, packet.count,
                                 topic_index, topics, directory.keys, packet.session,
                                 timestamp_base_ms, raw, with_metadata)


def batched_records(packets: list[Packet], topic_of_type: dict[str, str],
                    partitions: dict[str, int], directory: StockDirectory) -> list[tuple]:
    """The `batched` format for consecutive packets: (topic, partition, message type, rows
    bytes) per message type and partition; rows are BATCH_DTYPES[type], in feed order. Types
    come in order of first appearance, partitions in ascending order."""
    return _batched.release_rows(packets, topic_of_type, partitions, directory.hashes)

"""The `arrow` value format: each batched record's rows as one Arrow IPC stream.

A record value is a complete Arrow IPC stream (the schema, one record batch, the end-of-stream
marker), so `pyarrow.ipc.open_stream(value).read_all()` reads it, and so does anything that
reads Arrow streams (DuckDB over the pyarrow table, arrow-java's ArrowStreamReader, ...). The
records are those of `batched` (one per message type and partition for the frames released
together, same keys, headers and resume rules); only the value differs. Its columns are
`contract.arrow_columns(type)`, derived from the batched row (`routing.BATCH_DTYPES`).

The columns are built from the numpy rows without a Python object per value: integers are the
row's fields made contiguous; a decimal128 is 16 bytes, its low 8 the unsigned integer and its
high 8 zero; a string column is the fixed-width bytes with offsets every field width,
right-trimmed of spaces by Arrow's kernel; `time` is the trade date's midnight in New York
plus `timestamp`.

pyarrow is an optional dependency (`pip install 'feedhandler[arrow]'`): only this module
imports it, and only the `arrow` format imports this module.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedhandler.kafka.contract import EXCHANGE_TIMEZONE_NAME, arrow_columns, marker
from feedhandler.kafka.routing import BATCH_DTYPES

SPACE = 0x20
FORMAT_METADATA = b"fh.format"
TYPE_METADATA = b"fh.message_type"
BATCH_METADATA_BYTES = 1024     # a record batch's own message header, at most, besides its buffers
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"    # continuation marker, length 0


def arrow_type(column: dict) -> pa.DataType:
    """The pyarrow type of a column of `contract.arrow_columns`."""
    kind = column["type"]
    if kind == "decimal128":
        return pa.decimal128(column["precision"], column["scale"])
    if kind == "timestamp":
        return pa.timestamp(column["unit"], tz=column["timezone"])
    return getattr(pa, kind)()     # utf8, uint8 ... uint64


@cache
def schema(message_type: str) -> pa.Schema:
    """The Arrow schema of `message_type`'s records; its metadata names the format and type."""
    return pa.schema([pa.field(c["name"], arrow_type(c), nullable=False)
                      for c in arrow_columns(message_type)],
                     metadata={FORMAT_METADATA: marker("arrow").encode(),
                               TYPE_METADATA: message_type.encode()})


@cache
def row_bytes(message_type: str) -> int:
    """The most bytes a row takes in a record batch (a string column: its offset and its
    untrimmed width)."""
    def size(column: dict) -> int:
        if column["type"] == "utf8":
            return 4 + column["width"]
        return arrow_type(column).bit_width // 8
    return sum(size(c) for c in arrow_columns(message_type))


def rows_per_record(message_type: str, max_record_bytes: int) -> int:
    """How many rows fit a record of at most `max_record_bytes` (at least one)."""
    room = max_record_bytes - len(_schema_message(message_type)) - BATCH_METADATA_BYTES \
        - len(END_OF_STREAM)
    return max(1, room // row_bytes(message_type))


def _strings(column: np.ndarray) -> pa.Array:
    """Fixed-width space-padded bytes as a UTF-8 string array, trailing spaces dropped: the
    padded bytes as they are, offsets every `width` bytes, trimmed by Arrow's kernel (a
    numpy trim costs more: its gather of the kept bytes alone does)."""
    padded = np.ascontiguousarray(column)
    count, width = len(padded), padded.dtype.itemsize
    if (padded.view(np.uint8) >= 0x80).any():   # not ASCII, as ITCH says: Latin-1, like `json`
        return pa.array(np.char.rstrip(np.char.decode(padded, "latin-1"), " "), pa.utf8())
    offsets = np.arange(0, (count + 1) * width, width, dtype=np.int32)
    text = pa.Array.from_buffers(pa.utf8(), count, [None, pa.py_buffer(offsets),
                                                    pa.py_buffer(padded)])
    return pc.ascii_rtrim(text, " ")


def _decimals(column: np.ndarray, kind: pa.DataType) -> pa.Array:
    """Unsigned integers as decimal128 (little-endian 128-bit two's complement)."""
    out = np.zeros((len(column), 2), np.uint64)
    out[:, 0] = column
    return pa.Array.from_buffers(kind, len(column), [None, pa.py_buffer(out)])


def record_batch(message_type: str, rows: np.ndarray, midnight_ns: int) -> pa.RecordBatch:
    """`rows` (BATCH_DTYPES[message_type]) as a record batch; `midnight_ns`: nanoseconds since
    the epoch of midnight in New York on the trade date."""
    target = schema(message_type)
    arrays = []
    for field in target:
        kind = field.type
        if field.name == "time":
            times = rows["timestamp"].astype(np.int64) + np.int64(midnight_ns)
            arrays.append(pa.Array.from_buffers(kind, len(rows), [None, pa.py_buffer(times)]))
        elif pa.types.is_string(kind):
            arrays.append(_strings(rows[field.name]))
        elif pa.types.is_decimal(kind):
            arrays.append(_decimals(rows[field.name], kind))
        else:
            arrays.append(pa.array(np.ascontiguousarray(rows[field.name]), kind))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def encode(message_type: str, rows: np.ndarray, midnight_ns: int) -> bytes:
    """One record value of `rows`: an IPC stream of the schema and one record batch."""
    return _stream(message_type, record_batch(message_type, rows, midnight_ns))


def encode_parts(message_type: str, parts: list, midnight_ns: int,
                 max_record_bytes: int) -> list[list[bytes]]:
    """The record values of one message type's rows for several partitions (`parts`: rows
    bytes of BATCH_DTYPES[type] each), a list of values per part: the columns are built
    once for all the parts (building them costs about ten times what writing a slice does),
    and each part's rows become one value, or several where a record would exceed
    `max_record_bytes`."""
    dtype = BATCH_DTYPES[message_type]
    rows = np.frombuffer(b"".join(parts) if len(parts) > 1 else parts[0], dtype)
    batch = record_batch(message_type, rows, midnight_ns)
    step = rows_per_record(message_type, max_record_bytes)
    values, first = [], 0
    for part in parts:
        end = first + len(part) // dtype.itemsize
        values.append([_stream(message_type, batch.slice(start, min(step, end - start)))
                       for start in range(first, end, step)])
        first = end
    return values


@cache
def _schema_message(message_type: str) -> bytes:
    return schema(message_type).serialize().to_pybytes()


def _stream(message_type: str, batch: pa.RecordBatch) -> bytes:
    """The IPC stream format written out: the schema message, the record batch message (each
    with its continuation marker and length), and the end-of-stream marker; the same for
    every reader as `pyarrow.ipc.new_stream`, without its per-stream set-up cost."""
    return b"".join((_schema_message(message_type), batch.serialize(), END_OF_STREAM))


def read(value) -> pa.Table:
    """A record value as a pyarrow Table."""
    return pa.ipc.open_stream(value).read_all()


def message_type_of(table: pa.Table) -> str:
    return table.schema.metadata[TYPE_METADATA].decode()


def trade_date(value) -> dt.date:
    """The trade date a record's `time` column is on (`time` - `timestamp` is its midnight)."""
    table = read(value)
    midnight_ns = table.column("time")[0].value - table.column("timestamp")[0].as_py()
    return dt.datetime.fromtimestamp(midnight_ns // 1_000_000_000,
                                     ZoneInfo(EXCHANGE_TIMEZONE_NAME)).date()


def row_count(value) -> int:
    return read(value).num_rows


def last_sequence(value) -> int:
    """The sequence number of a record's last row (rows are in feed order)."""
    return read(value).column("sequence")[-1].as_py()


def _padded(column: pa.Array, width: int) -> np.ndarray:
    """A string column back as fixed-width space-padded bytes (Latin-1, as written)."""
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
    data = np.frombuffer(column.buffers()[2], np.uint8) if column.buffers()[2] else \
        np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if (lengths > width).any() or (data[offsets[0]:offsets[-1]] >= 0x80).any():
        return np.array([text.encode("latin-1").ljust(width) for text in column.to_pylist()],
                        f"S{width}")
    grid = np.full((len(column), width), SPACE, np.uint8)
    grid[np.arange(width) < lengths[:, None]] = data[offsets[0]:offsets[-1]]
    return grid.view(f"S{width}").reshape(len(column))


def _unscaled(column: pa.Array) -> np.ndarray:
    """A decimal128 column's unscaled integers (their low 64 bits: every price fits)."""
    words = np.frombuffer(column.buffers()[1], np.uint64, 2 * len(column), column.offset * 16)
    return words[0::2]


def to_rows(value) -> tuple[str, np.ndarray]:
    """(message type, rows of BATCH_DTYPES[type]) of one record value: strings padded again,
    prices their integers, `time` left out (`timestamp` holds it)."""
    table = read(value)
    message_type = message_type_of(table)
    dtype = BATCH_DTYPES[message_type]
    rows = np.empty(table.num_rows, dtype)
    for name in dtype.names:
        column = table.column(name).combine_chunks()
        kind = column.type
        if pa.types.is_string(kind):
            rows[name] = _padded(column, dtype[name].itemsize)
        elif pa.types.is_decimal(kind):
            rows[name] = _unscaled(column)
        else:
            rows[name] = column.to_numpy()
    return message_type, rows

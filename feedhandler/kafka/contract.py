"""The format contract: what a record value holds, described once, for readers in any language.

Every value format's layout is derived here from the one definition of each layout (the message
structs of ext/itch_layout.pxd as `feedhandler.wire.itch.DTYPES`, the tick header of
ext/record_layout.pxd as `routing.TICK_HEADER_DTYPE`, the batched rows as
`routing.BATCH_DTYPES`), and published three ways:

- `arrow_columns(type)`: the columns of an `arrow` record, derived from the batched row;
- `schema(format, topic, types)`: a JSON document per data topic, written by the handler at
  start to the compacted `<prefix>schema` topic (key: the data topic's name), before any tick;
- `marker(format)`: `"<format>/<version>"`, also the `fh.format` header of every `batched`
  and `arrow` record (the only records that carry headers whatever the options; per-tick records do not
  get a header for it, since any header halves their produce rate);
- the byte tables of docs/kafka.md (`render_tables`, by scripts/wire_docs.py).

Byte order: little-endian, guaranteed by `feedhandler.kafka.byte_order` (the package refuses
a big-endian host); inside a `raw` value the ITCH message keeps its big-endian wire integers.
"""

from __future__ import annotations

import json

import numpy as np

from feedhandler.kafka.byte_order import BYTE_ORDER
from feedhandler.kafka.routing import BATCH_DTYPES, TICK_DTYPES, TICK_HEADER_DTYPE, VALUE_FORMATS
from feedhandler.wire.itch import DTYPES

FORMAT_VERSION = 1
"""Bumped by any change to the bytes of any value format (tests/fixtures/records hold them)."""
FORMAT_HEADER = "fh.format"
SCHEMA_SETTINGS = {"cleanup.policy": "compact"}
TYPE_NAMES = {
    "S": "System Event", "R": "Stock Directory", "H": "Stock Trading Action",
    "Y": "Reg SHO Short Sale Price Test Restricted Indicator",
    "L": "Market Participant Position", "V": "MWCB Decline Level", "W": "MWCB Status",
    "K": "IPO Quoting Period Update", "J": "LULD Auction Collar", "h": "Operational Halt",
    "A": "Add Order (no MPID attribution)", "F": "Add Order with MPID Attribution",
    "E": "Order Executed", "C": "Order Executed with Price", "X": "Order Cancel",
    "D": "Order Delete", "U": "Order Replace", "P": "Trade (non-cross)", "Q": "Cross Trade",
    "B": "Broken Trade", "I": "Net Order Imbalance Indicator (NOII)",
    "N": "Retail Price Improvement Indicator (RPII)", "O": "Direct Listing with Capital Raise",
}
"""Message type -> its name in the ITCH 5.0 specification."""
PAD = "space"       # fixed-width alpha fields: ASCII, left-aligned, padded with spaces
EXCHANGE_TIMEZONE_NAME = "America/New_York"     # the zone of ITCH's "since midnight"


def unavailable(value_format: str) -> str | None:
    """Why this Python cannot write or read `value_format` (one line), or None if it can:
    `arrow` needs the optional dependency pyarrow."""
    if value_format != "arrow":
        return None
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "--format arrow needs pyarrow, which is not installed here: " \
               "pip install 'feedhandler[arrow]'"
    return None


def marker(value_format: str) -> str:
    return f"{value_format}/{FORMAT_VERSION}"


def price_decimals(message_type: str, field: str) -> int | None:
    """Implied decimals of a price field (ITCH 5.0: Price(4); the MWCB levels of `V` are
    Price(8)); None for a field that is not a price."""
    if message_type == "V" and field.startswith("level_"):
        return 8
    kind = DTYPES[message_type][field].kind
    if kind == "u" and ("price" in field or field.endswith("_collar")):
        return 4
    return None


def _field(dtype: np.dtype, name: str, message_type: str | None, shift: int = 0,
           byte_order: str = BYTE_ORDER) -> dict:
    field, offset = dtype.fields[name][:2]
    out = {"name": name, "offset": offset + shift, "size": field.itemsize}
    if field.kind == "S":
        out.update(type="ascii", padding=PAD)
    else:
        out.update(type="uint", byte_order=byte_order)
    decimals = price_decimals(message_type, name) if message_type in DTYPES and \
        name in DTYPES[message_type].names else None
    if decimals is not None:
        out["decimals"] = decimals
    return out


def arrow_columns(message_type: str) -> list[dict]:
    """The columns of an `arrow` record of `message_type`, one per field of its batched row,
    in row order: integers as unsigned integers of their width, prices as decimal128 with
    their implied decimals as scale (precision: the digits of the integer's largest value),
    alpha fields as UTF-8 strings with the padding trimmed; after `timestamp` (nanoseconds
    since midnight) `time`, the same moment as a timestamp on the session's trade date."""
    columns = []
    dtype = BATCH_DTYPES[message_type]
    for name in dtype.names:
        field = dtype[name]
        decimals = price_decimals(message_type, name) if name in DTYPES[message_type].names \
            else None
        if field.kind == "S":
            columns.append({"name": name, "type": "utf8", "trimmed": True,
                            "width": field.itemsize})
        elif decimals is not None:
            columns.append({"name": name, "type": "decimal128",
                            "precision": len(str(np.iinfo(field).max)), "scale": decimals})
        else:
            columns.append({"name": name, "type": f"uint{8 * field.itemsize}"})
        if name == "timestamp":
            columns.append({"name": "time", "type": "timestamp", "unit": "ns",
                            "timezone": EXCHANGE_TIMEZONE_NAME})
    return columns


def arrow_type_text(column: dict) -> str:
    """A column's Arrow type as pyarrow writes it (`str(pyarrow type)`)."""
    if column["type"] == "decimal128":
        return f"decimal128({column['precision']}, {column['scale']})"
    if column["type"] == "timestamp":
        return f"timestamp[{column['unit']}, tz={column['timezone']}]"
    return "string" if column["type"] == "utf8" else column["type"]


def _fields(dtype: np.dtype, message_type: str | None = None) -> list[dict]:
    return [_field(dtype, name, message_type) for name in dtype.names]


def _wire_fields(message_type: str, shift: int) -> list[dict]:
    """The ITCH message as it came off the wire: big-endian, the timestamp in 6 bytes."""
    fields, offset = [], shift
    dtype = DTYPES[message_type]
    for name in dtype.names:
        field = _field(dtype, name, message_type, byte_order="big")
        field["offset"] = offset
        if name == "timestamp":
            field["size"] = 6
        offset += field["size"]
        fields.append(field)
    return fields


def layouts(value_format: str, message_types) -> dict:
    """The per-type layouts of one value format (offsets from the start of the value, or of
    a row for `batched`)."""
    if value_format == "struct":
        return {t: {"name": TYPE_NAMES[t], "size": TICK_DTYPES[t].itemsize,
                    "fields": _fields(TICK_DTYPES[t], t)} for t in message_types}
    if value_format == "batched":
        return {t: {"name": TYPE_NAMES[t], "row_size": BATCH_DTYPES[t].itemsize,
                    "fields": _fields(BATCH_DTYPES[t], t)} for t in message_types}
    if value_format == "arrow":
        return {t: {"name": TYPE_NAMES[t], "columns": arrow_columns(t)} for t in message_types}
    if value_format == "raw":
        header = _fields(TICK_HEADER_DTYPE)
        return {t: {"name": TYPE_NAMES[t],
                    "size": TICK_HEADER_DTYPE.itemsize + DTYPES[t].itemsize - 2,
                    "fields": header + _wire_fields(t, TICK_HEADER_DTYPE.itemsize)}
                for t in message_types}
    if value_format == "json":
        def json_field(name: str, t: str) -> dict:
            kind = TICK_DTYPES[t][name].kind
            out = {"name": name, "type": "string" if kind == "S" else "integer"}
            if kind == "S":
                out["trimmed"] = True
            decimals = price_decimals(t, name) if name in DTYPES[t].names else None
            if decimals is not None:
                out["decimals"] = decimals
            return out
        return {t: {"name": TYPE_NAMES[t],
                    "fields": [json_field(n, t) for n in TICK_DTYPES[t].names]}
                for t in message_types}
    raise ValueError(f"unknown value format {value_format!r}")


VALUE_DESCRIPTIONS = {
    "struct": "one record per tick: the 18-byte tick header, then the message's packed struct; "
              "the message type is the byte at offset 18",
    "raw": "one record per tick: the 18-byte tick header, then the ITCH 5.0 message as it came "
           "off the wire (big-endian integers, 6-byte timestamp, no length prefix); the "
           "message type is the byte at offset 18",
    "json": "one record per tick: a UTF-8 JSON object with every field, alpha fields trimmed, "
            "plus session (trimmed) and sequence",
    "batched": "one record per message type and partition for the frames released together: "
               "rows of row_size bytes, each the sequence number then the struct; the message "
               "type is the byte at offset 8 and the record header `type`",
    "arrow": "one record per message type and partition for the frames released together: an "
             "Arrow IPC stream (the schema, one record batch, the end-of-stream marker) with "
             "the columns of the layout; the message type is the record header `type` and the "
             "schema metadata `fh.message_type`, the trade date of `time` the handler's "
             "--trade-date",
}


def schema(value_format: str, topic: str, message_types) -> dict:
    """The schema record of one data topic: everything needed to read its values."""
    types = sorted(message_types)
    return {"contract": "feedhandler", "format": value_format, "version": FORMAT_VERSION,
            "marker": marker(value_format), "topic": topic, "byte_order": BYTE_ORDER,
            "value": VALUE_DESCRIPTIONS[value_format], "message_types": types,
            "layouts": layouts(value_format, types)}


def schema_records(value_format: str, topic_of_type: dict[str, str]) -> dict[str, bytes]:
    """Data topic -> its schema record value (deterministic bytes: rewriting it at every start
    leaves the compacted topic's content unchanged)."""
    by_topic: dict[str, list[str]] = {}
    for message_type, topic in topic_of_type.items():
        by_topic.setdefault(topic, []).append(message_type)
    return {topic: json.dumps(schema(value_format, topic, types), sort_keys=True,
                              separators=(",", ":")).encode()
            for topic, types in sorted(by_topic.items())}


def write_schemas(admin_settings: dict, schema_topic: str, value_format: str,
                  topic_of_type: dict[str, str], timeout: float) -> None:
    """Write (and wait for) the schema record of every data topic, with a producer of its own:
    the handler's producer may be transactional, and its records must not wait behind these.
    Not idempotent (that costs a producer id round trip, ~0.5 s at start): a retried record is
    a duplicate of an identical record under the same key of a compacted topic, so harmless."""
    from confluent_kafka import KafkaException, Producer

    failures: list[str] = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error.str())
    producer = Producer({**admin_settings, "acks": "all", "linger.ms": 0})
    for topic, value in schema_records(value_format, topic_of_type).items():
        producer.produce(schema_topic, value, key=topic.encode(), on_delivery=delivered)
    if producer.flush(timeout) or failures:
        raise KafkaException(f"schema records not written to {schema_topic}: "
                             f"{failures[0] if failures else 'timed out'}")


def read_schemas(bootstrap_servers: str, schema_topic: str, timeout: float = 10.0) -> dict:
    """Data topic -> its newest schema (the parsed JSON) from the schema topic."""
    from feedhandler.kafka.consume import read_topic

    schemas = {}
    for message in read_topic(bootstrap_servers, schema_topic, timeout):
        if message.key() and message.value():
            schemas[message.key().decode()] = json.loads(message.value())
    return schemas


assert set(VALUE_DESCRIPTIONS) == set(VALUE_FORMATS)


def render_tables() -> str:
    """The byte tables of docs/kafka.md's generated section."""
    lines = ["The tick header (`ext/record_layout.pxd`), in front of every `struct` and `raw` "
             "value:", "", "| offset | size | field | type |", "|---:|---:|---|---|"]
    lines += [_row(f) for f in _fields(TICK_HEADER_DTYPE)]
    lines += ["", "Per message type: the `struct` value size (header included), the `batched` "
              "row size, and each field's offset in the `struct` value, in the `batched` row "
              "and in the `raw` value. Integers are little-endian in `struct` and `batched`, "
              "big-endian in `raw`'s message part (its `timestamp` is 6 bytes there, 8 "
              "elsewhere). `decimals`: implied decimal places of a price. `arrow`: the "
              "field's column type in an `arrow` record (`time` is the `arrow` format's own "
              "column).", ""]
    for message_type in DTYPES:
        struct = layouts("struct", message_type)[message_type]
        batched = layouts("batched", message_type)[message_type]
        raw = layouts("raw", message_type)[message_type]
        lines += [f"#### `{message_type}`: struct {struct['size']} bytes, batched row "
                  f"{batched['row_size']} bytes, raw {raw['size']} bytes", "",
                  "| field | type | size | decimals | struct | batched | raw | arrow |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        batched_at = {f["name"]: f["offset"] for f in batched["fields"]}
        raw_at = {f["name"]: f["offset"] for f in raw["fields"]}
        arrow = {c["name"]: f"`{arrow_type_text(c)}`" for c in arrow_columns(message_type)}
        for field in struct["fields"]:
            name = field["name"]
            lines.append(f"| `{name}` | {_type(field)} | {field['size']} | "
                         f"{field.get('decimals', '')} | {field['offset']} | "
                         f"{batched_at.get(name, '')} | {raw_at.get(name, '')} | "
                         f"{arrow.get(name, '')} |")
            if name == "timestamp":
                lines.append(f"| `time` |  |  |  |  |  |  | {arrow['time']} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _type(field: dict) -> str:
    return "ASCII, space-padded" if field["type"] == "ascii" else f"u{8 * field['size']}"


def _row(field: dict) -> str:
    return f"| {field['offset']} | {field['size']} | `{field['name']}` | {_type(field)} |"

"""The `arrow` value format: Arrow IPC streams whose schema comes from the batched rows, read
straight from Kafka values by pyarrow and DuckDB, equal to what the other formats carry; and
pyarrow as an optional dependency (the format refused in one line without it)."""

import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pytest

from feedhandler.exchange import orderflow, synthetic
from feedhandler.kafka import consume, contract
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.routing import BATCH_DTYPES, Routes
from feedhandler.kafka.sink import ArrowSink
from feedhandler.wire import itch, packet
from faults.checker import check_topics
from record_fixtures import RecordingProducer, sink_config
from streams import SESSION, running_simulator, split_block
from test_handler import ROOT, run_cli

pa = pytest.importorskip("pyarrow")
duckdb = pytest.importorskip("duckdb")
from feedhandler.kafka import arrow_format  # noqa: E402 - needs pyarrow

TRADE_DATE = dt.date(2024, 3, 15)
MIDNIGHT_NS = consume.midnight_ns(TRADE_DATE)
ALL_TYPES = synthetic.random_stream(5000, seed=9, mix=synthetic.UNIFORM_MIX)[0]


def batch_rows(block: bytes) -> dict[str, np.ndarray]:
    """Every message type's messages of a framed block as batched rows, sequence = position."""
    out = {}
    for message_type, messages in itch.parse(block).items():
        rows = np.empty(len(messages), BATCH_DTYPES[message_type])
        rows["sequence"] = np.arange(1, len(messages) + 1) * 7
        for name in messages.dtype.names:
            rows[name] = messages[name]
        out[message_type] = rows
    return out


ROWS = batch_rows(ALL_TYPES)


def test_every_message_type_is_in_the_sample():
    assert set(ROWS) == set(itch.DTYPES)


@pytest.mark.parametrize("message_type", sorted(itch.DTYPES))
def test_schema_is_the_batched_row_with_arrow_types(message_type):
    """One layout definition: the schema's columns are BATCH_DTYPES' fields in order (with
    `time` after `timestamp`), integers of the same width, alpha fields strings, prices
    decimals of the field's implied decimals wide enough for any value; the contract's
    schema record says the same types."""
    dtype, schema = BATCH_DTYPES[message_type], arrow_format.schema(message_type)
    names = list(dtype.names)
    names.insert(names.index("timestamp") + 1, "time")
    assert schema.names == names
    for name in dtype.names:
        field, kind = dtype[name], schema.field(name).type
        decimals = contract.price_decimals(message_type, name) if name != "sequence" else None
        if field.kind == "S":
            assert kind == pa.utf8()
        elif decimals:
            assert (kind.scale, kind.precision) == (decimals, len(str(np.iinfo(field).max)))
        else:
            assert kind == pa.from_numpy_dtype(field)
    assert schema.field("time").type == pa.timestamp("ns", tz="America/New_York")
    assert schema.metadata == {b"fh.format": b"arrow/1", b"fh.message_type": message_type.encode()}
    layout = contract.layouts("arrow", [message_type])[message_type]
    assert [contract.arrow_type_text(c) for c in layout["columns"]] == \
        [str(field.type) for field in schema]


@pytest.mark.parametrize("message_type", sorted(itch.DTYPES))
def test_a_value_is_an_ipc_stream_of_decoded_columns(message_type):
    rows = ROWS[message_type]
    value = arrow_format.encode(message_type, rows, MIDNIGHT_NS)
    table = pa.ipc.open_stream(value).read_all()
    assert table.schema == arrow_format.schema(message_type) and table.num_rows == len(rows)
    for name in rows.dtype.names:
        column = table.column(name).to_pylist()
        decimals = contract.price_decimals(message_type, name) if name != "sequence" else None
        if rows.dtype[name].kind == "S":
            assert column == [s.decode().rstrip(" ") for s in rows[name].tolist()], name
        elif decimals:
            assert column == [Decimal(v).scaleb(-decimals) for v in rows[name].tolist()], name
        else:
            assert column == rows[name].tolist(), name
    times = table.column("time").cast(pa.int64()).to_numpy()
    assert (times == MIDNIGHT_NS + rows["timestamp"].astype(np.int64)).all()
    # and back: the rows exactly as the batched format carries them
    assert arrow_format.to_rows(value)[0] == message_type
    assert arrow_format.to_rows(value)[1].tobytes() == rows.tobytes()


def test_times_are_exchange_time_on_the_trade_date():
    rows = ROWS["A"][:1].copy()
    rows["timestamp"] = (9 * 3600 + 30 * 60) * 10**9 + 123     # 09:30:00.000000123
    table = arrow_format.read(arrow_format.encode("A", rows, MIDNIGHT_NS))
    assert str(table.column("time")[0]) == "2024-03-15 09:30:00.000000123-04:00"


def test_alpha_fields_that_are_not_ascii_are_read_as_latin1():
    rows = ROWS["A"][:3].copy()
    rows["stock"][1] = b"\xe9TF     "
    value = arrow_format.encode("A", rows, MIDNIGHT_NS)
    assert arrow_format.read(value).column("stock")[1].as_py() == "\u00e9TF"
    assert arrow_format.to_rows(value)[1].tobytes() == rows.tobytes()


def test_duckdb_reads_a_value_as_sql():
    """DuckDB reads the IPC stream straight from the value bytes (no copy through pandas)."""
    rows = ROWS["P"]
    value = arrow_format.encode("P", rows, MIDNIGHT_NS)
    stream = pa.ipc.open_stream(value)
    got = duckdb.sql("select sequence, stock, price, time from stream order by sequence"
                     ).fetchall()
    assert [g[0] for g in got] == rows["sequence"].tolist()
    assert [g[1] for g in got] == [s.decode().rstrip() for s in rows["stock"].tolist()]
    assert [g[2] for g in got] == [Decimal(p).scaleb(-4) for p in rows["price"].tolist()]
    assert got[0][3].timestamp() * 10**9 == pytest.approx(MIDNIGHT_NS + int(rows["timestamp"][0]),
                                                          abs=1000)


def test_a_release_too_large_for_one_record_is_split():
    """Records stay under message.max.bytes: a release of many rows becomes several
    records, every row in one of them, in feed order."""
    messages = split_block(orderflow.generate(20_000, symbols=2, seed=3).data)
    frames = [packet.decode(packet.encode(messages[i:i + 500], session=SESSION, sequence=1 + i))
              for i in range(0, len(messages), 500)]
    config = sink_config("unused:9092", "arrow", False,
                         producer_overrides={"message.max.bytes": "60000"})
    producer = RecordingProducer()
    sink = ArrowSink(config, producer, None, {t: 3 for t in config.routes.topics},
                     DeliveryLedger(DeliveryErrors()))
    for frame in frames:
        sink.publish(frame, 0)
    sink.finish()
    values = [r["value"] for r in producer.records if r["topic"] in config.routes.topics]
    assert max(map(len, values)) <= 60_000 - 1024
    sequences = np.concatenate([arrow_format.read(v).column("sequence").to_numpy()
                                for v in values])
    assert sorted(sequences.tolist()) == list(range(1, len(messages) + 1))
    assert len(values) > 2 * len(config.routes.topics)


def test_schema_record_describes_the_columns():
    routes = Routes.by_category("c.")
    document = json.loads(contract.schema_records("arrow", routes.topic_of_type)["c.trades"])
    assert (document["format"], document["marker"]) == ("arrow", "arrow/1")
    assert {c["name"]: c for c in document["layouts"]["P"]["columns"]}["price"] == \
        {"name": "price", "type": "decimal128", "precision": 10, "scale": 4}


# ---- without pyarrow ------------------------------------------------------------------------

WITHOUT_PYARROW = "import sys; sys.modules['pyarrow'] = None; "


def python_without_pyarrow(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_PYARROW + code], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_feedhandler_imports_without_pyarrow():
    result = python_without_pyarrow(
        "import feedhandler, feedhandler.consume, feedhandler.cli, feedhandler.cli.run, "
        "feedhandler.kafka.sink, feedhandler.kafka.resume, feedhandler.pipeline.handler; "
        "import pyarrow")
    assert "ModuleNotFoundError: import of pyarrow halted" in result.stderr, result.stderr


@pytest.mark.kafka
def test_format_arrow_without_pyarrow_is_one_line_exit_2_and_creates_nothing(kafka,
                                                                             topic_prefix):
    from confluent_kafka.admin import AdminClient

    with running_simulator(count=100, symbols=2, seed=1) as simulator:
        result = python_without_pyarrow(
            "from feedhandler.cli import main; sys.exit(main(["
            f"'run', '--connect', '127.0.0.1:{simulator.port}', '--bootstrap-servers', "
            f"'{kafka}', '--topic-prefix', '{topic_prefix}', '--format', 'arrow']))")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--format arrow needs pyarrow" in lines[0], lines
    topics = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(topic_prefix)]
    tail = python_without_pyarrow(
        "from feedhandler.cli import main; sys.exit(main(["
        f"'tail', '--bootstrap-servers', '{kafka}', '--format', 'arrow', 'any.topic']))")
    assert tail.returncode == 2 and len(tail.stderr.splitlines()) == 1, tail.stderr
    assert "--format arrow needs pyarrow" in tail.stderr


# ---- live -----------------------------------------------------------------------------------

COUNT = 20_000
SYMBOLS = 12
SEED = 41
SOURCE = split_block(orderflow.generate(COUNT, symbols=SYMBOLS, seed=SEED).data)


@pytest.mark.kafka
def test_run_format_arrow_lands_every_tick_once_and_duckdb_reads_the_values(kafka,
                                                                            topic_prefix):
    with running_simulator(count=COUNT, symbols=SYMBOLS, seed=SEED) as simulator:
        handler = run_cli("run", "--connect", f"127.0.0.1:{simulator.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "3", "--format", "arrow", "--trade-date",
                          TRADE_DATE.isoformat(), "--quiet")
        _, stderr = handler.communicate(timeout=120)
    assert handler.returncode == 0, stderr
    routes = Routes.by_category(topic_prefix)
    check = check_topics(kafka, routes, "arrow", range(1, COUNT + 1))
    assert check.ok and check.distinct == COUNT, check.summary()
    # Every add order, as DuckDB reads it from the Kafka values, is the source's message.
    adds = []
    for message in consume.read_topic(kafka, routes.topic_of_type["A"]):
        assert dict(message.headers())["fh.format"] == b"arrow/1"
        stream = pa.ipc.open_stream(message.value())
        if stream.schema.metadata[b"fh.message_type"] == b"A":
            adds += duckdb.sql("select sequence, stock, price, shares, epoch_ns(time) "
                               "from stream").fetchall()
    adds.sort()
    source = [(sequence, m) for sequence, m in enumerate(SOURCE, start=1) if m[:1] == b"A"]
    assert [a[0] for a in adds] == [sequence for sequence, _ in source]
    expected = itch.parse(b"".join(len(m).to_bytes(2, "big") + m for _, m in source))["A"]
    assert [a[1] for a in adds] == [s.decode().rstrip() for s in expected["stock"].tolist()]
    assert [a[2] for a in adds] == [Decimal(p).scaleb(-4) for p in expected["price"].tolist()]
    assert [a[3] for a in adds] == expected["shares"].tolist()
    assert [a[4] for a in adds] == (MIDNIGHT_NS + expected["timestamp"].astype(np.int64)).tolist()
    # The reader takes the trade date from the records themselves (their record timestamps
    # are the produce time: today), so decoded times are on the handler's --trade-date.
    reader = consume.read(kafka, routes.topics, output="decoded")
    decoded = [chunk["A"] for chunk in reader if "A" in chunk]
    assert reader.trade_date == TRADE_DATE
    times = np.concatenate([rows["time"] for rows in decoded]).astype(np.int64)
    assert times.tolist() == [a[4] for a in adds]

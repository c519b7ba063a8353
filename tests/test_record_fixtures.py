"""The committed golden records (tests/fixtures/records, made by tests/record_fixtures.py) are
what the sink produces, byte for byte, on the Producer API path offline and on the ProducerLink
path through the real broker; and they hold what the seeded session says."""

from collections import defaultdict

import pytest

import record_fixtures as fixtures
from feedhandler.kafka import _records, consume
from feedhandler.kafka.sink import open_sink
from feedhandler.wire.itch import DTYPES
from streams import split_block
from feedhandler.exchange import synthetic


def comparable(value_format: str, record: dict) -> dict:
    """A fixture line as it is compared: an `arrow` value as its schema (metadata included)
    and its rows, since pyarrow does not promise the same IPC bytes across its versions."""
    if value_format != "arrow":
        return record
    from feedhandler.kafka import arrow_format

    table = arrow_format.read(bytes.fromhex(record["value"]))
    return {**record, "value": (table.schema.to_string(show_schema_metadata=True),
                                table.to_pylist())}


@pytest.mark.parametrize("variant", fixtures.VARIANTS)
def test_sink_produces_the_golden_records(variant):
    value_format = fixtures.VARIANTS[variant][0]
    if value_format == "arrow":
        pytest.importorskip("pyarrow")
    produced, golden = fixtures.produce(variant), fixtures.load(variant)
    assert len(produced) == len(golden)
    for index, (got, expected) in enumerate(zip(produced, golden)):
        assert comparable(value_format, got) == comparable(value_format, expected), \
            f"{variant} record {index} differs from the fixture"


def test_arrow_fixture_holds_the_batched_records():
    """The arrow records are the batched records (topic, partition, headers but the format
    marker) with each value's rows as an Arrow table: the same rows, decoded."""
    pytest.importorskip("pyarrow")
    from feedhandler.kafka import arrow_format

    arrow, batched = fixtures.load("arrow"), fixtures.load("batched")
    assert len(arrow) == len(batched)
    for got, expected in zip(arrow, batched):
        marker = ["fh.format", b"arrow/1".hex()]
        assert marker in got["headers"]
        assert [h for h in got["headers"] if h != marker] == \
            [h for h in expected["headers"] if h[0] != "fh.format"]
        assert (got["topic"], got["partition"], got["key"]) == \
            (expected["topic"], expected["partition"], expected["key"])
        message_type, rows = arrow_format.to_rows(bytes.fromhex(got["value"]))
        assert rows.tobytes() == bytes.fromhex(expected["value"])


def test_fixtures_cover_every_message_type_and_topic():
    struct = fixtures.load("struct")
    assert {chr(bytes.fromhex(r["value"])[18]) for r in struct} == set(DTYPES)
    assert {r["topic"] for r in struct} == {"orders", "trades", "reference", "noii"}


def test_raw_fixture_holds_the_session_messages_by_sequence():
    """Independent of the record code: each raw value is the tick header (session,
    little-endian sequence) and then exactly the source message of that sequence."""
    messages = split_block(synthetic.random_stream(fixtures.COUNT, seed=fixtures.SEED,
                                                   mix=synthetic.UNIFORM_MIX)[0])
    records = fixtures.load("raw")
    assert len(records) == len(messages)
    for record in records:
        value = bytes.fromhex(record["value"])
        sequence = int.from_bytes(value[10:18], "little")
        assert value[:10] == fixtures.SESSION
        assert value[18:] == messages[sequence - fixtures.FIRST_SEQUENCE]


@pytest.mark.kafka
@pytest.mark.parametrize("variant", ["struct", "raw", "struct-headers", "raw-headers"])
def test_producer_link_produces_the_golden_records(kafka, topic_prefix, variant):
    value_format, headers = fixtures.VARIANTS[variant]
    config = fixtures.sink_config(kafka, value_format, headers, prefix=topic_prefix,
                                  producer_link="require", flush_timeout=60)
    sink = open_sink(config)
    for frame in fixtures.seeded_packets():
        sink.publish(frame, 0)
    sink.finish()
    expected = defaultdict(list)
    for record in fixtures.load(variant):
        key = bytes.fromhex(record["key"])
        partition = (_records.murmur2(key) & 0x7FFFFFFF) % fixtures.PARTITIONS
        expected[record["topic"], partition].append(record)
    got = defaultdict(list)
    for topic in config.routes.topics:
        for message in consume.read_topic(kafka, topic):
            timestamp = message.timestamp()[1] if headers else None
            suffix = topic[len(topic_prefix):]
            got[suffix, message.partition()].append(fixtures.record_line(
                suffix, -1, message.key(), message.value(), message.headers(), timestamp))
    assert got == expected

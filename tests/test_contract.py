"""The format contract: the schema documents describe the bytes the code writes, the byte order
is guaranteed, and the handler publishes the schema records before any tick."""

import json

import numpy as np
import pytest

from feedhandler.kafka import consume, contract
from feedhandler.kafka.byte_order import check_host_byte_order
from feedhandler.kafka.routing import Routes, StockDirectory, tick_records
from feedhandler.kafka.sink import SinkConfig, open_sink
from feedhandler.exchange import synthetic
from feedhandler.wire import packet
from streams import SESSION, split_block

MESSAGES = split_block(synthetic.random_stream(2000, seed=5, mix=synthetic.UNIFORM_MIX)[0])
PACKET = packet.decode(packet.encode(MESSAGES, session=SESSION, sequence=7))
ROUTES = Routes.by_category("c.")


def test_a_big_endian_host_is_refused():
    check_host_byte_order("little")
    with pytest.raises(ImportError, match="big-endian"):
        check_host_byte_order("big")


def decode_by_schema(value: bytes, layout: dict) -> dict:
    """A reader that knows nothing but the schema document (what a Java or C reader does)."""
    out = {}
    for field in layout["fields"]:
        raw = value[field["offset"]:field["offset"] + field["size"]]
        out[field["name"]] = raw if field["type"] == "ascii" else \
            int.from_bytes(raw, field["byte_order"])
    return out


@pytest.mark.parametrize("value_format", ["struct", "raw"])
def test_schema_describes_every_per_tick_value(value_format):
    schemas = {topic: json.loads(value) for topic, value in
               contract.schema_records(value_format, ROUTES.topic_of_type).items()}
    index = {t: ROUTES.topics.index(topic) for t, topic in ROUTES.topic_of_type.items()}
    directory = StockDirectory()
    groups = tick_records(PACKET, value_format, index, len(ROUTES.topics), directory, 0)
    checked = set()
    for topic, records in zip(ROUTES.topics, groups):
        document = schemas[topic]
        assert (document["format"], document["version"], document["byte_order"]) == \
            (value_format, contract.FORMAT_VERSION, "little")
        values = [r["value"] for r in records]
        expected = consume.to_arrays(values, value_format)
        seen = {t: 0 for t in expected}
        for value in values:
            message_type = chr(value[18])
            layout = document["layouts"][message_type]
            assert len(value) == layout["size"]
            fields = decode_by_schema(value, layout)
            row = expected[message_type][seen[message_type]]
            seen[message_type] += 1
            for name, got in fields.items():
                assert got == row[name], (message_type, name)
            checked.add(message_type)
    assert checked == set(PACKET.messages)


def test_schema_describes_batched_rows():
    document = json.loads(contract.schema_records("batched", ROUTES.topic_of_type)["c.orders"])
    layout = document["layouts"]["A"]
    array = np.zeros(2, contract.BATCH_DTYPES["A"])
    array["sequence"] = [3, 2 ** 40 + 5]
    array["price"] = [1234500, 7]
    array["stock"] = b"AAPL    "
    value = array.tobytes()
    assert layout["row_size"] * 2 == len(value)
    second = decode_by_schema(value[layout["row_size"]:], layout)
    assert (second["sequence"], second["price"], second["stock"]) == (2 ** 40 + 5, 7, b"AAPL    ")


def test_price_decimals_follow_the_spec():
    assert contract.price_decimals("A", "price") == 4
    assert contract.price_decimals("V", "level_1") == 8
    assert contract.price_decimals("O", "upper_price_range_collar") == 4
    assert contract.price_decimals("J", "auction_collar_extension") is None
    assert contract.price_decimals("K", "ipo_quotation_release_time") is None
    assert contract.price_decimals("R", "luld_reference_price_tier") is None
    assert contract.price_decimals("I", "price_variation_indicator") is None


def test_schema_record_bytes_are_deterministic():
    assert contract.schema_records("json", ROUTES.topic_of_type) == \
        contract.schema_records("json", ROUTES.topic_of_type)


@pytest.mark.kafka
def test_open_sink_writes_the_schema_topic_before_any_tick(kafka, topic_prefix):
    routes = Routes.by_category(topic_prefix)
    for _ in range(2):      # a restart rewrites the same records
        sink = open_sink(SinkConfig(kafka, value_format="raw", routes=routes, partitions=2,
                                    producer_link="off", flush_timeout=30))
        sink.finish()
    schemas = contract.read_schemas(kafka, routes.schema)
    assert sorted(schemas) == routes.topics
    assert {s["marker"] for s in schemas.values()} == {"raw/1"}
    assert all(consume.read_topic(kafka, topic) == [] for topic in routes.topics)
    from confluent_kafka.admin import AdminClient, ConfigResource
    resource = ConfigResource(ConfigResource.Type.TOPIC, routes.schema)
    admin = AdminClient({"bootstrap.servers": kafka})
    assert admin.describe_configs([resource])[resource].result(30)["cleanup.policy"].value == "compact"

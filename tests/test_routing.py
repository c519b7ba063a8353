"""Records without a broker: keys, partitions, feed order and every value format's round trip."""

import numpy as np
import pytest

from feedhandler.exchange import orderflow, synthetic
from feedhandler.kafka import _records, consume
from feedhandler.wire import itch, packet
from feedhandler.kafka.routing import (BATCH_DTYPES, CATEGORIES, STOCK_TYPES,
                                       TICK_HEADER_DTYPE, TICK_HEADER_SIZE, Routes,
                                       StockDirectory,
                                       batched_records, tick_records)
from streams import SESSION, split_block

# Kafka's own murmur2 test vectors (Java client, Utils.murmur2).
MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
           b"a-little-bit-longer-string": -1486304829,
           b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}

BLOCK = synthetic.random_stream(4000, seed=41, mix=synthetic.UNIFORM_MIX)[0]
MESSAGES = split_block(BLOCK)
PACKET = packet.decode(packet.encode(MESSAGES, session=SESSION, sequence=100))


@pytest.mark.parametrize("key, expected", MURMUR2.items())
def test_murmur2_matches_kafka(key, expected):
    assert _records.murmur2(key) == expected


def test_routes_by_category_and_overrides():
    routes = Routes.by_category("x.")
    assert routes.topics == ["x.noii", "x.orders", "x.reference", "x.trades"]
    assert all(routes.topic_of_type[t] == "x." + c for c, types in CATEGORIES.items() for t in types)
    moved = Routes.by_category("x.", {"I": "orders", "trades": "prints"})
    assert moved.topic_of_type["I"] == "x.orders" and moved.topic_of_type["P"] == "x.prints"
    with pytest.raises(ValueError):
        Routes.by_category("x.", {"Z": "orders"})


def directory_for(packet_):
    directory = StockDirectory()
    directory.update(packet_.messages["R"])
    return directory


def feed_order(message_types: str):
    """(sequence, message bytes) of the messages of the given types, in feed order."""
    return [(100 + i, m) for i, m in enumerate(MESSAGES) if chr(m[0]) in message_types]


@pytest.mark.parametrize("value_format", ["struct", "raw", "json"])
def test_tick_records_keep_feed_order_and_round_trip(value_format):
    routes = Routes.by_category()
    index = {t: routes.topics.index(topic) for t, topic in routes.topic_of_type.items()}
    directory = directory_for(PACKET)
    groups = tick_records(PACKET, value_format, index, len(routes.topics), directory, 0,
                          with_metadata=True)
    for topic, records in zip(routes.topics, groups):
        types = "".join(t for t, name in routes.topic_of_type.items() if name == topic)
        expected = feed_order(types)
        assert [r["sequence"] for r in records] == [s for s, _ in expected]
        assert [r["type"] for r in records] == [m[:1] for _, m in expected]
        for record, (_, message) in zip(records, expected):
            locate = int.from_bytes(message[1:3], "big")
            assert record["key"] == directory.keys[locate]
        arrays = consume.to_arrays([r["value"] for r in records], value_format)
        wanted = itch.parse(b"".join(len(m).to_bytes(2, "big") + m for _, m in expected))
        assert arrays.keys() == wanted.keys()
        for t in wanted:
            assert np.array_equal(consume.messages(arrays[t]), wanted[t]), t
            assert np.all(arrays[t]["session"] == PACKET.session)
            assert arrays[t]["sequence"].tolist() == \
                [s for s, m in expected if m[:1] == t.encode()]


def test_raw_values_are_the_original_bytes():
    routes = Routes.by_category()
    index = {t: routes.topics.index(topic) for t, topic in routes.topic_of_type.items()}
    groups = tick_records(PACKET, "raw", index, len(routes.topics), directory_for(PACKET), 0)
    got = sorted(r["value"][TICK_HEADER_SIZE:] for records in groups for r in records)
    assert got == sorted(MESSAGES)


@pytest.mark.parametrize("value_format", ["struct", "raw"])
def test_per_tick_values_start_with_session_and_little_endian_sequence(value_format):
    """The tick header, byte for byte: 10 bytes of session, then the sequence number as u64
    little-endian; the tick header dtype and the C layout agree."""
    routes = Routes.by_category()
    index = {t: routes.topics.index(topic) for t, topic in routes.topic_of_type.items()}
    groups = tick_records(PACKET, value_format, index, len(routes.topics), directory_for(PACKET), 0)
    values = sorted((r["value"] for records in groups for r in records),
                    key=lambda v: int.from_bytes(v[10:18], "little"))
    assert TICK_HEADER_SIZE == TICK_HEADER_DTYPE.itemsize == 18
    assert [v[:10] for v in values] == [PACKET.session] * len(MESSAGES)
    assert [int.from_bytes(v[10:18], "little") for v in values] == \
        list(range(PACKET.sequence, PACKET.sequence + len(MESSAGES)))
    for value, message in zip(values, MESSAGES):
        body = value[TICK_HEADER_SIZE:]
        assert body == message if value_format == "raw" else body[:1] == message[:1]


def test_directory_keys_are_trimmed_symbols_and_unknown_locates_stable():
    directory = directory_for(PACKET)
    stocks = PACKET.messages["R"]
    locate, stock = int(stocks["stock_locate"][0]), bytes(stocks["stock"][0])
    assert directory.keys[locate] == stock.rstrip(b" ")
    assert directory.hashes[locate] == _records.murmur2(directory.keys[locate]) & 0xFFFFFFFF
    fresh = StockDirectory()
    assert fresh.keys[7] == b"#7" and fresh.keys[0] == b"#0"


def test_batched_rows_land_on_the_key_partition_in_feed_order():
    routes = Routes.by_category()
    partitions = {topic: 5 for topic in routes.topics}
    directory = directory_for(PACKET)
    seen = []
    for topic, partition, message_type, rows in batched_records([PACKET], routes.topic_of_type,
                                                                partitions, directory):
        assert routes.topic_of_type[message_type] == topic
        records = np.frombuffer(rows, BATCH_DTYPES[message_type])
        assert np.all(np.diff(records["sequence"].astype(np.int64)) > 0)
        for locate in np.unique(records["stock_locate"]):
            assert _records.partition_for(directory.keys[locate], 5) == partition
        seen.append(records)
    by_type = consume.to_arrays([bytes(r.tobytes()) for r in seen], "batched")
    for message_type, array in PACKET.messages.items():
        got = np.sort(by_type[message_type], order="sequence")
        fields = list(itch.DTYPES[message_type].names)
        assert np.array_equal(got[fields].tolist(), array.tolist())
        assert np.array_equal(got["sequence"], PACKET.sequences[message_type])


def test_record_builders_refuse_rows_too_small_for_their_fields():
    """Rows shorter than a locate code and a timestamp would be read past their end."""
    tiny = np.zeros(3, np.dtype([("message_type", "S1"), ("stock_locate", "<u2")]))
    sequences = np.arange(1, 4, dtype=np.uint64)
    directory = StockDirectory()
    with pytest.raises(ValueError, match="too small"):
        _records.tick_records({"A": tiny}, {"A": sequences}, 1, 3, {"A": 0}, 1, directory.keys,
                              b"SESSION001", 0)


def test_keys_do_not_depend_on_when_the_handler_joined():
    """A handler that joins mid-session (after the Stock Directory messages) keys every message
    that carries its stock's name exactly as one that saw the whole session, and the order
    messages of a stock once any such message has named it."""
    day = split_block(orderflow.generate(20_000, symbols=30, seed=5).data)
    half = len(day) // 2
    whole, joined = StockDirectory(), StockDirectory()
    whole.learn(packet.decode(packet.encode(day, session=SESSION, sequence=1)).messages)
    late = packet.decode(packet.encode(day[half:], session=SESSION, sequence=1 + half))
    assert "R" not in late.messages
    joined.learn(late.messages)
    named = set()
    for message_type in STOCK_TYPES:
        if message_type in late.messages:
            named.update(late.messages[message_type]["stock_locate"].tolist())
    assert len(named) > 20
    assert all(joined.keys[locate] == whole.keys[locate] for locate in named)
    assert all(not key.startswith(b"#") for key in (whole.keys[locate] for locate in named))
    assert joined.entries() == {locate: whole.keys[locate] for locate in named}
    restored = StockDirectory()
    restored.restore(joined.entries())
    assert restored.keys == joined.keys and np.array_equal(restored.hashes, joined.hashes)

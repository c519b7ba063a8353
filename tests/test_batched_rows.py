"""The C routines of the batched path against plain numpy references, on random input:
a release's rows (`_batched.release_rows`, behind routing.batched_records) and the stock names
a packet reveals (`_records.unknown_stocks`, behind StockDirectory.learn)."""

import numpy as np
import pytest

import record_fixtures
from feedhandler.exchange import synthetic
from feedhandler.kafka import _batched, _records
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.routing import (BATCH_DTYPES, LOCATES, STOCK_TYPES, Routes,
                                       StockDirectory, batched_records)
from feedhandler.kafka.sink import BatchedSink
from feedhandler.wire import itch, packet
from feedhandler.wire.packet import Packet
from streams import SESSION, split_block


def reference_release(packets, topic_of_type, partitions, hashes):
    """The batched format's rows of a release, one numpy step at a time."""
    out = []
    for message_type in dict.fromkeys(t for p in packets for t in p.messages):
        rows = np.concatenate([p.messages[message_type] for p in packets
                               if message_type in p.messages])
        sequences = np.concatenate([p.sequences[message_type] for p in packets
                                    if message_type in p.messages])
        topic = topic_of_type[message_type]
        partition = (hashes[rows["stock_locate"]].astype(np.int64) & 0x7FFFFFFF) \
            % partitions[topic]
        batch = np.empty(len(rows), BATCH_DTYPES[message_type])
        batch["sequence"] = sequences
        for name in itch.DTYPES[message_type].names:
            batch[name] = rows[name]
        for p in np.unique(partition):
            out.append((topic, int(p), message_type, batch[partition == p].tobytes()))
    return out


def random_packets(rng, count: int) -> list[Packet]:
    """Decoded packets of random messages of every type, split at random places (some
    packets hold one message, some a few hundred), with the locate codes of few stocks."""
    block, _ = synthetic.random_stream(count, seed=int(rng.integers(1 << 30)),
                                       mix=synthetic.UNIFORM_MIX)
    messages = split_block(block)
    cuts = np.unique(rng.integers(1, len(messages), size=len(messages) // 40))
    frames, first = [], 0
    for cut in [*cuts.tolist(), len(messages)]:
        frames.append(packet.encode(messages[first:cut], session=SESSION, sequence=1 + first))
        first = cut
    return packet.decode_many(frames)


@pytest.mark.parametrize("seed", range(6))
def test_release_rows_match_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    packets = random_packets(rng, 3000)
    routes = Routes.by_category("x.", {"I": "orders"} if seed % 2 else None)
    partitions = {topic: int(rng.integers(1, 9)) for topic in routes.topics}
    directory = StockDirectory()
    directory.hashes[:] = rng.integers(0, 1 << 32, LOCATES, dtype=np.uint32)
    for first in range(0, len(packets), 17):
        held = packets[first:first + int(rng.integers(1, 40))]
        got = batched_records(held, routes.topic_of_type, partitions, directory)
        assert got == reference_release(held, routes.topic_of_type, partitions,
                                        directory.hashes)


def test_release_rows_of_nothing_and_of_empty_arrays():
    empty = {t: np.zeros(0, itch.DTYPES[t]) for t in "AP"}
    packets = [Packet(SESSION, 1, 0, {}, {}),
               Packet(SESSION, 1, 0, empty, {t: np.zeros(0, np.uint64) for t in empty})]
    routes = Routes.by_category()
    partitions = dict.fromkeys(routes.topics, 3)
    assert batched_records([], routes.topic_of_type, partitions, StockDirectory()) == []
    assert batched_records(packets, routes.topic_of_type, partitions, StockDirectory()) == []


def test_release_rows_refuses_what_it_cannot_read():
    hashes = StockDirectory().hashes
    routes = Routes.by_category()
    partitions = dict.fromkeys(routes.topics, 2)
    rows = np.zeros(3, itch.DTYPES["A"])
    sequences = np.arange(1, 4, dtype=np.uint64)

    def release(messages, sequences_, parts=partitions, key_hashes=hashes):
        return _batched.release_rows([Packet(SESSION, 1, 3, messages, sequences_)],
                                     routes.topic_of_type, parts, key_hashes)
    one_byte = np.zeros(3, np.dtype([("message_type", "S1")]))
    with pytest.raises(ValueError, match="too small"):
        release({"A": one_byte}, {"A": sequences})
    with pytest.raises(ValueError, match="do not match"):
        release({"A": rows}, {"A": sequences[:2]})
    with pytest.raises(ValueError, match="do not match"):
        release({"A": rows}, {"A": sequences.astype(np.int64)})
    with pytest.raises(ValueError, match="do not match"):
        release({"A": rows[::2]}, {"A": sequences[::2]})
    with pytest.raises(ValueError, match="no partitions"):
        release({"A": rows}, {"A": sequences}, {t: 0 for t in partitions})
    with pytest.raises(ValueError, match="per stock locate"):
        release({"A": rows}, {"A": sequences}, key_hashes=hashes[:10])
    with pytest.raises(KeyError):
        release({"A": rows}, {"A": sequences}, {})
    two_sizes = [Packet(SESSION, 1, 3, {"A": rows}, {"A": sequences}),
                 Packet(SESSION, 4, 3, {"A": np.zeros(3, itch.DTYPES["F"])}, {"A": sequences})]
    with pytest.raises(ValueError, match="two sizes"):
        _batched.release_rows(two_sizes, routes.topic_of_type, partitions, hashes)


class NumpyDirectory(StockDirectory):
    """StockDirectory.learn as it was written in numpy: the reference for the C routine."""

    def learn(self, messages) -> None:
        for message_type in STOCK_TYPES:
            rows = messages.get(message_type)
            if rows is None:
                continue
            unknown = ~self.known[rows["stock_locate"]]
            if unknown.any():
                self.update(rows[unknown])


def random_stock_messages(rng, types) -> dict:
    """Rows of random bytes whose locates repeat (one locate may get different names in one
    packet) and whose stock fields end in spaces and NULs in every mix."""
    messages = {}
    for message_type in types:
        n = int(rng.integers(0, 30))
        rows = np.frombuffer(rng.bytes(n * itch.DTYPES[message_type].itemsize),
                             itch.DTYPES[message_type]).copy()
        rows["stock_locate"] = rng.integers(0, 60, n)
        if message_type in STOCK_TYPES:
            letters = rng.choice(np.frombuffer(b"AB \x00", np.uint8), size=(n, 8))
            rows["stock"] = letters.view("S8").ravel()
        messages[message_type] = rows
    return messages


@pytest.mark.parametrize("seed", range(4))
def test_learn_matches_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    fast, reference = StockDirectory(), NumpyDirectory()
    other_types = [t for t in itch.DTYPES if t not in STOCK_TYPES]
    for _ in range(40):
        types = rng.permutation([*STOCK_TYPES, *other_types])[:int(rng.integers(1, 8))]
        messages = random_stock_messages(rng, types)
        fast.learn(messages)
        reference.learn(messages)
        assert fast.keys == reference.keys
        assert np.array_equal(fast.known, reference.known)
        assert np.array_equal(fast.hashes, reference.hashes)
    assert 0 < fast.known.sum() <= 60


def test_learn_refuses_rows_too_small_for_their_stock_field():
    short = np.zeros(2, np.dtype([("message_type", "S1"), ("stock_locate", "<u2")]))
    with pytest.raises(ValueError, match="stock field"):
        StockDirectory().learn({STOCK_TYPES[0]: short})
    with pytest.raises(ValueError, match="per stock locate"):
        _records.unknown_stocks({}, (), np.zeros(5, np.uint8))


class RefusingProducer(record_fixtures.RecordingProducer):
    """Refuses every third produce() with BufferError (a full queue), as librdkafka does."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.refused = 0

    def produce(self, *args, **kwargs):
        self.calls += 1
        if self.calls % 3 == 0:
            self.refused += 1
            raise BufferError("Local: Queue full")
        super().produce(*args, **kwargs)


def test_a_release_refused_by_a_full_queue_still_produces_the_golden_records():
    """Records of a release that the producer refuses are produced again, in their place: the
    records and their order are those of the golden fixture."""
    config = record_fixtures.sink_config("unused:9092", "batched", False)
    producer = RefusingProducer()
    partitions = dict.fromkeys(config.routes.topics, record_fixtures.PARTITIONS)
    sink = BatchedSink(config, producer, None, partitions, DeliveryLedger(DeliveryErrors()))
    for frame in record_fixtures.seeded_packets():
        sink.publish(frame, 0)
        sink.idle()
    sink.finish()
    produced = [record_fixtures.record_line(
        r["topic"][len(record_fixtures.PREFIX):], r["partition"], r["key"], r["value"],
        r["headers"], r["timestamp"]) for r in producer.records if r["topic"] in partitions]
    assert producer.refused > 0
    assert produced == record_fixtures.load("batched")
    assert sink.ledger.records == len(producer.records)     # each counted once

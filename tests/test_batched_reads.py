"""The batched path takes a socket read's packets without making their numpy arrays: ticks
counted (`wire._decode.tick_counts`), stock names learned (`StockDirectory.learn_packets`) and
rows released (`_batched.release_rows`) straight from where decoding left the rows, and the
read published at once (`BatchedSink.publish_read`). Each is held against the way through the
arrays, one packet at a time: the same figures, names and records."""

from collections import Counter

import numpy as np
import pytest

import record_fixtures
from feedhandler.exchange import synthetic
from feedhandler.kafka import sink as sink_module
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.resume import ResumeFilter
from feedhandler.kafka.routing import LOCATES, Routes, StockDirectory, batched_records
from feedhandler.kafka.sink import ArrowSink, BatchedSink
from feedhandler.pipeline.handler import Account, Handler
from feedhandler.wire import itch, packet
from feedhandler.wire._decode import tick_counts
from feedhandler.wire.packet import Packet
from streams import SESSION, split_block


def session_frames(seed: int, count: int = 2000) -> list[bytes]:
    """Frames of random messages of every type (stock names included), cut at random places,
    with a few frames corrupted (quarantined whole) and heartbeats between them."""
    rng = np.random.default_rng(seed)
    block, _ = synthetic.random_stream(count, seed=seed, mix=synthetic.UNIFORM_MIX)
    messages = split_block(block)
    cuts = np.unique(rng.integers(1, len(messages), size=len(messages) // 30)).tolist()
    frames, first = [], 0
    for cut in [*cuts, len(messages)]:
        frame = packet.encode(messages[first:cut], session=SESSION, sequence=1 + first)
        if rng.random() < 0.05:
            frame = frame[:-3] + b"\xff\xff\xff"        # checksum or decompression fails
        frames.append(frame)
        if rng.random() < 0.1:
            frames.append(packet.encode([], session=SESSION, sequence=1 + cut))
        first = cut
    return frames


def decoded(frames: list[bytes], viewed: bool = False) -> list[Packet]:
    """The frames decoded as the handler decodes them; `viewed`: their arrays made already."""
    packets = packet.decode_many(frames, policy="quarantine")
    if viewed:
        for p in packets:
            p.messages, p.sequences
    return packets


def count_through_arrays(handler: Handler, packets: list[Packet]) -> None:
    """The handler's count of each packet through its arrays, as it was done before (the
    quarantine's part, which did not change, by the handler's own method)."""
    account = handler.account
    for p in packets:
        if p.count is not None and not p.is_end_of_session:
            account.messages += p.count
        for message_type, rows in p.messages.items():
            account.decoded_by_type[message_type] += len(rows)
            account.decoded += len(rows)
        handler._count_quarantined(p)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("viewed", [False, True])
def test_tick_counts_are_those_of_the_arrays(seed, viewed):
    packets = decoded(session_frames(seed), viewed)
    by_type = Counter()
    counts = tick_counts(packets, by_type)
    assert counts == [sum(map(len, p.messages.values())) for p in packets]
    reference = Counter()
    for p in packets:
        for message_type, rows in p.messages.items():
            reference[message_type] += len(rows)
    assert list(by_type.items()) == list(reference.items())     # order of first appearance


def test_tick_counts_of_packets_made_from_arrays():
    """Packets made from ready-made arrays (empty ones included) and the resume filter's
    stand-ins are read through their arrays."""
    rows = np.zeros(3, itch.DTYPES["A"])
    made = Packet(SESSION, 1, 3, {"A": rows, "P": np.zeros(0, itch.DTYPES["P"])},
                  {"A": np.arange(1, 4, dtype=np.uint64), "P": np.zeros(0, np.uint64)})
    by_type = Counter({"A": 5})
    assert tick_counts([made, Packet(SESSION, 4, 0, {}, {})], by_type) == [3, 0]
    assert by_type == {"A": 8, "P": 0}
    with pytest.raises(ValueError, match="do not match"):
        tick_counts([Packet(SESSION, 1, 3, {"A": rows}, {"A": np.zeros(2, np.uint64)})], {})
    with pytest.raises(ValueError, match="not a message type"):
        tick_counts([Packet(SESSION, 1, 3, {"AB": rows}, {"AB": np.zeros(3, np.uint64)})], {})


@pytest.mark.parametrize("seed", range(3))
def test_the_handler_counts_a_read_as_it_counted_each_packet(seed):
    frames = session_frames(seed)
    handler, reference = Handler.__new__(Handler), Handler.__new__(Handler)
    handler.account, reference.account = Account(), Account()
    for first in range(0, len(frames), 16):
        ticks = handler._count(decoded(frames[first:first + 16]))
        assert len(ticks) == len(frames[first:first + 16])
    count_through_arrays(reference, decoded(frames))
    assert handler.account.as_dict() == reference.account.as_dict()
    assert reference.account.quarantined_frames > 0 and reference.account.decoded > 0


@pytest.mark.parametrize("seed", range(4))
def test_names_learned_a_release_at_a_time_are_those_learned_packet_by_packet(seed):
    rng = np.random.default_rng(seed)
    packets = decoded(session_frames(seed))
    fast, reference = StockDirectory(), StockDirectory()
    first = 0
    while first < len(packets):
        held = packets[first:first + int(rng.integers(1, 30))]
        fast.learn_packets(held)
        for p in held:
            reference.learn(p.messages)
        first += len(held)
    assert fast.keys == reference.keys
    assert np.array_equal(fast.known, reference.known)
    assert np.array_equal(fast.hashes, reference.hashes)
    assert fast.known.sum() > 0


def test_learn_packets_refuses_what_it_cannot_read():
    short = np.zeros(2, np.dtype([("message_type", "S1"), ("stock_locate", "<u2"),
                                  ("rest", "S3")]))
    with pytest.raises(ValueError, match="stock field"):
        StockDirectory().learn_packets([Packet(SESSION, 1, 2, {"R": short},
                                               {"R": np.arange(1, 3, dtype=np.uint64)})])


@pytest.mark.parametrize("seed", range(3))
def test_a_release_from_the_arena_is_the_release_from_the_arrays(seed):
    rng = np.random.default_rng(seed)
    frames = session_frames(seed)
    routes = Routes.by_category("x.")
    partitions = {topic: int(rng.integers(1, 9)) for topic in routes.topics}
    directory = StockDirectory()
    directory.hashes[:] = rng.integers(0, 1 << 32, LOCATES, dtype=np.uint32)
    for first in range(0, len(frames), 23):
        held = frames[first:first + 23]
        assert batched_records(decoded(held), routes.topic_of_type, partitions, directory) == \
            batched_records(decoded(held, viewed=True), routes.topic_of_type, partitions,
                            directory)


def recording_sink(sink_class=BatchedSink, resume_filter=None):
    config = record_fixtures.sink_config("unused:9092", "arrow" if sink_class is ArrowSink
                                         else "batched", False)
    producer = record_fixtures.RecordingProducer()
    partitions = dict.fromkeys(config.routes.topics, record_fixtures.PARTITIONS)
    sink = sink_class(config, producer, None, partitions, DeliveryLedger(DeliveryErrors()))
    sink.resume_filter = resume_filter
    return sink, producer


def figures(sink, producer) -> tuple:
    """Everything a sink handed over and counted: records (dead letters included; checkpoints,
    which carry the time they were written, as the names they hold) and each frame's
    acknowledgement entry without its clock readings."""
    return ([r for r in producer.records if r["topic"] != sink.routes.checkpoint],
            sink.directory.entries(), sink.ledger.records, sink.ledger.ticks,
            sink.ledger.dead_lettered,
            [(records, ticks, next_sequence)
             for records, ticks, _, _, next_sequence in sink.ledger.acks.frames],
            sink.session, sink._produced_through)


def test_reads_published_at_once_make_the_golden_records():
    """One packet a read, a release after each: the committed fixture, byte for byte."""
    sink, producer = recording_sink()
    for p in record_fixtures.seeded_packets():
        sink.publish_read([p], tick_counts([p], Counter()), 0)
        sink.idle()
    sink.finish()
    produced = [record_fixtures.record_line(
        r["topic"][len(record_fixtures.PREFIX):], r["partition"], r["key"], r["value"],
        r["headers"], r["timestamp"]) for r in producer.records
        if r["topic"] in sink.partitions]
    assert produced == record_fixtures.load("batched")


@pytest.mark.parametrize("sink_class", [BatchedSink, ArrowSink])
@pytest.mark.parametrize("seed", range(3))
def test_a_read_published_at_once_is_its_packets_published_one_by_one(sink_class, seed,
                                                                     monkeypatch):
    """Quarantined frames (dead letters), heartbeats (frames without ticks) and releases
    inside a read (every few hundred ticks here, never by the clock): the same records and the
    same per-frame acknowledgement entries."""
    monkeypatch.setattr(sink_module, "BATCH_TICKS", 300)
    monkeypatch.setattr(sink_module, "BATCH_LINGER_NS", 1 << 62)
    if sink_class is ArrowSink:
        pytest.importorskip("pyarrow")
    rng = np.random.default_rng(seed)
    frames = session_frames(seed)
    by_read, by_read_producer = recording_sink(sink_class)
    one_by_one, one_by_one_producer = recording_sink(sink_class)
    first = 0
    while first < len(frames):
        read = frames[first:first + int(rng.integers(1, 40))]
        first += len(read)
        packets = decoded(read)
        by_read.publish_read(packets, tick_counts(packets, Counter()), 7)
        for p in decoded(read):
            one_by_one.publish(p, 7)
        if rng.random() < 0.5:
            by_read.idle()
            one_by_one.idle()
    by_read.finish()
    one_by_one.finish()
    assert figures(by_read, by_read_producer) == figures(one_by_one, one_by_one_producer)
    assert by_read.ledger.dead_lettered > 0


def test_a_resumed_run_publishes_each_packet_of_a_read_through_its_filter(monkeypatch):
    """The resume filter rewrites packets: a read goes through `publish` one packet at a time,
    skipping what the partitions hold."""
    monkeypatch.setattr(sink_module, "BATCH_LINGER_NS", 1 << 62)
    frames = session_frames(5)
    routes = Routes.by_category(record_fixtures.PREFIX)
    partitions = dict.fromkeys(routes.topics, record_fixtures.PARTITIONS)
    ends = {topic: np.full((record_fixtures.PARTITIONS, 256), 300, np.uint64)
            for topic in routes.topics}
    ends[routes.dead_letter] = np.zeros((1, 256), np.uint64)
    sinks = [recording_sink(resume_filter=ResumeFilter(
        ends, routes, {**partitions, routes.dead_letter: 1})) for _ in range(2)]
    (by_read, by_read_producer), (one_by_one, one_by_one_producer) = sinks
    for first in range(0, len(frames), 25):
        packets = decoded(frames[first:first + 25])
        by_read.publish_read(packets, tick_counts(packets, Counter()), 0)
        for p in decoded(frames[first:first + 25]):
            one_by_one.publish(p, 0)
        by_read.idle()
        one_by_one.idle()
    by_read.finish()
    one_by_one.finish()
    assert figures(by_read, by_read_producer) == figures(one_by_one, one_by_one_producer)
    assert by_read.ledger.already_in_kafka == one_by_one.ledger.already_in_kafka > 0

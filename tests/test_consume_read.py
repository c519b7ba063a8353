"""feedhandler.consume.read on the real broker: topics and partitions merged back into feed
order, every format found from the schema topic, follow mode, start points, bounded memory,
decoded numpy and pandas output."""

import datetime as dt
import threading
import time

import numpy as np
import pytest

from feedhandler.exchange import orderflow
from feedhandler.kafka import consume
from feedhandler.kafka.routing import Routes
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.session import SessionClient
from feedhandler.wire import itch
from streams import running_simulator, split_block

pytestmark = pytest.mark.kafka

COUNT = 6000
SYMBOLS = 20
SEED = 23
SOURCE_MESSAGES = split_block(orderflow.generate(COUNT, symbols=SYMBOLS, seed=SEED).data)


@pytest.fixture(scope="module")
def simulator():
    with running_simulator(count=COUNT, symbols=SYMBOLS, seed=SEED) as sim:
        yield sim


def publish(kafka, prefix, simulator, value_format="struct", pause: float = 0.0) -> Routes:
    """The seeded session through the handler; `pause`: seconds between frames, handed on
    one at a time (a grouped format then writes a release per frame or so)."""
    routes = Routes.by_category(prefix)
    client = SessionClient("127.0.0.1", simulator.port, username="feed", password="feed")

    def reads():
        for batch in client.frame_batches():
            if not pause:
                yield batch
                continue
            for frame in batch:
                yield [frame]
                time.sleep(pause)

    account = Handler(HandlerConfig(kafka, value_format=value_format, workers=2, routes=routes,
                                    partitions=3, flush_timeout=60)).run(reads())
    assert account.delivered == COUNT and account.lost == 0
    return routes


def merged(chunks) -> list[tuple[int, bytes]]:
    """(sequence, ITCH message struct bytes) of every tick, in the order the chunks give."""
    ticks = []
    for chunk in chunks:
        in_chunk = []
        for rows in chunk.values():
            structs = consume.messages(rows)
            in_chunk += zip(rows["sequence"].tolist(), (s.tobytes() for s in structs))
        ticks += sorted(in_chunk)
    return ticks


def source_structs() -> list[tuple[int, bytes]]:
    out = []
    for sequence, message in enumerate(SOURCE_MESSAGES, start=1):
        parsed = itch.parse(len(message).to_bytes(2, "big") + message)
        out.append((sequence, next(iter(parsed.values()))[0].tobytes()))
    return out


@pytest.mark.parametrize("value_format", ["struct", "raw", "json", "batched", "arrow"])
def test_read_gives_every_tick_once_in_feed_order(kafka, topic_prefix, simulator, value_format):
    routes = publish(kafka, topic_prefix, simulator, value_format)
    reader = consume.read(kafka, routes.topics)         # the format from the schema topic
    assert reader.value_format == value_format
    chunks = list(reader)
    assert merged(chunks) == source_structs()
    last = 0
    for chunk in chunks:        # chunks follow each other in feed order
        assert min(int(r["sequence"][0]) for r in chunk.values()) > last
        last = max(int(r["sequence"][-1]) for r in chunk.values())
    assert reader.records > 0 and reader.ticks == COUNT


def test_read_holds_at_most_about_max_buffered(kafka, topic_prefix, simulator):
    routes = publish(kafka, topic_prefix, simulator)
    reader = consume.read(kafka, routes.topics, max_buffered=300,
                          settings={"queued.max.messages.kbytes": 64,
                                    "max.partition.fetch.bytes": 4096})
    assert merged(reader) == source_structs()
    # max_buffered, plus what librdkafka had fetched for a partition before it was paused;
    # far from the whole topic (COUNT)
    assert reader.pauses > 0 and reader.most_held <= 3 * 300


def test_read_starts_at_a_sequence_number_and_stops_at_the_end(kafka, topic_prefix, simulator):
    routes = publish(kafka, topic_prefix, simulator)
    assert merged(consume.read(kafka, routes.topics, "seq:5001")) == source_structs()[5000:]
    assert merged(consume.read(kafka, routes.topics, "end")) == []
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert merged(consume.read(kafka, routes.topics, future)) == []


@pytest.mark.parametrize("value_format", ["struct", "batched"])
def test_seq_seeks_to_the_sequence_number_instead_of_reading_the_topic(
        kafka, topic_prefix, simulator, value_format):
    """seq:N is a binary search over each partition's offsets, not a scan from the beginning:
    the records read are about the ticks from N on, not the whole topic."""
    routes = publish(kafka, topic_prefix, simulator, value_format, pause=0.02)
    start = COUNT - 300
    reader = consume.read(kafka, routes.topics, f"seq:{start}", value_format=value_format)
    ticks = merged(reader)
    assert ticks == source_structs()[start - 1:]
    if value_format == "struct":
        assert reader.records == COUNT - start + 1
    else:       # a release's records, each whole: far fewer than the topic holds
        everything = consume.read(kafka, routes.topics, value_format=value_format)
        assert len(merged(everything)) == COUNT
        assert reader.records < everything.records / 2


def test_follow_sees_ticks_published_after_it_started(kafka, topic_prefix, simulator):
    routes = Routes.by_category(topic_prefix)
    from feedhandler.kafka.sink import SinkConfig, open_sink
    open_sink(SinkConfig(kafka, routes=routes, partitions=3)).finish()  # topics, schema
    reader = consume.read(kafka, routes.topics, "end", follow=True, settle=0.2)
    ticks = []

    def follow():
        for chunk in reader:
            ticks.extend(merged([chunk]))
            if len(ticks) >= COUNT:
                break
    thread = threading.Thread(target=follow)
    thread.start()
    publish(kafka, topic_prefix, simulator)
    thread.join(60)
    assert not thread.is_alive()
    assert ticks == source_structs() and reader.late == 0


def test_decoded_and_pandas_output(kafka, topic_prefix, simulator):
    pd = pytest.importorskip("pandas")
    routes = publish(kafka, topic_prefix, simulator)
    day = dt.date(2024, 3, 15)
    arrays = {}
    for chunk in consume.read(kafka, routes.topics, trade_date=day):
        for t, rows in chunk.items():
            arrays.setdefault(t, []).append(rows)
    adds = np.concatenate(arrays["A"])
    decoded = consume.decode({"A": adds}, day)["A"]
    assert decoded["stock"].dtype.kind == "U" and not any(s.endswith(" ") for s in
                                                         decoded["stock"])
    assert np.allclose(decoded["price"], adds["price"] / 10_000)
    midnight_utc = np.datetime64("2024-03-15T04:00:00", "ns")      # EDT
    assert (decoded["time"] - midnight_utc).astype(np.int64).tolist() == \
        adds["timestamp"].astype(np.int64).tolist()
    frames = list(consume.read(kafka, routes.topics, output="pandas", trade_date=day))
    frame = pd.concat(frames, ignore_index=True)
    assert frame["sequence"].tolist() == list(range(1, COUNT + 1))
    first_add = frame[frame["message_type"] == "A"].iloc[0]
    assert first_add["price"] == adds["price"][0] / 10_000
    assert str(first_add["time"].tz) == "America/New_York"
    assert first_add["time"].date() == day

"""The handler off the happy path, on the real broker: a frame source that fails, a producer
queue limited in bytes. Each run ends by counting what reached Kafka."""

import sys
import threading

import pytest

from brokers import kcat_count
from feedhandler.exchange import orderflow
from feedhandler.kafka import consume
from feedhandler.kafka.routing import Routes
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.session import LoginRejected, SequenceTracker
from feedhandler.wire import packet
from streams import SESSION, split_block
from test_handler import unwritable_topics

pytestmark = pytest.mark.kafka

COUNT = 30_000
SOURCE_MESSAGES = split_block(orderflow.generate(COUNT, symbols=40, seed=23).data)
PER_FRAME = 250
FRAMES = [packet.encode(SOURCE_MESSAGES[i:i + PER_FRAME], session=SESSION, sequence=1 + i)
          for i in range(0, COUNT, PER_FRAME)]


def ticks_in_kafka(kafka: str, routes: Routes, value_format: str) -> int:
    """Ticks the topics hold: records counted by kcat, or rows of the batched records."""
    if value_format != "batched":
        return sum(kcat_count(kafka, topic) for topic in routes.topics)
    return sum(len(rows) for topic in routes.topics for record in consume.read_topic(kafka, topic)
               for rows in consume.to_arrays([record.value()], "batched").values())


def config(kafka, prefix, value_format="struct", **options) -> HandlerConfig:
    return HandlerConfig(kafka, value_format=value_format, workers=2,
                         routes=Routes.by_category(prefix), partitions=3, flush_timeout=60,
                         **options)


@pytest.mark.parametrize("value_format", ["struct", "batched"])
def test_a_failing_source_is_drained_flushed_and_settled_before_the_error(kafka, topic_prefix,
                                                                         value_format):
    """The frame source raises after 100 frames (as a reconnect refused by the exchange does):
    every tick read before that is published and acknowledged, the account is settled, the
    publisher is gone, nothing process-wide is left changed, and then the error surfaces."""
    def frames():
        yield from FRAMES[:100]
        raise LoginRejected(b"A")

    handler = Handler(config(kafka, topic_prefix, value_format))
    switch_interval = sys.getswitchinterval()
    with pytest.raises(LoginRejected):
        handler.run(frames())
    account = handler.account
    assert account.frames == 100 and account.decoded == 100 * PER_FRAME
    assert account.delivered == 100 * PER_FRAME and account.lost == 0
    assert handler.outstanding() == 0
    assert not [t for t in threading.enumerate() if t.name == "fh-publisher"]
    assert sys.getswitchinterval() == switch_interval
    assert ticks_in_kafka(kafka, handler.config.routes, value_format) == 100 * PER_FRAME


@pytest.mark.parametrize("value_format, linked", [
    ("batched", True), ("struct", True), ("struct", False), ("raw", True)])
def test_a_producer_queue_limited_in_bytes_holds_the_reader_back(kafka, topic_prefix,
                                                                 value_format, linked):
    """queue.buffering.max.kbytes far below what the message limit allows: the publisher waits
    for room by bytes too, splits batched records to fit, and loses nothing."""
    handler = Handler(config(kafka, topic_prefix, value_format,
                             producer_link="require" if linked else "off",
                             producer_overrides={"queue.buffering.max.kbytes": "256",
                                                 "linger.ms": "500"}))
    account = handler.run(iter(FRAMES))
    assert account.decoded == COUNT
    assert account.delivered == COUNT and account.lost == 0, account.failure_reasons
    assert account.backpressure_waits > 0
    assert ticks_in_kafka(kafka, handler.config.routes, value_format) == COUNT


def test_delivery_failures_are_logged_by_reason_with_counts_not_per_record(kafka, topic_prefix,
                                                                            caplog):
    """An outage fails thousands of records: the log says so with counts, not once each."""
    unwritable_topics(kafka, topic_prefix)
    handler = Handler(config(kafka, topic_prefix, producer_link="off"))
    account = handler.run(iter(FRAMES[:8]))
    assert account.failed > 100 and account.lost == account.failed
    lines = [r for r in caplog.records if "delivery failed" in r.getMessage()]
    assert 1 <= len(lines) <= len(account.failure_reasons) * 2
    assert "so far" in lines[0].getMessage()


def test_the_lost_figure_of_a_handler_used_directly_includes_the_sources_gaps(kafka,
                                                                               topic_prefix):
    """A frame source's sequence tracker says what the feed never brought; the handler's
    account counts it as lost, whoever runs the handler."""
    tracker = SequenceTracker(SESSION)
    frames = [frame for f in FRAMES[:2] + FRAMES[4:6] for frame in tracker.accept(f)]
    frames += tracker.give_up_all()     # the frames held behind the gap

    class Source:
        def batches(self):
            yield frames

    Source.tracker = tracker
    account = Handler(config(kafka, topic_prefix)).run(Source())
    assert account.gaps == 1 and account.missing == 2 * PER_FRAME
    assert account.delivered == 4 * PER_FRAME and account.lost == 2 * PER_FRAME

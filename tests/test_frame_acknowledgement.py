"""A frame counts as acknowledged only once every record of it, and of every frame before it, is
in Kafka: the position a checkpoint claims depends on it.

Partitions are acknowledged independently. The sink once counted a frame acknowledged when the
number of acknowledged records reached the running total at its end, so a later frame's records
on a quick partition could stand in for one still in flight: here a dead letter, held up because
its topic does not exist yet, while the ticks after it are acknowledged."""

import time

import pytest

from faults.checker import check_topics
from feedhandler.kafka.config import KafkaClientConfig
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.producer import create_producer
from feedhandler.kafka.routing import Routes
from feedhandler.kafka.sink import BatchedSink, LinkedTickSink, ProducerTickSink, SinkConfig
from feedhandler.kafka.topics import ensure_topics
from feedhandler.wire import packet
from feedhandler.exchange import orderflow
from streams import SESSION, split_block

pytestmark = pytest.mark.kafka

MESSAGES = split_block(orderflow.generate(400, symbols=20, seed=5).data)
SINKS = {"struct": LinkedTickSink, "json": ProducerTickSink, "batched": BatchedSink}


def frames():
    """Frame 1: 200 ticks and a message of an unknown type (a dead letter); frame 2: 200."""
    unknown = b"Z" + MESSAGES[0][1:]
    first = packet.decode(packet.encode([*MESSAGES[:200], unknown], session=SESSION,
                                        sequence=1), policy="quarantine")
    second = packet.decode(packet.encode(MESSAGES[200:], session=SESSION, sequence=202))
    assert len(first.quarantined) == 1 and not second.quarantined
    return first, second


def served_until(sink, done, seconds):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        sink.service()
        time.sleep(0.02)
    return done()


def sink_without_dead_letter_topic(kafka, topic_prefix, value_format, link_of=lambda link: link):
    """A sink for `value_format` with its ProducerLink (as `link_of` gives it), on tick topics
    of 2 partitions and a dead-letter topic that does not exist yet (create it with
    `ensure_topics(client, {routes.dead_letter: 1})`); also the producer, client and routes."""
    routes = Routes.by_category(topic_prefix)
    client = KafkaClientConfig(kafka)
    partitions = ensure_topics(client, {**dict.fromkeys(routes.topics, 2),
                                        routes.checkpoint: 1})
    partitions[routes.dead_letter] = 1
    errors = DeliveryErrors()
    producer, link, _ = create_producer(client, errors, "require")
    sink = SINKS[value_format](SinkConfig(kafka, value_format, routes, partitions=2), producer,
                               link_of(link), partitions, DeliveryLedger(errors))
    return sink, producer, client, routes


def assert_nothing_counts_before_the_dead_letters(sink, producer, dead_letters: int) -> None:
    """Every tick is acknowledged (only the `dead_letters` are left in the producer), and
    checkpoints are due (CHECKPOINT_INTERVAL), and yet nothing counts as acknowledged."""
    assert served_until(sink, lambda: len(producer) == dead_letters, 30)
    served_until(sink, lambda: False, 1.5)
    assert len(producer) == dead_letters
    assert sink.ledger.acks.next_sequence == 0 and sink.ledger.acks.ticks == 0
    assert sink.checkpointed_sequence == 0


@pytest.mark.parametrize("value_format", SINKS)
def test_a_frame_waits_for_its_dead_letter_and_so_does_the_checkpoint(kafka, topic_prefix,
                                                                       value_format):
    sink, producer, client, routes = sink_without_dead_letter_topic(kafka, topic_prefix,
                                                                    value_format)
    first, second = frames()
    for frame in (first, second):
        sink.publish(frame, time.monotonic_ns())
        sink.idle()         # batched: each frame released at once
    ticks = sum(map(len, first.messages.values())) + sum(map(len, second.messages.values()))
    # Frame 1 awaits its dead letter.
    assert_nothing_counts_before_the_dead_letters(sink, producer, 1)
    ensure_topics(client, {routes.dead_letter: 1})
    assert served_until(sink, lambda: sink.ledger.acks.next_sequence == second.next_sequence,
                        60)
    assert sink.ledger.acks.ticks == ticks
    assert sink.finish() == {"delivered": ticks, "failed": 0, "undelivered": 0}
    assert sink.checkpointed_sequence == second.next_sequence
    # In Kafka: every tick once, in feed order per symbol, and the one dead letter.
    result = check_topics(kafka, routes, value_format, expected=range(1, second.next_sequence))
    assert result.ok and result.ticks == ticks, result.summary()
    assert result.dead_lettered == [(201, 201)]

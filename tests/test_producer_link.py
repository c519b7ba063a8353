"""The ProducerLink: per-tick records produced from C into the shared Producer's own handle."""

import gc

import pytest
from confluent_kafka import KafkaException, Producer

from feedhandler.kafka import _producer_link, consume
from feedhandler.wire import packet
from feedhandler.kafka.ledger import DeliveryErrors
from feedhandler.kafka.producer import create_producer
from feedhandler.kafka.topics import ensure_topics
from feedhandler.kafka.routing import StockDirectory
from streams import SESSION, split_block
from feedhandler.exchange import orderflow

pytestmark = pytest.mark.kafka

SOURCE_MESSAGES = split_block(orderflow.generate(500, symbols=5, seed=3).data)
PACKET = packet.decode(packet.encode(SOURCE_MESSAGES, session=SESSION, sequence=1))


def linked(kafka, topic, **overrides):
    ensure_topics(kafka, {topic: 2})
    errors = DeliveryErrors()
    producer, link = create_producer(kafka, overrides, errors)
    assert link is not None and errors.link is link
    link.open_topics([topic], [2])
    return producer, link, errors


def produce(link, directory=None):
    directory = directory or StockDirectory()
    return link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                              dict.fromkeys(PACKET.messages, 0), directory.keys,
                              directory.hashes)


def test_every_tick_lands_and_is_acknowledged_in_c(kafka, topic_prefix):
    topic = topic_prefix + "ticks"
    producer, link, errors = linked(kafka, topic)
    assert produce(link) == len(SOURCE_MESSAGES)
    assert producer.flush(30) == 0
    assert link.acknowledged == len(SOURCE_MESSAGES) and link.failed == 0
    records = consume.read_topic(kafka, topic)
    assert sorted(r.value()[:1] + r.value()[1:3] for r in records) == \
        sorted(m[:1] + m[1:3][::-1] for m in SOURCE_MESSAGES)   # type, then locate (LE)


def test_records_produced_through_the_producer_itself_are_left_to_its_callbacks(kafka,
                                                                                 topic_prefix):
    topic = topic_prefix + "own"
    producer, link, errors = linked(kafka, topic)
    producer.produce(topic, b"not a tick")
    assert producer.flush(30) == 0
    assert link.acknowledged == 0 and link.failed == 0


def test_refused_records_are_counted_as_failed_with_the_reason(kafka, topic_prefix):
    topic = topic_prefix + "full"
    producer, link, errors = linked(kafka, topic, **{"queue.buffering.max.messages": "100"})
    assert produce(link) == len(SOURCE_MESSAGES)
    assert link.refused == len(SOURCE_MESSAGES) - 100 == link.failed
    assert link.failures() == {"Local: Queue full": link.refused}
    assert errors.records == link.refused and errors.reasons["Local: Queue full"] == link.refused
    assert producer.flush(30) == 0
    assert link.acknowledged == 100


def test_the_plugin_loads_only_for_a_linked_producer(kafka):
    with pytest.raises(KafkaException, match="linked_producer"):
        Producer({"bootstrap.servers": kafka, "plugin.library.paths": _producer_link.__file__})


def test_bad_arguments_are_refused_before_anything_is_produced(kafka, topic_prefix):
    topic = topic_prefix + "bad"
    producer, link, errors = linked(kafka, topic)
    directory = StockDirectory()
    with pytest.raises(ValueError, match="stock locate"):
        link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                           dict.fromkeys(PACKET.messages, 0), directory.keys[:10],
                           directory.hashes)
    with pytest.raises(ValueError, match="topic index"):
        link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                           dict.fromkeys(PACKET.messages, 1), directory.keys, directory.hashes)
    keys = list(directory.keys)
    keys[int(next(iter(PACKET.messages.values()))["stock_locate"][0])] = "not bytes"
    with pytest.raises(TypeError, match="not bytes"):
        link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                           dict.fromkeys(PACKET.messages, 0), keys, directory.hashes)
    assert producer.flush(30) == 0 and link.acknowledged == 0
    unlinked = _producer_link.ProducerLink()
    unlinked.open_topics([topic], [2])
    with pytest.raises(RuntimeError, match="handle is gone"):
        produce(unlinked)


def test_a_failed_open_keeps_the_topics_it_had(kafka, topic_prefix):
    topic = topic_prefix + "open"
    producer, link, errors = linked(kafka, topic)
    with pytest.raises(ValueError, match="at least one partition"):
        link.open_topics([topic, topic + "2"], [2, 0])
    assert produce(link) == len(SOURCE_MESSAGES)
    assert producer.flush(30) == 0 and link.acknowledged == len(SOURCE_MESSAGES)


def test_a_closed_producer_is_refused_not_crashed_into(kafka, topic_prefix):
    topic = topic_prefix + "closed"
    producer, link, errors = linked(kafka, topic)
    producer.close()
    with pytest.raises(RuntimeError, match="handle is gone"):
        produce(link)
    del link


def test_a_link_in_a_reference_cycle_is_collected_without_hanging(kafka, topic_prefix):
    """The link holds the producer; an error callback closing the cycle leaves the order of
    destruction to the garbage collector, which must not wait on anything the link holds."""
    topic = topic_prefix + "cycle"
    producer, link, errors = linked(kafka, topic)
    produce(link)
    assert producer.flush(30) == 0
    holder = {"link": link}
    errors._units_of = lambda message, holder=holder: 1     # producer -> errors -> holder
    holder["producer"] = producer                            # holder -> producer, link
    del producer, link, errors, holder
    assert gc.collect() > 0


def test_records_in_flight_when_the_producer_goes_are_counted_into_a_live_tally(kafka,
                                                                                topic_prefix):
    """librdkafka goes on acknowledging (or failing) records after its on_destroy: the counts
    must land in memory that is still the link's. An AddressSanitizer build caught writes into
    freed memory here when the tally was released at on_destroy."""
    topic = topic_prefix + "inflight"
    producer, link, errors = linked(kafka, topic, **{"linger.ms": "0"})
    for _ in range(20):
        produce(link)
    del link, errors
    del producer            # destroyed with records still in flight
    gc.collect()            # producer -> on_delivery -> errors -> link -> producer
    producer, link, errors = linked(kafka, topic)
    assert produce(link) == len(SOURCE_MESSAGES) and producer.flush(30) == 0

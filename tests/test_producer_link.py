"""The ProducerLink: per-tick records produced from C into the shared Producer's own handle."""

import gc
import logging
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time

import confluent_kafka
import pytest
from confluent_kafka import KafkaException, Producer

from feedhandler.kafka import _producer_link, consume, producer as producers
from feedhandler.wire import packet
from feedhandler.kafka.config import KafkaClientConfig
from feedhandler.kafka.ledger import DeliveryErrors
from feedhandler.kafka.producer import (BATCH_PATH, LINK_PATH, ProducerLinkUnavailable,
                                        create_producer)
from feedhandler.kafka.topics import ensure_topics
from feedhandler.kafka.routing import StockDirectory
from streams import SESSION, split_block
from feedhandler.exchange import orderflow

pytestmark = pytest.mark.kafka

SOURCE_MESSAGES = split_block(orderflow.generate(500, symbols=5, seed=3).data)
PACKET = packet.decode(packet.encode(SOURCE_MESSAGES, session=SESSION, sequence=1))


def linked(kafka, topic, **overrides):
    client = KafkaClientConfig(kafka, overrides)
    ensure_topics(client, {topic: 2})
    errors = DeliveryErrors()
    producer, link, path = create_producer(client, errors, "require")
    assert link is not None and errors.link is link and path == LINK_PATH
    link.open_topics([topic], [2])
    return producer, link, errors


def produce(link, directory=None):
    directory = directory or StockDirectory()
    return link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                              dict.fromkeys(PACKET.messages, 0), directory.keys,
                              directory.hashes, PACKET.session)


def test_every_tick_lands_and_is_acknowledged_in_c(kafka, topic_prefix):
    topic = topic_prefix + "ticks"
    producer, link, errors = linked(kafka, topic)
    assert produce(link) == len(SOURCE_MESSAGES)
    assert producer.flush(30) == 0
    assert link.acknowledged == len(SOURCE_MESSAGES) and link.failed == 0
    records = consume.read_topic(kafka, topic)
    values = sorted((r.value() for r in records), key=lambda v: v[10:18][::-1])
    assert [v[:10] for v in values] == [PACKET.session] * len(SOURCE_MESSAGES)
    assert [int.from_bytes(v[10:18], "little") for v in values] == \
        list(range(PACKET.sequence, PACKET.sequence + len(SOURCE_MESSAGES)))
    # then the struct: type, then locate (LE)
    assert [v[18:19] + v[19:21] for v in values] == \
        [m[:1] + m[1:3][::-1] for m in SOURCE_MESSAGES]


def test_records_produced_through_the_producer_itself_are_left_to_its_callbacks(kafka,
                                                                                 topic_prefix):
    topic = topic_prefix + "own"
    producer, link, errors = linked(kafka, topic)
    producer.produce(topic, b"not a tick")
    assert producer.flush(30) == 0
    assert link.acknowledged == 0 and link.failed == 0


def readable(fd, seconds):
    waiting = select.poll()
    waiting.register(fd, select.POLLIN)
    return bool(waiting.poll(seconds * 1000))


def test_a_frame_settles_once_every_record_up_to_it_is_acknowledged_and_signals(kafka,
                                                                                topic_prefix):
    topic = topic_prefix + "wake"
    producer, link, errors = linked(kafka, topic, **{"linger.ms": "50"})
    fd = link.acknowledgement_fd
    assert not readable(fd, 0) and link.take_settled() == []
    assert produce(link) == len(SOURCE_MESSAGES)
    link.close_frame()
    assert link.unsettled_frames == 1
    assert not readable(fd, 0)      # lingering 50 ms: nothing acknowledged yet
    before = time.monotonic_ns()
    assert readable(fd, 30)         # no poll() or flush() of the producer needed
    assert os.eventfd_read(fd) >= 1
    (settled_ns,) = link.take_settled()
    assert before <= settled_ns <= time.monotonic_ns() and link.unsettled_frames == 0
    assert link.take_settled() == []            # taken once
    link.close_frame()              # nothing produced since: settled at once, in order
    assert readable(fd, 0) and len(link.take_settled()) == 1
    assert producer.flush(30) == 0


def test_thousands_of_frames_in_flight_settle_in_order_once_each(kafka, topic_prefix):
    """Frames pile up while the records linger (the link's arrays grow and slide) and are
    taken while others are still in flight; each settles once, in order, none before its
    records are produced."""
    topic = topic_prefix + "many"
    producer, link, errors = linked(kafka, topic, **{"linger.ms": "30"})
    directory = StockDirectory()
    taken, frames = [], 0
    for round_number in range(6):
        for _ in range(250):
            produce(link, directory)
            link.close_frame()
            link.close_frame()          # and one that made no record
            frames += 2
        taken += link.take_settled()
        time.sleep(0.01 * round_number)
    assert producer.flush(30) == 0
    taken += link.take_settled()
    assert len(taken) == frames and link.unsettled_frames == 0
    assert taken == sorted(taken) and taken[0] > 0
    assert link.acknowledged == frames // 2 * len(SOURCE_MESSAGES) and link.failed == 0


def test_records_the_producer_sends_to_a_tracked_topic_are_part_of_the_frame(kafka,
                                                                             topic_prefix):
    topic, letters = topic_prefix + "mixed", topic_prefix + "letters"
    client = KafkaClientConfig(kafka)
    ensure_topics(client, {topic: 2})
    producer, link, _ = create_producer(client, DeliveryErrors(), "require")
    link.open_topics([topic, letters], [2, 1])
    producer.list_topics(topic, timeout=30)     # as the sink does: partitions known at once
    with pytest.raises(RuntimeError, match="already open"):
        link.open_topics([topic], [2])
    with pytest.raises(ValueError, match="no tracked topic 1 partition 1"):
        link.count_produced(1, 1)
    # The dead-letter topic does not exist yet: its record waits in the producer while the
    # ticks are acknowledged, and the frame waits for it.
    link.count_produced(1, 0)
    producer.produce(letters, b"a dead letter", partition=0)
    assert produce(link) == len(SOURCE_MESSAGES)
    link.close_frame()
    deadline = time.monotonic() + 30
    while link.acknowledged < len(SOURCE_MESSAGES) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.acknowledged == len(SOURCE_MESSAGES)   # every tick, and yet:
    assert not readable(link.acknowledgement_fd, 0.5) and link.unsettled_frames == 1
    ensure_topics(client, {letters: 1})
    assert readable(link.acknowledgement_fd, 30) and len(link.take_settled()) == 1
    assert producer.flush(30) == 0


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
                           directory.hashes, PACKET.session)
    with pytest.raises(ValueError, match="topic index"):
        link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                           dict.fromkeys(PACKET.messages, 1), directory.keys, directory.hashes,
                           PACKET.session)
    keys = list(directory.keys)
    keys[int(next(iter(PACKET.messages.values()))["stock_locate"][0])] = "not bytes"
    with pytest.raises(TypeError, match="not bytes"):
        link.produce_ticks(PACKET.messages, PACKET.sequences, PACKET.sequence, PACKET.count,
                           dict.fromkeys(PACKET.messages, 0), keys, directory.hashes,
                           PACKET.session)
    assert producer.flush(30) == 0 and link.acknowledged == 0
    unlinked = _producer_link.ProducerLink()
    unlinked.open_topics([topic], [2])
    with pytest.raises(RuntimeError, match="handle is gone"):
        produce(unlinked)


def test_topics_open_once_and_a_refused_open_keeps_the_topics_it_had(kafka, topic_prefix):
    topic = topic_prefix + "open"
    producer, link, errors = linked(kafka, topic)
    with pytest.raises(RuntimeError, match="already open"):   # broker threads read them
        link.open_topics([topic, topic + "2"], [2, 2])
    assert produce(link) == len(SOURCE_MESSAGES)
    assert producer.flush(30) == 0 and link.acknowledged == len(SOURCE_MESSAGES)
    fresh = _producer_link.ProducerLink()
    with pytest.raises(ValueError, match="at least one partition"):
        fresh.open_topics([topic, topic + "2"], [2, 0])
    fresh.open_topics([topic], [2])         # the refused open left nothing half-made


@pytest.mark.skipif(not hasattr(Producer, "close"),
                    reason="Producer.close() came after confluent-kafka 2.12")
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


def test_librdkafka_is_bound_through_confluent_kafkas_own_module():
    """The functions come from the library cimpl itself links, found through cimpl's handle."""
    version = _producer_link.bind_library(confluent_kafka.cimpl.__file__)
    # libversion() is (text, int) in most releases, the text alone in 2.12.0
    assert f"{version >> 24}.{version >> 16 & 0xFF}.{version >> 8 & 0xFF}" in \
        str(confluent_kafka.libversion())
    with pytest.raises(OSError, match="not loaded"):
        _producer_link.bind_library("/nonexistent/cimpl.so")


def test_a_second_copy_of_librdkafka_in_the_process_is_not_used(kafka, topic_prefix, tmp_path):
    """Another copy of librdkafka loaded after confluent_kafka's (as another extension bundling
    its own would be) maps at a lower address, so it came first in /proc/self/maps, where the
    link used to look: it called the copy's functions with the other copy's handle."""
    maps = open("/proc/self/maps").read().split()
    library = next(path for path in maps if os.path.basename(path).startswith("librdkafka"))
    copy = tmp_path / "librdkafka-second-copy.so.1"
    shutil.copy(library, copy)
    script = textwrap.dedent(f"""
        import ctypes, sys
        sys.path[:0] = {[os.getcwd(), os.path.dirname(__file__)]!r}
        import confluent_kafka
        ctypes.CDLL({str(copy)!r})
        from feedhandler.kafka import _producer_link
        from test_producer_link import linked, produce, SOURCE_MESSAGES
        producer, link, errors = linked({kafka!r}, {topic_prefix + "copy"!r})
        assert produce(link) == len(SOURCE_MESSAGES)
        assert producer.flush(30) == 0 and link.acknowledged == len(SOURCE_MESSAGES)
        print(_producer_link.bound_library())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.samefile(result.stdout.strip(), library)


@pytest.fixture
def untested_librdkafka(monkeypatch):
    """confluent_kafka's librdkafka reports a version the link was never tested with."""
    monkeypatch.setattr(producers, "bind_librdkafka", lambda: 0x63000000 | 0xff)


def test_require_refuses_an_untested_librdkafka(kafka, untested_librdkafka):
    with pytest.raises(ProducerLinkUnavailable, match="librdkafka 99.0 is not among"):
        create_producer(KafkaClientConfig(kafka), DeliveryErrors(), "require")


def test_auto_falls_back_with_one_warning_on_an_untested_librdkafka(kafka, untested_librdkafka,
                                                                    caplog):
    with caplog.at_level(logging.WARNING, logger=producers.__name__):
        producer, link, path = create_producer(KafkaClientConfig(kafka), DeliveryErrors(),
                                               "auto")
    assert link is None and path == BATCH_PATH and isinstance(producer, Producer)
    assert len(caplog.records) == 1 and "99.0" in caplog.records[0].getMessage()


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_a_plugin_that_fails_to_load(kafka, monkeypatch, caplog, mode):
    """auto: the Producer API, one warning; require: a refusal naming librdkafka's reason."""
    monkeypatch.setattr(producers._producer_link, "__file__", "/nonexistent/_producer_link.so")
    errors = DeliveryErrors()
    if mode == "require":
        with pytest.raises(ProducerLinkUnavailable, match="plugin failed.*nonexistent"):
            create_producer(KafkaClientConfig(kafka), errors, mode)
        return
    with caplog.at_level(logging.WARNING, logger=producers.__name__):
        producer, link, path = create_producer(KafkaClientConfig(kafka), errors, mode)
    assert link is None and errors.link is None and path == BATCH_PATH
    assert [r.getMessage() for r in caplog.records if "nonexistent" in r.getMessage()] == \
        [caplog.records[0].getMessage()] and len(caplog.records) == 1


def test_off_never_binds(kafka, untested_librdkafka):
    producer, link, path = create_producer(KafkaClientConfig(kafka), DeliveryErrors(), "off")
    assert link is None and path == BATCH_PATH


def test_a_link_made_before_fork_refuses_to_produce_in_the_child(kafka, topic_prefix):
    producer, link, errors = linked(kafka, topic_prefix + "fork")
    child = os.fork()
    if child == 0:          # librdkafka's threads did not come along: the handle is dead here
        try:
            produce(link)
            os._exit(1)
        except RuntimeError as error:
            os._exit(0 if "before fork" in str(error) else 2)
        except BaseException:
            os._exit(3)
    assert os.waitpid(child, 0)[1] == 0
    assert produce(link) == len(SOURCE_MESSAGES) and producer.flush(30) == 0

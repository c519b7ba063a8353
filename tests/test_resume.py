"""A handler killed with SIGKILL and restarted with the same command continues where Kafka's
data ends: every tick exactly once, per-symbol feed order, on the real broker and the real
`feedhandler run` process. Counted by sequence number from what Kafka holds."""

import signal
import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.server import Simulator
from feedhandler.kafka.resume import read_checkpoints
from feedhandler.kafka.config import KafkaClientConfig
from feedhandler.kafka.routing import Routes
from faults.checker import check_topics
from test_handler import final_account, run_cli

pytestmark = pytest.mark.kafka

COUNT = 600_000
RATE = 100_000


def assert_every_tick_once(kafka: str, prefix: str, value_format: str) -> None:
    """Every sequence number of the session exactly once, each symbol's ticks on one
    partition and in feed order (read_committed)."""
    check = check_topics(kafka, Routes.by_category(prefix), value_format, range(1, COUNT + 1))
    assert check.ok and check.distinct == COUNT, check.summary()


def checkpointed(kafka: str, prefix: str) -> bool:
    """Whether the handler has written checkpoint records under `prefix` (a read of the
    topic itself would wait for the end of a topic that keeps growing)."""
    consumer = Consumer({"bootstrap.servers": kafka, "group.id": "test-resume"})
    try:
        topic = Routes.by_category(prefix).checkpoint
        if topic not in consumer.list_topics(topic, timeout=10).topics or \
                consumer.list_topics(topic, timeout=10).topics[topic].error is not None:
            return False
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        except KafkaException:      # created a moment ago: no leader yet
            return False
        return high - low >= 2      # the stock names, then a position
    finally:
        consumer.close()


def run_and_kill(kafka, prefix, port, value_format, after: float | None, *options):
    """Run the handler, SIGKILL it (`after` seconds, or None: once it has checkpointed), run
    the same command again to its end: (exit code, final account, stderr) of the second."""
    command = ("run", "--connect", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
               "--topic-prefix", prefix, "--partitions", "3", "--format", value_format,
               "--json-stats", *options)
    first = run_cli(*command)
    try:
        if after is None:
            deadline = time.monotonic() + 60
            while not checkpointed(kafka, prefix):
                assert first.poll() is None and time.monotonic() < deadline, "never checkpointed"
                time.sleep(0.2)
            time.sleep(0.3)
        else:
            time.sleep(after)
    finally:
        first.send_signal(signal.SIGKILL)
        _, first_stderr = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, first_stderr[-3000:]
    second = run_cli(*command)
    try:
        stdout, stderr = second.communicate(timeout=180)
    finally:
        second.kill()
    return second.returncode, final_account(stdout), stderr


@pytest.mark.parametrize("value_format, after", [
    ("struct", None), ("batched", None), ("struct", 0.9),   # 0.9 s: before its first checkpoint
    # arrow resumes by batched's rules (the same records): the slow set runs it
    pytest.param("arrow", None, marks=pytest.mark.slow),
    pytest.param("raw", None, marks=pytest.mark.slow),
    pytest.param("json", None, marks=pytest.mark.slow)])
def test_a_killed_handler_restarted_with_the_same_command_writes_every_tick_once(
        kafka, topic_prefix, value_format, after):
    with Simulator(SimulatorConfig(port=0, count=COUNT, symbols=50, seed=11, rate=RATE,
                                   status_interval=None)) as exchange:
        code, account, stderr = run_and_kill(kafka, topic_prefix, exchange.port, value_format,
                                             after)
    assert code == 0, stderr
    assert_every_tick_once(kafka, topic_prefix, value_format)
    # what the restart read was either written or found in Kafka already
    assert account["delivered"] + account["already_in_kafka"] == account["decoded"], account
    if after is None:   # a checkpoint was written: the restart did not replay the session
        assert account["decoded"] < COUNT, account
    routes = Routes.by_category(topic_prefix)
    checkpoint = next(iter(read_checkpoints(KafkaClientConfig(kafka), routes).values()))
    assert checkpoint.next_sequence == COUNT + 1


@pytest.mark.parametrize("value_format", ["struct", "batched",
                                          pytest.param("arrow", marks=pytest.mark.slow)])
def test_exactly_once_a_killed_handler_leaves_every_committed_tick_once(kafka, topic_prefix,
                                                                        value_format):
    """With transactions, a read_committed reader sees every tick exactly once across a
    SIGKILL and a restart with the same command, without any skipping on restart."""
    with Simulator(SimulatorConfig(port=0, count=COUNT, symbols=50, seed=12, rate=RATE,
                                   status_interval=None)) as exchange:
        code, account, stderr = run_and_kill(kafka, topic_prefix, exchange.port, value_format,
                                             None, "--exactly-once")
    assert code == 0, stderr
    assert_every_tick_once(kafka, topic_prefix, value_format)
    assert account["already_in_kafka"] == 0 and account["decoded"] < COUNT, account
    assert account["delivered"] == account["decoded"]


def test_exactly_once_a_rerun_from_the_start_writes_nothing_twice(kafka, topic_prefix):
    """--exactly-once --sequence 1 after a complete run: the committed checkpoint says every
    tick is in Kafka, so the rerun skips them all (it used to write the session again)."""
    count = 20_000
    command = ("run", "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
               "--partitions", "3", "--json-stats", "--quiet", "--exactly-once")
    accounts = []
    for _ in range(2):
        with Simulator(SimulatorConfig(port=0, count=count, symbols=50, seed=13,
                                       status_interval=None)) as exchange:
            run = run_cli(*command, "--connect", f"127.0.0.1:{exchange.port}", "--sequence", "1")
            stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr[-3000:]
        accounts.append(final_account(stdout))
    assert accounts[0]["delivered"] == count, accounts[0]
    assert accounts[1]["already_in_kafka"] == count and accounts[1]["produced"] == 0, accounts[1]
    check = check_topics(kafka, Routes.by_category(topic_prefix), "struct", range(1, count + 1))
    assert check.ok and check.distinct == count, check.summary()

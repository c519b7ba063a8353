"""A handler killed with SIGKILL and restarted with the same command continues where Kafka's
data ends: every tick exactly once, per-symbol feed order, on the real broker and the real
`feedhandler run` process. Counted by sequence number from what Kafka holds."""

import signal
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.server import Simulator
from feedhandler.kafka import consume
from feedhandler.kafka.resume import read_checkpoints
from feedhandler.kafka.config import KafkaClientConfig
from feedhandler.kafka.routing import Routes
from test_handler import final_account, run_cli

pytestmark = pytest.mark.kafka

COUNT = 300_000
RATE = 100_000


def ticks_in_kafka(kafka: str, routes: Routes, value_format: str):
    """Every tick's sequence number in Kafka (with repeats), and whether each partition holds
    its ticks in feed order."""
    sequences = []
    ordered = True
    for topic in routes.topics:
        by_partition = defaultdict(list)
        for record in consume.read_topic(kafka, topic):
            for rows in consume.to_arrays([record.value()], value_format).values():
                by_partition[record.partition()].extend(rows["sequence"].tolist())
        for partition_sequences in by_partition.values():
            sequences += partition_sequences
            if value_format != "batched":
                ordered &= bool(np.all(np.diff(partition_sequences) > 0))
    return sequences, ordered


def run_and_kill(kafka, prefix, port, value_format, after: float):
    command = ("run", "--connect", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
               "--topic-prefix", prefix, "--partitions", "3", "--format", value_format,
               "--json-stats")
    first = run_cli(*command)
    time.sleep(after)
    first.send_signal(signal.SIGKILL)
    _, first_stderr = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, first_stderr[-3000:]
    second = run_cli(*command)
    stdout, stderr = second.communicate(timeout=180)
    return second.returncode, final_account(stdout), stderr


@pytest.mark.parametrize("value_format, after", [
    ("struct", 2.5), ("batched", 2.5), ("struct", 0.9),     # 0.9 s: before its first checkpoint
    pytest.param("raw", 2.5, marks=pytest.mark.slow),
    pytest.param("json", 2.5, marks=pytest.mark.slow)])
def test_a_killed_handler_restarted_with_the_same_command_writes_every_tick_once(
        kafka, topic_prefix, value_format, after):
    with Simulator(SimulatorConfig(port=0, count=COUNT, symbols=50, seed=11, rate=RATE,
                                   status_interval=None)) as exchange:
        code, account, stderr = run_and_kill(kafka, topic_prefix, exchange.port, value_format,
                                             after)
    assert code == 0, stderr
    routes = Routes.by_category(topic_prefix)
    sequences, ordered = ticks_in_kafka(kafka, routes, value_format)
    repeated = {s: n for s, n in Counter(sequences).items() if n > 1}
    missing = set(range(1, COUNT + 1)) - set(sequences)
    assert not repeated and not missing, (len(repeated), len(missing), account)
    assert ordered
    # what the restart read was either written or found in Kafka already
    assert account["delivered"] + account["already_in_kafka"] == account["decoded"], account
    if after > 2:   # a checkpoint was written: the restart did not replay the session
        assert account["decoded"] < COUNT, account
    checkpoint = next(iter(read_checkpoints(KafkaClientConfig(kafka), routes).values()))
    assert checkpoint.next_sequence == COUNT + 1

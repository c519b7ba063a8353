"""The handler end to end on the real broker: simulator -> session -> decode -> Kafka."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from brokers import kcat_count
from feedhandler.exchange import orderflow
from feedhandler.kafka import _records, consume
from feedhandler.wire import itch, packet
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.kafka.routing import TICK_HEADER_SIZE, Routes, StockDirectory
from feedhandler.session import SessionClient
from feedhandler.exchange.server import Simulator, SimulatorConfig
from streams import SESSION, split_block

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent

COUNT = 30_000
SYMBOLS = 40
SEED = 17
PARTITIONS = 3
SOURCE = orderflow.generate(COUNT, symbols=SYMBOLS, seed=SEED)
SOURCE_MESSAGES = split_block(SOURCE.data)


@pytest.fixture(scope="module")
def simulator():
    sim = Simulator(SimulatorConfig(port=0, count=COUNT, symbols=SYMBOLS, seed=SEED,
                                    status_interval=None)).start()
    yield sim
    sim.stop()


def handle(kafka, prefix, value_format, workers, frames, **options):
    config = HandlerConfig(kafka, value_format=value_format, workers=workers,
                           routes=Routes.by_category(prefix), partitions=PARTITIONS,
                           flush_timeout=60, **options)
    handler = Handler(config)
    return handler, handler.run(frames)


def session_frames(simulator):
    client = SessionClient("127.0.0.1", simulator.port, username="feed", password="feed")
    return client.frame_batches()


def source_by_topic(routes: Routes) -> dict[str, list[tuple[int, bytes]]]:
    """(sequence, message) of every source message, by the topic it must land in."""
    out = defaultdict(list)
    for sequence, message in enumerate(SOURCE_MESSAGES, start=1):
        out[routes.topic_of_type[chr(message[0])]].append((sequence, message))
    return out


def source_keys() -> list[bytes]:
    directory = StockDirectory()
    directory.update(itch.parse(SOURCE.data)["R"])
    return directory.keys


def assert_per_key_feed_order(kafka, routes, value_format):
    """Every topic holds exactly its source messages, and within each partition every key's
    records are that key's messages in feed order, on the partition murmur2 picks."""
    keys = source_keys()
    for topic, expected in source_by_topic(routes).items():
        records = consume.read_topic(kafka, topic)
        assert len(records) == len(expected), topic
        got_by_key = defaultdict(list)
        for record in records:
            got_by_key[record.key()].append(record.value())
            assert record.partition() == _records.partition_for(record.key(), PARTITIONS)
        want_by_key = defaultdict(list)
        for sequence, message in expected:
            want_by_key[keys[int.from_bytes(message[1:3], "big")]].append((sequence, message))
        assert got_by_key.keys() == want_by_key.keys()
        for key, values in got_by_key.items():
            arrays = consume.to_arrays(values, value_format)
            wanted = itch.parse(b"".join(len(m).to_bytes(2, "big") + m
                                         for _, m in want_by_key[key]))
            assert arrays.keys() == wanted.keys(), (topic, key)
            for t in wanted:
                assert np.array_equal(consume.messages(arrays[t]), wanted[t]), (topic, key, t)
            sequences = sorted(s for a in arrays.values() for s in a["sequence"].tolist())
            assert sequences == [s for s, _ in want_by_key[key]], (topic, key)
            if value_format != "json":
                types = [chr(v[TICK_HEADER_SIZE]) for v in values]
                assert types == [chr(m[0]) for _, m in want_by_key[key]], (topic, key)


@pytest.mark.parametrize("value_format, workers, linked", [
    ("struct", 1, True), ("struct", 4, True), ("struct", 2, False), ("json", 2, True),
    ("raw", 2, True), ("raw", 2, False)])
def test_seeded_run_lands_exactly_once_in_feed_order(kafka, topic_prefix, simulator,
                                                     value_format, workers, linked):
    handler, account = handle(kafka, topic_prefix, value_format, workers,
                              session_frames(simulator),
                              producer_link="require" if linked else "off")
    assert account.messages == COUNT and account.decoded == COUNT
    assert account.delivered == COUNT and account.lost == 0 and account.quarantined == 0
    # struct and raw ticks went through the ProducerLink, which saw every one acknowledged
    assert (handler.link is not None) == linked
    if linked:
        assert handler.link.acknowledged == (COUNT if value_format != "json" else 0)
    assert_per_key_feed_order(kafka, handler.config.routes, value_format)


def test_batched_format_holds_every_tick_once_per_key_partition(kafka, topic_prefix, simulator):
    handler, account = handle(kafka, topic_prefix, "batched", 2, session_frames(simulator))
    assert account.delivered == COUNT and account.lost == 0
    keys = source_keys()
    total = 0
    for topic, expected in source_by_topic(handler.config.routes).items():
        records = consume.read_topic(kafka, topic)
        rows = defaultdict(list)
        for record in records:
            headers = dict(record.headers())
            message_type = headers["type"].decode()
            array = consume.to_arrays([record.value()], "batched")[message_type]
            assert headers["session"] == simulator.session
            for row in array:
                assert _records.partition_for(keys[row["stock_locate"]], PARTITIONS) == \
                    record.partition()
            rows[record.partition()].append(array["sequence"])
            total += len(array)
        for sequences in rows.values():
            merged = np.concatenate(sequences)
            # one partition's rows come in feed order, type by type within a frame
            assert len(np.unique(merged)) == len(merged)
        got = np.sort(np.concatenate([np.concatenate(s) for s in rows.values()]))
        assert got.tolist() == [s for s, _ in expected]
    assert total == COUNT


@pytest.mark.parametrize("linked", [True, False])
def test_headers_carry_type_session_and_sequence(kafka, topic_prefix, simulator, linked):
    handler, account = handle(kafka, topic_prefix, "struct", 2, session_frames(simulator),
                              headers=True, timestamp_base_ms=1_700_000_000_000,
                              producer_link="require" if linked else "off")
    assert account.delivered == COUNT and account.lost == 0
    assert (handler.link.acknowledged if linked else COUNT) == COUNT
    topic = handler.config.routes.topic_of_type["A"]
    records = consume.read_topic(kafka, topic)
    by_sequence = {s: m for s, m in source_by_topic(handler.config.routes)[topic]}
    for record in records[:2000]:
        headers = dict(record.headers())
        sequence = int(headers["sequence"])
        assert record.value()[TICK_HEADER_SIZE:][:1] == headers["type"] == \
            by_sequence[sequence][:1]
        assert int.from_bytes(record.value()[10:18], "little") == sequence
        assert headers["session"] == simulator.session
        timestamp_ns = int.from_bytes(by_sequence[sequence][5:11], "big")
        assert record.timestamp()[1] == 1_700_000_000_000 + timestamp_ns // 1_000_000


def test_kcat_reads_what_the_handler_wrote(kafka, topic_prefix, simulator):
    handler, account = handle(kafka, topic_prefix, "struct", 2, session_frames(simulator))
    expected = source_by_topic(handler.config.routes)
    for topic in handler.config.routes.topics:
        assert kcat_count(kafka, topic) == len(expected[topic])


def test_corrupt_input_goes_to_the_dead_letter_topic(kafka, topic_prefix):
    good = list(SOURCE_MESSAGES[:1000])
    spoiled = next(i for i in range(500, 1000) if good[i][:1] == b"A")
    bad_message = good[spoiled][:19] + b"X" + good[spoiled][20:]   # side neither B nor S
    good[spoiled] = bad_message
    frames = [packet.encode(good[:500], session=SESSION, sequence=1),
              packet.encode(good[500:], session=SESSION, sequence=501)]
    broken = bytearray(packet.encode(good[:10], session=SESSION, sequence=1001))
    broken[-3] ^= 0xFF
    frames.append(bytes(broken))
    handler, account = handle(kafka, topic_prefix, "struct", 2, iter(frames))
    # the bad message, and the ten messages of the frame set aside whole
    assert account.quarantined == 11 and account.quarantined_frames == 1
    assert account.messages == 1010
    assert account.delivered == 999 and account.lost == 0
    dead = consume.read_topic(kafka, handler.config.routes.dead_letter)
    entries = sorted((dict(r.headers())["reason"], r.value()) for r in dead)
    assert entries == sorted([(b"buy/sell indicator is not B or S", bad_message),
                              (b"checksum mismatch", bytes(broken))])
    headers = sorted((dict(r.headers()) for r in dead), key=lambda h: int(h["sequence"]))
    assert [int(h["sequence"]) for h in headers] == [1 + spoiled, 1001]
    assert headers[1]["count"] == b"10" and headers[1]["session"] == SESSION


def unwritable_topics(kafka: str, prefix: str) -> None:
    """The tick topics of `prefix`, made so that they refuse every batch."""
    admin = AdminClient({"bootstrap.servers": kafka})
    topics = [NewTopic(topic, PARTITIONS, config={"max.message.bytes": "64"})
              for topic in Routes.by_category(prefix).topics]
    for future in admin.create_topics(topics).values():
        future.result()


@pytest.mark.parametrize("linked", [True, False])
def test_delivery_failures_are_counted_not_hidden(kafka, topic_prefix, linked):
    """Records that Kafka refuses come back as failures with a reason: here the topics take
    no batch of more than 64 bytes."""
    unwritable_topics(kafka, topic_prefix)
    frames = [packet.encode(SOURCE_MESSAGES[:2000], session=SESSION, sequence=1)]
    handler, account = handle(kafka, topic_prefix, "struct", 1, iter(frames),
                              producer_link="require" if linked else "off")
    assert account.failed > 0 and account.lost == account.failed
    assert account.delivered == 2000 - account.failed
    assert any("too large" in reason.lower() for reason in account.failure_reasons), \
        account.failure_reasons
    if linked:
        assert handler.link.failed == account.failed
        assert handler.link.acknowledged == account.delivered


def test_a_full_producer_queue_holds_the_reader_back_without_loss(kafka, topic_prefix,
                                                                  simulator):
    handler, account = handle(kafka, topic_prefix, "struct", 2, session_frames(simulator),
                              producer_overrides={"queue.buffering.max.messages": "2000"})
    assert account.backpressure_waits > 0
    assert account.delivered == COUNT and account.lost == 0
    assert_per_key_feed_order(kafka, handler.config.routes, "struct")


def test_listen_mode_takes_frames_pushed_by_the_feed(kafka, topic_prefix):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = run_cli("run", "--listen", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
                      "--topic-prefix", topic_prefix, "--partitions", "2", "--json-stats")
    messages = SOURCE_MESSAGES[:5000]
    frames = [packet.encode(messages[i:i + 500], session=SESSION, sequence=1 + i)
              for i in range(0, len(messages), 500)]
    frames.append(packet.encode_block(b"", packet.END_OF_SESSION_COUNT, session=SESSION,
                                      sequence=5001))
    deadline = time.monotonic() + 30
    while True:
        try:
            feed = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "handler never listened"
            time.sleep(0.1)
    with feed:
        feed.sendall(b"".join(frames))
        stdout, stderr = handler.communicate(timeout=120)
    assert handler.returncode == 0, stderr
    assert final_account(stdout)["delivered"] == 5000
    routes = Routes.by_category(topic_prefix)
    assert sum(kcat_count(kafka, topic) for topic in routes.topics) == 5000


def run_cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "feedhandler", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def final_account(stdout: str) -> dict:
    return next(json.loads(line)["final"] for line in stdout.splitlines() if '"final"' in line)


def test_cli_exits_zero_at_end_of_session(kafka, topic_prefix, simulator):
    handler = run_cli("run", "--connect", f"127.0.0.1:{simulator.port}", "--bootstrap-servers",
                      kafka, "--topic-prefix", topic_prefix, "--partitions", "2", "--json-stats")
    stdout, stderr = handler.communicate(timeout=120)
    assert handler.returncode == 0, stderr
    account = final_account(stdout)
    assert account["delivered"] == COUNT and account["lost"] == 0
    assert "final account" in stderr


def test_sigterm_mid_run_leaves_no_accepted_tick_undelivered(kafka, topic_prefix):
    exchange = Simulator(SimulatorConfig(port=0, count=400_000, symbols=SYMBOLS, seed=3,
                                         rate=100_000, status_interval=None)).start()
    try:
        handler = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--json-stats", "--partitions", "2")
        # Stop once ticks flow (a status line says so), not after a fixed time: a loaded
        # machine can take seconds just to start the process.
        seen = []
        for line in handler.stdout:
            seen.append(line)
            if '"messages"' in line and json.loads(line)["messages"] > 0:
                break
        handler.send_signal(signal.SIGTERM)
        stdout, stderr = handler.communicate(timeout=120)
        stdout = "".join(seen) + stdout
    finally:
        exchange.stop()
    assert handler.returncode == 0, stderr
    account = final_account(stdout)
    assert 0 < account["decoded"] < 400_000          # really stopped mid-run
    assert account["delivered"] == account["decoded"] and account["lost"] == 0
    routes = Routes.by_category(topic_prefix)
    landed = sum(kcat_count(kafka, topic) for topic in routes.topics)
    assert landed == account["delivered"]


def test_a_mid_session_join_keys_messages_by_their_own_stock(kafka, topic_prefix):
    """Joining after the Stock Directory messages: every message that names its stock is keyed
    by it (not `#<locate>`), so a symbol's ticks stay on one partition across restarts."""
    late = SOURCE_MESSAGES[COUNT // 2:]
    frames = [packet.encode(late[i:i + 500], session=SESSION, sequence=1 + COUNT // 2 + i)
              for i in range(0, len(late), 500)]
    handler, account = handle(kafka, topic_prefix, "struct", 2, iter(frames))
    assert account.delivered == len(late) and account.lost == 0
    keys = source_keys()
    named = 0
    for record in consume.read_topic(kafka, handler.config.routes.topic_of_type["A"]):
        message = record.value()[TICK_HEADER_SIZE:]
        if message[:1] in (b"A", b"F"):
            assert record.key() == keys[int.from_bytes(message[1:3], "little")]
            named += 1
    assert named > 1000

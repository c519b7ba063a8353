"""End to end: simulator (its own process) -> handler -> acknowledged in Kafka, on the broker of
scripts/kafka.sh. Ticks/s per value format and worker count, next to the straightforward
pure-Python design run in the same session; frame-to-ack latency at a paced rate.

Each measurement starts with an untimed warm-up round: a freshly started broker spends its
first seconds compiling (the JVM's C2 compiler thread took a sixth of the machine in profiles)."""

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lz4.block
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from brokers import kafka, topic_prefix  # noqa: F401 (fixtures)
from feedhandler.exchange import orderflow
from feedhandler.wire import itch, packet
from feedhandler.pipeline.profiles import DEFAULT_GIL_SWITCH_INTERVAL
from feedhandler.kafka.sink import BATCH_TICKS, SinkConfig, open_sink
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.pipeline.profiles import PROFILES
from feedhandler.kafka.config import PRODUCER_DEFAULTS, KafkaClientConfig
from feedhandler.kafka.topics import ensure_topics
from feedhandler.kafka.routing import Routes, StockDirectory, batched_records
from feedhandler.session import SessionClient
from feedhandler.session.source import MAX_BATCH
from streams import split_block

ROOT = Path(__file__).resolve().parent.parent
TICKS = 1_000_000
BATCHED_TICKS = 4_000_000   # at millions of ticks/s a shorter run measures start and final flush
JSON_TICKS = 200_000
PACED_TICKS = 600_000
PACED_RATE = 200_000
PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_simulator(count: int, *options: str):
    """`feedhandler simulate` in a process of its own, so it does not share the handler's GIL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "feedhandler", "simulate", "--listen",
                                f"127.0.0.1:{port}", "--count", str(count), "--symbols", "500",
                                "--quiet", *options], cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError("simulator did not start")


@pytest.fixture(scope="module")
def feed():
    process, port = start_simulator(TICKS)
    yield port
    process.kill()


@pytest.fixture(scope="module")
def batched_feed():
    process, port = start_simulator(BATCHED_TICKS)
    yield port
    process.kill()


@pytest.fixture(scope="module")
def json_feed():
    process, port = start_simulator(JSON_TICKS)
    yield port
    process.kill()


def frames(port: int):
    return SessionClient("127.0.0.1", port, username="feed", password="feed").frame_batches()


RUNS = iter(range(1_000_000))


def new_handler(kafka, prefix, value_format, workers, **options):
    """A handler with its topics created: setup, outside the timed part."""
    config = HandlerConfig(kafka, value_format=value_format, workers=workers,
                           routes=Routes.by_category(f"{prefix}{next(RUNS)}."),
                           partitions=PARTITIONS, **options)
    return Handler(config)


def run_handler(handler, port, expected, switch_interval=DEFAULT_GIL_SWITCH_INTERVAL):
    saved = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)     # as `feedhandler run` sets it for the profile
    try:
        account = handler.run(frames(port))
    finally:
        sys.setswitchinterval(saved)
    assert account.delivered == expected and account.lost == 0


def measure(benchmark, kafka, prefix, port, value_format, workers, ticks, against=(),
            latency_key="latency_ms_at_max_rate", switch_interval=DEFAULT_GIL_SWITCH_INTERVAL,
            **options):
    benchmark.extra_info.update(messages=ticks, against=list(against))
    handlers = []

    def setup():
        handlers.append(new_handler(kafka, prefix, value_format, workers, **options))
        return (handlers[-1], port, ticks), {"switch_interval": switch_interval}

    try:
        benchmark.pedantic(run_handler, setup=setup, rounds=3, warmup_rounds=1)
    finally:
        delete_topics(kafka, handlers)
    benchmark.extra_info[latency_key] = handlers[-1].latencies.summary_ms()


def delete_topics(kafka, handlers):
    delete_topic_names(kafka, [t for h in handlers for t in h.config.routes.every_topic])


def delete_topic_names(kafka, topics):
    """Drop what a benchmark wrote: a broker holding thousands of stale partitions spends the
    cores the next benchmark is measured on."""
    admin = AdminClient({"bootstrap.servers": kafka})
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result()


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_struct(benchmark, kafka, topic_prefix, feed, workers):
    measure(benchmark, kafka, topic_prefix, feed, "struct", workers, TICKS,
            ["test_pure_python_baseline", "test_struct_through_produce_batch[2]",
             "test_librdkafka_ceiling_for_struct"])


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [2])
def test_struct_latency_profile(benchmark, kafka, topic_prefix, feed, workers):
    """`--profile latency` (linger.ms 1, reads of at most 8 frames, a 0.2 ms GIL switch
    interval): what it costs at full speed, next to the default profile."""
    profile = PROFILES["latency"]
    measure(benchmark, kafka, topic_prefix, feed, "struct", workers, TICKS,
            ["test_struct[2]", "test_librdkafka_ceiling_for_struct"],
            switch_interval=profile.gil_switch_interval, producer_overrides=profile.producer,
            **profile.pipeline)


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [2])
def test_struct_through_produce_batch(benchmark, kafka, topic_prefix, feed, workers):
    """The same records through confluent_kafka's produce_batch instead of the ProducerLink."""
    measure(benchmark, kafka, topic_prefix, feed, "struct", workers, TICKS,
            ["test_pure_python_baseline"], producer_link="off")


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("value_format", ["struct", "batched"])
def test_exactly_once(benchmark, kafka, topic_prefix, request, value_format):
    """--exactly-once, 2 workers: a Kafka transaction about every 100 ms (ticks and checkpoint),
    next to the same format without."""
    feed, ticks = (request.getfixturevalue("feed"), TICKS) if value_format == "struct" \
        else (request.getfixturevalue("batched_feed"), BATCHED_TICKS)
    measure(benchmark, kafka, topic_prefix, feed, value_format, 2, ticks,
            ["test_pure_python_baseline", f"test_{value_format}[2]"],
            producer_overrides={"transactional.id": f"bench-{topic_prefix}{next(RUNS)}"})


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [2])
def test_struct_with_headers(benchmark, kafka, topic_prefix, feed, workers):
    """--headers: type, session and sequence headers and the ITCH time as record timestamp."""
    measure(benchmark, kafka, topic_prefix, feed, "struct", workers, TICKS,
            ["test_pure_python_baseline", "test_struct[2]"], headers=True)


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [1, 2])
def test_raw(benchmark, kafka, topic_prefix, feed, workers):
    measure(benchmark, kafka, topic_prefix, feed, "raw", workers, TICKS,
            ["test_pure_python_baseline", "test_librdkafka_ceiling_for_raw"])


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [1, 2])
def test_json(benchmark, kafka, topic_prefix, json_feed, workers):
    measure(benchmark, kafka, topic_prefix, json_feed, "json", workers, JSON_TICKS,
            ["test_pure_python_baseline", "test_librdkafka_ceiling_for_json"])


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_batched(benchmark, kafka, topic_prefix, batched_feed, workers):
    measure(benchmark, kafka, topic_prefix, batched_feed, "batched", workers, BATCHED_TICKS,
            ["test_pure_python_baseline", "test_struct[2]",
             "test_librdkafka_ceiling_for_batched[lz4]"])


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [2])
def test_batched_uncompressed(benchmark, kafka, topic_prefix, batched_feed, workers):
    """-X compression.type=none: librdkafka compresses in one thread per broker, which at
    these rates is the busiest thread on the machine."""
    measure(benchmark, kafka, topic_prefix, batched_feed, "batched", workers, BATCHED_TICKS,
            ["test_pure_python_baseline", "test_batched[2]"],
            producer_overrides={"compression.type": "none"})


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("workers", [2])
def test_arrow(benchmark, kafka, topic_prefix, batched_feed, workers):
    """--format arrow: the batched records with Arrow IPC values."""
    measure(benchmark, kafka, topic_prefix, batched_feed, "arrow", workers, BATCHED_TICKS,
            ["test_batched[2]"])


ALTERNATIONS = 3


@pytest.mark.benchmark(group="end-to-end")
def test_arrow_next_to_batched(benchmark, kafka, topic_prefix, batched_feed):
    """batched and arrow alternating on the same session, ALTERNATIONS rounds each after an
    untimed one of each (a shared machine drifts: alternating keeps the two comparable).
    Ticks/s of each round and their medians go to extra_info; the timed function is one
    batched-then-arrow pair."""
    rates = {"batched": [], "arrow": []}
    handlers = []

    def one(value_format):
        handlers.append(new_handler(kafka, topic_prefix, value_format, 2))
        started = time.perf_counter()
        run_handler(handlers[-1], batched_feed, BATCHED_TICKS)
        return BATCHED_TICKS / (time.perf_counter() - started)

    def pair():
        for value_format in rates:
            rates[value_format].append(one(value_format))

    try:
        benchmark.pedantic(pair, rounds=ALTERNATIONS, warmup_rounds=1)
    finally:
        delete_topics(kafka, handlers)
    for value_format, measured in rates.items():
        measured = sorted(measured[-ALTERNATIONS:])     # the warm-up pair comes first
        benchmark.extra_info[f"{value_format}_ticks_per_s"] = [round(r) for r in measured]
        benchmark.extra_info[f"{value_format}_median"] = round(measured[len(measured) // 2])
    ratio = benchmark.extra_info["arrow_median"] / benchmark.extra_info["batched_median"]
    benchmark.extra_info["arrow_to_batched"] = round(ratio, 3)
    print(f"\nbatched {benchmark.extra_info['batched_ticks_per_s']} ticks/s, arrow "
          f"{benchmark.extra_info['arrow_ticks_per_s']} ticks/s, median ratio {ratio:.3f}")


def batched_values(ticks: int, routes: Routes) -> list[tuple[str, int, bytes, int]]:
    """(topic, partition, value, rows) of the batched records a handler makes of a simulated
    session of `ticks` messages, BATCH_TICKS at a time."""
    packets = session_packets(ticks)
    directory = StockDirectory()
    for p in packets:
        if "R" in p.messages:
            directory.update(p.messages["R"])
    partitions = dict.fromkeys(routes.topics, PARTITIONS)
    per_hold = BATCH_TICKS // 500
    return [(topic, partition, rows, len(rows) // (8 + itch.DTYPES[message_type].itemsize))
            for k in range(0, len(packets), per_hold)
            for topic, partition, message_type, rows in batched_records(
                packets[k:k + per_hold], routes.topic_of_type, partitions, directory)]


def session_packets(ticks: int) -> list[packet.Packet]:
    """A simulated session of `ticks` messages, decoded: what the sink gets from the decoder."""
    messages = split_block(orderflow.generate(ticks, symbols=500, seed=5).data)
    return packet.decode_many([packet.encode(messages[i:i + 500], session=b"CEILING001",
                                             sequence=1 + i)
                               for i in range(0, len(messages), 500)])


def produce_values(producer, values, ticks: int) -> None:
    sent = 0
    while sent < ticks:
        for topic, partition, value, rows in values:
            producer.produce(topic, value, partition=partition)
            sent += rows
            if sent >= ticks:
                break
        producer.poll(0)
    assert producer.flush(60) == 0


@pytest.mark.benchmark(group="end-to-end")
@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_librdkafka_ceiling_for_batched(benchmark, kafka, topic_prefix, compression):
    """Ready-made batched records (those a handler makes of a simulated session) produced and
    acknowledged with nothing else running: what librdkafka and the broker alone allow the
    batched format on this machine."""
    benchmark.extra_info.update(messages=BATCHED_TICKS, against=["test_batched[2]"])
    routes = Routes.by_category(f"{topic_prefix}{next(RUNS)}.")
    values = batched_values(200_000, routes)
    created = []

    def setup():
        run_routes = Routes.by_category(f"{topic_prefix}{next(RUNS)}.")
        ensure_topics(KafkaClientConfig(kafka), dict.fromkeys(run_routes.topics, PARTITIONS))
        created.extend(run_routes.topics)
        renamed = {old: new for old, new in zip(routes.topics, run_routes.topics)}
        producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": kafka,
                             "compression.type": compression})
        for topic in run_routes.topics:     # connected, producer id and leaders known
            producer.produce(topic, b"warm-up", partition=0)
        producer.flush(30)
        return (producer, [(renamed[t], p, v, n) for t, p, v, n in values],
                BATCHED_TICKS), {}

    try:
        benchmark.pedantic(produce_values, setup=setup, rounds=3, warmup_rounds=1)
    finally:
        delete_topic_names(kafka, created)


def publish_packets(sink, packets) -> None:
    """As the handler's publisher does, serving the producer once per socket read's worth."""
    for first in range(0, len(packets), MAX_BATCH):
        for decoded in packets[first:first + MAX_BATCH]:
            sink.publish(decoded, 0)
        sink.service()
    settled = sink.finish()
    assert settled["failed"] == settled["undelivered"] == 0


def sink_ceiling(benchmark, kafka, prefix, value_format, ticks, against):
    """Ready-made decoded packets of a simulated session handed to the handler's sink for
    `value_format` on one thread, with nothing else running (no feed, no decode threads)."""
    benchmark.extra_info.update(messages=ticks, against=against)
    packets = session_packets(ticks)
    sinks = []

    def setup():
        sinks.append(open_sink(SinkConfig(kafka, value_format, routes=Routes.by_category(
            f"{prefix}{next(RUNS)}."), partitions=PARTITIONS)))
        return (sinks[-1], packets), {}

    try:
        benchmark.pedantic(publish_packets, setup=setup, rounds=3, warmup_rounds=1)
    finally:
        delete_topic_names(kafka, [t for sink in sinks for t in sink.config.routes.every_topic])


@pytest.mark.benchmark(group="end-to-end")
def test_librdkafka_ceiling_for_struct(benchmark, kafka, topic_prefix):
    """What records built in C by the ProducerLink, librdkafka and the broker allow per-tick
    struct records on this machine (sink_ceiling)."""
    sink_ceiling(benchmark, kafka, topic_prefix, "struct", TICKS, ["test_struct[2]"])


@pytest.mark.benchmark(group="end-to-end")
def test_librdkafka_ceiling_for_raw(benchmark, kafka, topic_prefix):
    """The same for per-tick raw records (the wire messages re-framed, then built in C)."""
    sink_ceiling(benchmark, kafka, topic_prefix, "raw", TICKS, ["test_raw[2]"])


@pytest.mark.benchmark(group="end-to-end")
def test_librdkafka_ceiling_for_json(benchmark, kafka, topic_prefix):
    """The same for json records: built in Python and produced with produce_batch(), as the
    handler's publisher does; the ceiling of the json format is that one thread."""
    sink_ceiling(benchmark, kafka, topic_prefix, "json", JSON_TICKS, ["test_json[2]"])


def pure_python_setup(kafka, topics):
    routes = Routes.by_category(topics)
    ensure_topics(KafkaClientConfig(kafka), {topic: PARTITIONS for topic in routes.topics})
    return routes, Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": kafka})


def pure_python_handler(routes, producer, port, threads=2) -> int:
    """The straightforward design: one reader thread hands frames to threads that decompress,
    struct.unpack every message and produce() each tick on the shared producer."""
    symbols = {}
    header = __import__("struct").Struct(">HHH")
    stock_at = {t: dt.fields["stock"][1] - 2 for t, dt in itch.DTYPES.items()
                if "stock" in dt.names}
    produced = [0]
    lock = threading.Lock()

    def handle(frame: bytes):
        length = int.from_bytes(frame[8:12], "big")
        body = lz4.block.decompress(frame[36:], uncompressed_size=length - 20)
        pos, count = 0, 0
        while pos < len(body):
            size = int.from_bytes(body[pos:pos + 2], "big")
            message = body[pos + 2:pos + 2 + size]
            locate, _, _ = header.unpack_from(message, 1)
            message_type = chr(message[0])
            if message_type in stock_at:
                symbols[locate] = message[stock_at[message_type]:stock_at[message_type] + 8].rstrip()
            while True:
                try:
                    producer.produce(routes.topic_of_type[message_type], message,
                                     symbols.get(locate, b"#%d" % locate))
                    break
                except BufferError:
                    producer.poll(0.01)
            pos += 2 + size
            count += 1
        with lock:
            produced[0] += count

    client = SessionClient("127.0.0.1", port, username="feed", password="feed")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(handle, client.frames(), chunksize=1))
    assert producer.flush(60) == 0
    return produced[0]


@pytest.mark.benchmark(group="end-to-end")
def test_pure_python_baseline(benchmark, kafka, topic_prefix, json_feed):
    benchmark.extra_info.update(messages=JSON_TICKS)

    created = []

    def setup():
        routes, producer = pure_python_setup(kafka, f"{topic_prefix}{next(RUNS)}.")
        created.extend(routes.topics)
        return (routes, producer, json_feed), {}

    try:
        benchmark.pedantic(pure_python_handler, setup=setup, rounds=3, warmup_rounds=1)
    finally:
        delete_topic_names(kafka, created)


@pytest.mark.benchmark(group="latency")
@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_latency_paced(benchmark, kafka, topic_prefix, delivery):
    """Frame receipt to Kafka acknowledgement of every tick up to that frame, with the feed
    paced at PACED_RATE messages/s (struct format, 2 workers); exactly-once acknowledges a
    frame when its transaction commits. The simulator's pacing clock starts when it starts
    serving, so each round gets a fresh one."""
    benchmark.extra_info.update(messages=PACED_TICKS)
    handlers, simulators = [], []

    def setup():
        overrides = {"transactional.id": f"bench-{topic_prefix}{next(RUNS)}"} \
            if delivery == "exactly_once" else {}
        handlers.append(new_handler(kafka, topic_prefix, "struct", 2,
                                    producer_overrides=overrides))
        process, port = start_simulator(PACED_TICKS, "--rate", str(PACED_RATE))
        simulators.append(process)
        return (handlers[-1], port, PACED_TICKS), {}

    try:
        benchmark.pedantic(run_handler, setup=setup, rounds=2)
    finally:
        for process in simulators:
            process.kill()
        delete_topics(kafka, handlers)
    benchmark.extra_info["latency_ms"] = handlers[-1].latencies.summary_ms()

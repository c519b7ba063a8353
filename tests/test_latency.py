"""The fixed-memory latency histograms (feedhandler.ops.latency) and the stages a handler run
records in them."""

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from feedhandler.cli import add_run_arguments
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.cli.run import gil_switch_interval, pipeline_settings, producer_settings
from feedhandler.exchange import orderflow
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.kafka.config import PRODUCER_DEFAULTS
from feedhandler.kafka.routing import Routes
from feedhandler.kafka.sink import POLL_INTERVAL, KafkaSink
from feedhandler.ops.latency import (BUCKETS, HIGHEST_NS, STAGES, SUB_BITS, LatencyHistogram,
                                     StageLatencies, bucket_bounds, bucket_of, format_table)
from feedhandler.pipeline import handler as handler_module
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.pipeline.profiles import (DEFAULT_GIL_SWITCH_INTERVAL, LATENCY_GIL_SWITCH_INTERVAL,
                                           PROFILES)
from feedhandler.wire import packet
from streams import running_simulator, split_block
from test_handler import ROOT, final_account, run_cli

# A bucket is at most 1/2**(SUB_BITS-1) of its values wide; reported as its midpoint.
RELATIVE_ERROR = 1 / 2 ** SUB_BITS


def filled(values) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(int(value))
    return histogram


def test_buckets_tile_the_range_and_hold_their_values():
    lowest, highest = bucket_bounds()
    assert lowest[0] == 0 and (lowest[1:] == highest[:-1] + 1).all()
    assert highest[-1] >= HIGHEST_NS and len(lowest) == BUCKETS
    exact = lowest < 2 ** SUB_BITS     # a nanosecond each
    assert (highest[exact] == lowest[exact]).all()
    assert ((highest - lowest + 1)[~exact] / lowest[~exact] <= 2 * RELATIVE_ERROR).all()
    values = np.random.default_rng(3).integers(0, HIGHEST_NS, 20_000).tolist() + \
        [0, 1, 255, 256, 511, 512, 1000, 10**6, HIGHEST_NS]
    for value in values:
        bucket = bucket_of(value)
        assert lowest[bucket] <= value <= highest[bucket]


@pytest.mark.parametrize("seed", [1, 2])
def test_percentiles_agree_with_numpy_within_the_bucket_width(seed):
    rng = np.random.default_rng(seed)
    # microseconds to seconds, heavy-tailed like frame latencies
    values = rng.lognormal(14, 1.8, 50_000).astype(np.int64).clip(1000, 10**10)
    histogram = filled(values)
    percents = [1, 25, 50, 90, 99, 99.9, 99.99]
    measured = histogram.percentiles_ns(percents)
    exact = np.percentile(values, percents, method="lower")
    assert np.allclose(measured, exact, rtol=RELATIVE_ERROR, atol=0)
    assert histogram.percentiles_ns([100]) == [float(values.max())]
    assert histogram.total == len(values) and histogram.sum_ns == int(values.sum())


def test_values_out_of_range_count_at_the_ends_and_max_stays_exact():
    histogram = filled([-5, 0, 10 * HIGHEST_NS])
    counts = histogram.snapshot()
    assert counts[0] == 2 and counts[-1] == 1 and counts.sum() == 3
    assert histogram.max_ns == 10 * HIGHEST_NS
    assert histogram.summary_ms()["max"] == 10 * HIGHEST_NS / 1e6


def test_merge_is_the_histogram_of_both_sample_sets():
    rng = np.random.default_rng(7)
    first, second = rng.integers(1000, 10**8, 5000), rng.integers(10**6, 10**9, 3000)
    merged = filled(first)
    merged.merge(filled(second))
    both = filled(np.concatenate([first, second]))
    assert (merged.snapshot() == both.snapshot()).all()
    assert (merged.total, merged.sum_ns, merged.max_ns) == (both.total, both.sum_ns,
                                                             both.max_ns)
    assert merged.percentiles_ns([50, 99]) == both.percentiles_ns([50, 99])


def test_prometheus_counts_are_cumulative_to_a_bucket():
    histogram = filled([500_000, 2_000_000, 2_000_000, 30_000_000])
    assert histogram.counts_at_most([10**6, 2.5e6, 10**7, 10**9]) == [1, 3, 3, 4]


def test_empty_histograms_report_nothing():
    latencies = StageLatencies()
    assert latencies.summary_ms() == {} and format_table({}) == []
    assert LatencyHistogram().percentiles_ns([50]) == [0.0]


def test_the_table_shows_every_stage_with_samples():
    latencies = StageLatencies()
    for stage in STAGES:
        latencies.stages[stage].record(1_500_000)
    lines = format_table(latencies.summary_ms())
    assert [line.split()[0] for line in lines[1:]] == list(STAGES)
    assert all("1.5" in line for line in lines[1:])


class KeptHistogram(LatencyHistogram):
    """A histogram that also keeps every sample, in order."""

    def __init__(self):
        super().__init__()
        self.values = []

    def record(self, value_ns):
        self.values.append(value_ns)
        super().record(value_ns)


def test_a_handler_run_stamps_every_frame_at_every_stage_in_order(kafka, topic_prefix):
    messages = split_block(orderflow.generate(20_000, symbols=20, seed=4).data)
    frames = [packet.encode(messages[i:i + 400], session=b"LATENCY001", sequence=1 + i)
              for i in range(0, len(messages), 400)]
    reads = [frames[i:i + 4] for i in range(0, len(frames), 4)]
    handler = Handler(HandlerConfig(kafka, routes=Routes.by_category(topic_prefix),
                                    partitions=2))
    latencies = handler.latencies
    for stage in STAGES:
        kept = KeptHistogram()
        latencies.stages[stage] = kept
        setattr(latencies, stage, kept)
    account = handler.run(reads)
    assert account.delivered == len(messages) and account.lost == 0
    decoded, produced = latencies.decoded.values, latencies.produced.values
    kafka_part, acknowledged = latencies.kafka.values, latencies.acknowledged.values
    assert len(decoded) == len(reads)
    assert len(produced) == len(kafka_part) == len(acknowledged) == len(frames)
    # receipt <= decoded <= produced <= acknowledged, frame by frame
    for read, frames_before in zip(range(len(reads)), range(0, len(frames), 4)):
        assert 0 <= decoded[read] <= min(produced[frames_before:frames_before + 4])
    for produced_ns, kafka_ns, acknowledged_ns in zip(produced, kafka_part, acknowledged):
        assert produced_ns >= 0 and kafka_ns >= 0
        assert produced_ns + kafka_ns == acknowledged_ns
    summary = latencies.summary_ms()
    assert list(summary) == list(STAGES)
    assert all(summary[stage]["p50"] <= summary[stage]["p99"] <= summary[stage]["max"]
               for stage in STAGES)


@pytest.mark.parametrize("value_format", ["struct", "json"])    # ProducerLink, Producer API
def test_the_publisher_sees_an_acknowledgement_without_waiting_for_a_timer(
        kafka, topic_prefix, monkeypatch, value_format):
    """The publisher's timed waits are made a minute long: the reader's next read and the
    acknowledgement of the frame it produced must each wake it by themselves."""
    monkeypatch.setattr(handler_module, "POLL_INTERVAL", 60.0)
    messages = split_block(orderflow.generate(2_000, symbols=20, seed=5).data)
    frame = packet.encode(messages[:200], session=b"WAKEUP0001", sequence=1)
    handler = Handler(HandlerConfig(kafka, value_format=value_format,
                                    routes=Routes.by_category(topic_prefix), partitions=2,
                                    ack_interval=60.0, producer_overrides={"linger.ms": "5"}))
    acknowledged_while_waiting = []

    def reads():
        yield [frame]
        deadline = time.monotonic() + 20
        while not handler.acks.ticks and time.monotonic() < deadline:
            time.sleep(0.01)
        acknowledged_while_waiting.append(handler.acks.ticks)
    account = handler.run(reads())
    assert account.delivered > 0 and account.lost == 0
    assert acknowledged_while_waiting == [account.delivered]


def published_on(handler):
    """(thread name, first sequence) of every packet the handler's sink is given, in order."""
    calls = []
    publish = handler.sink.publish

    def recording(packet, received_ns):
        calls.append((threading.current_thread().name, packet.sequence))
        publish(packet, received_ns)
    handler.sink.publish = recording
    return calls


def session_frames(messages_per_frame=100, count=6_000):
    messages = split_block(orderflow.generate(count, symbols=20, seed=6).data)
    return [packet.encode(messages[i:i + messages_per_frame], session=b"INLINE0001",
                          sequence=1 + i)
            for i in range(0, len(messages), messages_per_frame)]


DECODING_THREAD = {"pool": "fh-decode-", "publisher": "fh-publisher"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_reader_never_decodes_nor_publishes_whatever_the_profile(kafka, topic_prefix,
                                                                      monkeypatch, profile):
    """The reader hands every socket read off at once: decoding happens on the pool (the
    throughput profile) or on the publisher (the latency profile: one hand-off less), and
    publishing on the publisher, also for the latency profile's small reads."""
    frames = session_frames()
    decoded_on = []
    decode_many = handler_module.packets.decode_many

    def recording(batch, **options):
        decoded_on.append(threading.current_thread().name)
        return decode_many(batch, **options)
    monkeypatch.setattr(handler_module.packets, "decode_many", recording)
    pipeline = PROFILES[profile].pipeline
    handler = Handler(HandlerConfig(kafka, routes=Routes.by_category(topic_prefix),
                                    partitions=2, **pipeline))
    calls = published_on(handler)
    pool_threads = []

    def paced():
        for frame in frames:
            yield [frame]
            time.sleep(0.002)
        pool_threads.extend(thread.name for thread in threading.enumerate()
                            if thread.name.startswith("fh-decode-"))
    account = handler.run(paced())
    assert account.delivered == account.decoded > 0 and account.lost == 0
    assert len(decoded_on) == len(frames)
    assert all(name.startswith(DECODING_THREAD[pipeline["decode"]]) for name in decoded_on), \
        set(decoded_on)
    assert bool(pool_threads) == (pipeline["decode"] == "pool"), pool_threads
    assert {name for name, _ in calls} == {"fh-publisher"}
    assert [sequence for _, sequence in calls] == [1 + 100 * i for i in range(len(frames))]


def test_an_unknown_decode_place_is_refused_before_any_topic_exists(kafka, topic_prefix):
    routes = Routes.by_category(topic_prefix)
    with pytest.raises(ValueError, match="decode must be one of pool, publisher, not 'gpu'"):
        Handler(HandlerConfig(kafka, routes=routes, decode="gpu"))
    admin = AdminClient({"bootstrap.servers": kafka})
    assert not set(routes.every_topic) & set(admin.list_topics(timeout=10).topics)


def test_the_publisher_waits_on_the_link_or_looks_on_its_own_timer():
    sink = KafkaSink.__new__(KafkaSink)
    sink.link = object()        # signals whenever frames settle: a wait of POLL_INTERVAL
    assert sink.acknowledgement_wait() == POLL_INTERVAL
    sink.link = None            # nothing to signal: the caller looks on its own timer
    assert sink.acknowledgement_wait() is None


def run_args(*options):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(["--connect", "127.0.0.1:1", *options])


def test_the_default_profile_is_throughput_and_changes_nothing():
    args = run_args()
    assert args.profile == "throughput"
    assert producer_settings(args) == []
    assert PROFILES["throughput"].pipeline == {"ack_interval": POLL_INTERVAL,
                                               "read_frames": 0, "decode": "pool"}
    assert pipeline_settings(args) == PROFILES["throughput"].pipeline


def test_the_latency_profile_sets_its_settings_and_explicit_ones_win():
    latency = PROFILES["latency"]
    assert dict(producer_settings(run_args("--profile", "latency"))) == latency.producer
    assert float(latency.producer["linger.ms"]) < float(PRODUCER_DEFAULTS["linger.ms"])
    assert latency.pipeline["ack_interval"] < POLL_INTERVAL
    settings = dict(producer_settings(run_args("--profile", "latency", "-X", "linger.ms=7",
                                               "-X", "acks=1")))
    assert settings == {**latency.producer, "linger.ms": "7", "acks": "1"}
    assert pipeline_settings(run_args("--profile", "latency")) == latency.pipeline
    assert latency.pipeline["decode"] == "publisher"
    assert pipeline_settings(run_args("--profile", "latency", "--decode", "pool")) == \
        {**latency.pipeline, "decode": "pool"}
    assert pipeline_settings(run_args("--decode", "publisher"))["decode"] == "publisher"


def test_the_gil_switch_interval_is_the_profiles_unless_given(capsys):
    assert gil_switch_interval(run_args()) == DEFAULT_GIL_SWITCH_INTERVAL
    assert gil_switch_interval(run_args("--profile", "latency")) == \
        LATENCY_GIL_SWITCH_INTERVAL < DEFAULT_GIL_SWITCH_INTERVAL
    assert gil_switch_interval(run_args("--profile", "latency",
                                        "--gil-switch-interval", "0.003")) == 0.003
    for bad in ("0", "-1", "soon"):     # sys.setswitchinterval would raise: refused up front
        with pytest.raises(SystemExit) as exited:
            run_args("--gil-switch-interval", bad)
        assert exited.value.code == 2
        assert "--gil-switch-interval" in capsys.readouterr().err


FREEZE_PROBE = """
import gc, sys
from feedhandler.cli import main
from feedhandler.pipeline.handler import Handler
real_run = Handler.run
def run(self, frames):
    print("frozen", gc.get_freeze_count(), file=sys.stderr, flush=True)
    return real_run(self, frames)
Handler.run = run
sys.exit(main(sys.argv[1:]))
"""


def test_the_run_freezes_what_start_up_made(kafka, topic_prefix):
    """`feedhandler run` moves what start-up made out of the collector's way before reading:
    a full collection walking it paused every thread for tens of milliseconds."""
    with running_simulator(count=2_000, symbols=5, seed=3) as simulator:
        result = subprocess.run(
            [sys.executable, "-c", FREEZE_PROBE, "run", "--connect",
             f"127.0.0.1:{simulator.port}", "--bootstrap-servers", kafka, "--topic-prefix",
             topic_prefix, "--partitions", "1", "--quiet"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=120)
    assert result.returncode == ExitCode.OK, result.stderr
    frozen = [int(line.split()[1]) for line in result.stderr.splitlines()
              if line.startswith("frozen ")]
    # modules, numpy, the producer, the sink: tens of thousands of objects
    assert frozen and frozen[0] > 10_000, result.stderr


def test_the_final_account_shows_the_latency_table(kafka, topic_prefix):
    exchange = Simulator(SimulatorConfig(port=0, count=20_000, symbols=20, seed=2,
                                         status_interval=None)).start()
    try:
        process = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "1", "--json-stats", "--profile", "latency")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        exchange.stop()
    assert process.returncode == 0, stderr
    table = final_account(stdout)["latency_ms"]
    assert list(table) == list(STAGES)
    assert table["acknowledged"]["frames"] == final_account(stdout)["frames"]
    assert {"p50", "p99", "p99.9", "max"} <= set(table["kafka"])
    header = next(line for line in stderr.splitlines() if "latency (ms)" in line)
    assert header.split()[2:] == ["p50", "p99", "p99.9", "max", "frames"]

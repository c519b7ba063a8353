"""Prometheus metrics, /healthz and /readyz (feedhandler.ops.metrics, `run --metrics-port`),
scraped over HTTP from real runs on the real broker; and the Grafana dashboard against them."""

import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from feedhandler.cli.exit_codes import ExitCode
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.kafka.routing import Routes
from feedhandler.ops.latency import BUCKETS, STAGES
from feedhandler.ops.metrics import KafkaStatistics, MetricsServer
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.session import SessionClient
from test_cli_errors import UNREACHABLE, assert_refused, free_port, run_refused
from test_handler import ROOT, final_account, run_cli

pytestmark = pytest.mark.kafka

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
STATISTICS_MS = 300


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics scrape as {'name{label="value",...}': value}."""
    status, text = fetch(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def served_families(port: int) -> dict[str, str]:
    """{name: type} of every metric family a scrape declares (those without samples yet
    included)."""
    _, text = fetch(port, "/metrics")
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def served_names(families: dict[str, str]) -> set[str]:
    """The names a query can use: each family's, and a histogram's _bucket, _sum and _count."""
    names = set(families)
    for name, kind in families.items():
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def documented_metrics() -> dict[str, str]:
    """{name: type} from the metric reference table in docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text()
    return dict(re.findall(r"^\| `(feedhandler_\w+)` \| (\w+) \|", text, re.MULTILINE))


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def test_counters_move_during_a_run_and_end_equal_to_the_account(kafka, topic_prefix):
    """In process, so that the endpoint can be scraped after the run as well as during it."""
    count = 400_000
    exchange = Simulator(SimulatorConfig(port=0, count=count, symbols=40, seed=5, rate=150_000,
                                         status_interval=None)).start()
    statistics = KafkaStatistics(STATISTICS_MS)
    server = MetricsServer("127.0.0.1", 0, statistics)
    port = server.address[1]
    try:
        assert fetch(port, "/healthz")[0] == 503 and fetch(port, "/readyz")[0] == 503
        handler = Handler(HandlerConfig(
            kafka, routes=Routes.by_category(topic_prefix), partitions=2, statistics=statistics,
            producer_overrides={"statistics.interval.ms": str(STATISTICS_MS)}))
        source = SessionClient("127.0.0.1", exchange.port, username="feed", password="feed")
        server.attach(handler, source)
        server.phase = "running"
        runner = threading.Thread(target=handler.run, args=(source,))
        runner.start()
        seen = []
        while runner.is_alive():
            seen.append(scrape(port)["feedhandler_delivered_total"])
            time.sleep(0.3)
        runner.join()
        assert len(set(seen)) >= 3 and seen == sorted(seen), seen     # moved, never back
        server.phase = "stopping"
        final = scrape(port)
    finally:
        server.close()
        exchange.stop()
    account = handler.account
    assert account.delivered == count and account.lost == 0
    for name, value in (("frames", account.frames), ("messages", account.messages),
                        ("decoded_messages", account.decoded),
                        ("quarantined", account.quarantined), ("produced", account.produced),
                        ("delivered", account.delivered), ("failed", account.failed),
                        ("gaps", account.gaps), ("missing", account.missing),
                        ("records_produced", account.records)):
        total = sum(v for k, v in final.items() if re.fullmatch(
            rf"feedhandler_{name}_total(\{{.*\}})?", k))
        assert total == value, name
    for message_type, ticks in account.decoded_by_type.items():
        assert final[f'feedhandler_decoded_messages_total{{type="{message_type}"}}'] == ticks
    assert final["feedhandler_frame_to_ack_seconds_count"] == account.frames
    assert 0 < final["feedhandler_frame_to_produce_seconds_count"] <= account.frames
    for stage in STAGES:
        assert final[f'feedhandler_frame_latency_seconds_count{{stage="{stage}"}}'] > 0
    assert final['feedhandler_frame_latency_seconds_count{stage="acknowledged"}'] == \
        account.frames
    assert final["feedhandler_decode_queue_reads"] == 0
    assert final["feedhandler_checkpoint_sequence"] == count + 1
    assert 0 < final["feedhandler_librdkafka_messages_sent_total"] <= account.records
    assert any(k.startswith("feedhandler_librdkafka_broker_rtt_seconds") and v > 0
               for k, v in final.items())
    # Nothing went into prometheus_client's process-wide registry.
    assert not any(name.startswith("feedhandler") for name in REGISTRY._names_to_collectors)


def test_kafka_is_unhealthy_when_no_broker_is_up():
    """librdkafka's own statistics of a producer whose broker is unreachable."""
    statistics = KafkaStatistics(100)
    producer = Producer({"bootstrap.servers": UNREACHABLE, "statistics.interval.ms": 100,
                         "stats_cb": statistics, "log_level": 0})
    wait_until(lambda: producer.poll(0.1) is not None and statistics.latest()[0] is not None,
               10, "statistics")
    up, why = statistics.kafka_state()
    assert not up and re.match(r"no Kafka broker up \(.*127\.0\.0\.1:1", why), why
    time.sleep(0.4)         # nobody polls: the statistics go stale
    up, why = statistics.kafka_state()
    assert not up and "not polled" in why


def test_healthz_and_readyz_are_503_while_kafka_is_unreachable_at_start(kafka, topic_prefix):
    port = free_port()
    process = run_cli("run", "--listen", f"127.0.0.1:{free_port()}", "--bootstrap-servers",
                      UNREACHABLE, "--topic-prefix", topic_prefix, "--metrics-port", str(port))
    try:
        wait_until(lambda: _answers(port), 10, "metrics endpoint")
        status, body = fetch(port, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "starting"
        assert fetch(port, "/readyz")[0] == 503
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def _answers(port: int) -> bool:
    try:
        return fetch(port, "/readyz")[0] in (200, 503)
    except OSError:
        return False


def test_a_metrics_port_in_use_exits_3_before_anything_is_created(kafka, topic_prefix):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        result = run_refused(kafka, topic_prefix, "--metrics-port",
                             str(taken.getsockname()[1]))
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START,
                   r"--metrics-port: cannot serve on 127\.0\.0\.1:\d+: Address already in use")


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard queries: its panels and its variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    queries += [variable.get("query", "") for variable in dashboard["templating"]["list"]]
    return {name for query in queries for name in re.findall(r"\bfeedhandler_[a-z0-9_]+", query)}


def test_a_real_run_serves_metrics_health_and_every_metric_the_dashboard_queries(
        kafka, topic_prefix):
    count = 600_000
    exchange = Simulator(SimulatorConfig(port=0, count=count, symbols=40, seed=8, rate=120_000,
                                         status_interval=None)).start()
    port = free_port()
    try:
        process = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "2", "--json-stats", "--metrics-port", str(port),
                          "-X", f"statistics.interval.ms={STATISTICS_MS}")
        wait_until(lambda: _answers(port) and fetch(port, "/readyz")[0] == 200, 30, "ready")
        wait_until(lambda: "brokers up" in fetch(port, "/healthz")[1], 10, "broker statistics")
        status, body = fetch(port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok", health
        assert health["feed"]["state"].startswith("logged in") and health["kafka"]["up"]
        first = scrape(port)
        time.sleep(1)
        second = scrape(port)
        assert second["feedhandler_delivered_total"] > first["feedhandler_delivered_total"]
        families = served_families(port)
        queried = dashboard_metrics()
        assert len(queried) >= 8
        missing = queried - served_names(families)
        assert not missing, f"the dashboard queries metrics no run serves: {missing}"
        documented = documented_metrics()
        assert {name: "gauge" if kind == "info" else kind
                for name, kind in documented.items()} == families
        stdout, stderr = process.communicate(timeout=120)
    finally:
        exchange.stop()
    assert process.returncode == ExitCode.OK, stderr
    assert final_account(stdout)["delivered"] == count


def test_metrics_are_off_by_default_and_create_nothing_unasked(kafka, topic_prefix):
    """Without --metrics-port no port is bound and no statistics are asked of librdkafka."""
    exchange = Simulator(SimulatorConfig(port=0, count=20_000, symbols=10, seed=1,
                                         status_interval=None)).start()
    try:
        handler = Handler(HandlerConfig(kafka, routes=Routes.by_category(topic_prefix),
                                        partitions=1))
        account = handler.run(SessionClient("127.0.0.1", exchange.port, username="feed",
                                            password="feed"))
    finally:
        exchange.stop()
    assert account.delivered == 20_000
    # latencies are kept in fixed memory, metrics or not
    for histogram in handler.latencies.stages.values():
        assert len(histogram.counts) == BUCKETS
    assert sum(account.decoded_by_type.values()) == account.decoded


def test_the_dashboard_is_valid_grafana_json():
    dashboard = json.loads(Path(DASHBOARD).read_text())
    assert dashboard["title"] and dashboard["panels"]
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dashboard["panels"]:
        if panel.get("type") != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]

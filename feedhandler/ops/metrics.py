"""Prometheus metrics, /healthz and /readyz for `feedhandler run --metrics-port`.

Nothing here costs the pipeline a call per tick: the counters are the handler's own running
totals (its Account, the sink's DeliveryLedger, the SequenceTracker), read when Prometheus
scrapes (`PipelineCollector`). The latency histograms are the handler's own fixed-memory ones
(feedhandler.ops.latency, recorded per frame on the publisher thread), rebinned into
LATENCY_BUCKETS at scrape time. librdkafka's statistics (`statistics.interval.ms`) come as
a JSON string to `KafkaStatistics` on the publisher thread, which only keeps it; it is parsed on
the metrics thread.

Everything lives in a CollectorRegistry of its own: prometheus_client's process-wide default
registry is never touched. The metric names are listed in docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.registry import Collector

from feedhandler.ops.latency import STAGES
from feedhandler.ops.threads import name_thread
from feedhandler.ops.version import version_info

log = logging.getLogger(__name__)

PREFIX = "feedhandler"
# Upper bounds (seconds) of the latency histograms' buckets, +Inf implied.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BOUNDS_NS = [bound * 1e9 for bound in LATENCY_BUCKETS]
SHUTDOWN_POLL = 0.5             # seconds the server takes at most to see close()
# Kafka counts as unreachable when no broker is UP in librdkafka's newest statistics, or when
# none came for this many statistics intervals (the publisher polls the producer, which is
# what delivers them).
STALE_INTERVALS = 3
RTT_STATS = ("avg", "p50", "p99", "max")        # librdkafka window statistics exported
BATCH_STATS = ("avg", "p50", "p99")


def latency_family(name: str, documentation: str, histograms: dict) -> HistogramMetricFamily:
    """A Prometheus histogram of the pipeline's fixed-memory latency histograms (ops.latency),
    read as they are at scrape time: one series per key of `histograms` (labelled `stage`), or
    an unlabelled one under the key None."""
    labels = [] if None in histograms else ["stage"]
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for stage, histogram in histograms.items():
        total = histogram.total
        counts = histogram.counts_at_most(_LATENCY_BOUNDS_NS)
        buckets = [(f"{bound:g}", min(count, total)) for bound, count in zip(LATENCY_BUCKETS,
                                                                               counts)]
        buckets.append(("+Inf", total))
        family.add_metric([] if stage is None else [stage], buckets,
                          sum_value=histogram.sum_ns / 1e9)
    return family


class KafkaStatistics:
    """librdkafka's statistics: the producer's `stats_cb` (this object). Keeps the newest JSON
    document as it comes (on the publisher thread) and parses it only when asked."""

    def __init__(self, interval_ms: int):
        self.interval_ms = interval_ms
        self._raw: str | None = None
        self._received = 0.0
        self._parsed: tuple[str | None, dict | None] = (None, None)
        self.created = time.monotonic()

    def __call__(self, raw: str) -> None:
        self._raw, self._received = raw, time.monotonic()

    def latest(self) -> tuple[dict | None, float]:
        """(the newest statistics or None, their age in seconds)."""
        raw, received = self._raw, self._received
        if raw is None:
            return None, time.monotonic() - self.created
        if self._parsed[0] is not raw:
            self._parsed = (raw, json.loads(raw))
        return self._parsed[1], time.monotonic() - received

    def kafka_state(self) -> tuple[bool, str]:
        """(reachable, why): a broker UP in statistics that are not stale."""
        if self.interval_ms <= 0:
            return True, "not watched (statistics.interval.ms=0)"
        statistics, age = self.latest()
        stale = STALE_INTERVALS * self.interval_ms / 1000
        if age > stale:
            if statistics is None:
                return False, f"no librdkafka statistics after {age:.0f} s"
            return False, f"librdkafka statistics {age:.0f} s old (the producer is not polled)"
        if statistics is None:
            return True, "starting (no librdkafka statistics yet)"
        brokers = [b for b in statistics.get("brokers", {}).values() if b.get("nodeid", -1) >= 0]
        up = [b["nodename"] for b in brokers if b.get("state") == "UP"]
        if up:
            return True, f"{len(up)} of {len(brokers)} brokers up"
        states = ", ".join(f"{b.get('nodename') or b.get('name')} {b.get('state')}"
                           for b in statistics.get("brokers", {}).values()) or "none known"
        return False, f"no Kafka broker up ({states})"

    def families(self):
        statistics, age = self.latest()
        if statistics is None:
            return
        yield GaugeMetricFamily(f"{PREFIX}_librdkafka_statistics_age_seconds",
                                "Seconds since librdkafka's newest statistics", value=age)
        for key, name, documentation in (
                ("msg_cnt", "queue_messages", "Messages in librdkafka's producer queues"),
                ("msg_size", "queue_bytes", "Bytes of the messages in librdkafka's queues")):
            yield GaugeMetricFamily(f"{PREFIX}_librdkafka_{name}", documentation,
                                    value=statistics.get(key, 0))
        for key, name, documentation in (
                ("tx", "requests_sent", "Requests sent to Kafka brokers"),
                ("tx_bytes", "sent_bytes", "Bytes sent to Kafka brokers"),
                ("rx_bytes", "received_bytes", "Bytes received from Kafka brokers"),
                ("txmsgs", "messages_sent", "Messages sent to Kafka brokers")):
            yield CounterMetricFamily(f"{PREFIX}_librdkafka_{name}", documentation,
                                      value=statistics.get(key, 0))
        up = GaugeMetricFamily(f"{PREFIX}_librdkafka_broker_up",
                               "1 if librdkafka's connection to the broker is UP",
                               labels=["broker"])
        rtt = GaugeMetricFamily(f"{PREFIX}_librdkafka_broker_rtt_seconds",
                                "Broker round-trip time over librdkafka's last statistics "
                                "interval", labels=["broker", "stat"])
        waiting = GaugeMetricFamily(f"{PREFIX}_librdkafka_broker_waiting_requests",
                                    "Requests sent to the broker, awaiting its response",
                                    labels=["broker"])
        for broker in statistics.get("brokers", {}).values():
            if broker.get("nodeid", -1) < 0:        # a bootstrap entry, not a broker
                continue
            name = broker.get("nodename", broker.get("name", "?"))
            up.add_metric([name], 1 if broker.get("state") == "UP" else 0)
            waiting.add_metric([name], broker.get("waitresp_cnt", 0))
            window = broker.get("rtt", {})
            for stat in RTT_STATS:
                rtt.add_metric([name, stat], window.get(stat, 0) / 1e6)
        yield from (up, rtt, waiting)
        batch_messages = GaugeMetricFamily(
            f"{PREFIX}_librdkafka_batch_messages",
            "Messages per produce batch over librdkafka's last statistics interval",
            labels=["topic", "stat"])
        batch_bytes = GaugeMetricFamily(
            f"{PREFIX}_librdkafka_batch_bytes",
            "Bytes per produce batch over librdkafka's last statistics interval",
            labels=["topic", "stat"])
        for topic, figures in statistics.get("topics", {}).items():
            for stat in BATCH_STATS:
                batch_messages.add_metric([topic, stat], figures.get("batchcnt", {}).get(stat, 0))
                batch_bytes.add_metric([topic, stat], figures.get("batchsize", {}).get(stat, 0))
        yield from (batch_messages, batch_bytes)


def feed_state(source) -> tuple[bool, str]:
    """(up, why) of a frame source (`FrameSource.feed_state`); a source whose session ended is
    done, not down."""
    tracker = getattr(source, "tracker", None)
    if tracker is None:
        return True, "frames from an iterable"
    if tracker.ended:
        return True, "end of session"
    return source.feed_state()


class PipelineCollector(Collector):
    """The handler's counters and gauges, read at scrape time."""

    def __init__(self, handler, source, statistics: KafkaStatistics | None):
        self.handler = handler
        self.source = source
        self.statistics = statistics
        self._delivered = 0

    def delivered(self) -> int:
        """Ticks delivered: the settled account's figure at the end; before, ticks in frames
        Kafka fully acknowledged less failed ones (kept monotonic, as a counter must be)."""
        handler = self.handler
        if handler.settled:
            return handler.account.delivered
        ledger = handler.sink.ledger
        self._delivered = max(self._delivered, ledger.acks.ticks - ledger.errors.units)
        return self._delivered

    def collect(self):
        handler, source = self.handler, self.source
        account, ledger, sink = handler.account, handler.sink.ledger, handler.sink
        tracker = getattr(source, "tracker", None)

        def counter(name, documentation, value):
            return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)

        def gauge(name, documentation, value):
            return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)

        def counters_by(name, documentation, label, values: dict):
            family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            return family

        yield counter("frames", "Frames read from the feed", account.frames)
        yield counter("messages", "Messages in the frames read, quarantined ones included",
                      account.messages)
        yield counters_by("decoded_messages", "Messages decoded, by ITCH message type", "type",
                          dict(account.decoded_by_type))
        yield counter("quarantined", "Messages set aside as undecodable (dead-lettered)",
                      account.quarantined)
        yield counter("quarantined_frames", "Whole frames set aside as undecodable",
                      account.quarantined_frames)
        yield counter("dead_lettered", "Records sent to the dead-letter topic",
                      ledger.dead_lettered)
        yield counter("produced", "Ticks handed to the Kafka producer", ledger.ticks)
        yield counter("records_produced", "Records handed to the Kafka producer", ledger.records)
        yield counter("delivered", "Ticks acknowledged by Kafka", self.delivered())
        yield counter("failed", "Ticks whose delivery failed", ledger.errors.units)
        yield counters_by("failed_records", "Records whose delivery failed, by librdkafka's "
                          "reason", "reason", _failure_reasons(ledger.errors))
        yield counter("already_in_kafka", "Ticks a resumed run skipped: Kafka held them",
                      ledger.already_in_kafka)
        yield counter("timestamp_fallbacks", "Records sent with the produce time as timestamp",
                      sink.timestamps.fallbacks)
        yield counter("backpressure_waits", "Times the publisher waited for room in the "
                      "producer queue", ledger.backpressure_waits)
        if tracker is not None:
            yield counter("gaps", "Gaps in the feed given up (their messages are missing)",
                          len(tracker.gaps))
            yield counter("missing", "Messages missing from the feed (gaps given up)",
                          tracker.missing)
            yield counter("duplicates", "Messages received again and dropped",
                          tracker.duplicates)
            yield counter("rerequests", "Re-requests of a gap's messages", tracker.rerequests)
            yield gauge("feed_next_sequence", "First sequence number not yet received",
                        tracker.next_sequence)
        yield counter("reconnects", "Times the session client logged in again after a lost "
                      "link", getattr(source, "reconnects", 0))
        yield gauge("producer_queue_messages", "Records in the producer, not yet acknowledged",
                    sink.outstanding())
        yield gauge("producer_queue_bytes", "Bytes of the records in the producer (the sink's "
                    "estimate, which backpressure goes by)", ledger.queued_bytes_estimate())
        yield gauge("decode_queue_reads", "Socket reads decoding or decoded, not yet published",
                    handler.queue_depth())
        yield gauge("acknowledged_sequence", "Sequence number after the newest frame Kafka "
                    "fully acknowledged", ledger.acks.next_sequence)
        yield gauge("checkpoint_sequence", "Sequence number the newest checkpoint written "
                    "resumes from", sink.checkpointed_sequence)
        yield gauge("ack_lag_seconds", "Age of the oldest frame not yet acknowledged",
                    ledger.acks.oldest_age_ms() / 1e3)
        feed_up, _ = feed_state(source)
        yield gauge("feed_up", "1 while the feed is logged in or connected", int(feed_up))
        if self.statistics is not None:
            kafka_up, _ = self.statistics.kafka_state()
            yield gauge("kafka_up", "1 while a Kafka broker is up (librdkafka's statistics)",
                        int(kafka_up))
            yield from self.statistics.families()
        stages = handler.latencies.stages
        yield latency_family(f"{PREFIX}_frame_to_produce_seconds", STAGES["produced"],
                             {None: stages["produced"]})
        yield latency_family(f"{PREFIX}_frame_to_ack_seconds", STAGES["acknowledged"],
                             {None: stages["acknowledged"]})
        yield latency_family(f"{PREFIX}_frame_latency_seconds", "A frame's way through the "
                             "handler by stage: " + "; ".join(f"{stage}: {what}" for stage, what
                                                              in STAGES.items()), stages)


def _failure_reasons(errors) -> dict[str, int]:
    """DeliveryErrors.reasons, taken again if a delivery report changed it meanwhile."""
    while True:
        try:
            return dict(errors.reasons)
        except RuntimeError:        # dictionary changed size during iteration
            continue


class MetricsServer:
    """The HTTP endpoint: /metrics (Prometheus text format), /healthz and /readyz (JSON, 200 or
    503), on a thread of its own named fh-metrics. Bound at once (`OSError` if it cannot be),
    before anything else starts, so that a port in use fails the start; the pipeline is
    `attach`ed once it exists; the caller sets `phase`: "starting", then "running" (once
    attached), then "stopping"."""

    def __init__(self, host: str, port: int, statistics: KafkaStatistics | None = None):
        self.statistics = statistics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_InfoCollector(version_info()))
        self.collector: PipelineCollector | None = None
        self.phase = "starting"
        self._server = _Server((host, port), _endpoints_of(self))
        self.address = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._serve, name="fh-metrics", daemon=True)
        self._thread.start()

    def attach(self, handler, source) -> None:
        self.collector = PipelineCollector(handler, source, self.statistics)
        self.registry.register(self.collector)

    def _serve(self) -> None:
        name_thread("fh-metrics")      # request threads inherit the kernel name
        self._server.serve_forever(poll_interval=SHUTDOWN_POLL)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def current_phase(self) -> str:
        """`phase`, "stopping" as soon as the handler drains (end of feed or a signal)."""
        if self.phase == "running" and self.collector is not None \
                and self.collector.handler.draining.is_set():
            return "stopping"
        return self.phase

    def ready(self) -> tuple[bool, dict]:
        phase = self.current_phase()
        return phase == "running", {"status": "ready" if phase == "running" else phase}

    def health(self) -> tuple[bool, dict]:
        """(healthy, body): running, the feed up and Kafka reachable; else the reasons."""
        phase = self.current_phase()
        if phase != "running":
            return False, {"status": phase, "reasons": [phase]}
        handler = self.collector.handler
        feed_up, feed = feed_state(self.collector.source)
        kafka_up, kafka = (self.statistics.kafka_state() if self.statistics is not None
                           else (True, "not watched"))
        reasons = [f"feed: {feed}"] * (not feed_up) + [f"kafka: {kafka}"] * (not kafka_up)
        since_read = (time.monotonic_ns() - handler.last_read_ns) / 1e9 \
            if handler.last_read_ns else None
        body = {"status": "ok" if not reasons else "unhealthy",
                "feed": {"up": feed_up, "state": feed,
                         "seconds_since_data": None if since_read is None
                         else round(since_read, 3)},
                "kafka": {"up": kafka_up, "state": kafka},
                "account": {key: getattr(handler.account, key)
                            for key in ("frames", "messages", "quarantined")}
                | {"delivered": self.collector.delivered()}}
        if reasons:
            body["reasons"] = reasons
        return not reasons, body


class _InfoCollector(Collector):
    def __init__(self, info: dict[str, str]):
        self.info = info

    def collect(self):
        yield InfoMetricFamily(f"{PREFIX}_build", "feedhandler and library versions",
                               value=self.info)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _endpoints_of(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Endpoints(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(HTTPStatus.OK, server.metrics(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, body = server.health() if path == "/healthz" else server.ready()
                self._reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                            json.dumps(body).encode() + b"\n", "application/json")
            else:
                self._reply(HTTPStatus.NOT_FOUND, b"/metrics, /healthz or /readyz\n",
                            "text/plain")

        def _reply(self, status, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):     # noqa: A002 - the base class's name
            log.debug("%s %s", self.address_string(), format % args)
    return Endpoints

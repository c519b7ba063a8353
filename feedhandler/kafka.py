"""The one shared Kafka producer, its loss-averse defaults, topics, and delivery accounting."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS = {
    # No tick lost silently: every replica in sync acknowledges; retries cannot duplicate or
    # reorder (idempotence keeps per-partition order with up to 5 requests in flight).
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "lz4",
    # Same partitions for the same keys as the Java client's default partitioner.
    "partitioner": "murmur2_random",
    # Large batches: fewer, bigger produce requests are what lets one producer keep up.
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "message.max.bytes": 8_000_000,
    # Successful deliveries make no Python call; failures do (and are counted).
    "delivery.report.only.error": True,
}


class DeliveryErrors:
    """Counts failed deliveries by reason, from librdkafka's error-only delivery reports.

    Successes are not reported one by one: delivered = produced - failed - still queued."""

    def __init__(self, units_of=lambda message: 1):
        self._units_of = units_of
        self._lock = threading.Lock()
        self.records = 0
        self.units = 0
        self.reasons: Counter[str] = Counter()

    def __call__(self, error, message):
        if error is None:
            return
        with self._lock:
            self.records += 1
            self.units += self._units_of(message)
            self.reasons[error.str()] += 1
        log.error("delivery failed for %s [%s]: %s", message.topic(), message.partition(),
                  error.str())


def create_producer(bootstrap_servers: str, overrides: dict[str, str], on_error) -> Producer:
    """The handler's single, thread-safe producer: PRODUCER_DEFAULTS, then the overrides."""
    config = dict(PRODUCER_DEFAULTS)
    config.update(overrides)
    config["bootstrap.servers"] = bootstrap_servers
    config["on_delivery"] = on_error
    config.setdefault("error_cb", lambda error: log.warning("kafka: %s", error))
    return Producer(config)


def ensure_topics(bootstrap_servers: str, partitions: dict[str, int],
                  replication_factor: int = -1, timeout: float = 30.0) -> dict[str, int]:
    """Create the topics that are missing; return every topic's actual partition count
    (an existing topic keeps its own)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [NewTopic(name, count, replication_factor)
               for name, count in partitions.items() if name not in existing]
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as e:
            if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    # A new topic can take a moment to show up in the metadata of the broker asked.
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        if all(name in metadata and metadata[name].partitions for name in partitions):
            return {name: len(metadata[name].partitions) for name in partitions}
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout} s: "
                               f"{sorted(set(partitions) - set(metadata))}")
        time.sleep(0.05)

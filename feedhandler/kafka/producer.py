"""The one shared Kafka producer, its loss-averse defaults, topics, and delivery accounting."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import Counter

import confluent_kafka
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from feedhandler.kafka import _producer_link
from feedhandler.kafka._producer_link import ProducerLink

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
    """Counts failed deliveries by reason: librdkafka's error-only delivery reports for records
    produced through the Producer, plus the ProducerLink's own count for per-tick records.

    Successes are not reported one by one: delivered = produced - failed - still queued."""

    def __init__(self, units_of=lambda message: 1):
        self._units_of = units_of
        self._lock = threading.Lock()
        self._records = 0
        self._units = 0
        self._reasons: Counter[str] = Counter()
        self.link: ProducerLink | None = None

    def __call__(self, error, message):
        if error is None:
            return
        with self._lock:
            self._records += 1
            self._units += self._units_of(message)
            self._reasons[error.str()] += 1
        log.error("delivery failed for %s [%s]: %s", message.topic(), message.partition(),
                  error.str())

    @property
    def records(self) -> int:
        """Failed records."""
        return self._records + (self.link.failed if self.link else 0)

    @property
    def units(self) -> int:
        """Ticks in the failed records (a batched record holds many)."""
        return self._units + (self.link.failed if self.link else 0)

    @property
    def reasons(self) -> Counter[str]:
        return self._reasons + Counter(self.link.failures() if self.link else {})


def _loaded_librdkafka() -> str | None:
    """Where the librdkafka that confluent_kafka uses was loaded from (Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5]).startswith("librdkafka"):
                    return fields[5].strip()
    except OSError:
        pass
    return None


@functools.cache
def _bind_producer_link() -> str | None:
    """Bind the ProducerLink to confluent_kafka's librdkafka; the reason if it cannot be."""
    path = _loaded_librdkafka()
    if path is None:
        return "confluent_kafka's librdkafka not found in /proc/self/maps"
    try:
        _producer_link.bind_library(path, confluent_kafka.libversion()[1])
    except OSError as error:
        return str(error)
    return None


def create_producer(bootstrap_servers: str, overrides: dict[str, str], errors: DeliveryErrors,
                    linked: bool = True) -> tuple[Producer, ProducerLink | None]:
    """The handler's single, thread-safe producer: PRODUCER_DEFAULTS, then the overrides.

    With `linked`, also a ProducerLink into the same librdkafka handle for per-tick records
    (None, with a warning, where it cannot be had); `errors` counts failures from both."""
    config = dict(PRODUCER_DEFAULTS)
    config.update(overrides)
    config["bootstrap.servers"] = bootstrap_servers
    config["on_delivery"] = errors
    config.setdefault("error_cb", lambda error: log.warning("kafka: %s", error))
    if linked:
        problem = _bind_producer_link()
        if problem is None:
            producer, errors.link = _producer_link.linked_producer(
                config, Producer, _producer_link.__file__)
            return producer, errors.link
        log.warning("per-tick records go through produce_batch (slower): %s", problem)
    return Producer(config), None


def ensure_topics(bootstrap_servers: str, partitions: dict[str, int],
                  replication_factor: int = -1, timeout: float = 30.0) -> dict[str, int]:
    """Create the topics that are missing; return every topic's actual partition count
    (an existing topic keeps its own)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [NewTopic(name, count, replication_factor)
               for name, count in partitions.items() if name not in existing]
    created = admin.create_topics(missing, operation_timeout=timeout) if missing else {}
    for name, future in created.items():
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

"""The one Kafka client configuration: bootstrap servers and every `-X key=value` setting over
the producer's loss-averse defaults. The producer and the AdminClient both take theirs from it,
so security, SASL, SSL and timeout settings reach topic creation as well as produce requests."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer, cimpl
from confluent_kafka.admin import AdminClient

from feedhandler.kafka import _producer_link

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
    # Never give a tick up while Kafka is away: records wait in the queue for as long as it
    # takes, the full queue stops the reader, and the session recovers what it missed from the
    # exchange afterwards. (librdkafka's default, 300 s, would fail every queued record and let
    # the reader discard the feed for the rest of an outage.)
    "message.timeout.ms": 0,
}

# confluent_kafka's own callback settings that every client type takes (the producer-only
# `on_delivery` is left out: the AdminClient refuses it).
CLIENT_CALLBACKS = frozenset({"error_cb", "throttle_cb", "stats_cb", "logger", "oauth_cb"})

# librdkafka's own log lines are off while a config is checked: they would repeat on stderr
# what the one error line says.
QUIET = {"log_level": 0}


class KafkaConfigError(ValueError):
    """librdkafka refused a setting or a combination of settings (one line, its own words)."""


@functools.cache
def bind_librdkafka() -> int:
    """Bind the compiled modules to the librdkafka that confluent_kafka.cimpl itself calls
    (through cimpl's own handle: never another copy the process may hold); its version
    (rd_kafka_version()). Raises OSError where that cannot be done."""
    return _producer_link.bind_library(cimpl.__file__)


@functools.cache
def setting_scopes() -> dict[str, str]:
    """Every librdkafka property (aliases included) and who takes it: "*" every client type,
    "P" producers only, "C" consumers only. From the table the loaded librdkafka prints about
    itself, so it always matches the library in use."""
    bind_librdkafka()
    scopes = {}
    for line in _producer_link.configuration_table().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) >= 6 and cells[1] in ("*", "P", "C"):
            scopes[cells[0]] = cells[1]
    return scopes


@dataclass(frozen=True)
class KafkaClientConfig:
    """Bootstrap servers and the `-X` settings; `producer()` and `admin()` give each client's
    configuration dict."""

    bootstrap_servers: str
    settings: dict = field(default_factory=dict)

    def producer(self) -> dict:
        """PRODUCER_DEFAULTS, then every setting, then the bootstrap servers."""
        return {**PRODUCER_DEFAULTS, **self.settings, "bootstrap.servers": self.bootstrap_servers}

    def admin(self) -> dict:
        """The settings every client type takes (connection, security, SASL, SSL, timeouts,
        logging, plugins), without the producer's: an AdminClient given `enable.idempotence`
        or `transactional.id` would ask the cluster for a producer id it has no use for."""
        scopes = setting_scopes()
        shared = {key: value for key, value in self.settings.items()
                  if scopes.get(key) == "*" or key in CLIENT_CALLBACKS}
        return {**shared, "bootstrap.servers": self.bootstrap_servers}

    def check(self) -> None:
        """librdkafka's verdict on every setting, alone and together (unknown keys, bad values,
        `acks` against idempotence, SASL mechanisms, SSL files...), without connecting:
        both clients are built with no bootstrap server. Raises KafkaConfigError."""
        for client, config in ((Producer, self.producer()), (AdminClient, self.admin())):
            del config["bootstrap.servers"]
            try:
                client({**config, **QUIET})
            except KafkaException as error:
                raise KafkaConfigError(kafka_reason(error)) from None


def kafka_reason(error: Exception) -> str:
    """librdkafka's own words for a KafkaException (else the exception's text), one line."""
    cause = error.args[0] if isinstance(error, KafkaException) and error.args else error
    reason = cause.str() if isinstance(cause, KafkaError) else str(cause)
    return reason.removeprefix("Failed to create producer: ").replace("\n", " ")

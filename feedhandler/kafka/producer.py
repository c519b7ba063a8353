"""The one shared Kafka producer, with the ProducerLink into its librdkafka handle where it can
be had."""

from __future__ import annotations

import functools
import logging
import os

import confluent_kafka
from confluent_kafka import Producer

from feedhandler.kafka import _producer_link
from feedhandler.kafka._producer_link import ProducerLink
from feedhandler.kafka.config import PRODUCER_DEFAULTS
from feedhandler.kafka.ledger import DeliveryErrors

log = logging.getLogger(__name__)


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

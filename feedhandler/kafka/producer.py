"""The one shared Kafka producer, with the ProducerLink into its librdkafka handle where it can
be had.

`producer_link` modes: "auto" uses the link when it can be made and otherwise falls back to
`produce_batch()` with one warning; "require" makes any failure to make it an error
(ProducerLinkUnavailable); "off" never tries. `create_producer` says which path is in use."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException, Producer

from feedhandler.kafka import _producer_link
from feedhandler.kafka._producer_link import ProducerLink
from feedhandler.kafka.config import KafkaClientConfig, bind_librdkafka, kafka_reason
from feedhandler.kafka.ledger import DeliveryErrors

log = logging.getLogger(__name__)

PRODUCER_LINK_MODES = ("auto", "require", "off")
LINK_PATH = "producer-link"
"""Per-tick struct/raw records produced from C into the Producer's handle."""
BATCH_PATH = "produce-batch"
"""Per-tick records through the Producer's Python API (produce_batch)."""

TESTED_LIBRDKAFKA = frozenset({(2, 12), (2, 16)})
"""librdkafka (major, minor) versions the ProducerLink's tests ran on (confluent-kafka ships
librdkafka of its own version). The link fills librdkafka's structs itself, so a version
outside this set is not used: under "auto" the handler falls back to produce_batch()."""


class ProducerLinkUnavailable(RuntimeError):
    """`producer_link="require"` and the link cannot be made; the reason is the message."""


def link_problem() -> str | None:
    """Why a ProducerLink cannot be made in this process (None if it can): the librdkafka
    confluent_kafka uses cannot be bound, or is a version the link was not tested with."""
    try:
        version = bind_librdkafka()
    except OSError as error:
        return f"cannot bind to confluent_kafka's librdkafka: {error}"
    tested = version >> 24, (version >> 16) & 0xFF
    if tested not in TESTED_LIBRDKAFKA:
        return (f"librdkafka {tested[0]}.{tested[1]} is not among the versions the ProducerLink "
                f"was tested with ({', '.join(f'{a}.{b}' for a, b in sorted(TESTED_LIBRDKAFKA))})")
    return None


def create_producer(client: KafkaClientConfig, errors: DeliveryErrors,
                    producer_link: str = "auto") -> tuple[Producer, ProducerLink | None, str]:
    """The handler's single, thread-safe producer, configured by `client.producer()`; with
    the ProducerLink into its handle unless `producer_link` is "off" (see the module).

    Returns (producer, link or None, path in use: LINK_PATH or BATCH_PATH); `errors` counts
    failures from both."""
    if producer_link not in PRODUCER_LINK_MODES:
        raise ValueError(f"producer_link must be one of {PRODUCER_LINK_MODES}, "
                         f"not {producer_link!r}")
    config = client.producer()
    config["on_delivery"] = errors
    config.setdefault("error_cb", lambda error: log.warning("kafka: %s", error))
    if producer_link != "off":
        problem = link_problem()
        if problem is None:
            try:
                producer, errors.link = _producer_link.linked_producer(
                    config, Producer, _producer_link.__file__)
                log.info("per-tick records produced from C into the producer's handle "
                         "(librdkafka %s)", _producer_link.bound_library())
                return producer, errors.link, LINK_PATH
            except (KafkaException, RuntimeError) as error:     # the plugin did not load
                problem = f"the ProducerLink plugin failed: {kafka_reason(error)}"
        if producer_link == "require":
            raise ProducerLinkUnavailable(problem)
        log.warning("per-tick records go through produce_batch (slower): %s", problem)
    return Producer(config), None, BATCH_PATH

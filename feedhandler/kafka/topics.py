"""The handler's topics: legal names, a reachable cluster, then created when missing, with every
topic's actual partition count."""

from __future__ import annotations

import logging
import re
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from feedhandler.kafka.config import QUIET, KafkaClientConfig, kafka_reason

log = logging.getLogger(__name__)

# Kafka's own rule (org.apache.kafka.common.internals.Topic): ASCII letters, digits, '.', '_'
# and '-', at most 249 characters, and neither "." nor "..".
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
REACHABILITY_TIMEOUT = 5.0
# Errors no retry within the probe's time can cure.
_FINAL_ERRORS = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
                 KafkaError.CLUSTER_AUTHORIZATION_FAILED}


class KafkaStartError(Exception):
    """Kafka could not be reached, or refused what was asked (one line)."""


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse `name` as a topic name (None if it would not)."""
    if name in (".", ".."):
        return f"topic name {name!r} is not allowed"
    if not TOPIC_NAME.fullmatch(name):
        return (f"topic name {name!r} is not legal: 1 to 249 of ASCII letters, digits, "
                "'.', '_' and '-'")
    return None


def check_reachable(client: KafkaClientConfig, timeout: float = REACHABILITY_TIMEOUT) -> int:
    """One bounded metadata request with the AdminClient's full config (security, SASL, SSL):
    the number of brokers that answered, or KafkaStartError with the first reason librdkafka
    gave, after at most `timeout` seconds. librdkafka's own log lines are off meanwhile."""
    reasons: list[KafkaError] = []
    admin = AdminClient({**client.admin(), **QUIET, "error_cb": reasons.append})
    deadline = time.monotonic() + timeout
    while True:
        try:
            return len(admin.list_topics(timeout=min(0.5, timeout)).brokers)
        except KafkaException as error:
            admin.poll(0)           # serves error_cb: the reason behind "transport failure"
            final = [r for r in reasons if r.code() in _FINAL_ERRORS]
            if final or time.monotonic() >= deadline:
                reason = next(iter(final + [r for r in reasons
                                            if r.code() != KafkaError._ALL_BROKERS_DOWN]), None)
                raise KafkaStartError(
                    f"Kafka at {client.bootstrap_servers} did not answer: "
                    f"{reason.str() if reason else kafka_reason(error)}") from None


def ensure_topics(client: KafkaClientConfig, partitions: dict[str, int],
                  replication_factor: int = -1, timeout: float = 30.0,
                  settings: dict[str, dict[str, str]] | None = None) -> dict[str, int]:
    """Create the topics that are missing (with `settings[name]` as topic configuration, e.g.
    cleanup.policy); return every topic's actual partition count (an existing topic keeps its
    own). The cluster first validates every missing topic
    (validate_only), so a refusal leaves none of them created; KafkaStartError then, or when
    the cluster stops answering."""
    admin = AdminClient(client.admin())
    existing = _topics(admin, timeout)
    settings = settings or {}
    missing = [NewTopic(name, count, replication_factor, config=settings.get(name, {}))
               for name, count in partitions.items() if name not in existing]
    if missing:
        _settle(admin.create_topics(missing, operation_timeout=timeout, validate_only=True))
        for name in _settle(admin.create_topics(missing, operation_timeout=timeout)):
            log.info("created topic %s", name)
    # A new topic can take a moment to show up in the metadata of the broker asked.
    deadline = time.monotonic() + timeout
    while True:
        metadata = _topics(admin, timeout)
        if all(name in metadata and metadata[name].partitions for name in partitions):
            return {name: len(metadata[name].partitions) for name in partitions}
        if time.monotonic() > deadline:
            raise KafkaStartError(f"topics not visible after {timeout:g} s: "
                                  f"{sorted(set(partitions) - set(metadata))}")
        time.sleep(0.05)


def _topics(admin: AdminClient, timeout: float) -> dict:
    try:
        return admin.list_topics(timeout=timeout).topics
    except KafkaException as error:
        raise KafkaStartError(f"Kafka stopped answering: {kafka_reason(error)}") from None


def _settle(futures: dict) -> list[str]:
    """Wait for every topic's creation result: the names created, or KafkaStartError naming
    the first topic refused (one created meanwhile by someone else is not refused)."""
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaStartError(f"Kafka refused topic {name}: "
                                       f"{kafka_reason(error)}") from None
    return created

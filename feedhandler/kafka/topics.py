"""The handler's topics: legal names, a reachable cluster, then created when missing, with every
topic's actual partition count."""

from __future__ import annotations

import logging
import re
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from feedhandler.kafka.config import KafkaClientConfig, kafka_reason

log = logging.getLogger(__name__)

# Kafka's own rule (org.apache.kafka.common.internals.Topic): ASCII letters, digits, '.', '_'
# and '-', at most 249 characters, and neither "." nor "..".
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
REACHABILITY_TIMEOUT = 5.0
# Errors no retry within the probe's time can cure.
_FINAL_ERRORS = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
                 KafkaError.CLUSTER_AUTHORIZATION_FAILED}
# librdkafka's words for a TLS handshake that failed, which it reports as a transport failure:
# the other end is no TLS listener (or refuses ours), retrying changes nothing.
_FINAL_TRANSPORT = "SSL handshake failed"
# ... and for a listener that hung up on the first request: often one that wants another
# security.protocol (a TLS or SASL listener says nothing to a client that skips its handshake).
_HUNG_UP = "connection closed by peer"


class KafkaStartError(Exception):
    """Kafka could not be reached, or refused what was asked (one line)."""


class LogLines:
    """librdkafka's log lines, kept instead of printed (confluent_kafka's `logger` setting takes
    any object with a logging.Logger's `log`): the probe's reasons, never on the terminal."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, level: int, fmt: str, *args) -> None:
        self.lines.append(fmt % args)

    def reason(self) -> str | None:
        """The message of the last connection failure logged ('FAIL' lines), if any."""
        failures = [line for line in self.lines if line.startswith("FAIL ")]
        return failures[-1].split("]: ", 1)[-1] if failures else None


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse `name` as a topic name (None if it would not)."""
    if name in (".", ".."):
        return f"topic name {name!r} is not allowed"
    if not TOPIC_NAME.fullmatch(name):
        return (f"topic name {name!r} is not legal: 1 to 249 of ASCII letters, digits, "
                "'.', '_' and '-'")
    return None


def _final(error: KafkaError) -> bool:
    return error.code() in _FINAL_ERRORS or (error.code() == KafkaError._TRANSPORT
                                             and _FINAL_TRANSPORT in error.str())


def check_reachable(client: KafkaClientConfig, timeout: float = REACHABILITY_TIMEOUT) -> int:
    """One bounded metadata request with the AdminClient's full config (security, SASL, SSL):
    the number of brokers that answered, or KafkaStartError with the reason, after at most
    `timeout` seconds, at once for a reason no retry cures (refused credentials, a failed TLS
    handshake). The reason: librdkafka's first error of that kind, else its last connection
    failure, else that nothing answered. librdkafka's log lines are collected, not printed."""
    reasons: list[KafkaError] = []
    lines = LogLines()
    admin = AdminClient({**client.admin(), "log_level": 6, "logger": lines,
                         "error_cb": reasons.append})
    deadline = time.monotonic() + timeout
    while True:
        try:
            return len(admin.list_topics(timeout=min(0.5, timeout)).brokers)
        except KafkaException:
            admin.poll(0)           # serves error_cb and the logger
            final = [r.str() for r in reasons if _final(r)]
            if final or time.monotonic() >= deadline:
                raise KafkaStartError(f"Kafka at {client.bootstrap_servers} did not answer: "
                                      f"{_unreachable_reason(client, final, reasons, lines, timeout)}"
                                      ) from None


def _unreachable_reason(client: KafkaClientConfig, final: list[str], reasons: list[KafkaError],
                        lines: LogLines, timeout: float) -> str:
    other = [r.str() for r in reasons if r.code() != KafkaError._ALL_BROKERS_DOWN]
    reason = next(iter(final + other), None) or lines.reason()
    if reason is None:
        return f"no answer within {timeout:g} s"
    if _HUNG_UP in reason and _FINAL_TRANSPORT not in reason:
        protocol = client.settings.get("security.protocol", "PLAINTEXT").upper()
        reason += f" (a listener for a security.protocol other than {protocol}?)"
    return reason
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

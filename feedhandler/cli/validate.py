"""Everything `feedhandler run` can check before it creates anything: counts, routes, topic names
and the Kafka client settings (librdkafka's own verdict, without connecting). Each problem is a
UsageError whose text is the one line the user sees."""

from __future__ import annotations

import argparse

from feedhandler.kafka.config import KafkaClientConfig, KafkaConfigError
from feedhandler.kafka.contract import unavailable
from feedhandler.kafka.routing import Routes
from feedhandler.kafka.topics import topic_name_problem


class UsageError(ValueError):
    """A bad argument or setting: exit ExitCode.USAGE, nothing created."""


class MissingOption(UsageError):
    """An option needed and given nowhere; `flags` are the ones that would do (the message
    then also names where else each can be given: config file, environment)."""

    def __init__(self, message: str, flags: tuple[str, ...]):
        super().__init__(message)
        self.flags = flags


def counts(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    if args.partitions < 1:
        raise UsageError(f"--partitions must be at least 1, not {args.partitions}")
    if args.replication_factor != -1 and args.replication_factor < 1:
        raise UsageError("--replication-factor must be at least 1, or -1 for the broker's "
                         f"default, not {args.replication_factor}")
    if args.flush_timeout < 0:
        raise UsageError(f"--flush-timeout must not be negative, not {args.flush_timeout:g}")
    if args.sequence is not None and args.sequence < 0:
        raise UsageError("--sequence must be 0 (from now on) or a sequence number, "
                         f"not {args.sequence}")


def routes(prefix: str, overrides: list[tuple[str, str]]) -> Routes:
    """The routes, every topic they name (dead-letter topic included) legal for Kafka."""
    try:
        chosen = Routes.by_category(prefix, dict(overrides))
    except ValueError as error:
        raise UsageError(f"--route: {error}") from None
    for topic in chosen.every_topic:
        problem = topic_name_problem(topic)
        if problem:
            raise UsageError(f"--topic-prefix/--route: {problem}")
    return chosen


def kafka_client(bootstrap_servers: str, settings: list[tuple[str, str]]) -> KafkaClientConfig:
    """The client config, accepted by librdkafka for both the producer and the AdminClient."""
    if not bootstrap_servers.strip():
        raise UsageError("--bootstrap-servers is empty")
    client = KafkaClientConfig(bootstrap_servers, dict(settings))
    try:
        client.check()
    except KafkaConfigError as error:
        raise UsageError(f"Kafka setting (-X): {error}") from None
    return client


def value_format(name: str) -> None:
    """A format this Python cannot write (arrow without pyarrow) is refused before anything is
    created."""
    if problem := unavailable(name):
        raise UsageError(problem)

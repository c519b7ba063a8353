"""The handler's topics: created when missing, with every topic's actual partition count."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


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

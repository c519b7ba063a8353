"""Kafka: the shared producer and its settings (`producer`), topics and keys (`routing`), record
building (compiled `_records`, `_producer_link`) and reading records back (`consume`)."""

from feedhandler.kafka.byte_order import BYTE_ORDER  # noqa: F401 - refuses a big-endian host

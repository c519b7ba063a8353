"""Kafka: the shared producer and its settings (`producer`), topics and keys (`routing`), record
building (compiled `_records`, `_producer_link`) and reading records back (`consume`)."""

"""Reading the handler's records back into the same numpy structured arrays.

    values = [message.value() for message in consumer_messages]
    arrays = feedhandler.consume.to_arrays(values, "struct")   # {"A": array, "D": array, ...}

`struct` and `raw` values carry their message type in their first byte, `json` values in their
`message_type` field, and `batched` values in their ninth byte (after the sequence number).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from feedhandler.wire.itch import DTYPES, parse
from feedhandler.kafka.routing import BATCH_DTYPES

__all__ = ["read_topic", "to_arrays"]


def _by_type(values, type_offset: int) -> dict[str, list[bytes]]:
    grouped = defaultdict(list)
    for value in values:
        grouped[chr(value[type_offset])].append(value)
    return grouped


def _from_json(values) -> dict[str, np.ndarray]:
    rows = defaultdict(list)
    for value in values:
        fields = json.loads(value)
        rows[fields["message_type"]].append(fields)
    arrays = {}
    for message_type, objects in rows.items():
        dtype = DTYPES[message_type]
        array = np.zeros(len(objects), dtype)
        for name in dtype.names:
            column = [o[name] for o in objects]
            if dtype[name].kind == "S":
                width = dtype[name].itemsize
                column = [v.encode("latin-1").ljust(width) if name != "message_type"
                          else v.encode() for v in column]
            array[name] = column
        arrays[message_type] = array
    return arrays


def to_arrays(values, value_format: str) -> dict[str, np.ndarray]:
    """Record values of one format -> {message type: structured array}, in the given order.

    For `batched` the arrays have BATCH_DTYPES (a `sequence` field first); for `json` alpha
    fields come back space-padded to their width, as on the wire."""
    values = list(values)
    if value_format == "struct":
        return {t: np.frombuffer(b"".join(v), DTYPES[t])
                for t, v in _by_type(values, 0).items()}
    if value_format == "raw":
        return parse(b"".join(len(v).to_bytes(2, "big") + v for v in values))
    if value_format == "batched":
        return {t: np.frombuffer(b"".join(v), BATCH_DTYPES[t])
                for t, v in _by_type(values, 8).items()}
    if value_format == "json":
        return _from_json(values)
    raise ValueError(f"unknown value format {value_format!r}")


def read_topic(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> list:
    """Every record of a topic, from the beginning to its current end, partition by partition
    (the confluent_kafka Message objects, in offset order within each partition)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers, "group.id": "feedhandler-read",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # Without this the consumer waits between fetches and reads ~10x slower.
        "fetch.queue.backoff.ms": 1,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        partitions = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout)
            if high > low:
                partitions.append(TopicPartition(topic, partition, low))
        consumer.assign(partitions)
        remaining = {tp.partition for tp in partitions}
        messages = []
        deadline = time.monotonic() + timeout
        while remaining:
            # consume() waits for the whole batch or the timeout: keep each wait short.
            batch = consumer.consume(10_000, timeout=0.2)
            if not batch and time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(remaining)} not read to the end "
                                   f"within {timeout} s")
            for message in batch:
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                else:
                    raise RuntimeError(error.str())
        return messages
    finally:
        consumer.close()

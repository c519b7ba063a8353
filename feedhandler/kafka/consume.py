"""Reading the handler's records back into the same numpy structured arrays.

    values = [message.value() for message in consumer_messages]
    arrays = feedhandler.consume.to_arrays(values, "struct")   # {"A": array, "D": array, ...}

Every tick comes back with its feed session and sequence number: per-tick `struct` and `raw`
values start with the tick header (session, sequence), `json` values carry both as fields, and
`batched` rows start with the sequence (the session is the record's `session` header).
`messages(array)` drops those fields again, leaving the ITCH message structs.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from feedhandler.kafka.routing import (BATCH_DTYPES, TICK_DTYPES, TICK_HEADER_DTYPE,
                                       TICK_HEADER_SIZE)
from feedhandler.wire.itch import DTYPES, parse

__all__ = ["messages", "read_topic", "to_arrays"]


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
        dtype = TICK_DTYPES[message_type]
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


def _from_raw(values) -> dict[str, np.ndarray]:
    headers = np.frombuffer(b"".join(v[:TICK_HEADER_SIZE] for v in values), TICK_HEADER_DTYPE)
    by_type = defaultdict(list)
    for index, value in enumerate(values):
        by_type[chr(value[TICK_HEADER_SIZE])].append(index)
    arrays = {}
    for message_type, indices in by_type.items():
        wire = parse(b"".join((len(values[i]) - TICK_HEADER_SIZE).to_bytes(2, "big")
                              + values[i][TICK_HEADER_SIZE:] for i in indices))[message_type]
        array = np.empty(len(indices), TICK_DTYPES[message_type])
        for name in TICK_HEADER_DTYPE.names:
            array[name] = headers[name][indices]
        for name in DTYPES[message_type].names:
            array[name] = wire[name]
        arrays[message_type] = array
    return arrays


def to_arrays(values, value_format: str) -> dict[str, np.ndarray]:
    """Record values of one format -> {message type: structured array}, in the given order.

    `struct`, `raw` and `json` give TICK_DTYPES (`session` and `sequence`, then the message),
    `batched` gives BATCH_DTYPES (`sequence`, then the message); for `json` alpha fields come
    back space-padded to their width, as on the wire."""
    values = list(values)
    if value_format == "struct":
        return {t: np.frombuffer(b"".join(v), TICK_DTYPES[t])
                for t, v in _by_type(values, TICK_HEADER_SIZE).items()}
    if value_format == "raw":
        return _from_raw(values)
    if value_format == "batched":
        return {t: np.frombuffer(b"".join(v), BATCH_DTYPES[t])
                for t, v in _by_type(values, 8).items()}
    if value_format == "json":
        return _from_json(values)
    raise ValueError(f"unknown value format {value_format!r}")


def messages(array: np.ndarray) -> np.ndarray:
    """The ITCH message structs of `to_arrays` rows, without session and sequence (a copy with
    the dtype of feedhandler.itch.DTYPES)."""
    message_type = chr(array["message_type"][0][0]) if len(array) else None
    if message_type is None:
        raise ValueError("no rows")
    out = np.empty(len(array), DTYPES[message_type])
    for name in out.dtype.names:
        out[name] = array[name]
    return out


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

"""Golden records of every value format, made from one seeded session by the real sink code.

The committed files in tests/fixtures/records/ hold, per variant (format, with or without
--headers), every data record the sink produces for the session: topic (without its prefix),
partition (-1: the partitioner's choice by key), key, value and headers as hex, and the record
timestamp where the record sets one. tests/test_record_fixtures.py holds the code to them, so a
change to any format's bytes shows up as a failing test until the files are regenerated on
purpose (and contract.FORMAT_VERSION considered). The `arrow` values are held at the level of
their Arrow schema and decoded table, not their bytes (which pyarrow does not promise to keep
across its versions):

    PYTHONPATH=$PWD python3 tests/record_fixtures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from feedhandler.exchange import synthetic
from feedhandler.kafka.ledger import DeliveryErrors, DeliveryLedger
from feedhandler.kafka.routing import Routes
from feedhandler.kafka.sink import ArrowSink, BatchedSink, ProducerTickSink, SinkConfig
from feedhandler.wire import packet
from streams import split_block

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
PREFIX = "golden."
SESSION = b"GOLDEN0001"
SEED = 1
COUNT = 100
PER_FRAME = 25
FIRST_SEQUENCE = 1001
PARTITIONS = 3
TRADE_DATE_MS = 1_710_475_200_000     # 2024-03-15 00:00 America/New_York (EDT)
VARIANTS = {"struct": ("struct", False), "raw": ("raw", False), "json": ("json", False),
            "batched": ("batched", False), "arrow": ("arrow", False), "struct-headers": ("struct", True),
            "raw-headers": ("raw", True), "json-headers": ("json", True)}


def seeded_packets() -> list[packet.Packet]:
    """The seeded session, decoded frame by frame as the handler decodes it."""
    messages = split_block(synthetic.random_stream(COUNT, seed=SEED,
                                                   mix=synthetic.UNIFORM_MIX)[0])
    return [packet.decode(packet.encode(messages[i:i + PER_FRAME], session=SESSION,
                                        sequence=FIRST_SEQUENCE + i))
            for i in range(0, len(messages), PER_FRAME)]


def sink_config(bootstrap: str, value_format: str, headers: bool, prefix: str = PREFIX,
                **options) -> SinkConfig:
    return SinkConfig(bootstrap, value_format=value_format, routes=Routes.by_category(prefix),
                      partitions=PARTITIONS, headers=headers, timestamp_base_ms=TRADE_DATE_MS,
                      **options)


class RecordingProducer:
    """Stands in for confluent_kafka.Producer: keeps every record handed to it."""

    def __init__(self):
        self.records: list[dict] = []

    def produce_batch(self, topic, records):
        for record in records:
            self.produce(topic, record["value"], record.get("key"),
                         record.get("partition", -1), record.get("timestamp", 0))
        return len(records)

    def produce(self, topic, value, key=None, partition=-1, timestamp=0, headers=None):
        self.records.append({"topic": topic, "partition": partition, "key": key,
                             "value": bytes(value), "headers": headers,
                             "timestamp": timestamp or None})

    def poll(self, _timeout=0):
        return 0

    def flush(self, _timeout=0):
        return 0

    def __len__(self):
        return 0


def record_line(topic: str, partition: int, key, value, headers, timestamp) -> dict:
    """One record as a fixture line (`topic` without the prefix)."""
    return {"topic": topic, "partition": partition,
            "key": key.hex() if key is not None else None, "value": value.hex(),
            "headers": [[name, bytes(v).hex()] for name, v in headers] if headers else None,
            "timestamp": timestamp}


def produce(variant: str) -> list[dict]:
    """The variant's data records, produced by the sink of its delivery path (Producer API)."""
    value_format, headers = VARIANTS[variant]
    config = sink_config("unused:9092", value_format, headers)
    producer = RecordingProducer()
    sink_class = {"batched": BatchedSink, "arrow": ArrowSink}.get(value_format, ProducerTickSink)
    routes = config.routes
    partitions = {topic: PARTITIONS for topic in routes.topics}
    sink = sink_class(config, producer, None, partitions, DeliveryLedger(DeliveryErrors()))
    for frame in seeded_packets():
        sink.publish(frame, 0)
        sink.idle()         # batched: one release per frame, whatever the machine's pace
    sink.finish()
    return [record_line(r["topic"][len(PREFIX):], r["partition"], r["key"], r["value"], r["headers"],
                        r["timestamp"])
            for r in producer.records if r["topic"] in routes.topics]


def path(variant: str) -> Path:
    return FIXTURES / f"{variant}.jsonl"


def load(variant: str) -> list[dict]:
    return [json.loads(line) for line in path(variant).read_text().splitlines()]


def write() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        lines = produce(variant)
        path(variant).write_text("".join(json.dumps(line, sort_keys=True) + "\n"
                                         for line in lines))
        print(f"{path(variant)}: {len(lines)} records", file=sys.stderr)


if __name__ == "__main__":
    write()

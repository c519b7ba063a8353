"""The shared producer's loss-averse defaults; `-X key=value` settings override any of them."""

PRODUCER_DEFAULTS = {
    # No tick lost silently: every replica in sync acknowledges; retries cannot duplicate or
    # reorder (idempotence keeps per-partition order with up to 5 requests in flight).
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "lz4",
    # Same partitions for the same keys as the Java client's default partitioner.
    "partitioner": "murmur2_random",
    # Large batches: fewer, bigger produce requests are what lets one producer keep up.
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "message.max.bytes": 8_000_000,
    # Successful deliveries make no Python call; failures do (and are counted).
    "delivery.report.only.error": True,
}

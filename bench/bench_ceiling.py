"""End to end against the ceiling, per value format, the two taking turns.

bench_handler.py runs every round of a handler benchmark and then, minutes later, every round
of its ceiling; on a shared machine the load moves in between (batched[2] measured 0.4-1.08x of
its ceiling that way). Here each round is a pair, one right after the other, and the ratio is
taken per pair:

- the handler (2 workers, as `feedhandler run` sets the GIL switch interval) on a simulated
  session served by the simulator in its own process, until every tick is acknowledged;
- the ceiling of the same format (bench_handler's, nothing else running): ready-made batched
  records produced with the handler's producer settings (`batched`), or the decoded session
  handed to the format's sink on one thread (`struct`, `raw`, `json`).

Each format gets an unmeasured warm-up pair, then ROUNDS pairs; the table gives the median
rates and the median handler / ceiling ratio with its range over the pairs, and the CPU
seconds each round took in this process (librdkafka's threads included) and, for the handler,
in the simulator; then the part of it librdkafka's threads took (compressing, sending): on a
machine with few cores the handler's own work (reading, decoding, publishing) competes with
librdkafka and the broker, which the ceiling leaves alone.

With --without-kafka, each format then gets ROUNDS handler rounds whose producer drops every
record: the pace and CPU of reading, decoding and publishing alone.

    PYTHONPATH=$PWD python3 bench/bench_ceiling.py [--formats batched struct raw json]
        [--rounds 5] [--without-kafka] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from confluent_kafka import Producer  # noqa: E402

import bench_handler as bh  # noqa: E402
from feedhandler.kafka.config import PRODUCER_DEFAULTS, KafkaClientConfig  # noqa: E402
from feedhandler.kafka.routing import Routes  # noqa: E402
from feedhandler.kafka.sink import SinkConfig, open_sink  # noqa: E402
from feedhandler.kafka.topics import ensure_topics  # noqa: E402

BOOTSTRAP = "127.0.0.1:19092"
WORKERS = 2
TICKS = {"batched": bh.BATCHED_TICKS, "struct": bh.TICKS, "raw": bh.TICKS, "json": bh.JSON_TICKS}


class Pairs:
    """One format's handler and ceiling rounds; topics are dropped after each round."""

    def __init__(self, value_format: str, prefix: str):
        self.format, self.prefix, self.ticks = value_format, prefix, TICKS[value_format]
        self.simulator, self.port = bh.start_simulator(self.ticks)
        if value_format == "batched":
            self.values = bh.batched_values(200_000, Routes.by_category(f"{prefix}values."))
        else:
            self.packets = bh.session_packets(self.ticks)

    def close(self) -> None:
        self.simulator.kill()

    def handler(self) -> tuple[float, float, float]:
        """Seconds of the round, CPU seconds of this process and the simulator, and of
        librdkafka's threads."""
        handler = bh.new_handler(BOOTSTRAP, self.prefix, self.format, WORKERS)
        simulator_cpu = process_cpu(self.simulator.pid)
        try:
            seconds, cpu, librdkafka = timed(bh.run_handler, handler, self.port, self.ticks)
            return seconds, cpu + process_cpu(self.simulator.pid) - simulator_cpu, librdkafka
        finally:
            bh.delete_topics(BOOTSTRAP, [handler])

    def without_kafka(self) -> tuple[float, float, float]:
        """A handler round (without the ProducerLink) whose producer drops every record: the
        figures of handler()."""
        handler = bh.new_handler(BOOTSTRAP, self.prefix, self.format, WORKERS,
                                 producer_link="off")
        handler.sink.producer = DroppingProducer()
        try:
            return timed(bh.run_handler, handler, self.port, self.ticks)
        finally:
            bh.delete_topics(BOOTSTRAP, [handler])

    def ceiling(self) -> tuple[float, float, float]:
        """Seconds of the round, CPU seconds of this process, and of librdkafka's threads."""
        routes = Routes.by_category(f"{self.prefix}{next(bh.RUNS)}.")
        if self.format != "batched":
            sink = open_sink(SinkConfig(BOOTSTRAP, self.format, routes=routes,
                                        partitions=bh.PARTITIONS))
            try:
                return timed(bh.publish_packets, sink, self.packets)
            finally:
                bh.delete_topic_names(BOOTSTRAP, routes.every_topic)
        ensure_topics(KafkaClientConfig(BOOTSTRAP), dict.fromkeys(routes.topics, bh.PARTITIONS))
        producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": BOOTSTRAP})
        for topic in routes.topics:     # connected, producer id and leaders known
            producer.produce(topic, b"warm-up", partition=0)
        producer.flush(30)
        renamed = dict(zip(Routes.by_category(f"{self.prefix}values.").topics, routes.topics))
        values = [(renamed[t], p, v, n) for t, p, v, n in self.values]
        try:
            return timed(bh.produce_values, producer, values, self.ticks)
        finally:
            bh.delete_topic_names(BOOTSTRAP, routes.topics)


class DroppingProducer:
    """Takes every record and drops it: nothing is queued, so everything counts delivered."""

    def produce(self, *args, **kwargs) -> None:
        pass

    def produce_batch(self, topic, records) -> int:
        return len(records)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def timed(function, *args) -> tuple[float, float, float]:
    """Seconds `function(*args)` took, and the CPU seconds of this process and of its
    librdkafka threads meanwhile (the producer in use lives on past the call)."""
    start, cpu, librdkafka = time.perf_counter(), time.process_time(), librdkafka_cpu()
    function(*args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # a thread that ended meanwhile (an earlier producer's) did no work here worth counting
    return seconds, cpu, sum(used - librdkafka.get(thread, 0.0)
                             for thread, used in librdkafka_cpu().items())


def librdkafka_cpu() -> dict[str, float]:
    """CPU seconds that each of this process's librdkafka threads (named rdk:...) has used so
    far, by thread id (Linux)."""
    used = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith("rdk:"):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:         # the thread ended meanwhile
            continue
        used[task.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) another process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(TICKS), choices=list(TICKS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--without-kafka", action="store_true",
                        help="also handler rounds whose producer drops every record")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args()
    prefix = f"bench-ceiling-{int(time.time())}."
    figures = {}
    for value_format in args.formats:
        pairs = Pairs(value_format, prefix)
        try:
            pairs.handler(), pairs.ceiling()        # warm-up
            seconds = [(pairs.handler(), pairs.ceiling()) for _ in range(args.rounds)]
            alone = [pairs.without_kafka() for _ in range(args.rounds)] \
                if args.without_kafka else []
        finally:
            pairs.close()
        handler = [pairs.ticks / h[0] / 1e6 for h, _ in seconds]
        ceiling = [pairs.ticks / c[0] / 1e6 for _, c in seconds]
        figures[value_format] = {"ticks": pairs.ticks, "handler_mps": handler,
                                 "ceiling_mps": ceiling,
                                 "ratio": [c[0] / h[0] for h, c in seconds],
                                 "handler_cpu_s": [h[1] for h, _ in seconds],
                                 "ceiling_cpu_s": [c[1] for _, c in seconds],
                                 "handler_librdkafka_cpu_s": [h[2] for h, _ in seconds],
                                 "ceiling_librdkafka_cpu_s": [c[2] for _, c in seconds]}
        figure = figures[value_format]
        print(f"{value_format:8} handler {spread(handler)} M/s  ceiling {spread(ceiling)} M/s  "
              f"handler/ceiling {spread(figure['ratio'])}  CPU s handler "
              f"{spread(figure['handler_cpu_s'])} ceiling {spread(figure['ceiling_cpu_s'])}, "
              f"of which librdkafka {spread(figure['handler_librdkafka_cpu_s'])} / "
              f"{spread(figure['ceiling_librdkafka_cpu_s'])}", flush=True)
        if alone:
            figure["without_kafka_mps"] = [pairs.ticks / a[0] / 1e6 for a in alone]
            figure["without_kafka_cpu_s"] = [a[1] for a in alone]
            print(f"{value_format:8} without Kafka {spread(figure['without_kafka_mps'])} M/s  "
                  f"CPU s {spread(figure['without_kafka_cpu_s'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

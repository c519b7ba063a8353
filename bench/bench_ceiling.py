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
in the simulator; then the part of it librdkafka's threads took (compressing, sending), and the
broker's CPU seconds in the round: on a machine with few cores the handler's own work
(reading, decoding, publishing) competes with librdkafka and the broker, which the ceiling
leaves alone.

With --without-kafka, each format then gets ROUNDS handler rounds whose producer drops every
record: the pace and CPU of reading, decoding and publishing alone.

With --split-cores KAFKA_CPU OWN_CPU, both sides of each pair get the same share of the
machine for Kafka: the broker's JVM and every librdkafka thread run on KAFKA_CPU, and the
producing side's own work on OWN_CPU (the handler's reader, decode and publisher threads,
pinned as `feedhandler run --cpus` pins them, and the simulator feeding it; the ceiling's
producing thread). That is how a trading host runs the handler, its threads on cores of their
own; on a 2-core machine it is the only way the ratio asks whether the handler keeps up with
Kafka, rather than how much CPU the two sides take from each other. The broker's mask is put
back at the end.

    PYTHONPATH=$PWD python3 bench/bench_ceiling.py [--formats batched struct raw json]
        [--rounds 5] [--without-kafka] [--split-cores KAFKA_CPU OWN_CPU] [-X KEY=VALUE ...]
        [--json FILE]

-X gives both sides the same librdkafka setting over PRODUCER_DEFAULTS, as `feedhandler run
-X` does.
"""

from __future__ import annotations

import argparse
import contextlib
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
from feedhandler.ops.threads import ROLES  # noqa: E402

BOOTSTRAP = "127.0.0.1:19092"
WORKERS = 2
# At 4-5 M ticks/s bench_handler's 4 M-tick batched round lasts under a second, and the
# handler's fixed part of a round (connecting and logging in to the simulator, the last
# release's linger and acknowledgement: about 0.1 s here) weighs a tenth of it; a feed runs for
# hours, so the pairs compare steadier rates over three times as many ticks.
BATCHED_TICKS = 3 * bh.BATCHED_TICKS
TICKS = {"batched": BATCHED_TICKS, "struct": bh.TICKS, "raw": bh.TICKS, "json": bh.JSON_TICKS}


class CoreSplit:
    """Kafka's part on one CPU, the producing side's own work on another (--split-cores). The
    calling thread's mask decides where the threads it creates run: producers are made on the
    Kafka CPU (librdkafka's threads inherit it), the producing loops run on the own CPU."""

    def __init__(self, kafka_cpu: int, own_cpu: int, broker_pid: int):
        available = os.sched_getaffinity(0)
        if kafka_cpu == own_cpu or not {kafka_cpu, own_cpu} <= available:
            raise SystemExit(f"--split-cores: two different CPUs of {sorted(available)}")
        self.kafka, self.own = frozenset({kafka_cpu}), frozenset({own_cpu})
        self.broker_pid = broker_pid
        self.broker_mask = os.sched_getaffinity(broker_pid)
        self.calling_mask = available

    @classmethod
    def from_args(cls, cpus: list[int] | None) -> "CoreSplit | None":
        return None if cpus is None else cls(*cpus, broker_pid())

    def pin_broker(self) -> None:
        pin_every_thread(self.broker_pid, self.kafka)

    def restore_broker(self) -> None:
        pin_every_thread(self.broker_pid, self.broker_mask)

    def handler_cpus(self) -> dict[str, frozenset[int]]:
        return dict.fromkeys(ROLES, self.own)

    @contextlib.contextmanager
    def on(self, cpus: frozenset[int]):
        """The calling thread on `cpus` for the block, its mask given back afterwards."""
        os.sched_setaffinity(0, cpus)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.calling_mask)


def pin_every_thread(pid: int, cpus) -> None:
    """Every thread of process `pid` on `cpus`; threads it makes later inherit that."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):      # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


class Pairs:
    """One format's handler and ceiling rounds; topics are dropped after each round."""

    def __init__(self, value_format: str, prefix: str, split: CoreSplit | None = None,
                 settings: dict[str, str] | None = None):
        self.format, self.prefix, self.ticks = value_format, prefix, TICKS[value_format]
        self.split = split
        self.settings = settings or {}
        self.simulator, self.port = bh.start_simulator(self.ticks)
        if split is not None:
            pin_every_thread(self.simulator.pid, split.own)
        if value_format == "batched":
            self.values = bh.batched_values(200_000, Routes.by_category(f"{prefix}values."))
        else:
            self.packets = bh.session_packets(self.ticks)

    def close(self) -> None:
        self.simulator.kill()

    def handler(self) -> tuple[float, float, float, float]:
        """Seconds of the round, CPU seconds of this process and the simulator, of
        librdkafka's threads, and of the broker."""
        handler = self._new_handler()
        simulator_cpu = process_cpu(self.simulator.pid)
        try:
            seconds, cpu, librdkafka, broker = timed(bh.run_handler, handler, self.port,
                                                     self.ticks)
            return (seconds, cpu + process_cpu(self.simulator.pid) - simulator_cpu, librdkafka,
                    broker)
        finally:
            bh.delete_topics(BOOTSTRAP, [handler])

    def without_kafka(self) -> tuple[float, float, float, float]:
        """A handler round (without the ProducerLink) whose producer drops every record: the
        figures of handler()."""
        handler = self._new_handler(producer_link="off")
        handler.sink.producer = DroppingProducer()
        try:
            return timed(bh.run_handler, handler, self.port, self.ticks)
        finally:
            bh.delete_topics(BOOTSTRAP, [handler])

    def _new_handler(self, **options):
        split = self.split
        options["producer_overrides"] = self.settings
        if split is None:
            return bh.new_handler(BOOTSTRAP, self.prefix, self.format, WORKERS, **options)
        with split.on(split.kafka):
            return bh.new_handler(BOOTSTRAP, self.prefix, self.format, WORKERS,
                                  cpus=split.handler_cpus(), **options)

    def ceiling(self) -> tuple[float, float, float, float]:
        """Seconds of the round, CPU seconds of this process, of librdkafka's threads, and of
        the broker."""
        routes = Routes.by_category(f"{self.prefix}{next(bh.RUNS)}.")
        split = self.split
        making = contextlib.nullcontext() if split is None else split.on(split.kafka)
        producing = contextlib.nullcontext() if split is None else split.on(split.own)
        if self.format != "batched":
            with making:
                sink = open_sink(SinkConfig(BOOTSTRAP, self.format, routes=routes,
                                            partitions=bh.PARTITIONS,
                                            producer_overrides=self.settings))
            try:
                with producing:
                    return timed(bh.publish_packets, sink, self.packets)
            finally:
                bh.delete_topic_names(BOOTSTRAP, routes.every_topic)
        ensure_topics(KafkaClientConfig(BOOTSTRAP), dict.fromkeys(routes.topics, bh.PARTITIONS))
        with making:
            producer = Producer({**PRODUCER_DEFAULTS, **self.settings,
                                 "bootstrap.servers": BOOTSTRAP})
            for topic in routes.topics:     # connected, producer id and leaders known
                producer.produce(topic, b"warm-up", partition=0)
            producer.flush(30)
        renamed = dict(zip(Routes.by_category(f"{self.prefix}values.").topics, routes.topics))
        values = [(renamed[t], p, v, n) for t, p, v, n in self.values]
        try:
            with producing:
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


def timed(function, *args) -> tuple[float, float, float, float]:
    """Seconds `function(*args)` took, and the CPU seconds of this process, of its librdkafka
    threads (the producer in use lives on past the call) and of the broker meanwhile."""
    broker = broker_pid()
    settle(broker)
    broker_cpu = process_cpu(broker)
    start, cpu, librdkafka = time.perf_counter(), time.process_time(), librdkafka_cpu()
    function(*args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # a thread that ended meanwhile (an earlier producer's) did no work here worth counting
    return seconds, cpu, sum(used - librdkafka.get(thread, 0.0)
                             for thread, used in librdkafka_cpu().items()), \
        process_cpu(broker) - broker_cpu


def settle(pid: int, quiet: float = 0.1, window: float = 0.2, limit: float = 10.0) -> None:
    """Wait until process `pid` uses under `quiet` of a CPU over `window` seconds (at most
    `limit` seconds): the broker deletes the topics of the round before in the background, and
    that work would otherwise land in whichever round comes next."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        used = process_cpu(pid)
        time.sleep(window)
        if process_cpu(pid) - used < quiet * window:
            return


def broker_pid() -> int:
    """The single-node broker's pid, from the pid file scripts/kafka.sh keeps."""
    state = Path(os.environ.get("FEEDHANDLER_KAFKA_STATE", "/tmp/feedhandler-kafka"))
    try:
        return int((state / "single" / "kafka.pid").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"no single-node broker's pid in {state}/single (start it: "
                         "scripts/kafka.sh start)") from None


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
    parser.add_argument("--split-cores", nargs=2, type=int, metavar=("KAFKA_CPU", "OWN_CPU"),
                        help="the broker and librdkafka on KAFKA_CPU, the producing side's own "
                             "threads and the simulator on OWN_CPU")
    parser.add_argument("-X", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="a librdkafka setting for both sides")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args()
    if not all("=" in item for item in args.settings):
        parser.error("-X takes KEY=VALUE")
    split = CoreSplit.from_args(args.split_cores)
    if split is not None:
        split.pin_broker()
    try:
        figures = measure_formats(args, split)
    finally:
        if split is not None:
            split.restore_broker()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


def measure_formats(args, split: CoreSplit | None) -> dict:
    prefix = f"bench-ceiling-{int(time.time())}."
    figures = {}
    for value_format in args.formats:
        pairs = Pairs(value_format, prefix, split,
                      dict(item.split("=", 1) for item in args.settings))
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
                                 "ceiling_librdkafka_cpu_s": [c[2] for _, c in seconds],
                                 "handler_broker_cpu_s": [h[3] for h, _ in seconds],
                                 "ceiling_broker_cpu_s": [c[3] for _, c in seconds]}
        figure = figures[value_format]
        print(f"{value_format:8} handler {spread(handler)} M/s  ceiling {spread(ceiling)} M/s  "
              f"handler/ceiling {spread(figure['ratio'])}  CPU s handler "
              f"{spread(figure['handler_cpu_s'])} ceiling {spread(figure['ceiling_cpu_s'])}, "
              f"of which librdkafka {spread(figure['handler_librdkafka_cpu_s'])} / "
              f"{spread(figure['ceiling_librdkafka_cpu_s'])}; broker "
              f"{spread(figure['handler_broker_cpu_s'])} / "
              f"{spread(figure['ceiling_broker_cpu_s'])}", flush=True)
        if alone:
            figure["without_kafka_mps"] = [pairs.ticks / a[0] / 1e6 for a in alone]
            figure["without_kafka_cpu_s"] = [a[1] for a in alone]
            print(f"{value_format:8} without Kafka {spread(figure['without_kafka_mps'])} M/s  "
                  f"CPU s {spread(figure['without_kafka_cpu_s'])}", flush=True)
    return figures


if __name__ == "__main__":
    main()

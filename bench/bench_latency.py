"""Frame-to-ack latency of the handler next to the floor Kafka itself sets, in the same run.

For each feed rate and linger.ms: the simulator (its own process) serves a session paced at
the rate in frames of FRAME_MESSAGES messages, and

- the handler (struct format, decoding where its profile says: on 2 workers or on the
  publisher, in this process, with the GIL switch interval `feedhandler run` sets for the
  profile) reads, decodes and publishes it; its per-stage latency histograms
  (feedhandler.ops.latency) give the figures;
- the floor: the same session client reads the same paced feed, and a plain confluent-kafka
  producer (the handler's producer defaults: acks=all, idempotence, lz4; the same linger.ms)
  sends ready-made records of the same messages (the ITCH message as value, the symbol as key,
  the handler's topics by category, 6 partitions each) at the frames' pace, a delivery
  callback on each frame's last record, delivery reports served by a thread blocked in
  poll(). Frame-to-ack is measured from the socket read, as the handler's is.

Handler and floor take turns, ROUNDS times per setting after an unmeasured warm-up pair; the
table gives medians over rounds with their ranges, and the ratio handler / floor per round.

The handler's own part (receipt to the produce call) has a floor of its own on this machine: a
read passes from the reader to a pool worker to the publisher (the latency profile: from the
reader to the publisher), threads of one process on two cores shared with the broker and the
simulator. The `hand-off` floor measures it in the same round: the plain producer's run again,
with the handler's structure around the same produce calls: the reader submits each read to a
pool of 2 workers that do nothing with it (or, as the latency profile, queues it straight to
the publisher), and a publisher thread takes them in order and produces the frames' ready-made
records (same GIL switch interval as the handler's profile); receipt to produce calls done,
p50 and p99. Its frames count as acknowledged as the handler's do (every record up to the
frame): what a handler of this structure could reach with nothing of its own to do.

    PYTHONPATH=$PWD python3 bench/bench_latency.py [--rates 100000 500000]
        [--linger 0 1 5 20] [--seconds 4] [--rounds 3] [--profiles throughput latency]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import queue
import statistics
import subprocess
import tempfile
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from confluent_kafka import Producer  # noqa: E402

from bench_handler import delete_topic_names, free_port  # noqa: E402
from feedhandler.exchange import orderflow  # noqa: E402
from feedhandler.kafka.config import PRODUCER_DEFAULTS, KafkaClientConfig  # noqa: E402
from feedhandler.kafka.routing import Routes  # noqa: E402
from feedhandler.kafka.topics import ensure_topics  # noqa: E402
from feedhandler.ops.latency import LatencyHistogram, StageLatencies  # noqa: E402
from feedhandler.ops.threads import borrowed_thread  # noqa: E402
from feedhandler.pipeline.handler import Handler, HandlerConfig  # noqa: E402
from feedhandler.pipeline.profiles import profile_settings  # noqa: E402
from feedhandler.session import SessionClient  # noqa: E402
from feedhandler.session.source import MAX_BATCH  # noqa: E402
from streams import split_block  # noqa: E402

BOOTSTRAP = "127.0.0.1:19092"
FRAME_MESSAGES = 100
PARTITIONS = 6
SYMBOLS = 500
JOIN_LEAD = 1.5         # seconds of the session that pass before the login, about
FLOOR_MESSAGES = 1_000_000
RUN_IDS = iter(range(1_000_000))
# the table's columns: figure -> heading (frame-to-ack unless said)
COLUMNS = {
    "floor_p50": "floor p50", "p50": "handler p50", "ratio_p50": "ratio",
    "floor_p99": "floor p99", "p99": "handler p99", "ratio_p99": "ratio",
    "structure_p50": "hand-off floor p50", "structure_ratio_p50": "ratio",
    "structure_p99": "hand-off floor p99", "structure_ratio_p99": "ratio",
    "produced_p50": "own part p50", "handoff_p50": "hand-off own part p50",
    "produced_p99": "own part p99", "handoff_p99": "hand-off own part p99",
    "decoded_p99": "rcpt->decoded p99", "kafka_p50": "produced->ack p50",
    "kafka_p99": "produced->ack p99",
    "ticks_per_s": "k ticks/s", "floor_ticks_per_s": "floor k ticks/s",
}
# --profile, and the latency profile less one of its changes at a time (what each is worth)
VARIANTS = {
    "throughput": ("throughput", {}),
    "latency": ("latency", {}),
    # the same records through confluent_kafka's produce_batch instead of the ProducerLink
    "latency-produce-batch": ("latency", {"producer_link": "off"}),
    # the latency profile with its reads decoded on a pool of 2 as the throughput profile's
    "latency-pool": ("latency", {"decode": "pool"}),
}


class Structure(NamedTuple):
    """What the floors copy of a variant: the frames it takes per socket read (0: the
    source's default), and for the hand-off floor its GIL switch interval and whether its
    reads reach the publisher through a pool."""

    read_frames: int
    gil_switch_interval: float
    decode: str

    @classmethod
    def of(cls, variant: str) -> Structure:
        profile, changes = VARIANTS[variant]
        settings = profile_settings(profile, {})
        pipeline = {**settings.pipeline, **changes}
        return cls(pipeline["read_frames"], settings.gil_switch_interval, pipeline["decode"])


@contextlib.contextmanager
def paced_feed(session: Path, messages: int, rate: int, sequence: int = 0):
    """The session client (a frame source) of a simulator replaying `messages` of a session
    file at `rate` a second in frames of FRAME_MESSAGES (a replay, not synthetic data:
    generating 500 k messages a second live takes more than this machine has beside the
    handler and the broker). Its pacing clock starts as it starts serving, before the login:
    the client joins from then on (sequence 0), not with a burst of what it missed (sequence
    1, as bench_handler's test_latency_paced does)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "feedhandler", "simulate", "--listen",
                                f"127.0.0.1:{port}", "--replay", str(session), "--count",
                                str(messages), "--rate", str(rate), "--messages-per-packet",
                                str(FRAME_MESSAGES), "--quiet"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = SessionClient("127.0.0.1", port, username="feed", password="feed",
                                       sequence=sequence)
                client.open()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        yield client
    finally:
        process.kill()
        process.wait()


def run_handler(prefix: str, feed, linger: int | None, variant: str, partitions: int,
                realtime_priority: int) -> tuple[StageLatencies, float]:
    """The handler over the paced feed: its stage latencies and ticks/s."""
    routes = Routes.by_category(f"{prefix}{next(RUN_IDS)}.")
    profile, changes = VARIANTS[variant]
    settings = profile_settings(profile, {} if linger is None else {"linger.ms": str(linger)})
    config = HandlerConfig(BOOTSTRAP, value_format="struct", routes=routes,
                           partitions=partitions, producer_overrides=settings.producer,
                           realtime_priority=realtime_priority,
                           **{"workers": 2, **settings.pipeline, **changes})
    handler = Handler(config)
    switch_interval = sys.getswitchinterval()
    # as `feedhandler run` sets them: the switch interval, and what was made before frozen
    sys.setswitchinterval(settings.gil_switch_interval)
    gc.freeze()
    try:
        with feed as frames:
            started = time.monotonic()
            account = handler.run(frames)
            elapsed = time.monotonic() - started
    finally:
        gc.unfreeze()
        sys.setswitchinterval(switch_interval)
        delete_topic_names(BOOTSTRAP, routes.every_topic)
    assert account.lost == 0, account
    return handler.latencies, account.delivered / elapsed


def floor_records(data: bytes, routes: Routes) -> list[list[tuple[str, bytes, bytes]]]:
    """(topic, key, value) of every message of a session file's first FLOOR_MESSAGES, per
    frame (the floor sends them round and round)."""
    records = [(routes.topic_of_type[chr(m[0])], b"S%d" % (int.from_bytes(m[1:3], "big")
                                                           % SYMBOLS), m)
               for m in split_block(data)[:FLOOR_MESSAGES]]
    return [records[i:i + FRAME_MESSAGES] for i in range(0, len(records), FRAME_MESSAGES)]


class EveryRecordAcks:
    """The handler's definition of a frame acknowledged, for the floor: every record of the
    frame and of every frame before it acknowledged (delivery reports on every record; called
    on the one thread that serves them)."""

    def __init__(self, histogram: LatencyHistogram):
        self.histogram = histogram
        self.remaining: list[int] = []      # per frame: records not yet acknowledged
        self.received: list[int] = []
        self.next_frame = 0                 # oldest frame not yet counted

    def frame(self, records: int, received: int) -> int:
        self.remaining.append(records)
        self.received.append(received)
        return len(self.remaining) - 1

    def callback(self, frame: int):
        def acked(error, _message):
            assert error is None, error
            self.remaining[frame] -= 1
            now = time.monotonic_ns()
            while self.next_frame < len(self.remaining) and not self.remaining[self.next_frame]:
                self.histogram.record(now - self.received[self.next_frame])
                self.next_frame += 1
        return acked


def through_handoffs(batches, send, structure: Structure) -> None:
    """`send(batch, receipt ns)` for every read, on a publisher thread, each read having gone
    the handler's way there: through a 2-worker pool that does nothing with it, or with
    `decode="publisher"` straight from the reader."""
    pending: queue.Queue = queue.Queue(8)

    def publish():
        while (item := pending.get()) is not None:
            future, batch, received = item
            if future is not None:
                future.result()
            send(batch, received)
    publisher = threading.Thread(target=publish)
    saved = sys.getswitchinterval()
    sys.setswitchinterval(structure.gil_switch_interval)
    try:
        with ThreadPoolExecutor(2) as pool:
            publisher.start()
            try:
                for batch in batches:
                    received = time.monotonic_ns()
                    pending.put((pool.submit(len, batch) if structure.decode == "pool"
                                 else None, batch, received))
            finally:
                pending.put(None)
                publisher.join()
    finally:
        sys.setswitchinterval(saved)


def run_floor(prefix: str, feed, linger: int, frames, every_record: bool, partitions: int,
              realtime_priority: int, structure: Structure, handoffs: bool = False,
              ) -> tuple[LatencyHistogram, LatencyHistogram, float]:
    """The plain producer at the paced feed's frames: frame-to-ack from its socket read, of
    each frame's last record (the issue's floor), or with `every_record` of every record up to
    the frame (the handler's definition); receipt to its produce calls done; and the records
    it sent per second (below the feed's rate, it fell behind: then it is no floor). It reads
    as many frames at a time as the variant's handler (`structure`). With `handoffs` the reads
    go through the handler's hand-offs first (`through_handoffs`): the floor of the handler's
    own part. With `realtime_priority` its
    threads (not librdkafka's) are scheduled SCHED_FIFO as the handler's are."""
    routes = Routes.by_category(f"{prefix}{next(RUN_IDS)}.")
    ensure_topics(KafkaClientConfig(BOOTSTRAP), dict.fromkeys(routes.topics, partitions))
    renamed = {old: new for old, new in zip(Routes.by_category("floor.").topics,
                                            routes.topics)}
    producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": BOOTSTRAP,
                         "linger.ms": linger, "delivery.report.only.error": False})
    for topic in routes.topics:         # connected, producer id and leaders known
        producer.produce(topic, b"warm-up")
    producer.flush(30)
    acknowledged = LatencyHistogram()
    every = EveryRecordAcks(acknowledged)
    done = threading.Event()

    def serve_reports():
        while not done.is_set():
            producer.poll(0.1)

    def last_record(received: int):
        def acked(error, _message):
            assert error is None, error
            acknowledged.record(time.monotonic_ns() - received)
        return acked
    server = threading.Thread(target=serve_reports, daemon=True)
    produced = LatencyHistogram()
    frame_number = 0

    def produce(topic: str, value: bytes, key: bytes, on_delivery=None) -> None:
        """A full queue (the floor behind the feed, at 500 k/s) waits for room, as the
        handler's backpressure does, rather than failing the run."""
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.001)

    def send(batch, received: int) -> None:
        nonlocal frame_number
        for _ in batch:
            records = frames[frame_number % len(frames)]
            frame_number += 1
            if every_record:
                acked = every.callback(every.frame(len(records), received))
                for topic, key, value in records:
                    produce(renamed[topic], value, key, acked)
                continue
            for topic, key, value in records[:-1]:
                produce(renamed[topic], value, key)
            topic, key, value = records[-1]
            produce(renamed[topic], value, key, last_record(received))
        produced.record(time.monotonic_ns() - received)
    try:
        # threads started inside (the report server, the hand-offs') inherit the scheduling
        with borrowed_thread("floor-reader", "reader", None, realtime_priority), \
                feed as source:
            server.start()
            batches = source.batches(structure.read_frames or MAX_BATCH)
            started = time.monotonic()
            if not handoffs:
                for batch in batches:
                    send(batch, time.monotonic_ns())
            else:
                through_handoffs(batches, send, structure)
        assert producer.flush(60) == 0
        elapsed = time.monotonic() - started
    finally:
        done.set()
        if server.ident is not None:
            server.join()
        delete_topic_names(BOOTSTRAP, routes.topics)
    records = sum(len(frames[n % len(frames)]) for n in range(frame_number))
    return acknowledged, produced, records / elapsed


def linger_setting(text: str) -> int | None:
    return None if text == "profile" else int(text)


def ms(histogram: LatencyHistogram, percent: float) -> float:
    return histogram.percentiles_ns([percent])[0] / 1e6


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--linger", type=linger_setting, nargs="+", default=[0, 1, 5, 20],
                        help="linger.ms values, or `profile`: the profile's own (the floor "
                             "then takes the same)")
    parser.add_argument("--profiles", nargs="+", default=["throughput"], choices=VARIANTS)
    parser.add_argument("--seconds", type=float, default=4.0, help="feed length per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--join-from-start", action="store_true",
                        help="log in for the whole session (sequence 1): what was published "
                             "before the login comes at once, as in test_latency_paced")
    parser.add_argument("--floor", choices=["last-record", "every-record"],
                        default="last-record",
                        help="the floor's frame acknowledged: its last record's delivery "
                             "report (default, the issue's floor), or every record up to it "
                             "(the handler's definition; a delivery report per record)")
    parser.add_argument("--partitions", type=int, default=PARTITIONS,
                        help="partitions per topic, handler and floor (a frame's records "
                             "spread over all of them; librdkafka sends one produce request "
                             "per partition)")
    parser.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                        help="the handler's `--realtime-priority`; the floors' threads (not "
                             "librdkafka's) are scheduled the same way")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    args = parser.parse_args()
    prefix = f"benchlat{int(time.time())}."
    rows = []
    workdir = tempfile.TemporaryDirectory(prefix="bench_latency.")
    session = Path(workdir.name) / "session.itch"
    for rate in args.rates:
        messages = int(rate * (args.seconds + JOIN_LEAD))
        data = orderflow.generate(messages, symbols=SYMBOLS, seed=0).data
        session.write_bytes(data)
        frames = floor_records(data, Routes.by_category("floor."))
        del data
        for linger in args.linger:
            for profile in args.profiles:
                figures = {key: [] for key in COLUMNS}
                for round_number in range(args.rounds + 1):     # the first is a warm-up
                    sequence = 1 if args.join_from_start else 0
                    floor_linger = linger if linger is not None else int(profile_settings(
                        VARIANTS[profile][0], {}).producer.get("linger.ms",
                                                               PRODUCER_DEFAULTS["linger.ms"]))
                    floor, _, floor_ticks_per_s = run_floor(
                        prefix, paced_feed(session, messages, rate, sequence), floor_linger,
                        frames, args.floor == "every-record", args.partitions,
                        args.realtime_priority, Structure.of(profile))
                    latencies, ticks_per_s = run_handler(
                        prefix, paced_feed(session, messages, rate, sequence), linger,
                        profile, args.partitions, args.realtime_priority)
                    structure, handoff, _ = run_floor(
                        prefix, paced_feed(session, messages, rate, sequence), floor_linger,
                        frames, True, args.partitions, args.realtime_priority,
                        Structure.of(profile), handoffs=True)
                    if not round_number:
                        continue
                    if not floor.total or not latencies.acknowledged.total or \
                            not structure.total:
                        print(f"rate {rate} linger {linger} {profile}: a run got no frames "
                              "(joined after the session ended); round left out", flush=True)
                        continue
                    handler = latencies.acknowledged
                    values = {"floor_p50": ms(floor, 50), "floor_p99": ms(floor, 99),
                              "p50": ms(handler, 50), "p99": ms(handler, 99),
                              "produced_p50": ms(latencies.produced, 50),
                              "produced_p99": ms(latencies.produced, 99),
                              "handoff_p50": ms(handoff, 50), "handoff_p99": ms(handoff, 99),
                              "structure_p50": ms(structure, 50),
                              "structure_p99": ms(structure, 99),
                              "decoded_p99": ms(latencies.decoded, 99),
                              "kafka_p50": ms(latencies.kafka, 50),
                              "kafka_p99": ms(latencies.kafka, 99),
                              "ticks_per_s": ticks_per_s / 1e3,
                              "floor_ticks_per_s": floor_ticks_per_s / 1e3}
                    for percentile in ("p50", "p99"):
                        values[f"ratio_{percentile}"] = \
                            values[percentile] / values[f"floor_{percentile}"]
                        values[f"structure_ratio_{percentile}"] = \
                            values[percentile] / values[f"structure_{percentile}"]
                    for key, value in values.items():
                        figures[key].append(value)
                    print(json.dumps({"rate": rate, "linger": linger, "profile": profile,
                                      "round": round_number,
                                      **{k: round(v, 3) for k, v in values.items()},
                                      "stages": latencies.summary_ms()}), flush=True)
                rows.append((rate, linger, profile, figures))
    print()
    print("medians of rounds (range); ms unless said; ratio = handler / floor, same round")
    print(" | ".join(["rate", "linger", "profile", *COLUMNS.values()]))
    for rate, linger, profile, figures in rows:
        print(" | ".join([f"{rate // 1000}k", "profile's" if linger is None else str(linger),
                          profile] + [spread(figures[key]) for key in COLUMNS]))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"rate": r, "linger": l, "profile": p, **f} for r, l, p, f in rows], indent=1))


if __name__ == "__main__":
    main()

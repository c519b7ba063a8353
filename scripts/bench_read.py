"""Read-back rates of feedhandler.consume.read per value format, on the broker of
scripts/kafka.sh: a seeded simulator session is published once per format (topics of their
own, deleted afterwards), then read back to the end, as arrays and (if pandas is installed) as
DataFrames. Prints one JSON line per format and output.

Usage: PYTHONPATH=$PWD python3 scripts/bench_read.py [--count N] [--runs R] [--bootstrap B]
"""

import argparse
import json
import os
import statistics
import time

from confluent_kafka.admin import AdminClient

from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.kafka import consume
from feedhandler.kafka.routing import VALUE_FORMATS, Routes
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.session import SessionClient


def publish(bootstrap: str, prefix: str, value_format: str, count: int) -> Routes:
    simulator = Simulator(SimulatorConfig(port=0, count=count, symbols=100, seed=7,
                                          status_interval=None)).start()
    try:
        routes = Routes.by_category(prefix)
        client = SessionClient("127.0.0.1", simulator.port, username="feed", password="feed")
        Handler(HandlerConfig(bootstrap, value_format=value_format, workers=2, routes=routes,
                              partitions=6, flush_timeout=120)).run(client.frame_batches())
        return routes
    finally:
        simulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    try:
        import pandas  # noqa: F401
        outputs = ["arrays", "pandas"]
    except ImportError:
        outputs = ["arrays"]
    for value_format in VALUE_FORMATS:
        prefix = f"benchread{os.getpid()}.{value_format}."
        routes = publish(args.bootstrap, prefix, value_format, args.count)
        try:
            for output in outputs:
                seconds, records, ticks = [], 0, 0
                for _ in range(args.runs):
                    started = time.perf_counter()
                    reader = consume.read(args.bootstrap, routes.topics, output=output)
                    for _chunk in reader:
                        pass
                    seconds.append(time.perf_counter() - started)
                    records, ticks = reader.records, reader.ticks
                median = statistics.median(seconds)
                print(json.dumps({"format": value_format, "output": output, "records": records,
                                  "ticks": ticks, "records_per_s": round(records / median),
                                  "ticks_per_s": round(ticks / median),
                                  "seconds": [round(s, 3) for s in seconds]}), flush=True)
        finally:
            topics = [*routes.topics, routes.dead_letter, routes.checkpoint, routes.schema]
            for future in admin.delete_topics(topics).values():
                future.result()


if __name__ == "__main__":
    main()

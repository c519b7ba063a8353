"""Decode rate of the Java example reader (docs/examples/java/TickReader.java, `--rate`) on a live
topic, next to Python's feedhandler.consume.read on the same topics in the same run.

A seeded simulator session is published once per format (as scripts/bench_read.py does: topics
of their own, 6 partitions, deleted afterwards); then, per run, TickReader reads every topic to
its end and counts decoded ticks, and consume.read (arrays) does the same. Both clocks start
before the reader's Kafka consumer is made and include reading the schema topic; the JVM's
start and the compilation of TickReader (done once, with javac) are outside TickReader's clock
and shown as `java_wall_s`. kafka-clients takes seconds to start in a fresh JVM (class
loading, log4j's set-up), so the Java rate is also given from its first data record on. Prints one JSON line per format: medians and ranges over the runs.

Usage: PYTHONPATH=$PWD python3 scripts/bench_java_reader.py [--count N] [--runs R]
       [--formats struct,batched] [--bootstrap B]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from bench_read import publish
from feedhandler.kafka import consume

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "java" / "TickReader.java"


def kafka_libs() -> str:
    return subprocess.run(["bash", str(ROOT / "scripts" / "kafka.sh"), "libs"], check=True,
                          capture_output=True, text=True).stdout.strip()


def java_rate(classes: str, libs: str, bootstrap: str, topics: list[str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run(["java", "-cp", f"{classes}{os.pathsep}{libs}/*", "TickReader",
                             "--rate", "--bootstrap", bootstrap, *topics],
                            capture_output=True, text=True, check=True, timeout=600)
    figures = json.loads(result.stdout.splitlines()[-1])
    figures["wall"] = time.perf_counter() - started
    return figures


def python_rate(bootstrap: str, topics: list[str]) -> dict:
    started = time.perf_counter()
    reader = consume.read(bootstrap, topics)
    for _chunk in reader:
        pass
    return {"records": reader.records, "ticks": reader.ticks,
            "seconds": time.perf_counter() - started}


def summary(runs: list[dict], key: str, seconds: str = "seconds") -> dict:
    rates = [run[key] / run[seconds] for run in runs]
    return {"median": round(statistics.median(rates)), "min": round(min(rates)),
            "max": round(max(rates))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="struct,batched")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args()
    libs = kafka_libs()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    with tempfile.TemporaryDirectory() as classes:
        subprocess.run(["javac", "-d", classes, "-cp", f"{libs}/*", str(EXAMPLE)], check=True)
        for value_format in args.formats.split(","):
            prefix = f"benchjava{os.getpid()}.{value_format}."
            routes = publish(args.bootstrap, prefix, value_format, args.count)
            try:
                java_runs, python_runs = [], []
                for _ in range(args.runs):      # interleaved: both see the same machine load
                    java_runs.append(java_rate(classes, libs, args.bootstrap, routes.topics))
                    python_runs.append(python_rate(args.bootstrap, routes.topics))
                ticks = {run["ticks"] for run in java_runs + python_runs}
                assert ticks == {args.count}, f"ticks read: {ticks}, published {args.count}"
                print(json.dumps({
                    "format": value_format, "ticks": args.count,
                    "records": java_runs[0]["records"],
                    "java_records_per_s": summary(java_runs, "records"),
                    "java_ticks_per_s": summary(java_runs, "ticks"),
                    "java_ticks_per_s_from_first_record": summary(java_runs, "ticks",
                                                                  "reading_seconds"),
                    "python_records_per_s": summary(python_runs, "records"),
                    "python_ticks_per_s": summary(python_runs, "ticks"),
                    "java_seconds": [round(r["seconds"], 3) for r in java_runs],
                    "java_wall_s": [round(r["wall"], 3) for r in java_runs],
                    "python_seconds": [round(r["seconds"], 3) for r in python_runs]}),
                    flush=True)
            finally:
                for future in admin.delete_topics(routes.every_topic).values():
                    future.result()


if __name__ == "__main__":
    main()

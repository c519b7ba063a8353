"""`feedhandler tail` as a user runs it: the real command against the real broker, after (and
while) a real `feedhandler run` publishes a simulator session."""

import json
import subprocess
import sys
import time

import pytest

from feedhandler.exchange import orderflow
from feedhandler.kafka.contract import TYPE_NAMES
from feedhandler.wire import itch
from streams import running_simulator
from test_handler import ROOT, run_cli

COUNT = 3000
SYMBOLS = 10
SEED = 31
SOURCE = orderflow.generate(COUNT, symbols=SYMBOLS, seed=SEED)


def tail(*arguments, timeout=60):
    result = subprocess.run([sys.executable, "-m", "feedhandler", "tail", *arguments], cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


@pytest.mark.parametrize("arguments, complaint", [
    (["--from", "yesterday"], "--from: expected beginning, end, seq:N or a time"),
    (["--from", "seq:x"], "seq:N needs a sequence number"),
    (["--type", "A,Z"], "--type: not ITCH 5.0 message types: Z"),
    (["--count", "0"], "--count must be a whole number"),
    (["--format", "avro"], "--format must be one of"),
    (["--trade-date", "15/03/2024"], "--trade-date must be YYYY-MM-DD"),
])
def test_bad_arguments_are_one_line_and_exit_2(arguments, complaint):
    code, out, err = tail(*arguments)
    assert code == 2 and out == [] and len(err) == 1 and complaint in err[0], err


def test_unreachable_kafka_is_one_line_and_exit_3():
    started = time.monotonic()
    code, _, err = tail("--bootstrap-servers", "127.0.0.1:1", "some.topic")
    assert code == 3 and len(err) == 1 and "did not answer" in err[0], err
    assert time.monotonic() - started < 20


@pytest.mark.kafka
def test_a_topic_that_is_not_there_is_one_line_and_exit_2(kafka, topic_prefix):
    code, _, err = tail("--bootstrap-servers", kafka, topic_prefix + "orders")
    assert code == 2 and len(err) == 1 and "no schema topic" in err[0], err
    code, _, err = tail("--bootstrap-servers", kafka, "--format", "struct",
                        topic_prefix + "orders")
    assert code == 2 and len(err) == 1 and "no such topic" in err[0], err


@pytest.fixture(scope="module")
def simulator():
    with running_simulator(count=COUNT, symbols=SYMBOLS, seed=SEED) as sim:
        yield sim


def run_handler(kafka, prefix, simulator, value_format):
    handler = run_cli("run", "--connect", f"127.0.0.1:{simulator.port}", "--bootstrap-servers",
                      kafka, "--topic-prefix", prefix, "--partitions", "3", "--format",
                      value_format, "--quiet")
    _, stderr = handler.communicate(timeout=120)
    assert handler.returncode == 0, stderr


@pytest.mark.kafka
@pytest.mark.parametrize("value_format", ["struct", "batched", "arrow"])
def test_json_lines_give_every_tick_in_feed_order(kafka, topic_prefix, simulator, value_format):
    run_handler(kafka, topic_prefix, simulator, value_format)
    code, out, err = tail("--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--from", "beginning", "--no-follow", "--json")
    assert code == 0, err
    ticks = [json.loads(line) for line in out]
    assert [t["sequence"] for t in ticks] == list(range(1, COUNT + 1))
    parsed = itch.parse(SOURCE.data)
    adds = [t for t in ticks if t["type"] == "A"]
    assert [a["price"] for a in adds] == (parsed["A"]["price"] / 10_000).tolist()
    assert [a["stock"] for a in adds] == [s.decode().rstrip() for s in parsed["A"]["stock"]]
    assert all(a["symbol"] == a["stock"] for a in adds)


@pytest.mark.kafka
def test_text_lines_filtered_by_symbol_and_type(kafka, topic_prefix, simulator):
    run_handler(kafka, topic_prefix, simulator, "raw")
    symbol = itch.parse(SOURCE.data)["A"]["stock"][0].decode().rstrip()
    code, out, err = tail("--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--from", "beginning", "--symbol", symbol, "--type", "A,E",
                          "--count", "8")
    assert code == 0 and len(out) == 8, err
    for line in out:
        fields = line.split("  ")
        assert fields[3] == symbol, line
        assert fields[2] in (f"A {TYPE_NAMES['A']}", f"E {TYPE_NAMES['E']}"), line
        assert fields[0][2] == ":" and len(fields[0]) == len("09:30:00.000000000"), line
        if fields[2].startswith("A"):
            assert fields[4] in ("buy", "sell") and " shares" in line, line
            price = line.split("@ ")[1].split()[0]
            assert len(price.split(".")[1]) == 4, line


@pytest.mark.kafka
def test_follow_prints_ticks_published_after_it_started(kafka, topic_prefix, simulator):
    # the topics and their schema exist before the tail starts from their end
    run_handler(kafka, topic_prefix, simulator, "struct")
    follower = subprocess.Popen(
        [sys.executable, "-m", "feedhandler", "tail", "--bootstrap-servers", kafka,
         "--topic-prefix", topic_prefix, "--from", "end", "--json", "--count", str(COUNT)],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)       # the tail is at the end before the second session is published
    try:
        with running_simulator(count=COUNT, symbols=SYMBOLS, seed=SEED,
                               session=b"SECOND0001") as second:
            run_handler(kafka, topic_prefix, second, "struct")
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    ticks = [json.loads(line) for line in out.splitlines()]
    assert [t["sequence"] for t in ticks] == list(range(1, COUNT + 1))
    assert {t["session"] for t in ticks} == {"SECOND0001"}

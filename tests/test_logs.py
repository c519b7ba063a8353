"""Logs of the command line (feedhandler.cli.logs): text and JSON formats, librdkafka's own
lines through Python logging, status lines with a timestamp and running totals."""

import io
import json
import logging
import re
import socket
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import Producer

from feedhandler.cli import logs
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.cli.run import StatusPrinter
from feedhandler.exchange.server import Simulator, SimulatorConfig
from test_handler import run_cli

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def captured(formatter: logging.Formatter, name: str = "test.logs"):
    """A logger of its own writing through `formatter` into a buffer (the process's logging
    is left as it is)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_records_are_one_object_a_line_with_fields_and_the_exception():
    logger, stream = captured(logs.JsonFormatter())
    logger.info("produced %d", 5, extra={"topic": "itch.orders", "partition": 2})
    try:
        raise ValueError("bad frame\nsecond line")
    except ValueError:
        logger.exception("publisher failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert ISO_UTC.fullmatch(first["timestamp"])
    assert first | {"timestamp": None} == {
        "timestamp": None, "level": "info", "logger": "test.logs", "thread": "MainThread",
        "message": "produced 5", "topic": "itch.orders", "partition": 2}
    assert second["level"] == "error" and second["message"] == "publisher failed"
    assert second["exception"] == "ValueError: bad frame second line"
    assert "Traceback" in second["traceback"]


@pytest.mark.parametrize("tracebacks", [False, True])
def test_text_records_keep_an_exception_on_their_line_unless_debugging(tracebacks):
    logger, stream = captured(logs.TextFormatter(tracebacks=tracebacks))
    try:
        raise ValueError("bad frame")
    except ValueError:
        logger.exception("publisher failed", extra={"frame": 7})
    text = stream.getvalue()
    assert re.match(rf"{ISO_UTC.pattern} ERROR test.logs: publisher failed frame=7", text)
    assert ("Traceback" in text) is tracebacks
    if not tracebacks:
        assert text.splitlines() == [text.strip()] and text.strip().endswith(
            "[ValueError: bad frame]")


def test_setup_replaces_its_own_handler_and_shows_status_and_account_at_every_level():
    root = logging.getLogger()
    before = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logs.setup("info", "text", io.StringIO())
        handler = logs.setup("error", "json", stream)
        assert [h for h in root.handlers if isinstance(h, logs.CliHandler)] == [handler]
        logging.getLogger("feedhandler.run").warning("hidden")
        logging.getLogger(logs.ACCOUNT_LOGGER).info("final account", extra={"lost": 0})
        logging.getLogger(logs.STATUS_LOGGER).info("status", extra={"lost": 0})
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["message"] for r in records] == ["final account", "status"]


def test_librdkafka_lines_become_json_records_of_the_librdkafka_logger():
    """A producer at a port nobody listens on: librdkafka's own "Connect ... failed" line comes
    through Python logging, as one JSON object with its facility and client name."""
    logger, stream = captured(logs.JsonFormatter(), "test.librdkafka")
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}",
                         "logger": logs.LibrdkafkaLog(logger),
                         "reconnect.backoff.ms": 50, "error_cb": lambda error: None})
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        producer.poll(0.1)          # librdkafka's log lines are served by poll()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records, "no librdkafka log line within 10 s"
    record = records[0]
    assert record["logger"] == "test.librdkafka" and record["level"] == "error"
    assert record["facility"] == "FAIL" and record["client"].startswith("rdkafka#producer")
    assert f"127.0.0.1:{port}" in record["message"] and "Connection refused" in record["message"]


class FakeHandler:
    """What StatusPrinter reads of a Handler, with figures a test moves."""

    def __init__(self):
        self.account = SimpleNamespace(messages=0, frames=0, quarantined=0)
        self.acks = SimpleNamespace(ticks=0, oldest_age_ms=lambda: 1.5)
        self.sink = SimpleNamespace(ledger=SimpleNamespace(ticks=0, errors=SimpleNamespace(
            units=2)))

    def queue_depth(self):
        return 1

    def outstanding(self):
        return 3


def printed_status(as_json: bool, as_log: bool, capsys):
    handler = FakeHandler()
    source = SimpleNamespace(tracker=SimpleNamespace(gaps=[(5, 6)], missing=2))
    printer = StatusPrinter(handler, source, as_json, as_log)
    printer.start()
    for step in range(1, 13):           # about 1.2 s: one status line
        handler.account.messages = handler.acks.ticks = handler.sink.ledger.ticks = step * 100
        handler.account.frames = step
        time.sleep(0.1)
    printer.done.set()
    printer.join()
    return capsys.readouterr()


def test_the_text_status_line_starts_with_its_time(capsys):
    err = printed_status(False, False, capsys).err.splitlines()
    assert err and all(re.match(rf"{ISO_UTC.pattern} in +\d", line) for line in err), err


def test_json_stats_carry_the_time_and_running_totals(capsys):
    lines = printed_status(True, False, capsys).out.splitlines()
    status = json.loads(lines[0])
    assert ISO_UTC.fullmatch(status["timestamp"])
    assert status["messages"] >= 900 and status["frames"] >= 9
    assert status["produced"] == status["delivered"] == status["messages"]
    assert status["failed"] == 2 and status["missing"] == 2 and status["lost"] == 4
    assert status["gaps"] == 1 and status["in_producer"] == 3


def test_under_json_logs_the_status_is_a_record_with_its_fields(capsys):
    logger, stream = captured(logs.JsonFormatter(), logs.STATUS_LOGGER)
    try:
        out = printed_status(False, True, capsys)
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert out.out == out.err == ""
    record = json.loads(stream.getvalue().splitlines()[0])
    assert record["message"] == "status" and record["lost"] == 4
    assert ISO_UTC.fullmatch(record["timestamp"]) and record["in_per_s"] > 0


def test_every_stderr_line_of_a_json_logged_run_is_a_json_object(kafka, topic_prefix):
    """A short session: stderr is JSON a line, and --log-level error still shows the final
    account."""
    simulator = Simulator(SimulatorConfig(port=0, count=1_000, symbols=5,
                                          status_interval=None)).start()
    try:
        handler = run_cli("run", "--connect", f"127.0.0.1:{simulator.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "1", "--log-format", "json", "--log-level", "error")
        _, stderr = handler.communicate(timeout=60)
    finally:
        simulator.stop()
    assert handler.returncode == ExitCode.OK, stderr
    records = [json.loads(line) for line in stderr.splitlines()]
    assert [r["message"] for r in records] == ["final account"]
    assert records[0]["delivered"] == 1_000 and records[0]["level"] == "info"


def test_under_json_logs_a_refusal_is_one_json_record(kafka, topic_prefix):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        handler = run_cli("run", "--listen", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
                          "--topic-prefix", topic_prefix, "--log-format", "json")
        _, stderr = handler.communicate(timeout=60)
    assert handler.returncode == ExitCode.COULD_NOT_START, stderr
    (record,) = [json.loads(line) for line in stderr.splitlines()]
    assert record["level"] == "error" and record["logger"] == "feedhandler.run"
    assert record["message"].endswith(f"127.0.0.1:{port}: Address already in use")

"""`feedhandler run` given bad input: one line on stderr, a documented exit code, no traceback,
and nothing created in Kafka. Each case runs the real command in its own process."""

import re
import signal
import socket
import subprocess
import time

import pytest
from confluent_kafka.admin import AdminClient

from faults.processes import free_port
from feedhandler.cli.exit_codes import MEANING, ExitCode
from test_handler import ROOT, final_account, run_cli

UNREACHABLE = "127.0.0.1:1"


def topics_with(kafka: str, prefix: str) -> list[str]:
    return sorted(t for t in AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10)
                  .topics if t.startswith(prefix))


def run_refused(kafka, topic_prefix, *arguments, bootstrap=None, feed=None, timeout=60):
    """Run the handler; return (exit code, stderr lines, seconds taken)."""
    feed = feed or ["--listen", f"127.0.0.1:{free_port()}"]
    started = time.monotonic()
    process = run_cli("run", *feed, "--bootstrap-servers", bootstrap or kafka,
                      "--topic-prefix", topic_prefix, "--partitions", "2", "--quiet", *arguments)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"still running after {timeout} s: {stderr[-2000:]}")
    return process.returncode, stderr.splitlines(), time.monotonic() - started


def assert_refused(kafka, topic_prefix, result, code, complaint):
    returncode, lines, _ = result
    assert returncode == code, lines[-20:]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines[-20:]
    assert lines[0].startswith("feedhandler run: ") and re.search(complaint, lines[0]), lines
    assert topics_with(kafka, topic_prefix) == []


@pytest.mark.parametrize(("arguments", "complaint"), [
    (["-X", "foo.bar=1"], "No such configuration property.*foo.bar"),
    (["-X", "linger.ms=soon"], "Invalid value"),
    (["-X", "acks=1"], "acks.*enable.idempotence"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--partitions", "0"], "--partitions must be at least 1"),
    (["--replication-factor", "-2"], "--replication-factor"),
    (["--route", "A=Bad/Topic"], "Bad/Topic.* not legal"),
    (["--route", "Z=orders"], "unknown message types"),
    (["--topic-prefix", "x" * 250], "not legal"),
], ids=["unknown-setting", "bad-value", "conflicting-settings", "no-workers", "no-partitions",
        "replication", "illegal-topic", "unknown-type", "long-topic"])
def test_bad_arguments_exit_2_before_anything_is_created(kafka, topic_prefix, arguments,
                                                        complaint):
    result = run_refused(kafka, topic_prefix, *arguments)
    assert_refused(kafka, topic_prefix, result, ExitCode.USAGE, complaint)


def test_unreachable_kafka_is_one_line_within_seconds(kafka, topic_prefix):
    result = run_refused(kafka, topic_prefix, bootstrap=UNREACHABLE)
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START,
                   "Kafka at 127.0.0.1:1 did not answer.*Connection refused")
    assert result[2] < 20


def test_security_settings_reach_the_topic_lookup(kafka, topic_prefix):
    """SASL to a plaintext listener fails for the AdminClient too: no topic made in plaintext."""
    result = run_refused(kafka, topic_prefix, "-X", "security.protocol=SASL_PLAINTEXT",
                         "-X", "sasl.mechanism=PLAIN", "-X", "sasl.username=x",
                         "-X", "sasl.password=y")
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START, "SASL")


def test_a_listen_port_in_use_exits_3(kafka, topic_prefix):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_refused(kafka, topic_prefix, feed=["--listen", f"127.0.0.1:{port}"])
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START,
                   f"127.0.0.1:{port}: Address already in use")


def test_a_refused_login_exits_3(kafka, topic_prefix):
    port = free_port()
    exchange = run_cli("simulate", "--listen", f"127.0.0.1:{port}", "--count", "1000", "--quiet")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and exchange.poll() is None
                time.sleep(0.1)
        result = run_refused(kafka, topic_prefix, "--password", "wrong",
                             feed=["--connect", f"127.0.0.1:{port}"])
    finally:
        exchange.kill()
        exchange.communicate()
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START,
                   "the feed refused the login")


def test_exit_codes_are_documented_in_help_and_readme():
    help_text, _ = run_cli("run", "--help").communicate(timeout=60)
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\s+{code.value}\s+{re.escape(MEANING[code][:30])}", help_text,
                         re.MULTILINE), code
        assert re.search(rf"^\s*- `{code.value}` ", readme, re.MULTILINE), code


@pytest.mark.parametrize(("mode", "path"), [("auto", "producer-link"), ("off", "produce-batch")])
def test_the_final_account_names_the_producer_path(kafka, topic_prefix, mode, path):
    port = free_port()
    handler = run_cli("run", "--listen", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
                      "--topic-prefix", topic_prefix, "--partitions", "1", "--json-stats",
                      "--producer-link", mode)
    deadline = time.monotonic() + 30
    while True:         # a feed that connects and hangs up at once: an empty, clean run
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            assert time.monotonic() < deadline and handler.poll() is None, "never listened"
            time.sleep(0.1)
    stdout, stderr = handler.communicate(timeout=60)
    assert handler.returncode == ExitCode.OK, stderr
    assert final_account(stdout)["producer_path"] == path
    assert re.search(rf"producer_path\s+{path}", stderr)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_startup_exits_130(kafka, topic_prefix, signal_number):
    process = run_cli("run", "--listen", f"127.0.0.1:{free_port()}", "--bootstrap-servers",
                      UNREACHABLE, "--topic-prefix", topic_prefix, "--quiet")
    time.sleep(2)           # in the reachability probe, which lasts 5 s
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert stderr.splitlines() == ["feedhandler run: interrupted before the feed was read"]


def test_an_unreachable_feed_is_one_line_and_exit_3(kafka, topic_prefix):
    """--connect to a feed that never accepts: quiet retries for --login-timeout, then one line."""
    port = free_port()
    result = run_refused(kafka, topic_prefix, "--login-timeout", "2",
                         feed=["--connect", f"127.0.0.1:{port}"], timeout=30)
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START,
                   f"no login at the feed 127.0.0.1:{port} within 2 s: .*Connection refused")
    assert result[2] < 15


def test_a_feed_that_starts_listening_late_is_waited_for(kafka, topic_prefix):
    """A feed server that is still starting (the demo's simulator preparing its session) is
    retried quietly within --login-timeout: no warning per attempt, a clean run."""
    port = free_port()
    handler = run_cli("run", "--connect", f"127.0.0.1:{port}", "--bootstrap-servers", kafka,
                      "--topic-prefix", topic_prefix, "--partitions", "1", "--json-stats",
                      "--login-timeout", "60")
    time.sleep(3)
    exchange = run_cli("simulate", "--listen", f"127.0.0.1:{port}", "--count", "1000",
                       "--quiet")
    try:
        stdout, stderr = handler.communicate(timeout=90)
    finally:
        exchange.kill()
        exchange.communicate()
    assert handler.returncode == ExitCode.OK, stderr
    assert final_account(stdout)["delivered"] == 1000
    assert "connection lost" not in stderr and "Connection refused" not in stderr, stderr

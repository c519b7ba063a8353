"""`feedhandler run --transport soupbintcp` end to end on real processes: `feedhandler simulate
--transport soupbintcp`, the handler, the shared Kafka broker. Every sequence number of a seeded
session is counted in Kafka (tests/faults/checker.py): exactly once, in per-symbol feed order,
also across link cuts (tests/faults/proxy.py) and a failover to line B."""

from __future__ import annotations

import pytest

from faults.checker import check_topics
from faults.processes import final_account, start_handler, start_simulator
from faults.proxy import TcpProxy
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.kafka.routing import Routes

pytestmark = pytest.mark.kafka

FORMAT = "batched"
COUNT = 150_000
TIMEOUT = 180.0


def serve(tmp_path, name: str = "a"):
    return start_simulator("--transport", "soupbintcp", "--count", str(COUNT), "--symbols", "40",
                           "--seed", "31", "--quiet", workdir=tmp_path / name)


def run(tmp_path, kafka: str, prefix: str, connect: str, *options: str):
    return start_handler("--transport", "soupbintcp", "--connect", connect,
                         "--bootstrap-servers", kafka, "--topic-prefix", prefix, "--format",
                         FORMAT, "--partitions", "3", "--quiet", *options,
                         workdir=tmp_path / "run")


def verify(handler, kafka: str, prefix: str):
    assert handler.returncode == ExitCode.OK, handler.tail()
    assert "Traceback" not in handler.stderr(), handler.tail()
    account = final_account(handler)
    assert account["delivered"] == COUNT and account["lost"] == 0, account
    result = check_topics(kafka, Routes.by_category(prefix), FORMAT, expected=range(1, COUNT + 1))
    assert result.ok, result.summary()
    assert result.ticks == COUNT


def test_seeded_session_lands_in_kafka_exactly_once(kafka, topic_prefix, tmp_path):
    with serve(tmp_path) as simulator, \
            run(tmp_path, kafka, topic_prefix, simulator.address) as handler:
        handler.wait(TIMEOUT)
    verify(handler, kafka, topic_prefix)


def test_link_cuts_resume_exactly_once(kafka, topic_prefix, tmp_path):
    with serve(tmp_path) as simulator, TcpProxy(("127.0.0.1", simulator.port)) as proxy:
        proxy.cut_successive_links_at((41, 250_007, 1_000_003))
        with run(tmp_path, kafka, topic_prefix, proxy.address) as handler:
            handler.wait(TIMEOUT)
        assert proxy.links_opened == 4
    verify(handler, kafka, topic_prefix)


def test_failover_to_line_b_exactly_once(kafka, topic_prefix, tmp_path):
    with serve(tmp_path, "a") as line_a, serve(tmp_path, "b") as line_b, \
            TcpProxy(("127.0.0.1", line_a.port)) as proxy:
        proxy.cut_at(1_500_000)
        with run(tmp_path, kafka, topic_prefix, proxy.address, "--line-b",
                 line_b.address) as handler:
            proxy.wait_for(handler.while_running(lambda: proxy.links_opened >= 1), 60,
                           "the handler's first link")
            proxy.refuse_new()
            handler.wait(TIMEOUT)
    assert "failing over to line B" in handler.stderr(), handler.tail()
    verify(handler, kafka, topic_prefix)


def test_a_second_run_resumes_from_the_checkpoint_and_writes_nothing_twice(kafka, topic_prefix,
                                                                           tmp_path):
    """The checkpoint keeps the session as the SoupBinTCP login gave it; the same command again
    logs in after the last tick Kafka holds and gets end of session."""
    with serve(tmp_path) as simulator:
        with run(tmp_path, kafka, topic_prefix, simulator.address) as first:
            first.wait(TIMEOUT)
        verify(first, kafka, topic_prefix)
        with start_handler("--transport", "soupbintcp", "--connect", simulator.address,
                           "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                           "--format", FORMAT, "--partitions", "3", "--quiet",
                           workdir=tmp_path / "second") as second:
            second.wait(TIMEOUT)
    assert second.returncode == ExitCode.OK, second.tail()
    account = final_account(second)
    # Nothing read again: it logged in after the last tick (from 1 it would have read them all
    # and counted them as already in Kafka).
    assert account["messages"] == account["already_in_kafka"] == account["delivered"] == 0
    result = check_topics(kafka, Routes.by_category(topic_prefix), FORMAT,
                          expected=range(1, COUNT + 1))
    assert result.ok and result.ticks == COUNT, result.summary()

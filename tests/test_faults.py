"""The fault suite (issue 9) on real processes: `feedhandler simulate` (or a hostile server of the
test's own), the real `feedhandler run` process, and Kafka nodes of the suite's own (never the
shared broker for kill or pause). Faults: the broker killed with SIGKILL and restarted with its
data, the broker paused, a partition leader and the active controller killed on a 3-node
cluster (replication 3, min.insync.replicas 2), link cuts inside frames through a TCP proxy,
SIGTERM under load followed by the same command again, a 2^31 length prefix end to end, and the
broker away longer than a delivery timeout the user set (the one fault that must lose ticks:
exit 1, and the account's lost ticks are the ones Kafka lacks).

Every test ends the same way (`verify`): the checker reads every topic with read_committed and
finds every tick exactly once in per-symbol feed order; the handler's account agrees with Kafka
(ticks delivered == ticks found); the exit code is the documented one; the handler's peak RSS is
under RSS_BOUND. Each prints one `FAULT` line (run with -s): ticks sent, in Kafka, duplicates,
missing, time to recover, peak RSS. Time to recover, to the first status line (1 s apart) that
shows acknowledgements again: from the SIGKILL for a broker or cluster node (a single node's
restart included), from SIGCONT for a pause, from the process start for a restarted handler;
for link cuts, from a cut to the handler's next login link.

The handler kill -9 and restart is tests/test_resume.py; the hostile servers through the session
client and the CLI are tests/test_session_faults.py (here only what it leaves out: a 2^31 length
prefix through `feedhandler run`).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from faults.checker import check_topics
from faults.kafka_nodes import KafkaCommandError, KafkaNodes
from faults.processes import ChildProcess, final_account, start_handler, start_simulator
from faults.proxy import TcpProxy
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.kafka.resume import CHECKPOINT_SETTINGS
from feedhandler.kafka.routing import Routes
from feedhandler.session import protocol as sessionproto
from streams import SESSION
from test_fault_infra import PATTERN, Server, receive_all
from test_session_faults import HUGE_PREFIX, accepted, frames_from, hostile

pytestmark = pytest.mark.kafka

RSS_BOUND = 600 << 20           # bytes: the handler's peak resident set in every fault
PARTITIONS = 3
SYMBOLS = 50
FORMAT = "batched"
RUN_TIMEOUT = 240.0             # seconds for a handler to finish once its fault is over


# ---- shared pieces -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def module_node(tmp_path_factory):
    """One single Kafka node of this module's own (about 15 s to start), shared by the default
    tests: each uses topics of its own, and a test that kills or pauses it leaves it running."""
    with KafkaNodes(tmp_path_factory.mktemp("kafka-node")) as nodes:
        yield nodes


@pytest.fixture
def node(module_node):
    module_node.ensure_ready()
    return module_node


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory):
    """A 3-node cluster of this module's own, for the slow tests; each leaves all 3 running."""
    with KafkaNodes(tmp_path_factory.mktemp("kafka-cluster"), cluster=True) as nodes:
        yield nodes


@pytest.fixture
def cluster(module_cluster):
    module_cluster.ensure_ready()
    return module_cluster


def handler_command(bootstrap: str, prefix: str, connect: str, *options: str) -> list[str]:
    return ["--connect", connect, "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
            "--format", FORMAT, "--partitions", str(PARTITIONS), "--json-stats", *options]


def statuses(handler: ChildProcess) -> list[dict]:
    """The status lines `--json-stats` printed so far (the final account left out)."""
    lines = []
    for line in handler.stdout().splitlines():
        try:
            status = json.loads(line)
        except ValueError:
            continue
        if "delivered_per_s" in status:
            lines.append(status)
    return lines


def mark(handler: ChildProcess) -> tuple[int, float]:
    """(status lines so far, now): where a fault starts or ends, for `wait_until_delivering`."""
    return len(statuses(handler)), time.monotonic()


def wait_until_delivering(handler: ChildProcess, since: tuple[int, float],
                          timeout: float = RUN_TIMEOUT) -> float:
    """Seconds from `since` (a `mark`) until a status line printed after it shows
    acknowledgements (within the status line's one-second resolution); if the handler exits
    first, until its exit."""
    seen, started = since
    while handler.poll() is None:
        if any(s["delivered_per_s"] > 0 for s in statuses(handler)[seen:]):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"no delivery in {timeout} s:\n" \
                                                     f"{handler.tail()}"
        time.sleep(0.05)
    return handler.ended - started


def wait_until_delivered_some(handler: ChildProcess, timeout: float = 60.0) -> None:
    """Until the handler has acknowledgements in a status line: the fault comes mid-run."""
    deadline = time.monotonic() + timeout
    while not any(s["delivered_per_s"] > 0 for s in statuses(handler)):
        handler.assert_running()
        assert time.monotonic() < deadline, f"nothing delivered in {timeout} s"
        time.sleep(0.05)


@dataclass
class Figures:
    fault: str
    sent: int
    in_kafka: int
    duplicates: int
    missing: int
    recover_s: float | None
    peak_rss: int

    def line(self) -> str:
        recover = "-" if self.recover_s is None else f"{self.recover_s:.1f}"
        return (f"FAULT {self.fault}: sent {self.sent} | in Kafka {self.in_kafka} | duplicates "
                f"{self.duplicates} | missing {self.missing} | recovered in {recover} s | peak "
                f"RSS {self.peak_rss / 2**20:.0f} MB")


def verify(fault: str, bootstrap: str, prefix: str, sent: int, handlers: list[ChildProcess],
           codes: list[int], recover_s: float | None = None) -> Figures:
    """The end of every fault test: exit codes, every tick once in feed order per symbol, the
    accounts (summed over the runs of one session) agreeing with Kafka, peak RSS bounded."""
    for handler, code in zip(handlers, codes):
        assert handler.returncode == code, f"exit {handler.returncode}, expected {code}:\n" \
                                           f"{handler.tail()}"
        assert "Traceback" not in handler.stderr(), handler.tail()
    result = check_topics(bootstrap, Routes.by_category(prefix), FORMAT,
                          expected=range(1, sent + 1))
    peak = max(handler.peak_rss_bytes() for handler in handlers)
    figures = Figures(fault, sent, result.ticks, result.duplicate_count, result.missing_count,
                      recover_s, peak)
    print("\n" + figures.line())
    assert result.ok, result.summary()
    assert result.ticks == sent and not result.dead_lettered, result.summary()
    accounts = [final_account(handler) for handler in handlers]
    assert sum(a["delivered"] for a in accounts) == result.ticks, accounts
    assert all(a["lost"] == 0 and a["failed"] == 0 for a in accounts), accounts
    assert 0 < peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MB"
    return figures


def paced_simulator(tmp_path, count: int, rate: int, seed: int):
    return start_simulator("--count", str(count), "--symbols", str(SYMBOLS), "--seed", str(seed),
                           "--rate", str(rate), "--quiet", workdir=tmp_path)


# ---- the broker: SIGKILL and restart, SIGSTOP ---------------------------------------------------
def test_broker_killed_and_restarted_with_its_data_mid_run(node, tmp_path):
    """SIGKILL of the only broker 2 s into a paced session, restarted with its data (about
    15 s): the handler keeps running (no tick given up, the reader waits), and finishes the
    session with exit 0."""
    count, prefix = 300_000, "kill9."
    with paced_simulator(tmp_path, count, 50_000, 21) as simulator:
        with start_handler(*handler_command(node.bootstrap, prefix, simulator.address),
                           workdir=tmp_path) as handler:
            wait_until_delivered_some(handler)
            killed = mark(handler)
            node.kill()
            node.restart()
            assert handler.poll() is None, handler.tail()
            recover = wait_until_delivering(handler, killed)
            handler.wait(RUN_TIMEOUT)
    verify("broker kill -9 + restart", node.bootstrap, prefix, count, [handler], [ExitCode.OK],
           recover)


@pytest.mark.parametrize("paused", [15, pytest.param(60, marks=pytest.mark.slow)])
def test_broker_paused_mid_run(node, tmp_path, paused):
    """SIGSTOP of the broker for `paused` seconds mid-run. 15 s: the producer's requests wait
    on open connections (request.timeout.ms is 30 s) and are answered on SIGCONT; 60 s (slow):
    past request.timeout.ms and socket.timeout.ms, the requests time out and are retried on new
    connections. Either way nothing is given up, the handler acknowledges nothing while the
    broker is stopped, and recovers once it runs again."""
    count, prefix = 300_000, f"pause{paused}."
    with paced_simulator(tmp_path, count, 50_000, 22) as simulator:
        with start_handler(*handler_command(node.bootstrap, prefix, simulator.address),
                           workdir=tmp_path) as handler:
            wait_until_delivered_some(handler)
            node.pause()
            try:
                time.sleep(paused)
                during = statuses(handler)[-max(1, paused - 5):]
            finally:
                resumed = mark(handler)
                node.resume()
            assert all(s["delivered_per_s"] == 0 for s in during), during     # the fault bit
            assert handler.poll() is None, handler.tail()
            recover = wait_until_delivering(handler, resumed)
            handler.wait(RUN_TIMEOUT)
    verify(f"broker SIGSTOP {paused} s", node.bootstrap, prefix, count, [handler], [ExitCode.OK],
           recover)


def test_broker_away_longer_than_a_set_delivery_timeout_is_counted_lost(node, tmp_path):
    """With a delivery timeout set by the user (-X message.timeout.ms=3000) and the broker
    killed mid-run and only restarted after the handler has finished: exit 1 (ticks lost), no
    traceback, and the account's lost ticks are exactly the ticks Kafka does not have."""
    count, prefix = 300_000, "timeout."
    with paced_simulator(tmp_path, count, 50_000, 26) as simulator:
        with start_handler(*handler_command(node.bootstrap, prefix, simulator.address,
                                            "-X", "message.timeout.ms=3000"),
                           workdir=tmp_path) as handler:
            wait_until_delivered_some(handler)
            node.kill()
            try:
                handler.wait(RUN_TIMEOUT)
            finally:
                node.restart()
    assert "Traceback" not in handler.stderr(), handler.tail()
    assert handler.returncode == ExitCode.TICKS_LOST, handler.tail()
    account = final_account(handler)
    result = check_topics(node.bootstrap, Routes.by_category(prefix), FORMAT,
                          expected=range(1, count + 1))
    print(f"\nFAULT broker away past message.timeout.ms=3000: sent {count} | in Kafka "
          f"{result.ticks} | duplicates {result.duplicate_count} | missing "
          f"{result.missing_count} | account lost {account['lost']} | peak RSS "
          f"{handler.peak_rss_bytes() / 2**20:.0f} MB")
    assert not result.duplicates and not result.order_regressions, result.summary()
    # Every tick is delivered or lost; a record whose delivery timed out while its request was
    # in flight may still have been written, so `lost` is an upper bound of what Kafka misses.
    assert account["delivered"] + account["lost"] == count
    assert account["delivered"] <= result.ticks and account["lost"] >= result.missing_count > 0
    assert result.ticks - account["delivered"] == account["lost"] - result.missing_count
    assert handler.peak_rss_bytes() < RSS_BOUND


# ---- the link: cuts inside frames ----------------------------------------------------------------
@pytest.mark.parametrize("cuts", [
    (37, 100_003, 65_536),                      # in the first frame, mid-frame, at a chunk edge
    pytest.param((5, 1, 250_001, 1_000_001, 65_535, 3_000_017), marks=pytest.mark.slow)])
def test_link_cut_mid_frame_several_times(node, tmp_path, cuts):
    """The proxy cuts the link after each of `cuts` bytes of successive links (byte offsets
    count from the start of each link, the login answer included): each cut falls wherever it
    falls, inside the login answer or a frame. The handler logs in again each time and resumes
    at the next sequence number."""
    count = 200_000 if len(cuts) <= 3 else 2_000_000
    prefix = f"cuts{len(cuts)}."
    simulator = start_simulator("--count", str(count), "--symbols", str(SYMBOLS), "--seed", "23",
                                "--quiet", workdir=tmp_path)
    with simulator, TcpProxy(("127.0.0.1", simulator.port)) as proxy:
        proxy.cut_successive_links_at(cuts)
        with start_handler(*handler_command(node.bootstrap, prefix, proxy.address),
                           workdir=tmp_path) as handler:
            recover = 0.0
            for number in range(1, len(cuts) + 1):
                proxy.wait_for(handler.while_running(lambda: proxy.links_opened >= number
                                                   and proxy.links[number - 1].closed.is_set()),
                               120, f"cut {number}")
                cut = time.monotonic()
                proxy.wait_for(handler.while_running(lambda: proxy.links_opened > number), 60,
                               f"link {number + 1}")
                recover = max(recover, time.monotonic() - cut)
            handler.wait(RUN_TIMEOUT)
        assert proxy.links_opened == len(cuts) + 1, proxy.links_opened
        assert [link.delivered_down for link in proxy.links[:len(cuts)]] == list(cuts)
    verify(f"{len(cuts)} link cuts", node.bootstrap, prefix, count, [handler], [ExitCode.OK],
           recover)


# ---- SIGTERM under load, then the same command again --------------------------------------------
# Seconds from a restarted handler's process start to its first acknowledgements: a first run
# takes 1-2 s here (interpreter, login, topics), an exactly-once restart about 2 s.
RESTART_BOUND = 6.0


class SlowRestart(AssertionError):
    """A restart that took longer than RESTART_BOUND to deliver again."""


def sigterm_then_rerun(node: KafkaNodes, tmp_path, prefix: str, mode: tuple[str, ...]) -> float:
    """SIGTERM a handler under load, check what it left, run the same command to the end of
    the session and verify both runs; seconds from the rerun's start to its first acks."""
    count = 400_000
    with paced_simulator(tmp_path, count, 60_000, 24) as simulator:
        command = handler_command(node.bootstrap, prefix, simulator.address, *mode)
        with start_handler(*command, workdir=tmp_path / "first") as first:
            wait_until_delivered_some(first)
            time.sleep(1.0)
            assert first.terminate(RUN_TIMEOUT) == ExitCode.OK, first.tail()
        account = final_account(first)
        assert account["delivered"] == account["decoded"] - account["already_in_kafka"], account
        assert 0 < account["delivered"] < count, account
        stopped = check_topics(node.bootstrap, Routes.by_category(prefix), FORMAT)
        assert stopped.ok and stopped.ticks == account["delivered"], stopped.summary()
        with start_handler(*command, workdir=tmp_path / "second") as second:
            restarted = wait_until_delivering(second, (0, second.started))
            second.wait(RUN_TIMEOUT)
    verify("SIGTERM under load + same command" + (" (exactly-once)" if mode else ""),
           node.bootstrap, prefix, count, [first, second], [ExitCode.OK, ExitCode.OK],
           restarted)
    return restarted


@pytest.mark.parametrize("mode", [(), pytest.param(("--exactly-once",), marks=pytest.mark.slow)])
def test_sigterm_under_load_then_the_same_command_finishes_the_session(node, tmp_path, mode):
    """SIGTERM while the feed streams: the handler stops reading, drains and flushes, exits 0
    with a settled account, and what it accepted is in Kafka once. The same command again
    resumes the session: over both runs every tick once."""
    sigterm_then_rerun(node, tmp_path, "term" + "".join(m.strip("-") for m in mode) + ".", mode)


@pytest.mark.slow
def test_an_at_least_once_restart_delivers_again_within_the_bound(node, tmp_path):
    """The restart reads every partition's end at once (it used to read them one after another,
    about 19 s for a batched run's 4 topics x 3 partitions, while the feed waited)."""
    restarted = sigterm_then_rerun(node, tmp_path, "restartbound.", ())
    if restarted > RESTART_BOUND:
        raise SlowRestart(f"the restart delivered {restarted:.1f} s after its start "
                          f"(bound {RESTART_BOUND} s)")


# ---- a hostile exchange through the CLI ---------------------------------------------------------
def test_a_two_gigabyte_length_prefix_mid_session_through_run(kafka, topic_prefix, tmp_path):
    """A server that sends 2^31 as a frame length after 300 frames: `feedhandler run` refuses
    it without buffering it (RSS stays bounded), logs in again at 301 and finishes the session
    with exit 0 and every tick once."""
    def huge_then_good(number, sock, requested):
        sock.sendall(accepted(requested))
        if number == 1:
            sock.sendall(frames_from(1, 300) + HUGE_PREFIX)
            time.sleep(5)
        else:
            sock.sendall(frames_from(requested, 1000)
                         + sessionproto.end_of_session(SESSION, 1001))

    with hostile(huge_then_good) as server:
        handler = start_handler(*handler_command(kafka, topic_prefix,
                                                 f"127.0.0.1:{server.port}"), workdir=tmp_path)
        with handler:
            handler.wait(RUN_TIMEOUT)
    assert [requested for _, requested in server.logins] == [1, 301], handler.tail()
    verify("2^31 length prefix", kafka, topic_prefix, 1000, [handler], [ExitCode.OK])


# ---- the cluster: leader and controller -----------------------------------------------------------
def replicated_topics(cluster: KafkaNodes, prefix: str) -> Routes:
    """Every topic the handler writes, created beforehand with replication 3 and
    min.insync.replicas 2 (the checkpoint topic compacted, as the handler makes it)."""
    routes = Routes.by_category(prefix)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    insync = {"min.insync.replicas": "2"}
    new = [NewTopic(topic, PARTITIONS, 3, config=insync)
           for topic in [*routes.topics, routes.dead_letter]]
    new.append(NewTopic(routes.checkpoint, 1, 3, config={**insync, **CHECKPOINT_SETTINGS}))
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(60)
    return routes


def busiest_topic(routes: Routes) -> str:
    """The topic of add-order messages: the most ticks of the synthetic flow."""
    return routes.topic_of_type["A"]


def kill_mid_run(cluster: KafkaNodes, tmp_path, prefix: str, pick, what: str,
                 *mode: str) -> None:
    """Run a paced session through the cluster, SIGKILL the node `pick(routes)` names once the
    handler delivers, then bring that node back after the session; verify."""
    count = 1_000_000
    routes = replicated_topics(cluster, prefix)
    with paced_simulator(tmp_path, count, 80_000, 25) as simulator:
        command = handler_command(cluster.bootstrap, prefix, simulator.address,
                                  "--replication-factor", "3", *mode)
        with start_handler(*command, workdir=tmp_path) as handler:
            wait_until_delivered_some(handler)
            time.sleep(1.0)
            victim = pick(routes)
            killed = mark(handler)
            cluster.kill_node(victim)
            recover = wait_until_delivering(handler, killed)
            handler.wait(RUN_TIMEOUT)
    try:
        verify(f"cluster: {what} (node {victim}) kill -9" + (" exactly-once" if mode else ""),
               cluster.bootstrap, prefix, count, [handler], [ExitCode.OK], recover)
    finally:
        restart_node(cluster, victim)


def restart_node(cluster: KafkaNodes, node_id: int) -> None:
    """Bring a killed node back for the next test, trying twice: on this loaded machine a
    restarted node has once exited during its startup while the other two were busy."""
    try:
        cluster.start_node(node_id)
    except KafkaCommandError:
        cluster.start_node(node_id)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--exactly-once",)])
def test_cluster_partition_leader_killed_mid_run(cluster, tmp_path, mode):
    kill_mid_run(cluster, tmp_path, "leader" + "".join(m.strip("-") for m in mode) + ".",
                 lambda routes: cluster.leaders(busiest_topic(routes))[0].leader,
                 "leader of a busy partition", *mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--exactly-once",)])
def test_cluster_active_controller_killed_mid_run(cluster, tmp_path, mode):
    kill_mid_run(cluster, tmp_path, "controller" + "".join(m.strip("-") for m in mode) + ".",
                 lambda routes: cluster.controller(), "active controller", *mode)


def test_proxy_cuts_successive_links_each_at_its_own_offset():
    """The proxy helper the link-cut test relies on: armed before any link exists, the nth
    new link is cut at the nth offset exactly, whatever the stream's speed; later links run."""
    server = Server()
    try:
        with TcpProxy(("127.0.0.1", server.port)) as proxy:
            proxy.cut_successive_links_at([70_001, 3])
            received = []
            for _ in range(3):
                client = socket.create_connection(("127.0.0.1", proxy.port))
                received.append(receive_all(client))
                client.close()
    finally:
        server.close()
    assert received == [PATTERN[:70_001], PATTERN[:3], PATTERN]

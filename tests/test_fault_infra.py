"""The fault suite's own infrastructure works: the TCP proxy forwards, cuts, pauses, drops and
garbles exactly; the process helpers kill and measure; the checker finds planted duplicates,
gaps and order regressions and honours read_committed; scripts/kafka.sh restarts a node with its
data; a cluster leader's death leaves the partition with a new leader (slow)."""

import signal
import socket
import threading
import time

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from faults.checker import (TICK_PREFIX_LENGTH, Ticks, _watermarks, add_record, check_topics,
                            ranges, tick_prefix)
from faults.kafka_nodes import KafkaNodes, ephemeral_port_range
from faults.processes import final_account, start_handler, start_simulator
from faults.proxy import TcpProxy
from feedhandler.kafka.routing import BATCH_DTYPES, Routes, json_value
from feedhandler.session.protocol import LENGTH_PREFIX
from feedhandler.wire.itch import DTYPES

SESSION = b"INFRA00001"
PATTERN = bytes(range(256)) * 4096          # 1 MiB the test server sends


# ---- the proxy ---------------------------------------------------------------------------------
class Server:
    """A one-connection-at-a-time TCP server on 127.0.0.1: sends PATTERN (or echoes), and
    records what it received and whether its peer closed."""

    def __init__(self, mode: str = "send"):
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.peer_closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                if self.mode == "send":
                    conn.sendall(PATTERN)
                while data := conn.recv(65536):
                    self.received += data
                    if self.mode == "echo":
                        conn.sendall(data)
            except OSError:
                pass
            self.peer_closed.set()
            conn.close()

    def close(self):
        self.listener.close()


def receive_all(sock: socket.socket, limit: int = len(PATTERN), timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.fixture
def server(request):
    server = Server(getattr(request, "param", "send"))
    yield server
    server.close()


@pytest.mark.parametrize("server", ["echo"], indirect=True)
def test_proxy_forwards_both_ways_and_counts_the_bytes(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port))
        sent = PATTERN[:300_001]
        client.sendall(sent)
        assert receive_all(client, len(sent)) == sent
        client.close()
        proxy.wait_for(lambda: not proxy.open_links(), 5, "link closed")
    assert server.received == sent
    assert proxy.bytes_up == proxy.bytes_down == proxy.delivered_down == len(sent)
    assert proxy.links_opened == 1


def test_proxy_cut_at_an_offset_delivers_exactly_that_many_bytes_then_closes_both_sides(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.cut_at(123_457)
        first = socket.create_connection(("127.0.0.1", proxy.port))
        assert receive_all(first) == PATTERN[:123_457]          # then EOF
        assert server.peer_closed.wait(5)                       # the server side too
        second = socket.create_connection(("127.0.0.1", proxy.port))   # the cut was one-shot
        assert receive_all(second) == PATTERN
        second.close()
        assert proxy.links_opened == 2
        assert proxy.links[0].delivered_down == 123_457


def test_proxy_cut_now_closes_every_open_link(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.pause()                   # nothing forwarded yet when the cut comes
        client = socket.create_connection(("127.0.0.1", proxy.port))
        proxy.wait_for(lambda: proxy.links_opened == 1, 5, "link open")
        assert proxy.cut() == 1
        assert receive_all(client) == b""
        assert server.peer_closed.wait(5)
        assert proxy.cut() == 0


def test_proxy_pause_holds_every_byte_until_resumed(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.pause()
        client = socket.create_connection(("127.0.0.1", proxy.port))
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(1)
        assert proxy.bytes_down == 0
        proxy.resume()
        assert receive_all(client) == PATTERN


def test_proxy_pause_for_a_time_resumes_by_itself(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.pause(0.4)
        started = time.monotonic()
        client = socket.create_connection(("127.0.0.1", proxy.port))
        client.settimeout(5)
        client.recv(1)
        assert time.monotonic() - started >= 0.35


def test_proxy_drops_and_garbles_exact_byte_ranges(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.garble(70_000, 3)
        proxy.drop(100, 50)
        client = socket.create_connection(("127.0.0.1", proxy.port))
        received = receive_all(client, len(PATTERN) - 50)
    expected = bytearray(PATTERN)
    expected[70_000:70_003] = bytes(b ^ 0xFF for b in PATTERN[70_000:70_003])
    del expected[100:150]
    assert received == bytes(expected)


def test_proxy_refusing_new_links_closes_them_at_once(server):
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        proxy.refuse_new()
        client = socket.create_connection(("127.0.0.1", proxy.port))
        assert receive_all(client) == b""
        proxy.wait_for(lambda: proxy.refused == 1, 5, "refused")
        assert proxy.links_opened == 0


# ---- the checker -------------------------------------------------------------------------------
class SettlingLeader:
    """A consumer whose partition has no leader for its first `refusals` offset queries."""

    def __init__(self, refusals, code=KafkaError.NOT_LEADER_FOR_PARTITION):
        self.refusals, self.code, self.asked = refusals, code, 0

    def get_watermark_offsets(self, partition, timeout):
        self.asked += 1
        if self.asked <= self.refusals:
            raise KafkaException(KafkaError(self.code))
        return 0, 42


def test_the_checker_asks_again_while_a_restarted_brokers_leadership_settles():
    consumer = SettlingLeader(refusals=2)
    assert _watermarks(consumer, TopicPartition("t", 0), time.monotonic() + 10) == (0, 42)
    assert consumer.asked == 3
    with pytest.raises(KafkaException):         # past the deadline the error stands
        _watermarks(SettlingLeader(refusals=100), TopicPartition("t", 0), time.monotonic() + 0.5)
    with pytest.raises(KafkaException):         # and any other error at once
        _watermarks(SettlingLeader(1, KafkaError.TOPIC_AUTHORIZATION_FAILED),
                    TopicPartition("t", 0), time.monotonic() + 10)


def rows(message_type: str, sequences, locates) -> np.ndarray:
    array = np.zeros(len(sequences), BATCH_DTYPES[message_type])
    array["sequence"] = sequences
    array["message_type"] = message_type.encode()
    array["stock_locate"] = locates
    return array


def values_of(value_format: str, array: np.ndarray) -> list[bytes]:
    """Per-tick values of the rows (json, or the target struct layout), or one batched value."""
    if value_format == "batched":
        return [array.tobytes()]
    structs = [row.tobytes()[8:] for row in array]
    if value_format == "json":
        names = DTYPES[array["message_type"][0].decode()].names
        return [json_value(np.frombuffer(s, DTYPES["A"])[0].tolist(), names, SESSION,
                           int(sequence)) for s, sequence in zip(structs, array["sequence"])]
    return [SESSION + int(sequence).to_bytes(8, "little") + s
            for s, sequence in zip(structs, array["sequence"])]


def test_tick_prefix_reads_the_session_and_sequence_of_the_target_layout():
    struct = rows("A", [7], [3]).tobytes()[8:]
    session, sequence, message = tick_prefix(SESSION + (2**40 + 5).to_bytes(8, "little") + struct)
    assert (session, sequence, bytes(message)) == (SESSION, 2**40 + 5, struct)
    assert TICK_PREFIX_LENGTH == 18
    with pytest.raises(ValueError, match="no message after"):
        tick_prefix(SESSION + bytes(8))
    # raw: the wire message, stock locate big-endian
    ticks = Ticks()
    wire = b"A" + (0x0102).to_bytes(2, "big") + bytes(33)
    add_record(ticks, SESSION + (9).to_bytes(8, "little") + wire, "raw", None)
    sequences, locates, types = ticks.arrays()
    assert (sequences.tolist(), locates.tolist(), types.tolist()) == ([9], [0x0102], [ord("A")])


def test_ranges_compress_consecutive_numbers():
    assert ranges([5, 1, 2, 3, 9, 10, 3]) == [(1, 3), (5, 5), (9, 10)]
    assert ranges([]) == []


def produce_values(kafka: str, topic: str, values, partition: int = 0, producer=None,
                   headers=None) -> None:
    own = producer is None
    producer = producer or Producer({"bootstrap.servers": kafka, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value, partition=partition, headers=headers)
    if own:
        assert producer.flush(30) == 0


def create_topics(kafka: str, topics: list[str], partitions: int = 2) -> None:
    admin = AdminClient({"bootstrap.servers": kafka})
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    for future in futures.values():
        future.result(30)


@pytest.mark.kafka
@pytest.mark.parametrize("value_format", ["batched", "json", "struct"])
def test_checker_finds_a_planted_duplicate_gap_order_regression_and_split_symbol(
        kafka, topic_prefix, value_format):
    """Sequence numbers 1..1000 of locates 1..4 in two partitions of `orders`, except: 500-509
    never written, 100-104 written twice (the copies later, so also out of order), locate 4
    on both partitions."""
    routes = Routes.by_category(topic_prefix)
    topic = routes.topic_of_type["A"]
    create_topics(kafka, [topic])
    sequences = np.array([s for s in range(1, 1001) if not 500 <= s <= 509])
    locates = 1 + sequences % 4
    headers = [("session", SESSION)]
    first = np.flatnonzero(locates != 4)
    for partition, picked in ((0, first), (1, np.flatnonzero(locates == 4))):
        produce_values(kafka, topic, values_of(value_format, rows("A", sequences[picked],
                                                                   locates[picked])),
                       partition, headers=headers)
    produce_values(kafka, topic, values_of(value_format, rows("A", np.arange(100, 105),
                                                               1 + np.arange(100, 105) % 4)),
                   1, headers=headers)
    result = check_topics(kafka, routes, value_format, expected=range(1, 1001))
    assert result.ticks == 990 + 5 and result.distinct == 990
    assert result.duplicates == {s: 1 for s in range(100, 105)}
    assert result.missing == [(500, 509)] and result.unexpected == []
    # The copies of 100..104 went to partition 1: 100 (locate 1), 101 (2), 102 (3) are there
    # only once each, so in order; 103 (locate 4) is a regression among locate 4's ticks.
    assert result.order_regressions == 1
    assert result.regression_examples[0][:3] == (topic, 1, 4)
    assert set(result.split_symbols) == {(topic, 1), (topic, 2), (topic, 3)}
    assert dict(result.sessions) == {SESSION: 995}
    assert not result.ok


@pytest.mark.kafka
def test_checker_passes_a_clean_topic_and_sees_only_committed_transactions(kafka, topic_prefix):
    routes = Routes.by_category(topic_prefix)
    topic = routes.topic_of_type["A"]
    create_topics(kafka, [topic], partitions=1)
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": topic_prefix + "tx"})
    producer.init_transactions(30)
    for first, commit in ((1, True), (1, False), (101, True)):
        producer.begin_transaction()
        produce_values(kafka, topic, values_of("json", rows("A", np.arange(first, first + 100),
                                                            1)), producer=producer)
        assert producer.flush(30) == 0      # in the log before the abort, not purged by it
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    committed = check_topics(kafka, routes, "json", expected=range(1, 201))
    assert committed.ok, committed.summary()
    assert committed.ticks == 200
    everything = check_topics(kafka, routes, "json", expected=range(1, 201),
                              isolation="read_uncommitted")
    assert everything.duplicates == {s: 1 for s in range(1, 101)}
    assert everything.order_regressions == 1           # the aborted copy starts over at 1


# ---- processes ---------------------------------------------------------------------------------
def test_process_helpers_kill_nine_and_measure_peak_rss(tmp_path):
    simulator = start_simulator("--count", "20000", "--quiet", workdir=tmp_path)
    with simulator:
        assert simulator.poll() is None
        assert simulator.rss_bytes() > 10 << 20
        assert simulator.kill9() == -signal.SIGKILL
        assert simulator.peak_rss_bytes() >= 10 << 20      # from wait4, after the exit
        assert simulator.rss_bytes() is None


def test_a_wait_for_what_a_process_must_cause_fails_at_once_when_it_has_exited(tmp_path,
                                                                              server):
    """A handler that exits before the fault it should meet (in CI it exited 3, no broker; here
    a bad option, exit 2) fails the wait at once with its last lines, not after its timeout."""
    handler = start_handler("--connect", "127.0.0.1:9", "--bootstrap-servers", "127.0.0.1:9",
                            "--no-such-option", workdir=tmp_path)
    with handler, TcpProxy(("127.0.0.1", server.port)) as proxy:
        handler.wait(60)
        started = time.monotonic()
        with pytest.raises(AssertionError, match="(?s)run exited early:.*--no-such-option"):
            proxy.wait_for(handler.while_running(lambda: proxy.links_opened >= 1), 120, "link")
        assert time.monotonic() - started < 5


def frame_ends(stream: bytes) -> set[int]:
    """Offsets where the session protocol's frames (length prefix, then that many bytes) end
    in a server->client stream."""
    ends, at = set(), 0
    while at + LENGTH_PREFIX.size <= len(stream):
        at += LENGTH_PREFIX.size + LENGTH_PREFIX.unpack_from(stream, at)[0]
        ends.add(at)
    return ends


@pytest.mark.kafka
def test_a_cut_mid_frame_through_the_proxy_loses_and_duplicates_nothing(kafka, topic_prefix,
                                                                          tmp_path):
    """Everything together: simulator and handler processes, the proxy between them cutting
    the link after 300,001 bytes (inside a frame), the checker reading the topics."""
    count = 100_000
    simulator = start_simulator("--count", str(count), "--symbols", "50", "--quiet",
                                workdir=tmp_path)
    with simulator, TcpProxy(("127.0.0.1", simulator.port), record=True) as proxy:
        proxy.cut_at(300_001)
        handler = start_handler("--connect", proxy.address, "--bootstrap-servers", kafka,
                                "--topic-prefix", topic_prefix, "--format", "batched",
                                "--partitions", "3", "--quiet", workdir=tmp_path)
        with handler:
            assert handler.wait(120) == 0, handler.tail()
        assert proxy.links_opened == 2 and proxy.links[0].delivered_down == 300_001
        assert 300_001 not in frame_ends(proxy.links[0].recorded)       # inside a frame
    account = final_account(handler)
    assert account["delivered"] == count and account["lost"] == 0
    result = check_topics(kafka, Routes.by_category(topic_prefix), "batched",
                          expected=range(1, count + 1))
    assert result.ok, result.summary()
    assert result.ticks == count
    assert 0 < handler.peak_rss_bytes() < 2 << 30


# ---- our own brokers ---------------------------------------------------------------------------
def records_in(bootstrap: str, topic: str) -> list[bytes]:
    routes = Routes(topic_of_type={"A": topic}, dead_letter=topic + ".none",
                    checkpoint=topic + ".checkpoint")
    from faults.checker import read_partitions
    return [m.value() for m in read_partitions(bootstrap, routes.topics, timeout=60)]


def test_a_test_nodes_ports_lie_below_the_kernels_ephemeral_range(tmp_path):
    """A killed node must get its ports back on restart. A port in the ephemeral range can be
    taken meanwhile by any outgoing connection, or by the handler reconnecting to the dead port
    and connecting to itself: the restart then fails with "Address already in use" (it did, in
    CI, for test_broker_away_longer_than_a_set_delivery_timeout_is_counted_lost)."""
    first_ephemeral, _ = ephemeral_port_range()
    for cluster in (False, True):
        ports = [port for _ in range(100) for port in KafkaNodes(tmp_path, cluster).ports]
        assert len(ports) == 100 * (6 if cluster else 2)
        assert max(ports) < first_ephemeral
        assert not set(ports) & {19092, 19093, *range(19192, 19196), 29092, 29093, 29192,
                                 29193, 29292, 29293}, "a shared broker's port"


@pytest.mark.kafka
@pytest.mark.slow       # 60 s; test_faults' broker kill and restart runs the same commands
def test_kafka_sh_kill_and_restart_keep_a_single_nodes_records(tmp_path):
    """SIGKILL, then restart: the topic and every acknowledged record are still there; a paused
    broker is not ready until resumed. ensure_ready() (each test_faults test starts with it)
    brings back a node left paused or killed. (A node of its own: never the shared broker.)"""
    with KafkaNodes(tmp_path / "kafka") as node:
        node.create_topic("kept", partitions=2, replication=1)
        values = [b"%d" % i for i in range(1000)]
        produce_values(node.bootstrap, "kept", values)
        node.pause()
        assert not node.status()
        node.resume()
        assert node.status()
        node.kill()
        assert not node.status()
        seconds = node.restart()
        print(f"restart keeping the data: {seconds:.1f} s")
        assert sorted(records_in(node.bootstrap, "kept")) == sorted(values)
        assert node.leaders("kept")[1].leader == 1
        for leave_down in (node.pause, node.kill):
            leave_down()
            node.ensure_ready()
            assert node.status()
        assert sorted(records_in(node.bootstrap, "kept")) == sorted(values)


@pytest.mark.slow
@pytest.mark.kafka
def test_cluster_leader_and_controller_kill_leave_new_ones(tmp_path):
    """Replication 3, min.insync.replicas 2: after SIGKILL of partition 0's leader the partition
    gets another leader and takes acks=all writes; after SIGKILL of the active controller the
    quorum elects another. Both nodes come back with their data."""
    with KafkaNodes(tmp_path / "cluster", cluster=True) as cluster:
        cluster.create_topic("replicated", partitions=3, replication=3, min_insync=2)
        before = cluster.leaders("replicated")[0]
        assert len(before.replicas) == 3 and len(before.isr) == 3
        produce_values(cluster.bootstrap, "replicated", [b"before"] * 100)
        cluster.kill_node(before.leader)
        killed = time.monotonic()
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                             "enable.idempotence": True})
        producer.produce("replicated", b"after", partition=0)
        assert producer.flush(60) == 0
        acked = time.monotonic() - killed
        del producer                # no client left retrying the nodes once they stop
        leader, failover = cluster.wait_for_leader("replicated", 0,
                                                   lambda node: node not in (-1, before.leader))
        print(f"partition leader failover: an acks=all write {acked:.1f} s after the SIGKILL; "
              f"metadata names node {leader} (was {before.leader}) {failover + acked:.1f} s after")
        produce_values(cluster.bootstrap, "replicated", [b"after"] * 99)
        cluster.start_node(before.leader)
        controller = cluster.controller()
        started = time.monotonic()
        cluster.kill_node(controller)
        deadline = time.monotonic() + 60
        while True:
            try:
                now = cluster.controller()
            except Exception:  # noqa: BLE001 - no leader yet
                now = None
            if now not in (None, -1, controller):
                break
            assert time.monotonic() < deadline, "no new controller within 60 s"
        print(f"controller failover: {time.monotonic() - started:.1f} s "
              f"(node {controller} -> {now}, measured with kafka.sh controller, ~3 s per ask)")
        cluster.start_node(controller)
        values = records_in(cluster.bootstrap, "replicated")
        assert values.count(b"before") == 100 and values.count(b"after") == 100

"""Kafka nodes of a test's own, through scripts/kafka.sh: a single node or the 3-node cluster on
free ports and in a state directory of their own, so the shared broker (127.0.0.1:19092) is
never touched. Every call is bounded in time.

    with KafkaNodes(tmp_path, cluster=True) as nodes:      # starts fresh, stops at the end
        nodes.create_topic("t", partitions=3, replication=3, min_insync=2)
        leader = nodes.leaders("t")[0].leader
        nodes.kill_node(leader)
        nodes.wait_for_leader("t", 0, lambda node: node != leader)
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KAFKA_SH = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"
CLUSTER_NODES = 3
# Ports kafka.sh uses relative to its base: broker, controller; cluster node N adds 100*(N-1).
SINGLE_OFFSETS = (0, 1)
CLUSTER_OFFSETS = tuple(100 * n + k for n in range(CLUSTER_NODES) for k in (0, 1))
HEAP = "-Xms128m -Xmx384m"
START_TIMEOUT = 120          # seconds for a start, restart or start-node
COMMAND_TIMEOUT = 60         # seconds for anything else
# Ports of a test's own nodes: between the shared single node (19092-19195) and the shared
# cluster (29092-29301), and below the kernel's ephemeral range (see free_base_port).
NODE_PORTS_LOW, NODE_PORTS_HIGH = 20000, 29000


def ports_free(ports) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (first, last)."""
    first, last = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(first), int(last)


def free_base_port(offsets, low: int = NODE_PORTS_LOW, high: int = NODE_PORTS_HIGH) -> int:
    """A base port such that base + every offset is free on 127.0.0.1 right now.

    Every port lies below the kernel's ephemeral range. A killed node must get its ports back on
    restart, and a port in that range can meanwhile be taken as the source port of any outgoing
    connection, or by a client that keeps reconnecting to the dead port and connects to itself
    (TCP simultaneous open). Either makes the restart fail with "Address already in use", and
    goes on doing so for the minute the closed connection spends in TIME_WAIT."""
    high = min(high, ephemeral_port_range()[0])
    if high - max(offsets) <= low:
        raise RuntimeError(f"no room for a Kafka node's ports between {low} and the ephemeral "
                           f"range at {high}")
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = rng.randrange(low, high - max(offsets))
        if ports_free(base + offset for offset in offsets):
            return base
    raise RuntimeError("no free ports for a Kafka node")


@dataclass(frozen=True)
class PartitionState:
    partition: int
    leader: int                  # node id, -1 = none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class KafkaCommandError(RuntimeError):
    pass


class KafkaNodes:
    """scripts/kafka.sh for one single node or one cluster of a test's own."""

    def __init__(self, state_dir: Path, cluster: bool = False):
        self.state_dir = Path(state_dir)
        self.cluster = cluster
        offsets = CLUSTER_OFFSETS if cluster else SINGLE_OFFSETS
        base = free_base_port(offsets)
        self.ports = tuple(base + offset for offset in offsets)     # every listener's
        self.env = {**os.environ, "FEEDHANDLER_KAFKA_STATE": str(self.state_dir),
                    "FEEDHANDLER_KAFKA_HEAP_OPTS": HEAP,
                    "FEEDHANDLER_KAFKA_TIMEOUT": str(START_TIMEOUT - 10)}
        if cluster:
            self.env["FEEDHANDLER_KAFKA_CLUSTER_PORT"] = str(base)
            self.bootstrap = ",".join(f"127.0.0.1:{base + 100 * n}" for n in range(CLUSTER_NODES))
        else:
            self.env["FEEDHANDLER_KAFKA_PORT"] = str(base)
            self.bootstrap = f"127.0.0.1:{base}"
        if self.bootstrap.startswith("127.0.0.1:19092"):
            raise AssertionError("never the shared broker")

    # ---- the script ------------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """kafka.sh with this instance's environment (and --cluster); its stdout."""
        command = ["bash", str(KAFKA_SH), *args] + (["--cluster"] if self.cluster else [])
        try:
            result = subprocess.run(command, env=self.env, capture_output=True, text=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise KafkaCommandError(f"kafka.sh {' '.join(args)}: no answer in {timeout} s") \
                from error
        if result.returncode != 0:
            raise KafkaCommandError(f"kafka.sh {' '.join(args)} exited {result.returncode}: "
                                    f"{result.stderr.strip()[-2000:]}")
        return result.stdout

    def timed(self, *args: str, timeout: float = START_TIMEOUT) -> float:
        """Run a kafka.sh command; the seconds it took."""
        started = time.monotonic()
        self.run(*args, timeout=timeout)
        return time.monotonic() - started

    # ---- lifetime --------------------------------------------------------------------------------
    def start(self) -> float:
        """A fresh node or cluster; seconds until ready."""
        return self.timed("start")

    def restart(self) -> float:
        """Stop if running, start again with the data kept; seconds until ready."""
        return self.timed("restart")

    def stop(self) -> None:
        self.run("stop", timeout=START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL (every node of a cluster); the data stays for restart()."""
        self.run("kill")

    def pause(self) -> None:
        self.run("pause")

    def resume(self) -> None:
        self.run("resume")

    def status(self) -> bool:
        try:
            self.run("status")
        except KafkaCommandError:
            return False
        return True

    def ensure_ready(self) -> None:
        """Ready again if an earlier test left the node (any cluster node) killed or paused: a
        test that failed to bring it back must not fail every test after it too."""
        if self.status():
            return
        for number in range(1, CLUSTER_NODES + 1) if self.cluster else (None,):
            try:                    # a stopped JVM must run again to be stopped
                self.resume() if number is None else self.resume_node(number)
            except KafkaCommandError:
                pass                # not running at all
        self.restart()

    def __enter__(self) -> KafkaNodes:
        try:
            self.start()
        except BaseException:
            self.stop()             # whatever did start
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.cluster:
            try:
                self.resume()           # a paused JVM would only die at the SIGKILL
            except KafkaCommandError:
                pass
        self.stop()

    # ---- cluster nodes ---------------------------------------------------------------------------
    def _node(self, command: str, node: int, timeout: float = COMMAND_TIMEOUT) -> str:
        if not self.cluster:
            raise ValueError("a single node has no node numbers")
        return self.run(command, str(node), timeout=timeout)

    def kill_node(self, node: int) -> None:
        self._node("kill-node", node)

    def start_node(self, node: int) -> float:
        started = time.monotonic()
        self._node("start-node", node, START_TIMEOUT)
        return time.monotonic() - started

    def pause_node(self, node: int) -> None:
        self._node("pause-node", node)

    def resume_node(self, node: int) -> None:
        self._node("resume-node", node)

    # ---- topics and metadata ---------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, replication: int = -1,
                     min_insync: int | None = None) -> None:
        args = ["create-topic", name, str(partitions), str(replication)]
        if min_insync is not None:
            args.append(str(min_insync))
        self.run(*args)

    def leaders(self, topic: str) -> dict[int, PartitionState]:
        """Partition -> its leader, replicas and in-sync replicas, as the metadata says now."""
        states = {}
        for line in self.run("leaders", topic).splitlines():
            partition, leader, replicas, isr = line.split()
            states[int(partition)] = PartitionState(
                int(partition), int(leader), tuple(int(n) for n in replicas.split(",") if n),
                tuple(int(n) for n in isr.split(",") if n))
        return states

    def controller(self) -> int:
        """Node id of the active KRaft controller."""
        return int(self.run("controller").strip())

    def wait_for_leader(self, topic: str, partition: int, accept, timeout: float = 60.0,
                        interval: float = 0.2) -> tuple[int, float]:
        """Poll the metadata until the partition's leader satisfies `accept(node_id)`;
        (that leader, seconds waited)."""
        started = time.monotonic()
        while True:
            try:
                leader = self.leaders(topic)[partition].leader
            except (KafkaCommandError, KeyError):
                leader = None
            if leader is not None and accept(leader):
                return leader, time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{topic}[{partition}]: leader still {leader} after {timeout} s")
            time.sleep(interval)


"""Kafka fixtures shared by the tests and the benchmarks."""

import os
import subprocess

import pytest


KAFKA = os.environ.get("FEEDHANDLER_BOOTSTRAP", "127.0.0.1:19092")


@pytest.fixture(scope="session")
def kafka() -> str:
    """Bootstrap servers of the broker started by scripts/kafka.sh (scripts/test.sh starts it).
    Tests that need it fail when it is down under scripts/test.sh, and skip elsewhere."""
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": KAFKA}).list_topics(timeout=10)
    except Exception as error:  # noqa: BLE001 - any failure means: no broker
        message = f"no Kafka broker at {KAFKA} (start it: scripts/kafka.sh start): {error}"
        if os.environ.get("FEEDHANDLER_REQUIRE_KAFKA"):
            pytest.fail(message)
        pytest.skip(message)
    return KAFKA


@pytest.fixture
def topic_prefix(request) -> str:
    """Topic names of their own for each test, so runs never see each other's records."""
    return f"t{os.getpid()}.{request.node.name.replace('[', '.').replace(']', '')}."[:200]


def kcat_count(bootstrap: str, topic: str) -> int:
    """Records in a topic as counted by kcat, an independent (C, librdkafka CLI) reader."""
    result = subprocess.run(["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning",
                             "-e", "-q", "-f", "%o\\n"], capture_output=True, text=True,
                            timeout=120, check=True)
    return len(result.stdout.split())

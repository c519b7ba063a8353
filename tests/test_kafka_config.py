"""One Kafka client configuration for the producer and the AdminClient, checked before use."""

import time

import pytest
from confluent_kafka.admin import AdminClient

from feedhandler.kafka.config import (PRODUCER_DEFAULTS, KafkaClientConfig, KafkaConfigError,
                                      setting_scopes)
from feedhandler.kafka.topics import (KafkaStartError, check_reachable, ensure_topics,
                                      topic_name_problem)

SECURITY = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
            "sasl.password": "p", "ssl.endpoint.identification.algorithm": "none",
            "socket.timeout.ms": "5000", "client.id": "feed-7"}
PRODUCER_ONLY = {"linger.ms": "5", "acks": "all", "enable.idempotence": "true",
                 "transactional.id": "t", "compression.type": "zstd", "message.timeout.ms": "900"}


def test_every_shared_setting_reaches_the_admin_client_and_no_producer_setting_does():
    client = KafkaClientConfig("127.0.0.1:9", {**SECURITY, **PRODUCER_ONLY})
    assert client.admin() == {**SECURITY, "bootstrap.servers": "127.0.0.1:9"}
    producer = client.producer()
    assert producer == {**PRODUCER_DEFAULTS, **SECURITY, **PRODUCER_ONLY,
                        "bootstrap.servers": "127.0.0.1:9"}


def test_scopes_come_from_the_loaded_librdkafka():
    scopes = setting_scopes()
    assert scopes["sasl.mechanism"] == scopes["ssl.ca.location"] == "*"
    assert scopes["linger.ms"] == scopes["enable.idempotence"] == scopes["acks"] == "P"
    assert scopes["group.id"] == "C"
    assert len(scopes) > 150


@pytest.mark.parametrize(("settings", "complaint"), [
    ({"foo.bar": "1"}, "No such configuration property"),
    ({"linger.ms": "soon"}, "Invalid value"),
    ({"acks": "1"}, "enable.idempotence"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}, "sasl.username"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location"),
])
def test_librdkafka_judges_the_settings_without_connecting(settings, complaint):
    client = KafkaClientConfig("127.0.0.1:1", settings)
    started = time.monotonic()
    with pytest.raises(KafkaConfigError, match=complaint):
        client.check()
    assert time.monotonic() - started < 2


def test_good_settings_pass_the_check():
    KafkaClientConfig("127.0.0.1:1", {**SECURITY, **PRODUCER_ONLY,
                                      "ssl.endpoint.identification.algorithm": "https"}).check()


@pytest.mark.parametrize(("name", "legal"), [
    ("itch.orders", True), ("a-b_c.D9", True), ("x" * 249, True), ("x" * 250, False),
    ("", False), (".", False), ("..", False), ("a/b", False), ("a b", False), ("ä", False)])
def test_topic_names_follow_kafkas_rule(name, legal):
    assert (topic_name_problem(name) is None) == legal


def test_an_unreachable_cluster_is_reported_within_the_timeout():
    started = time.monotonic()
    with pytest.raises(KafkaStartError, match="127.0.0.1:1 did not answer.*refused"):
        check_reachable(KafkaClientConfig("127.0.0.1:1"), timeout=1.0)
    assert time.monotonic() - started < 3


def test_a_reachable_cluster_counts_its_brokers(kafka):
    assert check_reachable(KafkaClientConfig(kafka)) >= 1


def test_a_refused_topic_leaves_none_of_them_created(kafka, topic_prefix):
    """The cluster validates all missing topics before any is created."""
    client = KafkaClientConfig(kafka)
    brokers = check_reachable(client)
    wanted = {topic_prefix + "fine": 1, topic_prefix + "too-many-replicas": 1}
    with pytest.raises(KafkaStartError, match="refused topic"):
        ensure_topics(client, wanted, replication_factor=brokers + 1)
    existing = AdminClient(client.admin()).list_topics(timeout=10).topics
    assert not [t for t in existing if t.startswith(topic_prefix)]


def test_the_producer_never_gives_a_tick_up_while_kafka_is_away():
    """librdkafka's default delivery timeout (300 s) fails every queued record in an outage,
    and the reader then discards the feed; records wait for as long as it takes instead."""
    assert KafkaClientConfig("127.0.0.1:1").producer()["message.timeout.ms"] == 0

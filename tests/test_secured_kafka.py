"""The handler against a Kafka that wants SASL or TLS, for real: the secured single node of
`scripts/kafka.sh start --secure` (SASL_PLAINTEXT with PLAIN and SCRAM-SHA-512 users, SSL and
SASL_SSL with a throw-away CA), started once for the session on ports of its own.

Right settings land every tick (every client the handler makes takes the same `-X` settings:
the reachability probe, the topic admin, the checkpoint reader, the producer); wrong ones fail
fast with one line and exit 3, and leave no topic behind."""

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka.admin import AdminClient

from faults.checker import check_topics
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.kafka.config import KafkaClientConfig
from feedhandler.kafka.routing import Routes
from feedhandler.kafka.topics import KafkaStartError, check_reachable
from test_cli_errors import assert_refused, run_refused
from test_handler import ROOT, final_account, run_cli

pytestmark = pytest.mark.kafka

COUNT = 5_000
SYMBOLS = 20


@dataclass
class SecuredKafka:
    """What `kafka.sh start --secure` prints (KAFKA_SECURE_* assignments), as client settings."""

    env: dict
    plaintext_status: str = ""      # `kafka.sh status` of the plaintext node before the start
    modes: dict = field(init=False)

    def __post_init__(self):
        env = self.env
        plain = {"sasl.mechanism": "PLAIN", "sasl.username": env["KAFKA_SECURE_PLAIN_USER"],
                 "sasl.password": env["KAFKA_SECURE_PLAIN_PASSWORD"]}
        scram = {"sasl.mechanism": "SCRAM-SHA-512",
                 "sasl.username": env["KAFKA_SECURE_SCRAM_USER"],
                 "sasl.password": env["KAFKA_SECURE_SCRAM_PASSWORD"]}
        tls = {"ssl.ca.location": env["KAFKA_SECURE_CA"]}
        # mode: (bootstrap servers, client settings)
        self.modes = {
            "sasl-plain": (env["KAFKA_SECURE_SASL_PLAINTEXT"],
                           {"security.protocol": "SASL_PLAINTEXT", **plain}),
            "sasl-scram": (env["KAFKA_SECURE_SASL_PLAINTEXT"],
                           {"security.protocol": "SASL_PLAINTEXT", **scram}),
            "ssl": (env["KAFKA_SECURE_SSL"], {"security.protocol": "SSL", **tls}),
            "sasl-ssl-scram": (env["KAFKA_SECURE_SASL_SSL"],
                               {"security.protocol": "SASL_SSL", **tls, **scram}),
        }

    def topics_with(self, prefix: str) -> list[str]:
        """The topics named `prefix`..., listed with the right credentials."""
        bootstrap, settings = self.modes["sasl-scram"]
        listed = AdminClient({**settings, "bootstrap.servers": bootstrap}).list_topics(timeout=10)
        return sorted(t for t in listed.topics if t.startswith(prefix))


@pytest.fixture(scope="session")
def secured_kafka():
    """The secured single node, started fresh for the session and stopped after it (about
    20 s; its own state dir and ports: the plaintext broker is never touched)."""
    script = str(ROOT / "scripts" / "kafka.sh")
    plaintext = subprocess.run(["bash", script, "status"], capture_output=True, text=True,
                               timeout=60).stdout
    result = subprocess.run(["bash", script, "start", "--secure"], capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        message = f"could not start the secured Kafka node: {result.stderr[-2000:]}"
        if os.environ.get("FEEDHANDLER_REQUIRE_KAFKA"):
            pytest.fail(message)
        pytest.skip(message)
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    try:
        yield SecuredKafka(env, plaintext)
    finally:
        subprocess.run(["bash", script, "stop", "--secure"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def simulator():
    sim = Simulator(SimulatorConfig(port=0, count=COUNT, symbols=SYMBOLS, seed=5,
                                    status_interval=None)).start()
    yield sim
    sim.stop()


def x_options(settings: dict) -> list[str]:
    return [option for key, value in settings.items() for option in ("-X", f"{key}={value}")]


def run_handler(simulator, bootstrap, settings, prefix, *arguments):
    handler = run_cli("run", "--connect", f"127.0.0.1:{simulator.port}", "--bootstrap-servers",
                      bootstrap, "--topic-prefix", prefix, "--partitions", "2", "--json-stats",
                      *x_options(settings), *arguments)
    stdout, stderr = handler.communicate(timeout=180)
    assert handler.returncode == ExitCode.OK, stderr[-3000:]
    return final_account(stdout)


@pytest.mark.parametrize(("mode", "arguments"), [
    ("sasl-plain", []), ("sasl-scram", []), ("ssl", []), ("sasl-ssl-scram", []),
    ("sasl-ssl-scram", ["--exactly-once"]),
], ids=["sasl-plain", "sasl-scram", "ssl", "sasl-ssl-scram", "sasl-ssl-scram-exactly-once"])
def test_every_tick_lands_over_a_secured_listener(secured_kafka, simulator, topic_prefix, mode,
                                                  arguments):
    """Every client takes the settings: the probe, the topic admin, the checkpoint reader, the
    producer (with --exactly-once: transactional, fencing an earlier instance first)."""
    bootstrap, settings = secured_kafka.modes[mode]
    account = run_handler(simulator, bootstrap, settings, topic_prefix, *arguments)
    assert account["delivered"] == COUNT and account["lost"] == 0
    routes = Routes.by_category(topic_prefix)
    check = check_topics(bootstrap, routes, "struct", expected=range(1, COUNT + 1),
                         settings=settings)
    assert check.ok, check.summary()
    assert routes.checkpoint in secured_kafka.topics_with(topic_prefix)


def test_a_rerun_reads_the_checkpoint_and_partition_ends_over_sasl_ssl(
        secured_kafka, simulator, topic_prefix):
    """The second run's checkpoint reader and partition-end consumer take the -X settings too:
    they find every tick already in Kafka, and nothing is written twice."""
    bootstrap, settings = secured_kafka.modes["sasl-ssl-scram"]
    run_handler(simulator, bootstrap, settings, topic_prefix)
    again = run_handler(simulator, bootstrap, settings, topic_prefix, "--sequence", "1")
    assert again["already_in_kafka"] == COUNT and again["produced"] == 0, again
    check = check_topics(bootstrap, Routes.by_category(topic_prefix), "struct",
                         expected=range(1, COUNT + 1), settings=settings)
    assert check.ok, check.summary()


def wrong(secured_kafka, mode, **changes):
    bootstrap, settings = secured_kafka.modes[mode]
    settings = {**settings, **changes}
    return bootstrap, {key: value for key, value in settings.items() if value is not None}


@pytest.mark.parametrize(("mode", "changes", "complaint"), [
    ("sasl-plain", {"sasl.password": "wrong"}, "SASL authentication error.*Invalid username or"),
    ("sasl-plain", {"sasl.username": "nobody"}, "SASL authentication error.*Invalid username or"),
    ("sasl-scram", {"sasl.password": "wrong"}, "SASL authentication error.*invalid credentials"),
    ("sasl-scram", {"sasl.username": "nobody"}, "SASL authentication error.*invalid credentials"),
    ("sasl-scram", {"sasl.mechanism": "SCRAM-SHA-256"}, "SCRAM-SHA-256.*not enabled|"
                                                       "Unsupported SASL mechanism"),
    ("ssl", {"ssl.ca.location": None}, "certificate verify failed"),
    ("sasl-ssl-scram", {"ssl.ca.location": None}, "certificate verify failed"),
], ids=["plain-password", "plain-user", "scram-password", "scram-user", "scram-mechanism",
        "ssl-untrusted", "sasl-ssl-untrusted"])
def test_wrong_credentials_exit_3_at_once_and_create_nothing(secured_kafka, topic_prefix, mode,
                                                              changes, complaint):
    bootstrap, settings = wrong(secured_kafka, mode, **changes)
    result = run_refused(bootstrap, topic_prefix, *x_options(settings), bootstrap=bootstrap)
    returncode, lines, seconds = result
    assert returncode == ExitCode.COULD_NOT_START, lines[-20:]
    assert len(lines) == 1 and lines[0].startswith(f"feedhandler run: Kafka at {bootstrap} "), lines
    assert re.search(complaint, lines[0]), lines
    assert secured_kafka.topics_with(topic_prefix) == []
    assert seconds < 15


def test_a_certificate_from_another_ca_is_refused(secured_kafka, topic_prefix, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca),
                    "-subj", "/CN=another CA"], check=True, capture_output=True)
    bootstrap, settings = wrong(secured_kafka, "ssl", **{"ssl.ca.location": str(other_ca)})
    result = run_refused(bootstrap, topic_prefix, *x_options(settings), bootstrap=bootstrap)
    assert result[0] == ExitCode.COULD_NOT_START and len(result[1]) == 1, result[1][-20:]
    assert "certificate verify failed" in result[1][0]
    assert secured_kafka.topics_with(topic_prefix) == []


def test_ssl_to_a_plaintext_listener_exits_3(kafka, secured_kafka, topic_prefix):
    _, settings = secured_kafka.modes["ssl"]
    result = run_refused(kafka, topic_prefix, *x_options(settings))
    assert_refused(kafka, topic_prefix, result, ExitCode.COULD_NOT_START,
                   "SSL handshake failed.*PLAINTEXT broker listener")


@pytest.mark.parametrize(("listener", "settings"), [
    ("KAFKA_SECURE_SSL", {}),
    ("KAFKA_SECURE_SASL_PLAINTEXT", {}),
    ("KAFKA_SECURE_SSL", {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                          "sasl.username": "u", "sasl.password": "p"}),
], ids=["plaintext-to-ssl", "plaintext-to-sasl", "sasl-to-ssl"])
def test_the_wrong_security_protocol_is_named(secured_kafka, listener, settings):
    """A broker listener of another protocol hangs up without a word; the reason says what
    that likely means instead of librdkafka's 'Broker transport failure'."""
    bootstrap = secured_kafka.env[listener]
    protocol = settings.get("security.protocol", "PLAINTEXT")
    with pytest.raises(KafkaStartError) as refused:
        check_reachable(KafkaClientConfig(bootstrap, settings), timeout=1)
    line = str(refused.value)
    assert line.startswith(f"Kafka at {bootstrap} did not answer: "), line
    assert "connection closed by peer" in line, line
    assert f"security.protocol other than {protocol}" in line, line


def test_plaintext_to_a_tls_listener_exits_3(secured_kafka, topic_prefix):
    bootstrap = secured_kafka.env["KAFKA_SECURE_SSL"]
    returncode, lines, _ = run_refused(bootstrap, topic_prefix, bootstrap=bootstrap)
    assert returncode == ExitCode.COULD_NOT_START and len(lines) == 1, lines[-20:]
    assert "security.protocol other than PLAINTEXT" in lines[0], lines
    assert secured_kafka.topics_with(topic_prefix) == []


@pytest.mark.parametrize("mode", ["ssl-to-plaintext", "sasl-untrusted"])
def test_a_final_refusal_does_not_wait_out_the_probe(kafka, secured_kafka, mode):
    """An SSL handshake that fails, or a refused login, cannot be cured by retrying: the probe
    stops at the first one however long it was given."""
    if mode == "ssl-to-plaintext":
        client = KafkaClientConfig(kafka, secured_kafka.modes["ssl"][1])
    else:
        client = KafkaClientConfig(*wrong(secured_kafka, "sasl-ssl-scram",
                                          **{"ssl.ca.location": None}))
    started = time.monotonic()
    with pytest.raises(KafkaStartError, match="SSL handshake failed"):
        check_reachable(client, timeout=30)
    assert time.monotonic() - started < 5


def test_the_probe_keeps_librdkafkas_log_off_the_terminal(secured_kafka, capfd):
    bootstrap = secured_kafka.env["KAFKA_SECURE_SSL"]
    with pytest.raises(KafkaStartError):
        check_reachable(KafkaClientConfig(bootstrap), timeout=2)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_silent_bootstrap_is_named_within_the_probe_time():
    """A port that accepts connections and never answers (a hung broker, a wrong service)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        bootstrap = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(KafkaStartError, match=f"Kafka at {bootstrap} did not answer: "
                                                  "no answer within 2 s"):
            check_reachable(KafkaClientConfig(bootstrap), timeout=2)
        assert time.monotonic() - started < 5



def test_the_secured_node_leaves_the_plaintext_one_alone(kafka, secured_kafka):
    """Started, it did not stop or restart the shared plaintext broker (same pid, still ready);
    --secure never goes with the cluster or the commands that ask the plaintext node."""
    script = str(ROOT / "scripts" / "kafka.sh")
    now = subprocess.run(["bash", script, "status"], capture_output=True, text=True, timeout=60)
    assert now.returncode == 0 and now.stdout == secured_kafka.plaintext_status, now.stdout
    for refused in (["start", "--secure", "--cluster"], ["create-topic", "--secure", "x"]):
        result = subprocess.run(["bash", script, *refused], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1 and "--secure" in result.stderr, result.stderr

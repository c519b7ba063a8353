"""Settings from flags, FEEDHANDLER_* variables, a TOML file (--config) and defaults
(feedhandler.cli.config): precedence per kind of option, secrets, one-line errors, the
generated reference, and a real run configured by a file."""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib

import pytest

from brokers import kcat_count
from feedhandler.cli import build_parser, config
from feedhandler.cli.exit_codes import ExitCode
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.kafka.routing import Routes
from test_handler import ROOT, final_account

EXAMPLE = ROOT / "docs" / "feedhandler.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"
SECRET = "s3cr3t-pw"        # fits the feed's 10 characters
KAFKA_SECRET = "kafka-pw-77"


def effective(tmp_path, argv=(), environ=None, toml=None, command="run"):
    """The resolved namespace of `feedhandler COMMAND [--config FILE] ARGV` (a run that names
    no feed gets FEEDHANDLER_LISTEN)."""
    parser, tables = build_parser()
    environ = dict(environ or {})
    if command == "run" and not re.search("connect|listen", f"{argv}{environ}{toml}", re.I):
        environ["FEEDHANDLER_LISTEN"] = "127.0.0.1:0"
    if toml is not None:
        path = tmp_path / "feedhandler.toml"
        path.write_text(toml)
        path.chmod(0o600)
        argv = ["--config", str(path), *argv]
    args = parser.parse_args([command, *argv])
    config.resolve(tables[command], args, environ)
    return args


def secret_file(tmp_path, text, name="secret", mode=0o600):
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def cli(*args, env=None, timeout=60):
    """Run `python -m feedhandler ARGS`: (exit status, stdout, stderr lines)."""
    result = subprocess.run([sys.executable, "-m", "feedhandler", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr.splitlines()


# ---- the option table -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "simulate"])
def test_every_flag_is_a_key_with_a_variable_of_its_own(command):
    """Derived from the parser: a flag any branch adds is a key without a second list."""
    parser = argparse.ArgumentParser()
    from feedhandler.cli import SUBCOMMANDS, logs
    SUBCOMMANDS[command][0](parser)
    logs.add_arguments(parser)
    flags = {f for a in parser._actions
             if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
             for f in a.option_strings}
    table = config.make_configurable(command, parser)
    covered = {f for option in table.options for f in option.flags}
    assert flags - covered == ({"-X"} if command == "run" else set())
    assert table.kafka == (command == "run")
    names = [o.env for o in table.options] + [o.env + "_FILE" for o in table.options
                                              if o.secret]
    assert len(names) == len(set(names))
    assert {o.key for o in table.options if o.secret} == {"password"}


# ---- precedence: flag > environment > file > default, per kind -----------------------------

@pytest.mark.parametrize("places, expected", [
    ({}, 2),
    ({"file": 3}, 3),
    ({"file": 3, "env": "4"}, 4),
    ({"file": 3, "env": "4", "flag": "5"}, 5),
    ({"env": "4", "flag": "5"}, 5),
])
def test_a_scalar_comes_from_the_highest_place(tmp_path, places, expected):
    args = effective(tmp_path, ["--workers", places["flag"]] if "flag" in places else [],
                     {"FEEDHANDLER_WORKERS": places["env"]} if "env" in places else {},
                     f"workers = {places['file']}\n" if "file" in places else "")
    assert args.workers == expected
    where = ("--workers" if "flag" in places else "FEEDHANDLER_WORKERS" if "env" in places
             else "feedhandler.toml" if "file" in places else "default")
    assert args.configuration.origins["workers"].endswith(where)


def test_the_file_can_be_named_by_a_variable(tmp_path):
    named, given = tmp_path / "named.toml", tmp_path / "given.toml"
    named.write_text("workers = 7\n")
    given.write_text("workers = 8\n")
    assert effective(tmp_path, [], {"FEEDHANDLER_CONFIG": str(named)}).workers == 7
    assert effective(tmp_path, ["--config", str(given)],
                     {"FEEDHANDLER_CONFIG": str(named)}).workers == 8


@pytest.mark.parametrize("file, env, flag, expected", [
    (None, None, False, False),
    (True, None, False, True),
    (True, "false", False, False),      # a variable switches a file's true off
    (False, "yes", False, True),
    (False, "0", True, True),           # a flag can only switch on
])
def test_a_switch_comes_from_the_highest_place(tmp_path, file, env, flag, expected):
    args = effective(tmp_path, ["--headers"] if flag else [],
                     {"FEEDHANDLER_HEADERS": env} if env else {},
                     "" if file is None else f"headers = {str(file).lower()}\n")
    assert args.headers is expected


def test_key_value_lists_merge_key_by_key(tmp_path):
    args = effective(tmp_path, ["--route", "P=flagged"], {"FEEDHANDLER_ROUTE": "A=fromenv"},
                     'route = { A = "fromfile", P = "fromfile", trades = "fills" }\n')
    assert dict(args.route) == {"A": "fromenv", "P": "flagged", "trades": "fills"}
    assert effective(tmp_path, toml='route = ["A=x", "B=y"]\n').route == [("A", "x"),
                                                                         ("B", "y")]
    assert effective(tmp_path, toml="").route == []


def test_kafka_settings_merge_setting_by_setting(tmp_path):
    toml = '[kafka]\n"linger.ms" = 5\nbatch.size = 1000\n"client.id" = "from-file"\n'
    environ = {"FEEDHANDLER_LIBRDKAFKA_LINGER_MS": "6",
               "FEEDHANDLER_LIBRDKAFKA_CLIENT_ID": "from-env"}
    args = effective(tmp_path, ["-X", "linger.ms=7"], environ, toml)
    assert dict(args.producer_settings) == {"linger.ms": "7", "batch.size": "1000",
                                            "client.id": "from-env"}
    assert dict(effective(tmp_path, [], environ, toml).producer_settings)["linger.ms"] == "6"


@pytest.mark.parametrize("argv, environ, toml, expected", [
    ([], {}, '[kafka]\nbootstrap.servers = "file:1"\n', "file:1"),
    ([], {"FEEDHANDLER_LIBRDKAFKA_BOOTSTRAP_SERVERS": "env:1"},
     'bootstrap-servers = "file:1"\n', "env:1"),
    ([], {"FEEDHANDLER_BOOTSTRAP_SERVERS": "env:2"}, '[kafka]\nbootstrap.servers = "f:1"\n',
     "env:2"),
    (["-X", "bootstrap.servers=flag:1"], {"FEEDHANDLER_BOOTSTRAP_SERVERS": "env:2"}, "",
     "flag:1"),
    ([], {}, "", "127.0.0.1:19092"),
], ids=["kafka-table", "kafka-variable", "variable", "x-flag", "default"])
def test_bootstrap_servers_is_one_setting_under_every_name(tmp_path, argv, environ, toml,
                                                           expected):
    args = effective(tmp_path, argv, environ, toml)
    assert args.bootstrap_servers == expected
    assert "bootstrap.servers" not in dict(args.producer_settings)


def test_the_highest_place_that_names_a_feed_decides_it(tmp_path):
    args = effective(tmp_path, ["--listen", "127.0.0.1:7"], {}, 'connect = "127.0.0.1:6"\n')
    assert args.listen == ("127.0.0.1", 7) and args.connect is None
    args = effective(tmp_path, [], {"FEEDHANDLER_CONNECT": "127.0.0.1:8"},
                     'listen = "127.0.0.1:6"\n')
    assert args.connect == ("127.0.0.1", 8) and args.listen is None


def test_defaults_and_file_values_take_the_flags_types(tmp_path):
    args = effective(tmp_path, toml='connect = "h:1"\ntrade-date = 2026-03-02\n'
                                   "stall_timeout = 3\nmax-reconnects = 4\n")
    assert args.connect == ("h", 1) and args.stall_timeout == 3.0
    assert str(args.trade_date) == "2026-03-02" and args.max_reconnects == 4
    assert args.session == "" and args.format == "struct" and args.sequence is None
    sim = effective(tmp_path, ["--listen", "127.0.0.1:0"], {"FEEDHANDLER_SESSION": "S1"},
                    "password = 'pw'\ncount = 10\n", command="simulate")
    assert sim.session == b"S1" and sim.password == b"pw" and sim.count == 10
    assert sim.username == b"feed"


# ---- secrets ----------------------------------------------------------------------------------

def test_secrets_come_from_files_or_variables_and_lower_files_are_not_read(tmp_path):
    feed = secret_file(tmp_path, SECRET, "feed")
    kafka = secret_file(tmp_path, KAFKA_SECRET, "kafka")
    toml = (f'password-file = "{feed}"\n[kafka]\n"sasl.password.file" = "{kafka}"\n')
    args = effective(tmp_path, [], {}, toml)
    assert args.password == SECRET
    assert dict(args.producer_settings)["sasl.password"] == KAFKA_SECRET
    # a variable wins; the file's secret file, which does not exist here, is never read
    missing = f'password_file = "{tmp_path}/absent"\n[kafka]\nsasl.password.file = "/absent"\n'
    args = effective(tmp_path, [], {"FEEDHANDLER_PASSWORD_FILE": str(feed),
                                    "FEEDHANDLER_LIBRDKAFKA_SASL_PASSWORD": "direct"}, missing)
    assert args.password == SECRET and dict(args.producer_settings)["sasl.password"] == "direct"
    assert args.configuration.warnings == []


def test_config_check_masks_every_secret_and_warns_of_readable_secret_files(tmp_path):
    feed = secret_file(tmp_path, SECRET, "feed", mode=0o644)
    path = tmp_path / "c.toml"
    path.write_text(f'listen = "127.0.0.1:0"\npassword-file = "{feed}"\n'
                    f'[kafka]\n"sasl.password" = "{KAFKA_SECRET}"\n')
    path.chmod(0o640)
    status, out, err = cli("config", "check", str(path))
    assert status == ExitCode.OK, err
    assert SECRET not in out + "".join(err) and KAFKA_SECRET not in out + "".join(err)
    shown = tomllib.loads(out)
    assert shown["password"] == "***" and shown["kafka"]["sasl.password"] == "***"
    assert shown["listen"] == "127.0.0.1:0"
    assert len(err) == 2 and all("readable by group or others" in line for line in err), err
    assert any(f"{feed} holds a secret (mode 0644)" in line for line in err), err
    assert any("c.toml holds sasl.password in clear" in line and "(mode 0640)" in line
               for line in err), err


def test_config_check_output_is_the_toml_of_the_effective_settings(tmp_path):
    feed = secret_file(tmp_path, SECRET)
    status, out, err = cli("config", "check", str(EXAMPLE), "--workers", "5",
                           env={"FEEDHANDLER_PASSWORD_FILE": str(feed),
                                "FEEDHANDLER_LIBRDKAFKA_SASL_PASSWORD": KAFKA_SECRET,
                                "FEEDHANDLER_FORMAT": "raw"})
    assert status == ExitCode.OK and err == []
    shown = tomllib.loads(out)
    example = tomllib.loads(EXAMPLE.read_text())
    assert shown["workers"] == 5 and shown["format"] == "raw"
    assert shown["connect"] == example["connect"] and shown["route"] == example["route"]
    assert shown["bootstrap-servers"] == example["kafka"]["bootstrap.servers"]
    assert shown["kafka"]["acks"] == "all"          # the handler's default, shown
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert lines["workers"].endswith("# --workers")
    assert lines["format"].endswith("# FEEDHANDLER_FORMAT")
    assert lines["password"].endswith("# FEEDHANDLER_PASSWORD_FILE")


def test_config_check_checks_a_simulator_file_too(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text('listen = "127.0.0.1:0"\nrate = 1000\nburst = 4\nexit-after-end = true\n')
    status, out, err = cli("config", "check", "--command", "simulate", str(path))
    assert status == ExitCode.OK and err == []
    shown = tomllib.loads(out)
    assert shown["burst"] == 4.0 and shown["exit-after-end"] is True and "kafka" not in shown
    path.write_text("burst = 0.5\n")           # SimulatorConfig's own check
    status, out, err = cli("config", "check", "--command", "simulate", str(path))
    assert status == ExitCode.USAGE and err == [
        f"feedhandler config check: rate must be >= 0 and burst >= 1 (burst from {path})"], err


def test_the_variables_of_scripts_kafka_sh_are_left_alone(tmp_path):
    """scripts/kafka.sh owns FEEDHANDLER_KAFKA_*: an operator who exported one for the broker
    can still run the handler."""
    owned = set(re.findall(r"FEEDHANDLER_KAFKA_[A-Z_]+",
                           (ROOT / "scripts" / "kafka.sh").read_text()))
    assert "FEEDHANDLER_KAFKA_PORT" in owned
    args = effective(tmp_path, [], dict.fromkeys(owned, "29092"), "")
    assert all(not key.startswith("port") for key, _ in args.producer_settings)
    _, tables = build_parser()
    assert not any(o.env.startswith("FEEDHANDLER_KAFKA_")
                   for table in tables.values() for o in table.options)


def test_the_example_file_passes_config_check(tmp_path):
    status, out, err = cli("config", "check", str(EXAMPLE), env={
        "FEEDHANDLER_PASSWORD_FILE": str(secret_file(tmp_path, SECRET)),
        "FEEDHANDLER_LIBRDKAFKA_SASL_PASSWORD_FILE": str(secret_file(tmp_path, KAFKA_SECRET,
                                                                     "k"))})
    assert status == ExitCode.OK, err
    assert err == [] and 'password = "***"' in out


def test_a_secret_is_kept_out_of_error_lines(tmp_path):
    too_long = "elevenchars"
    path = secret_file(tmp_path, too_long)
    status, _, err = cli("simulate", "--listen", "127.0.0.1:0",
                         env={"FEEDHANDLER_PASSWORD_FILE": str(path)})
    assert status == ExitCode.USAGE and len(err) == 1, err
    assert "password must be at most 10" in err[0] and too_long not in err[0]
    status, _, err = cli("simulate", env={"FEEDHANDLER_PASSWORD": "pässwörd"})
    assert status == ExitCode.USAGE and len(err) == 1, err
    assert "FEEDHANDLER_PASSWORD" in err[0] and "pässwörd" not in err[0]


# ---- one-line errors ----------------------------------------------------------------------------

ERRORS = [
    ('workrs = 3', {}, r'c\.toml: unknown key "workrs" \(did you mean "workers"\?\)'),
    ('[kafka]\nboostrap.servers = "x:1"',
     {}, r'c\.toml: \[kafka\] unknown key "boostrap.servers" \(did you mean '
         r'"bootstrap.servers"\?\)'),
    ('workers = "two"', {}, r"c\.toml: workers: invalid int value: 'two'"),
    ('workers = true', {}, r"c\.toml: workers: expected integer, got a boolean"),
    ('format = "strukt"', {}, r"c\.toml: format: invalid choice: 'strukt' .*did you mean "
                              r"'struct'"),
    ('connect = "nowhere"', {}, r"c\.toml: connect: expected HOST:PORT, got 'nowhere'"),
    ('headers = "yes"', {}, r"c\.toml: headers: expected true or false"),
    ('workers = = 1', {}, r"c\.toml: not valid TOML: .*line 2"),
    ('kafka = "x"', {}, r"c\.toml: \[kafka\] must be a table"),
    ('password-file = "/nonexistent/feed"', {},
     r"c\.toml: password-file: cannot read /nonexistent/feed: No such file"),
    ('connect = "h:1"', {}, r"c\.toml: connect and listen exclude each other"),
    ('', {"FEEDHANDLER_WORKERS": "many"}, r"FEEDHANDLER_WORKERS: invalid int value: 'many'"),
    ('', {"FEEDHANDLER_LIBRDKAFKA_LINGERMS": "5"},
     r"FEEDHANDLER_LIBRDKAFKA_LINGERMS: unknown librdkafka setting \(did you mean "
     r"FEEDHANDLER_LIBRDKAFKA_LINGER_MS\?\)"),
    ('workers = 0', {}, r"--workers must be at least 1, not 0 \(workers from .*c\.toml\)"),
    ('route = { A = "Bad/Topic" }', {}, r"Bad/Topic.* not legal.* \(route from .*c\.toml\)"),
    ('[kafka]\nlinger.ms = "soon"', {},
     r"Invalid value .*queue.buffering.max.ms.*\(\[kafka\] linger.ms from .*c\.toml\)"),
]


@pytest.mark.parametrize("command", ["run", "config check"])
@pytest.mark.parametrize("toml, environ, complaint", ERRORS,
                         ids=["unknown-key", "unknown-kafka-key", "not-an-int", "bool-for-int",
                              "bad-choice", "bad-host-port", "bad-switch", "not-toml",
                              "kafka-not-a-table", "no-secret-file", "exclusive", "bad-variable",
                              "unknown-kafka-variable", "checked-count", "checked-route",
                              "librdkafka-value"])
def test_a_bad_setting_is_one_line_naming_key_and_place(tmp_path, command, toml, environ,
                                                        complaint):
    path = tmp_path / "c.toml"
    path.write_text(f'listen = "127.0.0.1:0"\n{toml}\n')
    arguments = (["run", "--config", str(path), "--quiet"] if command == "run"
                 else ["config", "check", str(path)])
    status, out, err = cli(*arguments, env=environ)
    assert status == ExitCode.USAGE, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"feedhandler {command}: "), err
    assert re.search(complaint, err[0]), err
    assert out == ""


def test_a_missing_feed_is_one_line_naming_every_place(tmp_path):
    status, _, err = cli("run", "--bootstrap-servers", "127.0.0.1:1")
    assert status == ExitCode.USAGE and len(err) == 1, err
    assert "one of --connect, --listen is required" in err[0]
    assert "FEEDHANDLER_CONNECT" in err[0]


def test_a_bootstrap_server_given_with_x_is_used(kafka, topic_prefix):
    """-X bootstrap.servers used to be overridden silently by the default --bootstrap-servers."""
    with socket.create_server(("127.0.0.1", 0)) as free:
        port = free.getsockname()[1]
    status, _, err = cli("run", "--listen", f"127.0.0.1:{port}", "--topic-prefix", topic_prefix,
                         "-X", "bootstrap.servers=127.0.0.1:1", "--quiet", timeout=30)
    assert status == ExitCode.COULD_NOT_START, err
    assert len(err) == 1 and err[0].startswith(
        "feedhandler run: Kafka at 127.0.0.1:1 did not answer"), err


# ---- the reference ------------------------------------------------------------------------------

def test_the_configuration_reference_is_current():
    """docs/configuration.md is `python -m feedhandler config reference` (regenerate it after
    adding or changing a flag)."""
    status, out, err = cli("config", "reference")
    assert status == ExitCode.OK, err
    assert out == REFERENCE.read_text(), \
        "stale: python -m feedhandler config reference > docs/configuration.md"


def test_the_reference_names_every_key_and_variable():
    _, tables = build_parser()
    page = REFERENCE.read_text()
    for table in tables.values():
        for option in table.options:
            assert f"| `{option.key}`" in page and f"`{option.env}`" in page, option.key


# ---- a real run configured by a file ------------------------------------------------------------

COUNT = 30_000


@pytest.fixture
def paced_simulator():
    """A session paced over 6 s from the simulator's start, so that the handler, which
    starts a second or two later, prints status lines."""
    simulator = Simulator(SimulatorConfig(port=0, count=COUNT, symbols=20, seed=3,
                                          password=SECRET.encode(), rate=5_000,
                                          status_interval=None)).start()
    yield simulator
    simulator.stop()


def test_a_run_from_a_config_file_lands_every_tick(kafka, topic_prefix, tmp_path,
                                                   paced_simulator):
    feed = secret_file(tmp_path, SECRET, "feed")
    path = tmp_path / "feedhandler.toml"
    path.write_text(f'connect = "127.0.0.1:{paced_simulator.port}"\n'
                    f'password-file = "{feed}"\n'
                    f'topic-prefix = "{topic_prefix}"\npartitions = 2\nworkers = 1\n'
                    'json-stats = true\nlog-format = "json"\nlog-level = "debug"\n'
                    f'[kafka]\nbootstrap.servers = "127.0.0.1:1"\n"linger.ms" = 5\n'
                    'debug = "broker"\n')
    path.chmod(0o600)
    # the variable overrides the file's unreachable broker
    status, out, err = cli("run", "--config", str(path), "--workers", "2",
                           env={"FEEDHANDLER_BOOTSTRAP_SERVERS": kafka}, timeout=120)
    assert status == ExitCode.OK, err[-20:]
    account = final_account(out)
    assert account["delivered"] == COUNT and account["lost"] == 0
    routes = Routes.by_category(topic_prefix)
    assert sum(kcat_count(kafka, topic) for topic in routes.topics) == COUNT
    # every stderr line is a JSON log record; librdkafka's own among them
    records = [json.loads(line) for line in err]
    assert {"timestamp", "level", "logger", "message"} <= set(records[0])
    librdkafka = [r for r in records if r["logger"] == "librdkafka"]
    assert librdkafka and {"facility", "client"} <= set(librdkafka[0])
    final = [r for r in records if r["message"] == "final account"]
    assert len(final) == 1 and final[0]["delivered"] == COUNT and final[0]["lost"] == 0
    assert SECRET not in out + "".join(err)
    # status lines: a timestamp and running totals
    statuses = [json.loads(line) for line in out.splitlines() if '"final"' not in line]
    assert statuses, out
    for status_line in statuses:
        assert time.strptime(status_line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert status_line["messages"] <= COUNT and status_line["lost"] == 0
        assert {"frames", "produced", "delivered", "failed", "missing"} <= set(status_line)
    assert [s["messages"] for s in statuses] == sorted(s["messages"] for s in statuses)

"""Running as a service (feedhandler.ops): systemd notifications over a real unix datagram
socket from the real `feedhandler run`, the watchdog, SIGHUP, OS thread names, --cpus and
--version."""

import os
import threading
import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from types import SimpleNamespace

import pytest

from feedhandler.cli.exit_codes import ExitCode
from feedhandler.cli import add_run_arguments
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.ops import service, threads
from feedhandler.ops.version import package_version
from test_cli_errors import assert_refused, free_port, run_refused
from test_handler import ROOT, final_account, run_cli

CPUS = sorted(os.sched_getaffinity(0))


def notify_socket(address: str) -> socket.socket:
    """A datagram socket where systemd's would be: a path, or '@name' (abstract)."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + address[1:] if address.startswith("@") else address)
    receiver.settimeout(0.2)
    return receiver


def received(receiver: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(receiver.recv(4096).decode())
        except TimeoutError:
            return messages


def simulator(count: int, rate: float) -> Simulator:
    return Simulator(SimulatorConfig(port=0, count=count, symbols=40, seed=9, rate=rate,
                                     status_interval=None)).start()


def thread_named(pid: int, name: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [tid for tid, comm in threads.os_thread_names(pid).items() if comm == name]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no thread {name}: {threads.os_thread_names(pid)}")


# ---- sd_notify ------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_speaks_to_a_path_or_an_abstract_socket(tmp_path, abstract):
    address = f"@feedhandler-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    with notify_socket(address) as receiver:
        notifier = service.SystemdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
        notifier.send("READY=1", "STATUS=up")
        assert received(receiver) == ["READY=1\nSTATUS=up"]
        assert notifier.watchdog_interval == 2.0
    notifier.send("STATUS=nobody listens")      # logged, never raised


def test_watchdog_is_for_this_process_only():
    assert service.SystemdNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                                    "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert not service.SystemdNotifier({}).enabled


def test_a_wedged_publisher_stops_the_watchdog_pings(tmp_path):
    """Pings only while the publisher checks for acknowledgements; none once it stops."""
    address = str(tmp_path / "notify")
    acks = SimpleNamespace(checks=0, ticks=0, oldest_age_ms=lambda: 0.0)
    handler = SimpleNamespace(account=SimpleNamespace(messages=0), stopping=False,
                              sink=SimpleNamespace(ledger=SimpleNamespace(acks=acks)),
                              draining=SimpleNamespace(is_set=lambda: False))
    with notify_socket(address) as receiver:
        notifier = service.ServiceNotifier(
            service.SystemdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}),
            handler)
        notifier.start()
        for _ in range(10):             # a live publisher: 1 s of checks
            acks.checks += 1
            time.sleep(0.1)
        alive = received(receiver)
        time.sleep(1.0)                 # wedged: no check for 1 s
        wedged = received(receiver)
        notifier.done.set()
        notifier.join()
    assert alive[0] == "READY=1\nSTATUS=running"
    assert alive.count("WATCHDOG=1") >= 5
    assert "WATCHDOG=1" not in wedged


def test_a_real_run_notifies_ready_status_watchdog_and_stopping(kafka, topic_prefix, tmp_path,
                                                                monkeypatch):
    address = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", address)        # as systemd sets them
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    exchange = simulator(2_000_000, 100_000)
    try:
        with notify_socket(address) as receiver:
            process = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                              "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                              "--partitions", "2", "--json-stats")
            messages = []
            deadline = time.monotonic() + 30
            while not any(m.startswith("STATUS=in ") for m in messages):
                assert time.monotonic() < deadline and process.poll() is None, messages
                messages += received(receiver)
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=120)
            messages += received(receiver)
    finally:
        exchange.stop()
    assert process.returncode == ExitCode.OK, stderr
    assert messages[0] == "READY=1\nSTATUS=running", messages
    assert messages.count("WATCHDOG=1") >= 4        # every half second
    status = next(m for m in messages if m.startswith("STATUS=in "))
    assert re.fullmatch(r"STATUS=in [\d.]+k msg/s, delivered [\d.]+k/s, \d+ delivered in all, "
                        r"lag \d+ ms", status)
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping: SIGTERM"
    assert final_account(stdout)["lost"] == 0


# ---- signals --------------------------------------------------------------------------------
def test_sighup_keeps_the_handler_publishing_and_runs_the_reload_hooks(kafka, topic_prefix):
    count = 700_000
    exchange = simulator(count, 140_000)
    try:
        process = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "2", "--json-stats")
        thread_named(process.pid, "fh-publisher")
        time.sleep(1)
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        process.send_signal(signal.SIGHUP)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        exchange.stop()
    assert process.returncode == ExitCode.OK, stderr
    account = final_account(stdout)
    assert account["delivered"] == count and account["lost"] == 0       # went on to the end
    assert stderr.count("SIGHUP: reloading") == 2
    delivered_then = [int(n) for n in re.findall(r"account so far: .*\"delivered\": (\d+)",
                                                 stderr)]
    assert len(delivered_then) == 2 and 0 < delivered_then[0] < count


def test_reload_hooks_run_in_order_and_a_failing_one_is_only_logged(caplog):
    calls = []
    hooks = [lambda: calls.append(1), lambda: 1 / 0, lambda: calls.append(2)]
    saved = list(service._reload_hooks)
    try:
        service._reload_hooks.clear()
        for hook in hooks:
            service.on_reload(hook)
        service.reload()
    finally:
        service._reload_hooks[:] = saved
    assert calls == [1, 2]
    assert "SIGHUP" in caplog.text and "ZeroDivisionError" in caplog.text


# ---- threads and CPUs -----------------------------------------------------------------------
def test_threads_carry_their_role_in_the_kernels_name(kafka, topic_prefix):
    exchange = simulator(1_000_000, 150_000)
    port = free_port()
    try:
        process = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "2", "--workers", "3", "--metrics-port", str(port))
        thread_named(process.pid, "fh-metrics")
        thread_named(process.pid, "fh-decode-2")
        names = set(threads.os_thread_names(process.pid).values())
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        exchange.stop()
    assert process.returncode == ExitCode.OK, stderr
    assert {"fh-reader", "fh-publisher", "fh-decode-0", "fh-decode-1", "fh-decode-2",
            "fh-status", "fh-metrics"} <= names, names


def test_cpu_lists_parse_and_unknown_cpus_are_refused():
    assert threads.parse_cpus("0,1", {0, 1}) == {"process": {0, 1}}
    assert threads.parse_cpus("reader=0,decode=1+2,publisher=3-4", set(range(5))) == {
        "reader": {0}, "decode": {1, 2}, "publisher": {3, 4}}
    for text, complaint in (("9", r"CPU 9 is not available to this process \(it may use 0-1\)"),
                            ("writer=0", "unknown thread role 'writer'"),
                            ("zero", "expected CPU numbers"), ("3-1", "empty range"),
                            (",", "no CPU given")):
        with pytest.raises(ValueError, match=complaint):
            threads.parse_cpus(text, {0, 1})
    assert threads.format_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


def test_a_cpu_that_does_not_exist_exits_2_before_anything_is_created(kafka, topic_prefix):
    result = run_refused(kafka, topic_prefix, "--cpus", f"reader={max(CPUS) + 64}")
    assert_refused(kafka, topic_prefix, result, ExitCode.USAGE,
                   rf"--cpus: CPU {max(CPUS) + 64} is not available to this process")


@pytest.mark.parametrize("options", [["--profile", "latency"], ["--decode", "publisher"]])
def test_pinning_decode_threads_where_the_publisher_decodes_exits_2(kafka, topic_prefix, options):
    result = run_refused(kafka, topic_prefix, *options, "--cpus", f"decode={CPUS[0]}")
    assert_refused(kafka, topic_prefix, result, ExitCode.USAGE,
                   r"--cpus decode=\.\.\.: with --decode publisher \(the latency profile's\) no "
                   "thread decodes but the publisher; pin publisher= instead")


def per_thread_while_running(kafka, topic_prefix, look, *options):
    """Run the handler on a busy feed with `options`, take `look(tid)` of each of its threads
    by kernel name once every role runs, stop it with SIGTERM; (process, stdout, stderr,
    {name: look})."""
    exchange = simulator(1_000_000, 150_000)
    try:
        process = run_cli("run", "--connect", f"127.0.0.1:{exchange.port}",
                          "--bootstrap-servers", kafka, "--topic-prefix", topic_prefix,
                          "--partitions", "2", "--json-stats", *options)
        thread_named(process.pid, "fh-decode-1")
        looks = {name: look(tid) for tid, name in threads.os_thread_names(process.pid).items()}
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        exchange.stop()
    return process, stdout, stderr, looks


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_cpus_pins_each_role_to_its_cpus(kafka, topic_prefix):
    reader, other = CPUS[0], CPUS[1]
    process, stdout, stderr, masks = per_thread_while_running(
        kafka, topic_prefix, os.sched_getaffinity,
        "--cpus", f"reader={reader},decode={other},publisher={other}")
    assert process.returncode == ExitCode.OK, stderr
    assert masks["fh-reader"] == {reader}
    assert masks["fh-publisher"] == masks["fh-decode-0"] == masks["fh-decode-1"] == {other}
    assert masks["fh-status"] == set(CPUS)          # a role not named: the process's mask
    assert final_account(stdout)["lost"] == 0


def test_the_reader_gives_its_thread_back_as_it_found_it():
    before = (threads.os_thread_name(), os.sched_getaffinity(0))
    with threads.borrowed_thread("fh-reader", "reader", {"reader": frozenset(CPUS[:1])}):
        assert threads.os_thread_name() == "fh-reader"
        assert os.sched_getaffinity(0) == set(CPUS[:1])
    assert (threads.os_thread_name(), os.sched_getaffinity(0)) == before


def realtime_permitted() -> bool:
    try:
        threads.check_realtime(1)
    except PermissionError:
        return False
    return True


REALTIME = pytest.mark.skipif(not realtime_permitted(),
                              reason="SCHED_FIFO not permitted to this process")
NOT_PERMITTED = ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"]


@REALTIME
def test_the_reader_gives_its_scheduling_back():
    """Threads the main thread starts after the run (and librdkafka's, which the main thread's
    producers start) must not inherit the reader's real-time policy."""
    before = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    with threads.borrowed_thread("fh-reader", "reader", realtime_priority=7):
        assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == \
            (os.SCHED_FIFO, 7)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before


@REALTIME
def test_realtime_priority_schedules_the_handlers_threads_and_not_librdkafkas(kafka,
                                                                              topic_prefix):
    process, stdout, stderr, scheduling = per_thread_while_running(
        kafka, topic_prefix,
        lambda tid: (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority),
        "--realtime-priority", "3")
    assert process.returncode == ExitCode.OK, stderr
    for role in ("fh-reader", "fh-publisher", "fh-decode-0", "fh-decode-1"):
        assert scheduling[role] == (os.SCHED_FIFO, 3), (role, scheduling)
    others = {name: policy for name, policy in scheduling.items()
              if name.startswith("rdk:") or name == "fh-status"}
    assert any(name.startswith("rdk:broker") for name in others), scheduling
    assert set(others.values()) == {(os.SCHED_OTHER, 0)}, others
    assert final_account(stdout)["lost"] == 0


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_realtime_priority_not_permitted_exits_3_before_anything_is_created(kafka,
                                                                             topic_prefix):
    process = subprocess.run(
        [*NOT_PERMITTED, sys.executable, "-m", "feedhandler", "run", "--listen",
         f"127.0.0.1:{free_port()}", "--bootstrap-servers", kafka, "--topic-prefix",
         topic_prefix, "--quiet", "--realtime-priority", "5"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60)
    assert_refused(kafka, topic_prefix, (process.returncode, process.stderr.splitlines(), 0),
                   ExitCode.COULD_NOT_START,
                   r"--realtime-priority 5: this process may not use real-time scheduling "
                   r"\(it needs CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least 5\)")


@pytest.mark.parametrize("bad", ["0", "100", "-1", "high"])
def test_realtime_priority_out_of_range_exits_2(capsys, bad):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--connect", "127.0.0.1:1", "--realtime-priority", bad])
    assert exited.value.code == ExitCode.USAGE
    assert "--realtime-priority" in capsys.readouterr().err


# ---- version --------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [["--version"], ["version"]])
def test_version_names_every_part(how):
    result = subprocess.run([sys.executable, "-m", "feedhandler", *how], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    lines = result.stdout.splitlines()
    assert lines[0] == f"feedhandler {pyproject}"
    for part in ("python", "numpy", "confluent_kafka", "librdkafka"):
        assert re.search(rf"^  {part}\s+\d+\.\d+", result.stdout, re.MULTILINE), part
    for module in ("_decode", "_records", "_producer_link"):
        assert re.search(rf"^  {module}\s+ok$", result.stdout, re.MULTILINE), module


def test_package_version_is_pyprojects():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert package_version() == pyproject


# ---- the systemd unit -----------------------------------------------------------------------
UNIT = ROOT / "docs" / "feedhandler.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    text = UNIT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", "[")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_asks_for_notify_watchdog_restarts_limits_and_hardening():
    settings = unit_settings()
    for key, value in (("Type", "notify"), ("NotifyAccess", "main"), ("Restart", "on-failure"),
                       ("KillSignal", "SIGTERM"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("DynamicUser", "yes"),
                       ("CapabilityBoundingSet", ""),
                       ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX")):
        assert settings.get(key) == [value], key
    for key in ("WatchdogSec", "RestartSec", "StartLimitBurst", "LimitNOFILE", "MemoryMax",
                "ReadWritePaths"):
        assert key in settings, key
    # Every flag of ExecStart exists, and the stop timeout covers the flush: systemd's
    # SIGKILL must not cut a drain short.
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    command = settings["ExecStart"][0].split()
    assert command[1] == "run"
    args = parser.parse_args(command[2:])
    assert int(settings["TimeoutStopSec"][0].removesuffix("s")) > args.flush_timeout
    assert args.metrics_port


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    """With ExecStart pointing at this Python (verify wants an executable that exists)."""
    unit = tmp_path / "feedhandler.service"
    unit.write_text(UNIT.read_text().replace("/opt/feedhandler/venv/bin/feedhandler",
                                             f"{sys.executable} -m feedhandler"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("ended", [FileNotFoundError, ProcessLookupError])
def test_a_thread_that_ends_while_its_name_is_read_is_left_out(monkeypatch, ended):
    """A thread can end between the listing and the open (no file) or between the open and the
    read (the kernel answers ESRCH): either way it is left out, the others are named."""
    real_open = open
    me = threading.get_native_id()

    def vanishing(path, *args, **kwargs):
        if path.endswith(f"/task/{me}/comm"):
            raise ended(3, "gone")
        return real_open(path, *args, **kwargs)
    stay = threading.Event()
    other = threading.Thread(target=stay.wait, name="fh-other")
    other.start()
    try:
        monkeypatch.setattr("builtins.open", vanishing)
        names = threads.os_thread_names()
    finally:
        stay.set()
        other.join()
    assert me not in names and other.native_id in names

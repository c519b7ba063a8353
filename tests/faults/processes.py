"""`feedhandler run` and `feedhandler simulate` as real child processes.

    simulator = start_simulator("--count", "200000", "--exit-after-end")
    handler = start_handler("--connect", simulator.address, "--bootstrap-servers", bootstrap, ...)
    handler.wait_for_output(r"delivered", timeout=30)
    handler.kill9()
    assert handler.wait(timeout=10) == -9
    handler.peak_rss_bytes()

Output goes to files (a pipe nobody reads would block the child), read back with `output()`.
The children run with this checkout first on PYTHONPATH, so they use the code under test. Every
wait is bounded; `close()` (or the context manager) kills what is still running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def _status_value(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status, in bytes; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class ChildProcess:
    """A child process with its stdout and stderr in files under `workdir`."""

    def __init__(self, name: str, argv: list[str], workdir: Path | None = None,
                 env: dict | None = None):
        self.name = name
        self.argv = argv
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"fault-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.workdir / f"{name}.stdout"
        self.stderr_path = self.workdir / f"{name}.stderr"
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          env=child_env, cwd=REPO, start_new_session=True)
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self.ended: float | None = None
        self._peak_seen = 0                     # highest VmHWM read while it ran

    # ---- output ----------------------------------------------------------------------------------
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def wait_for_output(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first match of `pattern` in stdout + stderr; fails if the process exits or
        `timeout` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output())
            if match:
                return match
            if self.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.returncode} before printing "
                                     f"{pattern!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {pattern!r} within {timeout} s:\n"
                                   f"{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    # ---- state -----------------------------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        """The exit status: >= 0 for an exit, -N for signal N (as subprocess has it)."""
        return self.popen.returncode

    def poll(self) -> int | None:
        if self.popen.returncode is None:
            self._sample_rss()
            self._reap(os.WNOHANG)
        return self.popen.returncode

    def assert_running(self) -> None:
        """A wait for something this process must still cause fails at once if it exited."""
        assert self.poll() is None, f"{self.name} exited early:\n{self.tail()}"

    def while_running(self, condition):
        """`condition` for a wait (proxy.wait_for), failing at once if this process exited."""
        def check() -> bool:
            self.assert_running()
            return condition()
        return check

    def _reap(self, options: int) -> None:
        """waitpid(): the exit status and the time of the exit."""
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:       # reaped elsewhere
            if self.popen.returncode is None:
                self.popen.wait()
            return
        if pid == 0:
            return
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.ended = time.monotonic()

    def wait(self, timeout: float = START_TIMEOUT, expect: int | None = None) -> int:
        """Wait for the exit (TimeoutError after `timeout`); with `expect`, fail unless the
        status is that."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout} s:\n{self.tail()}")
            time.sleep(0.02)
        if expect is not None and self.returncode != expect:
            raise AssertionError(f"{self.name} exited {self.returncode}, expected {expect}:\n"
                                 f"{self.tail()}")
        return self.returncode

    # ---- signals ---------------------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        if self.poll() is None:
            self._sample_rss()
            os.kill(self.pid, signum)

    def kill9(self, timeout: float = 10.0) -> int:
        """SIGKILL and reap; the status (-9)."""
        self.signal(signal.SIGKILL)
        return self.wait(timeout)

    def terminate(self, timeout: float = START_TIMEOUT) -> int:
        """SIGTERM and wait for the exit; the status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self) -> None:
        """Kill if still running (and its process group: it runs in a session of its own)."""
        if self.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(10)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- memory ----------------------------------------------------------------------------------
    def _sample_rss(self) -> None:
        peak = _status_value(self.pid, "VmHWM")
        if peak:
            self._peak_seen = max(self._peak_seen, peak)

    def rss_bytes(self) -> int | None:
        """Resident set size now (VmRSS); None once it has exited."""
        return _status_value(self.pid, "VmRSS") if self.poll() is None else None

    def peak_rss_bytes(self) -> int:
        """Peak resident set size: the kernel's high-water mark of the process's own memory
        (/proc/PID/status VmHWM), as last read; every poll, wait and signal reads it.

        Not wait4's ru_maxrss: Linux carries the high-water mark of the memory an exec
        replaces into it, so a child of a test process that has grown to 300 MB reports at
        least 300 MB however little it used itself."""
        if self.poll() is None:
            self._sample_rss()
        return self._peak_seen


def feedhandler_argv(subcommand: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "feedhandler", subcommand, *args]


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on TCP `port` of 127.0.0.1 (from /proc/net/tcp: connecting
    to find out would look like a client to the server)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == wanted and line.split()[3] == "0A"
                   for line in list(table)[1:])


class SimulatorProcess(ChildProcess):
    """`feedhandler simulate` listening on a free port of 127.0.0.1 (`address`)."""

    def __init__(self, *args: str, workdir: Path | None = None, timeout: float = START_TIMEOUT):
        self.host, self.port = "127.0.0.1", free_port()
        super().__init__("simulate", feedhandler_argv("simulate", "--listen", self.address,
                                                      *args), workdir)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.poll() is not None:
                raise AssertionError(f"simulate exited {self.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.close()        # nobody else holds it yet
                raise TimeoutError(f"simulate not listening within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def start_simulator(*args: str, workdir: Path | None = None) -> SimulatorProcess:
    """`feedhandler simulate --listen 127.0.0.1:PORT ARGS` on a free port, once it listens."""
    return SimulatorProcess(*args, workdir=workdir)


def start_handler(*args: str, workdir: Path | None = None, env: dict | None = None) -> ChildProcess:
    """`feedhandler run ARGS` (give it --connect or --listen and --bootstrap-servers)."""
    return ChildProcess("run", feedhandler_argv("run", *args), workdir, env)


def final_account(process: ChildProcess) -> dict[str, int]:
    """The numbers of the final account `feedhandler run` prints on stderr."""
    account = {}
    for line in process.stderr().split("final account:", 1)[-1].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            account[parts[0]] = int(parts[1])
    return account

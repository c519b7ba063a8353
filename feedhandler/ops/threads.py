"""Thread names the OS can see, and CPU affinity and real-time scheduling per thread role.

Python's thread names stay inside Python (until 3.14): `top -H`, `ps -L` and /proc/PID/task/*/comm
show the kernel's name, which a thread sets for itself with prctl(PR_SET_NAME) (at most 15
bytes). A thread created afterwards inherits its creator's kernel name and CPU mask.

`--cpus` (parse_cpus) pins thread roles to CPUs: a plain list (`0,1` or `0-3`) is the mask of
the whole process, librdkafka's threads included; `ROLE=CPUS` items (`reader=0,decode=1+2,
publisher=1`; `+` joins CPUs inside one item, `-` makes a range) pin one role's threads.

`--realtime-priority N` puts the handler's own threads (every role) under SCHED_FIFO at
priority N: a read wakes them ahead of every normal thread of the host (the broker's, a
backup job's), which is where the tail of their latency comes from on a busy host.
librdkafka's threads keep the normal policy: they are created (from the main thread, with the
producer) before any role starts, and a thread inherits the policy of the thread creating it."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator

PR_SET_NAME = 15                # <linux/prctl.h>
PR_GET_NAME = 16
NAME_BYTES = 15                 # the kernel's TASK_COMM_LEN less its terminating NUL
PROCESS = "process"             # --cpus items without a role: every thread of the process
ROLES = ("reader", "decode", "publisher")
REALTIME_PRIORITIES = range(1, 100)     # SCHED_FIFO's (sched_get_priority_min/max on Linux)


@functools.cache
def _prctl():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    return prctl


def name_thread(name: str) -> None:
    """Give the calling thread `name` for the OS too (cut to 15 bytes); Python's name as well.
    Where prctl is not to be had (not Linux), only Python's name changes."""
    threading.current_thread().name = name
    try:
        _prctl()(PR_SET_NAME, name.encode()[:NAME_BYTES], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def os_thread_name() -> str:
    """The calling thread's kernel name ("" where prctl is not to be had)."""
    buffer = ctypes.create_string_buffer(NAME_BYTES + 1)
    try:
        _prctl()(PR_GET_NAME, buffer, 0, 0, 0)
    except (OSError, AttributeError):
        return ""
    return buffer.value.decode(errors="replace")


def os_thread_names(pid: int | str = "self") -> dict[int, str]:
    """{thread id: kernel name} of a process's threads (Linux)."""
    names = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as comm:
                names[int(task)] = comm.read().strip()
        except (FileNotFoundError, ProcessLookupError):     # the thread ended meanwhile
            continue                    # (before the open, or between the open and the read)
    return names


def _cpu_set(text: str) -> frozenset[int]:
    cpus: set[int] = set()
    for part in text.split("+"):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"--cpus: expected CPU numbers like 0, 2-3 or 1+3, got {text!r}")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"--cpus: empty range {part!r}")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def parse_cpus(text: str, available: set[int] | None = None) -> dict[str, frozenset[int]]:
    """`--cpus` as {role or PROCESS: CPUs}; ValueError (one line) for bad syntax, an unknown
    role, or a CPU this process may not use (`available`, default os.sched_getaffinity(0))."""
    plan: dict[str, set[int]] = {}
    for item in filter(None, (item.strip() for item in text.split(","))):
        role, equals, cpus = item.rpartition("=")
        role = role.strip() if equals else PROCESS
        if role != PROCESS and role not in ROLES:
            raise ValueError(f"--cpus: unknown thread role {role!r} (roles: {', '.join(ROLES)})")
        plan.setdefault(role, set()).update(_cpu_set(cpus.strip()))
    if not plan:
        raise ValueError("--cpus: no CPU given")
    available = os.sched_getaffinity(0) if available is None else available
    for role, cpus in plan.items():
        missing = sorted(cpus - set(available))
        if missing:
            raise ValueError(f"--cpus: CPU {', '.join(map(str, missing))} is not available to "
                             f"this process (it may use {format_cpus(available)})")
    return {role: frozenset(cpus) for role, cpus in plan.items()}


def format_cpus(cpus) -> str:
    """CPU numbers as ranges: {0, 1, 2, 5} -> "0-2,5"."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def start_role(name: str, role: str, cpus: dict[str, frozenset[int]] | None = None,
               realtime_priority: int = 0) -> None:
    """In a thread that starts working as `role`: name it, pin it where `cpus` says, and with
    a `realtime_priority` schedule it SCHED_FIFO at that priority (check_realtime first)."""
    name_thread(name)
    if cpus and role in cpus:
        os.sched_setaffinity(threading.get_native_id(), cpus[role])
    if realtime_priority:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))


def check_realtime(priority: int) -> None:
    """Raise PermissionError (one line, the option's words) unless this process may schedule
    its threads SCHED_FIFO at `priority`: tried on the calling thread, then undone."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        raise PermissionError(f"--realtime-priority {priority}: this process may not use "
                              "real-time scheduling (it needs CAP_SYS_NICE, or an "
                              f"RLIMIT_RTPRIO of at least {priority})") from None
    os.sched_setscheduler(0, policy, param)


def every_role(cpus: dict[str, frozenset[int]] | None) -> dict[str, frozenset[int]]:
    """Where some roles are pinned, the others get the calling thread's present mask (rather
    than whatever pinned thread happens to create them); nothing if none is."""
    if not cpus:
        return {}
    mask = frozenset(os.sched_getaffinity(0))
    return {role: cpus.get(role, mask) for role in ROLES}


@contextlib.contextmanager
def borrowed_thread(name: str, role: str, cpus: dict[str, frozenset[int]] | None = None,
                    realtime_priority: int = 0) -> Iterator[None]:
    """`start_role` for the caller's own thread (the reader runs on it), its names, CPU mask
    and scheduling given back afterwards (threads it creates later must not inherit them)."""
    python_name, kernel_name = threading.current_thread().name, os_thread_name()
    mask = os.sched_getaffinity(0)
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    start_role(name, role, cpus, realtime_priority)
    try:
        yield
    finally:
        threading.current_thread().name = python_name
        if kernel_name:
            name_thread(kernel_name)
            threading.current_thread().name = python_name
        if cpus and role in cpus:
            os.sched_setaffinity(threading.get_native_id(), mask)
        if realtime_priority:
            os.sched_setscheduler(0, policy, param)


def pin_process(cpus: dict[str, frozenset[int]] | None) -> None:
    """Early in the main thread, before other threads exist: the process-wide mask, which every
    thread created afterwards (librdkafka's too) inherits; role masks replace it per thread."""
    if cpus and PROCESS in cpus:
        os.sched_setaffinity(threading.get_native_id(), cpus[PROCESS])

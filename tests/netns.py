"""Run a command inside a network namespace of its own (`unshare -n`), for the multicast tests:
the network rule allows multicast only there. Inside, `lo` is up and 224.0.0.0/4 is routed to
it, so a group joined on 127.0.0.1 gets what is sent to it from 127.0.0.1 and nothing leaves
the namespace. Tests skip with the reason when namespaces cannot be made (not root, no
`unshare` or `ip`, or the kernel refuses)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import pytest

SETUP = "ip link set lo up && ip route add 224.0.0.0/4 dev lo"


@functools.cache
def unavailable() -> str | None:
    """Why no namespace can be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (unshare -n)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", SETUP], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode:
        return f"unshare -n failed: {probe.stderr.strip() or probe.returncode}"
    return None


def require() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def run(argv: list[str], *, timeout: float = 120, env: dict | None = None,
        **options) -> subprocess.CompletedProcess:
    """`argv` inside a fresh namespace (skips the test if none can be made)."""
    require()
    command = SETUP + ' && exec "$@"'
    return subprocess.run(["unshare", "-n", "sh", "-c", command, "netns", *argv],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **options)


def run_python(script: str, *args: str, **options) -> subprocess.CompletedProcess:
    """A Python script (its text) inside a fresh namespace."""
    return run([sys.executable, "-c", script, *args], **options)

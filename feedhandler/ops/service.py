"""Running under systemd (docs/feedhandler.service): readiness, status, watchdog and stop
notifications (the sd_notify protocol, spoken directly: one datagram per message to the unix
socket in $NOTIFY_SOCKET), and the SIGHUP reload hooks.

Without $NOTIFY_SOCKET every notification is a no-op, so the same code runs under systemd and
from a shell.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from feedhandler.ops.threads import name_thread

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0           # seconds between STATUS= lines
# The notifier wakes at least this often: the watchdog interval halved, and never slower.
MAX_WAKE_INTERVAL = 1.0

_reload_hooks: list[Callable[[], None]] = []


def on_reload(callback: Callable[[], None]) -> None:
    """Have SIGHUP call `callback` (e.g. reopen log files), in the order registered."""
    _reload_hooks.append(callback)


def reload() -> None:
    """What SIGHUP does: every reload hook; a failing hook is logged, not fatal."""
    for callback in list(_reload_hooks):
        try:
            callback()
        except Exception:       # noqa: BLE001 - a reload must never take the handler down
            log.exception("SIGHUP: %s failed", getattr(callback, "__name__", callback))


class SystemdNotifier:
    """sd_notify: `send("READY=1")` and friends, to $NOTIFY_SOCKET (a path, or an abstract
    socket name written with a leading '@'). `watchdog_interval` is $WATCHDOG_USEC in seconds
    when the watchdog is on for this process ($WATCHDOG_PID unset or ours), else None."""

    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval = None
        usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._socket = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One notification of newline-separated `fields`; a failure is logged once per
        notification, never raised (systemd going away must not stop the handler)."""
        if self.address is None:
            return
        message = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.setblocking(False)
                self._socket.sendto(message, self.address)
            except OSError as error:
                log.warning("sd_notify %s: %s", fields[0].split("=", 1)[0], error)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class ServiceNotifier(threading.Thread):
    """Tells systemd how the running handler is doing (thread fh-notify): READY=1 when started
    (the caller starts it once the feed is logged in and Kafka answered), STATUS= lines with
    rates every STATUS_INTERVAL, WATCHDOG=1 every half watchdog interval while the publisher
    is alive, and STOPPING=1 once the handler starts to drain.

    The publisher counts as alive when it has checked for acknowledgements since the last
    ping (`acks.checks`: it does so after every socket read's frames, every 5 ms when idle,
    and while it waits for room in the producer queue). A publisher wedged in any call stops
    the pings, and systemd kills and restarts the service after WatchdogSec."""

    def __init__(self, notifier: SystemdNotifier, handler):
        super().__init__(name="fh-notify", daemon=True)
        self.notifier = notifier
        self.handler = handler
        self.done = threading.Event()
        self._stopping_sent = False
        self._lock = threading.Lock()
        interval = notifier.watchdog_interval
        self.wake_interval = min(MAX_WAKE_INTERVAL, interval / 2) if interval else \
            MAX_WAKE_INTERVAL

    def stopping(self, why: str = "") -> None:
        """STOPPING=1 (once): systemd stops watching the watchdog and waits TimeoutStopSec."""
        with self._lock:
            if self._stopping_sent:
                return
            self._stopping_sent = True
        self.notifier.send("STOPPING=1", f"STATUS=stopping: {why or 'draining'}")

    def run(self):
        name_thread("fh-notify")
        handler = self.handler
        account, acks = handler.account, handler.sink.ledger.acks
        self.notifier.send("READY=1", "STATUS=running")
        last_checks = acks.checks
        last_status = (time.monotonic(), account.messages, acks.ticks)
        while not self.done.wait(self.wake_interval):
            if handler.draining.is_set() or handler.stopping:
                self.stopping("the feed ended" if handler.draining.is_set() else "stopped")
                continue
            checks = acks.checks
            if self.notifier.watchdog_interval and checks != last_checks:
                self.notifier.send("WATCHDOG=1")
            last_checks = checks
            now = (time.monotonic(), account.messages, acks.ticks)
            seconds = now[0] - last_status[0]
            if seconds >= STATUS_INTERVAL:
                self.notifier.send(
                    f"STATUS=in {(now[1] - last_status[1]) / seconds / 1e3:.1f}k msg/s, "
                    f"delivered {(now[2] - last_status[2]) / seconds / 1e3:.1f}k/s, "
                    f"{now[2]} delivered in all, lag {acks.oldest_age_ms():.0f} ms")
                last_status = now

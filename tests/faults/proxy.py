"""A TCP proxy of our own for link faults, between a client (the handler) and a server (the
exchange simulator), on 127.0.0.1.

    with TcpProxy(("127.0.0.1", simulator_port)) as proxy:
        run handler with --connect 127.0.0.1:{proxy.port}
        proxy.cut_at(100_000)        # the client gets exactly 100,000 bytes of this link, then EOF
        proxy.wait_for(lambda: proxy.links_opened >= 2)    # it reconnected

Each accepted connection is a *link* with its own upstream socket and two pump threads. Faults on
the server->client ("down") stream are armed by byte offset within a link and applied exactly
there, whatever the read sizes: the stream is split at the armed offsets. A fault armed while a
link is open applies to that link (the newest, if several are open); armed while none is, to the
next one. Each fault applies once. Everything is bounded: sockets have timeouts, `pause()` can
end by itself, `close()` joins every thread.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

CHUNK = 65536
CONNECT_TIMEOUT = 5.0
JOIN_TIMEOUT = 5.0
# How often a blocked pump looks at its flags (pause, close) while a recv waits.
POLL = 0.05


@dataclass
class DownFault:
    """At byte `at` of a link's server->client stream (counted as the server sent it): `cut`
    (close both sides once exactly `at` bytes have been forwarded), `drop` (`length` bytes are
    not forwarded) or `garble` (`length` bytes are forwarded XOR 0xFF)."""

    kind: str
    at: int
    length: int = 0


@dataclass
class Link:
    """One client connection and its upstream connection."""

    client: socket.socket
    server: socket.socket
    bytes_down: int = 0          # server->client bytes taken from the server and dealt with
    bytes_up: int = 0            # client->server bytes forwarded
    delivered_down: int = 0      # server->client bytes sent to the client (drops left out)
    faults: list[DownFault] = field(default_factory=list)
    recorded: bytearray | None = None     # what the client was sent, with record=True
    closed: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


class TcpProxy:
    """Listens on 127.0.0.1 (port 0 = any free one) and forwards to `target`."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0,
                 record: bool = False):
        """`record`: keep every byte sent to each client (`Link.recorded`), for tests that
        look at where a fault fell."""
        if not host.startswith("127."):
            raise ValueError("the proxy only listens on 127.0.0.0/8")
        self.target = target
        self.record = record
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(POLL)
        self.host, self.port = self._listener.getsockname()[:2]
        self.links: list[Link] = []             # every link, closed ones included
        self.links_opened = 0
        self.refused = 0                        # connections closed at once (refuse_new)
        self._pending: list[DownFault] = []     # armed while no link was open
        self._cut_plan: list[int] = []          # cut offsets of the next links, in order
        self._lock = threading.Lock()
        self._resumed = threading.Event()
        self._resumed.set()
        self._refuse_new = False
        self._closing = threading.Event()
        self._resume_timer: threading.Timer | None = None
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ---- counters --------------------------------------------------------------------------------
    @property
    def bytes_down(self) -> int:
        """Server->client bytes read from the server, over all links."""
        return sum(link.bytes_down for link in self.links)

    @property
    def bytes_up(self) -> int:
        return sum(link.bytes_up for link in self.links)

    @property
    def delivered_down(self) -> int:
        """Server->client bytes sent on to clients, over all links."""
        return sum(link.delivered_down for link in self.links)

    def open_links(self) -> list[Link]:
        return [link for link in self.links if not link.closed.is_set()]

    # ---- faults ----------------------------------------------------------------------------------
    def cut(self) -> int:
        """Close every open link now (both sides); returns how many were open."""
        links = self.open_links()
        for link in links:
            self._close_link(link)
        return len(links)

    def cut_at(self, at: int) -> None:
        """Close the link once exactly `at` bytes of the server's stream have been forwarded
        (at once if more have): a cut in the middle of whatever frame spans that offset."""
        self._arm(DownFault("cut", at))

    def cut_successive_links_at(self, offsets) -> None:
        """Cut each of the next links opened once exactly its offset of `offsets` (in order:
        the first new link at the first) has been forwarded; then leave new links alone. Armed
        before the links exist, so a fast stream cannot run past an offset before it is armed."""
        with self._lock:
            self._cut_plan.extend(offsets)

    def drop(self, at: int, length: int) -> None:
        """Do not forward `length` server->client bytes from byte `at` of the link."""
        self._arm(DownFault("drop", at, length))

    def garble(self, at: int, length: int) -> None:
        """Forward `length` server->client bytes from byte `at` of the link inverted."""
        self._arm(DownFault("garble", at, length))

    def pause(self, seconds: float | None = None) -> None:
        """Stop forwarding both ways (the sockets stay open, the kernel buffers fill);
        with `seconds`, forwarding resumes by itself after that long."""
        self._resumed.clear()
        if seconds is not None:
            self._resume_timer = threading.Timer(seconds, self.resume)
            self._resume_timer.daemon = True
            self._resume_timer.start()

    def resume(self) -> None:
        self._resumed.set()

    def refuse_new(self, refuse: bool = True) -> None:
        """Close new connections as soon as they are accepted (the exchange is unreachable)."""
        self._refuse_new = refuse

    def wait_for(self, condition, timeout: float = 30.0, what: str = "condition") -> None:
        """Wait until `condition()` holds; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"proxy: {what} not reached within {timeout} s")
            time.sleep(0.01)

    # ---- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        self._closing.set()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self._resumed.set()
        self.cut()
        self._acceptor.join(JOIN_TIMEOUT)
        self._listener.close()
        for link in self.links:
            for thread in link.threads:
                thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- inside ----------------------------------------------------------------------------------
    def _arm(self, fault: DownFault) -> None:
        with self._lock:
            links = self.open_links()
            target = links[-1].faults if links else self._pending
            target.append(fault)
            target.sort(key=lambda f: f.at)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refuse_new:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(POLL)
            with self._lock:
                link = Link(client, server, faults=self._pending,
                            recorded=bytearray() if self.record else None)
                self._pending = []
                if self._cut_plan:
                    link.faults.append(DownFault("cut", self._cut_plan.pop(0)))
                    link.faults.sort(key=lambda f: f.at)
                self.links.append(link)
                self.links_opened += 1
            link.threads = [
                threading.Thread(target=self._pump_up, args=(link,), name="proxy-up", daemon=True),
                threading.Thread(target=self._pump_down, args=(link,), name="proxy-down",
                                 daemon=True)]
            for thread in link.threads:
                thread.start()

    def _recv(self, link: Link, sock: socket.socket) -> bytes | None:
        """The next bytes from `sock` once forwarding is not paused; None once the link is
        closed or the peer has closed."""
        while not link.closed.is_set():
            if not self._resumed.wait(POLL):
                continue
            try:
                data = sock.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError:
                return None
            return data or None
        return None

    def _send(self, link: Link, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view and not link.closed.is_set():
            try:
                sent = sock.send(view)
            except TimeoutError:
                continue
            except OSError:
                return False
            view = view[sent:]
        return not view

    def _pump_up(self, link: Link) -> None:
        while (data := self._recv(link, link.client)) is not None:
            if not self._send(link, link.server, data):
                break
            link.bytes_up += len(data)
        self._close_link(link)

    def _pump_down(self, link: Link) -> None:
        # A cut armed at offset 0 closes before anything is forwarded.
        if self._apply_due_cut(link):
            return
        while (data := self._recv(link, link.server)) is not None:
            while data:
                consumed, out = self._next_piece(link, data)
                data = data[consumed:]
                if out and not self._send(link, link.client, out):
                    self._close_link(link)
                    return
                link.bytes_down += consumed
                link.delivered_down += len(out)
                if link.recorded is not None:
                    link.recorded += out
                if self._apply_due_cut(link):
                    return
        self._close_link(link)

    def _next_piece(self, link: Link, data: bytes) -> tuple[int, bytes]:
        """How many bytes of `data` to take up to the next fault boundary, and what to send for
        them (nothing for a drop, the bytes inverted for a garble)."""
        with self._lock:
            position = link.bytes_down
            for fault in link.faults:
                end = fault.at + fault.length
                if fault.at > position:                 # forward up to the next fault
                    size = min(len(data), fault.at - position)
                    return size, data[:size]
                if fault.kind == "cut":                 # due: _apply_due_cut closes
                    return 0, b""
                size = min(len(data), end - position)   # inside a drop or garble
                if position + size == end:
                    link.faults.remove(fault)
                if fault.kind == "drop":
                    return size, b""
                inverted = int.from_bytes(data[:size], "big") ^ ((1 << (8 * size)) - 1)
                return size, inverted.to_bytes(size, "big")
            return len(data), data

    def _apply_due_cut(self, link: Link) -> bool:
        with self._lock:
            due = [f for f in link.faults if f.kind == "cut" and f.at <= link.bytes_down]
            for fault in due:
                link.faults.remove(fault)
        if due:
            self._close_link(link)
        return bool(due)

    def _close_link(self, link: Link) -> None:
        if link.closed.is_set():
            return
        link.closed.set()
        for sock in (link.client, link.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

"""The exchange simulator over MoldUDP64 (`feedhandler simulate --transport moldudp64`).

The session is generated, paced and kept in the frame store exactly as for the TCP session
(`feedhandler.exchange.server.Simulator`, of which this is the UDP flavour): frames are plain
MoldUDP64 packets in a frame header (codec none), and each is sent as one datagram, without
the frame header, to the A line (a multicast group or a unicast address) and, when configured,
to the B line, each line with its own deliberate loss (`drop_rate`, `drop_every`, seeded).
Heartbeats go out on both lines after a second without data, end of session a few times at the
end. The request server answers MoldUDP64 request packets from the same store, unicast to the
requester, at a bounded rate (docs/protocol.md, "MoldUDP64").
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass

from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.server import SEND_CHUNK, SOCKET_BUFFER, Simulator
from feedhandler.session.moldudp import is_multicast
from feedhandler.session.protocol import trim_frame
from feedhandler.wire import moldudp, packet

log = logging.getLogger(__name__)

END_REPEATS = 3                 # end of session is sent this many times at once (UDP)
END_REPEAT_INTERVAL = 0.1       # seconds between them
# exit_after_end: seconds the simulator goes on after the end, sending end of session in place
# of heartbeats and answering requests, before it exits.
END_LINGER = 5.0
RESPONSE_RATE = 50_000          # datagrams a second the request server sends at most
LOG_INTERVAL = 5.0
_LENGTH_FIELD = packet.FRAME_HEADER_FIELDS["frame_length"]


@dataclass(frozen=True)
class MoldSimulatorConfig(SimulatorConfig):
    """SimulatorConfig (generation, pacing, retention) plus the MoldUDP64 side.

    group: (address, port) of the A line, a multicast group or a unicast address; line_b the
    same for the B line (None: no B line). interface: the local address multicast leaves from
    (IP_MULTICAST_IF). request_server: (host, port) the request server binds (port 0 picks
    one); None = no request server. drop_rate / drop_every (and _b): deliberate loss of data
    datagrams on each line, drawn from `seed`. max_payload: the largest datagram;
    messages_per_packet must fit it with ITCH's largest messages."""

    codec: str = "none"
    messages_per_packet: int = moldudp.messages_per_datagram(moldudp.DEFAULT_MAX_PAYLOAD)
    group: tuple[str, int] = ("127.0.0.1", 0)
    line_b: tuple[str, int] | None = None
    interface: str | None = None
    request_server: tuple[str, int] | None = None
    drop_rate: float = 0.0
    drop_every: int = 0
    drop_rate_b: float = 0.0
    drop_every_b: int = 0
    max_payload: int = moldudp.DEFAULT_MAX_PAYLOAD
    ttl: int = 1
    response_rate: int = RESPONSE_RATE

    def __post_init__(self):
        super().__post_init__()
        if self.codec != "none":
            raise ValueError("MoldUDP64 carries uncompressed messages: codec must be none")
        fits = moldudp.messages_per_datagram(self.max_payload)
        if self.messages_per_packet > fits:
            raise ValueError(f"{self.messages_per_packet} messages per packet may not fit a "
                             f"{self.max_payload}-byte datagram (at most {fits})")
        for rate in (self.drop_rate, self.drop_rate_b):
            if not 0 <= rate < 1:
                raise ValueError(f"a drop rate must be in [0, 1), not {rate}")
        if self.drop_every < 0 or self.drop_every_b < 0 or self.drop_every == 1 \
                or self.drop_every_b == 1:
            raise ValueError("drop every N needs N >= 2 (0 = never)")
        if not 0 <= self.ttl <= 255 or self.response_rate < 1:
            raise ValueError("ttl must be 0..255 and response_rate positive")


class _SendLine:
    """One downstream line: where it goes and what it deliberately loses."""

    def __init__(self, name: str, address: tuple[str, int], drop_rate: float, drop_every: int,
                 seed: int):
        self.name = name
        self.address = address
        self.drop_rate = drop_rate
        self.drop_every = drop_every
        self._random = random.Random(f"{seed}-{name}")
        self.datagrams = 0                  # data datagrams offered, dropped ones included
        self.dropped: list[tuple[int, int]] = []    # (first, count) of each dropped datagram

    def drops(self, first: int, count: int) -> bool:
        self.datagrams += 1
        drop = (self.drop_every and self.datagrams % self.drop_every == 0) or \
            (self.drop_rate and self._random.random() < self.drop_rate)
        if drop:
            self.dropped.append((first, count))
        return bool(drop)


class MoldSimulator(Simulator):
    """`Simulator` publishing MoldUDP64 datagrams and serving re-requests; `port` is the
    request server's port (None without one)."""

    config: MoldSimulatorConfig

    def __init__(self, config: MoldSimulatorConfig):
        super().__init__(config)
        lines = [("A", config.group, config.drop_rate, config.drop_every)]
        if config.line_b is not None:
            lines.append(("B", config.line_b, config.drop_rate_b, config.drop_every_b))
        self.lines = [_SendLine(name, address, rate, every, config.seed)
                      for name, address, rate, every in lines]
        self.datagrams_sent = 0
        self.messages_sent = 0
        self.end_sent = False
        self.requests_served: list[tuple[int, int]] = []    # (first, count) answered
        self.requests_refused = 0       # malformed, other session, or over the answer rate
        self._cursor = 0                # next frame to send
        self._sent_sequence = 1         # the next message to send
        self._last_sent = 0.0
        self._tokens = float(config.response_rate)
        self._tokens_at = time.monotonic()
        self._log_times: dict[str, float] = {}

    # ---- the transport ---------------------------------------------------------------------------
    def _serve(self):
        config = self.config
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets = [sender]
        try:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            if any(is_multicast(line.address[0]) for line in self.lines):
                sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, config.ttl)
                sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                if config.interface:
                    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                      socket.inet_aton(config.interface))
            sender.setblocking(False)
            serving = [self._send_lines(sender)]
            if config.request_server is not None:
                server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(server)
                server.bind(config.request_server)
                server.setblocking(False)
                self.port = server.getsockname()[1]
                serving.append(self._serve_requests(server))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        log.info("publishing session %s as MoldUDP64 to %s; request server %s",
                 self.session.decode().strip(),
                 " and ".join(f"{line.name} {line.address[0]}:{line.address[1]}"
                              for line in self.lines),
                 "none" if self.port is None else f"{config.request_server[0]}:{self.port}")
        return sockets, serving

    def _fastest_client(self) -> int:
        return self._cursor

    def served(self) -> tuple[int, int]:
        return self.messages_sent, self.datagrams_sent

    # ---- downstream ------------------------------------------------------------------------------
    async def _send(self, sock: socket.socket, datagram, address) -> None:
        try:
            sock.sendto(datagram, address)
        except BlockingIOError:
            await asyncio.get_running_loop().sock_sendto(sock, datagram, address)
        self._last_sent = time.monotonic()

    async def _send_lines(self, sock: socket.socket):
        """Every published frame as a datagram on each line, heartbeats while there is
        nothing to send, end of session at the end."""
        store = self.store
        while True:
            if self._cursor < store.first_frame:
                self._note("overrun", "the sender fell behind the store's retention: frames "
                                      f"{self._cursor}..{store.first_frame - 1} were not sent")
                self._cursor = store.first_frame
            if self._cursor < store.published:
                data, after = store.slice(self._cursor, SEND_CHUNK)
                await self._send_frames(sock, data)
                self._cursor = after
                await asyncio.sleep(0)
                continue
            if store.ended:
                break
            changed = store.changed()
            idle = self._last_sent + self.config.heartbeat_interval - time.monotonic()
            if idle <= 0:
                for line in self.lines:
                    await self._send(sock, moldudp.heartbeat(self.session, self._sent_sequence),
                                     line.address)
                continue
            try:
                await asyncio.wait_for(changed.wait(), idle)
            except TimeoutError:
                pass
        await self._send_end(sock)

    async def _send_end(self, sock: socket.socket):
        """End of session END_REPEATS times, then in place of heartbeats: for END_LINGER
        seconds with exit_after_end, else until stopped."""
        end = moldudp.end_of_session(self.session, self._sent_sequence)
        for _ in range(END_REPEATS):
            for line in self.lines:
                await self._send(sock, end, line.address)
            await asyncio.sleep(END_REPEAT_INTERVAL)
        self.end_sent = True
        log.info("end of session sent at sequence %d", self._sent_sequence)
        interval = self.config.heartbeat_interval
        linger = END_LINGER if self.config.exit_after_end else float("inf")
        while linger > 0:
            await asyncio.sleep(min(interval, linger))
            linger -= interval
            for line in self.lines:
                await self._send(sock, end, line.address)
        self._stop.set()

    async def _send_frames(self, sock: socket.socket, data: memoryview) -> None:
        header_size = packet.FRAME_HEADER_SIZE
        position, end = 0, len(data)
        while position < end:
            length = int.from_bytes(data[position:position + _LENGTH_FIELD.size], "big") \
                + _LENGTH_FIELD.size
            datagram = data[position + header_size:position + length]
            position += length
            session, first, count = moldudp.header(datagram)
            for line in self.lines:
                if not line.drops(first, count):
                    await self._send(sock, datagram, line.address)
            self.datagrams_sent += 1
            self.messages_sent += count
            self._sent_sequence = first + count

    # ---- the request server ----------------------------------------------------------------------
    async def _serve_requests(self, sock: socket.socket):
        loop = asyncio.get_running_loop()
        while True:
            data, requester = await loop.sock_recvfrom(sock, 512)
            try:
                session, first, count = moldudp.parse_request(data)
                if session != self.session:
                    raise moldudp.MoldError("other_session", f"request for session {session!r}")
            except moldudp.MoldError as error:
                self.requests_refused += 1
                self._note(error.reason, f"request from {requester[0]}:{requester[1]} "
                                         f"refused: {error}")
                continue
            await self._answer(sock, requester, first, count)

    def _take_token(self) -> bool:
        now = time.monotonic()
        rate = self.config.response_rate
        self._tokens = min(rate / 10, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _answer(self, sock: socket.socket, requester, first: int, count: int) -> None:
        """The retained packets holding first..first+count-1, the first one trimmed to start at
        `first`; what is older than the store is answered from its oldest message, what is not
        published yet not at all."""
        store = self.store
        end = min(first + count, store.sequence_at(store.published))
        first = max(first, store.sequence_at(store.first_frame))
        if first >= end:
            return
        self.requests_served.append((first, end - first))
        frame = store.position(first)
        while frame < store.published and store.sequence_at(frame) < end:
            if not self._take_token():
                self.requests_refused += 1
                self._note("rate", f"answer to {requester[0]}:{requester[1]} cut at sequence "
                                   f"{store.sequence_at(frame)}: over {self.config.response_rate}"
                                   " datagrams/s")
                return
            data = store.frame_bytes_at(frame)
            if store.sequence_at(frame) < first:
                data = trim_frame(data, first)
            await self._send(sock, memoryview(data)[packet.FRAME_HEADER_SIZE:], requester)
            frame += 1

    def _note(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._log_times.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._log_times[key] = now
            log.warning("%s (further ones are counted, logged at most every %g s)", message,
                        LOG_INTERVAL)


def mold_config(**settings) -> MoldSimulatorConfig:
    """A MoldSimulatorConfig; messages_per_packet None = as many as max_payload always holds."""
    if settings.get("messages_per_packet") is None:
        settings.pop("messages_per_packet", None)
        settings["messages_per_packet"] = moldudp.messages_per_datagram(
            settings.get("max_payload", moldudp.DEFAULT_MAX_PAYLOAD))
    return MoldSimulatorConfig(**settings)


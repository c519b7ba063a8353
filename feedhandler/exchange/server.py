"""Exchange simulator: serves one TotalView-ITCH 5.0 session to any number of clients over the
feed's TCP session protocol (docs/protocol.md, "Session protocol").

The session's messages come from the synthetic order flow (`feedhandler.exchange.orderflow`) or from a
NASDAQ file (`feedhandler.exchange.replay`). They are cut into packets and framed once, into the frame
store, which is both what every client is served from and the retransmission store: each client
has its own cursor into it, so a slow client only delays itself. Pacing decides when frames are
*published* (become visible to clients); in "as fast as possible" mode they are published as soon
as they are framed.

Everything on the network runs on one asyncio event loop; generation, file reading and
compression run on worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

from feedhandler.exchange import orderflow, replay
from feedhandler.exchange.clock import LiveClock
from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.frame_store import FrameChunk, FrameStore, frame_block
from feedhandler.exchange.orderflow import MessageBlock
from feedhandler.exchange.pacing import Pacing, RatePacing, TimestampPacing
from feedhandler.session.protocol import (
    CLIENT_HEARTBEAT, LENGTH_PREFIX, LOGIN_REQUEST, LOGOUT_REQUEST, NOT_AUTHORIZED,
    SESSION_NOT_AVAILABLE, ProtocolError, check_client_frame, debug, end_of_session, heartbeat,
    login_accepted, login_rejected, parse_login_request, trim_frame,
)
log = logging.getLogger(__name__)

SEND_CHUNK = 1 << 20          # bytes of frames handed to the kernel at a time
SOCKET_BUFFER = 4 << 20
END_LINGER = 2.0              # seconds to wait for a logout after end of session
# Endless synthetic data and files are framed a chunk at a time, at most this many chunks ahead
# of the fastest client (as fast as possible) or of publication (paced).
LOOKAHEAD_CHUNKS = 2
SYNTHETIC_CHUNK_MESSAGES = 1 << 18


# ---- sources -----------------------------------------------------------------------------------
def synthetic_blocks(config: SimulatorConfig) -> Iterator[MessageBlock]:
    """An endless synthetic session (it ends at the synthetic market close)."""
    mean_gap = 1e9 / config.rate if config.rate else orderflow.DEFAULT_MEAN_GAP_NS
    flow = orderflow.OrderFlow(config.symbols, seed=config.seed, mean_gap_ns=mean_gap)
    # Paced, a chunk is about a second's worth, so generation stays close to publication.
    chunk = int(min(max(config.rate, 1024), SYNTHETIC_CHUNK_MESSAGES)) if config.rate \
        else SYNTHETIC_CHUNK_MESSAGES
    yield flow.opening()
    while not flow.market_closed:
        block = flow.flow(chunk)
        if block.count:
            yield block
    yield flow.closing()


def limit_blocks(blocks: Iterator[MessageBlock], count: int) -> Iterator[MessageBlock]:
    """The first `count` messages of `blocks`."""
    for block in blocks:
        if count <= 0:
            return
        if block.count > count:
            block = MessageBlock(block.data[:block.offsets[count]], block.offsets[:count + 1])
        count -= block.count
        yield block


class _Disconnect(Exception):
    """Close a client connection for `reason`; `tell` sends the reason to the client first."""

    def __init__(self, reason: str, level: int = logging.WARNING, tell: bool = False):
        super().__init__(reason)
        self.reason, self.level, self.tell = reason, level, tell


# ---- the server --------------------------------------------------------------------------------
class Simulator:
    """Build with a SimulatorConfig; `run()` serves in the calling thread until stopped (or the
    session ends, with exit_after_end), `start()`/`stop()` serve from a background thread."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.session = config.padded_session
        self.port: int | None = None
        self.store: FrameStore | None = None
        self.clients: set[_Client] = set()
        self.messages_served = 0          # totals over all clients, closed ones included
        self.frames_served = 0
        self.ends_delivered = 0
        self.generation_seconds = 0.0
        self._blocks: Iterator[MessageBlock] | None = None
        self._pacing: Pacing | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._prepared = threading.Event()      # the first chunk is framed (or the session ended)
        self._failure: BaseException | None = None
        self._next_sequence = 1
        self._clock = LiveClock() if config.stamps_live else None
        self._prepare()

    # ---- preparation -----------------------------------------------------------------------------
    def _prepare(self):
        config = self.config
        if config.speed is not None:
            self._pacing = TimestampPacing(config.messages_per_packet, config.speed)
        elif config.rate:
            self._pacing = RatePacing(config.messages_per_packet, config.rate, config.burst,
                                      config.seed)
        else:
            self._pacing = Pacing(config.messages_per_packet)
        self._retain = config.retain_bytes
        if config.replay is not None:
            replay.open_itch(config.replay).close()     # a missing file fails here, not later
            blocks = replay.read_blocks(config.replay)
            self._blocks = blocks if config.count is None else limit_blocks(blocks, config.count)
        elif config.count is not None:
            # A whole synthetic run is generated and framed once, as the first chunk, while
            # clients can already connect; its frames are all kept, so any client can replay it
            # from any point.
            self._blocks = self._whole_session(config.count)
            self._retain = None
        else:
            self._blocks = synthetic_blocks(config)

    def _whole_session(self, count: int) -> Iterator[MessageBlock]:
        config = self.config
        log.info("preparing the session: generating %d messages", count)
        started = time.perf_counter()
        yield orderflow.generate(count, symbols=config.symbols, seed=config.seed)
        self.generation_seconds = time.perf_counter() - started
        log.info("generated and framed %d messages in %.2f s", count, self.generation_seconds)

    def _next_chunk(self) -> FrameChunk | None:
        """Frame the next block of the source (runs on a worker thread while serving)."""
        block = next(self._blocks, None)
        while block is not None and block.count == 0:
            block = next(self._blocks, None)
        return None if block is None else self._frame(block)

    def _frame(self, block: MessageBlock) -> FrameChunk:
        boundaries, due = self._pacing.cut(block)
        if self._clock is not None:
            block = self._clock.stamp(block, boundaries, due)
        chunk = frame_block(block, boundaries, session=self.session,
                            sequence=self._next_sequence, codec=self.config.codec, due=due)
        self._next_sequence += block.count
        return chunk

    # ---- running ---------------------------------------------------------------------------------
    def run(self):
        """Serve until stop() (or end of session with exit_after_end)."""
        asyncio.run(self._main())

    def start(self, timeout: float = 30.0) -> Simulator:
        """Serve from a background thread; returns once listening (self.port is set)."""
        self._thread = threading.Thread(target=self._run_in_thread, name="simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator did not start listening")
        if self._failure is not None:
            raise self._failure
        return self

    def wait_prepared(self, timeout: float = 60.0) -> None:
        """Block until the first chunk of the session is framed: with a count, the whole
        session (clients may connect before that; they wait for their first frame)."""
        if not self._prepared.wait(timeout):
            raise TimeoutError("simulator did not prepare its session")

    def _run_in_thread(self):
        try:
            self.run()
        except BaseException as error:          # surfaced by start() or logged
            self._failure = error
            log.exception("simulator failed")
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0):
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):     # the loop has ended already
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    async def _main(self):
        config = self.config
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.store = FrameStore(retain_bytes=self._retain)
        self._appended = asyncio.Event()
        self._framed = asyncio.Event()      # _prepared, for the event loop
        sockets, serving = self._serve()
        self._started = time.monotonic()
        tasks = [asyncio.create_task(coroutine) for coroutine in (
            *serving, self._produce(), self._publish(), self._report())]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            for task in tasks + [client.task for client in self.clients]:
                task.cancel()
            await asyncio.gather(*tasks, *(client.task for client in self.clients),
                                 return_exceptions=True)
            for sock in sockets:
                sock.close()

    def _serve(self) -> tuple[list[socket.socket], list]:
        """The transport's sockets (closed at the end) and coroutines (run until stop): here
        the TCP listener and its accept loop. Sets self.port."""
        config = self.config
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((config.host, config.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        log.info("serving session %s on %s:%d", self.session.decode().strip(), config.host,
                 self.port)
        return [listener], [self._accept(listener)]

    async def _accept(self, listener: socket.socket):
        loop = asyncio.get_running_loop()
        for number in itertools.count(1):
            sock, peer = await loop.sock_accept(listener)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            client = self._new_client(sock, f"client {number} ({peer[0]}:{peer[1]})")
            if len(self.clients) >= self.config.max_clients:
                log.warning("%s: refused: %d clients already connected", client.name,
                            len(self.clients))
                client.tell("server full")
                sock.close()
                continue
            self.clients.add(client)
            client.task = asyncio.create_task(client.run())

    def _new_client(self, sock: socket.socket, name: str) -> _Client:
        """One client connection; a transport's simulator serves its own kind."""
        return _Client(self, sock, name)

    def _fastest_client(self) -> int:
        cursors = [client.cursor for client in self.clients if client.cursor is not None]
        return max(cursors, default=self.store.first_frame)

    async def _produce(self):
        """Frame more of the source while the clients (as fast as possible) or publication
        (paced) have fewer than LOOKAHEAD_CHUNKS chunks ahead of them."""
        loop = asyncio.get_running_loop()
        store = self.store
        while not store.finished:
            reference = store.published if self._pacing.paced else self._fastest_client()
            if store.chunks_after(reference) >= LOOKAHEAD_CHUNKS:
                # Client cursors move without notifying anyone; a short poll is cheap enough.
                await asyncio.sleep(0.005)
                continue
            try:
                chunk = await loop.run_in_executor(None, self._next_chunk)
            except (OSError, ValueError) as error:
                # A bad or truncated file: serve what was read, then end the session.
                log.error("source failed, ending the session: %s", error)
                chunk = None
            except Exception:
                log.exception("source failed, ending the session")
                chunk = None
            if chunk is None:
                store.finish()
            else:
                if not self._prepared.is_set():
                    # A paced session's clock starts with its first frames, not while they
                    # were being generated (which would publish that time's worth at once).
                    self._started = time.monotonic()
                store.append(chunk)
                store.publish_due(time.monotonic() - self._started)
            self._appended.set()
            self._framed.set()
            self._prepared.set()

    async def _publish(self):
        """Publish paced frames when they fall due."""
        store = self.store
        while not store.ended:
            if store.published < store.produced:
                due = store.next_due()
                wait = 0 if due is None else self._started + due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                store.publish_due(time.monotonic() - self._started)
            else:
                self._appended.clear()
                await self._appended.wait()

    async def _report(self):
        interval = self.config.status_interval
        if interval is None:
            return
        messages, frames, then = self.messages_served, self.frames_served, time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            total_messages, total_frames = self.served()
            elapsed = now - then
            store = self.store
            ratio = store.packet_bytes / store.frame_bytes if store.frame_bytes else 0.0
            print(f"simulate: {(total_messages - messages) / elapsed:>12,.0f} msg/s "
                  f"{(total_frames - frames) / elapsed:>9,.0f} pkt/s "
                  f"{sum(c.cursor is not None for c in self.clients):>3} clients "
                  f"{self.config.codec} ratio {ratio:.2f}  "
                  f"published {store.sequence_at(store.published) - 1:,} msgs"
                  f"{'  (ended)' if store.ended else ''}", file=sys.stderr, flush=True)
            messages, frames, then = total_messages, total_frames, now

    def served(self) -> tuple[int, int]:
        """(messages, frames) sent to all clients so far."""
        clients = list(self.clients)
        return (self.messages_served + sum(c.messages_sent for c in clients),
                self.frames_served + sum(c.frames_sent for c in clients))

    def _closed(self, client: _Client):
        self.clients.discard(client)
        self.messages_served += client.messages_sent
        self.frames_served += client.frames_sent
        self.ends_delivered += client.end_delivered
        if (self.config.exit_after_end and self.store.ended and self.ends_delivered
                and not self.clients):
            log.info("session ended and delivered; exiting")
            self._stop.set()


class _Client:
    """One connection: login, then frames from its own cursor into the store.

    The session protocol's packets are made and read by the methods under "the protocol's
    packets"; another transport's connection overrides those (the packet types of login,
    client heartbeat and logout are the same bytes in both protocols)."""

    length_field = LENGTH_PREFIX

    def __init__(self, simulator: Simulator, sock: socket.socket, name: str):
        self.simulator = simulator
        self.config = simulator.config
        self.sock = sock
        self.name = name
        self.task: asyncio.Task | None = None
        self.cursor: int | None = None           # next frame to send, once logged in
        self.next_sequence = 0                   # first message of that frame
        self.messages_sent = 0
        self.frames_sent = 0
        self.end_delivered = False
        self._received = bytearray()
        self._heard_from = False                 # any byte received from the client
        # False while a send is under way (or was cut off): a debug frame now would land in
        # the middle of another frame.
        self._between_frames = True
        self._partial_since = 0.0
        self._last_received = time.monotonic()
        self._last_sent = time.monotonic()

    def tell(self, text: str):
        """Best effort: a debug frame explaining why the server is about to close."""
        try:
            self.sock.send(self._debug_packet(text))
        except OSError:
            pass

    # ---- the protocol's packets --------------------------------------------------------------------
    @staticmethod
    def _check_client_packet(packet_type: int, length: int):
        check_client_frame(packet_type, length)

    @staticmethod
    def _debug_packet(text: str) -> bytes:
        return debug(text)

    @staticmethod
    def _parse_login(frame) -> tuple[bytes, bytes, bytes, int]:
        return parse_login_request(frame)

    @staticmethod
    def _login_rejected(reason: bytes) -> bytes:
        return login_rejected(reason)

    @staticmethod
    def _login_accepted(session: bytes, sequence: int) -> bytes:
        return login_accepted(session, sequence)

    @staticmethod
    def _rest_of_frame(frame, sequence: int) -> bytes:
        """A stored frame from `sequence`, a message inside it, on."""
        return trim_frame(frame, sequence)

    @staticmethod
    def _data(frames):
        """Stored frames as they go on the wire."""
        return frames

    def _heartbeat(self) -> bytes:
        return heartbeat(self.simulator.session, self.next_sequence)

    def _end_of_session(self) -> bytes:
        return end_of_session(self.simulator.session, self.next_sequence)

    async def run(self):
        level, reason = logging.INFO, "cancelled"
        try:
            await self._login()
            await self._serve()
        except _Disconnect as disconnect:
            level, reason = disconnect.level, disconnect.reason
            if disconnect.tell and self._between_frames:
                self.tell(reason)
        except OSError as error:
            level, reason = logging.WARNING, f"socket error: {error}"
        except Exception as error:          # a bug: drop this client, keep serving the others
            log.exception("%s: internal error", self.name)
            level, reason = logging.ERROR, f"internal error: {error!r}"
        finally:
            self.sock.close()
            log.log(level, "%s: closed: %s", self.name, reason)
            self.simulator._closed(self)

    # ---- receiving -------------------------------------------------------------------------------
    async def _next_frame(self, deadline: float, silence: str) -> bytes:
        """The next complete client frame. Nothing buffered may last until `deadline` (then
        the connection closes for `silence`); a started frame must complete within
        partial_frame_timeout."""
        loop = asyncio.get_running_loop()
        buffered = self._received
        prefix = self.length_field.size
        while True:
            if len(buffered) > prefix:
                length = self.length_field.unpack_from(buffered)[0]
                try:
                    self._check_client_packet(buffered[prefix], length)
                except (ProtocolError, ValueError) as error:
                    raise _Disconnect(str(error), tell=True) from None
                if len(buffered) >= prefix + length:
                    frame = bytes(buffered[:prefix + length])
                    del buffered[:prefix + length]
                    self._partial_since = time.monotonic()
                    return frame
            now = time.monotonic()
            if buffered and now >= self._partial_since + self.config.partial_frame_timeout:
                raise _Disconnect(f"incomplete frame for {self.config.partial_frame_timeout:g} s "
                                  f"({len(buffered)} bytes)", tell=True)
            if now >= deadline:
                raise _Disconnect(silence, tell=True)
            wait = min(deadline, self._partial_since + self.config.partial_frame_timeout) - now \
                if buffered else deadline - now
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), max(wait, 0))
            except TimeoutError:
                continue
            if not data:
                where = " in the middle of a frame" if buffered else ""
                # A connection that closes before sending anything (a port probe, a health
                # check) is routine; one that gave up on a login or inside a frame is not.
                probe = self.cursor is None and not self._heard_from
                raise _Disconnect(f"client closed the connection{where}"
                                  f"{' without a word' if probe else ''}",
                                  logging.WARNING if buffered or (self.cursor is None and not probe)
                                  else logging.INFO)
            if not buffered:
                self._partial_since = time.monotonic()
            self._last_received = time.monotonic()
            self._heard_from = True
            buffered += data

    async def _login(self):
        config = self.config
        frame = await self._next_frame(time.monotonic() + config.login_timeout,
                                       f"no login request within {config.login_timeout:g} s")
        packet_type = frame[self.length_field.size]
        if packet_type != LOGIN_REQUEST:
            raise _Disconnect(f"{chr(packet_type)!r} frame before login", tell=True)
        try:
            username, password, session, sequence = self._parse_login(frame)
        except ValueError as error:
            raise _Disconnect(f"bad login request: {error}", tell=True) from None
        if (username, password) != (config.username, config.password):
            await self._send(self._login_rejected(NOT_AUTHORIZED))
            raise _Disconnect(f"login rejected: wrong username or password (user {username!r})")
        if session and session != config.session.rstrip(b" "):
            await self._send(self._login_rejected(SESSION_NOT_AVAILABLE))
            raise _Disconnect(f"login rejected: asked for session {session!r}")
        # A login that comes while the session is being prepared waits for its first chunk,
        # where the requested sequence number can be placed.
        await self.simulator._framed.wait()
        self._last_received = time.monotonic()      # the client's silence counts from here
        store = self.simulator.store
        cursor = store.position(sequence)
        first = store.sequence_at(cursor)
        first_frame = None
        if first < sequence < store.sequence_at(cursor + 1) and cursor < store.published:
            # The resume point is inside a frame: send just the rest of that frame.
            first_frame = self._rest_of_frame(store.frame_bytes_at(cursor), sequence)
            first, cursor = sequence, cursor + 1
        self.cursor, self.next_sequence = cursor, store.sequence_at(cursor)
        await self._send(self._login_accepted(self.simulator.session, first))
        log.info("%s: logged in as %r from sequence %d (asked for %d)", self.name,
                 username.decode(), first, sequence)
        if first_frame is not None:
            await self._send(first_frame)
            self.messages_sent += self.next_sequence - first
            self.frames_sent += 1

    async def _read_after_login(self):
        """Returns at logout; raises _Disconnect on silence or a protocol violation."""
        while True:
            frame = await self._next_frame(self._last_received + self.config.timeout,
                                           f"no heartbeat from the client for "
                                           f"{self.config.timeout:g} s")
            packet_type = frame[self.length_field.size]
            if packet_type == LOGOUT_REQUEST:
                return
            if packet_type != CLIENT_HEARTBEAT:
                raise _Disconnect(f"{chr(packet_type)!r} frame after login", tell=True)

    # ---- sending ---------------------------------------------------------------------------------
    async def _send(self, data):
        self._between_frames = False
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(self.sock, data),
                                   self.config.timeout)
        except TimeoutError:
            raise _Disconnect(f"client not reading: could not send for "
                              f"{self.config.timeout:g} s") from None
        self._between_frames = True
        self._last_sent = time.monotonic()

    async def _send_frames(self):
        """Frames from the cursor on, heartbeats while there are none, end of session last."""
        store = self.simulator.store
        while True:
            if self.cursor < store.first_frame:
                raise _Disconnect(f"fell behind the retransmission store (needs sequence "
                                  f"{self.next_sequence}, oldest kept is "
                                  f"{store.sequence_at(store.first_frame)})", tell=True)
            if self.cursor < store.published:
                data, after = store.slice(self.cursor, SEND_CHUNK)
                # Looked up before sending: the store may drop these frames meanwhile.
                after_sequence = store.sequence_at(after)
                await self._send(self._data(data))
                self.messages_sent += after_sequence - self.next_sequence
                self.frames_sent += after - self.cursor
                self.cursor, self.next_sequence = after, after_sequence
                continue
            if store.ended:
                await self._send(self._end_of_session())
                self.end_delivered = True
                return
            changed = store.changed()
            idle = self._last_sent + self.config.heartbeat_interval - time.monotonic()
            if idle <= 0:
                await self._send(self._heartbeat())
                continue
            try:
                await asyncio.wait_for(changed.wait(), idle)
            except TimeoutError:
                pass

    async def _serve(self):
        reader = asyncio.create_task(self._read_after_login())
        writer = asyncio.create_task(self._send_frames())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
                raise _Disconnect("client logged out", logging.INFO)
            writer.result()
            # End of session is out; give the client a moment to log out before closing.
            done, _ = await asyncio.wait({reader}, timeout=END_LINGER)
            if done:
                reader.result()
                raise _Disconnect("end of session delivered, client logged out", logging.INFO)
            raise _Disconnect("end of session delivered", logging.INFO)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

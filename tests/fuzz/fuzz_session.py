#!/usr/bin/env python3
"""Fuzz the session protocol: the server-frame stream as `SessionClient` receives it (through
a fake socket, with every parser on that path), `trim_frame`, and the client-frame stream as
the simulator reads it (`check_client_frame`, `parse_login_request`).

The first input byte picks the target:
  0  client: byte 1 sets the size of each recv(), byte 2 the sequence number the client asks
     for; the rest is what the server sends. The client may end only by end of session,
     ConnectionLost, LoginRejected or SessionChanged. Every data frame it hands out is a whole S frame of its
     session; their sequence ranges and the gaps it recorded never overlap and tile the
     sequence numbers it delivered; its counters agree with the frames; every frame it sent
     is a valid client frame.
  1  trim_frame: bytes 1..8 choose the first sequence number to keep; the rest is a frame.
     trim_frame raises ValueError or ProtocolError, or returns a re-signed frame holding
     exactly the original's messages from that sequence number on.
  2  server side: a client byte stream framed as the simulator frames it. check_client_frame
     raises only ProtocolError, and parse_login_request takes every frame it let through.

    python tests/fuzz/fuzz_session.py -max_total_time=600 /tmp/corpus tests/vectors/session
"""

import logging
import random
import re
import socket
import sys
import types
from pathlib import Path

import numpy as np

from feedhandler.errors import DecodeError
from feedhandler.session import ConnectionLost, LoginRejected, SessionChanged, SessionClient
from feedhandler.session import client as client_module
from feedhandler.session import protocol
from feedhandler.session.protocol import ProtocolError
from feedhandler.wire import packet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.common import (  # noqa: E402
    Probes, fuzz, libfuzzer_mutate, mutate_frame, resequence, split_stream,
)

CLIENT, TRIM, SERVER_SIDE = range(3)
CLIENT_HEADER = 3
TRIM_HEADER = 9
_QUIET = logging.getLogger("fuzz.session")
_QUIET.disabled = True
MAX_FRAMES = 3
probe = Probes()


def outcome(error: BaseException) -> str:
    """A bounded key for an error: its type and the words of its message, numbers and quoted
    values left out."""
    words = re.sub(r"'[^']*'|\"[^\"]*\"|[^a-z ]", " ", str(error).lower()).split()
    return f"{type(error).__name__}:{' '.join(words[:6])}"


class FakeSocket:
    """Plays back what the server sends, `chunk` bytes per recv at most, then end of file;
    records what the client sends."""

    def __init__(self, received: bytes, chunk: int):
        self.received, self.position, self.chunk = received, 0, chunk
        self.sent = bytearray()

    def recv_into(self, view) -> int:
        size = min(len(view), self.chunk, len(self.received) - self.position)
        view[:size] = self.received[self.position:self.position + size]
        self.position += size
        return size

    def sendall(self, data):
        self.sent += data

    def connect(self, address):
        pass

    def settimeout(self, timeout):
        pass

    def setsockopt(self, *option):
        pass

    def shutdown(self, how):
        pass

    def close(self):
        pass


def run_client(stream: bytes, chunk: int, sequence: int):
    """The client over one connection that plays `stream` and a reconnect that finds the
    server silent: (client, frames it yielded, bytes it sent, how it ended)."""
    connections = [FakeSocket(stream, chunk), FakeSocket(b"", chunk)]
    sockets = iter(connections)
    fake_module = types.SimpleNamespace(
        socket=lambda *args: next(sockets), AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM,
        IPPROTO_TCP=socket.IPPROTO_TCP, TCP_NODELAY=socket.TCP_NODELAY,
        SOL_SOCKET=socket.SOL_SOCKET, SO_RCVBUF=socket.SO_RCVBUF, SHUT_RDWR=socket.SHUT_RDWR)
    client = SessionClient("127.0.0.1", 9, username="fuzz", password="fuzz", sequence=sequence,
                           reconnect=True, max_reconnects=0, backoff=(0.0, 0.0),
                           receive_buffer=0, logger=_QUIET)
    frames = []
    client_module.socket, real_module = fake_module, client_module.socket
    try:
        for batch in client.frame_batches(max_frames=MAX_FRAMES):
            assert 1 <= len(batch) <= MAX_FRAMES
            frames += batch
        ended = "end of session" if client.ended else "closed"
    except (ConnectionLost, LoginRejected, SessionChanged) as error:
        ended = outcome(error.__cause__ or error)
    finally:
        client_module.socket = real_module
    return client, frames, b"".join(bytes(c.sent) for c in connections), ended


def check_client(data: bytes):
    chunk = 1 + data[1] * 7 if data[1] else 1 << 20
    sequence = (0, 1, 2, 7, 1000, (1 << 64) - 1)[data[2] % 6]
    client, frames, sent, ended = run_client(data[CLIENT_HEADER:], chunk, sequence)
    probe(f"client:{ended}")

    delivered = []
    for frame in frames:
        assert frame[4] == protocol.SEQUENCED_DATA
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        session, first, count = packet.peek(frame)
        assert session == client.session and 0 < count < packet.END_OF_SESSION_COUNT
        delivered.append((first, first + count - 1))
    assert len(frames) == client.frames_received
    assert sum(last - first + 1 for first, last in delivered) == client.messages_received
    ranges = sorted(delivered + client.gaps)
    assert all(first <= last for first, last in ranges), ranges
    for (_, last), (first, _) in zip(ranges, ranges[1:]):
        assert last + 1 == first, ("sequence ranges overlap or leave a hole", ranges)
    if ranges:
        assert ranges[-1][1] + 1 == client.next_sequence

    client_frames, tail = split_stream(sent)
    assert not tail
    for frame in client_frames:
        protocol.check_client_frame(frame[4], len(frame) - 4)


def check_trim(data: bytes):
    frame = data[TRIM_HEADER:]
    choice = int.from_bytes(data[1:TRIM_HEADER], "big")
    try:
        session, sequence, count = packet.peek(frame)
    except DecodeError:
        session, sequence, count = None, choice, 0
    first_sequence = sequence + choice % (count + 2) if session is not None else choice
    try:
        trimmed = protocol.trim_frame(frame, first_sequence)
    except (ValueError, ProtocolError) as error:
        probe(f"trim:{outcome(error)}")
        return
    probe("trim:ok")
    skip = first_sequence - sequence
    assert packet.peek(trimmed) == (session, first_sequence, count - skip)
    tail = protocol.message_block(trimmed)
    assert protocol.message_block(frame).endswith(tail)
    try:
        original = packet.decode(frame)
    except DecodeError:
        return
    kept = packet.decode(trimmed)
    for message_type, records in original.messages.items():
        wanted = original.sequences[message_type] >= first_sequence
        assert records[wanted].tobytes() == kept.messages.get(
            message_type, records[:0]).tobytes()
        assert np.array_equal(original.sequences[message_type][wanted],
                              kept.sequences.get(message_type, wanted[:0]))


def check_server_side(data: bytes):
    """Frames the way the simulator's reader does (exchange/server.py, _next_frame)."""
    buffered = data[1:]
    while len(buffered) >= 5:
        length = protocol.LENGTH_PREFIX.unpack_from(buffered)[0]
        try:
            protocol.check_client_frame(buffered[4], length)
        except ProtocolError as error:
            probe(f"server:{outcome(error)}")
            return
        if len(buffered) < 4 + length:
            return
        frame, buffered = buffered[:4 + length], buffered[4 + length:]
        probe(f"server:frame {frame[4]}")
        if frame[4] == protocol.LOGIN_REQUEST:
            username, password, session, sequence = protocol.parse_login_request(frame)
            assert len(username) <= protocol.USERNAME_LENGTH and 0 <= sequence < 1 << 64


TARGETS = {CLIENT: (CLIENT_HEADER, check_client), TRIM: (TRIM_HEADER, check_trim),
           SERVER_SIDE: (1, check_server_side)}


def check(data: bytes):
    data = bytes(data)
    if not data:
        return
    header, target = TARGETS[data[0] % len(TARGETS)]
    if len(data) >= header:
        target(data)


def mutate_stream(stream: bytes, max_size: int, rng: random.Random) -> bytes:
    """One frame of a server stream mutated (data frames re-signed), or frames duplicated,
    dropped, swapped or moved to another frame's sequence number."""
    frames, tail = split_stream(stream)
    if not frames or rng.randrange(8) == 0:
        return libfuzzer_mutate(stream, max_size)
    i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
    choice = rng.randrange(6)
    if choice == 0:
        frames[i] = mutate_frame(frames[i], max_size, rng)
    elif choice == 1:
        frames[i] = libfuzzer_mutate(frames[i], max_size)
    elif choice == 2:
        frames.insert(j, frames[i])
    elif choice == 3:
        del frames[i]
    elif choice == 4:
        frames[i], frames[j] = frames[j], frames[i]
    elif frames[i][4] == frames[j][4] == protocol.SEQUENCED_DATA and len(frames[j]) >= 36:
        frames[i] = resequence(frames[i], packet.peek(frames[j])[1] + rng.randint(-3, 3))
    return (b"".join(frames) + tail)[:max_size]


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    data = bytes(data)
    if not data or rng.randrange(16) == 0:
        return libfuzzer_mutate(data, max_size)
    header, _ = TARGETS[data[0] % len(TARGETS)]
    head, body = data[:header], data[header:]
    if rng.randrange(8) == 0:
        return libfuzzer_mutate(head, header) + body
    if data[0] % len(TARGETS) == CLIENT:
        return head + mutate_stream(body, max_size - len(head), rng)
    if data[0] % len(TARGETS) == TRIM:
        return head + mutate_frame(body, max_size - len(head), rng)
    return head + libfuzzer_mutate(body, max_size - len(head))


if __name__ == "__main__":
    fuzz(check, mutate)

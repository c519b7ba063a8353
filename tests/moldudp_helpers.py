"""Shared pieces of the MoldUDP64 tests: free ports on 127.0.0.1, an in-process simulator and
a source reading it, and what both lines lost."""

from __future__ import annotations

import socket

from feedhandler.exchange.moldudp_server import MoldSimulator, mold_config
from feedhandler.session.moldudp import MoldSource
from feedhandler.session.protocol import message_block

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def closed_port() -> int:
    """A UDP port on 127.0.0.1 where nothing listens (datagrams to it bounce: ICMP)."""
    return free_port()


def simulator(lines: list[int], request_port: int | None, **settings) -> MoldSimulator:
    """A simulator sending to the A (and B) line on 127.0.0.1, its request server on
    request_port (None: none)."""
    config = dict(group=(HOST, lines[0]), line_b=(HOST, lines[1]) if len(lines) > 1 else None,
                  request_server=None if request_port is None else (HOST, request_port),
                  status_interval=None, symbols=20, live_clock=False)
    return MoldSimulator(mold_config(**{**config, **settings}))


def read_all(source: MoldSource) -> tuple[bytes, int]:
    """(message blocks of every frame in order, frames) until the source ends."""
    blocks, frames = [], 0
    for batch in source.batches():
        frames += len(batch)
        blocks += [message_block(frame) for frame in batch]
    return b"".join(blocks), frames


def sequences(ranges: list[tuple[int, int]]) -> set[int]:
    """The sequence numbers of (first, count) ranges."""
    return {number for first, count in ranges for number in range(first, first + count)}


"""Helpers shared by the tests: splitting framed blocks, frames of generated streams."""

import contextlib

import numpy as np

from feedhandler.exchange import synthetic
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.wire import packet

SESSION = b"TEST000001"


def split_block(block: bytes) -> list[bytes]:
    """Messages of a block in NASDAQ file framing, without their length prefixes."""
    messages, pos = [], 0
    while pos < len(block):
        length = int.from_bytes(block[pos:pos + 2], "big")
        messages.append(block[pos + 2:pos + 2 + length])
        pos += 2 + length
    return messages


def uniform_stream(count: int, seed: int) -> tuple[bytes, np.ndarray]:
    """Every message type in equal measure. System events never say 'C' (end of messages),
    since itchfeed stops parsing there."""
    block, types = synthetic.random_stream(count, seed, mix=synthetic.UNIFORM_MIX)
    messages = split_block(block)
    for i, message in enumerate(messages):
        if message[:1] == b"S" and message[11:12] == b"C":
            messages[i] = message[:11] + b"O"
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages), types


def frames_of(messages: list[bytes], per_frame: int, codec: str = "lz4", first: int = 1) -> list[bytes]:
    return [packet.encode(messages[i:i + per_frame], session=SESSION, sequence=first + i,
                          codec=codec)
            for i in range(0, len(messages), per_frame)]


@contextlib.contextmanager
def running_simulator(**settings):
    """A simulator serving one seeded session on a free port, stopped afterwards."""
    simulator = Simulator(SimulatorConfig(port=0, status_interval=None, **settings)).start()
    try:
        yield simulator
    finally:
        simulator.stop()

"""Stream NASDAQ TotalView-ITCH 5.0 files (binary file framing, plain or gzip) in bounded chunks.

NASDAQ's daily files are around 10 GB, so they are never loaded whole: `read_blocks` reads a few
MiB at a time, finds the message boundaries by walking the u16 length prefixes, and carries an
incomplete last message over to the next chunk.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from feedhandler.exchange.orderflow import MessageBlock

READ_SIZE = 4 << 20
GZIP_MAGIC = b"\x1f\x8b"
_TIMESTAMP_OFFSET = 2 + 5   # length prefix, then type, stock locate and tracking number
# Every ITCH message has the 11-byte common header (type to timestamp); replay reads timestamps,
# so shorter "messages" are refused here rather than read past.
MIN_MESSAGE_LENGTH = 11


class ReplayError(ValueError):
    """The file is not in NASDAQ's binary file framing."""


def open_itch(path):
    """The file as a binary stream, decompressed if it is gzip (recognised by its magic bytes,
    whatever the name)."""
    path = Path(path)
    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else path.open("rb")


def message_offsets(data, file_offset: int = 0) -> tuple[list[int], int]:
    """Start offsets of the complete messages in `data` and the offset where the first
    incomplete one (or the end) is. `file_offset` (where `data` starts) is for error messages."""
    offsets = []
    append = offsets.append
    position, size = 0, len(data)
    # The one per-message loop of replay mode: each start depends on the previous length.
    while position + 2 <= size:
        length = data[position] << 8 | data[position + 1]
        if length < MIN_MESSAGE_LENGTH:
            raise ReplayError(f"message length {length} at file offset {file_offset + position} "
                              f"is shorter than an ITCH header")
        end = position + 2 + length
        if end > size:
            break
        append(position)
        position = end
    return offsets, position


def read_blocks(path, read_size: int = READ_SIZE) -> Iterator[MessageBlock]:
    """The file's messages as consecutive blocks of whole messages, about `read_size` bytes
    each."""
    carry = b""
    consumed = 0            # file offset of `carry`
    with open_itch(path) as stream:
        while chunk := stream.read(read_size):
            data = carry + chunk if carry else chunk
            offsets, end = message_offsets(data, consumed)
            if offsets:
                yield MessageBlock(data[:end], np.array(offsets + [end], np.int64))
            carry = data[end:]
            consumed += end
    if carry:
        raise ReplayError(f"file ends inside a message at file offset {consumed}")


_TIMESTAMP_SHIFTS = np.array([40, 32, 24, 16, 8, 0], np.uint64)   # the 6 bytes, big-endian


def _timestamp_bytes(block: MessageBlock) -> np.ndarray:
    """Index of each message's 6 timestamp bytes in block.data, one row per message."""
    return block.offsets[:-1, None] + _TIMESTAMP_OFFSET + np.arange(6)


def message_timestamps(block: MessageBlock) -> np.ndarray:
    """ITCH timestamp (ns since midnight) of every message of the block, as uint64."""
    digits = np.frombuffer(block.data, np.uint8)[_timestamp_bytes(block)].astype(np.uint64)
    return (digits << _TIMESTAMP_SHIFTS).sum(axis=1, dtype=np.uint64)


def with_timestamps(block: MessageBlock, timestamps: np.ndarray) -> MessageBlock:
    """The block with each message's ITCH timestamp replaced (ns since midnight, one per
    message)."""
    data = np.frombuffer(block.data, np.uint8).copy()
    stamps = np.asarray(timestamps, np.uint64)[:, None]
    data[_timestamp_bytes(block)] = ((stamps >> _TIMESTAMP_SHIFTS) & np.uint64(0xFF)).astype(np.uint8)
    return MessageBlock(data.tobytes(), block.offsets)

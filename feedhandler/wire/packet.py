"""Feed frames: a small header plus a MoldUDP64 downstream packet, optionally LZ4-compressed.

The byte layout is in docs/protocol.md. Decoding runs in ext/decode.pyx without the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import struct

import lz4.block
import numpy as np

from feedhandler.wire import _decode
from feedhandler.errors import DecodeError
from feedhandler.wire.itch import Quarantined, check_policy, frame_messages

__all__ = ["FRAME_HEADER_SIZE", "PACKET_HEADER_SIZE", "MAX_FRAME_LENGTH", "MAX_PACKET_LENGTH", "HEARTBEAT_COUNT", "END_OF_SESSION_COUNT", "CODECS", "SESSION_LENGTH", "Packet", "peek", "decode", "decode_many", "encode_block", "encode"]

FRAME_HEADER_SIZE = _decode.FRAME_HEADER_SIZE
PACKET_HEADER_SIZE = _decode.PACKET_HEADER_SIZE
MAX_FRAME_LENGTH = _decode.MAX_FRAME_LENGTH
MAX_PACKET_LENGTH = _decode.MAX_PACKET_LENGTH
HEARTBEAT_COUNT = 0
END_OF_SESSION_COUNT = _decode.END_OF_SESSION_COUNT
CODECS = {"none": _decode.CODEC_NONE, "lz4": _decode.CODEC_LZ4}
SESSION_LENGTH = 10
_PACKET_HEADER = struct.Struct(">10sQH")


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded frame.

    `messages[t]` holds the records of type t in stream order and `sequences[t]` the MoldUDP64
    sequence number of each of those records. A frame quarantined as a whole has session,
    sequence and count None and a single entry in `quarantined`.
    """

    session: bytes | None
    sequence: int | None
    count: int | None
    messages: dict[str, np.ndarray]
    sequences: dict[str, np.ndarray]
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def is_heartbeat(self) -> bool:
        return self.count == HEARTBEAT_COUNT

    @property
    def is_end_of_session(self) -> bool:
        return self.count == END_OF_SESSION_COUNT

    @property
    def next_sequence(self) -> int | None:
        """Sequence number the message after this packet will carry."""
        if self.sequence is None:
            return None
        return self.sequence + (0 if self.count == END_OF_SESSION_COUNT else self.count)


def peek(frame) -> tuple[bytes, int, int]:
    """(session, first sequence number, message count) of a frame, read from its uncompressed
    MoldUDP64 header without decoding or checking anything else."""
    if len(frame) < FRAME_HEADER_SIZE + PACKET_HEADER_SIZE:
        raise DecodeError("frame shorter than its header", 0)
    session, sequence, count = _PACKET_HEADER.unpack_from(frame, FRAME_HEADER_SIZE)
    return session, sequence, count


def _packet(session, sequence, count, messages, sequences, quarantined) -> Packet:
    return Packet(session, sequence, count, messages, sequences,
                  [Quarantined(*q) for q in quarantined] if quarantined else [])


def decode(frame, *, policy: str = "strict") -> Packet:
    """Decode one whole frame as it came off the wire (length prefix included)."""
    return _packet(*_decode.decode_frame(frame, quarantine=check_policy(policy)))


def decode_many(frames: list, *, policy: str = "strict") -> list[Packet]:
    """`decode` for a list of frames (e.g. all that one socket read brought), with the GIL
    released once for the whole list."""
    return [_packet(*result)
            for result in _decode.decode_frames(frames, quarantine=check_policy(policy))]


def encode_block(block, count: int, *, session: bytes, sequence: int, codec: str = "lz4") -> bytes:
    """One frame around a message block that is already length-prefixed (NASDAQ file framing).

    The simulator uses this to frame slices of a pre-encoded stream without touching each
    message; `encode` is the convenience form for a list of messages."""
    if len(session) != SESSION_LENGTH:
        raise ValueError(f"session must be {SESSION_LENGTH} bytes, got {len(session)}")
    if not 0 <= count <= END_OF_SESSION_COUNT:
        raise ValueError(f"message count {count} does not fit MoldUDP64's u16")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
    packet_header = b"".join((bytes(session), sequence.to_bytes(8, "big"), count.to_bytes(2, "big")))
    packet = packet_header + bytes(block)
    if len(packet) > MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {len(packet)} bytes exceeds {MAX_PACKET_LENGTH}")
    # The MoldUDP64 header stays readable, so session code can follow sequence numbers
    # without decompressing.
    if codec == "lz4":
        payload = packet_header + lz4.block.compress(block, store_size=False)
    else:
        payload = packet
    header = b"".join((
        (FRAME_HEADER_SIZE - 4 + len(payload)).to_bytes(4, "big"),
        bytes((_decode.FRAME_TYPE_SEQUENCED, _decode.FRAME_VERSION, CODECS[codec], 0)),
        len(packet).to_bytes(4, "big"),
        _decode.frame_checksum(packet).to_bytes(4, "big"),
    ))
    return header + payload


def encode(messages, *, session: bytes, sequence: int, codec: str = "lz4") -> bytes:
    """ITCH messages (bytes-like, no length prefixes) -> one whole frame as it goes on the wire."""
    messages = list(messages)
    return encode_block(frame_messages(messages), len(messages), session=session,
                        sequence=sequence, codec=codec)

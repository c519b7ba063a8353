"""Feed frames: a small header plus a MoldUDP64 downstream packet, optionally LZ4-compressed.

The byte layout is in docs/protocol.md. Decoding runs in ext/decode.pyx without the GIL.
"""

from __future__ import annotations

import struct

import lz4.block

from feedhandler.errors import DecodeError
from feedhandler.wire import _decode
from feedhandler.wire._decode import HeaderField, Packet
from feedhandler.wire.itch import check_policy, frame_messages

__all__ = ["FRAME_HEADER_SIZE", "PACKET_HEADER_SIZE", "FRAME_HEADER_FIELDS", "PACKET_HEADER_FIELDS", "HeaderField", "MAX_FRAME_LENGTH", "MAX_PACKET_LENGTH", "HEARTBEAT_COUNT", "END_OF_SESSION_COUNT", "CODECS", "SESSION_LENGTH", "Packet", "peek", "decode", "decode_many", "encode_block", "encode", "wrap"]

# Everything below comes from the packed structs and constants of ext/frame_layout.pxd.
FRAME_HEADER_SIZE: int = _decode.FRAME_HEADER_SIZE
PACKET_HEADER_SIZE: int = _decode.PACKET_HEADER_SIZE
FRAME_HEADER_FIELDS: dict[str, HeaderField] = _decode.FRAME_HEADER_FIELDS
"""Frame header field name -> (name, offset, size, `struct` format), in wire order."""
PACKET_HEADER_FIELDS: dict[str, HeaderField] = _decode.PACKET_HEADER_FIELDS
"""MoldUDP64 packet header field name -> (name, offset, size, `struct` format), in wire order."""
MAX_FRAME_LENGTH: int = _decode.MAX_FRAME_LENGTH
MAX_PACKET_LENGTH: int = _decode.MAX_PACKET_LENGTH
HEARTBEAT_COUNT: int = _decode.HEARTBEAT_COUNT
END_OF_SESSION_COUNT: int = _decode.END_OF_SESSION_COUNT
CODECS = {"none": _decode.CODEC_NONE, "lz4": _decode.CODEC_LZ4}
SESSION_LENGTH: int = PACKET_HEADER_FIELDS["session"].size

_FRAME_HEADER = struct.Struct(_decode.FRAME_HEADER_FORMAT)
_PACKET_HEADER = struct.Struct(_decode.PACKET_HEADER_FORMAT)
# frame_length counts the bytes after itself.
_LENGTH_FIELD_SIZE = FRAME_HEADER_FIELDS["frame_length"].size


def peek(frame) -> tuple[bytes, int, int]:
    """(session, first sequence number, message count) of a frame, read from its uncompressed
    MoldUDP64 header without decoding or checking anything else."""
    if len(frame) < FRAME_HEADER_SIZE + PACKET_HEADER_SIZE:
        raise DecodeError(_decode.FAULTS["frame_too_short"], 0, "frame_too_short")
    return _PACKET_HEADER.unpack_from(frame, FRAME_HEADER_SIZE)


def decode(frame, *, policy: str = "strict") -> Packet:
    """Decode one whole frame as it came off the wire (length prefix included)."""
    return _decode.decode_frame(frame, quarantine=check_policy(policy))


def decode_many(frames: list, *, policy: str = "strict") -> list[Packet]:
    """`decode` for a list of frames (e.g. all that one socket read brought), with the GIL
    released once for the whole list."""
    return _decode.decode_frames(frames, quarantine=check_policy(policy))


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
    packet_header = _PACKET_HEADER.pack(bytes(session), sequence, count)
    packet = packet_header + bytes(block)
    if codec == "none":
        return wrap(packet)
    if len(packet) > MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {len(packet)} bytes exceeds {MAX_PACKET_LENGTH}")
    # The MoldUDP64 header stays readable, so session code can follow sequence numbers
    # without decompressing.
    return _frame_header(CODECS["lz4"], len(packet), _decode.frame_checksum(packet),
                         packet_header + lz4.block.compress(block, store_size=False))


def wrap(mold_packet) -> bytes:
    """One uncompressed frame around a MoldUDP64 packet (header and message blocks).

    The transports that carry plain MoldUDP64 (datagrams) or single messages (SoupBinTCP) wrap
    what they receive this way, so that every transport hands the pipeline the same unit: the
    sequence tracker, trimming, the decoder and the quarantine see one format. Only the length
    is checked here; the decoder checks the rest."""
    length = len(mold_packet)
    if not PACKET_HEADER_SIZE <= length <= MAX_PACKET_LENGTH:
        raise ValueError(f"a MoldUDP64 packet of {length} bytes: it must hold its "
                         f"{PACKET_HEADER_SIZE}-byte header and at most {MAX_PACKET_LENGTH} bytes")
    return _frame_header(CODECS["none"], length, _decode.frame_checksum(mold_packet),
                         mold_packet)


def _frame_header(codec: int, packet_length: int, checksum: int, payload) -> bytes:
    return _FRAME_HEADER.pack(FRAME_HEADER_SIZE - _LENGTH_FIELD_SIZE + len(payload),
                              _decode.FRAME_TYPE_SEQUENCED, _decode.FRAME_VERSION, codec, 0,
                              packet_length, checksum) + bytes(payload)


def encode(messages, *, session: bytes, sequence: int, codec: str = "lz4") -> bytes:
    """ITCH messages (bytes-like, no length prefixes) -> one whole frame as it goes on the wire."""
    messages = list(messages)
    return encode_block(frame_messages(messages), len(messages), session=session,
                        sequence=sequence, codec=codec)

"""MoldUDP64 1.00 datagrams: downstream packets (data, heartbeat, end of session) and request
packets, byte for byte as NASDAQ's specification defines them (docs/protocol.md, "MoldUDP64").

Both packet kinds start with the same 20 bytes: session (10 ASCII, space padded), sequence
number (u64 big-endian) and a count (u16 big-endian). Downstream, the sequence number is the
first message's (for a heartbeat or end of session: the next one to come) and the count is the
number of message blocks (u16 length + message) that follow, 0 for a heartbeat, 0xFFFF for end
of session. A request asks the request server for `count` messages from `sequence`. That header
is declared once, as PacketHeader in ext/frame_layout.pxd; this module builds and reads it with
the `struct` format the compiled decoder derives from that declaration.
"""

from __future__ import annotations

import struct

from feedhandler.wire import _decode, packet
from feedhandler.wire.itch import WIRE_LENGTHS

__all__ = ["HEADER_SIZE", "REQUEST_SIZE", "DEFAULT_MAX_PAYLOAD", "MAX_UDP_PAYLOAD",
           "MAX_REQUEST_COUNT", "LARGEST_MESSAGE", "MoldError", "downstream", "heartbeat",
           "end_of_session", "request", "parse_request", "header", "check_blocks",
           "messages_per_datagram"]

_HEADER = struct.Struct(_decode.PACKET_HEADER_FORMAT)
_BLOCK_LENGTH = struct.Struct(">H")      # a message block's length prefix
HEADER_SIZE = _HEADER.size
# A request packet is the downstream header alone: session, first sequence number, count.
REQUEST_SIZE = HEADER_SIZE
# IPv4 UDP payload on a 1500-byte Ethernet MTU with room to spare for tunnels and VLAN tags;
# loopback and jumbo-frame networks can take more (up to MAX_UDP_PAYLOAD).
DEFAULT_MAX_PAYLOAD = 1400
MAX_UDP_PAYLOAD = 65507
# A request's count is a u16; 0xFFFF would read as end of session in a downstream header.
MAX_REQUEST_COUNT = packet.END_OF_SESSION_COUNT - 1
LARGEST_MESSAGE = max(WIRE_LENGTHS.values())


class MoldError(ValueError):
    """A datagram that is not a well-formed MoldUDP64 packet; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _session(session: bytes) -> bytes:
    if len(session) != packet.SESSION_LENGTH:
        raise ValueError(f"session must be {packet.SESSION_LENGTH} bytes, got {len(session)}")
    return bytes(session)


def downstream(session: bytes, sequence: int, messages) -> bytes:
    """A data packet: `messages` (ITCH messages without length prefixes) from `sequence` on."""
    messages = list(messages)
    if not 0 < len(messages) < packet.END_OF_SESSION_COUNT:
        raise ValueError(f"a data packet carries 1..{packet.END_OF_SESSION_COUNT - 1} "
                         f"messages, not {len(messages)}")
    blocks = b"".join(_BLOCK_LENGTH.pack(len(message)) + bytes(message) for message in messages)
    return _HEADER.pack(_session(session), sequence, len(messages)) + blocks


def heartbeat(session: bytes, next_sequence: int) -> bytes:
    return _HEADER.pack(_session(session), next_sequence, packet.HEARTBEAT_COUNT)


def end_of_session(session: bytes, next_sequence: int) -> bytes:
    return _HEADER.pack(_session(session), next_sequence, packet.END_OF_SESSION_COUNT)


def request(session: bytes, sequence: int, count: int) -> bytes:
    """A request packet: `count` messages from `sequence`, to the request server."""
    if not 1 <= count <= MAX_REQUEST_COUNT or sequence < 1:
        raise ValueError(f"a request asks for 1..{MAX_REQUEST_COUNT} messages from sequence "
                         f">= 1, not {count} from {sequence}")
    return _HEADER.pack(_session(session), sequence, count)


def header(datagram) -> tuple[bytes, int, int]:
    """(session, sequence number, count) of a downstream packet; MoldError if it is shorter
    than its header."""
    if len(datagram) < HEADER_SIZE:
        raise MoldError("short", f"{len(datagram)} bytes, a header needs {HEADER_SIZE}")
    return _HEADER.unpack_from(datagram)


def parse_request(datagram) -> tuple[bytes, int, int]:
    """(session, sequence number, count) of a request packet; MoldError unless it is exactly a
    request of at least one message from sequence 1 or later."""
    if len(datagram) != REQUEST_SIZE:
        raise MoldError("request_length", f"{len(datagram)} bytes, a request is {REQUEST_SIZE}")
    session, sequence, count = _HEADER.unpack_from(datagram)
    if sequence < 1 or count < 1:
        raise MoldError("request_range", f"{count} messages from sequence {sequence}")
    return session, sequence, count


def check_blocks(datagram, length: int, count: int) -> None:
    """MoldError unless the first `length` bytes of `datagram` are a header and exactly `count`
    message blocks (heartbeats and end of session: the header alone)."""
    blocks = _decode.count_blocks(datagram, length)
    if count in (packet.HEARTBEAT_COUNT, packet.END_OF_SESSION_COUNT):
        if blocks:
            raise MoldError("blocks", f"{length - HEADER_SIZE} bytes after a header of count "
                                      f"{count}")
    elif blocks != count:
        raise MoldError("blocks", f"the {length - HEADER_SIZE} bytes after the header are "
                                  + (f"{blocks} message blocks" if blocks >= 0 else
                                     "message blocks of which the last overruns the datagram")
                                  + f", the count says {count}")


def messages_per_datagram(max_payload: int) -> int:
    """How many messages of any ITCH type always fit one datagram of `max_payload` bytes."""
    if not HEADER_SIZE + 2 + LARGEST_MESSAGE <= max_payload <= MAX_UDP_PAYLOAD:
        raise ValueError(f"a datagram payload must be {HEADER_SIZE + 2 + LARGEST_MESSAGE}.."
                         f"{MAX_UDP_PAYLOAD} bytes, not {max_payload}")
    return (max_payload - HEADER_SIZE) // (2 + LARGEST_MESSAGE)

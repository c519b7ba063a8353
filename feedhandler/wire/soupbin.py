"""SoupBinTCP 4.1 packets, byte for byte as NASDAQ's specification defines them.

Every packet is a big-endian u16 packet length (the bytes after the length field: the type byte
and the payload), a one-byte packet type and the payload (the header is declared once in
ext/soupbin_layout.pxd; its size comes from `_soupbin`). The fixed payloads are laid out once,
in `LAYOUTS`, as (field, width, padding) in wire order; every encoder and parser here is built
from them. Text fields are ASCII: alpha fields are left-justified and padded on the right with
spaces, numeric fields (sequence numbers) are decimal, right-justified and padded on the left
with spaces; a session name is padded on the left (docs/protocol.md, "SoupBinTCP 4.1", says
where each fact comes from).

Malformed packets raise `PacketError` (a ValueError with a stable `code` and the `offset` of the
packet); the bulk paths (gathering 'S' packets into a frame, writing them from store frames)
are `_soupbin.gather_frame` and `_soupbin.sequenced_packets`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from feedhandler.wire import _soupbin
from feedhandler.wire._soupbin import PacketError

__all__ = ["DEBUG", "LOGIN_ACCEPTED", "LOGIN_REJECTED", "SEQUENCED_DATA", "SERVER_HEARTBEAT",
           "END_OF_SESSION", "LOGIN_REQUEST", "UNSEQUENCED_DATA", "CLIENT_HEARTBEAT",
           "LOGOUT_REQUEST", "SERVER_TYPES", "CLIENT_TYPES", "LAYOUTS", "Field", "HEADER_SIZE",
           "LENGTH_FIELD", "MAX_PAYLOAD", "NOT_AUTHORIZED", "SESSION_NOT_AVAILABLE",
           "REJECT_REASONS", "PacketError", "encode", "login_request", "login_accepted",
           "login_rejected", "sequenced_data", "unsequenced_data", "debug", "server_heartbeat",
           "end_of_session", "client_heartbeat", "logout_request", "parse", "fields",
           "parse_login_request", "parse_login_accepted", "parse_login_rejected", "parse_debug",
           "check_prefix", "blank_session", "session_text"]

# Packet types (one byte, ASCII). Both directions:
DEBUG = ord("+")
# Server to client:
LOGIN_ACCEPTED = ord("A")
LOGIN_REJECTED = ord("J")
SEQUENCED_DATA = _soupbin.SEQUENCED_DATA        # 'S': one message, numbered by counting
SERVER_HEARTBEAT = ord("H")
END_OF_SESSION = ord("Z")
# Client to server:
LOGIN_REQUEST = ord("L")
UNSEQUENCED_DATA = ord("U")                     # both ways in the spec; never numbered
CLIENT_HEARTBEAT = ord("R")
LOGOUT_REQUEST = ord("O")

SERVER_TYPES = frozenset({DEBUG, LOGIN_ACCEPTED, LOGIN_REJECTED, SEQUENCED_DATA,
                          SERVER_HEARTBEAT, END_OF_SESSION, UNSEQUENCED_DATA})
CLIENT_TYPES = frozenset({DEBUG, LOGIN_REQUEST, UNSEQUENCED_DATA, CLIENT_HEARTBEAT,
                          LOGOUT_REQUEST})

# Login rejected reject reason codes.
NOT_AUTHORIZED = b"A"
SESSION_NOT_AVAILABLE = b"S"
REJECT_REASONS = {NOT_AUTHORIZED: "not authorized", SESSION_NOT_AVAILABLE: "session not available"}


class Field(NamedTuple):
    """A fixed-width payload field: `pad` is "right" (text left-justified, spaces after: alpha),
    "left" (right-justified, spaces before: numeric, and the session) or None (one raw byte)."""

    name: str
    width: int
    pad: str | None


_SESSION = Field("session", 10, "left")
# The one definition of every fixed payload, in wire order. Types absent here carry a variable
# payload (S, U: a message; +: text); the empty ones have no field.
LAYOUTS: dict[int, tuple[Field, ...]] = {
    LOGIN_REQUEST: (Field("username", 6, "right"), Field("password", 10, "right"),
                    _SESSION._replace(name="requested_session"),
                    Field("requested_sequence_number", 20, "left")),
    LOGIN_ACCEPTED: (_SESSION, Field("sequence_number", 20, "left")),
    LOGIN_REJECTED: (Field("reject_reason_code", 1, None),),
    SERVER_HEARTBEAT: (), END_OF_SESSION: (), CLIENT_HEARTBEAT: (), LOGOUT_REQUEST: (),
}
_NUMERIC = {"requested_sequence_number", "sequence_number"}
SESSION_WIDTH = _SESSION.width

LENGTH_FIELD = struct.Struct(">H")
HEADER_SIZE: int = _soupbin.HEADER_SIZE          # length field + type byte
if LENGTH_FIELD.size != _soupbin.LENGTH_FIELD_SIZE:
    raise ImportError("soupbin_layout.pxd and LENGTH_FIELD disagree")
# The packet length counts the type byte, so a payload has at most 0xFFFF - 1 bytes.
MAX_PAYLOAD = (1 << (8 * LENGTH_FIELD.size)) - 2
_PACKET_LENGTH = {kind: 1 + sum(f.width for f in layout) for kind, layout in LAYOUTS.items()}
_STRUCTS = {kind: struct.Struct(">" + "".join(f"{f.width}s" for f in layout))
            for kind, layout in LAYOUTS.items()}


def _error(code: str, reason: str, offset: int = 0) -> PacketError:
    return PacketError(code, reason, offset)


def encode(packet_type: int, payload=b"") -> bytes:
    """One packet: length, type, payload."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return LENGTH_FIELD.pack(1 + len(payload)) + bytes((packet_type,)) + bytes(payload)


def _text(value, field: Field) -> bytes:
    if isinstance(value, int):
        if field.name not in _NUMERIC or value < 0:
            raise ValueError(f"{field.name} takes text, not {value!r}")
        value = str(value).encode("ascii")
    elif isinstance(value, str):
        value = value.encode("ascii")
    value = bytes(value)
    if field.pad is None:
        if len(value) != field.width:
            raise ValueError(f"{field.name} is {field.width} byte(s), got {value!r}")
        return value
    text = value.strip(b" ")
    if len(text) > field.width or not all(0x20 < byte < 0x7F for byte in text):
        raise ValueError(f"{field.name} must be at most {field.width} printable ASCII "
                         f"characters, got {value!r}")
    return text.rjust(field.width) if field.pad == "left" else text.ljust(field.width)


def _fixed(packet_type: int, **values) -> bytes:
    layout = LAYOUTS[packet_type]
    return encode(packet_type, b"".join(_text(values[f.name], f) for f in layout))


def login_request(username, password, session=b"", sequence: int = 1) -> bytes:
    """Login request: session b"" (all blanks) = the current session; sequence 1 = from the
    start, 0 = from the next message the server generates."""
    return _fixed(LOGIN_REQUEST, username=username, password=password,
                  requested_session=session, requested_sequence_number=sequence)


def login_accepted(session, sequence: int) -> bytes:
    """Login accepted: the session logged in to and the sequence number of the next 'S'."""
    return _fixed(LOGIN_ACCEPTED, session=session, sequence_number=sequence)


def login_rejected(reason: bytes) -> bytes:
    return _fixed(LOGIN_REJECTED, reject_reason_code=reason)


def sequenced_data(message) -> bytes:
    if not message:
        raise ValueError("a sequenced data packet carries one message, not none")
    return encode(SEQUENCED_DATA, message)


def unsequenced_data(message) -> bytes:
    return encode(UNSEQUENCED_DATA, message)


def debug(text: str) -> bytes:
    return encode(DEBUG, text.encode("ascii", "replace")[:MAX_PAYLOAD])


def server_heartbeat() -> bytes:
    return encode(SERVER_HEARTBEAT)


def end_of_session() -> bytes:
    return encode(END_OF_SESSION)


def client_heartbeat() -> bytes:
    return encode(CLIENT_HEARTBEAT)


def logout_request() -> bytes:
    return encode(LOGOUT_REQUEST)


def check_prefix(packet_type: int, length: int, allowed: frozenset[int], *,
                 max_length: int = MAX_PAYLOAD + 1, offset: int = 0) -> None:
    """Refuse a packet from its header alone, before its payload is read: a length of 0, a type
    not in `allowed`, a fixed packet of the wrong length, or one longer than `max_length`."""
    if length == 0:
        raise _error("length_zero", "packet length field of 0 (no packet type)", offset)
    if packet_type not in allowed:
        raise _error("unknown_type", f"unexpected packet type 0x{packet_type:02x}", offset)
    expected = _PACKET_LENGTH.get(packet_type)
    if expected is not None and length != expected:
        raise _error("bad_length", f"{chr(packet_type)!r} packet length {length}, expected "
                     f"{expected}", offset)
    if length > max_length:
        raise _error("too_long", f"{chr(packet_type)!r} packet length {length} exceeds "
                     f"{max_length}", offset)
    if packet_type == SEQUENCED_DATA and length == 1:
        raise _error("empty_message", "sequenced data packet without a message", offset)


def parse(packet) -> tuple[int, bytes]:
    """(type, payload) of exactly one whole packet."""
    packet = bytes(packet)
    if len(packet) < HEADER_SIZE:
        raise _error("truncated", f"{len(packet)} bytes, shorter than the packet header")
    length = LENGTH_FIELD.unpack_from(packet)[0]
    if length == 0:
        raise _error("length_zero", "packet length field of 0 (no packet type)")
    if LENGTH_FIELD.size + length != len(packet):
        raise _error("length_mismatch", f"packet length field {length} for "
                     f"{len(packet) - LENGTH_FIELD.size} bytes")
    return packet[LENGTH_FIELD.size], packet[HEADER_SIZE:]


def fields(packet, packet_type: int) -> dict[str, bytes]:
    """The raw fields of a fixed packet of `packet_type` (padding kept)."""
    kind, payload = parse(packet)
    if kind != packet_type:
        raise _error("unexpected_type", f"{chr(kind)!r} packet where {chr(packet_type)!r} was "
                     "expected")
    if len(payload) != _STRUCTS[kind].size:
        raise _error("bad_length", f"{chr(kind)!r} packet with a {len(payload)}-byte payload, "
                     f"expected {_STRUCTS[kind].size}")
    return dict(zip((f.name for f in LAYOUTS[kind]), _STRUCTS[kind].unpack(payload)))


def _number(value: bytes, name: str) -> int:
    """A numeric field: digits, padded on the left with spaces."""
    digits = value.lstrip(b" ")
    if not digits or not digits.isdigit() or not digits.isascii():
        raise _error("bad_number", f"{name} {value!r} is not a space-padded decimal number")
    return int(digits)


def session_text(value: bytes) -> bytes:
    """A session field without its padding (spaces on either side are accepted: the field is
    left-padded by the spec, but a server that left-justifies it names the same session)."""
    text = bytes(value).strip(b" ")
    if not all(0x20 < byte < 0x7F for byte in text):
        raise _error("bad_session", f"session {bytes(value)!r} is not printable ASCII")
    return text


def blank_session(value: bytes) -> bool:
    return not bytes(value).strip(b" ")


def parse_login_request(packet) -> tuple[bytes, bytes, bytes, int]:
    """(username, password, session, requested sequence number), padding removed; session b""
    means the current session."""
    f = fields(packet, LOGIN_REQUEST)
    return (f["username"].rstrip(b" "), f["password"].rstrip(b" "),
            session_text(f["requested_session"]),
            _number(f["requested_sequence_number"], "requested sequence number"))


def parse_login_accepted(packet) -> tuple[bytes, int]:
    """(session without padding, sequence number of the next sequenced data packet)."""
    f = fields(packet, LOGIN_ACCEPTED)
    session = session_text(f["session"])
    if not session:
        raise _error("bad_session", "login accepted without a session")
    return session, _number(f["sequence_number"], "sequence number")


def parse_login_rejected(packet) -> bytes:
    return fields(packet, LOGIN_REJECTED)["reject_reason_code"]


def parse_debug(packet) -> str:
    kind, payload = parse(packet)
    if kind != DEBUG:
        raise _error("unexpected_type", f"{chr(kind)!r} packet where a debug packet was expected")
    return payload.decode("ascii", "replace")

"""The TCP session protocol shared by `feedhandler.session` (client) and
`feedhandler.simulator` (server): frame types, control frame codec, limits and timings.

Modeled on SoupBinTCP 4.x; the layout is in docs/protocol.md ("Session protocol"). Every frame
is a u32 big-endian length (bytes after the length field), a type byte and a payload. Data
frames (type S) are exactly what `packet.encode_block` writes; server heartbeats and end of
session are S frames too (MoldUDP64 message count 0 and 0xFFFF), so they carry the server's next
sequence number.
"""

from __future__ import annotations

import struct

from feedhandler.errors import DecodeError
from feedhandler.wire import _decode, packet

# Frame types.
SEQUENCED_DATA = ord("S")     # server: data, heartbeat (count 0), end of session (count 0xFFFF)
LOGIN_ACCEPTED = ord("A")     # server: session, next sequence number
LOGIN_REJECTED = ord("J")     # server: reason code
DEBUG = ord("+")              # server: human-readable text, e.g. why it is closing the link
LOGIN_REQUEST = ord("L")      # client: username, password, session, requested sequence number
CLIENT_HEARTBEAT = ord("R")   # client
LOGOUT_REQUEST = ord("O")     # client

# Login rejected reasons (SoupBinTCP's codes).
NOT_AUTHORIZED = b"A"
SESSION_NOT_AVAILABLE = b"S"
REJECT_REASONS = {NOT_AUTHORIZED: "not authorized", SESSION_NOT_AVAILABLE: "session not available"}

USERNAME_LENGTH = 6
PASSWORD_LENGTH = 10
SESSION_LENGTH = packet.SESSION_LENGTH

LENGTH_PREFIX = struct.Struct(">I")
_LOGIN_REQUEST = struct.Struct(f">IB{USERNAME_LENGTH}s{PASSWORD_LENGTH}s{SESSION_LENGTH}sQ")
_LOGIN_ACCEPTED = struct.Struct(f">IB{SESSION_LENGTH}sQ")
_LOGIN_REJECTED = struct.Struct(">IBc")
_EMPTY = struct.Struct(">IB")

# Frame length (the u32) of each fixed-size control frame.
LOGIN_REQUEST_LENGTH = _LOGIN_REQUEST.size - 4
LOGIN_ACCEPTED_LENGTH = _LOGIN_ACCEPTED.size - 4
LOGIN_REJECTED_LENGTH = _LOGIN_REJECTED.size - 4
EMPTY_LENGTH = 1
MAX_DEBUG_TEXT = 200
# A client only ever sends the frames above; anything longer is refused before it is buffered.
MAX_CLIENT_FRAME_LENGTH = 64
MAX_SERVER_FRAME_LENGTH = packet.MAX_FRAME_LENGTH
# The shortest S frame: frame header and MoldUDP64 header, no messages.
MIN_DATA_FRAME_LENGTH = packet.FRAME_HEADER_SIZE + packet.PACKET_HEADER_SIZE - 4

_CODEC_NAMES = {value: name for name, value in packet.CODECS.items()}
_CODEC_OFFSET = packet.FRAME_HEADER_FIELDS["codec"].offset

HEARTBEAT_INTERVAL = 1.0      # seconds without sending before a heartbeat
LINK_TIMEOUT = 15.0           # seconds without receiving before the link is dead


class ProtocolError(Exception):
    """The peer broke the session protocol."""


def pad(text: bytes, width: int, what: str) -> bytes:
    """Left-justified, space-padded ASCII field, as SoupBinTCP writes them."""
    if len(text) > width or not text.isascii():
        raise ValueError(f"{what} must be at most {width} ASCII characters, got {text!r}")
    return text.ljust(width)


def login_request(username: bytes, password: bytes, session: bytes, sequence: int) -> bytes:
    return _LOGIN_REQUEST.pack(LOGIN_REQUEST_LENGTH, LOGIN_REQUEST,
                               pad(username, USERNAME_LENGTH, "username"),
                               pad(password, PASSWORD_LENGTH, "password"),
                               pad(session, SESSION_LENGTH, "session"), sequence)


def parse_login_request(frame) -> tuple[bytes, bytes, bytes, int]:
    """(username, password, session, sequence) with the padding stripped; session b"" means
    the current session, sequence 0 means from now on."""
    _, _, username, password, session, sequence = _LOGIN_REQUEST.unpack(frame)
    return username.rstrip(b" "), password.rstrip(b" "), session.rstrip(b" "), sequence


def login_accepted(session: bytes, sequence: int) -> bytes:
    return _LOGIN_ACCEPTED.pack(LOGIN_ACCEPTED_LENGTH, LOGIN_ACCEPTED, session, sequence)


def parse_login_accepted(frame) -> tuple[bytes, int]:
    """(session, next sequence number); a session that is not printable ASCII is a protocol
    error (it would be logged, and sent back in the next login request)."""
    _, _, session, sequence = _LOGIN_ACCEPTED.unpack(frame)
    if not all(0x20 <= byte < 0x7F for byte in session):
        raise ProtocolError(f"login accepted for a session that is not printable ASCII: "
                            f"{session!r}")
    return session, sequence


def login_rejected(reason: bytes) -> bytes:
    return _LOGIN_REJECTED.pack(LOGIN_REJECTED_LENGTH, LOGIN_REJECTED, reason)


def parse_login_rejected(frame) -> bytes:
    return _LOGIN_REJECTED.unpack(frame)[2]


def empty_frame(frame_type: int) -> bytes:
    """A client heartbeat or logout request."""
    return _EMPTY.pack(EMPTY_LENGTH, frame_type)


def debug(text: str) -> bytes:
    payload = text.encode("ascii", "replace")[:MAX_DEBUG_TEXT]
    return _EMPTY.pack(1 + len(payload), DEBUG) + payload


def parse_debug(frame) -> str:
    return bytes(frame[5:]).decode("ascii", "replace")


def heartbeat(session: bytes, next_sequence: int) -> bytes:
    """Server heartbeat: an S frame of message count 0 carrying the next sequence number."""
    return packet.encode_block(b"", packet.HEARTBEAT_COUNT, session=session,
                               sequence=next_sequence, codec="none")


def end_of_session(session: bytes, next_sequence: int) -> bytes:
    return packet.encode_block(b"", packet.END_OF_SESSION_COUNT, session=session,
                               sequence=next_sequence, codec="none")


def check_server_frame(frame_type: int, length: int):
    """Refuse a server frame from its 5-byte prefix alone, before its body is read."""
    if frame_type == SEQUENCED_DATA:
        if not MIN_DATA_FRAME_LENGTH <= length <= MAX_SERVER_FRAME_LENGTH:
            raise ProtocolError(f"data frame length {length} outside "
                                f"{MIN_DATA_FRAME_LENGTH}..{MAX_SERVER_FRAME_LENGTH}")
    elif frame_type == LOGIN_ACCEPTED:
        _expect_length("login accepted", length, LOGIN_ACCEPTED_LENGTH)
    elif frame_type == LOGIN_REJECTED:
        _expect_length("login rejected", length, LOGIN_REJECTED_LENGTH)
    elif frame_type == DEBUG:
        if not 1 <= length <= 1 + MAX_DEBUG_TEXT:     # the length counts the type byte
            raise ProtocolError(f"debug frame length {length} outside 1..{1 + MAX_DEBUG_TEXT}")
    else:
        raise ProtocolError(f"unknown frame type 0x{frame_type:02x}")


def check_client_frame(frame_type: int, length: int):
    """Refuse a client frame from its 5-byte prefix alone, before its body is read."""
    if length > MAX_CLIENT_FRAME_LENGTH:
        raise ProtocolError(f"frame too long: {length} bytes, client frames are at most "
                            f"{MAX_CLIENT_FRAME_LENGTH}")
    if frame_type == LOGIN_REQUEST:
        _expect_length("login request", length, LOGIN_REQUEST_LENGTH)
    elif frame_type in (CLIENT_HEARTBEAT, LOGOUT_REQUEST):
        _expect_length(f"{chr(frame_type)!r}", length, EMPTY_LENGTH)
    else:
        raise ProtocolError(f"unknown frame type 0x{frame_type:02x}")


def _expect_length(what: str, length: int, expected: int):
    if length != expected:
        raise ProtocolError(f"{what} frame length {length}, expected {expected}")


def message_block(frame) -> bytes:
    """The frame's message block (NASDAQ file framing), decompressed and checked against the
    frame's checksum by the decoder (without the GIL)."""
    try:
        return _decode.message_block(frame)
    except DecodeError as error:
        raise ProtocolError(f"bad data frame: {error}") from None


def trim_frame(frame, first_sequence: int) -> bytes:
    """The same data frame without its messages before `first_sequence`.

    Used when a resume point falls inside a frame: the server trims the first frame it sends,
    and the client trims a frame that partly repeats what it already has. Only then is a frame
    decompressed; the checksum is verified first so that corruption is not re-signed."""
    session, sequence, count = packet.peek(frame)
    skip = first_sequence - sequence
    if not 0 < skip < count or count == packet.END_OF_SESSION_COUNT:
        raise ValueError(f"sequence {first_sequence} is not inside the frame's "
                         f"{sequence}..{sequence + count - 1}")
    block = message_block(frame)
    position = 0
    for _ in range(skip):
        position += 2 + int.from_bytes(block[position:position + 2], "big")
    if position > len(block):
        raise ProtocolError(f"frame at sequence {sequence} has fewer messages than its count")
    return packet.encode_block(block[position:], count - skip, session=session,
                               sequence=first_sequence, codec=_CODEC_NAMES[frame[_CODEC_OFFSET]])

"""The session code checks a data frame through the decoder (`_decode.message_block`), with the
same header, compression and checksum checks as `packet.decode`, not a second implementation."""

import pytest

from feedhandler import DecodeError
from feedhandler.session import protocol as sessionproto
from feedhandler.wire import packet
from streams import SESSION, split_block, uniform_stream

BLOCK, _ = uniform_stream(200, seed=9)
MESSAGES = split_block(BLOCK)


def damaged(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value):]


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_message_block_is_the_block(codec):
    frame = packet.encode(MESSAGES, session=SESSION, sequence=10, codec=codec)
    assert sessionproto.message_block(frame) == BLOCK
    trimmed = sessionproto.trim_frame(frame, 15)
    assert packet.peek(trimmed) == (SESSION, 15, len(MESSAGES) - 5)
    assert sessionproto.message_block(trimmed) == b"".join(
        len(m).to_bytes(2, "big") + m for m in MESSAGES[5:])
    codec_at = packet.FRAME_HEADER_FIELDS["codec"].offset
    assert trimmed[codec_at] == frame[codec_at]


@pytest.mark.parametrize("codec", ["lz4", "none"])
@pytest.mark.parametrize("at, value", [
    (0, (1).to_bytes(4, "big")),            # frame length
    (4, b"Q"),                              # frame type
    (5, b"\x02"),                           # version
    (6, b"\x07"),                           # codec
    (7, b"\x01"),                           # flags
    (8, (1 << 30).to_bytes(4, "big")),      # uncompressed length
    (12, b"\x00\x00\x00\x00"),              # checksum
])
def test_every_header_check_of_the_decoder_applies(codec, at, value):
    frame = damaged(packet.encode(MESSAGES, session=SESSION, sequence=10, codec=codec), at, value)
    with pytest.raises(DecodeError) as decoded:
        packet.decode(frame)
    with pytest.raises(sessionproto.ProtocolError, match=decoded.value.reason):
        sessionproto.message_block(frame)
    with pytest.raises(sessionproto.ProtocolError, match=decoded.value.reason):
        sessionproto.trim_frame(frame, 15)      # never re-signed


def test_corrupt_compressed_block_is_a_protocol_error():
    frame = packet.encode(MESSAGES, session=SESSION, sequence=10)
    for cut in (1, 7, len(frame) - 40):
        shortened = frame[:-cut]
        shortened = (len(shortened) - 4).to_bytes(4, "big") + shortened[4:]
        with pytest.raises(sessionproto.ProtocolError):
            sessionproto.message_block(shortened)

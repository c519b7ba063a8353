"""One table of fault codes (ext/faults.h): every DecodeError and quarantine entry carries a
stable code, and its reason is the text that table gives the code."""

import pickle

import pytest

from feedhandler import DecodeError
from feedhandler.session import protocol as sessionproto
from feedhandler.wire import itch, packet
from feedhandler.wire.faults import FAULTS
from streams import SESSION, split_block, uniform_stream

# Programs match on these names, so they are pinned here: renaming one must fail a test.
STABLE_CODES = [
    "frame_too_short", "frame_length_mismatch", "frame_too_large", "bad_frame_type",
    "bad_version", "bad_codec", "bad_flags", "packet_too_large", "lz4_corrupt",
    "uncompressed_length_mismatch", "checksum_mismatch", "packet_too_short", "sequence_overflow",
    "count_mismatch",
    "message_truncated", "empty_message", "unknown_type", "bad_message_length",
    "timestamp_out_of_day", "bad_side", "bad_stock", "out_of_memory", "buffer_changed",
]

BLOCK, _ = uniform_stream(60, seed=8)
MESSAGES = split_block(BLOCK)
FRAME = packet.encode(MESSAGES, session=SESSION, sequence=1)


def test_codes_are_stable_and_texts_distinct():
    assert list(FAULTS) == STABLE_CODES
    assert len(set(FAULTS.values())) == len(FAULTS) and all(FAULTS.values())


def changed(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value):]


def with_message(index: int, message: bytes) -> bytes:
    messages = list(MESSAGES)
    messages[index] = message
    return packet.encode(messages, session=SESSION, sequence=1)


def first(message_type: bytes) -> int:
    return next(i for i, m in enumerate(MESSAGES) if m[:1] == message_type)


# A frame for each fault a frame can have, with the code expected for it.
FRAMES = {
    "frame_too_short": FRAME[:10],
    "frame_length_mismatch": changed(FRAME, 0, (1).to_bytes(4, "big")),
    "frame_too_large": changed(FRAME, 0, (1 << 30).to_bytes(4, "big")),
    "bad_frame_type": changed(FRAME, 4, b"Q"),
    "bad_version": changed(FRAME, 5, b"\x09"),
    "bad_codec": changed(FRAME, 6, b"\x05"),
    "bad_flags": changed(FRAME, 7, b"\x01"),
    "packet_too_large": changed(FRAME, 8, (1 << 30).to_bytes(4, "big")),
    "lz4_corrupt": FRAME[:36] + b"\xff" * (len(FRAME) - 36),
    "checksum_mismatch": changed(FRAME, 12, b"\x00\x00\x00\x00"),
    "unknown_type": with_message(3, b"z" + MESSAGES[3][1:]),
    "bad_message_length": with_message(3, MESSAGES[3] + b"x"),
    "timestamp_out_of_day": with_message(3, MESSAGES[3][:5] + b"\xff" * 6 + MESSAGES[3][11:]),
    "bad_side": with_message(first(b"A"), MESSAGES[first(b"A")][:19] + b"X"
                             + MESSAGES[first(b"A")][20:]),
    "bad_stock": with_message(first(b"R"), MESSAGES[first(b"R")][:11] + b"\x01" * 8
                              + MESSAGES[first(b"R")][19:]),
    "count_mismatch": packet.encode_block(BLOCK, len(MESSAGES) + 1, session=SESSION, sequence=1),
}


@pytest.mark.parametrize("code", sorted(FRAMES))
def test_decode_errors_and_quarantine_entries_carry_the_code(code):
    with pytest.raises(DecodeError) as caught:
        packet.decode(FRAMES[code])
    error = caught.value
    assert (error.code, error.reason) == (code, FAULTS[code])
    entries = packet.decode(FRAMES[code], policy="quarantine").quarantined
    assert [(entry.code, entry.reason) for entry in entries] == [(code, FAULTS[code])]
    assert entries[0].offset == (0 if entries[0].sequence is None else error.offset)


def test_parse_faults_carry_the_code():
    for block, code in [(BLOCK[:-3], "message_truncated"), (b"\x00\x00" + BLOCK, "empty_message")]:
        with pytest.raises(DecodeError) as caught:
            itch.parse(block)
        assert (caught.value.code, caught.value.reason) == (code, FAULTS[code])
        _, entries = itch.parse_quarantine(block)
        assert [entry.code for entry in entries] == [code]


def test_peek_and_message_block_use_the_table():
    with pytest.raises(DecodeError) as caught:
        packet.peek(FRAME[:20])
    assert caught.value.code == "frame_too_short"
    with pytest.raises(sessionproto.ProtocolError, match=FAULTS["checksum_mismatch"]):
        sessionproto.message_block(FRAMES["checksum_mismatch"])


def test_the_code_survives_pickling():
    error = DecodeError(FAULTS["checksum_mismatch"], 12, "checksum_mismatch")
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.offset, again.code) == (error.reason, 12, "checksum_mismatch")


def test_a_packet_whose_sequence_numbers_pass_two_to_the_64_is_refused():
    """Sequence 2**64-2 with 6 messages would number them 2**64-2, 2**64-1, 0, 1, ... (found by
    fuzzing): the whole frame is refused, with the offset of its sequence number."""
    frame = packet.encode(MESSAGES[:6], session=SESSION, sequence=(1 << 64) - 2)
    with pytest.raises(DecodeError) as refused:
        packet.decode(frame)
    assert refused.value.code == "sequence_overflow"
    assert refused.value.offset == packet.FRAME_HEADER_SIZE + 10     # session, then sequence
    assert packet.decode(packet.encode(MESSAGES[:6], session=SESSION,
                                       sequence=(1 << 64) - 6)).sequences     # ends at 2**64-1

"""Hostile and broken input ends in DecodeError or a quarantine entry, never a crash or hang."""

import pickle

import numpy as np
import pytest
import xxhash

from feedhandler import DecodeError
from feedhandler.wire import itch, packet
from streams import SESSION, split_block, uniform_stream

BLOCK, TYPES = uniform_stream(120, seed=5)
MESSAGES = split_block(BLOCK)


def resign(packet_bytes: bytes) -> bytes:
    """A codec-none frame around arbitrary packet bytes, with a correct length and checksum,
    so that the checks behind the checksum get exercised."""
    return b"".join((
        (12 + len(packet_bytes)).to_bytes(4, "big"), b"S\x01\x00\x00",
        len(packet_bytes).to_bytes(4, "big"),
        xxhash.xxh32_intdigest(packet_bytes).to_bytes(4, "big"), packet_bytes))


def plain_packet(messages=MESSAGES, count=None, sequence=1) -> bytes:
    count = len(messages) if count is None else count
    return (SESSION + sequence.to_bytes(8, "big") + count.to_bytes(2, "big")
            + b"".join(len(m).to_bytes(2, "big") + m for m in messages))


def assert_rejected(frame, reason_part=""):
    with pytest.raises(DecodeError) as caught:
        packet.decode(frame)
    assert reason_part in caught.value.reason
    quarantined = packet.decode(frame, policy="quarantine")
    assert quarantined.messages == {} and len(quarantined.quarantined) == 1
    entry = quarantined.quarantined[0]
    assert entry.reason == caught.value.reason and entry.raw == bytes(frame)
    return caught.value


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_truncation_at_every_byte(codec):
    frame = packet.encode(MESSAGES, session=SESSION, sequence=1, codec=codec)
    for cut in range(len(frame)):
        assert_rejected(frame[:cut])


def test_empty_and_tiny_frames():
    for frame in [b"", b"\x00", b"\x00\x00\x00\x00", b"\x00\x00\x00\x0cS\x01\x00\x00"]:
        assert_rejected(frame)


def test_random_bit_flips_in_lz4_frames():
    frame = packet.encode(MESSAGES, session=SESSION, sequence=1)
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        damaged = bytearray(frame)
        for bit in rng.integers(0, len(frame) * 8, size=rng.integers(1, 4)):
            damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            packet.decode(damaged)
            outcomes["ok"] += 1
        except DecodeError:
            outcomes["error"] += 1
        assert len(packet.decode(damaged, policy="quarantine").quarantined) <= 1
    assert outcomes["error"] > 2900   # the checksum catches nearly every flip


def test_random_bit_flips_behind_a_valid_checksum():
    """Flipped packets re-signed with a good checksum: the message checks must catch them."""
    body = plain_packet()
    rng = np.random.default_rng(2)
    errors = set()
    for _ in range(3000):
        damaged = bytearray(body)
        for bit in rng.integers(20 * 8, len(body) * 8, size=rng.integers(1, 4)):
            damaged[bit // 8] ^= 1 << (bit % 8)
        frame = resign(bytes(damaged))
        try:
            decoded = packet.decode(frame)
        except DecodeError as e:
            errors.add(e.reason)
            assert 20 <= e.offset < len(body)
            continue
        for records in decoded.messages.values():
            assert np.all(records["timestamp"] < itch.NANOSECONDS_PER_DAY)
        lenient = packet.decode(frame, policy="quarantine")
        assert not lenient.quarantined
    assert {"unknown message type", "timestamp is not within the day",
            "message length differs from the spec's length for its type",
            "buy/sell indicator is not B or S"} <= errors


@pytest.mark.parametrize("count", [0, 1, len(MESSAGES) - 1, len(MESSAGES) + 1, 0xFFFF])
def test_lying_message_count(count):
    assert_rejected(resign(plain_packet(count=count)), "count")


def test_lying_message_length():
    body = bytearray(plain_packet())
    third = 20 + sum(2 + len(m) for m in MESSAGES[:2])
    body[third:third + 2] = (len(MESSAGES[2]) + 1).to_bytes(2, "big")
    error = assert_rejected(resign(bytes(body)))
    assert error.offset == third


def test_length_prefix_past_the_end():
    body = bytearray(plain_packet(MESSAGES[:3]))
    last = 20 + sum(2 + len(m) for m in MESSAGES[:2])
    body[last:last + 2] = (0xFFFF).to_bytes(2, "big")
    error = assert_rejected(resign(bytes(body)), "past the end")
    assert error.offset == last


@pytest.mark.parametrize("field, value, reason", [
    (slice(0, 4), (1 << 31).to_bytes(4, "big"), "exceeds the limit"),
    (slice(0, 4), (1).to_bytes(4, "big"), "disagrees"),
    (slice(4, 5), b"Q", "frame type"),
    (slice(5, 6), b"\x02", "version"),
    (slice(6, 7), b"\x07", "codec"),
    (slice(7, 8), b"\x01", "flags"),
    (slice(8, 12), (0xFFFFFFF0).to_bytes(4, "big"), "exceeds the limit"),
    (slice(8, 12), (1 << 20).to_bytes(4, "big"), "uncompressed length"),
    (slice(12, 16), b"\x00\x00\x00\x00", "checksum"),
])
def test_bad_header_fields(field, value, reason):
    frame = bytearray(packet.encode(MESSAGES, session=SESSION, sequence=1))
    frame[field] = value
    error = assert_rejected(bytes(frame), reason)
    assert error.offset <= 12


def test_corrupt_lz4():
    frame = packet.encode(MESSAGES, session=SESSION, sequence=1)
    rng = np.random.default_rng(4)
    for _ in range(300):
        garbage = rng.integers(0, 256, len(frame) - 36, dtype=np.uint8).tobytes()
        assert_rejected(frame[:36] + garbage)
    shortened = frame[:-5]
    shortened = (len(shortened) - 4).to_bytes(4, "big") + shortened[4:]
    assert_rejected(shortened)


def test_plain_packet_shorter_than_its_header():
    assert_rejected(resign(SESSION + bytes(5)), "shorter")


def test_bad_fields_are_quarantined_one_by_one():
    messages = list(MESSAGES)
    offsets = np.cumsum([20] + [2 + len(m) for m in messages])
    adds = [i for i, m in enumerate(messages) if m[:1] in b"AFP"]
    stocks = [i for i, m in enumerate(messages) if m[:1] == b"R"]
    side, stock, clock, unknown = adds[0], stocks[0], 3, 4
    side_at = itch.DTYPES[messages[side][:1].decode()].fields["buy_sell_indicator"][1] - 2
    messages[side] = messages[side][:side_at] + b"X" + messages[side][side_at + 1:]
    messages[stock] = messages[stock][:11] + b"AB\x07DEFGH" + messages[stock][19:]
    messages[clock] = messages[clock][:5] + b"\xff" * 6 + messages[clock][11:]
    messages[unknown] = b"z" + messages[unknown][1:]
    frame = packet.encode(messages, session=SESSION, sequence=500)

    with pytest.raises(DecodeError) as caught:
        packet.decode(frame)
    assert caught.value.offset == offsets[min(side, stock, clock, unknown)]

    decoded = packet.decode(frame, policy="quarantine")
    expected = {side: "buy/sell indicator is not B or S",
                stock: "stock symbol is not printable ASCII",
                clock: "timestamp is not within the day", unknown: "unknown message type"}
    assert [(q.offset, q.reason, q.sequence, q.raw) for q in decoded.quarantined] == [
        (offsets[i], expected[i], 500 + i, messages[i]) for i in sorted(expected)]
    good = sum(len(r) for r in decoded.messages.values())
    assert good == len(messages) - 4
    all_sequences = np.sort(np.concatenate(list(decoded.sequences.values())))
    assert np.array_equal(all_sequences, [500 + i for i in range(len(messages)) if i not in expected])


def test_parse_quarantines_a_truncated_tail():
    cut = len(BLOCK) - 7
    with pytest.raises(DecodeError, match="past the end"):
        itch.parse(BLOCK[:cut])
    messages, quarantined = itch.parse_quarantine(BLOCK[:cut])
    assert sum(map(len, messages.values())) == len(MESSAGES) - 1
    assert [(q.offset, q.reason) for q in quarantined] == [
        (len(BLOCK) - 2 - len(MESSAGES[-1]), "message runs past the end of the data")]


def test_parse_survives_truncation_and_garbage_everywhere():
    for cut in range(0, len(BLOCK), 7):
        messages, quarantined = itch.parse_quarantine(BLOCK[:cut])
        assert sum(map(len, messages.values())) + len(quarantined) >= cut // 52
    rng = np.random.default_rng(6)
    for _ in range(200):
        garbage = rng.integers(0, 256, rng.integers(1, 4000), dtype=np.uint8).tobytes()
        try:
            itch.parse(garbage)
        except DecodeError:
            pass
        itch.parse_quarantine(garbage)


def test_decode_error_is_a_value_error_that_pickles():
    error = DecodeError("checksum mismatch", 12)
    assert isinstance(error, ValueError) and str(error) == "checksum mismatch (at byte 12)"
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.offset) == ("checksum mismatch", 12)

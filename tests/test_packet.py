"""Frames: the documented layout, round trips, sequence numbers, heartbeats, the checksum."""

import numpy as np
import pytest
import xxhash

from feedhandler import DecodeError
from feedhandler.wire import itch, packet
from streams import SESSION, frames_of, split_block, uniform_stream

# The worked example of docs/protocol.md, as printed there.
DOC_EXAMPLE = bytes.fromhex("""
00 00 00 54 53 01 00 00 00 00 00 48 92 42 5b 9f
30 30 30 30 34 32 41 20 20 20 00 00 00 00 00 00
00 01 00 02 00 0c 53 00 00 00 00 0d 18 c2 e2 80
00 4f 00 24 41 00 11 00 02 1f 1a ce d9 f3 e8 00
00 00 00 00 00 04 d2 42 00 00 00 64 41 41 50 4c
20 20 20 20 00 16 e3 60""")


def test_worked_example_of_the_protocol_doc():
    messages = split_block(DOC_EXAMPLE[36:])
    frame = packet.encode(messages, session=b"000042A   ", sequence=1, codec="none")
    assert frame == DOC_EXAMPLE
    decoded = packet.decode(DOC_EXAMPLE)
    assert (decoded.session, decoded.sequence, decoded.count) == (b"000042A   ", 1, 2)
    assert decoded.messages["S"]["event_code"][0] == b"O"
    assert decoded.messages["S"]["timestamp"][0] == 4 * 3600 * 10**9
    add = decoded.messages["A"][0]
    assert (add["stock"], add["price"], add["shares"], add["order_reference_number"]) == \
        (b"AAPL    ", 1_500_000, 100, 1234)
    assert add["timestamp"] == 34_200 * 10**9 + 1000
    assert decoded.sequences == {"S": [1], "A": [2]}


def test_checksum_is_xxh32_of_the_uncompressed_packet():
    assert int.from_bytes(DOC_EXAMPLE[12:16], "big") == xxhash.xxh32_intdigest(DOC_EXAMPLE[16:])
    rng = np.random.default_rng(3)
    for size in [0, 1, 3, 4, 15, 16, 17, 31, 32, 33, 100, 1000, 65_537]:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert packet._decode.frame_checksum(data) == xxhash.xxh32_intdigest(data), size


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_round_trip_keeps_every_message_and_its_sequence(codec):
    block, types = uniform_stream(3000, seed=11)
    messages = split_block(block)
    expected = itch.parse(block)
    frames = frames_of(messages, 250, codec=codec, first=1000)
    decoded = [packet.decode(f) for f in frames]
    for message_type, records in expected.items():
        got = np.concatenate([d.messages[message_type] for d in decoded
                              if message_type in d.messages])
        assert np.array_equal(got, records)
        sequences = np.concatenate([d.sequences[message_type] for d in decoded
                                    if message_type in d.sequences])
        positions = np.flatnonzero(types == ord(message_type))
        assert np.array_equal(sequences, 1000 + positions)
    assert all(d.session == SESSION and not d.quarantined for d in decoded)
    assert [d.sequence for d in decoded] == list(range(1000, 4000, 250))
    assert decoded[-1].next_sequence == 4000


def test_lz4_compresses_only_the_message_block():
    frame = packet.encode([b"D" + bytes(18)] * 100, session=SESSION, sequence=7)
    assert frame[packet.FRAME_HEADER_FIELDS["codec"].offset] == packet.CODECS["lz4"]
    assert packet.peek(frame) == (SESSION, 7, 100)
    headers = packet.FRAME_HEADER_SIZE + packet.PACKET_HEADER_SIZE
    assert len(frame) < headers + 100 * 21 // 4


def test_heartbeat_and_end_of_session():
    heartbeat = packet.decode(packet.encode([], session=SESSION, sequence=55))
    assert heartbeat.is_heartbeat and not heartbeat.is_end_of_session
    assert heartbeat.messages == {} and heartbeat.next_sequence == 55
    end = packet.decode(packet.encode_block(b"", packet.END_OF_SESSION_COUNT, session=SESSION,
                                            sequence=56))
    assert end.is_end_of_session and end.next_sequence == 56


def test_end_of_session_must_be_empty():
    frame = packet.encode_block(len(b"D" + bytes(18)).to_bytes(2, "big") + b"D" + bytes(18),
                                packet.END_OF_SESSION_COUNT, session=SESSION, sequence=1)
    with pytest.raises(DecodeError, match="count"):
        packet.decode(frame)


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError):
        packet.encode([], session=b"short", sequence=1)
    with pytest.raises(ValueError):
        packet.encode([], session=SESSION, sequence=1, codec="zstd")
    with pytest.raises(ValueError):
        packet.decode(packet.encode([], session=SESSION, sequence=1), policy="lenient")


def test_arrays_are_independent_of_the_frame_buffer():
    frame = bytearray(packet.encode([b"D" + bytes(18)], session=SESSION, sequence=1, codec="none"))
    decoded = packet.decode(frame)
    frame[:] = bytes(len(frame))
    assert decoded.messages["D"]["message_type"][0] == b"D"


def test_decode_many_matches_decode_frame_by_frame():
    block, _ = uniform_stream(2000, seed=12)
    frames = frames_of(split_block(block), 100)
    broken = bytearray(frames[3])
    broken[20] ^= 0x01
    mixed = [*frames[:3], bytes(broken), *frames[4:]]
    many = packet.decode_many(mixed, policy="quarantine")
    single = [packet.decode(f, policy="quarantine") for f in mixed]
    assert len(many) == len(single) == len(mixed)
    for a, b in zip(many, single):
        assert (a.session, a.sequence, a.count, a.quarantined) == \
            (b.session, b.sequence, b.count, b.quarantined)
        assert a.messages.keys() == b.messages.keys()
        assert all(np.array_equal(a.messages[t], b.messages[t]) and
                   np.array_equal(a.sequences[t], b.sequences[t]) for t in a.messages)
    assert many[3].quarantined[0].reason == "checksum mismatch"
    with pytest.raises(DecodeError, match="checksum"):
        packet.decode_many(mixed)
    assert packet.decode_many([]) == []


def test_wrap_puts_a_plain_moldudp64_packet_into_an_uncompressed_frame():
    mold_packet = DOC_EXAMPLE[packet.FRAME_HEADER_SIZE:]
    assert packet.wrap(mold_packet) == DOC_EXAMPLE
    assert packet.wrap(memoryview(mold_packet)) == DOC_EXAMPLE
    heartbeat = b"000042A   " + (9).to_bytes(8, "big") + bytes(2)
    assert packet.decode(packet.wrap(heartbeat)).is_heartbeat
    for bad in (mold_packet[:packet.PACKET_HEADER_SIZE - 1],
                bytes(packet.MAX_PACKET_LENGTH + 1)):
        with pytest.raises(ValueError, match="MoldUDP64 packet of"):
            packet.wrap(bad)

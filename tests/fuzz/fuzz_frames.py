#!/usr/bin/env python3
"""Fuzz frame decoding: `packet.decode` (both policies), `packet.decode_many`, `packet.peek`.

Contract for any bytes: strict decoding returns a Packet or raises DecodeError; quarantine
decoding never raises and accounts for every byte of the packet (decoded messages plus
quarantined entries), decoded and quarantined sequence numbers lie inside the packet's range,
both policies agree with each other, with decode_many and with peek, and decoding is
deterministic.

    python tests/fuzz/fuzz_frames.py -max_total_time=600 /tmp/corpus tests/vectors/frames
"""

import random
import sys
from pathlib import Path

import numpy as np

from feedhandler.errors import DecodeError
from feedhandler.wire import itch, packet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.common import ALL_REASONS, FRAME_REASONS, MESSAGE_REASONS, Probes, fuzz, mutate_frame  # noqa: E402

TRUNCATED = "message runs past the end of the data"
probe = Probes()


def same_packet(a: packet.Packet, b: packet.Packet) -> bool:
    return ((a.session, a.sequence, a.count, a.quarantined) == (b.session, b.sequence, b.count,
                                                               b.quarantined)
            and a.messages.keys() == b.messages.keys()
            and all(a.messages[t].tobytes() == b.messages[t].tobytes()
                    and np.array_equal(a.sequences[t], b.sequences[t]) for t in a.messages))


def expected_messages(count: int) -> int:
    return 0 if count == packet.END_OF_SESSION_COUNT else count


def check_records(decoded: packet.Packet):
    """Decoded rows are of their key's type, in the day, with sequence numbers inside the
    packet's range and not repeated."""
    first, last = decoded.sequence, decoded.sequence + expected_messages(decoded.count)
    seen = []
    for message_type, records in decoded.messages.items():
        probe(f"type:{message_type}")
        assert len(records) == len(decoded.sequences[message_type]) > 0
        assert np.all(records["message_type"] == message_type.encode())
        assert np.all(records["timestamp"] < itch.NANOSECONDS_PER_DAY)
        seen += [int(s) for s in decoded.sequences[message_type]]
    counted = len(seen) + sum(entry.reason != TRUNCATED for entry in decoded.quarantined)
    assert counted == expected_messages(decoded.count), (counted, decoded.count)
    # An unframeable tail is not one of the counted messages, but when it carries a sequence
    # number, that number must still be the packet's, not the next packet's first.
    seen += [entry.sequence for entry in decoded.quarantined if entry.sequence is not None]
    assert len(seen) == len(set(seen)), "a sequence number used twice"
    assert all(first <= s < last for s in seen), (first, last, sorted(seen)[:3], sorted(seen)[-3:])


def check_quarantine(frame: bytes, lenient: packet.Packet):
    if lenient.session is None:
        probe(f"frame quarantined:{lenient.quarantined[0].reason}")
        assert (lenient.sequence, lenient.count, lenient.messages, lenient.sequences) == (
            None, None, {}, {})
        [entry] = lenient.quarantined
        assert (entry.offset, entry.raw, entry.sequence) == (0, frame, None)
        assert entry.reason in ALL_REASONS
        return
    block_length = int.from_bytes(frame[8:12], "big") - packet.PACKET_HEADER_SIZE
    accounted = sum(len(records) * (2 + itch.WIRE_LENGTHS[t])
                    for t, records in lenient.messages.items())
    previous = -1
    for entry in lenient.quarantined:
        probe(f"message quarantined:{entry.reason}")
        assert entry.reason in MESSAGE_REASONS
        assert previous < entry.offset < packet.PACKET_HEADER_SIZE + block_length
        previous = entry.offset
        accounted += len(entry.raw) + (0 if entry.reason == TRUNCATED else 2)
    assert accounted == block_length, (accounted, block_length)
    check_records(lenient)


def check_strict(frame: bytes):
    """The strict result (a Packet or the DecodeError) after checking its own contract."""
    try:
        strict = packet.decode(frame)
    except DecodeError as error:
        probe(f"strict:{error.reason}")
        assert error.reason in ALL_REASONS and 0 <= error.offset <= packet.MAX_PACKET_LENGTH
        return error
    assert not strict.quarantined
    check_records(strict)
    return strict


def check(data: bytes):
    frame = bytes(data)
    strict = check_strict(frame)
    lenient = packet.decode(frame, policy="quarantine")
    check_quarantine(frame, lenient)
    assert same_packet(lenient, packet.decode(bytearray(frame), policy="quarantine"))

    # The policies agree: strict fails exactly when something was quarantined, and on the
    # first fault in stream order.
    if isinstance(strict, DecodeError):
        assert lenient.quarantined
        first = lenient.quarantined[0]
        if lenient.session is not None:
            assert (strict.reason, strict.offset) == (first.reason, first.offset)
        elif strict.reason in FRAME_REASONS or first.reason in FRAME_REASONS:
            assert strict.reason == first.reason
    else:
        assert same_packet(strict, lenient)

    # peek reads the header decode checked.
    if len(frame) < packet.FRAME_HEADER_SIZE + packet.PACKET_HEADER_SIZE:
        try:
            packet.peek(frame)
            raise AssertionError("peek accepted a frame shorter than its header")
        except DecodeError:
            pass
    elif lenient.session is not None:
        assert packet.peek(frame) == (lenient.session, lenient.sequence, lenient.count)

    # decode_many gives what decode gives, frame by frame, next to a damaged copy.
    others = [frame, frame[:len(frame) // 2]]
    many = packet.decode_many(others, policy="quarantine")
    assert len(many) == 2 and same_packet(many[0], lenient)
    assert same_packet(many[1], packet.decode(others[1], policy="quarantine"))
    try:
        strict_many = packet.decode_many([frame, frame])
        assert not isinstance(strict, DecodeError) and all(same_packet(p, strict) for p in strict_many)
    except DecodeError as error:
        assert isinstance(strict, DecodeError) and (error.reason, error.offset) == (
            strict.reason, strict.offset)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate_frame(bytes(data), max_size, random.Random(seed))


if __name__ == "__main__":
    fuzz(check, mutate)

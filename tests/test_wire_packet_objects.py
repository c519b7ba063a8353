"""packet.decode holds the GIL only to make a few small objects: a frame's rows stay in one C
arena until `messages` or `sequences` is first asked for, and then become views of it."""

import gc
import pickle
import sys
import threading
from multiprocessing.pool import ThreadPool

import numpy as np

from feedhandler.exchange import synthetic
from feedhandler.wire import itch, packet
from streams import SESSION, frames_of, split_block

BLOCK = synthetic.random_stream(20_000, seed=7)[0]
FRAMES = frames_of(split_block(BLOCK), 500)


def test_decode_makes_no_per_type_objects():
    """Python objects made per decoded frame, counted as allocated blocks: the Packet, its
    session, sequence, quarantine list and arena owner; not two arrays per message type and
    their dicts (a frame of 500 random messages holds 9 types)."""
    for frame in FRAMES[:3]:
        packet.decode(frame)
    gc.disable()
    try:
        before = sys.getallocatedblocks()
        kept = [packet.decode(frame) for frame in FRAMES]
        per_frame = (sys.getallocatedblocks() - before) / len(kept)
    finally:
        gc.enable()
    assert per_frame <= 6, per_frame
    assert len(kept[0].messages) >= 5


def test_arrays_are_made_once_and_outlive_the_packet():
    decoded = [packet.decode(frame) for frame in FRAMES]
    assert all(p.messages is p.messages and p.sequences is p.sequences for p in decoded)
    messages = [packet.decode(frame).messages for frame in FRAMES]    # packets dropped at once
    gc.collect()
    expected = itch.parse(BLOCK)
    for message_type, records in expected.items():
        got = np.concatenate([m[message_type] for m in messages if message_type in m])
        assert np.array_equal(got, records)


def test_sequences_alone_match_the_messages():
    frame = FRAMES[1]
    only_sequences = packet.decode(frame).sequences
    both = packet.decode(frame)
    assert only_sequences.keys() == both.messages.keys() == both.sequences.keys()
    assert all(np.array_equal(only_sequences[t], both.sequences[t]) for t in only_sequences)
    assert sum(map(len, only_sequences.values())) == 500
    assert min(int(s.min()) for s in only_sequences.values()) == 501


def test_packet_made_from_python_and_pickled():
    decoded = packet.decode(FRAMES[0])
    made = packet.Packet(decoded.session, decoded.sequence, decoded.count, decoded.messages,
                         decoded.sequences)
    assert (made.session, made.sequence, made.count, made.quarantined) == (SESSION, 1, 500, [])
    assert made.next_sequence == 501 and not made.is_heartbeat and not made.is_end_of_session
    again = pickle.loads(pickle.dumps(decoded))
    assert (again.session, again.sequence, again.count) == (SESSION, 1, 500)
    assert all(np.array_equal(again.messages[t], decoded.messages[t]) for t in decoded.messages)
    assert "sequence=1" in repr(decoded)


def test_threads_asking_for_the_same_arrays_at_once_get_lasting_views():
    expected = [{t: a.copy() for t, a in packet.decode(frame).messages.items()}
                for frame in FRAMES]
    for _ in range(5):
        decoded = [packet.decode(frame) for frame in FRAMES]
        start = threading.Barrier(4)

        def views(_):
            start.wait()
            return [p.messages for p in decoded]

        with ThreadPool(4) as pool:
            kept = pool.map(views, range(4))[1]
        del decoded
        gc.collect()
        [bytearray(20_000) for _ in range(200)]    # reuse what a wrongly freed arena held
        for got, want in zip(kept, expected):
            assert got.keys() == want.keys()
            assert all(np.array_equal(got[t], want[t]) for t in want)

"""Decoding from many threads at once: same results, and the GIL really is released."""

import sys
import threading
import time
from multiprocessing.pool import ThreadPool

import numpy as np

from feedhandler import DecodeError
from feedhandler.exchange import synthetic
from feedhandler.wire import itch, packet
from streams import frames_of, split_block

BLOCK = synthetic.random_stream(40_000, seed=31)[0]
FRAMES = frames_of(split_block(BLOCK), 400)


def summary(decoded: packet.Packet) -> tuple:
    return (decoded.sequence, decoded.count,
            {t: (a.tobytes(), decoded.sequences[t].tobytes()) for t, a in decoded.messages.items()})


def test_thread_pool_on_shared_frames_matches_single_thread():
    expected = [summary(packet.decode(f)) for f in FRAMES]
    with ThreadPool(8) as pool:
        for _ in range(3):
            got = pool.map(lambda f: summary(packet.decode(f)), FRAMES, chunksize=1)
            assert got == expected


def test_thread_pool_on_separate_inputs():
    """Each task decodes its own copy, including bad frames, while others decode good ones."""
    broken = bytearray(FRAMES[0])
    broken[40] ^= 0xFF

    def task(i):
        frame = bytearray(FRAMES[i % len(FRAMES)]) if i % 5 else bytearray(broken)
        result = packet.decode(frame, policy="quarantine")
        return (i % 5 == 0) == bool(result.quarantined)

    with ThreadPool(6) as pool:
        assert all(pool.map(task, range(600)))


def test_thread_pool_on_lists_of_frames():
    expected = [summary(packet.decode(f)) for f in FRAMES]
    chunks = [FRAMES[i:i + 16] for i in range(0, len(FRAMES), 16)]
    with ThreadPool(4) as pool:
        got = pool.map(lambda chunk: [summary(p) for p in packet.decode_many(chunk)], chunks)
    assert [s for chunk in got for s in chunk] == expected


def test_parse_threads_agree():
    with ThreadPool(4) as pool:
        results = pool.map(lambda _: itch.parse(BLOCK), range(8))
    for result in results[1:]:
        assert result.keys() == results[0].keys()
        assert all(np.array_equal(result[t], results[0][t]) for t in result)


def test_decoding_releases_the_gil():
    """With a switch interval far longer than the test, a thread gives up the GIL only when it
    blocks or releases it explicitly. So the main thread gets to count while the worker is
    inside `parse` only if `parse` releases the GIL."""
    big = BLOCK * 40
    done = threading.Event()
    ticks = 0
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        worker = threading.Thread(target=lambda: (itch.parse(big), done.set()))
        worker.start()
        while not done.is_set():
            ticks += 1
            time.sleep(0)       # lets the worker take the GIL back between its nogil sections
        worker.join()
    finally:
        sys.setswitchinterval(previous)
    assert ticks > 100


def test_a_buffer_changed_during_decoding_is_refused_not_overrun():
    """A bytearray rewritten by another thread between the two passes (a 'D' turned into a 'B'
    of the same length) must end in DecodeError or a clean result, never a write past the
    arrays that pass one sized."""
    block = bytearray(itch.encode(synthetic.random_records("D", 20_000, np.random.default_rng(0))))
    type_bytes = range(2, len(block), 21 * 7)
    stop = threading.Event()

    def rewrite():
        while not stop.is_set():
            for value in (ord("B"), ord("D")):
                for position in type_bytes:
                    block[position] = value

    writer = threading.Thread(target=rewrite)
    writer.start()
    refused = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                result = itch.parse(block, policy="quarantine")
                assert sum(map(len, result.values())) == 20_000
            except DecodeError as error:
                assert error.reason == "input buffer changed while it was being decoded"
                refused += 1
    finally:
        stop.set()
        writer.join()
    assert refused > 0

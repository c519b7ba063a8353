"""Decode engine speed: itch.parse and packet.decode against itchcpp, itchfeed, a plain
struct.unpack parser and python-lz4 on the same data; one thread against two."""

import os
import statistics
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import lz4.block
import pytest

os.environ["ITCH_NO_CPP"] = "1"
from oracles import ORACLES  # noqa: E402

from feedhandler.exchange import synthetic  # noqa: E402
from feedhandler.wire import itch, packet  # noqa: E402
from streams import frames_of, split_block  # noqa: E402

MESSAGES = 400_000
BLOCK = synthetic.random_stream(MESSAGES, seed=7)[0]
SMALL = 20_000                                   # for the slow pure-Python parsers
SMALL_BLOCK = synthetic.random_stream(SMALL, seed=7)[0]
FRAMES = frames_of(split_block(BLOCK), 500)
PAYLOADS = [(f[36:], int.from_bytes(f[8:12], "big") - 20) for f in FRAMES]


def describe(benchmark, messages, size, against=()):
    benchmark.extra_info.update(messages=messages, bytes=size, against=list(against))


def _wire_format(dtype) -> struct.Struct:
    codes = {1: "c", 2: "H", 4: "I", 8: "Q"}
    parts = []
    for name in dtype.names:
        field = dtype.fields[name][0]
        if name == "timestamp":
            parts.append("6s")
        elif field.kind == "S":
            parts.append(f"{field.itemsize}s" if field.itemsize > 1 else "c")
        else:
            parts.append(codes[field.itemsize])
    return struct.Struct(">" + "".join(parts))


STRUCTS = {ord(t): _wire_format(dt) for t, dt in itch.DTYPES.items()}


def struct_unpack_parse(block: bytes) -> list:
    """The straightforward pure-Python parser: struct.unpack per message."""
    out, pos, n = [], 0, len(block)
    while pos < n:
        length = int.from_bytes(block[pos:pos + 2], "big")
        out.append(STRUCTS[block[pos + 2]].unpack_from(block, pos + 2))
        pos += 2 + length
    return out


@pytest.mark.benchmark(group="parse")
def test_parse(benchmark):
    describe(benchmark, MESSAGES, len(BLOCK), ["test_itchcpp", "test_itchfeed", "test_struct_unpack"])
    result = benchmark(itch.parse, BLOCK)
    assert sum(map(len, result.values())) == MESSAGES


@pytest.mark.benchmark(group="parse")
def test_itchcpp(benchmark):
    describe(benchmark, MESSAGES, len(BLOCK))
    parser = ORACLES["itchcpp"]()
    benchmark(lambda: sum(1 for _ in parser.parse_stream(BLOCK)))


@pytest.mark.benchmark(group="parse")
def test_itchfeed(benchmark):
    describe(benchmark, SMALL, len(SMALL_BLOCK))
    parser = ORACLES["itchfeed"]()
    benchmark.pedantic(lambda: sum(1 for _ in parser.parse_stream(SMALL_BLOCK)), rounds=3)


@pytest.mark.benchmark(group="parse")
def test_struct_unpack(benchmark):
    describe(benchmark, SMALL, len(SMALL_BLOCK))
    benchmark.pedantic(struct_unpack_parse, args=(SMALL_BLOCK,), rounds=3)


def decode_all(frames):
    for frame in frames:
        packet.decode(frame)


@pytest.mark.benchmark(group="decode")
def test_decode_lz4(benchmark):
    describe(benchmark, MESSAGES, len(BLOCK), ["test_itchcpp", "test_lz4_decompress_only"])
    benchmark(decode_all, FRAMES)


@pytest.mark.benchmark(group="decode")
def test_lz4_decompress_only(benchmark):
    """python-lz4 decompressing the same frames: the floor under packet.decode."""
    describe(benchmark, MESSAGES, len(BLOCK))
    benchmark(lambda: [lz4.block.decompress(p, uncompressed_size=n) for p, n in PAYLOADS])


READ = 64     # frames per task, as the handler hands over what one socket read brought


def decode_in_threads(pool: ThreadPoolExecutor, frames) -> float:
    """Seconds to decode `frames` on a running pool (its size is the number of threads), READ
    frames per packet.decode_many call (one nogil section each)."""
    reads = [frames[i:i + READ] for i in range(0, len(frames), READ)]
    started = time.perf_counter()
    list(pool.map(packet.decode_many, reads))
    return time.perf_counter() - started


@pytest.mark.benchmark(group="threads")
def test_decode_1_thread(benchmark):
    describe(benchmark, MESSAGES, len(BLOCK))
    with ThreadPoolExecutor(1) as pool:
        benchmark(decode_in_threads, pool, FRAMES)


@pytest.mark.benchmark(group="threads")
def test_decode_2_threads(benchmark):
    describe(benchmark, MESSAGES, len(BLOCK), ["test_decode_1_thread"])
    with ThreadPoolExecutor(2) as pool:
        benchmark(decode_in_threads, pool, FRAMES)


@pytest.mark.benchmark(group="threads")
def test_two_thread_speedup(benchmark):
    """One thread and two threads alternately, nine times: the median of the nine same-moment
    ratios is what to read on a shared, noisy machine (the goal is 1.8x on 2 cores)."""
    frames = FRAMES * 3
    describe(benchmark, 2 * len(frames) * 500, 0)
    ratios = []
    with ThreadPoolExecutor(1) as single, ThreadPoolExecutor(2) as double:
        def pairs():
            for _ in range(9):
                ratios.append(decode_in_threads(single, frames) / decode_in_threads(double, frames))
        benchmark.pedantic(pairs, rounds=1)
    benchmark.extra_info["speedup_2_vs_1_thread"] = {
        "median": round(statistics.median(ratios), 2),
        "all": [round(r, 2) for r in sorted(ratios)]}

"""Benchmark gate on same-moment ratios: ours against a peer or a ceiling, compared with the
committed bench/baseline.json.

    python -m bench.gate            # measure, compare, exit 1 on a drop (CI: scripts/test.sh)
    python -m bench.gate --update   # measure and rewrite the baseline ratios (tolerances kept)

Absolute times swing by 30-85 % on a shared machine, and so do ratios of two benchmarks that ran
seconds apart (pytest-benchmark runs one benchmark's rounds, then the next's: measured here, one
side of a ratio can land in a busy second and the other in a quiet one). So each ratio is
measured in interleaved pairs, ours then the peer on the same workload from bench/bench_decode.py,
and the gate reads the median of the pair ratios.

Exit 0 when every ratio is at least baseline * (1 - tolerance); exit 1 with one line per ratio
that dropped, that this run did not measure, or that has no baseline. Each ratio is "how many
times the peer's time ours takes less": higher is better. Tolerances are per ratio in the
baseline file, picked from the spread over repeated runs (docs/release.md).
"""

import argparse
import ctypes
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
BASELINE = BENCH / "baseline.json"
EXIT_DROPPED = 1
DEFAULT_TOLERANCE = 0.5

sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]
from package_under_test import prefer_built_package  # noqa: E402

prefer_built_package()
import bench_decode as workloads  # noqa: E402
from feedhandler.wire import itch, packet  # noqa: E402


def seconds(task: Callable[[], object]) -> float:
    started = time.perf_counter()
    task()
    return time.perf_counter() - started


@dataclass(frozen=True)
class Pair:
    """ours and a peer on the same bytes; one round is the peer's time over ours."""
    ours: Callable[[], object]
    peer: Callable[[], object]
    means: str

    def round(self) -> float:
        ours = seconds(self.ours)
        return seconds(self.peer) / ours


class PoolScaling:
    """2 threads against 1 for packet.decode per frame, over the same for the pool's ceiling
    (bench_decode.pool_ceiling_items): how much of what the pool can give decode gets."""
    means = "2-thread speedup of packet.decode per frame against the pool's own ceiling"

    def __init__(self):
        self.frames = workloads.FRAMES
        self.ceiling_items = workloads.pool_ceiling_items(len(self.frames))
        self.single, self.double = ThreadPoolExecutor(1), ThreadPoolExecutor(2)

    def speedup(self, task, items) -> float:
        return (workloads.seconds_on(self.single, task, items)
                / workloads.seconds_on(self.double, task, items))

    def round(self) -> float:
        return (self.speedup(packet.decode, self.frames)
                / self.speedup(packet._decode.frame_checksum, self.ceiling_items))


def gated_ratios() -> dict:
    blocks = workloads.lz4_decompress_all(workloads.PAYLOADS)
    copy_block = workloads.memcpy_into(ctypes.create_string_buffer(len(workloads.BLOCK)))
    return {
        "parse_vs_itchcpp": Pair(lambda: itch.parse(workloads.BLOCK),
                                 lambda: workloads.itchcpp_parse(workloads.BLOCK),
                                 "itch.parse against the C++ parser itchcpp on the same block"),
        "parse_vs_memcpy": Pair(lambda: itch.parse(workloads.BLOCK),
                                lambda: copy_block(workloads.BLOCK),
                                "itch.parse against a memcpy of the same block into a "
                                "preallocated buffer (issue 12's memory-limit yardstick)"),
        "decode_vs_lz4_decompress": Pair(lambda: workloads.decode_all(workloads.FRAMES),
                                         lambda: workloads.lz4_decompress_all(workloads.PAYLOADS),
                                         "packet.decode against python-lz4 alone on the same frames"),
        "decode_vs_memcpy": Pair(lambda: workloads.decode_all(workloads.FRAMES),
                                 lambda: workloads.copy_all(blocks),
                                 "packet.decode against one copy of the same decompressed bytes"),
        "two_threads_vs_pool_ceiling": PoolScaling(),
    }


def measure(rounds: int) -> dict[str, float]:
    """The median over `rounds` of each ratio; every ratio's rounds interleave with the others'
    so that a busy stretch of the machine is spread over all of them."""
    ratios = gated_ratios()
    samples = {name: [] for name in ratios}
    for _ in range(rounds):
        for name, ratio in ratios.items():
            samples[name].append(ratio.round())
    return {name: statistics.median(values) for name, values in samples.items()}


def check(measured: dict[str, float], baseline: dict) -> list[str]:
    """One line per gated ratio that fails: dropped, not measured, or without a baseline."""
    failures = []
    for name in sorted(set(measured) | set(baseline)):
        value, base = measured.get(name), baseline.get(name)
        if value is None:
            failures.append(f"{name}: MISSING from this run (in {BASELINE.name}, not measured)")
        elif base is None:
            failures.append(f"{name}: no baseline in {BASELINE.name} (python -m bench.gate --update)")
        elif value < base["ratio"] * (1 - base["tolerance"]):
            failures.append(f"{name}: {value:.3f} is below {base['ratio'] * (1 - base['tolerance']):.3f}"
                            f" (baseline {base['ratio']:.3f} - {base['tolerance']:.0%}): {base['means']}")
    return failures


def updated(measured: dict[str, float], baseline: dict) -> dict:
    means = {name: ratio.means for name, ratio in gated_ratios().items()}
    return {name: {"ratio": round(value, 3), "means": means[name],
                   "tolerance": baseline.get(name, {}).get("tolerance", DEFAULT_TOLERANCE)}
            for name, value in measured.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true",
                        help="rewrite the baseline ratios from this run (tolerances kept)")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds per ratio")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    args = parser.parse_args(argv)

    measured = measure(args.rounds)
    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
    print(f"{'ratio':<30} {'this run':>9} {'baseline':>9} {'tolerance':>9}")
    for name, value in measured.items():
        base = baseline.get(name, {})
        print(f"{name:<30} {value:>9.3f} {base.get('ratio', float('nan')):>9.3f} "
              f"{base.get('tolerance', float('nan')):>9.0%}")
    if args.update:
        args.baseline.write_text(json.dumps(updated(measured, baseline), indent=2) + "\n")
        print(f"gate: wrote {len(measured)} ratios to {args.baseline}")
        return 0
    failures = check(measured, baseline)
    for line in failures:
        print(f"gate: {line}")
    if not failures:
        print(f"gate: all {len(measured)} ratios within tolerance of their baselines")
    return EXIT_DROPPED if failures else 0


if __name__ == "__main__":
    sys.exit(main())

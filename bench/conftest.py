"""Prints each benchmark as messages/s and MB/s, with ratios against the baselines that ran
in the same session (the machine is shared and noisy: same-run ratios are what to compare)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from package_under_test import prefer_built_package, report_header  # noqa: E402

prefer_built_package()


def pytest_report_header(config):
    return report_header()


def rate_rows(benchmarks):
    rows = {}
    for bench in benchmarks:
        info = bench.extra_info
        if "messages" not in info or bench.stats is None:
            continue
        median = bench.stats.median
        rows[bench.name] = dict(group=bench.group, median=median,
                                mps=info["messages"] / median,
                                mbps=info.get("bytes", 0) / median / 1e6,
                                against=info.get("against", ()))
    return rows


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = rate_rows(session.benchmarks)
    write = terminalreporter.write_line
    write("")
    if rows:
        write("Throughput (median of rounds) and same-run ratios")
        write(f"{'benchmark':<44} {'M msg/s':>9} {'MB/s':>8}  ratios")
    for name, row in rows.items():
        ratios = ", ".join(f"{row['mps'] / rows[other]['mps']:.2f}x {other}"
                           for other in row["against"] if other in rows)
        write(f"{name:<44} {row['mps'] / 1e6:>9.2f} {row['mbps']:>8.0f}  {ratios}")
    for bench in session.benchmarks:
        for key in ("latency_ms", "latency_ms_at_max_rate", "speedup_2_vs_1_thread",
                    "speedup_with_arrays", "pool_ceiling", "percent_of_memcpy"):
            if bench.extra_info.get(key):
                write(f"{bench.name:<44} {key}: {bench.extra_info[key]}")

"""The fixed-memory latency histograms (feedhandler.ops.latency) and the stages a handler run
records in them."""

import numpy as np
import pytest

from feedhandler.ops.latency import (BUCKETS, HIGHEST_NS, STAGES, SUB_BITS, LatencyHistogram,
                                     StageLatencies, bucket_bounds, bucket_of, format_table)

# A bucket is at most 1/2**(SUB_BITS-1) of its values wide; reported as its midpoint.
RELATIVE_ERROR = 1 / 2 ** SUB_BITS


def filled(values) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(int(value))
    return histogram


def test_buckets_tile_the_range_and_hold_their_values():
    lowest, highest = bucket_bounds()
    assert lowest[0] == 0 and (lowest[1:] == highest[:-1] + 1).all()
    assert highest[-1] >= HIGHEST_NS and len(lowest) == BUCKETS
    exact = lowest < 2 ** SUB_BITS     # a nanosecond each
    assert (highest[exact] == lowest[exact]).all()
    assert ((highest - lowest + 1)[~exact] / lowest[~exact] <= 2 * RELATIVE_ERROR).all()
    values = np.random.default_rng(3).integers(0, HIGHEST_NS, 20_000).tolist() + \
        [0, 1, 255, 256, 511, 512, 1000, 10**6, HIGHEST_NS]
    for value in values:
        bucket = bucket_of(value)
        assert lowest[bucket] <= value <= highest[bucket]


@pytest.mark.parametrize("seed", [1, 2])
def test_percentiles_agree_with_numpy_within_the_bucket_width(seed):
    rng = np.random.default_rng(seed)
    # microseconds to seconds, heavy-tailed like frame latencies
    values = rng.lognormal(14, 1.8, 50_000).astype(np.int64).clip(1000, 10**10)
    histogram = filled(values)
    percents = [1, 25, 50, 90, 99, 99.9, 99.99]
    measured = histogram.percentiles_ns(percents)
    exact = np.percentile(values, percents, method="lower")
    assert np.allclose(measured, exact, rtol=RELATIVE_ERROR, atol=0)
    assert histogram.percentiles_ns([100]) == [float(values.max())]
    assert histogram.total == len(values) and histogram.sum_ns == int(values.sum())


def test_values_out_of_range_count_at_the_ends_and_max_stays_exact():
    histogram = filled([-5, 0, 10 * HIGHEST_NS])
    counts = histogram.snapshot()
    assert counts[0] == 2 and counts[-1] == 1 and counts.sum() == 3
    assert histogram.max_ns == 10 * HIGHEST_NS
    assert histogram.summary_ms()["max"] == 10 * HIGHEST_NS / 1e6


def test_merge_is_the_histogram_of_both_sample_sets():
    rng = np.random.default_rng(7)
    first, second = rng.integers(1000, 10**8, 5000), rng.integers(10**6, 10**9, 3000)
    merged = filled(first)
    merged.merge(filled(second))
    both = filled(np.concatenate([first, second]))
    assert (merged.snapshot() == both.snapshot()).all()
    assert (merged.total, merged.sum_ns, merged.max_ns) == (both.total, both.sum_ns,
                                                             both.max_ns)
    assert merged.percentiles_ns([50, 99]) == both.percentiles_ns([50, 99])


def test_prometheus_counts_are_cumulative_to_a_bucket():
    histogram = filled([500_000, 2_000_000, 2_000_000, 30_000_000])
    assert histogram.counts_at_most([10**6, 2.5e6, 10**7, 10**9]) == [1, 3, 3, 4]


def test_empty_histograms_report_nothing():
    latencies = StageLatencies()
    assert latencies.summary_ms() == {} and format_table({}) == []
    assert LatencyHistogram().percentiles_ns([50]) == [0.0]


def test_the_table_shows_every_stage_with_samples():
    latencies = StageLatencies()
    for stage in STAGES:
        latencies.stages[stage].record(1_500_000)
    lines = format_table(latencies.summary_ms())
    assert [line.split()[0] for line in lines[1:]] == list(STAGES)
    assert all("1.5" in line for line in lines[1:])

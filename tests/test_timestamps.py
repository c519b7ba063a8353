"""Record timestamps are never refused (issue 9): with --headers a record carries the ITCH time
as its timestamp, which the broker refuses when it is more than an hour ahead of its clock,
taking valid records of the same batch with it. The sink falls back to the produce time,
counted, outside a window around the wall clock; the simulator stamps a live (paced) session
with the New York time of day."""

import datetime
import time

import numpy as np
import pytest

from faults.checker import check_topics, read_partitions
from faults.processes import final_account, start_handler, start_simulator
from feedhandler.exchange import orderflow, replay
from feedhandler.exchange.clock import EXCHANGE_TIMEZONE, LiveClock, time_of_day_ns
from feedhandler.exchange.orderflow import MessageBlock
from feedhandler.exchange.server import Simulator, SimulatorConfig
from feedhandler.kafka import consume
from feedhandler.kafka.routing import Routes
from feedhandler.kafka.timestamps import (BROKER_AFTER_MAX_MS, DEFAULT_MAX_AHEAD_MS,
                                          PRODUCE_TIME, TimestampWindow)
from feedhandler.pipeline.handler import Handler, HandlerConfig
from feedhandler.session import SessionClient
from feedhandler.session import protocol as sessionproto
from feedhandler.wire import packet
from feedhandler.wire.itch import NANOSECONDS_PER_DAY
from streams import SESSION, split_block

HOUR_MS = 3_600_000
NS_PER_MS = 1_000_000


# ---- the window --------------------------------------------------------------------------------
def test_the_window_keeps_timestamps_inside_and_falls_back_to_produce_time_outside():
    now_ms = 1_800_000_000_000
    window = TimestampWindow(max_ahead_ms=HOUR_MS, max_behind_ms=2 * HOUR_MS,
                             clock=lambda: now_ms / 1000)
    assert window.window_ms() == (now_ms - 2 * HOUR_MS, now_ms + HOUR_MS)
    stamps = [now_ms, now_ms + HOUR_MS, now_ms + HOUR_MS + 1, now_ms - 2 * HOUR_MS,
              now_ms - 2 * HOUR_MS - 1, 0 + 5]
    records = [{"timestamp": t} for t in stamps]
    window.apply(records)
    assert [r["timestamp"] for r in records] == [now_ms, now_ms + HOUR_MS, PRODUCE_TIME,
                                                 now_ms - 2 * HOUR_MS, PRODUCE_TIME, PRODUCE_TIME]
    assert window.fallbacks == 3
    window.count(4)                     # what the C path reports
    assert window.fallbacks == 7


def test_the_default_window_stays_inside_what_a_default_broker_accepts():
    """Ahead: short of the broker's hour. Behind: unbounded, as the broker's default."""
    assert 0 < DEFAULT_MAX_AHEAD_MS < BROKER_AFTER_MAX_MS
    window = TimestampWindow(clock=lambda: 1_800_000_000)
    records = [{"timestamp": 1}, {"timestamp": 1_800_000_000_000 + DEFAULT_MAX_AHEAD_MS}]
    window.apply(records)
    assert [r["timestamp"] for r in records] == [1, 1_800_000_000_000 + DEFAULT_MAX_AHEAD_MS]
    assert window.fallbacks == 0
    with pytest.raises(ValueError):
        TimestampWindow(max_ahead_ms=-1)


# ---- the simulator's live clock ----------------------------------------------------------------
def test_time_of_day_is_new_york_time_in_summer_and_winter():
    for utc, hours in (("2026-07-01T13:30:00", 9.5), ("2026-12-01T14:30:00", 9.5),
                       ("2026-12-02T04:59:59", 23 + 59 / 60 + 59 / 3600)):
        moment = datetime.datetime.fromisoformat(utc).replace(tzinfo=datetime.timezone.utc)
        epoch_ns = int(moment.timestamp()) * 1_000_000_000 + 123
        assert time_of_day_ns(epoch_ns) == round(hours * 3600) * 1_000_000_000 + 123


def test_with_timestamps_rewrites_only_the_timestamps():
    block = orderflow.generate(2_000, symbols=10, seed=5)
    stamps = np.arange(block.count, dtype=np.uint64) * 1_000_003 + 7
    stamped = replay.with_timestamps(block, stamps)
    assert np.array_equal(replay.message_timestamps(stamped), stamps)
    restored = replay.with_timestamps(stamped, replay.message_timestamps(block))
    assert restored.data == block.data and restored.offsets is block.offsets


def test_live_clock_stamps_each_packet_with_its_due_time_and_stops_at_midnight():
    block = orderflow.generate(1_000, symbols=10, seed=6)
    epoch_ns = int(datetime.datetime(2026, 12, 1, 23, 59, 59, tzinfo=EXCHANGE_TIMEZONE)
                   .timestamp()) * 1_000_000_000
    clock = LiveClock(epoch_ns)
    boundaries = np.array([0, 400, 1000])
    stamps = replay.message_timestamps(clock.stamp(block, boundaries, np.array([0.5, 2.0])))
    assert np.all(stamps[:400] == clock.origin_ns + 500_000_000)
    assert np.all(stamps[400:] == NANOSECONDS_PER_DAY - 1)        # 00:00:01 would be a new day


def served_timestamps(**settings) -> np.ndarray:
    config = SimulatorConfig(port=0, status_interval=None, symbols=10, count=3_000, **settings)
    with Simulator(config) as simulator:
        feed = SessionClient("127.0.0.1", simulator.port, username="feed", password="feed")
        data = b"".join(sessionproto.message_block(frame) for frame in feed.frames())
    lengths = [len(m) + 2 for m in split_block(data)]
    return replay.message_timestamps(MessageBlock(data, np.cumsum([0] + lengths)))


def test_a_paced_synthetic_session_carries_the_new_york_time_of_day():
    before = time_of_day_ns(time.time_ns())
    stamps = served_timestamps(rate=10_000).astype(np.int64)
    after = time_of_day_ns(time.time_ns())
    assert before - 1_000_000_000 <= stamps.min() and stamps.max() <= after
    assert np.all(np.diff(stamps) >= 0)


def test_the_synthetic_clock_stays_where_asked_or_unpaced():
    for settings in ({"rate": 10_000, "live_clock": False}, {}):
        assert served_timestamps(**settings).min() == orderflow.START_OF_MESSAGES
    with pytest.raises(ValueError, match="live clock needs a paced synthetic session"):
        SimulatorConfig(live_clock=True)


# ---- the handler, on the real broker ------------------------------------------------------------
COUNT = 20_000
SYMBOLS = 40
BLOCK = orderflow.generate(COUNT, symbols=SYMBOLS, seed=31)
ITCH_NS = replay.message_timestamps(BLOCK)
FRAMES = [packet.encode(split_block(BLOCK.data)[i:i + 500], session=SESSION, sequence=1 + i)
          for i in range(0, COUNT, 500)]
# The opening's directory and trading states are stamped 04:00, the rest from 09:25 on.
PIVOT_NS = 6 * 3600 * 1_000_000_000


def base_putting_pivot_at_now() -> int:
    """A timestamp base (midnight of a trade date, ms) that puts the ITCH time 06:00 at the
    wall clock: 04:00 is two hours behind it, 09:25 and later more than three hours ahead."""
    return int(time.time() * 1000) - PIVOT_NS // NS_PER_MS


@pytest.mark.kafka
@pytest.mark.parametrize("value_format, producer_link", [("json", "auto"), ("struct", "off")])
def test_itch_times_hours_ahead_are_delivered_with_the_produce_time_and_counted(
        kafka, topic_prefix, value_format, producer_link):
    """Before: the broker refuses every record stamped 09:25 or later and the 04:00 ones that
    share their batches; ticks are lost. After: all delivered; exactly the records beyond the
    window carry the produce time; the others keep their ITCH time."""
    base_ms = base_putting_pivot_at_now()
    routes = Routes.by_category(topic_prefix)
    handler = Handler(HandlerConfig(kafka, value_format=value_format, routes=routes,
                                    partitions=2, headers=True, timestamp_base_ms=base_ms,
                                    producer_link=producer_link, flush_timeout=60))
    started_ms = int(time.time() * 1000)
    account = handler.run(iter(FRAMES))
    ended_ms = int(time.time() * 1000)
    ahead = int(np.count_nonzero(ITCH_NS > PIVOT_NS))
    assert 0 < ahead < COUNT
    assert account.lost == 0 and account.delivered == COUNT, account.failure_reasons
    assert handler.sink.timestamps.fallbacks == ahead
    kept = fallen_back = 0
    for message in read_partitions(kafka, routes.topics):
        (record,) = [row for rows in consume.to_arrays([message.value()], value_format).values()
                     for row in rows]
        stamp = message.timestamp()[1]
        if stamp == base_ms + int(record["timestamp"]) // NS_PER_MS:
            kept += 1
        else:
            assert record["timestamp"] > PIVOT_NS and started_ms - 1000 <= stamp <= ended_ms
            fallen_back += 1
    assert (kept, fallen_back) == (COUNT - ahead, ahead)


@pytest.mark.kafka
def test_itch_times_hours_ahead_through_the_producer_link(kafka, topic_prefix):
    handler = Handler(HandlerConfig(kafka, value_format="struct",
                                    routes=Routes.by_category(topic_prefix), partitions=2,
                                    headers=True, timestamp_base_ms=base_putting_pivot_at_now(),
                                    producer_link="require", flush_timeout=60))
    account = handler.run(iter(FRAMES))
    assert account.lost == 0 and account.delivered == COUNT, account.failure_reasons


@pytest.mark.kafka
def test_run_with_a_trade_date_far_ahead_loses_nothing(kafka, topic_prefix, tmp_path):
    """`feedhandler run --headers --trade-date 2099-01-02`: every ITCH time is decades ahead.
    Before: exit 1, ticks lost. After: exit 0, every tick in Kafka once."""
    simulator = start_simulator("--count", str(COUNT), "--symbols", str(SYMBOLS), "--quiet",
                                workdir=tmp_path)
    with simulator:
        handler = start_handler("--connect", simulator.address, "--bootstrap-servers", kafka,
                                "--topic-prefix", topic_prefix, "--format", "json", "--headers",
                                "--trade-date", "2099-01-02", "--partitions", "2", "--quiet",
                                workdir=tmp_path)
        with handler:
            assert handler.wait(120) == 0, handler.tail()
    assert final_account(handler)["delivered"] == COUNT
    assert "carry the produce time instead" in handler.stderr()
    result = check_topics(kafka, Routes.by_category(topic_prefix), "json",
                          expected=range(1, COUNT + 1))
    assert result.ok, result.summary()

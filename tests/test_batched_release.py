"""A batched release's frames are produced together, in the same records, so they settle
together: the ledger counts a release as one frame (one ProducerLink.close_frame), carrying
the release's ticks, the position after its last frame, and the receipt of its first. The
checkpoint still never claims a tick that is not acknowledged: here a release whose dead letters
are held up (their topic does not exist yet) while its ticks are in Kafka."""

import time
from collections import Counter

import pytest

from faults.checker import check_topics
from feedhandler.exchange import orderflow
from feedhandler.kafka import sink as sink_module
from feedhandler.kafka.topics import ensure_topics
from feedhandler.wire import packet
from feedhandler.wire._decode import tick_counts
from streams import SESSION, split_block
from test_batched_reads import decoded, recording_sink, session_frames
from test_frame_acknowledgement import (assert_nothing_counts_before_the_dead_letters,
                                        served_until, sink_without_dead_letter_topic)

MESSAGES = split_block(orderflow.generate(400, symbols=20, seed=5).data)
UNKNOWN = b"Z" + MESSAGES[0][1:]        # a message of no known type: a dead letter
WAITED_NS = 50_000_000                  # how long before its release the first frame came in


class CountingLink:
    """The sink's ProducerLink, with its close_frame calls counted."""

    def __init__(self, link):
        self._link = link
        self.closed = 0

    def close_frame(self):
        self.closed += 1
        self._link.close_frame()

    def __getattr__(self, name):
        return getattr(self._link, name)


def release_frames() -> list:
    """Ticks 1-200 and a dead letter (201); a heartbeat (a frame without ticks); ticks
    202-401; a frame of one dead letter (402), so no tick, yet it moves the position to 403."""
    return packet.decode_many([
        packet.encode([*MESSAGES[:200], UNKNOWN], session=SESSION, sequence=1),
        packet.encode([], session=SESSION, sequence=202),
        packet.encode(MESSAGES[200:], session=SESSION, sequence=202),
        packet.encode([UNKNOWN], session=SESSION, sequence=402)], policy="quarantine")


@pytest.mark.kafka
def test_a_release_settles_as_one_frame_and_the_checkpoint_waits_for_all_of_it(kafka,
                                                                              topic_prefix):
    sink, producer, client, routes = sink_without_dead_letter_topic(
        kafka, topic_prefix, "batched", CountingLink)
    link = sink.link
    packets = release_frames()
    ticks = tick_counts(packets, Counter())
    assert ticks == [200, 0, 200, 0]
    received = time.monotonic_ns() - WAITED_NS
    sink.publish_read(packets, ticks, received)
    sink.idle()
    # One frame for the release: its ticks, the position after its last frame (one without
    # ticks), one close_frame; one latency sample, from the first frame's receipt.
    assert link.closed == 1
    assert [(frame[1], frame[4]) for frame in sink.ledger.acks.frames] == [(400, 403)]
    produced = sink.ledger.acks.latencies.produced
    assert produced.total == 1 and produced.max_ns >= WAITED_NS
    # Nothing of the release counts while its two dead letters are held up.
    assert_nothing_counts_before_the_dead_letters(sink, producer, 2)
    ensure_topics(client, {routes.dead_letter: 1})
    assert served_until(sink, lambda: sink.ledger.acks.next_sequence == 403, 60)
    assert sink.ledger.acks.ticks == 400 and link.closed == 1
    assert sink.ledger.acks.latencies.acknowledged.total == 1
    assert sink.finish() == {"delivered": 400, "failed": 0, "undelivered": 0}
    assert sink.checkpointed_sequence == 403
    result = check_topics(kafka, routes, "batched", expected=range(1, 403))
    assert result.ok and result.ticks == 400, result.summary()
    assert result.dead_lettered == [(201, 201), (402, 402)]


def test_each_release_is_one_ledger_frame_up_to_its_last_frame(monkeypatch):
    """Releases by tick count inside reads and by the feed going quiet between them, dead
    letters and frames without ticks among them: a ledger frame per release, with the
    release's ticks and the position after its last frame, in feed order; and every tick
    counted once."""
    monkeypatch.setattr(sink_module, "BATCH_TICKS", 300)
    monkeypatch.setattr(sink_module, "BATCH_LINGER_NS", 1 << 62)
    sink, _ = recording_sink()
    ledger_frames = []
    frame_produced = sink.ledger.acks.frame_produced

    def recorded(records_total, ticks, received_ns, next_sequence):
        ledger_frames.append((ticks, next_sequence))
        frame_produced(records_total, ticks, received_ns, next_sequence)
    sink.ledger.acks.frame_produced = recorded
    frames = session_frames(2)
    releases, held, held_ticks, position = [], False, 0, 0
    for first in range(0, len(frames), 17):
        packets = decoded(frames[first:first + 17])
        ticks = tick_counts(packets, Counter())
        sink.publish_read(packets, ticks, 0)
        # What the sink is expected to do with them, frame by frame: a frame quarantined
        # whole has no place in the sequence; one without ticks is held only behind ticks.
        for p, count in zip(packets, ticks):
            if p.next_sequence is None:
                continue
            if not count and not held:
                releases.append((0, p.next_sequence))
                continue
            held, held_ticks, position = True, held_ticks + count, p.next_sequence
            if count and held_ticks >= sink_module.BATCH_TICKS:
                releases.append((held_ticks, position))
                held, held_ticks = False, 0
        sink.idle()
        if held:
            releases.append((held_ticks, position))
            held, held_ticks = False, 0
    assert ledger_frames == releases
    assert sum(ticks for ticks, _ in releases) == sink.ledger.ticks > 0
    assert len(releases) < len(frames) / 4
    assert sink.ledger.dead_lettered > 0

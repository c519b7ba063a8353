"""`--profile`: what the handler aims for, as producer settings, pipeline cadences and the
GIL switch interval `feedhandler run` sets for the process.

- throughput (the default): large producer batches (PRODUCER_DEFAULTS: linger.ms 20), up to
  the source's default frames per socket read in one task, decoded on the worker pool.
- latency: small batches sent at once (linger.ms 1), socket reads of at most
  LATENCY_READ_FRAMES frames handed on as one task and decoded by the publisher itself (no
  pool: a read passes from the reader to the publisher only), and a shorter GIL switch
  interval: a thread woken for a read may wait that long for the GIL while another runs
  Python code.

Both wait for acknowledgements event-driven (the ProducerLink signals them); without the link
they are looked for on a timer while frames await them: every 5 ms (POLL_INTERVAL), or
LATENCY_ACK_INTERVAL with the latency profile.

Explicit `-X` settings win over a profile's producer settings, `--decode` over where it
decodes. docs/kafka.md gives the measured trade-off."""

from __future__ import annotations

from dataclasses import dataclass, field

from feedhandler.kafka.sink import POLL_INTERVAL

LATENCY_ACK_INTERVAL = 0.001     # the publisher's wait has a millisecond's resolution
LATENCY_READ_FRAMES = 8
# The reader, the decode workers and the publisher hand work to each other constantly; with
# CPython's default 5 ms switch interval one waits up to that long for the GIL at each hand-off.
DEFAULT_GIL_SWITCH_INTERVAL = 0.001
LATENCY_GIL_SWITCH_INTERVAL = 0.0002


@dataclass(frozen=True)
class Profile:
    producer: dict = field(default_factory=dict)   # librdkafka settings over PRODUCER_DEFAULTS
    pipeline: dict = field(default_factory=dict)   # HandlerConfig fields
    gil_switch_interval: float = DEFAULT_GIL_SWITCH_INTERVAL     # seconds


PROFILES = {
    "throughput": Profile(pipeline={"ack_interval": POLL_INTERVAL, "read_frames": 0,
                                    "decode": "pool"}),
    "latency": Profile(producer={"linger.ms": "1"},
                       pipeline={"ack_interval": LATENCY_ACK_INTERVAL,
                                 "read_frames": LATENCY_READ_FRAMES, "decode": "publisher"},
                       gil_switch_interval=LATENCY_GIL_SWITCH_INTERVAL),
}
DEFAULT_PROFILE = "throughput"


def profile_settings(name: str, explicit: dict) -> Profile:
    """The profile `name` with the explicitly given producer settings over its own."""
    profile = PROFILES[name]
    return Profile({**profile.producer, **explicit}, dict(profile.pipeline),
                   profile.gil_switch_interval)

#!/usr/bin/env python3
"""Fuzz `itch.parse` (NASDAQ binary file framing) under both policies.

Contract for any bytes: strict parsing returns arrays or raises DecodeError; quarantine parsing
never raises and accounts for every byte (decoded messages plus quarantined entries, which
carry no sequence number); strict fails exactly when something is quarantined, on the first
fault; parsing is deterministic.

    python tests/fuzz/fuzz_itch.py -max_total_time=600 /tmp/corpus tests/vectors/itch
"""

import random
import sys
from pathlib import Path

import numpy as np

from feedhandler.errors import DecodeError
from feedhandler.wire import itch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.common import MESSAGE_REASONS, Probes, fuzz, mutate_block  # noqa: E402

TRUNCATED = "message runs past the end of the data"
probe = Probes()


def same_messages(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[t].tobytes() == b[t].tobytes() for t in a)


def check(data: bytes):
    block = bytes(data)
    messages, quarantined = itch.parse_quarantine(block)
    accounted = 0
    for message_type, records in messages.items():
        probe(f"type:{message_type}")
        assert len(records) > 0 and np.all(records["message_type"] == message_type.encode())
        assert np.all(records["timestamp"] < itch.NANOSECONDS_PER_DAY)
        accounted += len(records) * (2 + itch.WIRE_LENGTHS[message_type])
    previous = -1
    for entry in quarantined:
        probe(f"quarantined:{entry.reason}")
        assert entry.reason in MESSAGE_REASONS and entry.sequence is None
        assert previous < entry.offset < len(block)
        assert block[entry.offset + (0 if entry.reason == TRUNCATED else 2):].startswith(entry.raw)
        previous = entry.offset
        accounted += len(entry.raw) + (0 if entry.reason == TRUNCATED else 2)
    assert accounted == len(block), (accounted, len(block))

    again, quarantined_again = itch.parse_quarantine(bytearray(block))
    assert same_messages(messages, again) and quarantined == quarantined_again
    assert same_messages(messages, itch.parse(block, policy="quarantine"))

    try:
        strict = itch.parse(block)
    except DecodeError as error:
        probe(f"strict:{error.reason}")
        assert quarantined and (error.reason, error.offset) == (quarantined[0].reason,
                                                                quarantined[0].offset)
    else:
        assert not quarantined and same_messages(strict, messages)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate_block(bytes(data), max_size, random.Random(seed))


if __name__ == "__main__":
    fuzz(check, mutate)

"""The decoder keeps offsets in 64 bits: a fault past 4 GiB is reported at its real byte."""

import numpy as np
import pytest

from feedhandler import DecodeError
from feedhandler.exchange import synthetic
from feedhandler.wire import _decode, itch
from streams import split_block

BLOCK = synthetic.random_stream(2_000, seed=21)[0]
MESSAGES = split_block(BLOCK)
BAD = len(b"D" * 19).to_bytes(2, "big") + b"z" + bytes(18)    # a 'D'-sized unknown type
BAD_AT = 2 + len(MESSAGES[0]) + 2 + len(MESSAGES[1])          # after two good messages
WITH_BAD = BLOCK[:BAD_AT] + BAD + BLOCK[BAD_AT:]


@pytest.mark.parametrize("base", [2**32 - BAD_AT, 2**32 + 1, 2**40 + 7, 2**63])
def test_offsets_past_32_bits(base):
    """Through the same walk and fault log as any parse: the block is taken to start `base`
    bytes into a larger input, so every offset must come out as base + position."""
    with pytest.raises(DecodeError) as caught:
        _decode.parse_messages(WITH_BAD, base_offset=base)
    assert caught.value.offset == base + BAD_AT
    messages, entries = _decode.parse_messages(WITH_BAD + BLOCK[:-1], quarantine=True,
                                               base_offset=base)
    truncated_at = len(WITH_BAD) + len(BLOCK) - 2 - len(MESSAGES[-1])
    assert [(e.offset, e.code) for e in entries] == [
        (base + BAD_AT, "unknown_type"), (base + truncated_at, "message_truncated")]
    assert entries[0].raw == BAD[2:] and entries[1].raw == BLOCK[-2 - len(MESSAGES[-1]):-1]
    assert sum(map(len, messages.values())) == 2 * len(MESSAGES) - 1


@pytest.mark.slow
def test_parse_of_a_buffer_over_4_gib_reports_the_real_offset():
    """The issue's case, a bad message some 20 KB past 4 GiB in one buffer, made of NOII
    messages (the longest type, so the fewest rows). Needs about 10 GB of memory: the input,
    then the arrays that the strict pass fills up to the fault."""
    unit = itch.encode(synthetic.random_records("I", 1_000, np.random.default_rng(3)))
    framed = len(unit) // 1_000
    where = -(-(2**32 + 20_996) // framed) * framed       # the first message boundary past it
    buffer = np.empty(where + len(BAD) + len(unit), np.uint8)
    good = buffer[:where - where % len(unit)].reshape(-1, len(unit))
    good[:] = np.frombuffer(unit, np.uint8)
    buffer[good.size:] = np.frombuffer(unit[:where % len(unit)] + BAD + unit, np.uint8)
    del good
    with pytest.raises(DecodeError) as caught:
        itch.parse(buffer)
    assert caught.value.offset == where
    assert caught.value.reason == "unknown message type"

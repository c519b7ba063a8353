"""Field-by-field agreement with two independent ITCH parsers on generated streams."""

from collections import defaultdict

import numpy as np
import pytest

from feedhandler.exchange import synthetic
from feedhandler.wire import itch, packet
from oracles import ORACLES, oracle_value
from streams import frames_of, split_block, uniform_stream

STREAMS = {
    "uniform": uniform_stream(12_000, seed=21)[0],
    "typical": synthetic.random_stream(12_000, seed=22)[0],
}


def oracle_records(oracle: str, block: bytes) -> dict[str, list]:
    by_type = defaultdict(list)
    for message in ORACLES[oracle]().parse_stream(block):
        by_type[message.message_type.decode()].append(message)
    return by_type


def assert_same_records(ours: dict[str, np.ndarray], theirs: dict[str, list]):
    assert set(ours) == set(theirs)
    for message_type, records in ours.items():
        messages = theirs[message_type]
        assert len(records) == len(messages), message_type
        for field in itch.DTYPES[message_type].names:
            expected = [oracle_value(m, field) for m in messages]
            assert records[field].tolist() == expected, (message_type, field)


@pytest.mark.parametrize("oracle", sorted(ORACLES))
@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_parse_agrees_with_oracle(oracle, stream):
    ours = itch.parse(STREAMS[stream])
    if stream == "uniform":
        assert set(ours) == set(itch.DTYPES)      # the stream covers every message type
    assert_same_records(ours, oracle_records(oracle, STREAMS[stream]))


@pytest.mark.parametrize("oracle", sorted(ORACLES))
def test_decoded_frames_agree_with_oracle(oracle):
    block = STREAMS["uniform"]
    decoded = [packet.decode(f) for f in frames_of(split_block(block), 500)]
    ours = {t: np.concatenate([d.messages[t] for d in decoded if t in d.messages])
            for t in itch.DTYPES}
    assert_same_records(ours, oracle_records(oracle, block))

"""The C structs, the numpy dtypes and docs/messages.md describe the same layouts."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import feedhandler
from feedhandler.wire import _decode
from feedhandler.wire.itch import DTYPES, WIRE_LENGTHS

ROOT = Path(__file__).resolve().parent.parent

# Independent of the code: message lengths from the ITCH 5.0 spec (type byte included).
SPEC_LENGTHS = {
    "S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35, "h": 21,
    "A": 36, "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40, "B": 19,
    "I": 50, "N": 20, "O": 48,
}


def test_every_itch_type_has_a_dtype():
    assert set(DTYPES) == set(SPEC_LENGTHS)


@pytest.mark.parametrize("message_type", sorted(SPEC_LENGTHS))
def test_struct_size_matches_dtype_and_spec(message_type):
    c_sizeof, _ = _decode._struct_formats()[message_type]
    assert DTYPES[message_type].itemsize == c_sizeof
    assert WIRE_LENGTHS[message_type] == SPEC_LENGTHS[message_type]
    # wire timestamp is 6 bytes, struct timestamp 8: everything else is the same size
    assert c_sizeof == SPEC_LENGTHS[message_type] + 2


@pytest.mark.parametrize("message_type", sorted(SPEC_LENGTHS))
def test_fields_are_packed_in_wire_order(message_type):
    dtype = DTYPES[message_type]
    expected = 0
    for name in dtype.names:
        field, offset = dtype.fields[name][:2]
        assert offset == expected, name
        expected += field.itemsize
    assert expected == dtype.itemsize
    assert dtype.names[:4] == ("message_type", "stock_locate", "tracking_number", "timestamp")
    assert dtype["timestamp"] == np.uint64


@pytest.mark.parametrize("message_type", sorted(SPEC_LENGTHS))
def test_struct_writes_land_where_the_dtype_reads(message_type):
    """A message whose every wire byte is distinct must come out with each dtype field holding
    exactly the wire bytes at that field's position (so C writes and numpy reads agree)."""
    length = SPEC_LENGTHS[message_type]
    wire = bytearray(range(1, length + 1))
    wire[0] = ord(message_type)
    wire[5] = 0  # keep the timestamp within the day
    dtype = DTYPES[message_type]
    for name in ("buy_sell_indicator",):
        if name in dtype.names:
            wire[dtype.fields[name][1] - 2] = ord("B")
    if "stock" in dtype.names:
        start = dtype.fields["stock"][1] - 2
        wire[start:start + 8] = b"ABCDEFGH"
    record = _decode.parse_messages(len(wire).to_bytes(2, "big") + bytes(wire))[0][message_type][0]
    wire_offset = 0
    for name in dtype.names:
        field = dtype.fields[name][0]
        width = 6 if name == "timestamp" else field.itemsize
        raw = bytes(wire[wire_offset:wire_offset + width])
        expected = raw if field.kind == "S" else int.from_bytes(raw, "big")
        assert record[name] == expected, name
        wire_offset += width
    assert wire_offset == length


def test_generated_docs_are_current():
    """docs/messages.md and the fault code table of docs/protocol.md (scripts/wire_docs.py),
    checked against the feedhandler under test: the checkout's, or an installed wheel's when the
    tests run against one (the checkout's package is not built then)."""
    package_parent = Path(feedhandler.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "scripts/wire_docs.py", "--check"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(package_parent)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

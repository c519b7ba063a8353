"""Seeded synthetic ITCH 5.0 data: valid random records of every type, for tests, benchmarks
and fuzzing. (The simulator's order-book-consistent flow builds on these.)"""

from __future__ import annotations

import numpy as np

from feedhandler.wire.itch import DTYPES, NANOSECONDS_PER_DAY, encode

# Rough message mix of a real TotalView-ITCH day: mostly adds, deletes, replaces and executions;
# directory, status and auction messages are a few thousand a day out of hundreds of millions.
TYPICAL_MIX = {
    "A": 0.42, "D": 0.40, "U": 0.085, "E": 0.028, "X": 0.013, "F": 0.0035, "C": 0.0004,
    "P": 0.006, "I": 0.025, "N": 0.002, "L": 1e-4, "H": 4e-5, "R": 4e-5, "Y": 4e-5, "Q": 7e-5,
    "B": 1e-6, "S": 1e-7, "V": 1e-8, "W": 1e-8, "K": 1e-7, "J": 1e-7, "h": 1e-7, "O": 1e-8,
}
UNIFORM_MIX = {message_type: 1.0 for message_type in TYPICAL_MIX}

_ALPHA = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
_CHOICES = {"buy_sell_indicator": b"BS", "printable": b"YN", "imbalance_direction": b"BSNO",
            "cross_type": b"OCHI", "event_code": b"OSQMEC"}


def random_symbols(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct-ish space-padded 8-byte stock symbols of 1 to 5 letters."""
    letters = _ALPHA[rng.integers(0, 26, size=(count, 8))]
    lengths = rng.integers(1, 6, size=count)
    letters[np.arange(8) >= lengths[:, None]] = ord(" ")
    return letters.view("S8").ravel()


def random_records(message_type: str, count: int, rng: np.random.Generator,
                   symbols: np.ndarray | None = None) -> np.ndarray:
    """`count` valid records of one type with random field values (timestamps ascending)."""
    dtype = DTYPES[message_type]
    records = np.zeros(count, dtype)
    for name in dtype.names:
        field = dtype.fields[name][0]
        if name == "message_type":
            records[name] = message_type.encode()
        elif name == "timestamp":
            records[name] = np.sort(rng.integers(0, NANOSECONDS_PER_DAY, size=count, dtype=np.uint64))
        elif name == "stock":
            pool = symbols if symbols is not None else random_symbols(64, rng)
            records[name] = pool[rng.integers(0, len(pool), size=count)]
        elif name in _CHOICES:
            choices = np.frombuffer(_CHOICES[name], "S1")
            records[name] = choices[rng.integers(0, len(choices), size=count)]
        elif field.kind == "u":
            records[name] = rng.integers(0, np.iinfo(field).max, size=count, dtype=field,
                                         endpoint=True)
        else:
            width = field.itemsize
            records[name] = _ALPHA[rng.integers(0, 26, size=(count, width))].view(f"S{width}").ravel()
    return records


def random_stream(count: int, seed: int = 0, mix: dict[str, float] | None = None,
                  symbols: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:
    """A shuffled stream of `count` valid messages in NASDAQ's binary file framing.

    Returns the block and the message type of each message in stream order (as uint8)."""
    rng = np.random.default_rng(seed)
    mix = mix or TYPICAL_MIX
    types = list(mix)
    weights = np.array([mix[t] for t in types], float)
    order = rng.choice(len(types), size=count, p=weights / weights.sum())
    pieces = np.empty(count, object)
    for i, message_type in enumerate(types):
        where = np.flatnonzero(order == i)
        if len(where):
            wire = encode(random_records(message_type, len(where), rng, symbols))
            size = len(wire) // len(where)
            pieces[where] = [wire[k:k + size] for k in range(0, len(wire), size)]
    type_codes = np.frombuffer("".join(types).encode(), np.uint8)[order]
    return b"".join(pieces), type_codes

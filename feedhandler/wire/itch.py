"""NASDAQ TotalView-ITCH 5.0 messages as numpy structured arrays.

`DTYPES` maps each message type to the dtype of its struct in ext/itch_layout.pxd (the dtypes
are derived from the compiled structs, so the two cannot drift apart). `parse` reads messages in
NASDAQ's binary file framing; `encode` writes struct arrays back to that framing.
"""

from __future__ import annotations

import numpy as np

from feedhandler.errors import Quarantined
from feedhandler.wire import _decode

__all__ = ["DTYPES", "WIRE_LENGTHS", "NANOSECONDS_PER_DAY", "POLICIES", "Quarantined", "check_policy", "parse", "parse_quarantine", "encode", "frame_messages"]

DTYPES: dict[str, np.dtype] = dict(_decode.DTYPES)
"""Message type (one-character str) -> numpy dtype of its struct."""

WIRE_LENGTHS: dict[str, int] = {t: dt.itemsize - 2 for t, dt in DTYPES.items()}
"""Message type -> the spec's message length in bytes, type byte included."""

NANOSECONDS_PER_DAY = _decode.NANOSECONDS_PER_DAY

POLICIES = ("strict", "quarantine")


def check_policy(policy: str) -> bool:
    """True for `quarantine`, False for `strict`; anything else is a caller error."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    return policy == "quarantine"


def parse(buf, *, policy: str = "strict") -> dict[str, np.ndarray]:
    """Parse ITCH 5.0 messages in NASDAQ's binary file framing (u16 big-endian length, then
    the message): one structured array per message type present, rows in stream order.

    With policy="strict" any bad message raises DecodeError; with "quarantine" bad messages are
    skipped (use `parse_quarantine` to see them)."""
    return parse_quarantine(buf, policy=policy)[0]


def parse_quarantine(buf, *, policy: str = "quarantine"):
    """Like `parse`, also returning the quarantined messages as a list of `Quarantined`."""
    return _decode.parse_messages(buf, quarantine=check_policy(policy))


def _wire_dtype(message_type: str) -> np.dtype:
    """Big-endian dtype of a message as framed on the wire, u16 length prefix included."""
    fields = [("length", ">u2")]
    for name in DTYPES[message_type].names:
        field = DTYPES[message_type].fields[name][0]
        if name == "timestamp":
            fields += [("timestamp_high", ">u2"), ("timestamp_low", ">u4")]
        else:
            fields.append((name, field.newbyteorder(">") if field.kind == "u" else field))
    return np.dtype(fields)


_WIRE_DTYPES = {t: _wire_dtype(t) for t in DTYPES}


def encode(records: np.ndarray) -> bytes:
    """Structured array of one message type -> its messages in NASDAQ's binary file framing."""
    message_type = records["message_type"][0].decode() if len(records) else None
    if message_type is None:
        return b""
    if np.any(records["message_type"] != records["message_type"][0]):
        raise ValueError("encode takes records of a single message type")
    wire = np.empty(len(records), _WIRE_DTYPES[message_type])
    wire["length"] = WIRE_LENGTHS[message_type]
    for name in DTYPES[message_type].names:
        if name == "timestamp":
            wire["timestamp_high"] = records["timestamp"] >> 32
            wire["timestamp_low"] = records["timestamp"] & 0xFFFFFFFF
        else:
            wire[name] = records[name]
    return wire.tobytes()


def frame_messages(messages) -> bytes:
    """Bytes-like ITCH messages -> one block in NASDAQ's binary file framing."""
    return b"".join(len(m).to_bytes(2, "big") + bytes(m) for m in messages)

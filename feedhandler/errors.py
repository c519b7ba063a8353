"""What feedhandler produces for bad input: `DecodeError` (strict policy) and `Quarantined`
entries (quarantine policy). Both carry a fault `code`, a stable name from the decoder's one
table of faults (ext/faults.h; `feedhandler.wire.faults.FAULTS` maps each code to its reason)."""

from __future__ import annotations

from typing import NamedTuple


class DecodeError(ValueError):
    """A frame or message block that cannot be decoded.

    `code` is the fault's stable name (e.g. "checksum_mismatch"), `reason` its text and `offset`
    the byte where the problem was found: from the start of the frame for frame-level faults
    (header, compression, checksum), from the start of the MoldUDP64 packet for message-level
    faults, and from the start of the buffer for `itch.parse`. Offsets are exact at any size.
    The decoder always sets `code`; it is optional only for errors raised by other code.
    """

    def __init__(self, reason: str, offset: int, code: str | None = None):
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset
        self.code = code

    def __reduce__(self):
        return type(self), (self.reason, self.offset, self.code)


class Quarantined(NamedTuple):
    """A message (or a whole frame) set aside by the `quarantine` policy."""

    offset: int
    reason: str
    raw: bytes
    sequence: int | None
    code: str | None = None     # always set by the decoder; optional for entries made elsewhere

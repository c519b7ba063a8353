"""Exceptions feedhandler raises for bad input."""


class DecodeError(ValueError):
    """A frame or message block that cannot be decoded.

    `offset` is the byte where the problem was found: from the start of the frame for frame-level
    faults (header, compression, checksum), from the start of the MoldUDP64 packet for
    message-level faults, and from the start of the buffer for `itch.parse`.
    """

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset

    def __reduce__(self):
        return type(self), (self.reason, self.offset)

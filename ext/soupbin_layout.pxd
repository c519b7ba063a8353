# The SoupBinTCP 4.1 logical packet header as a packed C struct: the one definition of its
# layout, and the packet types the C code needs (docs/protocol.md, "SoupBinTCP 4.1").
#
# Every SoupBinTCP packet is a big-endian u16 length (the bytes after the length field: the type
# byte and the payload), a one-byte packet type and the payload. The fixed control packets
# (login, heartbeats, ...) are laid out in feedhandler/wire/soupbin.py, which reads this header's
# size and field offsets from _soupbin.

from libc.stdint cimport uint8_t


cdef packed struct SoupBinHeader:
    uint8_t packet_length[2]        # u16: bytes after this field, the type byte included
    char packet_type                # '+', 'A', 'J', 'S', 'H', 'Z', 'L', 'U', 'R', 'O'


cdef enum:
    SEQUENCED_DATA = 0x53           # 'S': one message of the session
    # A MoldUDP64 packet counts its messages in a u16 whose 0xFFFF means end of session.
    MAX_MESSAGES_PER_PACKET = 0xFFFE


# Why a scan stopped early; names and texts in _soupbin.PACKET_FAULTS.
cdef enum PacketFault:
    PACKET_OK = 0
    PACKET_LENGTH_ZERO = 1          # a length field of 0: not even a type byte
    PACKET_EMPTY_MESSAGE = 2        # an 'S' packet with no message in it
    FRAME_MALFORMED = 3             # (server side) a store frame that is not what framing wrote

# The per-tick record value (docs/kafka.md, "Value formats"): a tick header, then the message as
# a packed struct (`struct`) or as on the wire without its length prefix (`raw`). Declared once
# here; feedhandler.kafka.routing.TICK_DTYPES is derived from TICK_HEADER_SIZE and the message
# dtypes, and tests/test_routing.py checks the two against each other.

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    SESSION_LENGTH = 10

cdef packed struct TickHeader:
    char session[SESSION_LENGTH]    # the MoldUDP64 session, ASCII, space-padded
    uint64_t sequence               # the message's MoldUDP64 sequence number, little-endian

cdef enum:
    TICK_HEADER_SIZE = SESSION_LENGTH + 8     # == sizeof(TickHeader), checked at import


cdef inline void store_le64(uint8_t* p, uint64_t value) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(value >> (8 * i))


cdef inline Py_ssize_t write_tick_value(uint8_t* out, const char* session, uint64_t sequence,
                                        const uint8_t* message, Py_ssize_t length) noexcept nogil:
    """Tick header and message at `out` (TICK_HEADER_SIZE + length bytes); returns the size."""
    memcpy(out, session, SESSION_LENGTH)
    store_le64(out + SESSION_LENGTH, sequence)
    memcpy(out + TICK_HEADER_SIZE, message, length)
    return TICK_HEADER_SIZE + length

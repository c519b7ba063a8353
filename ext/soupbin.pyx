# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""SoupBinTCP 4.1 sequenced data in bulk, both ways, without a Python step per message.

`gather_frame` (client): the consecutive sequenced-data ('S') packets at the front of a receive
buffer become ONE feed frame around one MoldUDP64 packet (`packet.wrap`'s layout), so one socket
read is one decode call. `sequenced_packets` (simulator): the uncompressed frames of the frame
store become one 'S' packet per message.

Both scan without the GIL, test every length before reading, use 64-bit sizes, and report a
problem as a code (soupbin_layout.PacketFault) and the offset of the packet that has it, raised
as PacketError once the GIL is held again.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from byteorder cimport load_be16, load_be32
from xxhash32 cimport xxh32
cimport frame_layout as W
cimport soupbin_layout as B

HEADER_SIZE = sizeof(B.SoupBinHeader)
LENGTH_FIELD_SIZE = sizeof((<B.SoupBinHeader*> NULL).packet_length)
SEQUENCED_DATA = B.SEQUENCED_DATA
MAX_MESSAGES_PER_PACKET = B.MAX_MESSAGES_PER_PACKET
# code -> (stable name, text)
PACKET_FAULTS = {
    B.PACKET_LENGTH_ZERO: ("length_zero", "packet length field of 0 (no packet type)"),
    B.PACKET_EMPTY_MESSAGE: ("empty_message", "sequenced data packet without a message"),
    B.FRAME_MALFORMED: ("frame_malformed", "store frame is not an uncompressed framed packet"),
}

cdef enum:
    _BLOCK_LENGTH_SIZE = 2            # MoldUDP64 message block: u16 length, then the message


class PacketError(ValueError):
    """A SoupBinTCP packet that breaks the protocol: `code` (stable name), `offset` (byte of the
    packet in the buffer given)."""

    def __init__(self, code: str, reason: str, offset: int):
        super().__init__(f"{reason} (at byte {offset})")
        self.code, self.reason, self.offset = code, reason, offset

    def __reduce__(self):
        return type(self), (self.code, self.reason, self.offset)


cdef inline void _store_be16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void _store_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void _store_be64(uint8_t* p, uint64_t v) noexcept nogil:
    _store_be32(p, <uint32_t>(v >> 32))
    _store_be32(p + 4, <uint32_t>v)


cdef object _error(B.PacketFault fault, Py_ssize_t offset):
    name, text = PACKET_FAULTS[fault]
    return PacketError(name, text, offset)


cdef B.PacketFault _scan_sequenced(const uint8_t* data, Py_ssize_t start, Py_ssize_t end,
                                   Py_ssize_t max_messages, Py_ssize_t max_block,
                                   Py_ssize_t* stop, Py_ssize_t* count,
                                   Py_ssize_t* block) noexcept nogil:
    """Count the whole 'S' packets from `start`: up to the first other packet, an incomplete
    one, `max_messages`, or a MoldUDP64 block of `max_block` bytes. `stop` is where it stopped
    (at the faulty packet on a fault)."""
    cdef Py_ssize_t at = start, length, n = 0, size = 0
    cdef Py_ssize_t header = sizeof(B.SoupBinHeader)
    cdef const B.SoupBinHeader* h
    while n < max_messages and end - at >= header:
        h = <const B.SoupBinHeader*> (data + at)
        length = load_be16(h.packet_length)
        if length == 0:
            stop[0], count[0], block[0] = at, n, size
            return B.PACKET_LENGTH_ZERO
        if <uint8_t> h.packet_type != B.SEQUENCED_DATA:
            break
        if length == 1:
            stop[0], count[0], block[0] = at, n, size
            return B.PACKET_EMPTY_MESSAGE
        # The message is length - 1 bytes (the type byte counts); its block adds a u16 length.
        if length - 1 > end - at - header:
            break
        if size + _BLOCK_LENGTH_SIZE + length - 1 > max_block:
            break
        size += _BLOCK_LENGTH_SIZE + length - 1
        at += header + length - 1
        n += 1
    stop[0], count[0], block[0] = at, n, size
    return B.PACKET_OK


cdef void _copy_sequenced(const uint8_t* data, Py_ssize_t start, Py_ssize_t count,
                          uint8_t* out) noexcept nogil:
    """The `count` 'S' packets from `start` (already checked) as MoldUDP64 message blocks."""
    cdef Py_ssize_t at = start, i, message
    cdef Py_ssize_t header = sizeof(B.SoupBinHeader)
    for i in range(count):
        message = load_be16((<const B.SoupBinHeader*> (data + at)).packet_length) - 1
        _store_be16(out, <uint16_t> message)
        memcpy(out + _BLOCK_LENGTH_SIZE, data + at + header, message)
        out += _BLOCK_LENGTH_SIZE + message
        at += header + message


def gather_frame(buffer, Py_ssize_t start, Py_ssize_t end, session, uint64_t first_sequence,
                 Py_ssize_t max_messages=B.MAX_MESSAGES_PER_PACKET):
    """(frame, messages, stop): the consecutive 'S' packets of buffer[start:end] as one feed
    frame (frame header, MoldUDP64 header with `session` and `first_sequence`, one message block
    per packet), or (None, 0, start) when the first packet is not a whole 'S' packet. `stop` is
    where the next packet begins. Raises PacketError for a length field of 0 or an empty 'S'
    packet that comes first; one after some messages ends the gathering there (stop points at
    it), so the next call raises it."""
    cdef Py_buffer view
    cdef Py_ssize_t stop = start, count = 0, size = 0, frame_size
    cdef B.PacketFault fault
    cdef uint8_t* out
    cdef W.FrameHeader* frame_header
    cdef W.PacketHeader* packet_header
    cdef Py_ssize_t max_block = W.MAX_PACKET_LENGTH - sizeof(W.PacketHeader)
    if len(session) != sizeof(packet_header.session):
        raise ValueError(f"session must be {sizeof(packet_header.session)} bytes")
    if not 1 <= max_messages <= B.MAX_MESSAGES_PER_PACKET:
        raise ValueError(f"max_messages must be 1..{B.MAX_MESSAGES_PER_PACKET}")
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        if not 0 <= start <= end <= view.len:
            raise ValueError(f"{start}..{end} is not inside the buffer's {view.len} bytes")
        with nogil:
            fault = _scan_sequenced(<const uint8_t*> view.buf, start, end, max_messages,
                                    max_block, &stop, &count, &size)
        if count == 0:
            if fault != B.PACKET_OK:
                raise _error(fault, stop)
            return None, 0, start
        frame_size = sizeof(W.FrameHeader) + sizeof(W.PacketHeader) + size
        frame = PyBytes_FromStringAndSize(NULL, frame_size)
        out = <uint8_t*> PyBytes_AS_STRING(frame)
        packet_header = <W.PacketHeader*> (out + sizeof(W.FrameHeader))
        memcpy(packet_header.session, PyBytes_AS_STRING(bytes(session)),
               sizeof(packet_header.session))
        with nogil:
            _store_be64(packet_header.sequence_number, first_sequence)
            _store_be16(packet_header.message_count, <uint16_t> count)
            _copy_sequenced(<const uint8_t*> view.buf, start, count,
                            out + sizeof(W.FrameHeader) + sizeof(W.PacketHeader))
            frame_header = <W.FrameHeader*> out
            _store_be32(frame_header.frame_length,
                        <uint32_t> (frame_size - sizeof(frame_header.frame_length)))
            frame_header.frame_type = W.FRAME_TYPE_SEQUENCED
            frame_header.version = W.FRAME_VERSION
            frame_header.codec = W.CODEC_NONE
            frame_header.flags = 0
            _store_be32(frame_header.uncompressed_length,
                        <uint32_t> (frame_size - sizeof(W.FrameHeader)))
            _store_be32(frame_header.checksum,
                        xxh32(<const uint8_t*> packet_header, frame_size - sizeof(W.FrameHeader),
                              0))
        return frame, count, stop
    finally:
        PyBuffer_Release(&view)


cdef B.PacketFault _measure_frames(const uint8_t* data, Py_ssize_t length, Py_ssize_t skip,
                                   Py_ssize_t* out_size, Py_ssize_t* messages,
                                   Py_ssize_t* where) noexcept nogil:
    """Check the frames of data[:length] (uncompressed, as framing wrote them) and size the
    'S' packets of their messages, the first `skip` messages left out."""
    cdef Py_ssize_t at = 0, frame_end, position, message, size = 0, n = 0, left = skip
    cdef const W.FrameHeader* frame_header
    cdef Py_ssize_t headers = sizeof(W.FrameHeader) + sizeof(W.PacketHeader)
    cdef Py_ssize_t count, i
    while at < length:
        where[0] = at
        if length - at < headers:
            return B.FRAME_MALFORMED
        frame_header = <const W.FrameHeader*> (data + at)
        frame_end = at + sizeof(frame_header.frame_length) + load_be32(frame_header.frame_length)
        if frame_end > length or frame_end < at + headers or frame_header.codec != W.CODEC_NONE:
            return B.FRAME_MALFORMED
        count = load_be16((<const W.PacketHeader*> (data + at + sizeof(W.FrameHeader)))
                          .message_count)
        position = at + headers
        for i in range(count):
            if frame_end - position < _BLOCK_LENGTH_SIZE:
                return B.FRAME_MALFORMED
            message = load_be16(data + position)
            # An 'S' packet's u16 length counts its type byte too.
            if message == 0 or message > 0xFFFE or message > frame_end - position - 2:
                return B.FRAME_MALFORMED
            if left > 0:
                left -= 1
            else:
                size += sizeof(B.SoupBinHeader) + message
                n += 1
            position += _BLOCK_LENGTH_SIZE + message
        if position != frame_end:
            return B.FRAME_MALFORMED
        at = frame_end
    out_size[0], messages[0] = size, n
    return B.PACKET_OK if left == 0 else B.FRAME_MALFORMED


cdef void _write_packets(const uint8_t* data, Py_ssize_t length, Py_ssize_t skip,
                         uint8_t* out) noexcept nogil:
    cdef Py_ssize_t at = 0, frame_end, position, message, left = skip, count, i
    cdef Py_ssize_t headers = sizeof(W.FrameHeader) + sizeof(W.PacketHeader)
    cdef B.SoupBinHeader* packet
    while at < length:
        frame_end = at + 4 + load_be32((<const W.FrameHeader*> (data + at)).frame_length)
        count = load_be16((<const W.PacketHeader*> (data + at + sizeof(W.FrameHeader)))
                          .message_count)
        position = at + headers
        for i in range(count):
            message = load_be16(data + position)
            if left > 0:
                left -= 1
            else:
                packet = <B.SoupBinHeader*> out
                _store_be16(packet.packet_length, <uint16_t> (message + 1))
                packet.packet_type = <char> B.SEQUENCED_DATA
                memcpy(out + sizeof(B.SoupBinHeader), data + position + _BLOCK_LENGTH_SIZE,
                       message)
                out += sizeof(B.SoupBinHeader) + message
            position += _BLOCK_LENGTH_SIZE + message
        at = frame_end


def sequenced_packets(frames, Py_ssize_t skip=0):
    """(packets, messages): one SoupBinTCP 'S' packet per message of `frames` (consecutive
    uncompressed frames, e.g. a FrameStore slice), leaving out the first `skip` messages (a
    login that resumes inside a frame). Raises PacketError (frame_malformed) for anything else."""
    cdef Py_buffer view
    cdef Py_ssize_t size = 0, messages = 0, where = 0
    cdef B.PacketFault fault
    cdef uint8_t* out
    if skip < 0:
        raise ValueError("skip must not be negative")
    PyObject_GetBuffer(frames, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            fault = _measure_frames(<const uint8_t*> view.buf, view.len, skip, &size,
                                    &messages, &where)
        if fault != B.PACKET_OK:
            raise _error(fault, where)
        packets = PyBytes_FromStringAndSize(NULL, size)
        out = <uint8_t*> PyBytes_AS_STRING(packets)
        with nogil:
            _write_packets(<const uint8_t*> view.buf, view.len, skip, out)
        return packets, messages
    finally:
        PyBuffer_Release(&view)

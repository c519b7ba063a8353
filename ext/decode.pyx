# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Decode feed frames and ITCH 5.0 message blocks into numpy structured arrays.

Every byte read is guarded by an explicit length test; all loops run without the GIL and report
problems as a fault code plus byte offset, turned into DecodeError or a quarantine entry only once
the GIL is held again. The wire layouts are documented in docs/protocol.md.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset

cimport numpy as cnp
import numpy as np
import re

from byteorder cimport load_be16, load_be32, load_be48, load_be64
from xxhash32 cimport xxh32
from lz4 cimport LZ4_decompress_safe
cimport itch_layout as L

from feedhandler.errors import DecodeError

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # Not declared in numpy's .pxd; steals a reference to descr.
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.dtype descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, PyObject* obj)

# ---- frame format (docs/protocol.md) ------------------------------------------------------------
cdef enum:
    _FRAME_HEADER_SIZE = 16
    _PACKET_HEADER_SIZE = 20
    _FRAME_TYPE_SEQUENCED = 0x53     # 'S'
    _FRAME_VERSION = 1
    _CODEC_NONE = 0
    _CODEC_LZ4 = 1
    # The largest legal MoldUDP64 packet is 20 + 65534 * (2 + 50) bytes (~3.4 MB); the caps bound
    # every allocation a hostile length field can ask for.
    _MAX_PACKET_LENGTH = 1 << 22
    _MAX_FRAME_LENGTH = 1 << 23
    _END_OF_SESSION_COUNT = 0xFFFF

cdef uint64_t _NANOSECONDS_PER_DAY = 86_400_000_000_000

FRAME_HEADER_SIZE = _FRAME_HEADER_SIZE
PACKET_HEADER_SIZE = _PACKET_HEADER_SIZE
FRAME_TYPE_SEQUENCED = _FRAME_TYPE_SEQUENCED
FRAME_VERSION = _FRAME_VERSION
CODEC_NONE = _CODEC_NONE
CODEC_LZ4 = _CODEC_LZ4
MAX_PACKET_LENGTH = _MAX_PACKET_LENGTH
MAX_FRAME_LENGTH = _MAX_FRAME_LENGTH
END_OF_SESSION_COUNT = _END_OF_SESSION_COUNT
NANOSECONDS_PER_DAY = _NANOSECONDS_PER_DAY

cdef enum:
    _MAX_SWAPS = 8
    _MAX_TYPES = 24     # the 23 ITCH 5.0 message types, rounded up
    _MAX_BODY = 40      # longest message body after the 11-byte header ('I': 50 - 11), rounded up
    _ROW_SLACK = 64     # bytes after each type's rows that the fixed-size copy may scribble on

cdef enum Fault:
    OK = 0
    FRAME_TOO_SHORT
    FRAME_LENGTH_MISMATCH
    FRAME_TOO_LARGE
    BAD_FRAME_TYPE
    BAD_VERSION
    BAD_CODEC
    BAD_FLAGS
    PACKET_TOO_LARGE
    LZ4_CORRUPT
    UNCOMPRESSED_LENGTH_MISMATCH
    CHECKSUM_MISMATCH
    PACKET_TOO_SHORT
    COUNT_MISMATCH
    MESSAGE_TRUNCATED
    EMPTY_MESSAGE
    UNKNOWN_TYPE
    BAD_MESSAGE_LENGTH
    TIMESTAMP_OUT_OF_DAY
    BAD_SIDE
    BAD_STOCK
    OUT_OF_MEMORY
    BUFFER_CHANGED

REASONS = (
    "ok",
    "frame shorter than its header",
    "frame length field disagrees with the bytes given",
    "declared frame length exceeds the limit",
    "unknown frame type",
    "unsupported frame format version",
    "unknown codec",
    "reserved flags are not zero",
    "declared uncompressed length exceeds the limit",
    "corrupt LZ4 data",
    "uncompressed length differs from the header",
    "checksum mismatch",
    "packet shorter than the MoldUDP64 header",
    "message count differs from the messages present",
    "message runs past the end of the data",
    "zero-length message",
    "unknown message type",
    "message length differs from the spec's length for its type",
    "timestamp is not within the day",
    "buy/sell indicator is not B or S",
    "stock symbol is not printable ASCII",
    "out of memory",
    "input buffer changed while it was being decoded",
)


# ---- message layouts, derived from the structs in itch_layout.pxd -------------------------------

cdef struct MessageSpec:
    uint16_t struct_size        # 0 marks an unknown type
    uint16_t wire_length
    uint8_t count32             # 4- and 8-byte integers after the timestamp, by struct offset
    uint8_t count64
    uint8_t offsets32[_MAX_SWAPS]
    uint8_t offsets64[_MAX_SWAPS]
    uint8_t side_offset         # 0: the type has no buy/sell indicator
    uint8_t stock_offset        # 0: the type has no stock field

cdef MessageSpec SPECS[256]
cdef list DESCRS = [None] * 256  # numpy dtype per type byte
cdef list KEYS = [None] * 256    # one-character str per type byte

cdef char _scratch[64]          # only gives the struct memoryviews below something to point at


def _struct_formats():
    """PEP 3118 format of each struct, as Cython derives it from the declarations."""
    cdef char* s = _scratch
    views = {
        "S": <L.SystemEvent[:1]> <L.SystemEvent*> s,
        "R": <L.StockDirectory[:1]> <L.StockDirectory*> s,
        "H": <L.StockTradingAction[:1]> <L.StockTradingAction*> s,
        "Y": <L.RegShoRestriction[:1]> <L.RegShoRestriction*> s,
        "L": <L.MarketParticipantPosition[:1]> <L.MarketParticipantPosition*> s,
        "V": <L.MwcbDeclineLevel[:1]> <L.MwcbDeclineLevel*> s,
        "W": <L.MwcbStatus[:1]> <L.MwcbStatus*> s,
        "K": <L.IpoQuotingPeriodUpdate[:1]> <L.IpoQuotingPeriodUpdate*> s,
        "J": <L.LuldAuctionCollar[:1]> <L.LuldAuctionCollar*> s,
        "h": <L.OperationalHalt[:1]> <L.OperationalHalt*> s,
        "A": <L.AddOrder[:1]> <L.AddOrder*> s,
        "F": <L.AddOrderMpid[:1]> <L.AddOrderMpid*> s,
        "E": <L.OrderExecuted[:1]> <L.OrderExecuted*> s,
        "C": <L.OrderExecutedWithPrice[:1]> <L.OrderExecutedWithPrice*> s,
        "X": <L.OrderCancel[:1]> <L.OrderCancel*> s,
        "D": <L.OrderDelete[:1]> <L.OrderDelete*> s,
        "U": <L.OrderReplace[:1]> <L.OrderReplace*> s,
        "P": <L.Trade[:1]> <L.Trade*> s,
        "Q": <L.CrossTrade[:1]> <L.CrossTrade*> s,
        "B": <L.BrokenTrade[:1]> <L.BrokenTrade*> s,
        "I": <L.NetOrderImbalance[:1]> <L.NetOrderImbalance*> s,
        "N": <L.RetailPriceImprovement[:1]> <L.RetailPriceImprovement*> s,
        "O": <L.DirectListingCapitalRaise[:1]> <L.DirectListingCapitalRaise*> s,
    }
    return {t: (memoryview(v).itemsize, memoryview(v).format) for t, v in views.items()}


_FIELD = re.compile(r"\^(?:\((\d+)\))?([cHIQ]):(\w+):")
_INTEGER_FORMATS = {"H": "u2", "I": "u4", "Q": "u8"}


def _dtype_from_format(fmt, itemsize):
    """numpy dtype for a packed struct's format; char arrays become fixed-width bytes."""
    names, formats, offsets = [], [], []
    offset = 0
    for count, code, name in _FIELD.findall(fmt):
        if code == "c":
            formats.append(f"S{count or 1}")
        else:
            formats.append(_INTEGER_FORMATS[code])
        names.append(name)
        offsets.append(offset)
        offset += np.dtype(formats[len(formats) - 1]).itemsize
    if offset != itemsize:
        raise ImportError(f"struct format {fmt!r} does not add up to its size {itemsize}")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


cdef void _install_spec(str key, object dtype) except *:
    cdef uint8_t t = ord(key)
    cdef MessageSpec* spec = &SPECS[t]
    if dtype.names[:4] != ("message_type", "stock_locate", "tracking_number", "timestamp") \
            or dtype.fields["timestamp"][1] != 5:
        raise ImportError(f"ITCH struct {key!r} must start with the common message header")
    spec.struct_size = dtype.itemsize
    spec.wire_length = dtype.itemsize - 2     # the 6-byte wire timestamp is 8 bytes in the struct
    spec.count32 = spec.count64 = 0
    for name in dtype.names[4:]:
        field, offset = dtype.fields[name][:2]
        if name == "buy_sell_indicator":
            spec.side_offset = offset
        elif name == "stock":
            spec.stock_offset = offset
        elif field == np.uint32:
            spec.offsets32[spec.count32] = offset
            spec.count32 += 1
        elif field == np.uint64:
            spec.offsets64[spec.count64] = offset
            spec.count64 += 1
        elif field.kind != "S":
            raise ImportError(f"ITCH struct {key!r}: no wire conversion for field {name!r}")
    DESCRS[t] = dtype
    KEYS[t] = key


DTYPES = {key: _dtype_from_format(fmt, size) for key, (size, fmt) in _struct_formats().items()}
for _key, _dtype in DTYPES.items():
    _install_spec(_key, _dtype)


# ---- the block walk ----------------------------------------------------------------------------

cdef struct FaultEntry:
    uint32_t offset             # where the message's length prefix starts
    uint32_t length             # raw bytes quarantined, from offset + 2 (or offset if truncated)
    uint32_t index              # position of the message in the block
    uint8_t code

cdef struct FaultLog:
    FaultEntry* entries
    size_t count
    size_t capacity

cdef struct BlockScan:
    # Per-type state is kept by slot (order of first appearance), not by type byte, so that a
    # frame's whole decode state stays around a kilobyte (decode_frames holds one per frame).
    uint32_t messages           # entries framed by a length prefix, good or bad
    uint8_t slot_of[256]        # 1 + slot of each type byte seen; 0: not seen
    uint32_t counts[_MAX_TYPES] # well-framed messages per slot
    uint8_t types_seen[_MAX_TYPES]
    uint8_t type_count


cdef int log_fault(FaultLog* log, Fault code, size_t offset, size_t length,
                   size_t index) noexcept nogil:
    cdef FaultEntry* grown
    if log.count == log.capacity:
        log.capacity = log.capacity * 2 + 8
        grown = <FaultEntry*> realloc(log.entries, log.capacity * sizeof(FaultEntry))
        if grown == NULL:
            return OUT_OF_MEMORY
        log.entries = grown
    log.entries[log.count] = FaultEntry(<uint32_t>offset, <uint32_t>length, <uint32_t>index, code)
    log.count += 1
    return OK


cdef inline Fault frame_fault(const uint8_t* block, size_t n, size_t pos) noexcept nogil:
    """Fault of the entry at pos judged by framing alone (length prefix, type, spec length)."""
    cdef size_t length
    if n - pos < 2:
        return MESSAGE_TRUNCATED
    length = load_be16(block + pos)
    if length > n - pos - 2:
        return MESSAGE_TRUNCATED
    if length == 0:
        return EMPTY_MESSAGE
    if SPECS[block[pos + 2]].struct_size == 0:
        return UNKNOWN_TYPE
    if length != SPECS[block[pos + 2]].wire_length:
        return BAD_MESSAGE_LENGTH
    return OK


cdef int scan_block(const uint8_t* block, size_t n, BlockScan* scan, FaultLog* log,
                    bint keep_going) noexcept nogil:
    """First pass: split the block and count messages per type, so pass two can fill
    exactly-sized arrays. Returns the first fault when not keep_going, else OK or
    MESSAGE_TRUNCATED (after which nothing can be framed)."""
    cdef size_t pos = 0
    cdef uint8_t t
    cdef int fault
    while pos < n:
        fault = frame_fault(block, n, pos)
        if fault == MESSAGE_TRUNCATED:
            if log_fault(log, MESSAGE_TRUNCATED, pos, n - pos, scan.messages):
                return OUT_OF_MEMORY
            return MESSAGE_TRUNCATED
        if fault:
            if log_fault(log, <Fault>fault, pos, load_be16(block + pos), scan.messages):
                return OUT_OF_MEMORY
            if not keep_going:
                return fault
        else:
            t = block[pos + 2]
            if scan.slot_of[t] == 0:
                scan.types_seen[scan.type_count] = t
                scan.type_count += 1
                scan.slot_of[t] = scan.type_count
            scan.counts[scan.slot_of[t] - 1] += 1
        scan.messages += 1
        pos += 2 + load_be16(block + pos)
    return OK


cdef inline bint has_unprintable(const uint8_t* p) noexcept nogil:
    """True if any of the 8 bytes at p is outside 0x20..0x7E (SWAR: all eight at once)."""
    cdef uint64_t x
    memcpy(&x, p, 8)
    return (((x - 0x2020202020202020ULL) & ~x) | (x + 0x0101010101010101ULL) | x) \
        & 0x8080808080808080ULL != 0


cdef inline Fault fill_message(const uint8_t* msg, size_t available, const MessageSpec* spec,
                               uint8_t* out) noexcept nogil:
    """Write one well-framed wire message into its struct, then check its field values.

    Away from the end of the input the body is copied with one fixed-size memcpy, which the
    compiler inlines; it may write past the struct, into the next row or the slack that
    decode_block leaves after each type's rows, both rewritten or unused afterwards."""
    cdef uint64_t timestamp = load_be48(msg + 5), v64
    cdef uint16_t locate = load_be16(msg + 1), tracking = load_be16(msg + 3)
    cdef uint32_t v32
    cdef uint8_t k
    out[0] = msg[0]
    memcpy(out + 1, &locate, 2)
    memcpy(out + 3, &tracking, 2)
    memcpy(out + 5, &timestamp, 8)
    if available >= 11 + _MAX_BODY:
        memcpy(out + 13, msg + 11, _MAX_BODY)
    else:
        memcpy(out + 13, msg + 11, spec.wire_length - 11)
    for k in range(spec.count32):
        v32 = load_be32(out + spec.offsets32[k])
        memcpy(out + spec.offsets32[k], &v32, 4)
    for k in range(spec.count64):
        v64 = load_be64(out + spec.offsets64[k])
        memcpy(out + spec.offsets64[k], &v64, 8)
    if timestamp >= _NANOSECONDS_PER_DAY:
        return TIMESTAMP_OUT_OF_DAY
    if spec.side_offset and out[spec.side_offset] != b'B' and out[spec.side_offset] != b'S':
        return BAD_SIDE
    if spec.stock_offset and has_unprintable(out + spec.stock_offset):
        return BAD_STOCK
    return OK


cdef int fill_block(const uint8_t* block, size_t n, uint64_t first_sequence,
                    const BlockScan* scan, uint8_t** rows, uint64_t** sequences,
                    uint32_t* filled, FaultLog* log, bint keep_going) noexcept nogil:
    """Second pass: fill the struct arrays sized by scan_block. A message that fails its field
    checks is logged and its slot reused, so `filled` may end below the scanned counts."""
    cdef size_t pos = 0, index = 0
    cdef uint8_t t, k
    cdef int fault
    cdef const MessageSpec* spec
    while pos < n:
        if frame_fault(block, n, pos) == OK:       # framing faults were logged by scan_block
            t = block[pos + 2]
            k = scan.slot_of[t]
            # A type pass one did not see, or more rows of it: the bytes changed under us.
            if k == 0 or filled[k - 1] >= scan.counts[k - 1]:
                return BUFFER_CHANGED
            k -= 1
            spec = &SPECS[t]
            fault = fill_message(block + pos + 2, n - pos - 2, spec,
                                 rows[k] + <size_t>filled[k] * spec.struct_size)
            if fault:
                if log_fault(log, <Fault>fault, pos, spec.wire_length, index):
                    return OUT_OF_MEMORY
                if not keep_going:
                    return fault
            else:
                sequences[k][filled[k]] = first_sequence + index
                filled[k] += 1
        elif n - pos < 2 or load_be16(block + pos) > n - pos - 2:
            break
        index += 1
        pos += 2 + load_be16(block + pos)
    return OK


# ---- one block, start to finish, without the GIL -------------------------------------------------

cdef struct BlockResult:
    BlockScan scan
    FaultLog log
    uint8_t* arena              # malloc'd: all sequence numbers, then each type's rows
    uint8_t* rows[_MAX_TYPES]   # by slot, like BlockScan.counts
    uint64_t* sequences[_MAX_TYPES]
    uint32_t filled[_MAX_TYPES]
    int fault                   # fatal: raised as DecodeError (or quarantines the packet)
    size_t fault_offset


cdef void decode_messages(const uint8_t* block, size_t n, uint64_t first_sequence,
                          long declared_count, bint keep_going, BlockResult* r) noexcept nogil:
    """Split, count, allocate and fill in one go, so a frame needs a single nogil section."""
    cdef int fault, framing_fault
    cdef size_t end, size, at
    cdef int i
    cdef uint8_t t
    memset(&r.scan, 0, sizeof(BlockScan))
    fault = scan_block(block, n, &r.scan, &r.log, keep_going)
    if fault == OUT_OF_MEMORY:
        r.fault = OUT_OF_MEMORY
        return
    # Strict mode reports the first fault in stream order: after a framing fault, pass two
    # still runs over the messages before it, which may hold an earlier field fault.
    framing_fault = fault if not keep_going else OK
    end = r.log.entries[0].offset if framing_fault else n
    if not framing_fault and declared_count >= 0 and r.scan.messages != (
            0 if declared_count == _END_OF_SESSION_COUNT else declared_count):
        r.fault = r.log.entries[0].code if r.log.count else COUNT_MISMATCH
        r.fault_offset = r.log.entries[0].offset if r.log.count else n
        return
    size = r.scan.messages * sizeof(uint64_t)
    for i in range(r.scan.type_count):
        t = r.scan.types_seen[i]
        size += <size_t>r.scan.counts[i] * SPECS[t].struct_size + _ROW_SLACK
    r.arena = <uint8_t*> malloc(size)
    if r.arena == NULL:
        r.fault = OUT_OF_MEMORY
        return
    at = 0
    for i in range(r.scan.type_count):
        r.sequences[i] = <uint64_t*> (r.arena + at)
        at += r.scan.counts[i] * sizeof(uint64_t)
    for i in range(r.scan.type_count):
        r.rows[i] = r.arena + at
        at += <size_t>r.scan.counts[i] * SPECS[r.scan.types_seen[i]].struct_size + _ROW_SLACK
    memset(r.filled, 0, sizeof(r.filled))
    fault = fill_block(block, end, first_sequence, &r.scan, r.rows, r.sequences, r.filled,
                       &r.log, keep_going)
    if fault == BUFFER_CHANGED:
        r.fault = fault
        r.fault_offset = 0
    elif fault == OUT_OF_MEMORY or (fault and not keep_going):
        r.fault = fault
        r.fault_offset = r.log.entries[r.log.count - 1].offset if r.log.count else 0
    elif framing_fault:
        r.fault = framing_fault
        r.fault_offset = r.log.entries[0].offset


# ---- turning the C results into Python objects -------------------------------------------------

cdef class _Buffer:
    """Holds a Py_buffer for the duration of a decode, so the bytes stay put while nogil."""
    cdef Py_buffer view

    def __cinit__(self, obj):
        PyObject_GetBuffer(obj, &self.view, PyBUF_SIMPLE)

    def __dealloc__(self):
        PyBuffer_Release(&self.view)


cdef class _Arena:
    """Owns a block's malloc'd arena; the arrays viewing it keep it alive."""
    cdef void* data

    def __dealloc__(self):
        free(self.data)


cdef UINT64 = np.dtype(np.uint64)


cdef object array_view(_Arena arena, object descr, void* data, cnp.npy_intp count):
    """A 1-d array of `count` records of dtype `descr` at `data`, inside and keeping `arena`."""
    Py_INCREF(descr)
    view = PyArray_NewFromDescr(<PyTypeObject*> np.ndarray, <cnp.dtype> descr, 1, &count,
                                NULL, data, cnp.NPY_ARRAY_WRITEABLE, NULL)
    cnp.set_array_base(view, arena)
    return view


cdef void init_result(BlockResult* r) noexcept nogil:
    r.log = FaultLog(NULL, 0, 0)
    r.arena = NULL
    r.fault = OK
    r.fault_offset = 0


cdef void release_result(BlockResult* r) noexcept nogil:
    free(r.log.entries)
    free(r.arena)


cdef tuple block_objects(BlockResult* r, const uint8_t* block, size_t block_offset,
                         uint64_t first_sequence, bint sequenced):
    """(messages, sequences, quarantined) of a decoded block; takes over r.arena."""
    cdef dict messages = {}, sequences = {}
    cdef list quarantined = []
    cdef _Arena arena = _Arena()
    cdef size_t i, start
    cdef FaultEntry* e
    cdef uint8_t t
    if r.fault == OUT_OF_MEMORY:
        raise MemoryError()
    if r.fault:
        raise DecodeError(REASONS[r.fault], block_offset + r.fault_offset)
    arena.data = r.arena
    r.arena = NULL
    for i in range(r.scan.type_count):
        t = r.scan.types_seen[i]
        if r.filled[i]:
            messages[KEYS[t]] = array_view(arena, DESCRS[t], r.rows[i], r.filled[i])
            sequences[KEYS[t]] = array_view(arena, UINT64, r.sequences[i], r.filled[i])
    for i in range(r.log.count):
        e = &r.log.entries[i]
        start = e.offset if e.code == MESSAGE_TRUNCATED else e.offset + 2
        quarantined.append((block_offset + e.offset, REASONS[e.code], block[start:start + e.length],
                            first_sequence + e.index if sequenced else None))
    quarantined.sort(key=lambda entry: entry[0])
    return messages, sequences, quarantined


def parse_messages(buf, *, bint quarantine=False):
    """ITCH messages in NASDAQ's binary file framing -> (messages, quarantined)."""
    cdef _Buffer held = _Buffer(buf)
    cdef const uint8_t* block = <const uint8_t*> held.view.buf
    cdef BlockResult r
    init_result(&r)
    try:
        with nogil:
            decode_messages(block, held.view.len, 0, -1, quarantine, &r)
        messages, sequences, quarantined = block_objects(&r, block, 0, 0, False)
        return messages, quarantined
    finally:
        release_result(&r)


cdef struct FrameHeader:
    uint8_t codec
    uint32_t packet_length
    uint32_t checksum


cdef Fault check_frame(const uint8_t* f, size_t n, FrameHeader* h, size_t* where) noexcept nogil:
    if n < 16:
        where[0] = 0
        return FRAME_TOO_SHORT
    where[0] = 0
    if load_be32(f) > _MAX_FRAME_LENGTH:
        return FRAME_TOO_LARGE
    if load_be32(f) != n - 4:
        return FRAME_LENGTH_MISMATCH
    where[0] = 4
    if f[4] != _FRAME_TYPE_SEQUENCED:
        return BAD_FRAME_TYPE
    where[0] = 5
    if f[5] != _FRAME_VERSION:
        return BAD_VERSION
    where[0] = 6
    h.codec = f[6]
    if h.codec != _CODEC_NONE and h.codec != _CODEC_LZ4:
        return BAD_CODEC
    where[0] = 7
    if f[7] != 0:
        return BAD_FLAGS
    where[0] = 8
    h.packet_length = load_be32(f + 8)
    h.checksum = load_be32(f + 12)
    if h.packet_length > _MAX_PACKET_LENGTH:
        return PACKET_TOO_LARGE
    if h.codec == _CODEC_NONE and h.packet_length != n - 16:
        return UNCOMPRESSED_LENGTH_MISMATCH
    if h.packet_length < 20 or n < 36:
        return PACKET_TOO_SHORT
    return OK


cdef Fault unpack_frame(const uint8_t* f, size_t n, uint8_t** packet, FrameHeader* h,
                        size_t* where) noexcept nogil:
    """Check the header, decompress if needed and verify the checksum. On success *packet
    points at the MoldUDP64 packet: into the frame for codec none, else a malloc'd copy.
    The packet's 20-byte header travels uncompressed, so only the message block is inflated."""
    cdef Fault fault = check_frame(f, n, h, where)
    cdef int got
    packet[0] = NULL
    if fault:
        return fault
    if h.codec == _CODEC_NONE:
        packet[0] = <uint8_t*> (f + 16)
    else:
        where[0] = 36
        packet[0] = <uint8_t*> malloc(h.packet_length)
        if packet[0] == NULL:
            return OUT_OF_MEMORY
        memcpy(packet[0], f + 16, 20)
        got = LZ4_decompress_safe(<const char*> (f + 36), <char*> (packet[0] + 20),
                                  <int> (n - 36), <int> (h.packet_length - 20))
        if got < 0:
            return LZ4_CORRUPT
        if <uint32_t> got != h.packet_length - 20:
            where[0] = 8
            return UNCOMPRESSED_LENGTH_MISMATCH
    where[0] = 12
    if xxh32(packet[0], h.packet_length, 0) != h.checksum:
        return CHECKSUM_MISMATCH
    return OK


cdef struct FrameDecode:
    FrameHeader header
    uint8_t* packet             # the MoldUDP64 packet: in the frame, or malloc'd if compressed
    Fault fault
    size_t where
    BlockResult r


cdef void init_frame(FrameDecode* d) noexcept nogil:
    d.header.codec = _CODEC_NONE
    d.packet = NULL
    d.fault = OK
    d.where = 0
    init_result(&d.r)


cdef void decode_frame_nogil(const uint8_t* f, size_t n, bint quarantine,
                             FrameDecode* d) noexcept nogil:
    d.fault = unpack_frame(f, n, &d.packet, &d.header, &d.where)
    if not d.fault:
        decode_messages(d.packet + 20, d.header.packet_length - 20, load_be64(d.packet + 10),
                        load_be16(d.packet + 18), quarantine, &d.r)


cdef void release_frame(FrameDecode* d) noexcept nogil:
    release_result(&d.r)
    if d.header.codec == _CODEC_LZ4:
        free(d.packet)


cdef tuple frame_objects(FrameDecode* d, object frame, bint quarantine):
    cdef uint64_t first_sequence
    if d.fault == OUT_OF_MEMORY:
        raise MemoryError()
    try:
        if d.fault:
            raise DecodeError(REASONS[d.fault], d.where)
        first_sequence = load_be64(d.packet + 10)
        return (d.packet[:10], first_sequence, load_be16(d.packet + 18),
                *block_objects(&d.r, d.packet + 20, 20, first_sequence, True))
    except DecodeError as error:
        if not quarantine:
            raise
        return (None, None, None, {}, {}, [(0, error.reason, bytes(frame), None)])


def decode_frame(frame, *, bint quarantine=False):
    """One whole frame -> (session, first_sequence, count, messages, sequences, quarantined).

    Frame-level offsets count from the start of the frame; message-level offsets from the start
    of the (decompressed) MoldUDP64 packet. With quarantine=True a frame whose header, checksum,
    compression or count is bad comes back as a single quarantine entry covering the frame."""
    cdef _Buffer held = _Buffer(frame)
    cdef FrameDecode d
    init_frame(&d)
    try:
        with nogil:
            decode_frame_nogil(<const uint8_t*> held.view.buf, held.view.len, quarantine, &d)
        return frame_objects(&d, frame, quarantine)
    finally:
        release_frame(&d)


def decode_frames(list frames, *, bint quarantine=False):
    """decode_frame for a list of frames, all in one nogil section: the GIL is taken and
    released once per list instead of once per frame. Strict mode raises the first fault."""
    cdef Py_ssize_t count = len(frames), acquired = 0, i
    cdef FrameDecode* decodes = <FrameDecode*> calloc(max(count, 1), sizeof(FrameDecode))
    cdef Py_buffer* views = <Py_buffer*> calloc(max(count, 1), sizeof(Py_buffer))
    try:
        if decodes == NULL or views == NULL:
            raise MemoryError()
        for i in range(count):
            init_frame(&decodes[i])
            PyObject_GetBuffer(frames[i], &views[i], PyBUF_SIMPLE)
            acquired += 1
        with nogil:
            for i in range(count):
                decode_frame_nogil(<const uint8_t*> views[i].buf, views[i].len, quarantine,
                                   &decodes[i])
        return [frame_objects(&decodes[i], frames[i], quarantine) for i in range(count)]
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        if decodes != NULL:
            for i in range(count):
                release_frame(&decodes[i])
        free(decodes)
        free(views)


def frame_checksum(buf):
    """XXH32 (seed 0) of a bytes-like object, as carried in the frame header."""
    cdef _Buffer held = _Buffer(buf)
    cdef uint32_t h
    with nogil:
        h = xxh32(<const uint8_t*> held.view.buf, held.view.len, 0)
    return h

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Decode feed frames and ITCH 5.0 message blocks into numpy structured arrays.

Every byte read is guarded by an explicit length test; all loops run without the GIL and report
problems as a fault code (faults.h) plus a 64-bit byte offset, turned into DecodeError or a
quarantine entry only once the GIL is held again. The wire layouts are declared once, as packed
structs, in frame_layout.pxd and itch_layout.pxd, and documented in docs/protocol.md.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport UINT64_MAX, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset

cimport numpy as cnp
import numpy as np
import re
from collections import namedtuple

from byteorder cimport load_be16, load_be32, load_be48, load_be64
from xxhash32 cimport xxh32
from lz4 cimport LZ4_decompress_safe
cimport faults as F
cimport frame_layout as W
cimport itch_layout as L
from tick_order cimport LOCATE_OFFSET, MAX_TYPES

cdef extern from "shuffle_convert.h" nogil:
    enum:
        SHUFFLE_MASKS
        SHUFFLE_READ
        SHUFFLE_WRITE
        PERMUTE_READ
        PERMUTE_WRITE
        PERMUTE_TIMESTAMP_LANE
    const uint8_t SHUFFLE_WINDOW_AT[5]
    const uint8_t SHUFFLE_MASK_WINDOW[SHUFFLE_MASKS]
    const uint8_t SHUFFLE_MASK_PIECE[SHUFFLE_MASKS]
    void shuffle_convert(const uint8_t* msg, const uint8_t* masks, uint8_t* out)
    int shuffle_convert_supported()
    ctypedef struct PermuteSpec:
        uint8_t index[64]
        uint64_t keep
        uint64_t stock
        uint64_t side
        uint32_t expected_length
        uint32_t struct_size
    uint32_t permute_convert(const uint8_t* msg, const PermuteSpec* spec,
                             uint64_t timestamp_limit, uint8_t* out)
    ctypedef struct SlotCursor:
        uint8_t* row
        uint64_t* sequences_end
        size_t left
    size_t permute_fill(const uint8_t* block, size_t* position, size_t limit, size_t end,
                        const PermuteSpec* specs, const uint8_t* slot_of, SlotCursor* at,
                        uint64_t sequence, int numbered, uint64_t timestamp_limit)
    int permute_convert_supported()

from feedhandler.errors import DecodeError, Quarantined

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # Not declared in numpy's .pxd; steals a reference to descr.
    object PyArray_NewFromDescr(PyTypeObject* subtype, cnp.dtype descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, PyObject* obj)


# ---- layouts, derived from the packed structs ---------------------------------------------------

cdef char _scratch[64]          # only gives the struct memoryviews below something to point at


def _struct_formats():
    """PEP 3118 format of each ITCH struct, as Cython derives it from the declarations."""
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


def _header_formats():
    """PEP 3118 format of the frame and packet header structs (frame_layout.pxd)."""
    cdef char* s = _scratch
    views = {"frame": <W.FrameHeader[:1]> <W.FrameHeader*> s,
             "packet": <W.PacketHeader[:1]> <W.PacketHeader*> s}
    return {name: (memoryview(v).itemsize, memoryview(v).format) for name, v in views.items()}


_FIELD = re.compile(r"\^(?:\((\d+)\))?([cBHIQ]):(\w+):")
_CODE_SIZES = {"c": 1, "B": 1, "H": 2, "I": 4, "Q": 8}


def _packed_fields(fmt, itemsize):
    """(name, offset, count, code) of each field of a packed struct, from its PEP 3118 format."""
    fields, offset = [], 0
    for count, code, name in _FIELD.findall(fmt):
        count = int(count or 1)
        fields.append((name, offset, count, code))
        offset += count * _CODE_SIZES[code]
    if offset != itemsize:
        raise ImportError(f"struct format {fmt!r} does not add up to its size {itemsize}")
    return fields


_INTEGER_DTYPES = {"H": "u2", "I": "u4", "Q": "u8"}


def _dtype_from_format(fmt, itemsize):
    """numpy dtype for a packed ITCH struct; char arrays become fixed-width bytes."""
    names, formats, offsets = [], [], []
    for name, offset, count, code in _packed_fields(fmt, itemsize):
        names.append(name)
        formats.append(f"S{count}" if code == "c" else _INTEGER_DTYPES[code])
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


HeaderField = namedtuple("HeaderField", "name offset size format")
HeaderField.__doc__ = "A field of a wire header: its `struct` format reads it as on the wire."

_BIG_ENDIAN_INTEGERS = {2: "H", 4: "I", 8: "Q"}


def _header_fields(fmt, itemsize):
    """name -> HeaderField of a header struct, in wire order. Byte arrays are big-endian
    integers (frame_layout.pxd declares them so), char arrays text, single bytes integers."""
    fields = {}
    for name, offset, count, code in _packed_fields(fmt, itemsize):
        if code == "c":
            format = f"{count}s"
        elif count == 1:
            format = "B"
        else:
            format = _BIG_ENDIAN_INTEGERS[count]
        fields[name] = HeaderField(name, offset, count, format)
    return fields


FRAME_HEADER_FIELDS, PACKET_HEADER_FIELDS = (_header_fields(fmt, itemsize) for itemsize, fmt in
                                             _header_formats().values())
FRAME_HEADER_FORMAT = ">" + "".join(f.format for f in FRAME_HEADER_FIELDS.values())
PACKET_HEADER_FORMAT = ">" + "".join(f.format for f in PACKET_HEADER_FIELDS.values())


def _header_offsets():
    """Field offsets as the C compiler lays the header structs out, for the layout tests:
    over bytes 1, 2, 3, ... each field reads back its own offset + 1 as its first byte."""
    cdef uint8_t probe[64]
    cdef size_t i
    for i in range(64):
        probe[i] = <uint8_t> (i + 1)
    probe[sizeof(W.FrameHeader)] = 0    # byte arrays convert up to a NUL: stop at the struct end
    frame = (<W.FrameHeader*> probe)[0]
    probe[sizeof(W.FrameHeader)] = sizeof(W.FrameHeader) + 1
    probe[sizeof(W.PacketHeader)] = 0
    packet = (<W.PacketHeader*> probe)[0]
    first_byte = lambda value: value[0] if isinstance(value, bytes) else value
    return {"frame": {name: first_byte(value) - 1 for name, value in frame.items()},
            "packet": {name: first_byte(value) - 1 for name, value in packet.items()}}


FRAME_HEADER_SIZE = sizeof(W.FrameHeader)
PACKET_HEADER_SIZE = sizeof(W.PacketHeader)
FRAME_TYPE_SEQUENCED = W.FRAME_TYPE_SEQUENCED
FRAME_VERSION = W.FRAME_VERSION
CODEC_NONE = W.CODEC_NONE
CODEC_LZ4 = W.CODEC_LZ4
HEARTBEAT_COUNT = W.HEARTBEAT_COUNT
END_OF_SESSION_COUNT = W.END_OF_SESSION_COUNT
MAX_PACKET_LENGTH = W.MAX_PACKET_LENGTH
MAX_FRAME_LENGTH = W.MAX_FRAME_LENGTH

cdef uint64_t _NANOSECONDS_PER_DAY = 86_400_000_000_000
NANOSECONDS_PER_DAY = _NANOSECONDS_PER_DAY


# ---- fault codes, from the one table in faults.h ------------------------------------------------

cdef list _FAULT_CODES = [F.NAMES[i].decode().lower() for i in range(<int> F.COUNT)]
cdef list _FAULT_REASONS = [F.TEXTS[i].decode() for i in range(<int> F.COUNT)]

FAULTS = dict(zip(_FAULT_CODES[1:], _FAULT_REASONS[1:]))
"""Stable code -> reason of every fault the decoder reports (`ok` excluded), in code order."""


cdef object fault_error(int fault, uint64_t offset):
    """The exception for a fault: MemoryError, or DecodeError with its code, reason and offset."""
    if fault == F.OUT_OF_MEMORY:
        return MemoryError()
    return DecodeError(_FAULT_REASONS[fault], offset, _FAULT_CODES[fault])


# ---- message layouts, derived from the structs in itch_layout.pxd -------------------------------

cdef enum:
    _MAX_SWAPS32 = 5    # most 4-byte integers after the timestamp in one type ('O')
    _MAX_SWAPS64 = 3    # most 8-byte integers ('V')
    _MAX_BODY = 40      # longest message body after the wire header ('I': 50 - 11), rounded up
    _ROW_SLACK = 64     # bytes after each type's rows that the fixed-size writes may scribble on
    # Bytes any conversion may read at a message (convert_message: the wire header and a
    # fixed-size body, 11 + _MAX_BODY; shuffle_convert: SHUFFLE_READ; permute_convert:
    # PERMUTE_READ, the most; checked at import). Messages nearer the end of the input are
    # staged through a buffer of this size first.
    _MESSAGE_WINDOW = PERMUTE_READ
    _NO_LENGTH = 0x10000                # expected length of an unknown type: no u16 equals it

cdef struct MessageSpec:
    # Conversion is the same fixed sequence of steps for every type (no branch depends on the
    # type, which is unpredictable in a feed). With AVX-512 VBMI (permute_convert): one byte
    # permute with the type's index, the field checks in the same registers. With SSSE3
    # (shuffle_convert): seven byte shuffles with the type's masks. In portable C
    # (convert_message): copy the body, byte-swap
    # exactly _MAX_SWAPS32 and _MAX_SWAPS64 integers, write the header; a type with fewer
    # integers repeats harmless swaps aimed at the row's first bytes, which the header
    # overwrites afterwards. Swaps read the wire bytes (a body field's wire offset is its
    # struct offset - 2), not the row just written: a load straddling two stores of the copy
    # cannot be store-forwarded.
    uint16_t struct_size        # 0 marks an unknown type
    uint16_t wire_length
    uint32_t expected_length    # wire_length, or _NO_LENGTH: one compare checks the framing
    uint8_t count32             # 4- and 8-byte integers after the timestamp (real swaps)
    uint8_t count64
    uint8_t wire32[_MAX_SWAPS32]    # wire offset of each, then dummies (0)
    uint8_t row32[_MAX_SWAPS32]     # struct offset of each, then dummies (0)
    uint8_t wire64[_MAX_SWAPS64]
    uint8_t row64[_MAX_SWAPS64]
    uint8_t side_wire           # wire offset of the buy/sell indicator (0: none, then unchecked)
    uint8_t stock_wire          # wire offset of the stock field (0: none, then unchecked)
    uint8_t checks_side         # 1 if the type has a buy/sell indicator, else 0
    uint8_t checks_stock        # 1 if the type has a stock field, else 0
    uint8_t shuffles[SHUFFLE_MASKS * 16]    # the type's masks for shuffle_convert
    const PermuteSpec* permute              # the type's tables for permute_convert: PERMUTES[t]

cdef MessageSpec SPECS[256]
cdef PermuteSpec PERMUTES[256]   # by type byte; apart from SPECS, so permute_fill can read them
cdef list DESCRS = [None] * 256  # numpy dtype per type byte
cdef list KEYS = [None] * 256    # one-character str per type byte


def _message_header():
    """(name, offset) of each field of itch_layout.pxd's MessageHeader."""
    cdef char* s = _scratch
    view = memoryview(<L.MessageHeader[:1]> <L.MessageHeader*> s)
    return [field[:2] for field in _packed_fields(view.format, view.itemsize)]


cdef void _install_spec(str key, object dtype, list header) except *:
    cdef uint8_t t = ord(key)
    cdef MessageSpec* spec = &SPECS[t]
    cdef PermuteSpec* permute = &PERMUTES[t]
    if [(name, dtype.fields[name][1]) for name in dtype.names[:len(header)]] != header:
        raise ImportError(f"ITCH struct {key!r} must start with the common message header")
    spec.struct_size = dtype.itemsize
    # The wire header is shorter than the decoded one only by the timestamp's 6 bytes against 8.
    spec.wire_length = dtype.itemsize - (sizeof(L.MessageHeader) - sizeof(L.WireMessageHeader))
    if spec.wire_length - sizeof(L.WireMessageHeader) > _MAX_BODY:
        raise ImportError(f"ITCH struct {key!r}: body longer than _MAX_BODY")
    if spec.wire_length > 0xFF:
        raise ImportError(f"ITCH struct {key!r}: pass one steps by the length's low byte alone")
    spec.expected_length = spec.wire_length
    spec.count32 = spec.count64 = 0
    for name in dtype.names[len(header):]:
        field, offset = dtype.fields[name][:2]
        wire_offset = offset - (sizeof(L.MessageHeader) - sizeof(L.WireMessageHeader))
        if name == "buy_sell_indicator":
            spec.side_wire, spec.checks_side = wire_offset, 1
        elif name == "stock":
            spec.stock_wire, spec.checks_stock = wire_offset, 1
        elif field == np.uint32 and spec.count32 < _MAX_SWAPS32:
            spec.wire32[spec.count32], spec.row32[spec.count32] = wire_offset, offset
            spec.count32 += 1
        elif field == np.uint64 and spec.count64 < _MAX_SWAPS64:
            spec.wire64[spec.count64], spec.row64[spec.count64] = wire_offset, offset
            spec.count64 += 1
        elif field.kind != "S":
            raise ImportError(f"ITCH struct {key!r}: no wire conversion for field {name!r} "
                              "(or more integers than _MAX_SWAPS32/_MAX_SWAPS64)")
    for i, mask_byte in enumerate(_shuffle_masks(key, dtype)):
        spec.shuffles[i] = mask_byte
    spec.permute = permute
    index, permute.keep, permute.stock, permute.side = _permute_tables(key, dtype)
    for i, index_byte in enumerate(index):
        permute.index[i] = index_byte
    permute.expected_length, permute.struct_size = spec.expected_length, spec.struct_size
    DESCRS[t] = dtype
    KEYS[t] = key


def _byte_sources(dtype) -> list:
    """Wire byte of each struct byte of a message type (None: a zero, the timestamp's top
    bytes): integers reversed (big- to little-endian), text as is."""
    cdef char* s = _scratch
    wire_view = memoryview(<L.WireMessageHeader[:1]> <L.WireMessageHeader*> s)
    wire_header = {name: (offset, count * _CODE_SIZES[code]) for name, offset, count, code in
                   _packed_fields(wire_view.format, wire_view.itemsize)}
    widening = sizeof(L.MessageHeader) - sizeof(L.WireMessageHeader)
    sources = [None] * dtype.itemsize
    for name in dtype.names:
        field, offset = dtype.fields[name][:2]
        wire, width = wire_header.get(name, (offset - widening, field.itemsize))
        for i in range(field.itemsize):
            if field.kind != "u":
                sources[offset + i] = wire + i
            elif i < width:
                sources[offset + i] = wire + width - 1 - i
    return sources


def _shuffle_masks(key, dtype) -> bytes:
    """shuffle_convert's masks for a message type: mask byte = position of the wanted wire
    byte in the mask's window, or 0x80 (a zero) where another mask supplies it or nothing
    does (the timestamp's top bytes, past the struct)."""
    masks = bytearray([0x80] * (SHUFFLE_MASKS * 16))
    for j, source in enumerate(_byte_sources(dtype)):
        if source is None:
            continue
        for k in range(SHUFFLE_MASKS):
            window = SHUFFLE_WINDOW_AT[SHUFFLE_MASK_WINDOW[k]]
            if SHUFFLE_MASK_PIECE[k] == j // 16 and window <= source < window + 16:
                masks[k * 16 + j % 16] = source - window
                break
        else:
            raise ImportError(f"ITCH struct {key!r}: byte {j} is out of the shuffle windows")
    return bytes(masks)


def _field_bits(dtype, name) -> int:
    """Bit j set for each byte j of the field `name` in the struct (0 if the type has none)."""
    if name not in dtype.names:
        return 0
    field, offset = dtype.fields[name][:2]
    return ((1 << field.itemsize) - 1) << offset


def _permute_tables(key, dtype) -> tuple:
    """permute_convert's (index, keep, stock, side) for a message type: the wire byte of each
    of the 64 vector bytes (the struct, then the timestamp's copy in lane
    PERMUTE_TIMESTAMP_LANE), which of them come from the wire (the rest are zeros), and which
    hold the stock and the buy/sell indicator."""
    lane = 8 * PERMUTE_TIMESTAMP_LANE
    if dtype.itemsize > lane:
        raise ImportError(f"ITCH struct {key!r} reaches the timestamp copy's lane")
    timestamp = dtype.fields["timestamp"][1]
    sources = _byte_sources(dtype) + [None] * (64 - dtype.itemsize)
    sources[lane:lane + 8] = sources[timestamp:timestamp + 8]
    if any(source is not None and source >= PERMUTE_READ for source in sources):
        raise ImportError(f"ITCH struct {key!r} reads past PERMUTE_READ")
    return (bytes(source or 0 for source in sources),
            sum(1 << j for j, source in enumerate(sources) if source is not None),
            _field_bits(dtype, "stock"), _field_bits(dtype, "buy_sell_indicator"))


if max(SHUFFLE_WRITE, PERMUTE_WRITE) > _ROW_SLACK or max(
        11 + _MAX_BODY, SHUFFLE_READ, PERMUTE_READ) > _MESSAGE_WINDOW:
    raise ImportError("shuffle_convert.h and decode.pyx disagree on the bytes read or written")
for _type in range(256):
    SPECS[_type].expected_length = PERMUTES[_type].expected_length = _NO_LENGTH
DTYPES = {key: _dtype_from_format(fmt, size) for key, (size, fmt) in _struct_formats().items()}
for _key, _dtype in DTYPES.items():
    _install_spec(_key, _dtype, _message_header())


cdef enum Conversion:
    PORTABLE_CONVERSION
    SHUFFLE_CONVERSION
    PERMUTE_CONVERSION

# name -> (conversion, whether this CPU can run it, what it needs), fastest first
cdef dict _CONVERSIONS = {
    "permute": (PERMUTE_CONVERSION, permute_convert_supported(), "AVX-512 VBMI"),
    "shuffle": (SHUFFLE_CONVERSION, shuffle_convert_supported(), "SSSE3"),
    "portable": (PORTABLE_CONVERSION, True, ""),
}
cdef Conversion conversion = next(c for c, supported, _ in _CONVERSIONS.values() if supported)


def _conversion(str name=None) -> str:
    """The message conversion in use: "permute" (AVX-512 VBMI), "shuffle" (SSSE3) or
    "portable", the fastest the CPU runs chosen at import; with a name, switch to it first
    (the tests run each one this CPU has)."""
    global conversion
    if name is not None:
        if name not in _CONVERSIONS:
            raise ValueError(f"no conversion {name!r}")
        chosen, supported, needs = _CONVERSIONS[name]
        if not supported:
            raise ValueError(f"this CPU has no {needs}")
        conversion = chosen
    return next(name for name, (c, _, _) in _CONVERSIONS.items() if c == conversion)


# ---- the block walk ----------------------------------------------------------------------------
#
# Positions inside a block are size_t, and every offset that leaves the walk is a uint64 counted
# from where the caller's bytes start (FaultLog.base + position), so nothing wraps past 4 GiB.

cdef struct FaultEntry:
    uint64_t offset             # where the message's length prefix starts, from FaultLog.base
    uint64_t length             # raw bytes quarantined, from offset + 2 (or offset if truncated)
    uint64_t index              # position of the message in the block
    F.Fault code

cdef struct FaultLog:
    FaultEntry* entries
    size_t count
    size_t capacity
    uint64_t base               # offset of the block's first byte in what the caller sees

cdef struct BlockScan:
    # Per-type state is kept by slot (order of first appearance), not by type byte, so that a
    # frame's whole decode state stays around two kilobytes (decode_frames holds one per frame).
    size_t messages             # entries framed by a length prefix, good or bad
    uint8_t slot_of[256]        # 1 + slot of each type byte seen; 0: not seen
    size_t counts[MAX_TYPES]   # well-framed messages per slot

cdef struct BlockArrays:
    # A decoded block's rows: one malloc'd arena holding all sequence numbers, then each type's
    # rows. Once the GIL is held an _Arena takes the memory over (take_arena); a Packet keeps
    # these pointers until its arrays are first asked for, and the arrays then view the arena.
    uint8_t* arena
    size_t type_count
    uint8_t types[MAX_TYPES]   # type byte by slot
    uint8_t* rows[MAX_TYPES]
    uint64_t* sequences[MAX_TYPES]
    size_t filled[MAX_TYPES]   # good rows by slot (field faults leave it below the count)


cdef int log_fault(FaultLog* log, F.Fault code, size_t position, size_t length,
                   size_t index) noexcept nogil:
    cdef FaultEntry* grown
    if log.count == log.capacity:
        log.capacity = log.capacity * 2 + 8
        grown = <FaultEntry*> realloc(log.entries, log.capacity * sizeof(FaultEntry))
        if grown == NULL:
            return F.OUT_OF_MEMORY
        log.entries = grown
    log.entries[log.count] = FaultEntry(log.base + position, length, index, code)
    log.count += 1
    return F.OK


cdef inline F.Fault frame_fault(const uint8_t* block, size_t n, size_t pos) noexcept nogil:
    """Fault of the entry at pos judged by framing alone (length prefix, type, spec length)."""
    cdef size_t length
    if n - pos < 2:
        return F.MESSAGE_TRUNCATED
    length = load_be16(block + pos)
    if length > n - pos - 2:
        return F.MESSAGE_TRUNCATED
    if length == 0:
        return F.EMPTY_MESSAGE
    if SPECS[block[pos + 2]].struct_size == 0:
        return F.UNKNOWN_TYPE
    if length != SPECS[block[pos + 2]].wire_length:
        return F.BAD_MESSAGE_LENGTH
    return F.OK


cdef uint8_t new_slot(BlockScan* scan, BlockArrays* arrays, uint8_t t) noexcept nogil:
    """1 + the slot of a type seen for the first time (slots go by first appearance)."""
    arrays.types[arrays.type_count] = t
    arrays.type_count += 1
    scan.slot_of[t] = <uint8_t> arrays.type_count
    return scan.slot_of[t]


cdef inline size_t count_well_framed(const uint8_t* block, size_t n, size_t pos,
                                     BlockScan* scan, BlockArrays* arrays) noexcept nogil:
    """Count the run of well-framed messages at pos (a known type at its length, inside the
    block: what frame_fault calls OK, in one test) and return where it ends. Position and
    tally stay in locals: the walk is one chain of dependent loads, nothing else may lengthen
    it. So the next position comes from the length's low byte alone (one byte load and an
    add; every spec length is below 256, so its high byte is 0 once the test has passed),
    and the test of the whole length runs beside the chain."""
    cdef size_t length, counted = 0
    cdef uint8_t t, slot
    while n - pos >= 3:
        length = load_be16(block + pos)
        t = block[pos + 2]
        if length != SPECS[t].expected_length or length > n - pos - 2:
            break
        slot = scan.slot_of[t]
        if slot == 0:
            slot = new_slot(scan, arrays, t)
        scan.counts[slot - 1] += 1
        counted += 1
        pos += 2 + block[pos + 1]
    scan.messages += counted
    return pos


cdef int scan_block(const uint8_t* block, size_t n, BlockScan* scan, BlockArrays* arrays,
                    FaultLog* log, bint keep_going) noexcept nogil:
    """First pass: split the block and count messages per type (slots in `arrays.types`), so
    pass two can fill exactly-sized arrays. Returns the first fault when not keep_going, else
    OK or MESSAGE_TRUNCATED (after which nothing can be framed)."""
    cdef size_t pos = 0
    cdef int fault
    while True:
        pos = count_well_framed(block, n, pos, scan, arrays)
        if pos == n:
            return F.OK
        fault = frame_fault(block, n, pos)
        if fault == F.MESSAGE_TRUNCATED:
            if log_fault(log, F.MESSAGE_TRUNCATED, pos, n - pos, scan.messages):
                return F.OUT_OF_MEMORY
            return F.MESSAGE_TRUNCATED
        if log_fault(log, <F.Fault>fault, pos, load_be16(block + pos), scan.messages):
            return F.OUT_OF_MEMORY
        if not keep_going:
            return fault
        scan.messages += 1
        pos += 2 + load_be16(block + pos)


cdef inline bint has_unprintable(const uint8_t* p) noexcept nogil:
    """True if any of the 8 bytes at p is outside 0x20..0x7E (SWAR: all eight at once)."""
    cdef uint64_t x
    memcpy(&x, p, 8)
    return (((x - 0x2020202020202020ULL) & ~x) | (x + 0x0101010101010101ULL) | x) \
        & 0x8080808080808080ULL != 0


cdef inline void convert_message(const uint8_t* msg, const MessageSpec* spec,
                                 uint8_t* out) noexcept nogil:
    """Write one well-framed wire message into its struct at `out`: the same steps for every
    type (see MessageSpec), in portable C. Reads 11 + _MAX_BODY bytes at msg and writes up to
    sizeof(MessageHeader) + _MAX_BODY bytes at out: past a short struct, into the next row or
    the slack that decode_messages leaves after each type's rows, both rewritten or unused
    afterwards. (shuffle_convert does the same with SSSE3 where the CPU has it.)"""
    cdef const L.WireMessageHeader* wire = <const L.WireMessageHeader*> msg
    cdef L.MessageHeader* header = <L.MessageHeader*> out
    cdef uint64_t v64
    cdef uint32_t v32
    cdef int k
    memcpy(out + sizeof(L.MessageHeader), msg + sizeof(L.WireMessageHeader), _MAX_BODY)
    for k in range(_MAX_SWAPS32):
        v32 = load_be32(msg + spec.wire32[k])
        memcpy(out + spec.row32[k], &v32, 4)
    for k in range(_MAX_SWAPS64):
        v64 = load_be64(msg + spec.wire64[k])
        memcpy(out + spec.row64[k], &v64, 8)
    header.message_type = wire.message_type
    header.stock_locate = load_be16(wire.stock_locate)
    header.tracking_number = load_be16(wire.tracking_number)
    header.timestamp = load_be48(wire.timestamp)


cdef inline uint32_t suspect_fields(const uint8_t* msg, const MessageSpec* spec) noexcept nogil:
    """Nonzero if a field check fails (field_fault says which). Bitwise, not short-circuit:
    one well-predicted branch for the caller instead of three."""
    cdef uint64_t timestamp = load_be48((<const L.WireMessageHeader*> msg).timestamp)
    cdef uint8_t side = msg[spec.side_wire]
    return (<uint32_t> (timestamp >= _NANOSECONDS_PER_DAY)
            | (spec.checks_side & <uint32_t> (side != b'B') & <uint32_t> (side != b'S'))
            | (spec.checks_stock & <uint32_t> has_unprintable(msg + spec.stock_wire)))


cdef F.Fault field_fault(const uint8_t* msg, const MessageSpec* spec) noexcept nogil:
    """The first failed field check of a message, in the order the docs list them."""
    if load_be48((<const L.WireMessageHeader*> msg).timestamp) >= _NANOSECONDS_PER_DAY:
        return F.TIMESTAMP_OUT_OF_DAY
    if spec.checks_side and msg[spec.side_wire] != b'B' and msg[spec.side_wire] != b'S':
        return F.BAD_SIDE
    if spec.checks_stock and has_unprintable(msg + spec.stock_wire):
        return F.BAD_STOCK
    return F.OK


cdef int fill_segment(const uint8_t* block, size_t n, size_t* position, size_t limit,
                      size_t* index, uint64_t first_sequence, bint numbered,
                      const BlockScan* scan, SlotCursor* at, FaultLog* log,
                      bint keep_going) noexcept nogil:
    """Fill the rows of the messages in [*position, limit), which pass one found well framed
    end to end. They are checked again only as far as memory safety needs, since the caller's
    bytes may have changed since: anything but the same tiling of known types within the
    counts of pass one is BUFFER_CHANGED. `n` is where the caller's bytes end. With the
    permute conversion, permute_fill (shuffle_convert.h) takes the run of messages that need
    nothing else (framed as counted, far enough from `n`, their fields good) in one C loop,
    and the loop here each one it stops at: the same steps, one message at a time."""
    cdef size_t pos = position[0], message = index[0], length   # locals: kept in registers
    cdef uint8_t t, k
    cdef int fault
    cdef uint32_t suspect
    cdef const MessageSpec* spec
    cdef const uint8_t* msg
    cdef uint8_t staged[_MESSAGE_WINDOW]
    cdef Conversion chosen = conversion
    while pos < limit:
        if chosen == PERMUTE_CONVERSION:    # the ordinary messages, up to one that is not
            message += permute_fill(block, &pos, limit, n, PERMUTES, scan.slot_of, at,
                                    first_sequence + message, numbered, _NANOSECONDS_PER_DAY)
            if pos >= limit:
                break
        if limit - pos < 3:
            return F.BUFFER_CHANGED
        length = load_be16(block + pos)
        t = block[pos + 2]
        spec = &SPECS[t]
        k = scan.slot_of[t]
        if length != spec.expected_length or length > limit - pos - 2 or k == 0 \
                or at[k - 1].left == 0:
            return F.BUFFER_CHANGED
        k -= 1
        msg = block + pos + 2
        if n - pos - 2 < _MESSAGE_WINDOW:      # near the end: never read past the caller's bytes
            memset(staged, 0, _MESSAGE_WINDOW)
            memcpy(staged, msg, length)
            msg = staged
        if chosen == PERMUTE_CONVERSION:
            suspect = permute_convert(msg, spec.permute, _NANOSECONDS_PER_DAY, at[k].row)
        elif chosen == SHUFFLE_CONVERSION:
            shuffle_convert(msg, spec.shuffles, at[k].row)
            suspect = suspect_fields(msg, spec)
        else:
            convert_message(msg, spec, at[k].row)
            suspect = suspect_fields(msg, spec)
        fault = F.OK
        if suspect:
            fault = field_fault(msg, spec)
        if fault:
            if log_fault(log, <F.Fault>fault, pos, length, message):
                return F.OUT_OF_MEMORY
            if not keep_going:
                return fault
        else:
            if numbered:
                (at[k].sequences_end - at[k].left)[0] = first_sequence + message
            at[k].left -= 1
            at[k].row += spec.struct_size
        message += 1
        pos += 2 + length
    position[0], index[0] = pos, message
    return F.OK


cdef int fill_block(const uint8_t* block, size_t n, uint64_t first_sequence, bint numbered,
                    const BlockScan* scan, BlockArrays* arrays, FaultLog* log,
                    bint keep_going) noexcept nogil:
    """Second pass: fill the struct arrays sized by scan_block, skipping the messages its log
    holds (framing faults, in stream order). A message that fails its field checks is logged
    and its slot reused, so `filled` may end below the scanned counts."""
    cdef SlotCursor at[MAX_TYPES]
    cdef size_t pos = 0, index = 0, limit, i, framing_faults = log.count, next_fault = 0
    cdef const FaultEntry* skipped
    cdef int fault = F.OK
    for i in range(arrays.type_count):
        at[i].row = arrays.rows[i]
        at[i].sequences_end = arrays.sequences[i] + scan.counts[i] if numbered else NULL
        at[i].left = scan.counts[i]
    while True:
        limit = n
        if next_fault < framing_faults:
            limit = min(n, <size_t> (log.entries[next_fault].offset - log.base))
        fault = fill_segment(block, n, &pos, limit, &index, first_sequence, numbered, scan, at,
                             log, keep_going)
        if fault or limit == n:
            break
        skipped = &log.entries[next_fault]
        next_fault += 1
        if skipped.code == F.MESSAGE_TRUNCATED:
            break
        if skipped.index != index:
            fault = F.BUFFER_CHANGED
            break
        index += 1
        pos += 2 + skipped.length
    for i in range(arrays.type_count):
        arrays.filled[i] = scan.counts[i] - at[i].left
    return fault


# ---- one block, start to finish, without the GIL -------------------------------------------------

cdef struct BlockResult:
    BlockScan scan
    FaultLog log
    BlockArrays arrays
    int fault                   # fatal: raised as DecodeError (or quarantines the packet)
    uint64_t fault_offset       # from log.base, like the log's offsets
    int framing_fault           # strict mode: the framing fault pass one stopped at
    size_t fill_end             # bytes pass two covers: up to that fault, or all
    bint numbered               # rows get sequence numbers (frames; a bare block has none)


cdef void init_result(BlockResult* r, uint64_t base, bint numbered) noexcept nogil:
    memset(r, 0, sizeof(BlockResult))
    r.log.base = base
    r.numbered = numbered


cdef void release_result(BlockResult* r) noexcept nogil:
    free(r.log.entries)
    free(r.arrays.arena)


cdef bint plan_block(const uint8_t* block, size_t n, long declared_count, bint keep_going,
                     BlockResult* r) noexcept nogil:
    """Pass one and the arena it sizes. False if there is nothing for pass two to do (r.fault
    then says why, if anything went wrong)."""
    cdef int fault
    cdef size_t size, at, i
    fault = scan_block(block, n, &r.scan, &r.arrays, &r.log, keep_going)
    if fault == F.OUT_OF_MEMORY:
        r.fault = F.OUT_OF_MEMORY
        return False
    # Strict mode reports the first fault in stream order: after a framing fault, pass two
    # still runs over the messages before it, which may hold an earlier field fault.
    r.framing_fault = fault if not keep_going else F.OK
    r.fill_end = <size_t> (r.log.entries[0].offset - r.log.base) if r.framing_fault else n
    if not r.framing_fault and declared_count >= 0 and r.scan.messages != <size_t> (
            0 if declared_count == W.END_OF_SESSION_COUNT else declared_count):
        r.fault = r.log.entries[0].code if r.log.count else F.COUNT_MISMATCH
        r.fault_offset = r.log.entries[0].offset if r.log.count else r.log.base + n
        return False
    size = r.scan.messages * sizeof(uint64_t) if r.numbered else 0
    for i in range(r.arrays.type_count):
        size += r.scan.counts[i] * SPECS[r.arrays.types[i]].struct_size + _ROW_SLACK
    r.arrays.arena = <uint8_t*> malloc(size)
    if r.arrays.arena == NULL:
        r.fault = F.OUT_OF_MEMORY
        return False
    at = 0
    for i in range(r.arrays.type_count if r.numbered else 0):     # else they stay NULL
        r.arrays.sequences[i] = <uint64_t*> (r.arrays.arena + at)
        at += r.scan.counts[i] * sizeof(uint64_t)
    for i in range(r.arrays.type_count):
        r.arrays.rows[i] = r.arrays.arena + at
        at += r.scan.counts[i] * SPECS[r.arrays.types[i]].struct_size + _ROW_SLACK
    return True


cdef void fill_planned(const uint8_t* block, uint64_t first_sequence, bint keep_going,
                       BlockResult* r) noexcept nogil:
    """Pass two over what plan_block planned, and the block's final fault."""
    cdef int fault = fill_block(block, r.fill_end, first_sequence, r.numbered, &r.scan,
                                &r.arrays, &r.log,
                                keep_going)
    if fault == F.BUFFER_CHANGED:
        r.fault = fault
        r.fault_offset = r.log.base
    elif fault == F.OUT_OF_MEMORY or (fault and not keep_going):
        r.fault = fault
        r.fault_offset = r.log.entries[r.log.count - 1].offset if r.log.count else r.log.base
    elif r.framing_fault:
        r.fault = r.framing_fault
        r.fault_offset = r.log.entries[0].offset


cdef void decode_messages(const uint8_t* block, size_t n, uint64_t first_sequence,
                          long declared_count, bint keep_going, BlockResult* r) noexcept nogil:
    """Split, count, allocate and fill in one go, so a frame needs a single nogil section."""
    if plan_block(block, n, declared_count, keep_going, r):
        fill_planned(block, first_sequence, keep_going, r)


# ---- turning the C results into Python objects -------------------------------------------------

cdef class _Arena:
    """Owns a block's malloc'd arena; the arrays viewing it keep it alive."""
    cdef void* data

    def __dealloc__(self):
        free(self.data)


cdef _Arena take_arena(BlockArrays* arrays):
    """An _Arena that owns arrays.arena from now on."""
    cdef _Arena arena = _Arena()
    arena.data = arrays.arena
    arrays.arena = NULL
    return arena


cdef UINT64 = np.dtype(np.uint64)


cdef object array_view(_Arena arena, object descr, void* data, cnp.npy_intp count):
    """A 1-d array of `count` records of dtype `descr` at `data`, inside and keeping `arena`."""
    Py_INCREF(descr)
    view = PyArray_NewFromDescr(<PyTypeObject*> np.ndarray, <cnp.dtype> descr, 1, &count,
                                NULL, data, cnp.NPY_ARRAY_WRITEABLE, NULL)
    cnp.set_array_base(view, arena)
    return view


cdef tuple view_arrays(const BlockArrays* arrays, _Arena arena):
    """(messages, sequences): type -> array dicts viewing the rows in `arena` (sequences
    empty for a block decoded without sequence numbers)."""
    cdef dict messages = {}, sequences = {}
    cdef size_t i
    cdef uint8_t t
    for i in range(arrays.type_count):
        t = arrays.types[i]
        if arrays.filled[i]:
            messages[KEYS[t]] = array_view(arena, DESCRS[t], arrays.rows[i], arrays.filled[i])
            if arrays.sequences[i] != NULL:
                sequences[KEYS[t]] = array_view(arena, UINT64, arrays.sequences[i],
                                                arrays.filled[i])
    return messages, sequences


cdef list quarantine_entries(const FaultLog* log, const uint8_t* block, uint64_t first_sequence,
                             uint64_t count):
    """The logged faults as `Quarantined` entries, in stream order. A message within the
    packet's `count` carries its sequence number; bytes past the counted messages carry none
    (the number after them is the next packet's)."""
    cdef list entries = []
    cdef size_t i, start
    cdef const FaultEntry* e
    for i in range(log.count):
        e = &log.entries[i]
        start = <size_t> (e.offset - log.base)
        if e.code != F.MESSAGE_TRUNCATED:
            start += 2
        entries.append(Quarantined(
            e.offset, _FAULT_REASONS[e.code], PyBytes_FromStringAndSize(
                <const char*> block + start, <Py_ssize_t> e.length),
            first_sequence + e.index if e.index < count else None, _FAULT_CODES[e.code]))
    entries.sort(key=lambda entry: entry.offset)
    return entries


cdef tuple block_outcome(BlockResult* r, const uint8_t* block):
    """parse_messages' (messages, quarantined) from a decoded block, or its exception."""
    if r.fault:
        raise fault_error(r.fault, r.fault_offset)
    messages, _ = view_arrays(&r.arrays, take_arena(&r.arrays))
    return messages, quarantine_entries(&r.log, block, 0, 0)


def parse_messages(buf, *, bint quarantine=False, uint64_t base_offset=0):
    """ITCH messages in NASDAQ's binary file framing -> (messages, quarantined).

    `base_offset` is added to every offset reported, as if `buf` started that far into a
    larger input (the tests use it to check offsets past 4 GiB without 4 GiB of data)."""
    cdef Py_buffer view
    cdef BlockResult r
    init_result(&r, base_offset, False)
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            decode_messages(<const uint8_t*> view.buf, view.len, 0, -1, quarantine, &r)
        return block_outcome(&r, <const uint8_t*> view.buf)
    finally:
        release_result(&r)
        PyBuffer_Release(&view)


def _parse_changed_between_passes(buf, size_t at, bytes replacement, *, bint quarantine=False):
    """parse_messages on a private copy of `buf` whose bytes at `at` become `replacement`
    after pass one and before pass two: what another thread writing into the caller's buffer
    at the wrong moment does, made deterministic for the tests."""
    cdef Py_buffer view
    cdef BlockResult r
    cdef uint8_t* block = NULL
    init_result(&r, 0, False)
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if at + len(replacement) > <size_t> view.len:
            raise ValueError("replacement runs past the buffer")
        block = <uint8_t*> malloc(max(view.len, 1))
        if block == NULL:
            raise MemoryError()
        memcpy(block, view.buf, view.len)
        if plan_block(block, view.len, -1, quarantine, &r):
            memcpy(block + at, <const char*> replacement, len(replacement))
            fill_planned(block, 0, quarantine, &r)
        return block_outcome(&r, block)
    finally:
        release_result(&r)
        free(block)
        PyBuffer_Release(&view)


cdef class Packet:
    """One decoded frame.

    `messages[t]` holds the records of type t in stream order and `sequences[t]` the MoldUDP64
    sequence number of each of those records (both dicts of numpy arrays). A frame quarantined
    as a whole has session, sequence and count None and a single entry in `quarantined`.

    Decoding leaves the rows in one C arena per frame; the arrays viewing it are made on first
    access of `messages` or `sequences`, so decoding itself holds the GIL only briefly."""

    cdef readonly object session
    cdef readonly object sequence
    cdef readonly object count
    cdef readonly list quarantined
    cdef dict _messages
    cdef dict _sequences
    cdef BlockArrays _arrays        # where the rows are, in _arena
    cdef _Arena _arena

    def __init__(self, session, sequence, count, dict messages, dict sequences,
                 list quarantined=None):
        """A packet from ready-made arrays (decoding builds its packets without this)."""
        self.session, self.sequence, self.count = session, sequence, count
        self._messages, self._sequences = messages, sequences
        self.quarantined = [] if quarantined is None else quarantined

    cdef void _view_arrays(self) except *:
        # Two threads asking at once each make their own views of the same arena: both right.
        self._messages, self._sequences = view_arrays(&self._arrays, self._arena)

    @property
    def messages(self) -> dict:
        if self._messages is None:
            self._view_arrays()
        return self._messages

    @property
    def sequences(self) -> dict:
        if self._sequences is None:
            self._view_arrays()
        return self._sequences

    @property
    def is_heartbeat(self) -> bool:
        return self.count == W.HEARTBEAT_COUNT

    @property
    def is_end_of_session(self) -> bool:
        return self.count == W.END_OF_SESSION_COUNT

    @property
    def next_sequence(self):
        """Sequence number the message after this packet will carry."""
        if self.sequence is None:
            return None
        return self.sequence + (0 if self.count == W.END_OF_SESSION_COUNT else self.count)

    def __repr__(self):
        return (f"Packet(session={self.session!r}, sequence={self.sequence}, "
                f"count={self.count}, types={''.join(self.messages)!r}, "
                f"quarantined={len(self.quarantined)})")

    def __reduce__(self):
        return Packet, (self.session, self.sequence, self.count, self.messages,
                        self.sequences, self.quarantined)


# ---- frames -------------------------------------------------------------------------------------

cdef struct FrameFields:
    uint8_t codec
    uint32_t packet_length
    uint32_t checksum


cdef inline size_t offset_of(const W.FrameHeader* h, const void* field) noexcept nogil:
    return <const uint8_t*> field - <const uint8_t*> h


cdef F.Fault check_frame(const uint8_t* f, size_t n, FrameFields* fields,
                         size_t* where) noexcept nogil:
    cdef const W.FrameHeader* h = <const W.FrameHeader*> f
    cdef const W.PacketHeader* packet
    cdef uint64_t count
    where[0] = 0
    if n < sizeof(W.FrameHeader):
        return F.FRAME_TOO_SHORT
    if load_be32(h.frame_length) > W.MAX_FRAME_LENGTH:
        return F.FRAME_TOO_LARGE
    if load_be32(h.frame_length) != n - sizeof(h.frame_length):
        return F.FRAME_LENGTH_MISMATCH
    where[0] = offset_of(h, &h.frame_type)
    if h.frame_type != W.FRAME_TYPE_SEQUENCED:
        return F.BAD_FRAME_TYPE
    where[0] = offset_of(h, &h.version)
    if h.version != W.FRAME_VERSION:
        return F.BAD_VERSION
    where[0] = offset_of(h, &h.codec)
    fields.codec = h.codec
    if h.codec != W.CODEC_NONE and h.codec != W.CODEC_LZ4:
        return F.BAD_CODEC
    where[0] = offset_of(h, &h.flags)
    if h.flags != 0:
        return F.BAD_FLAGS
    where[0] = offset_of(h, &h.uncompressed_length)
    fields.packet_length = load_be32(h.uncompressed_length)
    fields.checksum = load_be32(h.checksum)
    if fields.packet_length > W.MAX_PACKET_LENGTH:
        return F.PACKET_TOO_LARGE
    if h.codec == W.CODEC_NONE and fields.packet_length != n - sizeof(W.FrameHeader):
        return F.UNCOMPRESSED_LENGTH_MISMATCH
    if fields.packet_length < sizeof(W.PacketHeader) \
            or n < sizeof(W.FrameHeader) + sizeof(W.PacketHeader):
        return F.PACKET_TOO_SHORT
    # The packet header travels uncompressed: its messages' sequence numbers must fit a u64.
    packet = <const W.PacketHeader*> (f + sizeof(W.FrameHeader))
    count = load_be16(packet.message_count)
    if count != W.END_OF_SESSION_COUNT and count \
            and load_be64(packet.sequence_number) > UINT64_MAX - (count - 1):
        where[0] = offset_of(h, &packet.sequence_number)
        return F.SEQUENCE_OVERFLOW
    return F.OK


cdef F.Fault unpack_frame(const uint8_t* f, size_t n, uint8_t** packet, FrameFields* fields,
                          size_t* where) noexcept nogil:
    """Check the header, decompress if needed and verify the checksum. On success *packet
    points at the MoldUDP64 packet: into the frame for codec none, else a malloc'd copy.
    The packet header travels uncompressed, so only the message block is inflated."""
    cdef const W.FrameHeader* h = <const W.FrameHeader*> f
    cdef F.Fault fault = check_frame(f, n, fields, where)
    cdef size_t header_end = sizeof(W.FrameHeader) + sizeof(W.PacketHeader)
    cdef int got
    packet[0] = NULL
    if fault:
        return fault
    if fields.codec == W.CODEC_NONE:
        packet[0] = <uint8_t*> (f + sizeof(W.FrameHeader))
    else:
        where[0] = header_end
        packet[0] = <uint8_t*> malloc(fields.packet_length)
        if packet[0] == NULL:
            return F.OUT_OF_MEMORY
        memcpy(packet[0], f + sizeof(W.FrameHeader), sizeof(W.PacketHeader))
        got = LZ4_decompress_safe(<const char*> (f + header_end),
                                  <char*> (packet[0] + sizeof(W.PacketHeader)),
                                  <int> (n - header_end),
                                  <int> (fields.packet_length - sizeof(W.PacketHeader)))
        if got < 0:
            return F.LZ4_CORRUPT
        if <size_t> got != fields.packet_length - sizeof(W.PacketHeader):
            where[0] = offset_of(h, &h.uncompressed_length)
            return F.UNCOMPRESSED_LENGTH_MISMATCH
    where[0] = offset_of(h, &h.checksum)
    if xxh32(packet[0], fields.packet_length, 0) != fields.checksum:
        return F.CHECKSUM_MISMATCH
    return F.OK


cdef struct FrameDecode:
    FrameFields fields
    uint8_t* packet             # the MoldUDP64 packet: in the frame, or malloc'd if compressed
    F.Fault fault
    size_t where
    BlockResult r               # message-level offsets count from the start of the packet


cdef void init_frame(FrameDecode* d) noexcept nogil:
    d.fields.codec = W.CODEC_NONE
    d.packet = NULL
    d.fault = F.OK
    d.where = 0
    init_result(&d.r, sizeof(W.PacketHeader), True)


cdef void decode_frame_nogil(const uint8_t* f, size_t n, bint quarantine,
                             FrameDecode* d) noexcept nogil:
    cdef const W.PacketHeader* header
    d.fault = unpack_frame(f, n, &d.packet, &d.fields, &d.where)
    if not d.fault:
        header = <const W.PacketHeader*> d.packet
        decode_messages(d.packet + sizeof(W.PacketHeader),
                        d.fields.packet_length - sizeof(W.PacketHeader),
                        load_be64(header.sequence_number), load_be16(header.message_count),
                        quarantine, &d.r)


cdef void release_frame(FrameDecode* d) noexcept nogil:
    release_result(&d.r)
    if d.fields.codec == W.CODEC_LZ4:
        free(d.packet)


cdef Packet frame_packet(FrameDecode* d, object frame, bint quarantine):
    """The Packet of a decoded frame; takes over its arena. Only a few small objects are made
    here, with the GIL held: the arrays come later, from Packet.messages."""
    cdef Packet p = Packet.__new__(Packet)
    cdef const W.PacketHeader* header
    cdef int fault = d.r.fault
    cdef uint64_t offset = d.r.fault_offset
    if d.fault:
        fault, offset = d.fault, d.where
    if fault:
        if fault == F.OUT_OF_MEMORY or not quarantine:
            raise fault_error(fault, offset)
        p._messages, p._sequences = {}, {}
        p.quarantined = [Quarantined(0, _FAULT_REASONS[fault], bytes(frame), None,
                                     _FAULT_CODES[fault])]
        return p
    header = <const W.PacketHeader*> d.packet
    p.session = PyBytes_FromStringAndSize(header.session, sizeof(header.session))
    p.sequence = load_be64(header.sequence_number)
    p.count = load_be16(header.message_count)
    p._arena = take_arena(&d.r.arrays)
    p._arrays = d.r.arrays
    if d.r.log.count:
        p.quarantined = quarantine_entries(
            &d.r.log, d.packet + sizeof(W.PacketHeader), p.sequence,
            0 if p.count == W.END_OF_SESSION_COUNT else p.count)   # end of session: none
    else:
        p.quarantined = []
    return p


cdef Py_ssize_t type_parts(object packet, TypePart* parts) except -1:
    """Fill `parts` (room for MAX_TYPES) with each message type's rows in `packet` (a Packet,
    or any object with `messages` and `sequences` dicts of arrays as a Packet has), in the
    order of `messages`; return how many. A decoded Packet's rows are read from its arena while
    no array views it, so that code in C never makes the arrays; once they exist, and for a
    packet made from ready-made arrays, they are what `messages` says."""
    cdef Packet decoded
    cdef const BlockArrays* arrays
    cdef Py_ssize_t n = 0
    cdef size_t slot
    cdef cnp.ndarray records, sequences
    if type(packet) is Packet and (<Packet> packet)._messages is None:
        decoded = <Packet> packet
        arrays = &decoded._arrays
        for slot in range(arrays.type_count):
            if arrays.filled[slot]:
                parts[n] = TypePart(arrays.rows[slot], arrays.sequences[slot],
                                    arrays.filled[slot], SPECS[arrays.types[slot]].struct_size,
                                    arrays.types[slot])
                n += 1
        return n
    sequences_of = packet.sequences
    for message_type, records in packet.messages.items():
        sequences = sequences_of[message_type]
        if len(message_type) != 1 or ord(message_type) > 255:
            raise ValueError(f"{message_type!r} is not a message type")
        if n == MAX_TYPES:
            raise ValueError(f"a packet holds at most {MAX_TYPES} message types")
        if cnp.PyArray_NDIM(records) != 1 or cnp.PyArray_NDIM(sequences) != 1 \
                or sequences.shape[0] != records.shape[0] \
                or cnp.PyArray_TYPE(sequences) != cnp.NPY_UINT64 \
                or not (cnp.PyArray_IS_C_CONTIGUOUS(records)
                        and cnp.PyArray_IS_C_CONTIGUOUS(sequences)) \
                or cnp.PyArray_ITEMSIZE(records) < LOCATE_OFFSET + 2:
            raise ValueError(f"{message_type!r} rows and sequences do not match or are too "
                             "small for a locate code")
        parts[n] = TypePart(<const uint8_t*> cnp.PyArray_DATA(records),
                            <const uint64_t*> cnp.PyArray_DATA(sequences), records.shape[0],
                            cnp.PyArray_ITEMSIZE(records), <uint8_t> ord(message_type))
        n += 1
    return n


def tick_counts(list packets, by_type):
    """Ticks of each packet of `packets` (a list, in order), and the ticks of each message type
    added to `by_type` (type -> ticks, e.g. a Counter; types in order of first appearance),
    without making the packets' arrays."""
    cdef TypePart parts[MAX_TYPES]
    cdef int64_t per_type[256]
    cdef uint8_t seen[256]
    cdef uint8_t order[256]
    cdef Py_ssize_t n, k, ticks, n_seen = 0
    cdef list counts = []
    memset(per_type, 0, sizeof(per_type))
    memset(seen, 0, sizeof(seen))
    for packet in packets:
        n = type_parts(packet, parts)
        ticks = 0
        for k in range(n):
            if not seen[parts[k].type_code]:
                seen[parts[k].type_code] = 1
                order[n_seen] = parts[k].type_code
                n_seen += 1
            per_type[parts[k].type_code] += parts[k].count
            ticks += parts[k].count
        counts.append(ticks)
    for k in range(n_seen):
        message_type = chr(order[k])
        by_type[message_type] = by_type.get(message_type, 0) + per_type[order[k]]
    return counts


def decode_frame(frame, *, bint quarantine=False):
    """One whole frame -> Packet.

    Frame-level offsets count from the start of the frame; message-level offsets from the start
    of the (decompressed) MoldUDP64 packet. With quarantine=True a frame whose header, checksum,
    compression or count is bad comes back as a single quarantine entry covering the frame."""
    cdef Py_buffer view
    cdef FrameDecode d
    init_frame(&d)
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            decode_frame_nogil(<const uint8_t*> view.buf, view.len, quarantine, &d)
        return frame_packet(&d, frame, quarantine)
    finally:
        release_frame(&d)
        PyBuffer_Release(&view)


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
        return [frame_packet(&decodes[i], frames[i], quarantine) for i in range(count)]
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        if decodes != NULL:
            for i in range(count):
                release_frame(&decodes[i])
        free(decodes)
        free(views)


def message_block(frame):
    """A whole frame's message block (NASDAQ file framing) as bytes: the header checked, the
    block decompressed and the packet's checksum verified, without the GIL. Raises DecodeError
    with the frame-level offset, as decode_frame does; the messages themselves are not checked."""
    cdef Py_buffer view
    cdef FrameFields fields
    cdef uint8_t* packet = NULL
    cdef size_t where = 0
    cdef F.Fault fault
    fields.codec = W.CODEC_NONE
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            fault = unpack_frame(<const uint8_t*> view.buf, view.len, &packet, &fields, &where)
        if fault:
            raise fault_error(fault, where)
        return PyBytes_FromStringAndSize(<const char*> packet + sizeof(W.PacketHeader),
                                         fields.packet_length - sizeof(W.PacketHeader))
    finally:
        if fields.codec == W.CODEC_LZ4:
            free(packet)
        PyBuffer_Release(&view)


def frame_checksum(buf):
    """XXH32 (seed 0) of a bytes-like object, as carried in the frame header."""
    cdef Py_buffer view
    cdef uint32_t h
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            h = xxh32(<const uint8_t*> view.buf, view.len, 0)
        return h
    finally:
        PyBuffer_Release(&view)


def count_blocks(buf, Py_ssize_t length):
    """How many message blocks (u16 big-endian length, then that many bytes) fill the first
    `length` bytes of a MoldUDP64 packet after its header exactly; -1 if the last one runs past
    `length` (or `length` is shorter than the header or longer than the buffer). A datagram
    check for the UDP transport, without the GIL."""
    cdef Py_buffer view
    cdef const uint8_t* data
    cdef size_t position = sizeof(W.PacketHeader)
    cdef size_t end
    cdef int64_t blocks = 0
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if length < <Py_ssize_t> sizeof(W.PacketHeader) or length > view.len:
            return -1
        data = <const uint8_t*> view.buf
        end = <size_t> length
        with nogil:
            while position + 2 <= end:
                position += 2 + load_be16(data + position)
                blocks += 1
            if position != end:
                blocks = -1
        return blocks
    finally:
        PyBuffer_Release(&view)

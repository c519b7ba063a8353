# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Kafka records from decoded packets: record keys and the per-tick hot loop.

Keys are stock names, partitions Kafka's murmur2 of the key (as the Java client and
librdkafka's murmur2_random partitioner compute it); `unknown_stocks` finds the names a packet
reveals. Per-tick records are the dicts `Producer.produce_batch` takes, built here so that the
only Python-level work per tick is one small dict. (The batched format's rows: ext/batched.pyx.)
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free

cimport numpy as cnp

from stock_names cimport name_rows
from tick_order cimport (LOCATE_OFFSET, LOCATES, MAX_TYPES, TickSlot, TypeRows, load_types,
                         locate_of, order_ticks, record_timestamp_ms)

cnp.import_array()

from record_layout cimport SESSION_LENGTH, TICK_HEADER_SIZE, TickHeader, write_tick_value

if sizeof(TickHeader) != TICK_HEADER_SIZE:
    raise ImportError("TickHeader is not packed: the per-tick value layout would be wrong")
TICK_HEADER_SIZE_BYTES = TICK_HEADER_SIZE
"""Bytes before the message in a per-tick `struct` or `raw` value (docs/kafka.md)."""

cdef inline uint32_t murmur2_hash(const uint8_t* data, size_t length) noexcept nogil:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), seed 0x9747b28c."""
    cdef uint32_t m = 0x5bd1e995U, h = 0x9747b28cU ^ <uint32_t>length, k
    cdef size_t i = 0, tail = length & ~(<size_t>3)
    while i < tail:
        k = (<uint32_t>data[i] | (<uint32_t>data[i + 1] << 8) | (<uint32_t>data[i + 2] << 16)
             | (<uint32_t>data[i + 3] << 24))
        k *= m
        k ^= k >> 24
        k *= m
        h *= m
        h ^= k
        i += 4
    if length & 3 == 3:
        h ^= <uint32_t>data[tail + 2] << 16
    if length & 3 >= 2:
        h ^= <uint32_t>data[tail + 1] << 8
    if length & 3 >= 1:
        h ^= data[tail]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return h


def murmur2(key) -> int:
    """Kafka's murmur2 of a bytes-like key as a signed 32-bit int, as Java returns it."""
    cdef Py_buffer view
    cdef uint32_t h
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    try:
        h = murmur2_hash(<const uint8_t*> view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return <int>h if h < 0x80000000 else <int64_t>h - 0x100000000


def partition_for(key, int partitions) -> int:
    """Partition of a key, as the Java client's default partitioner and librdkafka's
    murmur2/murmur2_random partitioners choose it: positive murmur2 modulo partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def tick_records(dict messages, dict sequences, uint64_t first_sequence, Py_ssize_t count,
                 dict topic_of_type, Py_ssize_t topics, list keys, bytes session,
                 int64_t timestamp_base_ms, dict raw_blocks=None, bint with_metadata=False):
    """One produce_batch dict per tick, grouped by topic, each group in feed order.

    `keys[locate]` is the record key of a stock locate code. Each value is a tick header
    (`session`, the tick's sequence number) followed by the struct, or, when `raw_blocks[t]`
    holds the wire messages of type t in NASDAQ file framing, by the wire message.
    `with_metadata` adds the message "type", "sequence" and record "timestamp"
    (`timestamp_base_ms` plus the ITCH timestamp), which produce_batch cannot take but
    produce() can, as headers and timestamp."""
    cdef list out = [[] for _ in range(topics)]
    cdef Py_ssize_t n_types, slot, length
    cdef TypeRows types[MAX_TYPES]
    cdef TypeRows* tr
    cdef const uint8_t* row_ptr
    cdef const uint8_t* message
    cdef object value
    cdef dict record
    cdef int row
    if len(keys) != LOCATES:
        raise ValueError(f"keys must have one entry per stock locate ({LOCATES})")
    if len(session) != SESSION_LENGTH:
        raise ValueError(f"session must be {SESSION_LENGTH} bytes")
    n_types = load_types(messages, sequences, topic_of_type, topics, raw_blocks, types,
                         MAX_TYPES)
    cdef TickSlot* order = <TickSlot*> calloc(max(count, 1), sizeof(TickSlot))
    if order == NULL:
        raise MemoryError()
    try:
        order_ticks(types, n_types, first_sequence, count, order)
        for slot in range(count):
            if order[slot].type_index == 0:
                continue
            tr = &types[order[slot].type_index - 1]
            row = order[slot].row
            row_ptr = tr.rows + row * tr.itemsize
            if tr.raw != NULL:
                message = tr.raw + row * tr.itemsize + 2
                length = tr.itemsize - 2
            else:
                message = row_ptr
                length = tr.itemsize
            value = PyBytes_FromStringAndSize(NULL, TICK_HEADER_SIZE + length)
            write_tick_value(<uint8_t*> PyBytes_AS_STRING(value), session,
                             first_sequence + slot, message, length)
            record = {"value": value, "key": keys[locate_of(row_ptr)]}
            if with_metadata:
                record["timestamp"] = record_timestamp_ms(row_ptr, timestamp_base_ms)
                record["type"] = PyBytes_FromStringAndSize(<const char*> row_ptr, 1)
                record["sequence"] = first_sequence + slot
            (<list> out[tr.topic]).append(record)
        return out
    finally:
        free(order)


def unknown_stocks(dict messages, tuple stock_fields, uint8_t[::1] known):
    """The stock names `messages` (a Packet's) reveal for locates not `known` yet:
    [(locate, name)] in the order they are to be applied (a later one for the same locate wins).

    `stock_fields` is ((message type, offset of its 8-byte `stock` field), ...) in the order the
    types are looked at; each type's rows are checked against `known` as it was before that
    type, and their locates are marked known afterwards. A name is the field without trailing
    NULs, then without trailing spaces (as numpy's bytes of the field, `rstrip(b" ")`)."""
    cdef list named = []
    cdef cnp.ndarray records
    cdef Py_ssize_t itemsize, offset
    cdef const uint8_t* rows
    if known.shape[0] != LOCATES:
        raise ValueError(f"known must have one entry per stock locate ({LOCATES})")
    for message_type, offset in stock_fields:
        records = messages.get(message_type)
        if records is None:
            continue
        itemsize = cnp.PyArray_ITEMSIZE(records)
        if not cnp.PyArray_IS_C_CONTIGUOUS(records) or cnp.PyArray_NDIM(records) != 1 \
                or offset < LOCATE_OFFSET + 2 or offset + 8 > itemsize:
            raise ValueError(f"{message_type}: rows too small for their stock field")
        rows = <const uint8_t*> cnp.PyArray_DATA(records)
        name_rows(named, rows, records.shape[0], itemsize, offset, &known[0])
    return named

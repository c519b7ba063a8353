# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Kafka records from decoded packets: the per-tick hot loop and the batched grouping.

Per-tick records are the dicts `Producer.produce_batch` takes, built here so that the only
Python-level work per tick is one small dict. Batched records group a packet's rows by message
type and Kafka partition (Kafka's murmur2 of the key, as the Java client and librdkafka's
murmur2_random partitioner compute it) without the GIL.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

cimport numpy as cnp
import numpy as np

from tick_order cimport (LOCATE_OFFSET, LOCATES, MAX_TYPES, TickSlot, TypeRows, load_types,
                         locate_of, order_ticks, partition_of, record_timestamp_ms)

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


def group_rows(list parts, const uint32_t[::1] key_hashes, int partitions):
    """Rows of one message type grouped by Kafka partition, each row prefixed with its
    sequence number (the batched value format). `parts` is a list of (records, sequences)
    array pairs, in feed order, e.g. one per frame. Returns {partition: bytes}, rows in feed
    order within each partition. `key_hashes[locate]` is the murmur2 hash of that locate's key."""
    cdef Py_ssize_t n = 0, itemsize = 0, i, k, at, width
    cdef Py_ssize_t n_parts = len(parts)
    cdef const uint8_t** rows = <const uint8_t**> calloc(max(n_parts, 1), sizeof(uint8_t*))
    cdef const uint64_t** seqs = <const uint64_t**> calloc(max(n_parts, 1), sizeof(uint64_t*))
    cdef Py_ssize_t* counts = <Py_ssize_t*> calloc(max(n_parts, 1), sizeof(Py_ssize_t))
    cdef uint32_t* row_partition = NULL
    cdef Py_ssize_t* fill = <Py_ssize_t*> calloc(partitions, sizeof(Py_ssize_t))
    cdef char** out = <char**> calloc(partitions, sizeof(char*))
    cdef dict result = {}
    cdef uint32_t p
    cdef cnp.ndarray records, sequences
    try:
        if partitions < 1 or key_hashes.shape[0] != LOCATES:
            raise ValueError("group_rows needs partitions >= 1 and a hash per stock locate")
        if rows == NULL or seqs == NULL or counts == NULL or fill == NULL or out == NULL:
            raise MemoryError()
        for k in range(n_parts):
            records, sequences = parts[k]
            if not (records.flags.c_contiguous and sequences.flags.c_contiguous) \
                    or sequences.shape[0] != records.shape[0] or sequences.dtype != np.uint64 \
                    or (k and records.dtype.itemsize != itemsize) \
                    or records.dtype.itemsize < LOCATE_OFFSET + 2:
                raise ValueError("group_rows needs matching contiguous arrays of one type")
            itemsize = records.dtype.itemsize
            rows[k] = <const uint8_t*> cnp.PyArray_DATA(records)
            seqs[k] = <const uint64_t*> cnp.PyArray_DATA(sequences)
            counts[k] = records.shape[0]
            n += counts[k]
        width = 8 + itemsize
        row_partition = <uint32_t*> malloc(max(n, 1) * sizeof(uint32_t))
        if row_partition == NULL:
            raise MemoryError()
        with nogil:
            at = 0
            for k in range(n_parts):
                for i in range(counts[k]):
                    p = partition_of(key_hashes[locate_of(rows[k] + i * itemsize)], partitions)
                    row_partition[at] = p
                    fill[p] += 1
                    at += 1
        for p in range(<uint32_t>partitions):
            if fill[p]:
                value = PyBytes_FromStringAndSize(NULL, fill[p] * width)
                result[p] = value
                out[p] = PyBytes_AS_STRING(value)
                fill[p] = 0
        with nogil:
            at = 0
            for k in range(n_parts):
                for i in range(counts[k]):
                    p = row_partition[at]
                    memcpy(out[p] + fill[p] * width, &seqs[k][i], 8)
                    memcpy(out[p] + fill[p] * width + 8, rows[k] + i * itemsize, itemsize)
                    fill[p] += 1
                    at += 1
        return result
    finally:
        free(rows)
        free(seqs)
        free(counts)
        free(row_partition)
        free(fill)
        free(out)

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

cnp.import_array()

cdef enum:
    _LOCATES = 65536
    _TIMESTAMP_OFFSET = 5       # struct offset of `timestamp` (checked by ext/decode.pyx)
    _LOCATE_OFFSET = 1


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


cdef inline uint64_t load_u64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint16_t load_u16(const uint8_t* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef struct PacketSlot:
    int type_index      # 1 + index into the packet's types; 0 marks an empty slot
    int row


cdef struct TypeRows:
    const uint8_t* rows
    const uint64_t* sequences
    Py_ssize_t count
    Py_ssize_t itemsize
    int topic


def tick_records(dict messages, dict sequences, uint64_t first_sequence, Py_ssize_t count,
                 dict topic_of_type, Py_ssize_t topics, list keys, int64_t timestamp_base_ms,
                 dict raw_blocks=None, bint with_metadata=False):
    """One produce_batch dict per tick, grouped by topic, each group in feed order.

    `keys[locate]` is the record key of a stock locate code; `raw_blocks[t]`, when given,
    holds the wire messages of type t in NASDAQ file framing and becomes the values instead
    of the struct bytes. `with_metadata` adds the message "type", "sequence" and record
    "timestamp" (`timestamp_base_ms` plus the ITCH timestamp), which produce_batch cannot take
    but produce() can, as headers and timestamp."""
    cdef list out = [[] for _ in range(topics)]
    cdef Py_ssize_t n_types = len(messages), i, row, slot
    if len(keys) != _LOCATES:
        raise ValueError(f"keys must have one entry per stock locate ({_LOCATES})")
    cdef TypeRows* types = <TypeRows*> malloc(max(n_types, 1) * sizeof(TypeRows))
    cdef PacketSlot* order = <PacketSlot*> calloc(max(count, 1), sizeof(PacketSlot))
    cdef list raw_pointers = []
    cdef const uint8_t** raw = <const uint8_t**> calloc(max(n_types, 1), sizeof(uint8_t*))
    cdef cnp.ndarray records, seqs
    cdef const uint8_t* row_ptr
    cdef TypeRows* tr
    cdef object value
    cdef dict record
    if types == NULL or order == NULL or raw == NULL:
        free(types); free(order); free(raw)
        raise MemoryError()
    try:
        i = 0
        for message_type, records in messages.items():
            seqs = sequences[message_type]
            if seqs.shape[0] != records.shape[0] or seqs.dtype != np.uint64 \
                    or not (records.flags.c_contiguous and seqs.flags.c_contiguous):
                raise ValueError(f"{message_type}: records and sequences do not match")
            if not 0 <= topic_of_type[message_type] < topics:
                raise ValueError(f"{message_type}: topic index out of range")
            types[i] = TypeRows(<const uint8_t*> cnp.PyArray_DATA(records),
                                <const uint64_t*> cnp.PyArray_DATA(seqs),
                                records.shape[0], records.dtype.itemsize,
                                topic_of_type[message_type])
            if raw_blocks is not None:
                raw[i] = <const uint8_t*> PyBytes_AS_STRING(raw_blocks[message_type])
            i += 1
        # Slot k of the packet holds message k; quarantined messages leave their slot empty.
        for i in range(n_types):
            tr = &types[i]
            for row in range(tr.count):
                slot = <Py_ssize_t>(tr.sequences[row] - first_sequence)
                if 0 <= slot < count:
                    order[slot].type_index = <int>i + 1
                    order[slot].row = <int>row
        for slot in range(count):
            if order[slot].type_index == 0:
                continue
            i = order[slot].type_index - 1
            tr = &types[i]
            row_ptr = tr.rows + order[slot].row * tr.itemsize
            if raw[i] != NULL:
                value = PyBytes_FromStringAndSize(
                    <const char*> raw[i] + order[slot].row * (tr.itemsize) + 2, tr.itemsize - 2)
            else:
                value = PyBytes_FromStringAndSize(<const char*> row_ptr, tr.itemsize)
            record = {"value": value, "key": keys[load_u16(row_ptr + _LOCATE_OFFSET)]}
            if with_metadata:
                record["timestamp"] = timestamp_base_ms + <int64_t>(
                    load_u64(row_ptr + _TIMESTAMP_OFFSET) // 1_000_000)
                record["type"] = PyBytes_FromStringAndSize(<const char*> row_ptr, 1)
                record["sequence"] = first_sequence + slot
            (<list> out[tr.topic]).append(record)
        return out
    finally:
        free(types)
        free(order)
        free(raw)


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
    cdef uint32_t* partition_of = NULL
    cdef Py_ssize_t* fill = <Py_ssize_t*> calloc(partitions, sizeof(Py_ssize_t))
    cdef char** out = <char**> calloc(partitions, sizeof(char*))
    cdef dict result = {}
    cdef uint32_t p
    cdef cnp.ndarray records, sequences
    try:
        if partitions < 1 or key_hashes.shape[0] != _LOCATES:
            raise ValueError("group_rows needs partitions >= 1 and a hash per stock locate")
        if rows == NULL or seqs == NULL or counts == NULL or fill == NULL or out == NULL:
            raise MemoryError()
        for k in range(n_parts):
            records, sequences = parts[k]
            if not (records.flags.c_contiguous and sequences.flags.c_contiguous) \
                    or sequences.shape[0] != records.shape[0] or sequences.dtype != np.uint64 \
                    or (k and records.dtype.itemsize != itemsize):
                raise ValueError("group_rows needs matching contiguous arrays of one type")
            itemsize = records.dtype.itemsize
            rows[k] = <const uint8_t*> cnp.PyArray_DATA(records)
            seqs[k] = <const uint64_t*> cnp.PyArray_DATA(sequences)
            counts[k] = records.shape[0]
            n += counts[k]
        width = 8 + itemsize
        partition_of = <uint32_t*> malloc(max(n, 1) * sizeof(uint32_t))
        if partition_of == NULL:
            raise MemoryError()
        with nogil:
            at = 0
            for k in range(n_parts):
                for i in range(counts[k]):
                    p = (key_hashes[load_u16(rows[k] + i * itemsize + _LOCATE_OFFSET)]
                         & 0x7FFFFFFF) % <uint32_t>partitions
                    partition_of[at] = p
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
                    p = partition_of[at]
                    memcpy(out[p] + fill[p] * width, &seqs[k][i], 8)
                    memcpy(out[p] + fill[p] * width + 8, rows[k] + i * itemsize, itemsize)
                    fill[p] += 1
                    at += 1
        return result
    finally:
        free(rows)
        free(seqs)
        free(counts)
        free(partition_of)
        free(fill)
        free(out)

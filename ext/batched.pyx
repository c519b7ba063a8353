# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The batched value format's rows for one release of held packets, in one call.

A release holds tens of packets, each with up to 23 message types: grouping them type by type
from Python cost a dict look-up, a list and array checks per (packet, type), more than moving
the rows. Here the packets' arrays are collected once, every row's partition is computed and
the rows are scattered into one bytes object per (message type, partition), both loops
without the GIL.

Layout (docs/kafka.md): each row is the tick's sequence number (u64, little-endian) followed by
the message's struct; routing.BATCH_DTYPES is the one definition, the tests hold the rows built
here against it.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy

cimport numpy as cnp

from tick_order cimport LOCATE_OFFSET, LOCATES, locate_of, partition_of

cnp.import_array()

cdef enum:
    SEQUENCE_BYTES = 8
    TYPE_CODES = 256            # a message type is one byte


# One packet's rows of one message type.
cdef struct Part:
    const uint8_t* rows
    const uint64_t* sequences
    Py_ssize_t count
    int type_slot


# One message type of the release, in order of first appearance.
cdef struct TypeGroup:
    Py_ssize_t itemsize
    int32_t partitions
    Py_ssize_t first_out       # index of its first (type, partition) output in `fill`/`out`


cdef int add_part(Part** parts, Py_ssize_t* n, Py_ssize_t* capacity, const uint8_t* rows,
                  const uint64_t* sequences, Py_ssize_t count, int slot) except -1:
    cdef Part* grown
    if n[0] == capacity[0]:
        capacity[0] = max(64, 2 * capacity[0])
        grown = <Part*> realloc(parts[0], capacity[0] * sizeof(Part))
        if grown == NULL:
            raise MemoryError()
        parts[0] = grown
    parts[0][n[0]].rows = rows
    parts[0][n[0]].sequences = sequences
    parts[0][n[0]].count = count
    parts[0][n[0]].type_slot = slot
    n[0] += 1
    return 0


def release_rows(list packets, dict topic_of_type, dict partitions,
                 const uint32_t[::1] key_hashes):
    """[(topic, partition, message type, rows)] for `packets` (consecutive, in feed order): one
    bytes object per message type and partition, each row the tick's sequence number then its
    struct, rows in feed order. Types come in order of first appearance, each type's partitions
    in ascending order.

    Type t goes to `topic_of_type[t]`, which has `partitions[topic]` partitions;
    `key_hashes[locate]` is the murmur2 hash of that stock locate's record key (partition:
    positive hash modulo count)."""
    cdef Part* parts = NULL
    cdef Py_ssize_t n_parts = 0, capacity = 0, n_rows = 0, n_out = 0, i, k, at, width
    cdef TypeGroup groups[TYPE_CODES]
    cdef int slot_of_code[TYPE_CODES]
    cdef list type_keys = [], type_topics = []
    cdef int n_types = 0, slot, code
    cdef int32_t p, count
    cdef Py_ssize_t* fill = NULL
    cdef char** out = NULL
    cdef int32_t* row_partition = NULL
    cdef const Part* part
    cdef const TypeGroup* group
    cdef cnp.ndarray records, sequences
    cdef list result = []
    cdef list arrays = []       # keeps every array read here alive until the rows are copied
    if key_hashes.shape[0] != LOCATES:
        raise ValueError(f"release_rows needs a key hash per stock locate ({LOCATES})")
    for code in range(TYPE_CODES):
        slot_of_code[code] = -1
    try:
        for packet in packets:
            sequences_of = packet.sequences
            for message_type, records in packet.messages.items():
                sequences = sequences_of[message_type]
                code = ord(message_type)
                if code >= TYPE_CODES:
                    raise ValueError(f"release_rows: {message_type!r} is not a message type")
                if cnp.PyArray_NDIM(records) != 1 or cnp.PyArray_NDIM(sequences) != 1 \
                        or sequences.shape[0] != records.shape[0] \
                        or cnp.PyArray_TYPE(sequences) != cnp.NPY_UINT64 \
                        or not (cnp.PyArray_IS_C_CONTIGUOUS(records)
                                and cnp.PyArray_IS_C_CONTIGUOUS(sequences)) \
                        or cnp.PyArray_ITEMSIZE(records) < LOCATE_OFFSET + 2:
                    raise ValueError(f"release_rows: {message_type!r} rows and sequences "
                                     "do not match or are too small for a locate code")
                slot = slot_of_code[code]
                if slot < 0:
                    topic = topic_of_type[message_type]
                    count = partitions[topic]
                    if count < 1:
                        raise ValueError(f"release_rows: {message_type!r} has no partitions")
                    slot = slot_of_code[code] = n_types
                    groups[slot].itemsize = cnp.PyArray_ITEMSIZE(records)
                    groups[slot].partitions = count
                    groups[slot].first_out = n_out
                    n_out += count
                    type_keys.append(message_type)
                    type_topics.append(topic)
                    n_types += 1
                elif cnp.PyArray_ITEMSIZE(records) != groups[slot].itemsize:
                    raise ValueError(f"release_rows: {message_type!r} rows of two sizes")
                arrays.append(records)
                arrays.append(sequences)
                if records.shape[0]:
                    add_part(&parts, &n_parts, &capacity,
                             <const uint8_t*> cnp.PyArray_DATA(records),
                             <const uint64_t*> cnp.PyArray_DATA(sequences),
                             records.shape[0], slot)
                    n_rows += records.shape[0]
        fill = <Py_ssize_t*> calloc(max(n_out, 1), sizeof(Py_ssize_t))
        out = <char**> calloc(max(n_out, 1), sizeof(char*))
        row_partition = <int32_t*> malloc(max(n_rows, 1) * sizeof(int32_t))
        if fill == NULL or out == NULL or row_partition == NULL:
            raise MemoryError()
        with nogil:
            at = 0
            for k in range(n_parts):
                part = &parts[k]
                group = &groups[part.type_slot]
                for i in range(part.count):
                    p = partition_of(key_hashes[locate_of(part.rows + i * group.itemsize)],
                                     group.partitions)
                    row_partition[at] = p
                    fill[group.first_out + p] += 1
                    at += 1
        for slot in range(n_types):
            group = &groups[slot]
            width = SEQUENCE_BYTES + group.itemsize
            for p in range(group.partitions):
                k = group.first_out + p
                if fill[k]:
                    rows = PyBytes_FromStringAndSize(NULL, fill[k] * width)
                    out[k] = PyBytes_AS_STRING(rows)
                    result.append((type_topics[slot], p, type_keys[slot], rows))
        with nogil:
            at = 0
            for k in range(n_parts):
                part = &parts[k]
                group = &groups[part.type_slot]
                width = SEQUENCE_BYTES + group.itemsize
                for i in range(part.count):
                    p = row_partition[at]
                    memcpy(out[group.first_out + p], &part.sequences[i], SEQUENCE_BYTES)
                    memcpy(out[group.first_out + p] + SEQUENCE_BYTES,
                           part.rows + i * group.itemsize, group.itemsize)
                    out[group.first_out + p] += width
                    at += 1
        return result
    finally:
        free(parts)
        free(fill)
        free(out)
        free(row_partition)

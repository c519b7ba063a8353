# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The batched path's C routines: a release's rows, and the stock names packets reveal, each in
one call for many packets, read where decoding left the rows (wire._decode.type_parts), so the
packets' numpy arrays are never made.

A release holds tens of packets, each with up to 23 message types: grouping them type by type
from Python cost a dict look-up, a list and array checks per (packet, type), more than moving
the rows. Here the packets' rows are collected once, every row's partition is computed and
the rows are scattered into one bytes object per (message type, partition), both loops
without the GIL.

Layout (docs/kafka.md): each row is the tick's sequence number (u64, little-endian) followed by
the message's struct; routing.BATCH_DTYPES is the one definition, the tests hold the rows built
here against it.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset

from feedhandler.wire._decode cimport TypePart, type_parts
from stock_names cimport name_rows
from tick_order cimport LOCATE_OFFSET, LOCATES, MAX_TYPES, locate_of, partition_of


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
    Py_ssize_t memo_at          # where its partition count's row starts in the release's memo


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
    cdef Py_ssize_t n_parts = 0, capacity = 0, n_out = 0, i, k, width
    cdef TypeGroup groups[TYPE_CODES]
    cdef int slot_of_code[TYPE_CODES]
    cdef list type_keys = [], type_topics = []
    cdef int n_types = 0, slot, code
    cdef int32_t p, count
    cdef Py_ssize_t* fill = NULL
    cdef char** out = NULL
    # A row's partition costs a division (hash modulo count): it is taken once per locate and
    # partition count, the first time a release meets them, and looked up after that (in both
    # passes: the second looks again rather than keep a partition per row).
    cdef int32_t* memo = NULL
    cdef int32_t memo_counts[TYPE_CODES]
    cdef int n_memos = 0, m
    cdef uint16_t locate
    cdef const Part* part
    cdef const TypeGroup* group
    cdef TypePart packet_parts[MAX_TYPES]
    cdef Py_ssize_t n_packet_parts
    cdef list result = []
    if key_hashes.shape[0] != LOCATES:
        raise ValueError(f"release_rows needs a key hash per stock locate ({LOCATES})")
    for code in range(TYPE_CODES):
        slot_of_code[code] = -1
    try:
        for packet in packets:
            n_packet_parts = type_parts(packet, packet_parts)
            for k in range(n_packet_parts):
                code = packet_parts[k].type_code
                slot = slot_of_code[code]
                if slot < 0:
                    message_type = chr(code)
                    topic = topic_of_type[message_type]
                    count = partitions[topic]
                    if count < 1:
                        raise ValueError(f"release_rows: {message_type!r} has no partitions")
                    slot = slot_of_code[code] = n_types
                    groups[slot].itemsize = packet_parts[k].itemsize
                    groups[slot].partitions = count
                    groups[slot].first_out = n_out
                    n_out += count
                    type_keys.append(message_type)
                    type_topics.append(topic)
                    n_types += 1
                elif packet_parts[k].itemsize != groups[slot].itemsize:
                    raise ValueError(f"release_rows: {chr(code)!r} rows of two sizes")
                if packet_parts[k].count:
                    add_part(&parts, &n_parts, &capacity, packet_parts[k].rows,
                             packet_parts[k].sequences, packet_parts[k].count, slot)
        fill = <Py_ssize_t*> calloc(max(n_out, 1), sizeof(Py_ssize_t))
        out = <char**> calloc(max(n_out, 1), sizeof(char*))
        for slot in range(n_types):
            m = 0
            while m < n_memos and memo_counts[m] != groups[slot].partitions:
                m += 1
            if m == n_memos:
                memo_counts[n_memos] = groups[slot].partitions
                n_memos += 1
            groups[slot].memo_at = m * LOCATES
        memo = <int32_t*> malloc(max(n_memos, 1) * LOCATES * sizeof(int32_t))
        if fill == NULL or out == NULL or memo == NULL:
            raise MemoryError()
        memset(memo, 0xFF, n_memos * LOCATES * sizeof(int32_t))      # -1: not taken yet
        with nogil:
            for k in range(n_parts):
                part = &parts[k]
                group = &groups[part.type_slot]
                for i in range(part.count):
                    locate = locate_of(part.rows + i * group.itemsize)
                    p = memo[group.memo_at + locate]
                    if p < 0:
                        p = memo[group.memo_at + locate] = partition_of(key_hashes[locate],
                                                                        group.partitions)
                    fill[group.first_out + p] += 1
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
            for k in range(n_parts):
                part = &parts[k]
                group = &groups[part.type_slot]
                width = SEQUENCE_BYTES + group.itemsize
                for i in range(part.count):
                    p = memo[group.memo_at + locate_of(part.rows + i * group.itemsize)]
                    memcpy(out[group.first_out + p], &part.sequences[i], SEQUENCE_BYTES)
                    memcpy(out[group.first_out + p] + SEQUENCE_BYTES,
                           part.rows + i * group.itemsize, group.itemsize)
                    out[group.first_out + p] += width
        return result
    finally:
        free(parts)
        free(fill)
        free(out)
        free(memo)


def unknown_stocks(list packets, tuple stock_fields, uint8_t[::1] known):
    """The stock names `packets` reveal for locates not `known` yet, as `_records.unknown_stocks`
    finds them in one packet's arrays, applied to each packet in turn (the names of one count
    as known for the next): [(locate, name)] in the order they are to be applied."""
    cdef list named = []
    cdef TypePart parts[MAX_TYPES]
    cdef Py_ssize_t offset_of[TYPE_CODES]
    cdef uint8_t order[TYPE_CODES]
    cdef int part_of[TYPE_CODES]
    cdef Py_ssize_t n_parts, n_fields = 0, i, k, offset
    cdef const TypePart* part
    cdef uint8_t code
    if known.shape[0] != LOCATES:
        raise ValueError(f"known must have one entry per stock locate ({LOCATES})")
    if len(stock_fields) > TYPE_CODES:
        raise ValueError("more stock fields than message types")
    for message_type, offset in stock_fields:
        if offset < LOCATE_OFFSET + 2:
            raise ValueError(f"{message_type}: a stock field cannot overlap the locate code")
        order[n_fields] = ord(message_type)
        offset_of[order[n_fields]] = offset
        n_fields += 1
    for i in range(TYPE_CODES):
        part_of[i] = -1
    for packet in packets:
        n_parts = type_parts(packet, parts)
        for k in range(n_parts):
            part_of[parts[k].type_code] = <int> k
        for i in range(n_fields):
            code = order[i]
            if part_of[code] < 0:
                continue
            part = &parts[part_of[code]]
            offset = offset_of[code]
            if offset + 8 > part.itemsize:
                raise ValueError(f"{chr(code)}: rows too small for their stock field")
            name_rows(named, part.rows, part.count, part.itemsize, offset, &known[0])
        for k in range(n_parts):
            part_of[parts[k].type_code] = -1
    return named

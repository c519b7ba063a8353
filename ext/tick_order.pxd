# A decoded packet's ticks in feed order, for the per-tick record builders (records.pyx builds
# produce_batch dicts, producer_link.pyx hands librdkafka C messages).
#
# Decoding groups rows by message type; per-symbol order in Kafka needs them back in sequence
# order. Slot k of the packet holds message k; quarantined messages leave their slot empty.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
cimport numpy as cnp

cdef enum:
    LOCATES = 65536
    TIMESTAMP_OFFSET = 5        # struct offset of `timestamp` (checked by ext/decode.pyx)
    LOCATE_OFFSET = 1
    MAX_TYPES = 24              # the 23 ITCH 5.0 message types, rounded up


cdef struct TypeRows:
    const uint8_t* rows         # the packed structs
    const uint64_t* sequences
    const uint8_t* raw          # the same messages in NASDAQ file framing, or NULL
    Py_ssize_t count
    Py_ssize_t itemsize         # also the stride of `raw`: 2-byte length + wire message
    int topic


cdef struct TickSlot:
    int type_index              # 1 + index into the packet's TypeRows; 0 marks an empty slot
    int row


cdef inline uint16_t locate_of(const uint8_t* row) noexcept nogil:
    cdef uint16_t locate
    memcpy(&locate, row + LOCATE_OFFSET, 2)
    return locate


cdef inline int32_t partition_of(uint32_t key_hash, int32_t partitions) noexcept nogil:
    """As Kafka's default partitioner and librdkafka's murmur2_random: positive murmur2 modulo
    the partition count."""
    return <int32_t>((key_hash & 0x7FFFFFFF) % <uint32_t>partitions)


cdef inline int64_t record_timestamp_ms(const uint8_t* row, int64_t base_ms) noexcept nogil:
    """A tick's Kafka record timestamp: `base_ms` (midnight of the trade date) plus the ITCH
    time, nanoseconds since midnight."""
    cdef uint64_t nanoseconds
    memcpy(&nanoseconds, row + TIMESTAMP_OFFSET, 8)
    return base_ms + <int64_t>(nanoseconds // 1_000_000)


cdef inline Py_ssize_t load_types(dict messages, dict sequences, dict topic_of_type,
                                  Py_ssize_t topics, dict raw_blocks, TypeRows* types,
                                  Py_ssize_t capacity) except -1:
    """Fill `types` from a Packet's arrays (and `raw_blocks[type]` bytes when given); return
    how many. The arrays must stay alive while `types` is used."""
    cdef Py_ssize_t n = 0
    cdef cnp.ndarray records, seqs
    cdef bytes raw
    for message_type, records in messages.items():
        seqs = sequences[message_type]
        if n == capacity:
            raise ValueError("more message types than slots")
        if seqs.shape[0] != records.shape[0] or cnp.PyArray_TYPE(seqs) != cnp.NPY_UINT64 \
                or not (cnp.PyArray_IS_C_CONTIGUOUS(records)
                        and cnp.PyArray_IS_C_CONTIGUOUS(seqs)):
            raise ValueError(f"{message_type}: records and sequences do not match")
        if cnp.PyArray_ITEMSIZE(records) < TIMESTAMP_OFFSET + 8:
            raise ValueError(f"{message_type}: records too small to hold a locate and a time")
        if not 0 <= topic_of_type[message_type] < topics:
            raise ValueError(f"{message_type}: topic index out of range")
        types[n].rows = <const uint8_t*> cnp.PyArray_DATA(records)
        types[n].sequences = <const uint64_t*> cnp.PyArray_DATA(seqs)
        types[n].count = records.shape[0]
        types[n].itemsize = cnp.PyArray_ITEMSIZE(records)
        types[n].topic = topic_of_type[message_type]
        types[n].raw = NULL
        if raw_blocks is not None:
            raw = raw_blocks[message_type]
            if len(raw) != types[n].count * types[n].itemsize:
                raise ValueError(f"{message_type}: raw block does not match its records")
            types[n].raw = <const uint8_t*> (<char*> raw)
        n += 1
    return n


cdef inline void order_ticks(const TypeRows* types, Py_ssize_t n_types, uint64_t first_sequence,
                             Py_ssize_t count, TickSlot* order) noexcept nogil:
    """`order` (count slots, zeroed) gets each tick's type and row at its place in the packet."""
    cdef Py_ssize_t i, row, slot
    for i in range(n_types):
        for row in range(types[i].count):
            slot = <Py_ssize_t>(types[i].sequences[row] - first_sequence)
            if 0 <= slot < count:
                order[slot].type_index = <int>i + 1
                order[slot].row = <int>row

# Portable big/little-endian loads from unaligned bytes. Written as shifts (not casts) so they
# are correct on any host and alignment; gcc and clang compile them to a single load + bswap.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef inline uint16_t load_be16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t load_be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) |
            (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline uint64_t load_be48(const uint8_t* p) noexcept nogil:
    return (<uint64_t>load_be16(p) << 32) | load_be32(p + 2)


cdef inline uint64_t load_be64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>load_be32(p) << 32) | load_be32(p + 4)


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) |
            (<uint32_t>p[1] << 8) | <uint32_t>p[0])

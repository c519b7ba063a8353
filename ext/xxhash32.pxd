# XXH32 (xxHash, 32-bit, seed 0 in feedhandler): the frame checksum of the uncompressed packet.
# Chosen over CRC32 because it runs several GB/s per core in portable C, so checking every frame
# costs a small fraction of the decode budget; tests compare it with the `xxhash` package.
# Kept inline in a .pxd so each extension module that needs it compiles it in, with no
# cross-module C API.

from libc.stdint cimport uint8_t, uint32_t
from byteorder cimport load_le32

cdef enum:
    XXH_PRIME1 = 0x9E3779B1
    XXH_PRIME2 = 0x85EBCA77
    XXH_PRIME3 = 0xC2B2AE3D
    XXH_PRIME4 = 0x27D4EB2F
    XXH_PRIME5 = 0x165667B1


cdef inline uint32_t _rotl32(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef inline uint32_t _xxh32_round(uint32_t acc, uint32_t lane) noexcept nogil:
    acc = acc + lane * <uint32_t>XXH_PRIME2
    return _rotl32(acc, 13) * <uint32_t>XXH_PRIME1


cdef inline uint32_t xxh32(const uint8_t* p, size_t n, uint32_t seed) noexcept nogil:
    cdef const uint8_t* end = p + n
    cdef uint32_t v1, v2, v3, v4, h
    if n >= 16:
        v1 = seed + <uint32_t>XXH_PRIME1 + <uint32_t>XXH_PRIME2
        v2 = seed + <uint32_t>XXH_PRIME2
        v3 = seed
        v4 = seed - <uint32_t>XXH_PRIME1
        while end - p >= 16:
            v1 = _xxh32_round(v1, load_le32(p))
            v2 = _xxh32_round(v2, load_le32(p + 4))
            v3 = _xxh32_round(v3, load_le32(p + 8))
            v4 = _xxh32_round(v4, load_le32(p + 12))
            p += 16
        h = _rotl32(v1, 1) + _rotl32(v2, 7) + _rotl32(v3, 12) + _rotl32(v4, 18)
    else:
        h = seed + <uint32_t>XXH_PRIME5
    h += <uint32_t>n
    while end - p >= 4:
        h = _rotl32(h + load_le32(p) * <uint32_t>XXH_PRIME3, 17) * <uint32_t>XXH_PRIME4
        p += 4
    while p < end:
        h = _rotl32(h + p[0] * <uint32_t>XXH_PRIME5, 11) * <uint32_t>XXH_PRIME1
        p += 1
    h ^= h >> 15
    h *= <uint32_t>XXH_PRIME2
    h ^= h >> 13
    h *= <uint32_t>XXH_PRIME3
    h ^= h >> 16
    return h

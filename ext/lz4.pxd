# The two liblz4 block-format calls feedhandler needs (system liblz4, e.g. Debian's liblz4-dev).

cdef extern from "lz4.h" nogil:
    int LZ4_decompress_safe(const char* src, char* dst, int compressed_size, int dst_capacity)
    int LZ4_versionNumber()

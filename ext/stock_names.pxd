# The stock names rows reveal, for StockDirectory: records.pyx finds them in one packet's
# arrays, batched.pyx in a release's packets where decoding left them.

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t

from tick_order cimport locate_of


cdef inline int name_rows(list named, const uint8_t* rows, Py_ssize_t count,
                          Py_ssize_t itemsize, Py_ssize_t offset, uint8_t* known) except -1:
    """Append (locate, name) to `named` for each of `count` rows whose locate is not `known`
    (a later row of the same locate comes later, and wins), then mark those locates known. A
    name is the 8-byte field at `offset` without trailing NULs, then without trailing spaces
    (as numpy's bytes of the field, `rstrip(b" ")`). The caller checks that the field lies
    inside the row."""
    cdef Py_ssize_t i, length, start = len(named)
    cdef const uint8_t* stock
    cdef uint16_t locate
    for i in range(count):
        locate = locate_of(rows + i * itemsize)
        if known[locate]:
            continue
        stock = rows + i * itemsize + offset
        length = 8
        while length and stock[length - 1] == 0:
            length -= 1
        while length and stock[length - 1] == 0x20:
            length -= 1
        named.append((locate, PyBytes_FromStringAndSize(<const char*> stock, length)))
    for i in range(start, len(named)):
        known[<uint16_t> named[i][0]] = 1
    return 0

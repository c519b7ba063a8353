# What ext/decode.pyx (the module feedhandler.wire._decode) shares with other extensions: where
# a decoded packet's rows are, so that code on the batched path reads them in C without the
# numpy arrays `Packet.messages` makes. Cython finds a module's own declarations, and those
# another module cimports, by the module's full name: hence this path under ext/ (an include
# directory), which mirrors the package.

from libc.stdint cimport uint8_t, uint64_t


cdef struct TypePart:
    # One message type's rows in one packet, valid while the packet lives and its `messages`
    # and `sequences` dicts are left as they are.
    const uint8_t* rows
    const uint64_t* sequences
    Py_ssize_t count
    Py_ssize_t itemsize
    uint8_t type_code


cdef Py_ssize_t type_parts(object packet, TypePart* parts) except -1

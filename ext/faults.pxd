# The decoder's fault codes, defined once in faults.h: enumerators, stable names and texts come
# from one list there. Declared here by name (Cython needs the names; the C compiler checks each
# against faults.h), without the FAULT_ prefix: use them as `faults.CHECKSUM_MISMATCH`.

cdef extern from "faults.h" nogil:
    ctypedef enum Fault:
        OK                            "FAULT_OK"
        FRAME_TOO_SHORT               "FAULT_FRAME_TOO_SHORT"
        FRAME_LENGTH_MISMATCH         "FAULT_FRAME_LENGTH_MISMATCH"
        FRAME_TOO_LARGE               "FAULT_FRAME_TOO_LARGE"
        BAD_FRAME_TYPE                "FAULT_BAD_FRAME_TYPE"
        BAD_VERSION                   "FAULT_BAD_VERSION"
        BAD_CODEC                     "FAULT_BAD_CODEC"
        BAD_FLAGS                     "FAULT_BAD_FLAGS"
        PACKET_TOO_LARGE              "FAULT_PACKET_TOO_LARGE"
        LZ4_CORRUPT                   "FAULT_LZ4_CORRUPT"
        UNCOMPRESSED_LENGTH_MISMATCH  "FAULT_UNCOMPRESSED_LENGTH_MISMATCH"
        CHECKSUM_MISMATCH             "FAULT_CHECKSUM_MISMATCH"
        PACKET_TOO_SHORT              "FAULT_PACKET_TOO_SHORT"
        SEQUENCE_OVERFLOW             "FAULT_SEQUENCE_OVERFLOW"
        COUNT_MISMATCH                "FAULT_COUNT_MISMATCH"
        MESSAGE_TRUNCATED             "FAULT_MESSAGE_TRUNCATED"
        EMPTY_MESSAGE                 "FAULT_EMPTY_MESSAGE"
        UNKNOWN_TYPE                  "FAULT_UNKNOWN_TYPE"
        BAD_MESSAGE_LENGTH            "FAULT_BAD_MESSAGE_LENGTH"
        TIMESTAMP_OUT_OF_DAY          "FAULT_TIMESTAMP_OUT_OF_DAY"
        BAD_SIDE                      "FAULT_BAD_SIDE"
        BAD_STOCK                     "FAULT_BAD_STOCK"
        OUT_OF_MEMORY                 "FAULT_OUT_OF_MEMORY"
        BUFFER_CHANGED                "FAULT_BUFFER_CHANGED"
        COUNT                         "FAULT_COUNT"    # how many there are, not a fault

    const char* const NAMES "FAULT_NAMES"[]     # by enumerator: "CHECKSUM_MISMATCH"
    const char* const TEXTS "FAULT_TEXTS"[]     # by enumerator: "checksum mismatch"

# The feed frame header and the MoldUDP64 downstream packet header as packed C structs: the one
# definition of both layouts, and the constants that go with them (docs/protocol.md, "Frames").
#
# Wire integers are big-endian, so every multi-byte integer field is declared as a byte array:
# C code can only read it through byteorder.load_be*, never as a wrong-endian native integer.
# decode.pyx derives from these declarations the sizes, field offsets and `struct` formats it
# exports to Python (feedhandler.wire.packet builds and reads headers with those formats).

from libc.stdint cimport uint8_t


cdef packed struct FrameHeader:
    uint8_t frame_length[4]         # u32: bytes after this field
    uint8_t frame_type              # FRAME_TYPE_SEQUENCED
    uint8_t version                 # FRAME_VERSION
    uint8_t codec                   # CODEC_NONE or CODEC_LZ4
    uint8_t flags                   # reserved, 0
    uint8_t uncompressed_length[4]  # u32: length of the MoldUDP64 packet before compression
    uint8_t checksum[4]             # u32: XXH32 (seed 0) of the uncompressed MoldUDP64 packet

cdef packed struct PacketHeader:
    char session[10]                # ASCII, space padded
    uint8_t sequence_number[8]      # u64: sequence number of the packet's first message
    uint8_t message_count[2]        # u16: HEARTBEAT_COUNT, END_OF_SESSION_COUNT or messages


cdef enum:
    FRAME_TYPE_SEQUENCED = 0x53     # 'S'
    FRAME_VERSION = 1
    CODEC_NONE = 0
    CODEC_LZ4 = 1                   # LZ4 block format, no frame header
    HEARTBEAT_COUNT = 0
    END_OF_SESSION_COUNT = 0xFFFF
    # The largest legal MoldUDP64 packet is 20 + 65534 * (2 + 50) bytes (~3.4 MB); the caps bound
    # every allocation a hostile length field can ask for.
    MAX_PACKET_LENGTH = 1 << 22
    MAX_FRAME_LENGTH = 1 << 23

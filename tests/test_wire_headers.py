"""The frame header and the MoldUDP64 packet header are declared once (ext/frame_layout.pxd):
the structs as the C compiler lays them out, the constants Python gets from them and the tables
of docs/protocol.md agree."""

import re
import struct
from pathlib import Path

import pytest

from feedhandler.session import protocol as sessionproto
from feedhandler.wire import _decode, packet
from streams import SESSION

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
HEADERS = {"frame": packet.FRAME_HEADER_FIELDS, "packet": packet.PACKET_HEADER_FIELDS}
SIZES = {"frame": packet.FRAME_HEADER_SIZE, "packet": packet.PACKET_HEADER_SIZE}


def doc_table(heading: str) -> list[tuple[int, int, str, str]]:
    """(offset, size, field, value) rows of the first table after `heading` in protocol.md."""
    section = DOC[DOC.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        match = re.match(r"\| (\d+) \| (\d+|\.\.\.|n) \| ([^|]+) \| ([^|]*) \|$", line)
        if match:
            offset, size, field, value = match.groups()
            rows.append((int(offset), int(size) if size.isdigit() else None, field.strip(),
                         value.strip()))
    return rows


@pytest.mark.parametrize("header", ["frame", "packet"])
def test_fields_sit_where_the_c_compiler_puts_them(header):
    fields = HEADERS[header]
    assert {name: field.offset for name, field in fields.items()} == \
        _decode._header_offsets()[header]
    assert sum(field.size for field in fields.values()) == SIZES[header]
    for field in fields.values():
        assert struct.calcsize(">" + field.format) == field.size, field.name
    assert struct.calcsize(_decode.FRAME_HEADER_FORMAT if header == "frame"
                           else _decode.PACKET_HEADER_FORMAT) == SIZES[header]


def test_frame_table_of_the_doc_is_the_struct():
    rows = doc_table("## Frames")
    fields = packet.FRAME_HEADER_FIELDS.values()
    assert [row[:3] for row in rows[:len(fields)]] == \
        [(f.offset, f.size, f"`{f.name}`") for f in fields]
    after = rows[len(fields):]
    assert after[0][:3] == (packet.FRAME_HEADER_SIZE, packet.PACKET_HEADER_SIZE, "packet header")
    assert after[1][0] == packet.FRAME_HEADER_SIZE + packet.PACKET_HEADER_SIZE
    values = {row[2]: row[3] for row in rows}
    assert f"(0x{_decode.FRAME_TYPE_SEQUENCED:02x})" in values["`frame_type`"]
    assert values["`version`"] == str(_decode.FRAME_VERSION)
    assert values["`codec`"].startswith(
        ", ".join(f"{value} = `{name}`" for name, value in packet.CODECS.items()))
    length_field = packet.FRAME_HEADER_FIELDS["frame_length"].size
    assert f"({packet.FRAME_HEADER_SIZE} - {length_field} + payload length)" in \
        values["`frame_length`"]


def test_packet_table_of_the_doc_is_the_struct():
    rows = doc_table("## MoldUDP64 downstream packet")
    fields = packet.PACKET_HEADER_FIELDS.values()
    assert [row[:3] for row in rows[:len(fields)]] == \
        [(f.offset, f.size, f"`{f.name}`") for f in fields]
    assert rows[len(fields)][0] == packet.PACKET_HEADER_SIZE
    count = dict((row[2], row[3]) for row in rows)["`message_count`"]
    assert f"{packet.HEARTBEAT_COUNT} = heartbeat" in count
    assert f"0x{packet.END_OF_SESSION_COUNT:X} = end of session" in count


def test_limits_in_the_doc_are_the_constants():
    assert packet.MAX_FRAME_LENGTH == 8 << 20 and packet.MAX_PACKET_LENGTH == 4 << 20
    assert "`frame_length` at most 8 MiB" in DOC
    assert "`uncompressed_length` at most 4 MiB" in DOC
    assert "at most `MAX_FRAME_LENGTH` (8 MiB)" in DOC
    # The largest legal MoldUDP64 packet must fit: 65,534 messages of at most 52 framed bytes.
    assert packet.PACKET_HEADER_SIZE + 65_534 * 52 <= packet.MAX_PACKET_LENGTH


def test_python_names_come_from_the_structs():
    assert packet.SESSION_LENGTH == packet.PACKET_HEADER_FIELDS["session"].size == len(SESSION)
    assert sessionproto.SESSION_LENGTH == packet.SESSION_LENGTH
    assert sessionproto.MIN_DATA_FRAME_LENGTH == packet.FRAME_HEADER_SIZE \
        + packet.PACKET_HEADER_SIZE - packet.FRAME_HEADER_FIELDS["frame_length"].size
    frame = packet.encode([b"D" + bytes(18)], session=SESSION, sequence=77, codec="none")
    header = dict(zip(packet.FRAME_HEADER_FIELDS,
                      struct.unpack_from(_decode.FRAME_HEADER_FORMAT, frame)))
    assert header == {"frame_length": len(frame) - 4, "frame_type": ord("S"), "version": 1,
                      "codec": packet.CODECS["none"], "flags": 0,
                      "uncompressed_length": len(frame) - packet.FRAME_HEADER_SIZE,
                      "checksum": _decode.frame_checksum(frame[packet.FRAME_HEADER_SIZE:])}
    assert packet.peek(frame) == (SESSION, 77, 1)

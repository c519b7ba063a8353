"""MoldUDP64 1.00 packets (feedhandler.wire.moldudp): golden byte vectors written by hand from
the specification's field tables (session: 10 bytes alphanumeric, sequence number: 8 bytes
big-endian, message count: 2 bytes big-endian; message block: 2-byte big-endian length then the
message; count 0 = heartbeat, 0xFFFF = end of session; a request is session, sequence number and
requested message count), round trips, the checks on received datagrams, the docs' worked
example, and Wireshark's dissector reading what the simulator and the handler sent."""

import re
from pathlib import Path

import pytest

from feedhandler.wire import moldudp, packet

ROOT = Path(__file__).resolve().parent.parent
SESSION = b"NASDAQ0001"
# Two ITCH system event messages ('S', locate 0, tracking 0, 6-byte timestamp, event code).
START_OF_MESSAGES = bytes.fromhex("53 0000 0000 000000000001 4f")
START_OF_HOURS = bytes.fromhex("53 0000 0000 000000000002 53")

DATA = bytes.fromhex(
    "4e41534441513030 3031"         # session "NASDAQ0001"
    "00000000000003e8"              # sequence number 1000
    "0002"                          # message count 2
    "000c 53 0000 0000 000000000001 4f"     # block 1: length 12, system event 'O'
    "000c 53 0000 0000 000000000002 53")    # block 2: length 12, system event 'S'
HEARTBEAT = bytes.fromhex("4e415344415130303031 00000000000003ea 0000")
END_OF_SESSION = bytes.fromhex("4e415344415130303031 00000000000003ea ffff")
REQUEST = bytes.fromhex("4e415344415130303031 00000000000003e8 0005")


def test_the_header_is_the_one_declared_in_frame_layout():
    fields = packet.PACKET_HEADER_FIELDS
    assert moldudp.HEADER_SIZE == packet.PACKET_HEADER_SIZE == 20
    assert [(f.name, f.offset, f.size) for f in fields.values()] == [
        ("session", 0, 10), ("sequence_number", 10, 8), ("message_count", 18, 2)]
    assert moldudp.REQUEST_SIZE == moldudp.HEADER_SIZE


def test_downstream_data_packet_golden_bytes():
    assert moldudp.downstream(SESSION, 1000, [START_OF_MESSAGES, START_OF_HOURS]) == DATA
    assert moldudp.header(DATA) == (SESSION, 1000, 2)
    moldudp.check_blocks(DATA, len(DATA), 2)


def test_heartbeat_end_of_session_and_request_golden_bytes():
    assert moldudp.heartbeat(SESSION, 1002) == HEARTBEAT
    assert moldudp.end_of_session(SESSION, 1002) == END_OF_SESSION
    assert moldudp.request(SESSION, 1000, 5) == REQUEST
    assert moldudp.parse_request(REQUEST) == (SESSION, 1000, 5)
    assert moldudp.header(END_OF_SESSION)[2] == packet.END_OF_SESSION_COUNT
    for control in (HEARTBEAT, END_OF_SESSION):
        moldudp.check_blocks(control, len(control), moldudp.header(control)[2])


def test_a_wrapped_datagram_decodes_to_its_messages():
    decoded = packet.decode(packet.wrap(DATA))
    assert (decoded.session, decoded.sequence, decoded.count) == (SESSION, 1000, 2)


@pytest.mark.parametrize("datagram, reason", [
    (DATA[:19], "short"),
    (DATA[:-1], "blocks"),                          # the last block overruns the datagram
    (DATA + b"\x00", "blocks"),                     # bytes after the last block
    (DATA[:18] + b"\x00\x03" + DATA[20:], "blocks"),  # count says 3, there are 2
    (HEARTBEAT + b"\x00\x00", "blocks"),
])
def test_malformed_datagrams_are_refused_with_a_reason(datagram, reason):
    with pytest.raises(moldudp.MoldError) as error:
        session, first, count = moldudp.header(datagram)
        moldudp.check_blocks(datagram, len(datagram), count)
    assert error.value.reason == reason


@pytest.mark.parametrize("datagram, reason", [
    (REQUEST[:-1], "request_length"), (REQUEST + b"\x00", "request_length"),
    (REQUEST[:18] + b"\x00\x00", "request_range"),
    (REQUEST[:10] + bytes(8) + REQUEST[18:], "request_range"),
])
def test_malformed_requests_are_refused(datagram, reason):
    with pytest.raises(moldudp.MoldError) as error:
        moldudp.parse_request(datagram)
    assert error.value.reason == reason


def test_requests_and_packets_refuse_what_the_fields_cannot_hold():
    with pytest.raises(ValueError):
        moldudp.request(SESSION, 1, 0xFFFF)
    with pytest.raises(ValueError):
        moldudp.request(b"SHORT", 1, 1)
    with pytest.raises(ValueError):
        moldudp.downstream(SESSION, 1, [])


def test_the_largest_messages_fit_the_default_payload():
    per_datagram = moldudp.messages_per_datagram(moldudp.DEFAULT_MAX_PAYLOAD)
    largest = b"N" * moldudp.LARGEST_MESSAGE
    datagram = moldudp.downstream(SESSION, 1, [largest] * per_datagram)
    assert len(datagram) <= moldudp.DEFAULT_MAX_PAYLOAD
    assert len(moldudp.downstream(SESSION, 1, [largest] * (per_datagram + 1))) > \
        moldudp.DEFAULT_MAX_PAYLOAD


def test_the_worked_example_in_the_docs_is_these_bytes():
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## MoldUDP64 over UDP"):]
    examples = re.findall(r"```text\n(.*?)```", section, re.S)
    hex_lines = lambda block: bytes.fromhex("".join(
        line.split("#")[0] for line in block.splitlines()))
    assert hex_lines(examples[0]) == DATA
    assert hex_lines(examples[1]) == REQUEST


def test_merge_frames_joins_consecutive_runs_and_passes_a_lone_frame_through():
    from feedhandler.session.moldudp import merge_frames

    session = b"SESSION1  "
    message = b"S" + bytes(10) + b"O"
    frames = [packet.wrap(moldudp.downstream(session, first, [message] * 3))
              for first in (1, 4, 7, 20)]
    merged = merge_frames(frames)
    assert [packet.peek(frame) for frame in merged] == [(session, 1, 9), (session, 20, 3)]
    assert merged[1] is frames[3]           # a run of one: not copied and checksummed again
    assert packet.decode(merged[0]).sequences["S"].tolist() == list(range(1, 10))

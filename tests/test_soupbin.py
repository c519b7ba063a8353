"""SoupBinTCP 4.1: golden vectors written from the specification's tables (not from the
encoder), round trips, the worked example of docs/protocol.md, and the C paths that gather 'S'
packets into one frame (client) and write them from stored frames (simulator)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from feedhandler.wire import _soupbin, packet, soupbin
from feedhandler.wire.soupbin import PacketError
from streams import SESSION, split_block, uniform_stream

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
SP = b" "

# Each packet type as the spec lays it out: u16 big-endian length (type byte + payload), type,
# payload; alpha fields right-padded with spaces, numeric fields left-padded with spaces, the
# login accepted session left-padded.
GOLDEN = {
    "login_request": (b"\x00\x2f" b"L" b"feed" + SP * 2 + b"secret" + SP * 4 + SP * 10
                      + SP * 19 + b"1",
                      lambda: soupbin.login_request(b"feed", b"secret", b"", 1)),
    "login_request_session_sequence": (
        b"\x00\x2f" b"L" b"ab" + SP * 4 + b"pw" + SP * 8 + SP * 3 + b"000042A"
        + SP * 11 + b"123456789",
        lambda: soupbin.login_request("ab", "pw", "000042A", 123456789)),
    "login_request_from_now": (b"\x00\x2f" b"L" b"u" + SP * 5 + b"p" + SP * 9 + SP * 10
                               + SP * 19 + b"0",
                               lambda: soupbin.login_request("u", "p", "", 0)),
    "login_accepted": (b"\x00\x1f" b"A" + SP * 3 + b"000042A" + SP * 16 + b"1234",
                       lambda: soupbin.login_accepted(b"000042A", 1234)),
    "login_accepted_largest": (b"\x00\x1f" b"A" b"ABCDEFGHIJ" + b"18446744073709551615".rjust(20),
                               lambda: soupbin.login_accepted(b"ABCDEFGHIJ", 2**64 - 1)),
    "login_rejected_not_authorized": (b"\x00\x02" b"J" b"A",
                                      lambda: soupbin.login_rejected(b"A")),
    "login_rejected_session": (b"\x00\x02" b"J" b"S", lambda: soupbin.login_rejected(b"S")),
    "sequenced_data": (b"\x00\x04" b"S" b"xyz", lambda: soupbin.sequenced_data(b"xyz")),
    "unsequenced_data": (b"\x00\x03" b"U" b"hi", lambda: soupbin.unsequenced_data(b"hi")),
    "debug": (b"\x00\x06" b"+" b"hello", lambda: soupbin.debug("hello")),
    "server_heartbeat": (b"\x00\x01" b"H", soupbin.server_heartbeat),
    "end_of_session": (b"\x00\x01" b"Z", soupbin.end_of_session),
    "client_heartbeat": (b"\x00\x01" b"R", soupbin.client_heartbeat),
    "logout_request": (b"\x00\x01" b"O", soupbin.logout_request),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_vector(name):
    expected, encode = GOLDEN[name]
    assert encode() == expected


def test_every_packet_type_has_a_golden_vector():
    types = {vector[2] for vector, _ in GOLDEN.values()}
    assert types == set(soupbin.SERVER_TYPES | soupbin.CLIENT_TYPES)


def test_parsers_read_the_golden_vectors():
    assert soupbin.parse_login_request(GOLDEN["login_request"][0]) == (b"feed", b"secret", b"", 1)
    assert soupbin.parse_login_request(GOLDEN["login_request_session_sequence"][0]) == \
        (b"ab", b"pw", b"000042A", 123456789)
    assert soupbin.parse_login_accepted(GOLDEN["login_accepted"][0]) == (b"000042A", 1234)
    assert soupbin.parse_login_accepted(GOLDEN["login_accepted_largest"][0]) == \
        (b"ABCDEFGHIJ", 2**64 - 1)
    assert soupbin.parse_login_rejected(GOLDEN["login_rejected_session"][0]) == b"S"
    assert soupbin.parse_debug(GOLDEN["debug"][0]) == "hello"
    assert soupbin.parse(GOLDEN["sequenced_data"][0]) == (ord("S"), b"xyz")
    for name in ("server_heartbeat", "end_of_session", "client_heartbeat", "logout_request"):
        kind, payload = soupbin.parse(GOLDEN[name][0])
        assert payload == b"" and kind == GOLDEN[name][0][2]


def test_layout_table_gives_the_spec_lengths():
    lengths = {kind: 1 + sum(f.width for f in layout) for kind, layout in soupbin.LAYOUTS.items()}
    assert lengths[soupbin.LOGIN_REQUEST] == 47 and lengths[soupbin.LOGIN_ACCEPTED] == 31
    assert lengths[soupbin.LOGIN_REJECTED] == 2
    assert soupbin.HEADER_SIZE == 3 and soupbin.LENGTH_FIELD.size == 2
    assert soupbin.MAX_PAYLOAD == 65534


@pytest.mark.parametrize("session,sequence", [(b"", 0), (b"S", 1), (b"0123456789", 10**19)])
def test_round_trips(session, sequence):
    assert soupbin.parse_login_request(soupbin.login_request(b"u", b"p", session, sequence)) \
        == (b"u", b"p", session, sequence)
    if session:
        assert soupbin.parse_login_accepted(soupbin.login_accepted(session, sequence)) == \
            (session, sequence)
    message = bytes(range(256)) * 3
    assert soupbin.parse(soupbin.sequenced_data(message)) == (soupbin.SEQUENCED_DATA, message)


def test_a_left_justified_session_names_the_same_session():
    packet_bytes = b"\x00\x1fA" + b"SIM".ljust(10) + b"7".rjust(20)
    assert soupbin.parse_login_accepted(packet_bytes) == (b"SIM", 7)


@pytest.mark.parametrize("bad,code", [
    (b"\x00\x1fA" + b"SIM".rjust(10) + b"7x".rjust(20), "bad_number"),
    (b"\x00\x1fA" + b"SIM".rjust(10) + SP * 20, "bad_number"),
    (b"\x00\x1fA" + SP * 10 + b"7".rjust(20), "bad_session"),
    (b"\x00\x1fA" + b"S\x01M".rjust(10) + b"7".rjust(20), "bad_session"),
    (b"\x00\x1eA" + b"SIM".rjust(10) + b"7".rjust(19), "bad_length"),
    (b"\x00\x00", "truncated"),
    (b"\x00\x00A", "length_zero"),
    (b"\x00\x05A12", "length_mismatch"),
])
def test_malformed_login_accepted_is_one_clear_error(bad, code):
    with pytest.raises(PacketError) as error:
        soupbin.parse_login_accepted(bad)
    assert error.value.code == code


@pytest.mark.parametrize("packet_type,length,code", [
    (ord("A"), 0, "length_zero"), (ord("Q"), 5, "unknown_type"), (ord("L"), 5, "unknown_type"),
    (ord("A"), 30, "bad_length"), (ord("J"), 65535, "bad_length"), (ord("H"), 2, "bad_length"),
    (ord("S"), 1, "empty_message"),
])
def test_check_prefix_refuses_from_the_header(packet_type, length, code):
    with pytest.raises(PacketError) as error:
        soupbin.check_prefix(packet_type, length, soupbin.SERVER_TYPES, offset=9)
    assert (error.value.code, error.value.offset) == (code, 9)


def test_encoders_refuse_what_does_not_fit():
    for call in (lambda: soupbin.login_request(b"toolong", b"p"),
                 lambda: soupbin.login_request(b"u", b"p", b"ELEVENCHARS"),
                 lambda: soupbin.login_accepted(b"S", -1),
                 lambda: soupbin.sequenced_data(b""),
                 lambda: soupbin.encode(ord("S"), b"x" * 65535)):
        with pytest.raises(ValueError):
            call()


# ---- the worked example of docs/protocol.md ---------------------------------------------------
def doc_example() -> list[tuple[str, bytes]]:
    """(sender, packet) in the order of the SoupBinTCP worked example, from its hex."""
    section = DOC[DOC.index("## SoupBinTCP 4.1"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    packets: list[tuple[str, bytearray]] = []
    for line in block.splitlines():
        match = re.match(r"^(client|server)?\s*((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:\s{2,}|$)", line)
        if not match or not match.group(2):
            continue
        data = bytes.fromhex(match.group(2))
        if match.group(1):
            packets.append((match.group(1), bytearray(data)))
        else:
            packets[-1][1].extend(data)
    return [(sender, bytes(data)) for sender, data in packets]


def test_worked_example_of_the_protocol_doc():
    from test_packet import DOC_EXAMPLE

    example = doc_example()
    messages = split_block(DOC_EXAMPLE[36:])
    assert example == [
        ("client", soupbin.login_request(b"feed", b"feed", b"", 1)),
        ("server", soupbin.login_accepted(b"000042A", 1)),
        ("server", soupbin.sequenced_data(messages[0])),
        ("server", soupbin.sequenced_data(messages[1])),
        ("server", soupbin.server_heartbeat()),
        ("server", soupbin.end_of_session()),
    ]
    # The spec's own reading, independently of the encoders.
    assert example[0][1][:3] == b"\x00\x2fL" and example[0][1][-20:] == b"1".rjust(20)
    assert example[1][1][3:13] == b"   000042A"
    # One read with both S packets: the frame of the frame format's worked example.
    data = example[2][1] + example[3][1] + example[4][1]
    frame, count, stop = _soupbin.gather_frame(data, 0, len(data), b"000042A   ", 1)
    assert (frame, count, stop) == (DOC_EXAMPLE, 2, len(data) - 3)


# ---- the C paths -------------------------------------------------------------------------------
def messages_of(count: int, seed: int = 5) -> list[bytes]:
    block, _ = uniform_stream(count, seed)
    return split_block(block)


def test_gather_builds_the_frame_packet_encode_builds():
    messages = messages_of(300)
    data = b"".join(soupbin.sequenced_data(m) for m in messages)
    frame, count, stop = _soupbin.gather_frame(data, 0, len(data), SESSION, 41)
    assert (count, stop) == (300, len(data))
    assert frame == packet.encode(messages, session=SESSION, sequence=41, codec="none")
    decoded = packet.decode(frame)
    assert (decoded.sequence, decoded.count) == (41, 300)


def test_gather_stops_at_a_control_packet_an_incomplete_packet_and_the_cap():
    messages = messages_of(10)
    s = [soupbin.sequenced_data(m) for m in messages]
    data = b"".join(s[:4]) + soupbin.server_heartbeat() + b"".join(s[4:])
    frame, count, stop = _soupbin.gather_frame(data, 0, len(data), SESSION, 1)
    assert (count, stop) == (4, sum(map(len, s[:4])))
    assert _soupbin.gather_frame(data, stop, len(data), SESSION, 5) == (None, 0, stop)
    after = stop + 3
    frame, count, end = _soupbin.gather_frame(data, after, len(data) - 1, SESSION, 5)
    assert (count, end) == (5, len(data) - len(s[-1]))      # the last one is cut short
    frame, count, end = _soupbin.gather_frame(data, after, len(data), SESSION, 5, max_messages=2)
    assert (count, end) == (2, after + len(s[4]) + len(s[5]))
    assert packet.decode(frame).sequence == 5


def test_gather_caps_a_frame_at_the_largest_moldudp64_count():
    one = soupbin.sequenced_data(b"x")
    data = one * (_soupbin.MAX_MESSAGES_PER_PACKET + 3)
    _, count, stop = _soupbin.gather_frame(data, 0, len(data), SESSION, 1)
    assert count == 65534 and stop == 65534 * len(one)


@pytest.mark.parametrize("bad,code", [(b"\x00\x00S", "length_zero"),
                                      (b"\x00\x01S", "empty_message"),
                                      (b"\x00\x00H", "length_zero")])
def test_gather_refuses_zero_length_and_empty_messages_with_the_offset(bad, code):
    good = soupbin.sequenced_data(b"abc")
    data = good + bad + good
    frame, count, stop = _soupbin.gather_frame(data, 0, len(data), SESSION, 1)
    assert (count, stop) == (1, len(good))
    with pytest.raises(PacketError) as error:
        _soupbin.gather_frame(data, stop, len(data), SESSION, 2)
    assert (error.value.code, error.value.offset) == (code, len(good))


def test_gather_checks_its_arguments():
    with pytest.raises(ValueError):
        _soupbin.gather_frame(b"\x00\x02Sx", 0, 5, SESSION, 1)
    with pytest.raises(ValueError):
        _soupbin.gather_frame(b"\x00\x02Sx", 0, 4, b"short", 1)


@pytest.mark.parametrize("skip", [0, 1, 7, 99])
def test_sequenced_packets_from_stored_frames(skip):
    messages = messages_of(250)
    frames = b"".join(packet.encode(messages[i:i + 100], session=SESSION, sequence=1 + i,
                                    codec="none") for i in range(0, 250, 100))
    data, count = _soupbin.sequenced_packets(frames, skip)
    assert count == 250 - skip
    assert data == b"".join(soupbin.sequenced_data(m) for m in messages[skip:])


@pytest.mark.parametrize("damage", ["lz4", "truncated", "count", "skip"])
def test_sequenced_packets_refuses_what_framing_did_not_write(damage):
    messages = messages_of(20)
    frame = packet.encode(messages, session=SESSION, sequence=1,
                          codec="lz4" if damage == "lz4" else "none")
    skip = 0
    if damage == "truncated":
        frame = frame[:-3]
    elif damage == "count":
        frame = bytearray(frame)
        frame[packet.FRAME_HEADER_SIZE + 19] += 1
    elif damage == "skip":
        skip = 21
    with pytest.raises(PacketError) as error:
        _soupbin.sequenced_packets(bytes(frame), skip)
    assert error.value.code == "frame_malformed"


def reference_gather(data: bytes, start: int, max_messages: int = 65534):
    """What gather_frame must do, written plainly: (messages, stop) or ("error", offset)."""
    at, messages = start, []
    while len(messages) < max_messages and len(data) - at >= 3:
        length = int.from_bytes(data[at:at + 2], "big")
        if length == 0:
            return ("error", at) if not messages else (messages, at)
        if data[at + 2] != ord("S"):
            break
        if length == 1:
            return ("error", at) if not messages else (messages, at)
        if at + 2 + length > len(data):
            break
        messages.append(data[at + 3:at + 2 + length])
        at += 2 + length
    return messages, at


@pytest.mark.parametrize("seed", range(40))
def test_gather_agrees_with_a_plain_reference_on_random_streams(seed):
    """Random mixes of S packets (1-300 byte messages), control packets, zero lengths, empty S
    packets and a cut anywhere: gather_frame and the reference agree at every start offset."""
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randint(1, 60)):
        kind = rng.random()
        if kind < 0.75:
            pieces.append(soupbin.sequenced_data(rng.randbytes(rng.randint(1, 300))))
        elif kind < 0.85:
            pieces.append(rng.choice([soupbin.server_heartbeat(), soupbin.debug("x"),
                                      soupbin.unsequenced_data(b"u")]))
        elif kind < 0.92:
            pieces.append(b"\x00\x00" + bytes([rng.randrange(256)]))
        else:
            pieces.append(b"\x00\x01S")
    data = b"".join(pieces)
    data = data[:rng.randint(0, len(data))]
    for start in sorted({0, *(rng.randrange(len(data) + 1) for _ in range(10))}):
        cap = rng.choice([1, 3, 65534])
        expected = reference_gather(data, start, cap)
        if expected[0] == "error":
            with pytest.raises(PacketError) as error:
                _soupbin.gather_frame(data, start, len(data), SESSION, 9, max_messages=cap)
            assert error.value.offset == expected[1]
            continue
        messages, stop = expected
        frame, count, end = _soupbin.gather_frame(data, start, len(data), SESSION, 9,
                                                  max_messages=cap)
        assert (count, end) == (len(messages), stop)
        if messages:
            assert frame == packet.encode(messages, session=SESSION, sequence=9, codec="none")
        else:
            assert frame is None

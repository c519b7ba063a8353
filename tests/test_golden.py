"""Golden byte vectors for all 23 NASDAQ TotalView-ITCH 5.0 message types.

Every message below was typed in by hand, field by field, from the ITCH 5.0 specification (field
order, widths, big-endian integers, 6-byte timestamp) and cross-checked against the struct
formats of the pure-Python `itchfeed` package. Nothing here comes from the project's encoder.

Each vector is a list of ``(field, wire hex, expected decoded value)`` rows in wire order; the
field names are the public names of `feedhandler.itch.DTYPES` (the spec's names in snake_case),
so the list also pins those names and their order.

The values are picked to expose byte-order and offset mistakes: every multi-byte integer has
distinct non-zero bytes, several have the top bit set (signed/unsigned mix-ups), neighbouring
one-byte fields differ, and the timestamp uses all six bytes.
"""

from __future__ import annotations

import pytest

from feedhandler.wire import itch, packet
from oracles import ITCHFEED_MESSAGE_CLASSES, oracle_value

# --- the common header -------------------------------------------------------------------------
# stock_locate 0x0102 and tracking_number 0x0304 read back as 0x0201 / 0x0403 if byte-swapped.
# timestamp 0x0A0B0C0D0E0F = 11,042,563,100,175 ns after midnight = 03:04:02.563100175, below
# the 86,400,000,000,000 ns of a day; all six bytes differ, so a 4- or 8-byte read shows up.

HEADER = [
    ("stock_locate",    "01 02",             0x0102),
    ("tracking_number", "03 04",             0x0304),
    ("timestamp",       "0A 0B 0C 0D 0E 0F", 11_042_563_100_175),
]

# --- one message per type, in the spec's order --------------------------------------------------

GOLDEN: dict[str, list[tuple[str, str, int | bytes]]] = {
    # 1.1 System Event Message, 12 bytes
    "S": [
        ("message_type", "53", b"S"),
        *HEADER,
        ("event_code",   "4F", b"O"),                  # 'O' start of messages
    ],
    # 1.2.1 Stock Directory, 39 bytes
    "R": [
        ("message_type",                   "52",                      b"R"),
        *HEADER,
        ("stock",                          "41 41 50 4C 20 20 20 20", b"AAPL    "),
        ("market_category",                "51",                      b"Q"),   # Global Select
        ("financial_status_indicator",     "4E",                      b"N"),   # normal
        ("round_lot_size",                 "0A 0B 0C 0D",             0x0A0B0C0D),
        ("round_lots_only",                "59",                      b"Y"),
        ("issue_classification",           "43",                      b"C"),   # common stock
        ("issue_sub_type",                 "41 49",                   b"AI"),  # two chars
        ("authenticity",                   "50",                      b"P"),   # live
        ("short_sale_threshold_indicator", "59",                      b"Y"),
        ("ipo_flag",                       "4E",                      b"N"),
        ("luld_reference_price_tier",      "32",                      b"2"),
        ("etp_flag",                       "59",                      b"Y"),
        ("etp_leverage_factor",            "10 20 30 40",             0x10203040),
        ("inverse_indicator",              "4E",                      b"N"),
    ],
    # 1.2.2 Stock Trading Action, 25 bytes
    "H": [
        ("message_type",  "48",                      b"H"),
        *HEADER,
        ("stock",         "4D 53 46 54 20 20 20 20", b"MSFT    "),
        ("trading_state", "48",                      b"H"),          # halted
        ("reserved",      "20",                      b" "),
        ("reason",        "49 50 4F 31",             b"IPO1"),       # IPO not yet released
    ],
    # 1.2.3 Reg SHO Short Sale Price Test Restricted Indicator, 20 bytes
    "Y": [
        ("message_type",   "59",                      b"Y"),
        *HEADER,
        ("stock",          "54 53 4C 41 20 20 20 20", b"TSLA    "),
        ("reg_sho_action", "31",                      b"1"),         # restriction in effect
    ],
    # 1.2.4 Market Participant Position, 26 bytes
    "L": [
        ("message_type",             "4C",                      b"L"),
        *HEADER,
        ("mpid",                     "47 53 43 4F",             b"GSCO"),
        ("stock",                    "49 42 4D 20 20 20 20 20", b"IBM     "),
        ("primary_market_maker",     "59",                      b"Y"),
        ("market_maker_mode",        "4E",                      b"N"),   # normal
        ("market_participant_state", "41",                      b"A"),   # active
    ],
    # 1.2.5.1 MWCB Decline Level, 35 bytes: three Price(8) fields
    "V": [
        ("message_type", "56",                      b"V"),
        *HEADER,
        ("level_1",      "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("level_2",      "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),  # top bit set
        ("level_3",      "01 02 03 04 05 06 07 08", 0x0102030405060708),
    ],
    # 1.2.5.2 MWCB Status, 12 bytes
    "W": [
        ("message_type",   "57", b"W"),
        *HEADER,
        ("breached_level", "32", b"2"),
    ],
    # 1.2.6 IPO Quoting Period Update, 28 bytes
    "K": [
        ("message_type",                    "4B",                      b"K"),
        *HEADER,
        ("stock",                           "41 52 4D 20 20 20 20 20", b"ARM     "),
        ("ipo_quotation_release_time",      "0A 0B 0C 0D",             0x0A0B0C0D),
        ("ipo_quotation_release_qualifier", "41",                      b"A"),  # anticipated
        ("ipo_price",                       "0F 1E 2D 3C",             0x0F1E2D3C),
    ],
    # 1.2.7 LULD Auction Collar, 35 bytes
    "J": [
        ("message_type",                   "4A",                      b"J"),
        *HEADER,
        ("stock",                          "47 4F 4F 47 4C 20 20 20", b"GOOGL   "),
        ("auction_collar_reference_price", "01 02 03 04",             0x01020304),
        ("upper_auction_collar_price",     "11 12 13 14",             0x11121314),
        ("lower_auction_collar_price",     "21 22 23 24",             0x21222324),
        ("auction_collar_extension",       "31 32 33 34",             0x31323334),
    ],
    # 1.2.8 Operational Halt, 21 bytes
    "h": [
        ("message_type",            "68",                      b"h"),
        *HEADER,
        ("stock",                   "4E 56 44 41 20 20 20 20", b"NVDA    "),
        ("market_code",             "51",                      b"Q"),   # Nasdaq
        ("operational_halt_action", "48",                      b"H"),   # halted
    ],
    # 1.3.1 Add Order, no MPID attribution, 36 bytes
    "A": [
        ("message_type",           "41",                      b"A"),
        *HEADER,
        ("order_reference_number", "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("buy_sell_indicator",     "42",                      b"B"),
        ("shares",                 "0A 0B 0C 0D",             0x0A0B0C0D),
        ("stock",                  "41 41 50 4C 20 20 20 20", b"AAPL    "),
        ("price",                  "00 16 E3 60",             1_500_000),   # $150.0000
    ],
    # 1.3.2 Add Order with MPID attribution, 40 bytes
    "F": [
        ("message_type",           "46",                      b"F"),
        *HEADER,
        ("order_reference_number", "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
        ("buy_sell_indicator",     "53",                      b"S"),
        ("shares",                 "0A 0B 0C 0D",             0x0A0B0C0D),
        ("stock",                  "41 4D 5A 4E 20 20 20 20", b"AMZN    "),
        ("price",                  "01 02 03 04",             0x01020304),
        ("attribution",            "4E 49 54 45",             b"NITE"),
    ],
    # 1.4.1 Order Executed, 31 bytes
    "E": [
        ("message_type",           "45",                      b"E"),
        *HEADER,
        ("order_reference_number", "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("executed_shares",        "0A 0B 0C 0D",             0x0A0B0C0D),
        ("match_number",           "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
    ],
    # 1.4.2 Order Executed with Price, 36 bytes
    "C": [
        ("message_type",           "43",                      b"C"),
        *HEADER,
        ("order_reference_number", "01 02 03 04 05 06 07 08", 0x0102030405060708),
        ("executed_shares",        "0A 0B 0C 0D",             0x0A0B0C0D),
        ("match_number",           "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("printable",              "59",                      b"Y"),
        ("execution_price",        "8A 8B 8C 8D",             0x8A8B8C8D),  # top bit set
    ],
    # 1.4.3 Order Cancel, 23 bytes
    "X": [
        ("message_type",           "58",                      b"X"),
        *HEADER,
        ("order_reference_number", "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("cancelled_shares",       "0A 0B 0C 0D",             0x0A0B0C0D),
    ],
    # 1.4.4 Order Delete, 19 bytes
    "D": [
        ("message_type",           "44",                      b"D"),
        *HEADER,
        ("order_reference_number", "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
    ],
    # 1.4.5 Order Replace, 35 bytes
    "U": [
        ("message_type",                    "55",                      b"U"),
        *HEADER,
        ("original_order_reference_number", "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("new_order_reference_number",      "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
        ("shares",                          "0A 0B 0C 0D",             0x0A0B0C0D),
        ("price",                           "01 02 03 04",             0x01020304),
    ],
    # 1.5.1 Trade (non-cross), 44 bytes
    "P": [
        ("message_type",           "50",                      b"P"),
        *HEADER,
        ("order_reference_number", "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("buy_sell_indicator",     "42",                      b"B"),
        ("shares",                 "0A 0B 0C 0D",             0x0A0B0C0D),
        ("stock",                  "4D 45 54 41 20 20 20 20", b"META    "),
        ("price",                  "01 02 03 04",             0x01020304),
        ("match_number",           "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
    ],
    # 1.5.2 Cross Trade, 40 bytes: shares is 8 bytes here
    "Q": [
        ("message_type", "51",                      b"Q"),
        *HEADER,
        ("shares",       "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("stock",        "51 51 51 20 20 20 20 20", b"QQQ     "),
        ("cross_price",  "0A 0B 0C 0D",             0x0A0B0C0D),
        ("match_number", "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
        ("cross_type",   "4F",                      b"O"),                 # opening cross
    ],
    # 1.5.3 Broken Trade / Order Execution, 19 bytes
    "B": [
        ("message_type", "42",                      b"B"),
        *HEADER,
        ("match_number", "11 22 33 44 55 66 77 88", 0x1122334455667788),
    ],
    # 1.6 Net Order Imbalance Indicator (NOII), 50 bytes
    "I": [
        ("message_type",              "49",                      b"I"),
        *HEADER,
        ("paired_shares",             "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("imbalance_shares",          "88 99 AA BB CC DD EE FF", 0x8899AABBCCDDEEFF),
        ("imbalance_direction",       "53",                      b"S"),
        ("stock",                     "53 50 59 20 20 20 20 20", b"SPY     "),
        ("far_price",                 "01 02 03 04",             0x01020304),
        ("near_price",                "0A 0B 0C 0D",             0x0A0B0C0D),
        ("current_reference_price",   "8A 8B 8C 8D",             0x8A8B8C8D),
        ("cross_type",                "43",                      b"C"),    # closing cross
        ("price_variation_indicator", "41",                      b"A"),    # 10 to 19.99%
    ],
    # 1.7 Retail Price Improvement Indicator (RPII), 20 bytes
    "N": [
        ("message_type",  "4E",                      b"N"),
        *HEADER,
        ("stock",         "41 4D 44 20 20 20 20 20", b"AMD     "),
        ("interest_flag", "42",                      b"B"),                # buy side RPI
    ],
    # 1.8 Direct Listing with Capital Raise Price Discovery, 48 bytes
    "O": [
        ("message_type",             "4F",                      b"O"),
        *HEADER,
        ("stock",                    "52 49 56 4E 20 20 20 20", b"RIVN    "),
        ("open_eligibility_status",  "59",                      b"Y"),
        ("minimum_allowable_price",  "01 02 03 04",             0x01020304),
        ("maximum_allowable_price",  "0A 0B 0C 0D",             0x0A0B0C0D),
        ("near_execution_price",     "11 12 13 14",             0x11121314),
        ("near_execution_time",      "11 22 33 44 55 66 77 88", 0x1122334455667788),
        ("lower_price_range_collar", "21 22 23 24",             0x21222324),
        ("upper_price_range_collar", "8A 8B 8C 8D",             0x8A8B8C8D),
    ],
}

# Message lengths from the spec, type byte included.
SPEC_LENGTHS = {
    "S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35, "h": 21,
    "A": 36, "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40, "B": 19,
    "I": 50, "N": 20, "O": 48,
}

TYPES = list(SPEC_LENGTHS)   # the spec's order: S R H Y L V W K J h A F E C X D U P Q B I N O
SESSION = b"GOLDEN0001"
SEQUENCE = 42


def wire(message_type: str) -> bytes:
    """The hand-written message, no length prefix."""
    return b"".join(bytes.fromhex(hexbytes) for _, hexbytes, _ in GOLDEN[message_type])


def framed(message_type: str) -> bytes:
    """The hand-written message with NASDAQ's u16 big-endian length prefix."""
    msg = wire(message_type)
    return len(msg).to_bytes(2, "big") + msg


def expected(message_type: str) -> dict[str, int | bytes]:
    return {name: value for name, _, value in GOLDEN[message_type]}


def assert_record(record, message_type: str) -> None:
    """Every field of one decoded record equals its expected value, and no field is missing or
    extra. Values go through .item() so uint64 compares exactly, never via float."""
    want = expected(message_type)
    names = record.dtype.names
    assert set(names) == set(want), (
        f"{message_type}: missing {set(want) - set(names)}, extra {set(names) - set(want)}")
    got = {name: record[name].item() for name in names}
    mismatches = {name: (got[name], want[name]) for name in names if got[name] != want[name]}
    assert not mismatches, f"{message_type}: field (decoded, expected): {mismatches}"
    for name in names:
        assert type(got[name]) is type(want[name]), (message_type, name, got[name])


parametrize_types = pytest.mark.parametrize("message_type", TYPES)


def test_all_23_types_covered():
    assert len(GOLDEN) == len(SPEC_LENGTHS) == 23
    assert set(GOLDEN) == set(SPEC_LENGTHS) == set(itch.DTYPES)


@parametrize_types
def test_vector_is_self_consistent(message_type):
    """Guards the hand-written table itself: each row's hex and literal agree."""
    rows = GOLDEN[message_type]
    assert rows[0] == ("message_type", rows[0][1], message_type.encode())
    for name, hexbytes, value in rows:
        raw = bytes.fromhex(hexbytes)
        if isinstance(value, bytes):
            assert raw == value, (message_type, name)
        else:
            assert int.from_bytes(raw, "big") == value, (message_type, name)
    timestamp = expected(message_type)["timestamp"]
    assert 0 <= timestamp < 86_400_000_000_000


@parametrize_types
def test_spec_length(message_type):
    assert len(wire(message_type)) == SPEC_LENGTHS[message_type]
    assert itch.WIRE_LENGTHS[message_type] == SPEC_LENGTHS[message_type]


@parametrize_types
def test_dtype_field_names_in_spec_order(message_type):
    assert itch.DTYPES[message_type].names == tuple(name for name, _, _ in GOLDEN[message_type])


@parametrize_types
def test_parse(message_type):
    parsed = itch.parse(framed(message_type))
    assert list(parsed) == [message_type]
    records = parsed[message_type]
    assert records.dtype == itch.DTYPES[message_type]
    assert len(records) == 1
    assert_record(records[0], message_type)


@parametrize_types
@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_packet_round_trip(message_type, codec):
    frame = packet.encode([wire(message_type)], session=SESSION, sequence=SEQUENCE, codec=codec)
    decoded = packet.decode(frame)
    assert decoded.session == SESSION
    assert decoded.sequence == SEQUENCE
    assert decoded.count == 1
    assert list(decoded.messages) == [message_type]
    assert len(decoded.messages[message_type]) == 1
    assert_record(decoded.messages[message_type][0], message_type)
    assert decoded.sequences[message_type].tolist() == [SEQUENCE]
    assert decoded.quarantined == []


@parametrize_types
def test_encoder_reproduces_golden_bytes(message_type):
    records = itch.parse(framed(message_type))[message_type]
    assert itch.encode(records) == framed(message_type)


def test_all_types_in_one_block():
    block = b"".join(framed(t) for t in TYPES)
    assert len(block) == sum(SPEC_LENGTHS.values()) + 2 * 23
    parsed = itch.parse(block)
    assert set(parsed) == set(TYPES)
    for message_type in TYPES:
        assert len(parsed[message_type]) == 1, message_type
        assert_record(parsed[message_type][0], message_type)


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_all_types_in_one_packet(codec):
    """Message i of the packet carries sequence 42 + i, so the types' order is checked too."""
    frame = packet.encode([wire(t) for t in TYPES], session=SESSION, sequence=SEQUENCE,
                          codec=codec)
    decoded = packet.decode(frame)
    assert decoded.count == 23
    assert set(decoded.messages) == set(TYPES)
    for i, message_type in enumerate(TYPES):
        assert_record(decoded.messages[message_type][0], message_type)
        assert decoded.sequences[message_type].tolist() == [SEQUENCE + i], message_type


@parametrize_types
def test_vector_agrees_with_itchfeed(message_type):
    """An independent decoder (itchfeed's struct formats) reads the same values from the
    hand-written bytes, so the vectors' layout does not rest on the project's own reading."""
    cls = ITCHFEED_MESSAGE_CLASSES[message_type.encode()]
    assert cls.message_size == SPEC_LENGTHS[message_type]
    message = cls(wire(message_type))
    for name, value in expected(message_type).items():
        assert oracle_value(message, name) == value, (message_type, name)

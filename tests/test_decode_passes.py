"""The block decoder's two passes: pass two follows pass one's fault log instead of framing
each message again, converts every type with the same fixed steps (an AVX-512 VBMI permute or
SSSE3 shuffles where the CPU has them, else portable C: the tests run each one the CPU has),
and stages the messages near the end of the input. Bytes that change between the passes end in buffer_changed, never in rows pass one
did not size and never in a silently dropped message."""

import ctypes
import mmap

import numpy as np
import pytest

from feedhandler.errors import DecodeError
from feedhandler.wire import _decode, itch
from streams import split_block, uniform_stream

BLOCK, _ = uniform_stream(400, seed=12)
MESSAGES = split_block(BLOCK)


def framed(messages) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


def offsets_of(messages) -> list[int]:
    offsets, at = [], 0
    for m in messages:
        offsets.append(at)
        at += 2 + len(m)
    return offsets


def assert_same_rows(got: dict, want: dict, *, same_order: bool = True):
    """Same rows per type; types in the same order (of first well-framed appearance) unless a
    message of a type was quarantined for its fields, since it counts as the type's first."""
    assert list(got) == list(want) if same_order else sorted(got) == sorted(want)
    for t in want:
        assert got[t].tobytes() == want[t].tobytes(), t


CONVERSIONS = ["permute", "shuffle", "portable"]
CHOSEN_AT_IMPORT = _decode._conversion()     # before any fixture here switches it


def supported(name: str) -> bool:
    previous = _decode._conversion()
    try:
        _decode._conversion(name)
        return True
    except ValueError:
        return False
    finally:
        _decode._conversion(previous)


@pytest.fixture(params=CONVERSIONS, autouse=True)
def conversion(request):
    """Every test here, once with each message conversion."""
    if not supported(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} conversion")
    previous = _decode._conversion(request.param)
    yield request.param
    _decode._conversion(previous)


def test_every_type_converts_to_what_encode_turns_back_into_its_wire_bytes(conversion):
    """Each type's rows, written by the conversion under test, encode back to exactly the
    messages they came from (itch.encode is plain numpy, independent of the decoder)."""
    rows = itch.parse(BLOCK)
    assert sorted(rows) == sorted(itch.DTYPES)
    for message_type, records in rows.items():
        wire = framed(m for m in MESSAGES if m[:1] == message_type.encode())
        assert itch.encode(records) == wire, message_type


def test_the_conversions_agree_byte_for_byte(conversion):
    """The permute and shuffle tables (derived from the struct layouts) and the portable
    swaps give the same rows, padding bytes of the arrays included."""
    rows = {t: a.tobytes() for t, a in itch.parse(BLOCK * 3).items()}
    _decode._conversion("portable")
    assert rows == {t: a.tobytes() for t, a in itch.parse(BLOCK * 3).items()}


def test_the_fastest_conversion_the_cpu_has_is_chosen():
    """What import chose is the first of CONVERSIONS (fastest first) that this CPU runs."""
    assert CHOSEN_AT_IMPORT == next(name for name in CONVERSIONS if supported(name))


def test_an_unknown_conversion_is_refused():
    with pytest.raises(ValueError, match="no conversion 'avx'"):
        _decode._conversion("avx")


def first_of(message_type: str, after: int = 0) -> int:
    return next(i for i, m in enumerate(MESSAGES) if i >= after and m[:1] == message_type.encode())


BAD_FRAMING = {
    "unknown_type": lambda m: b"\x01" + m[1:],
    "bad_message_length": lambda m: m + b"x",
    "empty_message": lambda m: b"",
}


@pytest.mark.parametrize("where", [[0], [1, 2, 3], [57, 200], [len(MESSAGES) - 1],
                                   [0, len(MESSAGES) - 2, len(MESSAGES) - 1]])
@pytest.mark.parametrize("code", sorted(BAD_FRAMING))
def test_pass_two_skips_exactly_what_pass_one_logged(where, code):
    """Quarantine mode around framing faults at the start, the end and in runs: the rows are
    those of the good messages alone, each fault is logged once at its offset."""
    messages = list(MESSAGES)
    for i in where:
        messages[i] = BAD_FRAMING[code](messages[i])
    good = [m for i, m in enumerate(messages) if i not in where]
    rows, quarantined = itch.parse_quarantine(framed(messages))
    assert_same_rows(rows, itch.parse(framed(good)))
    offsets = offsets_of(messages)
    assert [(q.offset, q.code) for q in quarantined] == [(offsets[i], code) for i in where]


def test_field_faults_between_framing_faults_and_a_truncated_tail():
    """A field fault (checked in pass two) next to framing faults (logged in pass one), and
    a tail that pass one could not frame: each in its place, the rows of the rest intact."""
    messages = list(MESSAGES)
    side_fault = first_of("A", 10)
    messages[side_fault] = messages[side_fault][:19] + b"Z" + messages[side_fault][20:]
    messages[side_fault - 1] = b"\x01" + messages[side_fault - 1][1:]
    messages[side_fault + 1] = messages[side_fault + 1] + b"x"
    block = framed(messages) + b"\x00\x30A"
    rows, quarantined = itch.parse_quarantine(block)
    skipped = {side_fault - 1, side_fault, side_fault + 1}
    assert_same_rows(rows, itch.parse(framed(m for i, m in enumerate(messages) if i not in skipped)),
                     same_order=False)
    offsets = offsets_of(messages)
    assert [(q.offset, q.code) for q in quarantined] == [
        (offsets[side_fault - 1], "unknown_type"), (offsets[side_fault], "bad_side"),
        (offsets[side_fault + 1], "bad_message_length"), (len(block) - 3, "message_truncated")]
    with pytest.raises(DecodeError) as strict:
        itch.parse(block)
    assert (strict.value.code, strict.value.offset) == ("unknown_type", offsets[side_fault - 1])


@pytest.fixture
def guarded_page():
    """A writable page followed by one that faults on any access."""
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, 2 * page)
    anchor = ctypes.c_char.from_buffer(area)
    libc = ctypes.CDLL(None, use_errno=True)
    address = ctypes.addressof(anchor)
    assert libc.mprotect(ctypes.c_void_p(address + page), page, 0) == 0     # PROT_NONE
    try:
        yield area, page
    finally:
        assert libc.mprotect(ctypes.c_void_p(address + page), page,
                             mmap.PROT_READ | mmap.PROT_WRITE) == 0
        del anchor
        area.close()


@pytest.mark.parametrize("count", [1, 2, 3, 40])
def test_messages_that_end_at_an_unreadable_page_decode_alike(guarded_page, count):
    """The last messages of an input are staged before their fixed-size conversion: one that
    ends right before an unreadable page is read no further than its last byte."""
    area, page = guarded_page
    for message_type in sorted(set(m[:1].decode() for m in MESSAGES)):
        tail = framed([m for m in MESSAGES if m[:1] == message_type.encode()][-count:])
        area[page - len(tail):page] = tail
        with memoryview(area) as view:
            rows = itch.parse(view[page - len(tail):page])
            assert_same_rows(rows, itch.parse(tail))
            del rows


def changed_between_passes(block: bytes, at: int, replacement: bytes, *, quarantine=False):
    return _decode._parse_changed_between_passes(block, at, replacement, quarantine=quarantine)


@pytest.mark.parametrize("quarantine", [False, True])
def test_unchanged_bytes_decode_as_in_one_call(quarantine):
    got_rows, got_quarantined = changed_between_passes(BLOCK, 0, BLOCK[:2], quarantine=quarantine)
    rows, quarantined = _decode.parse_messages(BLOCK, quarantine=quarantine)
    assert_same_rows(got_rows, rows)
    assert got_quarantined == quarantined


def length_prefix_at(messages, i) -> int:
    return offsets_of(messages)[i]


@pytest.mark.parametrize("quarantine", [False, True])
@pytest.mark.parametrize("change", ["longer", "shorter", "empty", "unseen type", "same length",
                                    "over a logged fault"])
def test_bytes_changed_between_the_passes_are_refused(quarantine, change):
    """Pass two trusts pass one only as far as memory safety allows: a message whose framing
    differs from what pass one counted is buffer_changed, not a skipped message or an extra
    row. (A 'D' becoming a 'B' has the same length: one 'B' more than pass one counted.)"""
    messages = list(MESSAGES)
    i = first_of("D", 30)
    messages[i + 1] = b"\x01" + messages[i + 1][1:]     # a framing fault for pass one to log
    block = framed(messages)
    at = length_prefix_at(messages, i)
    length = len(messages[i])
    replacement = {
        "longer": (length + 1).to_bytes(2, "big"),
        "shorter": (length - 1).to_bytes(2, "big"),
        "empty": b"\x00\x00",
        "unseen type": length.to_bytes(2, "big") + b"\x02",
        "same length": length.to_bytes(2, "big") + b"B",
        "over a logged fault": (length + 2 + len(messages[i + 1])).to_bytes(2, "big"),
    }[change]
    with pytest.raises(DecodeError) as refused:
        changed_between_passes(block, at, replacement, quarantine=quarantine)
    assert refused.value.code == "buffer_changed"
    assert refused.value.reason == "input buffer changed while it was being decoded"


@pytest.mark.parametrize("quarantine", [False, True])
def test_a_row_more_than_pass_one_counted_is_refused_far_from_the_end(quarantine):
    """A 'D' turned into a 'B' (the same length) between the passes, with the last 'B' far
    from the end of the input: the fill loop finds B's rows full there, not only the staging
    of the last messages."""
    messages = list(MESSAGES) + [m for m in MESSAGES if m[:1] == b"A"][:20]
    i = first_of("D", 30)
    at = length_prefix_at(messages, i) + 2
    with pytest.raises(DecodeError) as refused:
        changed_between_passes(framed(messages), at, b"B", quarantine=quarantine)
    assert refused.value.code == "buffer_changed"


def test_a_logged_fault_repaired_between_the_passes_stays_quarantined():
    """Pass two skips what pass one logged, by the length pass one read: a message made
    well framed in between is still quarantined, and the rest decode as without it."""
    messages = list(MESSAGES)
    i = first_of("A", 20)
    original = messages[i]
    messages[i] = b"\x01" + original[1:]
    block = framed(messages)
    at = length_prefix_at(messages, i) + 2
    rows, quarantined = changed_between_passes(block, at, original[:1], quarantine=True)
    assert_same_rows(rows, itch.parse(framed(m for k, m in enumerate(messages) if k != i)))
    assert [(q.offset, q.code, q.raw) for q in quarantined] == [
        (at - 2, "unknown_type", original)]


def test_a_field_changed_between_the_passes_is_read_once():
    """A field rewritten in between is simply the value pass two reads, and checked as such."""
    i = first_of("A", 5)
    at = length_prefix_at(MESSAGES, i) + 2 + 19          # the buy/sell indicator
    with pytest.raises(DecodeError) as strict:
        changed_between_passes(BLOCK, at, b"Z")
    assert strict.value.code == "bad_side"
    rows, quarantined = changed_between_passes(BLOCK, at, b"Z", quarantine=True)
    assert [(q.offset, q.code) for q in quarantined] == [(at - 19 - 2, "bad_side")]
    assert_same_rows(rows, itch.parse(framed(m for k, m in enumerate(MESSAGES) if k != i)),
                     same_order=False)


DAY = itch.NANOSECONDS_PER_DAY


def replace_byte(message: bytes, at: int, value: int) -> bytes:
    at %= len(message)
    return message[:at] + bytes([value]) + message[at + 1:]


def stock_offset(message: bytes, rng) -> int:
    """Wire offset of a byte of the message's stock field (of any byte if it has none)."""
    dtype = itch.DTYPES.get(message[:1].decode("latin-1"))
    if dtype is None or "stock" not in dtype.names:
        return int(rng.integers(len(message)))
    return dtype.fields["stock"][1] - 2 + int(rng.integers(8))


SIDE_BYTE = 19                      # wire offset of the buy/sell indicator of 'A', 'F' and 'P'
NEAR_SIDES = [0x41, 0x42, 0x43, 0x52, 0x53, 0x54, 0x62, 0x73, 0xC2, 0xD3]
NEAR_PRINTABLE = [0x00, 0x1F, 0x20, 0x21, 0x7E, 0x7F, 0x80, 0xA0, 0xFF]

MUTATIONS = [
    lambda m, rng: replace_byte(m, int(rng.integers(len(m))), int(rng.integers(256))),
    lambda m, rng: m[:5] + int(rng.integers(DAY, 2 ** 48)).to_bytes(6, "big") + m[11:],
    lambda m, rng: m[:5] + (DAY - 1).to_bytes(6, "big") + m[11:],    # the day's last nanosecond
    lambda m, rng: replace_byte(m, SIDE_BYTE, int(rng.choice(NEAR_SIDES))),
    lambda m, rng: replace_byte(m, stock_offset(m, rng), int(rng.choice(NEAR_PRINTABLE))),
    lambda m, rng: replace_byte(m, 0, int(rng.integers(256))),       # the type byte
    lambda m, rng: m[:int(rng.integers(len(m)))],                     # shorter
    lambda m, rng: m + bytes(int(rng.integers(1, 4))),                # longer
]


def outcome(block: bytes) -> tuple:
    """Everything both policies make of a block: rows (padding included), quarantine
    entries, the strict error."""
    rows, quarantined = itch.parse_quarantine(block)
    try:
        strict = {t: a.tobytes() for t, a in itch.parse(block).items()}
    except DecodeError as error:
        strict = (error.code, error.offset)
    return ({t: a.tobytes() for t, a in rows.items()},
            [(q.offset, q.code, q.raw, q.sequence) for q in quarantined], strict)


@pytest.mark.parametrize("seed", range(40))
def test_each_conversion_matches_the_portable_one_on_random_valid_and_invalid_input(
        conversion, seed):
    """Differential, for each conversion this CPU runs against the portable C one: random
    streams of every type, valid and then with random messages mutated (fields the checks
    read, at and past their limits; any byte; framing), decoded by both policies."""
    rng = np.random.default_rng(seed)
    messages = split_block(uniform_stream(300, seed=1000 + seed)[0])
    blocks = [framed(messages)]
    for _ in range(3):
        mutated = list(messages)
        for i in rng.choice(len(mutated), size=int(rng.integers(1, 25)), replace=False):
            mutated[i] = MUTATIONS[int(rng.integers(len(MUTATIONS)))](mutated[i], rng)
        blocks.append(framed(mutated))
    got = [outcome(block) for block in blocks]
    _decode._conversion("portable")
    assert got == [outcome(block) for block in blocks]
    assert got[0][1] == [] and not isinstance(got[0][2], tuple)       # the valid one is valid

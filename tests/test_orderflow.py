"""The synthetic session is a plausible trading day and its order flow is book-consistent."""

import struct

import numpy as np
import pytest

from feedhandler.exchange import orderflow
from feedhandler.wire import itch
from feedhandler.exchange.orderflow import MessageBlock, OrderFlow

SYMBOLS = 12


def message_types(block: MessageBlock) -> str:
    data = np.frombuffer(block.data, np.uint8)
    return data[block.offsets[:-1] + 2].tobytes().decode()


def replay_book(block: MessageBlock) -> dict:
    """Walk the block as a book builder would, asserting every rule the flow must keep.
    Returns the orders still on the book (reference -> [shares, stock locate])."""
    data, offsets = block.data, block.offsets
    book, last_ref, last_match, last_time = {}, 0, 0, 0
    for i in range(block.count):
        at = int(offsets[i]) + 2
        kind = chr(data[at])
        locate, = struct.unpack_from(">H", data, at + 1)
        timestamp = int.from_bytes(data[at + 5:at + 11], "big")
        where = f"message {i} ({kind})"
        assert last_time <= timestamp < itch.NANOSECONDS_PER_DAY, where
        last_time = timestamp
        if kind in "AF":
            ref, side, shares, _, price = struct.unpack_from(">QcI8sI", data, at + 11)
            assert ref > last_ref, f"{where}: reference numbers must increase"
            assert side in b"BS" and shares > 0 and price > 0 and price % 100 == 0, where
            assert 1 <= locate <= SYMBOLS, where
            book[ref] = [shares, locate]
            last_ref = ref
        elif kind in "ECX":
            ref, shares = struct.unpack_from(">QI", data, at + 11)
            assert ref in book, f"{where}: order {ref} is not live"
            assert book[ref][1] == locate, f"{where}: wrong stock locate"
            assert 0 < shares <= book[ref][0], f"{where}: {shares} shares of {book[ref][0]}"
            book[ref][0] -= shares
            if book[ref][0] == 0:
                del book[ref]
        elif kind == "D":
            ref, = struct.unpack_from(">Q", data, at + 11)
            assert book.pop(ref, [0, locate])[1] == locate and ref, f"{where}: order {ref} not live"
        elif kind == "U":
            old, new, shares, price = struct.unpack_from(">QQII", data, at + 11)
            assert old in book and book[old][1] == locate, f"{where}: order {old} is not live"
            assert new > last_ref and shares > 0 and price > 0, where
            del book[old]
            book[new] = [shares, locate]
            last_ref = new
        elif kind == "P":
            ref, = struct.unpack_from(">Q", data, at + 11)
            assert ref == 0, f"{where}: non-cross trades carry reference 0"
        if kind in "ECPQ":
            match_at = {"E": 23, "C": 23, "P": 36, "Q": 31}[kind]
            match, = struct.unpack_from(">Q", data, at + match_at)
            assert match > last_match, f"{where}: match numbers must increase"
            last_match = match
        elif kind == "B":
            match, = struct.unpack_from(">Q", data, at + 11)
            assert 1 <= match <= last_match, f"{where}: breaks an unknown match {match}"
    return book


def test_session_opens_and_closes_like_a_trading_day():
    block = orderflow.generate(3000, symbols=SYMBOLS, seed=1)
    assert block.count == 3000
    types = message_types(block)
    k = SYMBOLS
    assert types[:3 + 4 * k] == "SS" + "R" * k + "H" * k + "I" * k + "S" + "Q" * k
    assert types[-(3 + 2 * k):] == "I" * k + "Q" * k + "SSS"
    parsed = itch.parse(block.data)          # strict: every message is valid ITCH 5.0
    assert parsed["S"]["event_code"].tolist() == [b"O", b"S", b"Q", b"M", b"E", b"C"]
    directory = parsed["R"]
    assert directory["stock_locate"].tolist() == list(range(1, k + 1))
    assert len(set(directory["stock"].tolist())) == k
    opening_actions = parsed["H"][:k]
    assert (opening_actions["trading_state"] == b"T").all()
    assert opening_actions["stock"].tolist() == directory["stock"].tolist()


def test_flow_is_book_consistent_and_has_the_typical_mix():
    block = orderflow.generate(60_000, symbols=SYMBOLS, seed=2)
    book = replay_book(block)
    assert book, "some orders should still be resting at the close"
    counts = {t: message_types(block).count(t) for t in "AFECXDUPIN"}
    assert all(counts.values()), counts
    assert 0.3 < counts["A"] / block.count < 0.5
    assert 0.3 < counts["D"] / block.count < 0.5


def test_rare_events_stay_consistent(monkeypatch):
    # Halts (H, Q cross, H) and broken trades are rare; make them common to check them.
    monkeypatch.setitem(orderflow.MARKET_EVENT_RATES, "B", 0.01)
    monkeypatch.setitem(orderflow.MARKET_EVENT_RATES, "halt", 0.005)
    block = orderflow.generate(20_000, symbols=SYMBOLS, seed=3)
    replay_book(block)
    parsed = itch.parse(block.data)
    assert len(parsed["B"]) > 50
    halts = parsed["H"][SYMBOLS:]
    assert {b"H", b"T"} <= set(halts["trading_state"].tolist())
    assert (parsed["Q"]["cross_type"] == b"H").any()


def test_flow_continues_consistently_across_calls_and_windows():
    # Small windows force many orders to span windows (pending events) and calls.
    flow = OrderFlow(SYMBOLS, seed=4, window_messages=500)
    blocks = [flow.opening()] + [flow.flow(n) for n in (1, 777, 5000, 3000)] + [flow.closing()]
    assert [b.count for b in blocks[1:-1]] == [1, 777, 5000, 3000]
    replay_book(MessageBlock.join(blocks))


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = orderflow.generate(5000, symbols=SYMBOLS, seed=5)
    assert orderflow.generate(5000, symbols=SYMBOLS, seed=5).data == first.data
    assert orderflow.generate(5000, symbols=SYMBOLS, seed=6).data != first.data


def test_offsets_delimit_the_messages():
    block = orderflow.generate(2000, symbols=SYMBOLS, seed=7)
    lengths = np.diff(block.offsets) - 2
    data = np.frombuffer(block.data, np.uint8)
    prefixes = data[block.offsets[:-1]].astype(int) << 8 | data[block.offsets[:-1] + 1]
    assert (prefixes == lengths).all() and block.offsets[-1] == len(block.data)


def test_flow_stops_at_the_market_close():
    flow = OrderFlow(SYMBOLS, seed=8, mean_gap_ns=60e9)     # a message a minute
    flow.opening()
    block = flow.flow(10_000)
    assert flow.market_closed and 0 < block.count < 10_000
    last = int.from_bytes(block.data[int(block.offsets[-2]) + 7:int(block.offsets[-2]) + 13], "big")
    closing = itch.parse(flow.closing().data)
    assert last < orderflow.MARKET_CLOSE <= int(closing["Q"]["timestamp"].min())


def test_too_small_a_count_is_refused():
    with pytest.raises(ValueError, match="at least"):
        orderflow.generate(10, symbols=SYMBOLS)

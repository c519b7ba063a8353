"""Order-book-consistent synthetic TotalView-ITCH 5.0 sessions for the simulator.

A session opens like a trading day (start of messages, start of system hours, the stock
directory, trading actions, opening NOII and crosses), carries an order flow in which every
execution, cancel, delete and replace refers to an order that is live at that moment and has
enough shares left, and closes with closing NOII and crosses and the end-of-day system events.

The flow is generated without a Python loop per message. Each order is drawn as a whole
*lifecycle*: an add, then per price/size (a "segment") a few partial executions or cancels, and a
segment end that is a replace (which opens the next segment under a new reference number), a
delete, a full execution, or nothing (the order stays on the book). Segment times are cumulative,
so sorting all events of all lifecycles by time interleaves them without ever putting an event
before the add or replace that introduced its order. Reference numbers and match numbers are
handed out in stream order when events are emitted, so they increase like NASDAQ's; events that
fall after the current time window wait in a pending table, carrying the reference numbers
already assigned to their orders. Equal timestamps keep causal order because events are sorted
stably and each batch lists introducing events before partials before segment ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feedhandler.wire.itch import DTYPES, WIRE_LENGTHS, encode
from feedhandler.exchange.synthetic import random_symbols

SECOND = 1_000_000_000
START_OF_MESSAGES = 3 * 3600 * SECOND
START_OF_SYSTEM_HOURS = 4 * 3600 * SECOND
OPENING_NOII = 9 * 3600 * SECOND + 25 * 60 * SECOND
MARKET_OPEN = 9 * 3600 * SECOND + 30 * 60 * SECOND
MARKET_CLOSE = 16 * 3600 * SECOND
END_OF_SYSTEM_HOURS = 20 * 3600 * SECOND
END_OF_MESSAGES = 20 * 3600 * SECOND + 5 * 60 * SECOND
# The opening crosses print just after the open; the flow starts after them.
FLOW_START = MARKET_OPEN + SECOND // 1000
# Closing NOII and crosses are stamped from here, after the last flow message.
CLOSING_MARGIN = 10 * 60 * SECOND

# Market-wide average gap between flow messages: about 20,000 messages a second, which puts
# a 6.5-hour synthetic day at roughly the size of a real one.
DEFAULT_MEAN_GAP_NS = 50_000

# Lifecycle shape, tuned so the flow's mix resembles synthetic.TYPICAL_MIX (mostly adds and
# deletes, a fifth of orders replaced, a few percent executed).
P_ATTRIBUTED = 0.008          # add with MPID attribution (F) instead of A
P_REPLACE = 0.17              # a segment ends in a replace
P_FULL_EXECUTION = 0.04       # a final segment ends executed in full ...
P_STAYS_LIVE = 0.01           # ... or stays on the book; otherwise it is deleted
MEAN_PARTIALS = 0.1           # partial executions/cancels per segment
MAX_PARTIALS = 5
MAX_SEGMENTS = 16
PARTIAL_KINDS = np.frombuffer(b"EXC", np.uint8)
PARTIAL_WEIGHTS = np.array([0.55, 0.40, 0.05])
# Expected messages of one order: the add, its replaces, partials in each segment, the end.
MESSAGES_PER_ORDER = (1 + P_REPLACE / (1 - P_REPLACE) + MEAN_PARTIALS / (1 - P_REPLACE)
                      + 1 - P_STAYS_LIVE)
# Segment lifetimes, in units of the mean message gap: short on average, capped so the pending
# table (events not yet due) stays small.
MEAN_LIFETIME_GAPS = 300
MAX_LIFETIME_GAPS = 30_000
# Messages that do not touch an order, per flow message.
MARKET_EVENT_RATES = {"P": 0.006, "I": 0.025, "N": 0.002, "B": 1e-5, "halt": 1e-5}
HALT_GAPS = 2_000              # a trading pause lasts this many mean gaps

MPIDS = np.array([b"GSCO", b"MSCO", b"UBSS", b"NITE", b"VIRT", b"CDRG", b"JPMS", b"SUSQ"])
TICK = 100                     # one cent in ITCH's four implied decimals


def _kind_table(kinds: bytes) -> np.ndarray:
    """Lookup table: event kind (ASCII code) -> whether it is one of `kinds`."""
    table = np.zeros(256, bool)
    table[np.frombuffer(kinds, np.uint8)] = True
    return table


_REFERENCING = _kind_table(b"EXCD")     # carry the reference number of a live order
_INTRODUCING = _kind_table(b"AFU")      # bring a new reference number
_REPLACING = _kind_table(b"U")          # also name the order they replace
_MATCHED = _kind_table(b"ECPQ")         # get a match number
# Message type (ASCII code) -> bytes on the wire, length prefix included.
_WIRE_SIZES = np.zeros(256, np.int64)
_WIRE_SIZES[[ord(t) for t in WIRE_LENGTHS]] = [length + 2 for length in WIRE_LENGTHS.values()]
_IMBALANCE_DIRECTIONS = np.frombuffer(b"BSNO", np.uint8)
_INTEREST_FLAGS = np.frombuffer(b"BSAN", np.uint8)

# One row per event. `segment` identifies the order segment an order event belongs to (-1 for
# market events); `ref` and `prev_ref` (the replaced order, for U) are 0 until the introducing
# event is emitted.
EVENT_DTYPE = np.dtype([
    ("time", "u8"), ("segment", "i8"), ("ref", "u8"), ("prev_ref", "u8"),
    ("match", "u8"), ("shares", "u4"), ("price", "u4"), ("symbol", "u2"), ("kind", "u1"),
    ("side", "u1"), ("flag", "u1"),
], align=True)
# Structured rows are moved with np.take, which copies whole rows (plain fancy indexing on a
# structured array goes field by field and is several times slower).


@dataclass(frozen=True, slots=True)
class MessageBlock:
    """Messages in NASDAQ's binary file framing: `data`, and `offsets`, where message i occupies
    data[offsets[i]:offsets[i + 1]] (length prefix included); offsets[-1] == len(data)."""

    data: bytes
    offsets: np.ndarray

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def join(blocks: list[MessageBlock]) -> MessageBlock:
        starts = np.cumsum([0] + [len(b.data) for b in blocks])
        offsets = [b.offsets[:-1] + start for b, start in zip(blocks, starts)]
        return MessageBlock(b"".join(b.data for b in blocks),
                            np.concatenate(offsets + [starts[-1:]]).astype(np.int64))


def _groups_block(groups: list[np.ndarray]) -> MessageBlock:
    """Consecutive runs of single-type records -> one block in that order."""
    pieces, offsets, position = [], [], 0
    for records in groups:
        if len(records) == 0:
            continue
        size = WIRE_LENGTHS[records["message_type"][0].decode()] + 2
        pieces.append(encode(records))
        offsets.append(position + size * np.arange(len(records), dtype=np.int64))
        position += size * len(records)
    offsets.append(np.array([position], np.int64))
    return MessageBlock(b"".join(pieces), np.concatenate(offsets))


def distinct_symbols(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` different stock symbols (random_symbols can repeat itself)."""
    symbols = np.empty(0, "S8")
    while len(symbols) < count:
        fresh = np.setdiff1d(random_symbols(2 * count, rng), symbols)
        symbols = np.concatenate([symbols, rng.permutation(fresh)[:count - len(symbols)]])
    return symbols


class OrderFlow:
    """A stateful generator for one synthetic trading day.

    Call `opening()` once, then `flow(n)` as often as needed (each call continues the book; it
    returns fewer than n messages once the flow reaches the market close), then `closing()`.
    Everything is determined by `seed`."""

    def __init__(self, symbols: int = 100, *, seed: int = 0,
                 mean_gap_ns: float = DEFAULT_MEAN_GAP_NS, window_messages: int = 1 << 17):
        if not 1 <= symbols <= 65535:
            raise ValueError(f"symbols must be 1..65535 (stock locate codes), not {symbols}")
        if mean_gap_ns <= 0:
            raise ValueError("mean_gap_ns must be positive")
        self._rng = np.random.default_rng(seed)
        self.symbols = distinct_symbols(symbols, self._rng)
        # Activity is concentrated in a few names, as in a real day.
        popularity = 1.0 / np.arange(1, symbols + 1) ** 0.8
        self._popularity = self._rng.permutation(popularity / popularity.sum())
        dollars = np.clip(np.exp(self._rng.normal(np.log(30), 1.0, symbols)), 1, 2000)
        self._base_price = np.round(dollars * 100).astype(np.int64) * TICK
        self._gap = float(mean_gap_ns)
        self._window_ns = max(1, int(window_messages * self._gap))
        self._now = FLOW_START            # flow events before this time have been emitted
        self._next_segment = 0
        self._next_ref = 1
        self._next_match = 1
        self._pending = np.empty(0, EVENT_DTYPE)
        self._ready: list[np.ndarray] = []      # emitted (numbered) but not yet returned
        self._ready_count = 0
        self.market_closed = False

    # ---- opening and closing ---------------------------------------------------------------------
    def _records(self, message_type: str, count: int, timestamp, **fields) -> np.ndarray:
        records = np.zeros(count, DTYPES[message_type])
        records["message_type"] = message_type.encode()
        records["timestamp"] = timestamp
        for name, value in fields.items():
            records[name] = value
        return records

    def _system_event(self, code: bytes, timestamp: int) -> np.ndarray:
        return self._records("S", 1, timestamp, event_code=code)

    def _per_symbol(self, message_type: str, timestamp: int, **fields) -> np.ndarray:
        count = len(self.symbols)
        locates = np.arange(1, count + 1)
        return self._records(message_type, count, timestamp + locates, stock_locate=locates,
                             stock=self.symbols, **fields)

    def _noii(self, timestamp: int, cross_type: bytes) -> np.ndarray:
        count, rng = len(self.symbols), self._rng
        paired = 100 * rng.integers(0, 5000, count)
        return self._per_symbol(
            "I", timestamp, paired_shares=paired,
            imbalance_shares=100 * rng.integers(0, 500, count),
            imbalance_direction=rng.choice(_IMBALANCE_DIRECTIONS, count).view("S1"),
            far_price=self._base_price, near_price=self._base_price,
            current_reference_price=self._base_price, cross_type=cross_type,
            price_variation_indicator=b" ")

    def _crosses(self, timestamp: int, cross_type: bytes) -> np.ndarray:
        count = len(self.symbols)
        records = self._per_symbol("Q", timestamp, shares=100 * self._rng.integers(1, 20000, count),
                                   cross_price=self._base_price, cross_type=cross_type)
        records["match_number"] = self._next_match + np.arange(count)
        self._next_match += count
        return records

    def opening(self) -> MessageBlock:
        """Start of messages, start of system hours, the directory (stock locate i + 1 is
        symbols[i]), every stock trading, opening NOII, start of market hours, opening crosses."""
        count = len(self.symbols)
        categories = np.array([b"Q", b"G", b"S", b"N", b"A"])
        directory = self._per_symbol(
            "R", START_OF_SYSTEM_HOURS, market_category=categories[self._rng.integers(0, 5, count)],
            financial_status_indicator=b"N", round_lot_size=100, round_lots_only=b"N",
            issue_classification=b"C", issue_sub_type=b"Z ", authenticity=b"P",
            short_sale_threshold_indicator=b"N", ipo_flag=b"N",
            luld_reference_price_tier=np.where(self._popularity > 1 / count, b"1", b"2"),
            etp_flag=b"N", etp_leverage_factor=0, inverse_indicator=b"N")
        return _groups_block([
            self._system_event(b"O", START_OF_MESSAGES),
            self._system_event(b"S", START_OF_SYSTEM_HOURS),
            directory,
            self._per_symbol("H", START_OF_SYSTEM_HOURS + count, trading_state=b"T",
                             reserved=b" ", reason=b"    "),
            self._noii(OPENING_NOII, b"O"),
            self._system_event(b"Q", MARKET_OPEN),
            self._crosses(MARKET_OPEN, b"O"),
        ])

    def closing(self) -> MessageBlock:
        """Closing NOII and crosses, end of market hours, end of system hours, end of messages."""
        self._pending = np.empty(0, EVENT_DTYPE)
        self._ready, self._ready_count = [], 0
        self.market_closed = True
        last = max(self._now, MARKET_CLOSE - CLOSING_MARGIN)
        close = max(last + CLOSING_MARGIN, MARKET_CLOSE)
        return _groups_block([
            self._noii(last, b"C"),
            self._crosses(close, b"C"),
            self._system_event(b"M", close + SECOND),
            self._system_event(b"E", max(END_OF_SYSTEM_HOURS, close + 2 * SECOND)),
            self._system_event(b"C", max(END_OF_MESSAGES, close + 3 * SECOND)),
        ])

    # ---- the flow --------------------------------------------------------------------------------
    def flow(self, count: int) -> MessageBlock:
        """The next `count` flow messages (fewer once the market closes)."""
        while self._ready_count < count and not self.market_closed:
            self._advance()
        ready = np.concatenate(self._ready) if self._ready else np.empty(0, EVENT_DTYPE)
        self._ready = [ready[count:]]
        self._ready_count = len(self._ready[0])
        return self._encode_events(ready[:count])

    def _advance(self):
        """Generate the lifecycles starting in the next time window and emit what is due."""
        start = self._now
        end = min(start + self._window_ns, MARKET_CLOSE - CLOSING_MARGIN)
        if end <= start:
            self.market_closed = True
            return
        expected = (end - start) / self._gap
        fresh = np.concatenate([
            self._pending,
            self._order_lifecycles(int(round(expected / MESSAGES_PER_ORDER)), start, end),
            self._market_events(expected, start, end),
        ])
        fresh = np.take(fresh, np.argsort(fresh["time"], kind="stable"))
        due = int(np.searchsorted(fresh["time"], end))
        emitted, self._pending = fresh[:due], fresh[due:]
        emitted = self._number(emitted)
        self._ready.append(emitted)
        self._ready_count += len(emitted)
        self._now = end

    def _pick_symbols(self, count: int) -> np.ndarray:
        return self._rng.choice(len(self.symbols), size=count, p=self._popularity).astype(np.uint16)

    def _random_shares(self, count: int) -> np.ndarray:
        """Mostly round lots, some odd lots."""
        rng = self._rng
        lots = 100 * np.minimum(rng.geometric(0.4, count), 50)
        odd_lots = rng.integers(1, 100, count)
        return np.where(rng.random(count) < 0.15, odd_lots, lots).astype(np.uint32)

    def _quote_prices(self, symbol: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Bids a few ticks under the symbol's price, offers a few ticks over."""
        ticks = np.minimum(self._rng.geometric(0.25, len(symbol)) - 1, 40)
        sign = np.where(side == ord("B"), -1, 1)
        return np.maximum(self._base_price[symbol] + sign * ticks * TICK, TICK).astype(np.uint32)

    def _order_lifecycles(self, chains: int, start: int, end: int) -> np.ndarray:
        rng = self._rng
        chain_start = np.sort(rng.integers(start, end, chains, dtype=np.uint64))
        chain_symbol = self._pick_symbols(chains)
        chain_side = np.where(rng.random(chains) < 0.5, ord("B"), ord("S")).astype(np.uint8)
        chain_kind = np.where(rng.random(chains) < P_ATTRIBUTED, ord("F"), ord("A"))
        segments = np.minimum(rng.geometric(1 - P_REPLACE, chains), MAX_SEGMENTS)

        # One row per segment; segment ids of a chain are consecutive.
        total = int(segments.sum())
        chain = np.repeat(np.arange(chains), segments)
        first = np.repeat(np.cumsum(segments) - segments, segments)
        position = np.arange(total) - first
        is_last = position == segments[chain] - 1
        segment_id = self._next_segment + np.arange(total, dtype=np.int64)
        self._next_segment += total
        lifetime = np.minimum(rng.exponential(MEAN_LIFETIME_GAPS * self._gap, total),
                              MAX_LIFETIME_GAPS * self._gap).astype(np.uint64) + 1
        elapsed = np.cumsum(lifetime) - lifetime
        seg_start = chain_start[chain] + (elapsed - elapsed[first])
        seg_end = seg_start + lifetime
        symbol, side = chain_symbol[chain], chain_side[chain]
        shares = self._random_shares(total)
        price = self._quote_prices(symbol, side)
        partials = np.minimum(np.minimum(rng.poisson(MEAN_PARTIALS, total), MAX_PARTIALS),
                              shares - 1).astype(np.int64)

        intro = np.zeros(total, EVENT_DTYPE)
        intro["kind"] = np.where(position == 0, chain_kind[chain], ord("U"))
        intro["time"] = seg_start
        intro["shares"], intro["price"] = shares, price

        # Partial executions and cancels, each under shares / (partials + 1), so that at least
        # one share is left for the segment's end.
        owner = np.repeat(np.arange(total), partials)
        # owner is non-decreasing, so sorting owner + U(0, 1) sorts the fractions within each
        # segment and leaves the rows grouped.
        fraction = np.sort(rng.random(len(owner)) + owner) - owner
        amount = (shares[owner] * rng.random(len(owner)) / (partials[owner] + 1)).astype(np.uint32)
        amount = np.where(amount >= 100, amount // 100 * 100, np.maximum(amount, 1))
        partial = np.zeros(len(owner), EVENT_DTYPE)
        partial["kind"] = rng.choice(PARTIAL_KINDS, len(owner), p=PARTIAL_WEIGHTS)
        partial["time"] = seg_start[owner] + (fraction * lifetime[owner]).astype(np.uint64)
        partial["shares"], partial["price"] = amount, price[owner]
        partial["flag"] = np.where(rng.random(len(owner)) < 0.95, ord("Y"), ord("N"))
        left = shares - np.bincount(owner, weights=amount, minlength=total).astype(np.uint32)

        # The end of a final segment; other segments end in the next segment's replace.
        outcome = rng.random(total)
        ending = is_last & (outcome >= P_STAYS_LIVE)
        finish = np.zeros(int(ending.sum()), EVENT_DTYPE)
        finish["kind"] = np.where(outcome[ending] < P_STAYS_LIVE + P_FULL_EXECUTION,
                                  ord("E"), ord("D"))
        finish["time"] = seg_end[ending]
        finish["shares"] = left[ending]

        for table, rows in ((intro, slice(None)), (partial, owner), (finish, ending)):
            table["segment"] = segment_id[rows]
            table["symbol"] = symbol[rows]
            table["side"] = side[rows]
        return np.concatenate([intro, partial, finish])

    def _market_events(self, expected: float, start: int, end: int) -> np.ndarray:
        rng = self._rng
        counts = {kind: rng.poisson(rate * expected) for kind, rate in MARKET_EVENT_RATES.items()}
        halts = counts.pop("halt")
        kinds = np.frombuffer("".join(counts).encode(), np.uint8)
        single = np.zeros(sum(counts.values()), EVENT_DTYPE)
        single["kind"] = np.repeat(kinds, list(counts.values()))
        single["time"] = rng.integers(start, end, len(single), dtype=np.uint64)
        single["symbol"] = self._pick_symbols(len(single))
        single["side"] = np.where(rng.random(len(single)) < 0.5, ord("B"), ord("S"))
        single["shares"] = self._random_shares(len(single))
        # Trades print at the symbol's price; NOII quotes around it.
        single["price"] = np.where(single["kind"] == ord("P"), self._base_price[single["symbol"]],
                                   self._quote_prices(single["symbol"], single["side"]))
        single["flag"] = np.where(single["kind"] == ord("I"),
                                  rng.choice(_IMBALANCE_DIRECTIONS, len(single)),
                                  rng.choice(_INTEREST_FLAGS, len(single)))

        # A trading pause: halt, the reopening cross, trading again.
        pause = np.zeros((halts, 3), EVENT_DTYPE)
        halt_time = rng.integers(start, end, halts, dtype=np.uint64)
        resume = halt_time + (HALT_GAPS * self._gap * (0.5 + rng.random(halts))).astype(np.uint64)
        pause["time"] = np.stack([halt_time, resume, resume + 1], axis=1)
        pause["kind"] = np.frombuffer(b"HQH", np.uint8)
        pause["flag"] = np.frombuffer(b"HHT", np.uint8)
        pause["symbol"] = self._pick_symbols(halts)[:, None]
        pause["price"] = self._base_price[pause["symbol"]]
        pause["shares"] = self._random_shares(halts)[:, None]

        events = np.concatenate([single, pause.ravel()])
        events["segment"] = -1
        return events

    def _number(self, emitted: np.ndarray) -> np.ndarray:
        """Hand out reference and match numbers in stream order to events now emitted, and pass
        reference numbers on to the later events (emitted or pending) of the same orders."""
        kind = emitted["kind"]
        introducing = _INTRODUCING[kind]
        refs = self._next_ref + np.arange(int(introducing.sum()), dtype=np.uint64)
        self._next_ref += len(refs)
        emitted["ref"][introducing] = refs
        segments = emitted["segment"][introducing]
        order = np.argsort(segments)
        known = segments[order], refs[order]
        for table in (emitted, self._pending):
            _fill_refs(table, "ref", table["segment"], _REFERENCING, *known)
            _fill_refs(table, "prev_ref", table["segment"] - 1, _REPLACING, *known)

        matched = _MATCHED[kind]
        emitted["match"][matched] = self._next_match + np.arange(int(matched.sum()),
                                                                 dtype=np.uint64)
        # A broken trade names any earlier match; it is dropped if there is none yet.
        matches_before = self._next_match - 1 + np.cumsum(matched) - matched
        self._next_match += int(matched.sum())
        broken = np.flatnonzero(kind == ord("B"))
        emitted["match"][broken] = (self._rng.random(len(broken))
                                    * matches_before[broken]).astype(np.uint64) + 1
        unmatched = np.flatnonzero((kind == ord("B")) & (matches_before == 0))
        return np.delete(emitted, unmatched) if len(unmatched) else emitted

    # ---- events -> wire --------------------------------------------------------------------------
    def _encode_events(self, events: np.ndarray) -> MessageBlock:
        # Messages are laid out one per row of a matrix as wide as the longest message, each
        # type's rows filled at once, then the padding is squeezed out.
        kind = events["kind"]
        sizes = _WIRE_SIZES[kind]
        rows = np.zeros((len(events), _WIRE_SIZES.max()), np.uint8)
        for code in np.unique(kind):
            where = np.flatnonzero(kind == code)
            size = int(_WIRE_SIZES[code])
            wire = encode(self._event_records(chr(code), np.take(events, where)))
            rows[where, :size] = np.frombuffer(wire, np.uint8).reshape(-1, size)
        offsets = np.zeros(len(events) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        data = rows[np.arange(rows.shape[1]) < sizes[:, None]].tobytes()
        return MessageBlock(data, offsets)

    def _event_records(self, message_type: str, events: np.ndarray) -> np.ndarray:
        rng, n = self._rng, len(events)
        records = np.zeros(n, DTYPES[message_type])
        names = records.dtype.names
        records["message_type"] = message_type.encode()
        records["stock_locate"] = events["symbol"] + 1
        records["tracking_number"] = rng.integers(1, 8, n)
        records["timestamp"] = events["time"]
        filled = {
            "order_reference_number": events["ref"],
            "original_order_reference_number": events["prev_ref"],
            "new_order_reference_number": events["ref"],
            "buy_sell_indicator": events["side"].view("S1"),
            "shares": events["shares"],
            "executed_shares": events["shares"],
            "cancelled_shares": events["shares"],
            "paired_shares": events["shares"],
            "imbalance_shares": 100 * rng.integers(0, 100, n),
            "imbalance_direction": events["flag"].view("S1"),
            "stock": self.symbols[events["symbol"]],
            "price": events["price"],
            "execution_price": events["price"],
            "cross_price": events["price"],
            "far_price": events["price"],
            "near_price": events["price"],
            "current_reference_price": events["price"],
            "match_number": events["match"],
            "attribution": MPIDS[rng.integers(0, len(MPIDS), n)],
            "printable": events["flag"].view("S1"),
            # In the flow, crosses reopen halted stocks; NOII look ahead to the closing cross.
            "cross_type": b"H" if message_type == "Q" else b"C",
            "price_variation_indicator": b"1",
            "interest_flag": events["flag"].view("S1"),
            "trading_state": events["flag"].view("S1"),
            "reserved": b" ",
            "reason": np.where(events["flag"] == ord("H"), b"LUDP", b"    "),
        }
        if message_type == "P":
            filled["order_reference_number"] = 0    # NASDAQ zeroes it on non-cross trades
        for name in names:
            if name in filled:
                records[name] = filled[name]
        return records


def _fill_refs(table, field, segments, kinds, known_segments, known_refs):
    """Set table[field] for rows of `kinds` (a _kind_table) whose `segments` entry is among
    `known_segments` (sorted)."""
    wanted = np.flatnonzero(kinds[table["kind"]] & (table[field] == 0))
    if len(wanted) == 0 or len(known_segments) == 0:
        return
    at = np.minimum(np.searchsorted(known_segments, segments[wanted]), len(known_segments) - 1)
    found = known_segments[at] == segments[wanted]
    table[field][wanted[found]] = known_refs[at[found]]


def opening_size(symbols: int) -> int:
    """Messages in `OrderFlow.opening()`: three system events and four per symbol."""
    return 3 + 4 * symbols


def closing_size(symbols: int) -> int:
    """Messages in `OrderFlow.closing()`: three system events and two per symbol."""
    return 3 + 2 * symbols


def generate(count: int, *, symbols: int = 100, seed: int = 0,
             mean_gap_ns: float | None = None) -> MessageBlock:
    """A whole synthetic session of exactly `count` messages, opening and closing included.

    Unless `mean_gap_ns` is given, the flow's pace is chosen so its timestamps fit in market
    hours."""
    flow_count = count - opening_size(symbols) - closing_size(symbols)
    if flow_count < 0:
        raise ValueError(f"a session over {symbols} symbols has at least "
                         f"{count - flow_count} messages, not {count}")
    if mean_gap_ns is None:
        market_hours = MARKET_CLOSE - CLOSING_MARGIN - FLOW_START
        mean_gap_ns = min(DEFAULT_MEAN_GAP_NS, market_hours / max(flow_count, 1) / 1.5)
    generator = OrderFlow(symbols, seed=seed, mean_gap_ns=mean_gap_ns,
                          window_messages=min(1 << 17, max(1 << 10, flow_count)))
    blocks = [generator.opening()]
    remaining = flow_count
    while remaining and not generator.market_closed:
        blocks.append(generator.flow(min(remaining, 1 << 20)))
        remaining -= blocks[-1].count
    if remaining:
        raise ValueError(f"the market closed {remaining} messages short; lower mean_gap_ns")
    blocks.append(generator.closing())
    return MessageBlock.join(blocks)

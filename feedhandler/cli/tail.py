"""`feedhandler tail`: follow the handler's topics and print their ticks as a person reads them.

    feedhandler tail                                 # every data topic of itch.*, from now on
    feedhandler tail itch.trades --from 09:30 --symbol AAPL --count 20
    feedhandler tail --from seq:1000000 --type A,P --json | jq .price

The value format comes from the topics' schema records (`<prefix>schema`) unless `--format`
names it; ticks come in feed order across topics and partitions (feedhandler.consume.read).
Heavy imports wait until the command runs, so the other subcommands do not pay for them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from feedhandler.cli.exit_codes import ExitCode

HELP = "follow topics and print their ticks as people read them (or as JSON lines)"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
HEADER_FIELDS = ("session", "sequence", "message_type", "stock_locate", "tracking_number",
                 "timestamp", "time", "stock", "buy_sell_indicator")
SHARES_FIELDS = ("shares", "executed_shares", "cancelled_shares")
SIDES = {"B": "buy", "S": "sell"}


class UsageError(Exception):
    """A bad argument, said in one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topics", nargs="*", metavar="TOPIC",
                        help="topics to follow (default: every data topic the schema topic of "
                             "--topic-prefix describes)")
    parser.add_argument("--bootstrap-servers", default=DEFAULT_BOOTSTRAP,
                        help=f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--topic-prefix", default="itch.",
                        help="with no TOPIC: the handler's topic prefix (default itch.)")
    parser.add_argument("--from", dest="start", default="end", metavar="WHERE",
                        help="beginning, end (default), seq:N (the tick with sequence number "
                             "N on), or a time: HH:MM[:SS] today or an ISO 8601 date and time, "
                             "exchange time (America/New_York) unless it names a zone")
    parser.add_argument("--format", dest="value_format",
                        help="the topics' value format (default: from their schema records)")
    parser.add_argument("--symbol", action="append", default=[],
                        help="only this stock's ticks (repeatable, or comma-separated)")
    parser.add_argument("--type", dest="types", action="append", default=[],
                        help="only these message types, e.g. A,P (repeatable)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per tick (prices as decimals, alpha trimmed)")
    parser.add_argument("--count", default=None, metavar="N",
                        help="stop after printing N ticks")
    parser.add_argument("--no-follow", dest="follow", action="store_false",
                        help="stop at the topics' current end instead of waiting for more")
    parser.add_argument("--trade-date", metavar="YYYY-MM-DD",
                        help="the session's date, for --json times (default: an arrow "
                             "record's own, otherwise the first record's timestamp's)")


def _choices(values: list[str]) -> set[str]:
    return {v.strip() for value in values for v in value.split(",") if v.strip()}


def _check(args: argparse.Namespace):
    """The arguments, checked: (start, symbols, types, count, trade date)."""
    from feedhandler.kafka.consume import start_position
    from feedhandler.kafka.routing import VALUE_FORMATS
    from feedhandler.wire.itch import DTYPES

    try:
        start = start_position(args.start)
    except ValueError as error:
        raise UsageError(f"--from: {error}") from None
    if args.value_format is not None and args.value_format not in VALUE_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(VALUE_FORMATS)}, "
                         f"not {args.value_format!r}")
    types = _choices(args.types)
    unknown = sorted(types - set(DTYPES))
    if unknown:
        raise UsageError(f"--type: not ITCH 5.0 message types: {', '.join(unknown)}")
    count = None
    if args.count is not None:
        if not args.count.isdigit() or int(args.count) < 1:
            raise UsageError(f"--count must be a whole number of at least 1, not {args.count!r}")
        count = int(args.count)
    trade_date = None
    if args.trade_date:
        try:
            trade_date = dt.date.fromisoformat(args.trade_date)
        except ValueError:
            raise UsageError(f"--trade-date must be YYYY-MM-DD, not {args.trade_date!r}") from None
    return start, _choices(args.symbol), types, count, trade_date


def tail(args: argparse.Namespace) -> int:
    try:
        start, symbols, types, count, trade_date = _check(args)
    except UsageError as error:
        return _fail(ExitCode.USAGE, error)
    from feedhandler.kafka.config import KafkaClientConfig
    from feedhandler.kafka.consume import ReadError, read
    from feedhandler.kafka.topics import KafkaStartError, check_reachable

    try:
        check_reachable(KafkaClientConfig(args.bootstrap_servers))
    except KafkaStartError as error:
        return _fail(ExitCode.COULD_NOT_START, error)
    try:
        topics = args.topics or _described_topics(args.bootstrap_servers, args.topic_prefix)
        reader = read(args.bootstrap_servers, topics, start, follow=args.follow,
                      value_format=args.value_format, output="decoded", trade_date=trade_date)
    except ReadError as error:
        return _fail(ExitCode.USAGE, error)
    names = _symbols_of_locates(args.bootstrap_servers, topics)
    printed = 0
    try:
        with reader:
            for chunk in reader:
                for message_type, row in _in_feed_order(chunk):
                    if "stock" in row.dtype.names:
                        names[int(row["stock_locate"])] = str(row["stock"])
                    symbol = names.get(int(row["stock_locate"]), "")
                    if (types and message_type not in types) or (symbols and
                                                                 symbol not in symbols):
                        continue
                    print(json_line(message_type, row, symbol) if args.json
                          else text_line(message_type, row, symbol), flush=count is None)
                    printed += 1
                    if count is not None and printed >= count:
                        return ExitCode.OK
    except ReadError as error:
        return _fail(ExitCode.COULD_NOT_START, error)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:     # the reader of our output went away (| head)
        sys.stderr.close()
    return ExitCode.OK


def _fail(code: ExitCode, problem) -> int:
    print(f"feedhandler tail: {problem}", file=sys.stderr)
    return code


def _described_topics(bootstrap: str, prefix: str) -> list[str]:
    from feedhandler.kafka.consume import ReadError
    from feedhandler.kafka.contract import read_schemas

    schema_topic = prefix + "schema"
    try:
        topics = sorted(read_schemas(bootstrap, schema_topic))
    except (TimeoutError, RuntimeError) as error:
        raise ReadError(f"cannot read {schema_topic}: {error}") from None
    if not topics:
        raise ReadError(f"{schema_topic} describes no topics: name the topics to follow "
                        f"(and --format)")
    return topics


def _symbols_of_locates(bootstrap: str, topics: list[str]) -> dict[int, str]:
    """Stock names by locate code from the handler's checkpoint records, so that ticks
    without a stock field (executions, cancels, ...) show their symbol from the start."""
    from feedhandler.kafka.config import KafkaClientConfig
    from feedhandler.kafka.consume import schema_topic_of
    from feedhandler.kafka.resume import latest_checkpoint, read_checkpoints
    from feedhandler.kafka.routing import Routes

    prefix = schema_topic_of(topics[0])[:-len("schema")]
    try:
        checkpoint = latest_checkpoint(read_checkpoints(KafkaClientConfig(bootstrap),
                                                        Routes.by_category(prefix), timeout=5))
    except Exception:   # noqa: BLE001 - no checkpoint topic: names come from the ticks alone
        return {}
    if checkpoint is None:
        return {}
    return {locate: name.decode("latin-1") for locate, name in checkpoint.stocks.items()}


def _in_feed_order(chunk):
    """(message type, row) of a decoded chunk, by sequence number."""
    import heapq

    def run(message_type, rows):
        for sequence, row in zip(rows["sequence"].tolist(), rows):
            yield sequence, message_type, row
    ticks = heapq.merge(*(run(t, rows) for t, rows in chunk.items()), key=lambda tick: tick[0])
    for _, message_type, row in ticks:
        yield message_type, row


def time_of_day(nanoseconds: int) -> str:
    seconds, fraction = divmod(int(nanoseconds), 1_000_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}.{fraction:09d}"


def _price(message_type: str, name: str, value) -> str:
    from feedhandler.kafka.contract import price_decimals

    return f"{value:.{price_decimals(message_type, name)}f}"


def text_line(message_type: str, row, symbol: str) -> str:
    """`09:30:00.000123456  seq 1234  A Add Order (no MPID attribution)  AAPL  buy 100 @
    123.4500  order_reference_number=17`."""
    from feedhandler.kafka.contract import TYPE_NAMES, price_decimals

    names = row.dtype.names
    parts = [time_of_day(row["timestamp"]), f"seq {int(row['sequence'])}",
             f"{message_type} {TYPE_NAMES[message_type]}", symbol or "-"]
    if "buy_sell_indicator" in names:
        parts.append(SIDES.get(str(row["buy_sell_indicator"]), str(row["buy_sell_indicator"])))
    for name in names:
        if name in HEADER_FIELDS:
            continue
        if name in SHARES_FIELDS:
            parts.append(f"{int(row[name])} shares")
        elif price_decimals(message_type, name):
            label = "@" if name in ("price", "execution_price", "cross_price") else f"{name}="
            parts.append(f"{label} {_price(message_type, name, row[name])}"
                         if label == "@" else f"{label}{_price(message_type, name, row[name])}")
        else:
            parts.append(f"{name}={row[name]}")
    return "  ".join(parts)


def json_line(message_type: str, row, symbol: str) -> str:
    """Every field, alpha trimmed, prices as decimal numbers, `time_of_day` in exchange time
    and `time` in UTC (ISO 8601, nanoseconds)."""
    from feedhandler.kafka.contract import TYPE_NAMES

    out = {"type": message_type, "name": TYPE_NAMES[message_type], "symbol": symbol,
           "time_of_day": time_of_day(row["timestamp"]),
           "time": str(row["time"]) + "Z"}
    for name in row.dtype.names:
        if name in ("message_type", "time"):
            continue
        value = row[name]
        out[name] = value.item() if hasattr(value, "item") else value
    return json.dumps(out, separators=(",", ":"))

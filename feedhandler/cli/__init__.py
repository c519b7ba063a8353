"""Command line: `feedhandler SUBCOMMAND ...` (also `python -m feedhandler`).

Each subcommand has an `add_<name>_arguments(parser)` and a `<name>(args)` function here; the
work itself lives in its package (simulate: feedhandler.exchange, run: feedhandler.pipeline
behind feedhandler.cli.run)."""

from __future__ import annotations

import argparse
import logging
import sys


# What `simulate` serves and `run --connect` speaks.
TRANSPORTS = ("lz4", "soupbintcp")


def _host_port(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _ascii(text: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ASCII") from None


def add_simulate_arguments(parser: argparse.ArgumentParser):
    from feedhandler.exchange import config as sim

    parser.add_argument("--listen", type=_host_port,
                        default=(sim.DEFAULT_HOST, sim.DEFAULT_PORT), metavar="HOST:PORT",
                        help=f"where to listen (default {sim.DEFAULT_HOST}:{sim.DEFAULT_PORT}; "
                             "port 0 picks a free one)")
    parser.add_argument("--session", type=_ascii, default=sim.DEFAULT_SESSION,
                        help=f"session name, up to 10 characters (default "
                             f"{sim.DEFAULT_SESSION.decode()})")
    parser.add_argument("--username", type=_ascii, default=sim.DEFAULT_USERNAME,
                        help=f"accepted username, up to 6 characters (default "
                             f"{sim.DEFAULT_USERNAME.decode()})")
    parser.add_argument("--password", type=_ascii, default=sim.DEFAULT_PASSWORD,
                        help=f"accepted password, up to 10 characters (default "
                             f"{sim.DEFAULT_PASSWORD.decode()})")
    parser.add_argument("--count", type=int,
                        help="synthetic: messages in the session, opening and closing included; "
                             "replay: serve at most this many. Then end of session. Default: "
                             "the whole file, or a synthetic session that runs to the market close")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    parser.add_argument("--symbols", type=int, default=100,
                        help="synthetic: number of stocks (default 100)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages per second, 0 = as fast as the fastest client reads "
                             "(default 0)")
    parser.add_argument("--burst", type=float, default=1.0,
                        help="with --rate: peak-to-average rate; messages come in bursts this "
                             "many times faster than --rate with silences between (default 1)")
    parser.add_argument("--messages-per-packet", type=int, default=sim.DEFAULT_MESSAGES_PER_PACKET,
                        help=f"messages per frame (default {sim.DEFAULT_MESSAGES_PER_PACKET})")
    parser.add_argument("--codec", choices=["lz4", "none"], default="lz4",
                        help="frame compression (default lz4; soupbintcp sends plain messages)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="lz4",
                        help="lz4: the feed's own LZ4-framed session (default); soupbintcp: "
                             "NASDAQ SoupBinTCP 4.1, one ITCH message per sequenced data packet")
    parser.add_argument("--replay", metavar="FILE",
                        help="serve a NASDAQ TotalView-ITCH 5.0 file (binary file framing, plain "
                             "or gzip) instead of synthetic data")
    parser.add_argument("--speed", type=float,
                        help="with --replay: pace by the ITCH timestamps at this many times real "
                             "time (default: as fast as possible)")
    parser.add_argument("--retain-mb", type=int, default=sim.DEFAULT_RETAIN_BYTES >> 20,
                        help="endless synthetic or replay: MiB of frames kept for retransmission "
                             f"(default {sim.DEFAULT_RETAIN_BYTES >> 20})")
    parser.add_argument("--max-clients", type=int, default=sim.MAX_CLIENTS,
                        help=f"connections served at once (default {sim.MAX_CLIENTS})")
    parser.add_argument("--exit-after-end", action="store_true",
                        help="exit once the session has ended and the last client has received "
                             "end of session and disconnected (default: keep serving)")
    parser.add_argument("--quiet", action="store_true",
                        help="no status line and only warnings in the log")


def simulate(args: argparse.Namespace) -> int:
    from feedhandler.exchange.config import SimulatorConfig
    from feedhandler.exchange.server import Simulator
    from feedhandler.exchange.soupbin_server import SoupBinSimulator

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    try:
        config = SimulatorConfig(
            host=host, port=port, session=args.session, username=args.username,
            password=args.password, count=args.count, seed=args.seed, symbols=args.symbols,
            rate=args.rate, burst=args.burst, messages_per_packet=args.messages_per_packet,
            codec=args.codec, replay=args.replay, speed=args.speed,
            exit_after_end=args.exit_after_end, retain_bytes=args.retain_mb << 20,
            max_clients=args.max_clients, status_interval=None if args.quiet else 1.0)
        simulator = (SoupBinSimulator if args.transport == "soupbintcp" else Simulator)(config)
    except (ValueError, OSError) as error:
        print(f"feedhandler simulate: {error}", file=sys.stderr)
        return 2
    try:
        simulator.run()
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"feedhandler simulate: {error}", file=sys.stderr)
        return 1
    return 0


def add_run_arguments(parser: argparse.ArgumentParser):
    from feedhandler.cli.run import add_run_arguments as add

    add(parser, _host_port, TRANSPORTS)


def run(args: argparse.Namespace) -> int:
    from feedhandler.cli.run import run as run_handler

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_handler(args)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(version(namespace))


def version(_args: argparse.Namespace) -> int:
    from feedhandler.ops.version import version_report

    print(version_report())
    return 0


SUBCOMMANDS = {
    "simulate": (add_simulate_arguments, simulate,
                 "serve a synthetic or replayed ITCH 5.0 session over TCP"),
    "run": (add_run_arguments, run,
            "read a feed, decode it in parallel and publish every tick to Kafka"),
    "version": (lambda parser: None, version,
                "print the versions of feedhandler and what it runs on (also --version)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="feedhandler",
        description="NASDAQ TotalView-ITCH 5.0 feed handler and exchange simulator.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of feedhandler and what it runs on")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return SUBCOMMANDS[args.command][1](args)


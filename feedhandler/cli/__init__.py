"""Command line: `feedhandler SUBCOMMAND ...` (also `python -m feedhandler`).

Each subcommand has an `add_<name>_arguments(parser)` and a `<name>(args)` function here; the
work itself lives in its package (simulate: feedhandler.exchange, run: feedhandler.pipeline
behind feedhandler.cli.run). `run` and `simulate` also take their settings from the
environment and a TOML file (feedhandler.cli.config) and log as --log-level/--log-format say
(feedhandler.cli.logs); `config` checks a file or prints the configuration reference."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from feedhandler.cli import config, logs
from feedhandler.cli import tail as _tail
from feedhandler.cli.exit_codes import ExitCode


def _host_port(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


# The feed's transports: the LZ4-framed TCP session, NASDAQ's SoupBinTCP 4.1 over TCP, and
# MoldUDP64 over UDP.
TRANSPORTS = ("lz4", "soupbintcp", "moldudp64")


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
                             f"{sim.DEFAULT_PASSWORD.decode()}); prefer password-file in "
                             "the --config file or FEEDHANDLER_PASSWORD(_FILE): ps shows "
                             "flags")
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
    parser.add_argument("--messages-per-packet", type=int,
                        help=f"messages per frame (default {sim.DEFAULT_MESSAGES_PER_PACKET}; "
                             "moldudp64: as many as --max-payload always holds)")
    parser.add_argument("--codec", choices=["lz4", "none"], default="lz4",
                        help="frame compression (default lz4; soupbintcp sends plain messages)")
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
    parser.add_argument("--transport", choices=TRANSPORTS, default="lz4",
                        help="lz4: the feed's own LZ4-framed session on --listen (default); "
                             "soupbintcp: NASDAQ SoupBinTCP 4.1 on --listen, one ITCH message "
                             "per sequenced data packet; moldudp64: datagrams to --group (and "
                             "--line-b), re-requests on --request-server")
    add_moldudp_simulate_arguments(parser.add_argument_group("moldudp64"))


# The addresses of a MoldUDP64 feed, as `simulate` (sending) and `run` (receiving) take them.
MOLDUDP_ADDRESSES = {
    "--group": ("ADDR:PORT", "A line: multicast group or unicast address to send to",
                "A line: multicast group to join, or local unicast address to bind"),
    "--line-b": ("ADDR:PORT", "B line: a second group or address carrying the same packets",
                 "B line of the same session. moldudp64: a second group or address, each "
                 "message taken from whichever line brings it first; soupbintcp: a backup "
                 "server the client fails over to at the next sequence number"),
    "--interface": ("ADDR", "local address multicast leaves from (IP_MULTICAST_IF)",
                    "local address to join the groups on (default: any)"),
    "--request-server": ("HOST:PORT", "where the request server listens (default: none)",
                         "MoldUDP64 request server for gaps both lines missed (default: none, "
                         "gaps are counted as missing)"),
}


def add_moldudp_addresses(group, *, sending: bool) -> None:
    for flag, (metavar, send_help, receive_help) in MOLDUDP_ADDRESSES.items():
        group.add_argument(flag, metavar=metavar, help=send_help if sending else receive_help,
                           type=None if flag == "--interface" else _host_port)


def add_moldudp_simulate_arguments(group) -> None:
    from feedhandler.wire import moldudp

    add_moldudp_addresses(group, sending=True)
    group.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                       help="A line: drop each data datagram with probability P (seeded)")
    group.add_argument("--drop-every", type=int, default=0, metavar="N",
                       help="A line: drop every Nth data datagram")
    group.add_argument("--drop-rate-b", type=float, default=0.0, metavar="P",
                       help="B line: its own --drop-rate")
    group.add_argument("--drop-every-b", type=int, default=0, metavar="N",
                       help="B line: its own --drop-every")
    group.add_argument("--max-payload", type=int, default=moldudp.DEFAULT_MAX_PAYLOAD,
                       help=f"largest datagram in bytes (default {moldudp.DEFAULT_MAX_PAYLOAD}, "
                            "fits Ethernet; loopback takes up to 65507)")
    group.add_argument("--ttl", type=int, default=1, help="multicast TTL (default 1)")


def simulator_config(args: argparse.Namespace):
    """The simulator configuration the arguments describe (ValueError for a bad combination):
    a SimulatorConfig, or for moldudp64 a MoldSimulatorConfig."""
    from feedhandler.exchange.config import DEFAULT_MESSAGES_PER_PACKET, SimulatorConfig

    settings = dict(
        session=args.session, count=args.count, seed=args.seed, symbols=args.symbols,
        rate=args.rate, burst=args.burst, messages_per_packet=args.messages_per_packet,
        replay=args.replay, speed=args.speed, exit_after_end=args.exit_after_end,
        retain_bytes=args.retain_mb << 20, status_interval=None if args.quiet else 1.0)
    if args.transport == "moldudp64":
        from feedhandler.exchange.moldudp_server import mold_config

        if args.group is None:
            raise ValueError("--transport moldudp64 needs --group ADDR:PORT")
        return mold_config(
            group=args.group, line_b=args.line_b, interface=args.interface,
            request_server=args.request_server, drop_rate=args.drop_rate,
            drop_every=args.drop_every, drop_rate_b=args.drop_rate_b,
            drop_every_b=args.drop_every_b, max_payload=args.max_payload, ttl=args.ttl,
            **settings)
    if settings["messages_per_packet"] is None:
        settings["messages_per_packet"] = DEFAULT_MESSAGES_PER_PACKET
    host, port = args.listen
    return SimulatorConfig(host=host, port=port, username=args.username,
                           password=args.password, codec=args.codec,
                           max_clients=args.max_clients, **settings)


def simulate(args: argparse.Namespace) -> int:
    from feedhandler.exchange.moldudp_server import MoldSimulator
    from feedhandler.exchange.server import Simulator
    from feedhandler.exchange.soupbin_server import SoupBinSimulator

    try:
        config = simulator_config(args)
        server = {"soupbintcp": SoupBinSimulator, "moldudp64": MoldSimulator}
        simulator = server.get(args.transport, Simulator)(config)
    except (ValueError, OSError) as error:
        print(f"feedhandler simulate: {args.configuration.explain(error)}", file=sys.stderr)
        return ExitCode.USAGE
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

    add(parser, _host_port)


def run(args: argparse.Namespace) -> int:
    from feedhandler.cli.run import run as run_handler

    # librdkafka's own log lines through Python logging, in the format of the rest
    args.producer_settings = [*args.producer_settings, ("logger", logs.LibrdkafkaLog())]
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


def check_run(args: argparse.Namespace) -> None:
    from feedhandler.cli.run import check_arguments

    check_arguments(args)


def add_config_arguments(parser: argparse.ArgumentParser):
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="validate a TOML file (with the environment and any flags) and print the "
                      "effective settings, secrets masked; exit 0, or 2 with one line",
        description="Validate FILE for a command, with the FEEDHANDLER_* environment and any "
                    "of the command's FLAGS on top, without starting anything; print the "
                    "effective settings as TOML with where each came from, secrets masked.")
    check.add_argument("--command", dest="checked", choices=sorted(CHECKS), default="run",
                       help="the command the file is for (default run)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("flags", nargs=argparse.REMAINDER, metavar="FLAGS",
                       help="flags of the command, as they would be given to it")
    actions.add_parser("reference", help="print docs/configuration.md: every key, flag, "
                                         "variable, type and default")


def config_command(args: argparse.Namespace) -> int:
    from feedhandler.cli.validate import UsageError
    from feedhandler.kafka.config import PRODUCER_DEFAULTS

    parser, tables = build_parser()
    if args.action == "reference":
        print(config.reference_page({name: tables[name] for name in CHECKS}, PRODUCER_DEFAULTS),
              end="")
        return ExitCode.OK
    logs.setup("warning", "text")
    prog = "feedhandler config check"
    checked = parser.parse_args([args.checked, "--config", args.file, *args.flags])
    try:
        configuration = config.resolve(tables[args.checked], checked)
    except config.ConfigError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return ExitCode.USAGE
    for warning in configuration.warnings:
        logging.getLogger("feedhandler.config").warning("%s", warning)
    try:
        CHECKS[args.checked](checked)
    except (UsageError, ValueError) as error:
        print(f"{prog}: {configuration.explain(error)}", file=sys.stderr)
        return ExitCode.USAGE
    print(config.render(configuration, checked,
                        PRODUCER_DEFAULTS if tables[args.checked].kafka else None), end="")
    return ExitCode.OK


SUBCOMMANDS = {
    "simulate": (add_simulate_arguments, simulate,
                 "serve a synthetic or replayed ITCH 5.0 session over TCP"),
    "run": (add_run_arguments, run,
            "read a feed, decode it in parallel and publish every tick to Kafka"),
    "tail": (_tail.add_arguments, _tail.tail, _tail.HELP),
    "version": (lambda parser: None, version,
                "print the versions of feedhandler and what it runs on (also --version)"),
    "config": (add_config_arguments, config_command,
               "check a configuration file, or print the configuration reference"),
}
# The commands that take --config, the environment and --log-level/--log-format, and what
# `config check` runs on their settings (without creating anything).
CHECKS = {"run": check_run, "simulate": simulator_config}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, config.Table]]:
    """The command line, and the option table of every configurable command."""
    parser = argparse.ArgumentParser(
        prog="feedhandler",
        description="NASDAQ TotalView-ITCH 5.0 feed handler and exchange simulator.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of feedhandler and what it runs on")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tables = {}
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        if name in CHECKS:
            logs.add_arguments(subparser)
            tables[name] = config.make_configurable(name, subparser)
    return parser, tables


def main(argv: list[str] | None = None) -> int:
    parser, tables = build_parser()
    args = parser.parse_args(argv)
    if args.command in tables:
        try:
            configuration = config.resolve(tables[args.command], args, os.environ)
        except config.ConfigError as error:
            print(f"feedhandler {args.command}: {error}", file=sys.stderr)
            return ExitCode.USAGE
        logs.setup(logs.level_of(args), args.log_format)
        for warning in configuration.warnings:
            logging.getLogger("feedhandler.config").warning("%s", warning)
    return SUBCOMMANDS[args.command][1](args)

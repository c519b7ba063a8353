"""`feedhandler run`: the feed handler operators run on trading hosts.

Reads the feed on the main thread (as a session client with --connect, or accepting one feed
connection with --listen), decodes on --workers threads and publishes through one producer.
Prints a status line a second on stderr and a final account; exits 0 only if every tick
accepted from the feed was acknowledged by Kafka and the feed had no unfilled gap (exit codes:
feedhandler.cli.exit_codes).

Startup checks everything it can before it creates anything: arguments and Kafka settings
(`validate`), then whether Kafka answers, then the feed (login, or the --listen port); only
then the producer and the topics. Each failure is one line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import signal
import sys
import threading
import time
from zoneinfo import ZoneInfo

from confluent_kafka import KafkaException

from feedhandler.cli import TRANSPORTS, add_moldudp_addresses, validate
from feedhandler.cli.exit_codes import ExitCode, epilog
from feedhandler.cli.logs import ACCOUNT_LOGGER, STATUS_LOGGER, json_logging, utc_timestamp
from feedhandler.kafka.producer import PRODUCER_LINK_MODES, ProducerLinkUnavailable, link_problem
from feedhandler.kafka.resume import (Checkpoint, fence_previous, latest_checkpoint,
                                      read_checkpoints)
from feedhandler.kafka.routing import CATEGORIES, VALUE_FORMATS
from feedhandler.kafka.sink import STATISTICS_INTERVAL_MS
from feedhandler.kafka.topics import KafkaStartError, check_reachable
from feedhandler.ops import service, threads
from feedhandler.ops.latency import format_table
from feedhandler.pipeline.handler import DECODE_ON, Handler, HandlerConfig
from feedhandler.pipeline.profiles import DEFAULT_PROFILE, PROFILES, profile_settings
from feedhandler.session import (FrameSource, ListenSource, LoginRejected, SessionClient,
                                 SessionError)
from feedhandler.session.moldudp import GAP_WAIT as MOLD_GAP_WAIT
from feedhandler.session.moldudp import MoldSource
from feedhandler.session.protocol import LINK_TIMEOUT, SESSION_LENGTH, SESSION_NOT_AVAILABLE
from feedhandler.session.soupbin import SoupBinClient
from feedhandler.session.source import GAP_WAIT

log = logging.getLogger("feedhandler.run")
status_log = logging.getLogger(STATUS_LOGGER)
account_log = logging.getLogger(ACCOUNT_LOGGER)

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
EXCHANGE_TIMEZONE = ZoneInfo("America/New_York")
DEFAULT_LOGIN_TIMEOUT = 30.0


def _producer_setting(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _route(text: str) -> tuple[str, str]:
    source, separator, target = text.partition("=")
    if not separator or not target:
        raise argparse.ArgumentTypeError(f"expected TYPE=CATEGORY, got {text!r}")
    return source, target


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value}")
    return value


def _realtime_priority(text: str) -> int:
    value = _count(text)
    if value not in threads.REALTIME_PRIORITIES:
        raise argparse.ArgumentTypeError(
            f"a SCHED_FIFO priority is {threads.REALTIME_PRIORITIES.start}-"
            f"{threads.REALTIME_PRIORITIES.stop - 1}, not {value}")
    return value


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None


def _seconds(text: str) -> float:
    value = _number_of_seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _wait_seconds(text: str) -> float:
    """A finite wait, 0 included (none): a gap that waited forever would hold everything
    after it."""
    value = _number_of_seconds(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or a finite number of seconds, not {text}")
    return value


def gil_switch_interval(args: argparse.Namespace) -> float:
    """--gil-switch-interval, or the --profile's."""
    return args.gil_switch_interval or PROFILES[args.profile].gil_switch_interval


def pipeline_settings(args: argparse.Namespace) -> dict:
    """The --profile's pipeline settings, with --decode over its own."""
    settings = dict(PROFILES[args.profile].pipeline)
    if args.decode:
        settings["decode"] = args.decode
    return settings


def add_run_arguments(parser: argparse.ArgumentParser, host_port) -> None:
    parser.epilog = epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--transport", choices=TRANSPORTS, default="lz4",
                        help="lz4: the feed's own LZ4-framed TCP session of --connect or "
                             "--listen (default); soupbintcp: NASDAQ SoupBinTCP 4.1 with "
                             "--connect (and a backup --line-b); moldudp64: UDP datagrams on "
                             "--group (and --line-b), gaps re-requested from --request-server")
    add_moldudp_addresses(parser.add_argument_group("feed lines (moldudp64; --line-b also "
                                                    "soupbintcp)"), sending=False)
    feed = parser.add_mutually_exclusive_group()
    feed.add_argument("--connect", type=host_port, metavar="HOST:PORT",
                      help="log in to a feed server (e.g. `feedhandler simulate`)")
    feed.add_argument("--listen", type=host_port, metavar="HOST:PORT",
                      help="accept one connection that streams data frames (no login)")
    parser.add_argument("--username", default="feed", help="login username (default feed)")
    parser.add_argument("--password", default="feed",
                        help="login password (default feed); prefer password-file in the "
                             "--config file or FEEDHANDLER_PASSWORD(_FILE): ps shows flags")
    parser.add_argument("--session", default="", help="session to join (default: current)")
    parser.add_argument("--sequence", type=int, default=None,
                        help="first sequence number wanted: 1 = whole session, 0 = from now on; "
                             "default: resume where Kafka's data ends (the checkpoint topic), "
                             "else 1. Ticks Kafka already holds are never written twice")
    parser.add_argument("--max-reconnects", type=_count, default=None, metavar="N",
                        help="--connect: give up (exit 4) after N reconnect attempts in a row "
                             "that did not get the session going again (a login followed by "
                             "garbage counts); default: keep trying, at most one attempt every "
                             "5 s")
    parser.add_argument("--login-timeout", type=_seconds, default=DEFAULT_LOGIN_TIMEOUT,
                        metavar="SECONDS",
                        help="--connect: keep trying the first login this long (a feed server "
                             "still starting), quietly, then exit 3 with the last reason "
                             f"(default {DEFAULT_LOGIN_TIMEOUT:g})")
    parser.add_argument("--stall-timeout", type=_seconds, default=LINK_TIMEOUT, metavar="SECONDS",
                        help="a frame that takes longer than this from its first byte to its "
                             f"last is a dead link (default {LINK_TIMEOUT:g}, the link timeout)")
    parser.add_argument("--gap-wait", type=_wait_seconds, default=None, metavar="SECONDS",
                        help="how long a gap (messages missing, later ones already here) waits "
                             "for a late frame, or for the B line's copy, before it is "
                             "re-requested or, where nothing can be asked again, counted "
                             f"missing (default: the transport's, {MOLD_GAP_WAIT:g} for moldudp64, "
                             f"{GAP_WAIT:g} for the others)")
    parser.add_argument("--bootstrap-servers", default=DEFAULT_BOOTSTRAP,
                        help=f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP}, the broker "
                             "of scripts/kafka.sh)")
    parser.add_argument("-X", dest="producer_settings", type=_producer_setting, action="append",
                        default=[], metavar="KEY=VALUE",
                        help="librdkafka setting, e.g. -X linger.ms=5 (repeatable); the "
                             "security ones (security.protocol, sasl.*, ssl.*) reach every "
                             "Kafka client of the handler (docs/kafka.md, Secured Kafka)")
    parser.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                        help="throughput: large producer batches (linger.ms 20) (default); "
                             "latency: linger.ms 1, short socket reads decoded on the "
                             "publisher. -X settings win; see docs/kafka.md")
    parser.add_argument("--workers", type=int, default=2,
                        help="decode threads with --decode pool (default 2)")
    parser.add_argument("--decode", choices=DECODE_ON,
                        help="where socket reads are decoded: pool: on --workers threads; "
                             "publisher: on the publisher thread, one hand-off less for "
                             "every read (default: the profile's, throughput pool, latency "
                             "publisher)")
    parser.add_argument("--format", choices=VALUE_FORMATS, default="struct",
                        help="record value format (default struct); see docs/kafka.md")
    parser.add_argument("--exactly-once", action="store_true",
                        help="Kafka transactions: ticks and the checkpoint that covers them "
                             "commit together about every 100 ms, so read_committed consumers "
                             "see every tick exactly once across any crash (transactional.id "
                             "feedhandler-<topic prefix> unless -X transactional.id is given)")
    parser.add_argument("--headers", action="store_true",
                        help="per-tick formats: type, session and sequence headers and the "
                             "ITCH time as record timestamp on every record (about half the rate)")
    parser.add_argument("--producer-link", choices=PRODUCER_LINK_MODES, default="auto",
                        help="struct/raw: produce per-tick records from C into the producer's "
                             "handle: auto = where it can be had, else produce_batch with a "
                             "warning (default); require = or exit 3; off = always produce_batch "
                             "(slower; see docs/kafka.md)")
    parser.add_argument("--python-produce", dest="producer_link", action="store_const",
                        const="off", help="same as --producer-link off")
    parser.add_argument("--trade-date", type=datetime.date.fromisoformat,
                        help="date of the ITCH timestamps, for record timestamps with --headers "
                             "and the arrow format's time column (default today, New York)")
    parser.add_argument("--topic-prefix", default="itch.", help="topic name prefix (default itch.)")
    parser.add_argument("--route", type=_route, action="append", default=[],
                        metavar="TYPE=CATEGORY",
                        help=f"send a message type or a category ({', '.join(CATEGORIES)}) to "
                             "another topic suffix (repeatable)")
    parser.add_argument("--partitions", type=int, default=6,
                        help="partitions of topics created by the handler (default 6)")
    parser.add_argument("--replication-factor", type=int, default=-1,
                        help="replication factor of created topics (default: broker's)")
    parser.add_argument("--flush-timeout", type=float, default=60.0,
                        help="seconds to wait for Kafka at the end (default 60)")
    parser.add_argument("--gil-switch-interval", type=_seconds, metavar="SECONDS",
                        help="the process's GIL switch interval while it runs (default: the "
                             "profile's, " + ", ".join(
                                 f"{name} {profile.gil_switch_interval}"
                                 for name, profile in PROFILES.items())
                             + "; Python's own is 0.005)")
    parser.add_argument("--metrics-port", type=_port, default=0, metavar="PORT",
                        help="serve Prometheus metrics (/metrics), /healthz and /readyz on this "
                             "port (default 0: off); see docs/operations.md")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                        help="address the metrics port binds to (default 127.0.0.1; 0.0.0.0 "
                             "for every interface)")
    parser.add_argument("--cpus", metavar="LIST",
                        help="CPU affinity: a list for the whole process (0,1 or 0-3), and/or "
                             "per thread role ROLE=CPUS with roles reader, decode, publisher "
                             "(e.g. reader=0,decode=1+2,publisher=1; + joins CPUs of one role)")
    parser.add_argument("--realtime-priority", type=_realtime_priority, default=0,
                        metavar="N",
                        help="schedule the reader, decode and publisher threads SCHED_FIFO at "
                             "priority N (1-99; needs CAP_SYS_NICE): reads are not kept "
                             "waiting by other work of the host; librdkafka's threads keep "
                             "the normal policy (default: off); see docs/operations.md")
    parser.add_argument("--quiet", action="store_true", help="no status lines")
    parser.add_argument("--json-stats", action="store_true",
                        help="status lines and final account as JSON on stdout")


def midnight_ms(trade_date: datetime.date | None) -> int:
    """Epoch milliseconds of midnight in New York on the trade date (ITCH's time base)."""
    trade_date = trade_date or datetime.datetime.now(EXCHANGE_TIMEZONE).date()
    midnight = datetime.datetime.combine(trade_date, datetime.time(), EXCHANGE_TIMEZONE)
    return int(midnight.timestamp() * 1000)


def frame_source(args: argparse.Namespace, session: str | bytes, sequence: int) -> FrameSource:
    """The frame source of --connect, --listen or --transport moldudp64."""
    common = {"session": session, "sequence": sequence, "stall_timeout": args.stall_timeout}
    if args.gap_wait is not None:
        common["gap_wait"] = args.gap_wait
    if args.transport == "moldudp64":
        return MoldSource([args.group] + ([args.line_b] if args.line_b else []),
                          interface=args.interface, request_server=args.request_server, **common)
    if args.transport == "soupbintcp":
        return SoupBinClient(*args.connect, backup=args.line_b, username=args.username,
                             password=args.password, max_reconnects=args.max_reconnects, **common)
    if args.connect:
        return SessionClient(*args.connect, username=args.username, password=args.password,
                             max_reconnects=args.max_reconnects, **common)
    return ListenSource(*args.listen, **common)


class FeedUnreachable(Exception):
    """--connect: no login within --login-timeout (one line: the feed and the last reason)."""


class _Quiet(logging.Filter):
    """Keeps a logger's warnings instead of letting them out (the last one is the reason)."""

    def __init__(self):
        super().__init__()
        self.last = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.last = record.getMessage()
        return False


def _opened(source: FrameSource, login_timeout: float) -> FrameSource:
    """`source`, opened. A SessionClient retries a feed that does not answer yet (a server still
    starting) without a warning per attempt, for up to `login_timeout` seconds; then
    FeedUnreachable with the last reason."""
    if not isinstance(source, SessionClient):
        source.open()
        return source
    quiet = _Quiet()
    gave_up = threading.Event()

    def give_up():
        gave_up.set()
        source.close()              # open() returns

    source.log.addFilter(quiet)
    timer = threading.Timer(login_timeout, give_up)
    timer.daemon = True
    timer.start()
    try:
        source.open()
    finally:
        timer.cancel()
        timer.join()                # give_up() ran to its end, or never will
        source.log.removeFilter(quiet)
    if gave_up.is_set():            # closed: even a login just made is of no use now
        host, port = source.address
        reason = quiet.last or "no answer"
        reason = reason.partition("connection lost: ")[2] or reason
        raise FeedUnreachable(f"no login at the feed {host}:{port} within {login_timeout:g} s: "
                              f"{reason}")
    return source


def open_source(args: argparse.Namespace, checkpoints: dict[bytes, Checkpoint]) -> FrameSource:
    """The frame source, opened. Without --sequence, a --connect run logs in to the session of
    the newest checkpoint (or --session's) at its position; when the exchange no longer has
    that session (a new day), to the current session from its start. MoldUDP64 does the
    same without a login: it follows the checkpoint's session from its position (re-requesting
    what the stream is ahead of), and refuses datagrams of any other session."""
    if args.sequence is not None or args.listen:
        return _opened(frame_source(args, args.session,
                                    1 if args.sequence is None else args.sequence),
                       args.login_timeout)
    wanted = args.session.encode("ascii").ljust(SESSION_LENGTH) if args.session else None
    checkpoint = checkpoints.get(wanted) if wanted else latest_checkpoint(checkpoints)
    if checkpoint is None:
        return _opened(frame_source(args, args.session, 1), args.login_timeout)
    log.info("resuming session %s at sequence %d (checkpoint)",
             checkpoint.session.decode().strip(), checkpoint.next_sequence)
    try:
        return _opened(frame_source(args, checkpoint.session, checkpoint.next_sequence),
                       args.login_timeout)
    except LoginRejected as error:
        if wanted or error.reason != SESSION_NOT_AVAILABLE:
            raise
        log.info("session %s is over: starting the current session",
                 checkpoint.session.decode().strip())
        return _opened(frame_source(args, "", 1), args.login_timeout)


class StatusPrinter(threading.Thread):
    """One status line a second: the time, rates in and out, queue depth, producer lag and,
    as JSON (--json-stats on stdout, or a log record under --log-format json), the running
    totals."""

    def __init__(self, handler: Handler, source: FrameSource, as_json: bool,
                 as_log: bool = False):
        super().__init__(name="fh-status", daemon=True)
        self.handler = handler
        self.source = source
        self.as_json = as_json
        self.as_log = as_log
        self.done = threading.Event()

    def run(self):
        threads.name_thread(self.name)
        account, acks = self.handler.account, self.handler.acks
        ledger, tracker = self.handler.sink.ledger, self.source.tracker
        last = (time.monotonic(), account.messages, acks.ticks)
        while not self.done.wait(1.0):
            now = (time.monotonic(), account.messages, acks.ticks)
            seconds = now[0] - last[0]
            failed = ledger.errors.units
            status = {
                "timestamp": utc_timestamp(time.time()),
                "in_per_s": round((now[1] - last[1]) / seconds),
                "delivered_per_s": round((now[2] - last[2]) / seconds),
                "reads_queued": self.handler.queue_depth(),
                "in_producer": self.handler.outstanding(),
                "lag_ms": round(acks.oldest_age_ms(), 1),
                "quarantined": account.quarantined,
                "failed": failed,
                "gaps": len(tracker.gaps),
                # running totals; lost so far: failed, or missing from the feed
                "frames": account.frames,
                "messages": now[1],
                "produced": ledger.ticks,
                "delivered": now[2],
                "missing": tracker.missing,
                "lost": failed + tracker.missing,
            }
            last = now
            if self.as_json:
                print(json.dumps(status), flush=True)
            elif self.as_log:
                del status["timestamp"]             # the record's own
                status_log.info("status", extra=status)
            else:
                print(f"{status['timestamp']} in {status['in_per_s'] / 1e3:9.1f}k msg/s | "
                      f"delivered "
                      f"{status['delivered_per_s'] / 1e3:9.1f}k/s | queued "
                      f"{status['reads_queued']:3d} reads | in producer "
                      f"{status['in_producer']:8d} | lag {status['lag_ms']:8.1f} ms | "
                      f"quarantined {status['quarantined']} | failed {status['failed']} | "
                      f"gaps {status['gaps']}",
                      file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    # Until the handler's own handlers take over, SIGTERM stops startup as SIGINT does, and
    # SIGHUP runs the reload hooks only.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _hang_up(None))
    threads.name_thread("feedhandler")      # what ps shows; threads created later inherit it
    try:
        return _run(args)
    except KeyboardInterrupt:       # before the signal handlers are in place: nothing read
        _say("interrupted before the feed was read")
        return ExitCode.INTERRUPTED


def _hang_up(handler: Handler | None) -> None:
    """SIGHUP: the reload hooks (reopen log files...), then the account so far in the log.
    The handler goes on as before."""
    log.warning("SIGHUP: reloading")
    service.reload()
    if handler is not None:
        account = handler.account
        log.warning("account so far: %s", json.dumps({
            **{key: getattr(account, key) for key in ("frames", "messages", "decoded",
                                                      "quarantined")},
            "produced": handler.sink.ledger.ticks, "delivered": handler.acks.ticks,
            "failed": handler.sink.ledger.errors.units, "in_producer": handler.outstanding()}))


def _check_transport(args: argparse.Namespace) -> None:
    if args.transport == "moldudp64":
        if args.group is None and not (args.connect or args.listen):
            raise validate.MissingOption("--transport moldudp64 takes --group ADDR:PORT (and "
                                         "--line-b, --interface, --request-server as needed)",
                                         ("--group",))
        if args.connect or args.listen:
            raise validate.UsageError("--transport moldudp64 takes --group ADDR:PORT (and "
                                      "--line-b, --interface, --request-server), not --connect "
                                      "or --listen")
        return
    if args.group or args.interface or args.request_server:
        raise validate.UsageError(f"--transport {args.transport} takes --connect or --listen "
                                  "(--group, --interface and --request-server are for "
                                  "moldudp64)")
    if args.transport == "soupbintcp":
        if not args.connect:
            raise validate.MissingOption("--transport soupbintcp needs --connect HOST:PORT (and "
                                         "--line-b HOST:PORT for a backup session)",
                                         ("--connect",))
    elif not (args.connect or args.listen):
        raise validate.MissingOption(f"--transport {args.transport} takes --connect or --listen: "
                                     "one of --connect, --listen is required",
                                     ("--connect", "--listen"))
    elif args.line_b:
        raise validate.UsageError("--line-b needs --transport soupbintcp or moldudp64")


def _say(problem) -> None:
    """The one line an operator is told: on stderr, or an error record under --log-format
    json (so that every line is JSON)."""
    if json_logging():
        log.error("%s", problem)
    else:
        print(f"feedhandler run: {problem}", file=sys.stderr, flush=True)


def _fail(code: ExitCode, problem) -> ExitCode:
    _say(problem)
    return code


def producer_settings(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The -X settings over the --profile's own, and --exactly-once's transactional.id."""
    settings = list(profile_settings(args.profile, dict(args.producer_settings)).producer.items())
    if args.exactly_once and not any(key == "transactional.id" for key, _ in settings):
        settings.append(("transactional.id", f"feedhandler-{args.topic_prefix}"))
    return settings


def check_arguments(args: argparse.Namespace):
    """(routes, Kafka client config) of the arguments, checked without connecting anywhere
    (also `feedhandler config check`); validate.UsageError for the first problem."""
    validate.counts(args)
    validate.value_format(args.format)
    _check_transport(args)
    routes = validate.routes(args.topic_prefix, args.route)
    return routes, validate.kafka_client(args.bootstrap_servers, producer_settings(args))


def _explained(args: argparse.Namespace, problem) -> str:
    """The problem, saying which config file or variable gave a value it names."""
    configuration = getattr(args, "configuration", None)
    return configuration.explain(problem) if configuration else str(problem)


def _run(args: argparse.Namespace) -> int:
    try:
        routes, kafka = check_arguments(args)
        cpus = threads.parse_cpus(args.cpus) if args.cpus else {}
        if "decode" in cpus and pipeline_settings(args)["decode"] == "publisher":
            raise validate.UsageError("--cpus decode=...: with --decode publisher (the latency "
                                      "profile's) no thread decodes but the publisher; pin "
                                      "publisher= instead")
    except (validate.UsageError, ValueError) as error:
        return _fail(ExitCode.USAGE, _explained(args, error))
    if args.realtime_priority:
        try:
            threads.check_realtime(args.realtime_priority)
        except PermissionError as error:
            return _fail(ExitCode.COULD_NOT_START, error)
    threads.pin_process(cpus)
    metrics = statistics = None
    if args.metrics_port:
        from feedhandler.ops.metrics import KafkaStatistics, MetricsServer

        statistics = KafkaStatistics(int(kafka.settings.get("statistics.interval.ms",
                                                            STATISTICS_INTERVAL_MS)))
        try:
            metrics = MetricsServer(args.metrics_host, args.metrics_port, statistics)
        except OSError as error:
            return _fail(ExitCode.COULD_NOT_START, f"--metrics-port: cannot serve on "
                         f"{args.metrics_host}:{args.metrics_port}: {error.strerror or error}")
    try:
        return _start(args, routes, kafka, cpus, metrics, statistics)
    finally:
        if metrics is not None:
            metrics.close()


def _start(args, routes, kafka, cpus, metrics, statistics) -> int:
    """From the checks that need Kafka or the feed to the final account."""
    if args.producer_link == "require" and (problem := link_problem()):
        return _fail(ExitCode.COULD_NOT_START, f"--producer-link require: {problem}")
    try:
        check_reachable(kafka)
    except KafkaStartError as error:
        return _fail(ExitCode.COULD_NOT_START, error)
    config = HandlerConfig(
        bootstrap_servers=kafka.bootstrap_servers, value_format=args.format,
        workers=args.workers, routes=routes, partitions=args.partitions,
        replication_factor=args.replication_factor, producer_overrides=kafka.settings,
        headers=args.headers, timestamp_base_ms=midnight_ms(args.trade_date),
        flush_timeout=args.flush_timeout, producer_link=args.producer_link, cpus=cpus,
        realtime_priority=args.realtime_priority,
        statistics=statistics, **pipeline_settings(args))
    try:
        if "transactional.id" in kafka.settings:
            fence_previous(kafka)
        checkpoints = read_checkpoints(kafka, routes)
    except (KafkaException, TimeoutError, RuntimeError) as error:
        return _fail(ExitCode.COULD_NOT_START, f"cannot read {routes.checkpoint}: {error}")
    # The feed is opened before any Kafka resource exists: a refused login or a port in use
    # must not leave topics behind.
    try:
        source = open_source(args, checkpoints)
    except ValueError as error:             # a username, password or session too long
        return _fail(ExitCode.USAGE, _explained(args, error))
    except LoginRejected as error:
        return _fail(ExitCode.COULD_NOT_START, f"the feed refused the login: {error}")
    except FeedUnreachable as error:
        return _fail(ExitCode.COULD_NOT_START, error)
    except (SessionError, OSError) as error:
        return _fail(ExitCode.COULD_NOT_START, error)
    session = source.tracker.session
    if args.connect or (args.transport == "moldudp64" and session):
        config.resume = checkpoints.get(session) or Checkpoint(session)
    try:
        handler = Handler(config)
    except (KafkaStartError, ProducerLinkUnavailable) as error:
        source.close()
        return _fail(ExitCode.COULD_NOT_START, error)

    notifier = service.ServiceNotifier(service.SystemdNotifier(), handler)

    def on_signal(signum, _frame):
        log.warning("%s: stop reading, drain and flush", signal.Signals(signum).name)
        notifier.stopping(signal.Signals(signum).name)
        handler.stop()
        source.close()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _hang_up(handler))
    log_json = getattr(args, "log_format", "text") == "json"
    status = None if args.quiet else StatusPrinter(handler, source, args.json_stats, log_json)
    if status:
        status.start()
    if metrics is not None:
        metrics.attach(handler, source)
        metrics.phase = "running"
    if notifier.notifier.enabled:
        notifier.start()        # READY=1: the feed is logged in (or listening), Kafka answered
    sys.setswitchinterval(gil_switch_interval(args))
    # What start-up made lives as long as the process: frozen, the collector's full passes
    # during the run leave it alone. Walking it stopped every thread for 20-50 ms in
    # bench_latency (1-5 ms frozen), the longest pause in the handler's own part.
    gc.freeze()
    started = time.monotonic()
    failure = None
    try:
        handler.run(source)     # settles the account before an error from the source surfaces
    except SessionError as error:
        failure = error
    finally:
        if status:
            status.done.set()
        if metrics is not None:
            metrics.phase = "stopping"
        notifier.stopping("the feed ended")
        notifier.done.set()
    account = handler.account
    elapsed = time.monotonic() - started
    summary = {**account.as_dict(), "seconds": round(elapsed, 3),
               "ticks_per_s": round(account.delivered / elapsed) if elapsed else 0,
               "latency_ms": handler.latencies.summary_ms()}
    if hasattr(source, "stats"):
        summary["feed"] = source.stats()
    if args.json_stats:
        print(json.dumps({"final": summary}), flush=True)
    if log_json:
        account_log.info("final account", extra=summary)
    else:
        print(format_account(summary), file=sys.stderr, flush=True)
    if account.lost:
        code = ExitCode.TICKS_LOST
    elif failure:
        code = ExitCode.FEED_FAILED
    else:
        code = ExitCode.OK
    if failure:
        _say(f"the feed ended early: {failure}")
    return code


def format_account(summary: dict) -> str:
    lines = ["final account:"]
    for key in ("producer_path", "frames", "messages", "decoded", "quarantined",
                "quarantined_frames", "dead_lettered", "already_in_kafka", "produced",
                "delivered", "failed", "undelivered", "timestamp_fallbacks", "gaps", "missing", "duplicates", "lost", "seconds", "ticks_per_s"):
        lines.append(f"  {key:<20} {summary[key]}")
    if summary["failure_reasons"]:
        lines.append(f"  failure reasons      {summary['failure_reasons']}")
    lines.extend(format_table(summary["latency_ms"]))
    for part, figures in summary.get("feed", {}).get("lines", {}).items():
        lines.append(f"  line {part:<15} {json.dumps(figures)}")
    if "feed" in summary:
        lines.append(f"  recovery             {json.dumps(summary['feed']['recovery'])}")
    return "\n".join(lines)

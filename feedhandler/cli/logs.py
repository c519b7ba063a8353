"""Logging of the command line: `--log-level`, `--log-format text|json`, and librdkafka's own
log lines through Python logging (`LibrdkafkaLog`, confluent-kafka's `logger` setting) so that
both share one format. Only the CLI calls `setup`; library modules only take loggers.

json: one object a line with `timestamp` (ISO 8601, UTC), `level`, `logger`, `thread`,
`message`, the record's own fields (`extra=`) and, for an exception, `exception` (its type and
message) and `traceback`. text: `TIMESTAMP LEVEL logger: message key=value...`, an exception as
`[Type: message]` on the same line; the whole traceback only at --log-level debug."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import traceback

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
LIBRDKAFKA_LOGGER = "librdkafka"
# Status lines and the final account go through these loggers under --log-format json; they
# show at every --log-level, as the status and account printed in text mode do (--quiet
# stops the status lines).
STATUS_LOGGER = "feedhandler.status"
ACCOUNT_LOGGER = "feedhandler.account"
ALWAYS_SHOWN = (STATUS_LOGGER, ACCOUNT_LOGGER)

# What every LogRecord has; anything else on a record came with `extra=` and is a field.
RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=LEVELS,
                        help="least severe log records shown (default info; warning with "
                             "--quiet)")
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="text: a line a record; json: one JSON object a line (timestamp, "
                             "level, logger, thread, message and the record's fields), "
                             "status lines and the final account included (default text)")


def level_of(args: argparse.Namespace) -> str:
    return args.log_level or ("warning" if getattr(args, "quiet", False) else "info")


def utc_timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-12-01T17:50:56.123Z."""
    moment = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fields(record: logging.LogRecord) -> dict:
    """The fields a record was given with `extra=`."""
    return {key: value for key, value in vars(record).items() if key not in RECORD_ATTRIBUTES}


def exception_line(exc_info) -> str:
    return "".join(traceback.format_exception_only(*exc_info[:2])).strip().replace("\n", " ")


class TextFormatter(logging.Formatter):
    def __init__(self, tracebacks: bool = False):
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{utc_timestamp(record.created)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        extra = fields(record)
        if extra:
            line += " " + " ".join(f"{key}={value}" for key, value in extra.items())
        if record.exc_info:
            if self.tracebacks:
                return f"{line}\n{self.formatException(record.exc_info)}"
            line += f" [{exception_line(record.exc_info)}]"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"timestamp": utc_timestamp(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "thread": record.threadName,
                 "message": record.getMessage(), **fields(record)}
        if record.exc_info:
            entry["exception"] = exception_line(record.exc_info)
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class CliHandler(logging.StreamHandler):
    """The one handler `setup` puts on the root logger (and replaces when called again)."""


def setup(level: str, log_format: str, stream=None) -> logging.Handler:
    """Send every log record of the process at `level` or above to `stream` (stderr) in
    `log_format`."""
    if level not in LEVELS or log_format not in FORMATS:
        raise ValueError(f"log level {level!r} / format {log_format!r}")
    handler = CliHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else TextFormatter(tracebacks=level == "debug"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, CliHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ALWAYS_SHOWN:
        logging.getLogger(name).setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


def json_logging() -> bool:
    """Whether `setup` sent the process's records out as JSON."""
    return any(isinstance(h, CliHandler) and isinstance(h.formatter, JsonFormatter)
               for h in logging.getLogger().handlers)


class LibrdkafkaLog:
    """What confluent-kafka's `logger` setting takes: librdkafka's log lines, which it hands
    over as log(level, "%s [%s] %s", facility, client name, message) when the client is
    polled, become records of the "librdkafka" logger with `facility` and `client` fields."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger(LIBRDKAFKA_LOGGER)

    def log(self, level: int, message: str, *args) -> None:
        if len(args) == 3:
            facility, client, text = args
            self.logger.log(level, "%s", text, extra={"facility": facility, "client": client})
        else:
            self.logger.log(level, message, *args)

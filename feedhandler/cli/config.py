"""Settings of the configurable commands (`run`, `simulate`) from four places, highest first:
flags, the environment, a TOML file (`--config FILE`), the defaults.

The option table is derived from each command's own argparse parser (`make_configurable`):
every flag is a key named like its long flag without the dashes (`--bootstrap-servers` is
`bootstrap-servers`, `_` may stand for `-`), with the environment variable FEEDHANDLER_<KEY>
(`-` as `_`, upper case), the flag's own type, choices and default. A flag added to a parser is
therefore a key, a variable and a line of docs/configuration.md at once (`reference_page`).
`-X KEY=VALUE` is the `[kafka]` table: any librdkafka setting, FEEDHANDLER_LIBRDKAFKA_<KEY>
with dots as `_` (FEEDHANDLER_KAFKA_* belongs to scripts/kafka.sh). A secret (an option or
Kafka setting whose name says password, secret or passphrase, or a private key) can be read
from a file: `<key>-file` (`<setting>.file` in `[kafka]`, `_FILE` in the environment).
docs/configuration.md says all of this for operators.

Every problem is a ConfigError: one line that names the key and where it came from."""

from __future__ import annotations

import argparse
import datetime
import difflib
import functools
import inspect
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "FEEDHANDLER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
KAFKA = "kafka"                         # the table of librdkafka settings
# librdkafka settings in the environment; not FEEDHANDLER_KAFKA_*, which scripts/kafka.sh uses
# for the local broker's ports, directories and heap.
KAFKA_ENV_PREFIX = f"{ENV_PREFIX}LIBRDKAFKA_"
KAFKA_DEST = "producer_settings"        # -X KEY=VALUE: what the [kafka] table holds
BOOTSTRAP_DEST = "bootstrap_servers"
BOOTSTRAP_SETTING = "bootstrap.servers"
FILE_SUFFIX = "-file"                   # password-file: the password is in that file
KAFKA_FILE_SUFFIX = ".file"             # "sasl.password.file": the same in [kafka]
# Secrets: masked when shown, kept out of error lines, readable from a file of their own.
SECRET = re.compile(r"password|secret|passphrase|key\.pem$|oauthbearer\.config$")
MASK = "***"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
FLAG_ORIGIN = "flag"
DEFAULT_ORIGIN = "default"

# How an option takes its value.
VALUE = "value"         # --workers 4
SWITCH = "switch"       # --headers (store_true/false/const, BooleanOptionalAction)
COUNT = "count"         # -v -v
LIST = "list"           # --route A=x --route B=y (append, extend, nargs)
KINDS = {argparse._StoreAction: VALUE, argparse._StoreConstAction: SWITCH,
         argparse.BooleanOptionalAction: SWITCH, argparse._CountAction: COUNT,
         argparse._AppendAction: LIST}        # subclasses (store_true, extend...) included
# Actions that add to their default (argparse copies it): theirs is None while parsing.
ADDING = (argparse._AppendAction, argparse._CountAction)
TYPE_NAMES = {int: "integer", float: "number", str: "string", None: "string",
              datetime.date.fromisoformat: "date (YYYY-MM-DD)"}


class ConfigError(ValueError):
    """A bad key or value in the file or the environment, or a missing required setting:
    one line, exit ExitCode.USAGE."""


class NotGiven:
    """The default of a configurable action while its parser runs: tells a flag left out
    from one given, and still reads as the real default in `%(default)s` help texts."""

    def __init__(self, default):
        self.default = default

    def __str__(self) -> str:
        return str(self.default)


def is_secret(name: str) -> bool:
    return bool(SECRET.search(name))


@dataclass(frozen=True)
class Option:
    """One configurable setting of a command: what its flags set (their `dest`)."""

    key: str
    dest: str
    flags: tuple[str, ...]
    kind: str
    type: object
    default: object
    choices: tuple | None
    help: str
    metavar: str | None
    const: object = None
    pairs: bool = False                 # a LIST of KEY=VALUE: merged and shown as a table
    boolean_optional: bool = False
    required: bool = False
    group: int | None = None            # index of its mutually exclusive group

    @property
    def env(self) -> str:
        return env_name(self.key)

    @property
    def secret(self) -> bool:
        return is_secret(self.key)

    @property
    def file_key(self) -> str | None:
        """The key that names a file holding the value (secrets only)."""
        return self.key + FILE_SUFFIX if self.secret else None

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def type_name(self) -> str:
        if self.kind == SWITCH:
            return "boolean"
        if self.kind == COUNT:
            return "integer"
        if self.choices:
            return "one of " + ", ".join(str(to_config(c)) for c in self.choices)
        if self.type in TYPE_NAMES:
            return TYPE_NAMES[self.type]
        name = _result_type(self.type)
        return f"{name} ({self.metavar})" if self.metavar else name


def _converted(converter, sample: str):
    """What a flag's own converter makes of `sample` (None if it refuses it). Only plain
    functions are asked: a converter object such as argparse.FileType may act on its text."""
    if not inspect.isfunction(converter):
        return None
    try:
        return converter(sample)
    except (argparse.ArgumentTypeError, TypeError, ValueError):
        return None


def _result_type(converter) -> str:
    """An integer, a number, or a string: what a flag's own converter makes of numbers."""
    for sample in ("1", "1.5"):
        value = _converted(converter, sample)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return TYPE_NAMES[type(value)]
    return "string"


def takes_pairs(converter) -> bool:
    """Whether a flag's values are KEY=VALUE pairs (--route, -X): its converter makes
    ("k", "v") of "k=v"."""
    return _converted(converter, "k=v") == ("k", "v")


def kind_of(action: argparse.Action) -> str | None:
    """How `action` takes its value (None: not an option the configuration knows)."""
    for cls in type(action).__mro__:
        if cls in KINDS:
            kind = KINDS[cls]
            return LIST if kind == VALUE and action.nargs not in (None, "?") else kind
    return None


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace("-", "_").upper()


def kafka_env_name(setting: str) -> str:
    return KAFKA_ENV_PREFIX + setting.replace(".", "_").upper()


@dataclass
class Table:
    """A command's options, in its parser's order, and whether it takes a [kafka] table."""

    command: str
    options: list[Option]
    kafka: bool
    groups: dict[int, tuple[list[Option], bool]] = field(default_factory=dict)

    def __post_init__(self):
        self.by_key = {option.key: option for option in self.options}
        self.by_dest = {option.dest: option for option in self.options}
        self.by_file_key = {o.file_key: o for o in self.options if o.file_key}

    def keys(self) -> list[str]:
        return [*self.by_key, *self.by_file_key, *([KAFKA] if self.kafka else [])]


def _long_flag(actions: list[argparse.Action]) -> str | None:
    for action in actions:
        for flag in action.option_strings:
            if flag.startswith("--"):
                return flag
    return None


def option_table(command: str, parser: argparse.ArgumentParser) -> Table:
    """Every optional argument of `parser` as an Option, one per `dest` (flags sharing a dest,
    e.g. --python-produce and --producer-link, are one key); -X becomes the [kafka] table."""
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "config" and kind_of(action):
            by_dest.setdefault(action.dest, []).append(action)
    group_of, groups = {}, {}
    for index, group in enumerate(parser._mutually_exclusive_groups):
        for action in group._group_actions:
            group_of[id(action)] = index
    options, kafka = [], False
    for dest, actions in by_dest.items():
        if dest == KAFKA_DEST:
            kafka = True
            continue
        # the action that takes a value speaks for the dest (--producer-link, not its alias)
        primary = next((a for a in actions if kind_of(a) != SWITCH), actions[0])
        kind = kind_of(primary)
        long_flag = _long_flag([primary]) or _long_flag(actions)
        key = long_flag[2:] if long_flag else dest.replace("_", "-")
        flags = tuple(sorted({f for a in actions for f in a.option_strings},
                             key=lambda f: (f != long_flag, not f.startswith("--"), f)))
        group = next((group_of[id(a)] for a in actions if id(a) in group_of), None)
        option = Option(key=key, dest=dest, flags=flags, kind=kind,
                        type=primary.type, default=primary.default,
                        choices=tuple(primary.choices) if primary.choices else None,
                        help=_help_text(parser, primary), metavar=_metavar(primary),
                        const=primary.const,
                        pairs=kind == LIST and takes_pairs(primary.type),
                        boolean_optional=isinstance(primary, argparse.BooleanOptionalAction),
                        required=any(a.required for a in actions), group=group)
        options.append(option)
        if group is not None:
            groups.setdefault(group, ([], parser._mutually_exclusive_groups[group].required))
            groups[group][0].append(option)
    return Table(command, options, kafka, groups)


def _metavar(action: argparse.Action) -> str | None:
    return action.metavar if isinstance(action.metavar, str) else None


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = "" if action.help == argparse.SUPPRESS else action.help or ""
    if "%" in text:
        values = {**vars(action), "prog": parser.prog}
        values["default"] = getattr(action.default, "default", action.default)
        text = text % values
    return " ".join(text.split())


def make_configurable(command: str, parser: argparse.ArgumentParser) -> Table:
    """Take the option table from `parser`, then let `parse_args` leave out what no flag gave
    (`resolve` fills it in from the environment, the file or the defaults): defaults become
    NotGiven (None where argparse adds to the default), required flags and groups become
    optional (a file may give them). Adds --config."""
    table = option_table(command, parser)
    parser.add_argument("--config", metavar="FILE",
                        help=f"TOML file of settings (default: ${CONFIG_ENV}); flags, then "
                             f"{ENV_PREFIX}* variables, override it. Keys, variables and "
                             "defaults: docs/configuration.md, or `feedhandler config "
                             "reference`; check a file with `feedhandler config check FILE`")
    for action in parser._actions:
        if action.dest in table.by_dest or action.dest == KAFKA_DEST:
            action.default = None if isinstance(action, ADDING) else NotGiven(action.default)
            action.required = False
    for group in parser._mutually_exclusive_groups:
        group.required = False
    return table


# ---- values -------------------------------------------------------------------------------------

def _kind_of(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a string"


def _as_text(option: Option, value) -> str:
    """A TOML value as the text the flag would have been given; ConfigError if its TOML type
    cannot be meant for the option."""
    wanted = option.type_name
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ConfigError(f"expected {wanted}, got {_kind_of(value)}")
    if isinstance(value, (int, float)):
        if option.type in (None, str) and not option.choices:
            raise ConfigError(f"expected {wanted}, got {_kind_of(value)} (quote it)")
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):     # datetime is a date
        return value.isoformat()
    raise ConfigError(f"expected {wanted}, got {type(value).__name__}")


def convert(option: Option, text: str):
    """`text` converted and checked as argparse does for the option's flag, with argparse's
    words (ConfigError)."""
    converter = option.type or (lambda value: value)
    try:
        value = converter(text)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(str(error)) from None
    except (TypeError, ValueError):
        name = getattr(option.type, "__name__", repr(option.type))
        raise ConfigError(f"invalid {name} value: {text!r}") from None
    if option.choices and value not in option.choices:
        choices = ", ".join(map(repr, option.choices))
        close = difflib.get_close_matches(str(value), list(map(str, option.choices)), 1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"invalid choice: {value!r} (choose from {choices}){hint}")
    return value


def _switch(option: Option, on: bool):
    if option.boolean_optional:
        return on
    return option.const if on else option.default


def _boolean_word(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ConfigError(f"expected true or false, got {text!r}")


def file_value(option: Option, value):
    """A TOML value for `option`, converted."""
    if option.kind == SWITCH:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_kind_of(value)}")
        return _switch(option, value)
    if option.kind == COUNT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"expected a whole number, got {value!r}")
        return value
    if option.kind == LIST:
        if isinstance(value, dict) and option.pairs:
            items = [f"{k}={_setting_text(v)}" for k, v in value.items()]
        else:
            items = value if isinstance(value, list) else [value]
        return [convert(option, _as_text(option, item)) for item in items]
    return convert(option, _as_text(option, value))


def env_value(option: Option, text: str):
    """An environment variable's text for `option`, converted; a list option's variable
    holds its values separated by commas."""
    if option.kind == SWITCH:
        return _switch(option, _boolean_word(text))
    if option.kind == COUNT:
        if not text.strip().isdigit():
            raise ConfigError(f"expected a whole number, got {text!r}")
        return int(text)
    if option.kind == LIST:
        return [convert(option, item.strip()) for item in text.split(",") if item.strip()]
    return convert(option, text)


def _setting_text(value) -> str:
    """A librdkafka setting's TOML value as librdkafka's text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError(f"expected a string, number or boolean, got {_kind_of(value)}")


# ---- secrets ------------------------------------------------------------------------------------

def read_secret(path: str, warnings: list[str]) -> str:
    """The text of a secret file, without its final line break; a warning when others than
    its owner may read it."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"{path} holds a secret (mode {stat.S_IMODE(mode):04o}) and is "
                        "readable by group or others: chmod 600 it")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"{path} is empty")
    return text


@dataclass(frozen=True)
class SecretFile:
    """A value in a file, read only if it is the one in use: a higher place may give the
    setting, and a file that only a lower place names need not exist."""

    path: str
    where: str                  # the variable or the file and key that named it
    option: Option | None       # converts the text; None for a librdkafka setting

    def load(self, warnings: list[str]):
        try:
            text = read_secret(self.path, warnings)
        except ConfigError as error:
            raise ConfigError(f"{self.where}: {error}") from None
        if self.option is None:
            return text
        try:
            return env_value(self.option, text)
        except ConfigError as error:
            raise ConfigError(f"{self.where}: {_masked(self.option, error, text)}") from None


# ---- layers -------------------------------------------------------------------------------------

@dataclass
class Setting:
    value: object
    origin: str         # --workers, FEEDHANDLER_WORKERS, config.toml, ... (never the value)


@dataclass
class Layer:
    """What one place (flags, environment, file) says: options by dest, librdkafka settings."""

    name: str
    values: dict[str, Setting] = field(default_factory=dict)
    kafka: dict[str, Setting] = field(default_factory=dict)

    def set(self, option: Option, setting: Setting, key: str) -> None:
        if option.dest in self.values:
            raise ConfigError(f"{key}: {option.key} is given twice "
                              f"({self.values[option.dest].origin} and {setting.origin})")
        self.values[option.dest] = setting


def _did_you_mean(word: str, candidates, quote: str = '"') -> str:
    close = difflib.get_close_matches(word, list(candidates), 1, 0.6)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


def kafka_properties() -> dict[str, str] | None:
    """Every librdkafka property name, or None where the loaded librdkafka cannot tell."""
    from feedhandler.kafka.config import setting_scopes

    try:
        return setting_scopes()
    except OSError:
        return None


@functools.cache
def kafka_aliases() -> dict[str, str]:
    """librdkafka's aliases and the property each stands for (linger.ms: queue.buffering.max.ms),
    from the table the loaded librdkafka prints about itself; empty where it cannot tell."""
    from feedhandler.kafka import _producer_link
    from feedhandler.kafka.config import bind_librdkafka

    try:
        bind_librdkafka()
    except OSError:
        return {}
    aliases = {}
    for line in _producer_link.configuration_table().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        alias = re.match(r"Alias for `([^`]+)`", cells[-1]) if len(cells) >= 6 else None
        if alias:
            aliases[cells[0]] = alias.group(1)
    return aliases


def same_setting(key: str) -> set[str]:
    """`key` and every other name of the same librdkafka property."""
    aliases = kafka_aliases()
    canonical = aliases.get(key, key)
    return {key, canonical} | {a for a, c in aliases.items() if c == canonical}


def kafka_key(key: str, properties) -> tuple[str, bool]:
    """(setting, read from a file?) of a [kafka] key; a real property wins over the .file
    reading, so librdkafka's own *.file settings keep their meaning."""
    if properties is None or key in properties:
        return key, False
    stem = key.removesuffix(KAFKA_FILE_SUFFIX)
    if stem != key and stem in properties:
        return stem, True
    raise ConfigError(f'[{KAFKA}] unknown key "{key}"{_did_you_mean(key, properties)}')


def _flatten(table: dict, prefix: str = "") -> dict:
    """`sasl.username = "x"` (unquoted) is a nested table in TOML: back to librdkafka's key."""
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def flag_layer(table: Table, args: argparse.Namespace) -> Layer:
    layer = Layer(FLAG_ORIGIN)
    for option in table.options:
        value = getattr(args, option.dest, None)
        if value is not None and not isinstance(value, NotGiven):
            layer.values[option.dest] = Setting(value, option.flag)
    for key, value in getattr(args, KAFKA_DEST, None) or []:
        layer.kafka[key] = Setting(value, "-X")
    _kafka_bootstrap(table, layer, "flags")
    return layer


def env_layer(table: Table, environ) -> Layer:
    layer = Layer("environment")
    for option in table.options:
        for name, from_file in ((option.env, False), (option.env + "_FILE", True)):
            if name not in environ or (from_file and not option.secret):
                continue
            text = environ[name]
            try:
                value = SecretFile(text, name, option) if from_file else env_value(option, text)
            except ConfigError as error:
                raise ConfigError(f"{name}: {_masked(option, error, text)}") from None
            layer.set(option, Setting(value, name), name)
    if table.kafka:
        properties = kafka_properties()
        by_env = {kafka_env_name(key): key for key in properties or ()}
        claimed = {o.env for o in table.options} | {o.env + "_FILE" for o in table.options}
        for name in sorted(environ):
            if not name.startswith(KAFKA_ENV_PREFIX) or name in claimed:
                continue
            key = by_env.get(name)
            from_file = key is None and name.endswith("_FILE") and name[:-5] in by_env
            if from_file:
                key = by_env[name[:-5]]
            elif key is None and properties is not None:
                raise ConfigError(f"{name}: unknown librdkafka setting"
                                  f"{_did_you_mean(name, by_env, '')}")
            elif key is None:
                key = name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")
            value = environ[name]
            layer.kafka[key] = Setting(SecretFile(value, name, None) if from_file else value,
                                       name)
    _kafka_bootstrap(table, layer, "the environment")
    return layer


def file_layer(table: Table, path: str, warnings: list[str]) -> Layer:
    try:
        mode = os.stat(path).st_mode
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    layer = Layer(path)
    clear_secrets = []
    for raw_key, value in data.items():
        if raw_key == KAFKA and table.kafka:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{KAFKA}] must be a table of librdkafka settings, "
                                  f"not {_kind_of(value)}")
            clear_secrets += _file_kafka(layer, path, value)
            continue
        key = raw_key.replace("_", "-")
        option = table.by_key.get(key)
        from_file = option is None and key in table.by_file_key
        if from_file:
            option = table.by_file_key[key]
        if option is None:
            raise ConfigError(f'{path}: unknown key "{raw_key}"'
                              f"{_did_you_mean(key, table.keys())}")
        try:
            if from_file:
                if not isinstance(value, str):
                    raise ConfigError(f"expected a file name, got {_kind_of(value)}")
                setting = Setting(SecretFile(value, f"{path}: {raw_key}", option),
                                  f"{path} ({key} {value})")
            else:
                setting = Setting(file_value(option, value), path)
                if option.secret:
                    clear_secrets.append(option.key)
        except ConfigError as error:
            raise ConfigError(f"{path}: {raw_key}: "
                              f"{error if from_file else _masked(option, error, value)}") from None
        layer.set(option, setting, path)
    if clear_secrets and mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"{path} holds {', '.join(clear_secrets)} in clear (mode "
                        f"{stat.S_IMODE(mode):04o}) and is readable by group or others: chmod "
                        "600 it, or read the secret from a file of its own "
                        "(docs/configuration.md)")
    _kafka_bootstrap(table, layer, path)
    return layer


def _file_kafka(layer: Layer, path: str, table: dict) -> list[str]:
    """The [kafka] table into `layer`; the secrets it holds in clear."""
    properties = kafka_properties()
    clear = []
    for key, value in _flatten(table).items():
        try:
            setting, from_file = kafka_key(key, properties)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        try:
            text = _setting_text(value)
        except ConfigError as error:
            raise ConfigError(f'{path}: [{KAFKA}] "{key}": {error}') from None
        if setting in layer.kafka:
            raise ConfigError(f'{path}: [{KAFKA}] "{setting}" is given twice')
        if from_file:
            layer.kafka[setting] = Setting(SecretFile(text, f'{path}: [{KAFKA}] "{key}"', None),
                                           f"{path} ({key} {value})")
        else:
            clear += [setting] if is_secret(setting) else []
            layer.kafka[setting] = Setting(text, path)
    return clear


def _kafka_bootstrap(table: Table, layer: Layer, where: str) -> None:
    """librdkafka's bootstrap.servers (or its other name), where given, is the
    bootstrap-servers option."""
    option = table.by_dest.get(BOOTSTRAP_DEST)
    given = [key for key in same_setting(BOOTSTRAP_SETTING) if key in layer.kafka]
    if not given or option is None:
        return
    if option.dest in layer.values or len(given) > 1:
        raise ConfigError(f"{where}: {' and '.join(sorted(given))} and {option.key} "
                          "are one setting; give it once")
    setting = layer.kafka.pop(given[0])
    value = setting.value
    try:
        value = (SecretFile(value.path, value.where, option) if isinstance(value, SecretFile)
                 else convert(option, value))
    except ConfigError as error:
        raise ConfigError(f"{setting.origin}: {given[0]}: {error}") from None
    layer.values[option.dest] = Setting(value, setting.origin)


def _masked(option: Option | None, error: Exception, value) -> str:
    text = str(error)
    if option is not None and option.secret and isinstance(value, str) and value:
        text = text.replace(repr(value), MASK).replace(value, MASK)
    return text


# ---- resolving ----------------------------------------------------------------------------------

@dataclass
class Configuration:
    """The effective settings of one command and where each came from."""

    table: Table
    origins: dict[str, str]                     # dest -> origin
    kafka: dict[str, Setting]
    file: str | None
    warnings: list[str]
    secrets: list[str]                          # secret values in use, to keep out of errors

    def explain(self, problem) -> str:
        """A problem found after resolving (a UsageError naming flags or Kafka settings), with
        the place each value it names came from when that was not a flag; secrets masked."""
        text = str(problem)
        notes = []
        for option in self.table.options:
            origin = self.origins.get(option.dest, DEFAULT_ORIGIN)
            if origin == DEFAULT_ORIGIN or origin in option.flags:
                continue
            names = {*option.flags, option.key, option.dest}
            if any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) for name in names):
                notes.append(f"{option.key} from {origin}")
        for key, setting in self.kafka.items():
            if setting.origin != "-X" and any(
                    re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text)
                    for name in same_setting(key)):
                notes.append(f"[{KAFKA}] {key} from {setting.origin}")
        for flag in getattr(problem, "flags", ()):     # validate.MissingOption
            for option in self.table.options:
                if flag in option.flags:
                    notes.append(f"{option.key} in the config file, or {option.env}")
        for secret in self.secrets:
            text = text.replace(repr(secret.encode()), MASK).replace(secret, MASK)
        return text + (f" ({'; '.join(notes)})" if notes else "")


def resolve(table: Table, args: argparse.Namespace, environ=None) -> Configuration:
    """Fill `args` (parsed by a parser made configurable) from the flags, the environment, the
    file (--config, else $FEEDHANDLER_CONFIG) and the defaults, in that order of precedence;
    `args.configuration` says where each came from. ConfigError on any problem."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    layers = [flag_layer(table, args), env_layer(table, environ)]
    if path:
        layers.append(file_layer(table, path, warnings))
    _drop_excluded(table, layers)
    origins = {}
    for option in table.options:
        value, origins[option.dest] = _merged(option, layers)
        if isinstance(value, SecretFile):
            value = value.load(warnings)
        setattr(args, option.dest, value)
    _check_required(table, origins)
    kafka: dict[str, Setting] = {}
    for layer in reversed(layers):
        kafka.update(layer.kafka)
    for setting in kafka.values():
        if isinstance(setting.value, SecretFile):
            setting.value = setting.value.load(warnings)
    if table.kafka:
        setattr(args, KAFKA_DEST, [(key, setting.value) for key, setting in kafka.items()])
    secrets = [str(to_config(getattr(args, o.dest))) for o in table.options
               if o.secret and getattr(args, o.dest)]
    secrets += [s.value for key, s in kafka.items() if is_secret(key) and s.value]
    args.configuration = Configuration(table, origins, kafka, path, warnings, secrets)
    return args.configuration


def _drop_excluded(table: Table, layers: list[Layer]) -> None:
    """Mutually exclusive options (--connect, --listen) go together: the highest place that
    gives one of them decides, and what lower places say of the others is dropped."""
    for members, _ in table.groups.values():
        decided = False
        for layer in layers:
            given = [o for o in members if o.dest in layer.values]
            if len(given) > 1:
                raise ConfigError(f"{layer.name}: {' and '.join(o.key for o in given)} "
                                  "exclude each other; give one")
            if decided:
                for option in given:
                    del layer.values[option.dest]
            decided = decided or bool(given)


def _merged(option: Option, layers: list[Layer]) -> tuple[object, str]:
    """(value, origin) of an option. A list option of KEY=VALUE pairs (--route) merges by key,
    a higher place winning per key; another list option is replaced by the highest place
    that gives it; any other option comes from the highest place that gives it."""
    given = [layer.values[option.dest] for layer in layers if option.dest in layer.values]
    if not given:
        default = option.default
        if isinstance(default, str) and option.kind == VALUE:
            default = convert(option, default)      # as argparse does with string defaults
        return (list(default) if option.kind == LIST and default else
                [] if option.kind == LIST and default is not None else default), DEFAULT_ORIGIN
    if option.pairs:
        merged: dict = {}
        for setting in reversed(given):
            merged.update(setting.value)
        origins = ", ".join(dict.fromkeys(setting.origin for setting in reversed(given)))
        return list(merged.items()), origins
    return given[0].value, given[0].origin


def _check_required(table: Table, origins: dict[str, str]) -> None:
    def given(option: Option) -> bool:
        return origins[option.dest] != DEFAULT_ORIGIN

    for option in table.options:
        if option.required and not given(option):
            raise ConfigError(f"{option.flag} is required ({option.key} in the config file, or "
                              f"{option.env})")
    for members, required in table.groups.values():
        if required and not any(map(given, members)):
            raise ConfigError(f"one of {', '.join(o.flag for o in members)} is required "
                              f"({' or '.join(o.key for o in members)} in the config file, or "
                              f"{' or '.join(o.env for o in members)})")


# ---- showing settings ---------------------------------------------------------------------------

def to_config(value, pairs: bool = False):
    """A converted option value as the TOML value that gives it (None: not set); `pairs`: a
    list of KEY=VALUE pairs, as a table."""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, tuple):            # HOST:PORT
        return ":".join(map(str, value))
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        if pairs:
            return {str(k): to_config(v) for k, v in value}
        return [to_config(item) for item in value]
    return value


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _line(key: str, value, origin: str) -> str:
    text = f"{key} = {value}"
    return f"{text:<44} # {origin}"


def render(configuration: Configuration, args: argparse.Namespace,
           kafka_defaults: dict | None = None) -> str:
    """The effective settings as TOML, secrets as "***", each line's origin as a comment."""
    table = configuration.table
    where = configuration.file or "no file"
    lines = [f"# feedhandler {table.command}: effective settings "
             f"(flags > environment > {where} > defaults)"]
    for option in table.options:
        value = to_config(getattr(args, option.dest), option.pairs)
        if option.kind == SWITCH and not option.boolean_optional:
            value = value == option.const           # no-color = true: the flag's effect
        origin = configuration.origins[option.dest]
        if value is None or value == []:
            lines.append(f"# {option.key} is not set")
            continue
        shown = json.dumps(MASK) if option.secret else toml_value(value)
        lines.append(_line(option.key, shown, origin))
    if table.kafka:
        lines += ["", f"[{KAFKA}]"]
        settings = {key: Setting(value, DEFAULT_ORIGIN)
                    for key, value in (kafka_defaults or {}).items()}
        settings.update(configuration.kafka)
        for key, setting in settings.items():
            value = json.dumps(MASK) if is_secret(key) else toml_value(setting.value)
            lines.append(_line(json.dumps(key), value, setting.origin))
    return "\n".join(lines) + "\n"


# ---- the reference ------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(option: Option) -> str:
    if option.kind == SWITCH:
        return "`false`" if not option.boolean_optional or not option.default else "`true`"
    value = to_config(option.default, option.pairs)
    if value is None or value == [] or value == {}:
        return "not set"
    return f"`{toml_value(value)}`"


def _table_rows(table: Table) -> list[str]:
    rows = ["| key | flag | environment | type | default | description |",
            "|---|---|---|---|---|---|"]
    for option in table.options:
        key = f"`{option.key}`"
        env = f"`{option.env}`"
        if option.secret:
            key += f"<br>`{option.file_key}`"
            env += f"<br>`{option.env}_FILE`"
        flags = ", ".join(f"`{flag}`" for flag in option.flags)
        kind = option.type_name
        if option.pairs:
            kind = f"table of {option.metavar or 'KEY=VALUE'}, or an array of such strings"
        elif option.kind == LIST:
            kind = f"array of {kind}"
        notes = option.help
        if option.group is not None:
            members, required = table.groups[option.group]
            notes += (f" One of {', '.join(f'`{o.key}`' for o in members)}"
                      f"{' is required' if required else ' at most'}.")
        elif option.required:
            notes += " Required."
        if option.secret:
            notes += " **Secret.**"
        rows.append(f"| {key} | {flags} | {env} | {_cell(kind)} | {_cell(_default_cell(option))} "
                    f"| {_cell(notes)} |")
    return rows


REFERENCE_HEADER = f"""\
# Configuration reference

<!-- Generated from the commands' own argument parsers (feedhandler/cli/config.py):
     regenerate with `python -m feedhandler config reference > docs/configuration.md`
     after adding or changing a flag; tests/test_config.py fails while this page is stale. -->

`feedhandler run` and `feedhandler simulate` take every setting from four places, highest
first:

1. **flags** on the command line;
2. **environment variables** `{ENV_PREFIX}<KEY>`;
3. a **TOML file** given with `--config FILE` (or `{CONFIG_ENV}=FILE`);
4. the **defaults** below.

Keys are the long flags without their dashes (`--bootstrap-servers` is `bootstrap-servers`;
`bootstrap_servers` is the same key). A variable is `{ENV_PREFIX}` and the key in upper case
with `_` for `-` (`{ENV_PREFIX}BOOTSTRAP_SERVERS`). Values take the flag's own checks, so a bad
value in the file or a variable is the same one-line error as a bad flag, naming the key and
where it came from (exit status 2). Unknown keys are errors too (with the closest key), so a
typo never passes silently. `feedhandler config check FILE [FLAGS...]` shows what a file, the
environment and some flags add up to, secrets masked, without starting anything; see
[feedhandler.example.toml](feedhandler.example.toml).

- **Switches** (`--headers`) are `true`/`false` in the file and `1/0`, `true/false`, `yes/no` or
  `on/off` in a variable; a flag can only switch on, so a file's `true` is switched off with
  the variable set to `false`.
- **Repeatable flags** are arrays (`route = ["A=orders"]`) or, for `KEY=VALUE` flags, tables
  (`route = {{ A = "orders", trades = "fills" }}`); in a variable, values separated by commas.
  `KEY=VALUE` lists merge key by key, a higher place winning for the same key (a `--route A=x`
  flag changes only `A` of the file's routes); other lists are replaced whole by the highest
  place that gives them.
- **Mutually exclusive flags** (`--connect`/`--listen`) go together: the highest place that
  gives one of them decides (a `--listen` flag overrides a file's `connect`).
- **Secrets** (keys that say password, secret or passphrase, and private keys: `*key.pem`)
  need never be on the command line, where `ps` shows them: give
  `<key>-file = "/etc/feedhandler/feed.secret"` in the file or
  `{ENV_PREFIX}<KEY>_FILE` (the file's text without its final line break is the value, e.g.
  a systemd credential: `{ENV_PREFIX}PASSWORD_FILE=%d/feed`), or the value itself in
  `{ENV_PREFIX}<KEY>`. A secret file, or a config file holding a secret in clear, that group or
  others may read gives a warning at start (`chmod 600`). `config check` shows every secret as
  `"{MASK}"`, and error lines mask them.
"""

KAFKA_SECTION = f"""\
## `[{KAFKA}]`: librdkafka settings

The `[{KAFKA}]` table holds what `-X KEY=VALUE` holds: any
[librdkafka setting](https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)
under its own name, given to the producer and (the settings every client takes: security,
SASL, SSL, timeouts) to the AdminClient and consumers the handler uses, over the handler's
defaults below. Values are strings, numbers or booleans. Keys may be quoted
(`"sasl.username" = "feed"`) or bare (`sasl.username = "feed"`); unknown keys are errors.

- `"{BOOTSTRAP_SETTING}"` (in the table, in `{KAFKA_ENV_PREFIX}BOOTSTRAP_SERVERS` or as
  `-X {BOOTSTRAP_SETTING}=...`) is `bootstrap-servers`; giving both in one place is an error.
- Variables: `{KAFKA_ENV_PREFIX}<SETTING>` with the setting in upper case and `_` for `.`
  (`{KAFKA_ENV_PREFIX}SASL_USERNAME`); `FEEDHANDLER_KAFKA_*` are scripts/kafka.sh's own
  (the local broker's ports, directories and heap) and are left alone.
- A setting read from a file: `"<setting>.file" = "/path"` (`"sasl.password.file"`), or
  `{KAFKA_ENV_PREFIX}<SETTING>_FILE` (librdkafka's own `*.file` settings keep their meaning).
- Merging: per setting, a flag (`-X`) over a variable over the file over the defaults.

```toml
[{KAFKA}]
"{BOOTSTRAP_SETTING}" = "broker1:9093,broker2:9093"
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "feedhandler"
"sasl.password.file" = "/etc/feedhandler/kafka.secret"
"ssl.ca.location" = "/etc/feedhandler/ca.pem"
"linger.ms" = 5
```
"""


def reference_page(tables: dict[str, Table], kafka_defaults: dict) -> str:
    """docs/configuration.md."""
    parts = [REFERENCE_HEADER]
    for command, table in tables.items():
        parts += [f"## `feedhandler {command}`", "", *_table_rows(table), ""]
        if table.kafka:
            parts.append(KAFKA_SECTION)
            parts += ["The handler's defaults (`feedhandler.kafka.config.PRODUCER_DEFAULTS`), "
                      "each overridden by a setting of the same name:", "",
                      "| setting | default |", "|---|---|"]
            parts += [f"| `{key}` | `{toml_value(value)}` |"
                      for key, value in kafka_defaults.items()]
            parts.append("")
    return "\n".join(parts)

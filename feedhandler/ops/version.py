"""`feedhandler --version`: feedhandler's version and what it runs on."""

from __future__ import annotations

import importlib
import platform
import tomllib
from importlib import metadata
from pathlib import Path

PACKAGE = "feedhandler"
COMPILED_MODULES = ("feedhandler.wire._decode", "feedhandler.wire._soupbin",
                    "feedhandler.kafka._records", "feedhandler.kafka._batched",
                    "feedhandler.kafka._producer_link")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    """From the installed package's metadata; in a source tree that is not installed, from its
    pyproject.toml; else "unknown"."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        pass
    try:
        with PYPROJECT.open("rb") as file:
            return tomllib.load(file)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def compiled_modules() -> dict[str, str]:
    """{module: "ok" or why it does not load}."""
    state = {}
    for name in COMPILED_MODULES:
        try:
            importlib.import_module(name)
            state[name] = "ok"
        except ImportError as error:
            state[name] = f"not loadable: {error}"
    return state


def version_info() -> dict[str, str]:
    """Versions of feedhandler, Python, numpy, confluent-kafka and librdkafka."""
    import confluent_kafka
    import numpy

    return {"feedhandler": package_version(), "python": platform.python_version(),
            "numpy": numpy.__version__, "confluent_kafka": confluent_kafka.version(),
            "librdkafka": confluent_kafka.libversion()[0]}


def version_report() -> str:
    """What `feedhandler --version` prints."""
    from feedhandler.kafka.producer import link_problem

    info = version_info()
    lines = [f"feedhandler {info.pop('feedhandler')}"]
    lines += [f"  {name:<16} {version}" for name, version in info.items()]
    for module, state in compiled_modules().items():
        lines.append(f"  {module.rsplit('.', 1)[1]:<16} {state}")
    lines.append(f"  {'producer link':<16} {link_problem() or 'usable'}")
    return "\n".join(lines)

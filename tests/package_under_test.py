"""Which feedhandler the tests and benchmarks import: the checkout's, when it is built in place
(`setup.py build_ext --inplace`, or an editable install), else the installed one.

`python -m pytest` puts the working directory first on sys.path, so from a checkout whose
extensions are not built (after a plain `pip install .`, or in a wheel's test run) the source
folder would shadow the installed package and fail with `cannot import name '_decode'`.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPILED_MODULE = Path("wire") / "_decode"     # present once the extensions are built


def is_built(package: Path) -> bool:
    return any((package / COMPILED_MODULE).with_suffix(suffix).is_file()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _is_root(entry: str) -> bool:
    return Path(entry or ".").resolve() == ROOT


def prefer_built_package() -> None:
    """Takes the checkout off sys.path when its package is not built and an installed one is
    there to import instead; otherwise leaves sys.path alone (the ImportError then says what
    to build)."""
    if "feedhandler" in sys.modules or is_built(ROOT / "feedhandler"):
        return
    original = list(sys.path)
    sys.path[:] = [entry for entry in original if not _is_root(entry)]
    if importlib.util.find_spec("feedhandler") is None:
        sys.path[:] = original


def report_header() -> str:
    import feedhandler
    return f"feedhandler: {Path(feedhandler.__file__).parent}"

import os
import sys
from pathlib import Path

# `import itch` silently switches to the itchcpp backend when both PyPI parsers are installed;
# the differential tests need the pure-Python itchfeed as a second, independent oracle.
os.environ["ITCH_NO_CPP"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))

from package_under_test import prefer_built_package, report_header  # noqa: E402

prefer_built_package()

from brokers import kafka, kcat_count, topic_prefix  # noqa: E402,F401 (fixtures)


def pytest_report_header(config):
    return report_header()

import os
import sys
from pathlib import Path

# `import itch` silently switches to the itchcpp backend when both PyPI parsers are installed;
# the differential tests need the pure-Python itchfeed as a second, independent oracle.
os.environ["ITCH_NO_CPP"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import kafka, kcat_count, topic_prefix  # noqa: E402,F401 (fixtures)

"""The PyPI ITCH parsers used as test-only oracles: itchcpp (C++) and itchfeed (pure Python)."""

import itch
import itch.messages
import itch.parser
import pytest

# itchcpp has wheels only for x86_64 and arm64 up to CPython 3.13 (pyproject.toml's test extra):
# elsewhere, as in some cibuildwheel test runs, the modules that use the oracles skip.
itchcpp_parser = pytest.importorskip("itchcpp.parser", reason="itchcpp has no wheel for this platform")

# conftest.py sets ITCH_NO_CPP before this import, so `itch` really is the pure-Python parser.
assert not itch.USING_CPP_BACKEND

ITCHFEED_MESSAGE_CLASSES = itch.messages.messages   # type byte -> itchfeed message class
ORACLES = {"itchcpp": itchcpp_parser.MessageParser, "itchfeed": itch.parser.MessageParser}

# The oracles' attribute names where they differ from the spec-based names of our dtypes.
ORACLE_NAMES = {
    "luld_reference_price_tier": "luld_ref",
    "level_1": "level1_price",
    "level_2": "level2_price",
    "level_3": "level3_price",
    "ipo_quotation_release_time": "ipo_release_time",
    "ipo_quotation_release_qualifier": "ipo_release_qualifier",
    "auction_collar_extension": "auction_collar_extention",
    "original_order_reference_number": "order_reference_number",
    "price_variation_indicator": "variation_indicator",
}


def oracle_value(message, field: str):
    return getattr(message, ORACLE_NAMES.get(field, field))

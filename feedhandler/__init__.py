"""feedhandler: NASDAQ TotalView-ITCH 5.0 feed frames -> numpy structured arrays -> Kafka."""

from feedhandler.errors import DecodeError
from feedhandler.ops.version import package_version

__all__ = ["DecodeError"]
__version__ = package_version()

"""feedhandler: NASDAQ TotalView-ITCH 5.0 feed frames -> numpy structured arrays -> Kafka."""

from feedhandler.errors import DecodeError

__all__ = ["DecodeError"]
__version__ = "0.1.0"

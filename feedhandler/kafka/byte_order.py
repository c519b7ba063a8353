"""The byte order of record values, checked when `feedhandler.kafka` is imported.

Every integer the handler writes into a record value is little-endian (docs/kafka.md). The tick
header's sequence number is stored byte by byte, but the message structs are written by C in the
host's order (ext/itch_layout.pxd) and the numpy dtypes read them as little-endian: so on a
big-endian host the package refuses to load rather than publish values that break the contract.
The wheels are built for x86-64 and arm64 Linux and macOS, all little-endian."""

from __future__ import annotations

import sys

BYTE_ORDER = "little"


def check_host_byte_order(byteorder: str = sys.byteorder) -> None:
    if byteorder != BYTE_ORDER:
        raise ImportError(f"feedhandler writes little-endian record values and this host is "
                          f"{byteorder}-endian; it is not supported")


check_host_byte_order()

"""The decoder's fault codes: `FAULTS` maps each stable code (`DecodeError.code`,
`Quarantined.code`) to its reason text. Both come from the one table in ext/faults.h, which
also defines the C codes the decoder reports; docs/protocol.md lists them."""

from feedhandler.wire import _decode

__all__ = ["FAULTS"]

FAULTS: dict[str, str] = dict(_decode.FAULTS)

"""The feed's bytes: ITCH 5.0 messages (`itch`) and the frames that carry them as MoldUDP64
packets (`packet`), decoded by the compiled `_decode` module (ext/decode.pyx), which reports
bad input with the stable fault codes of `faults`."""

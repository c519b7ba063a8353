"""What the harnesses share: running under atheris, outcome probes, and structure-aware
mutations of message blocks and frames that keep lengths, counts and checksums consistent so
the fuzzer gets past them."""

from __future__ import annotations

import gc
import random
import sys
import types

from feedhandler.wire import packet
from feedhandler.wire.faults import FAULTS

# The decoder's fault reasons, by kind (feedhandler.wire.faults): frame-level faults make the
# whole frame untrustworthy; the others concern messages.
FRAME_FAULT_CODES = ("frame_too_short", "frame_length_mismatch", "frame_too_large",
                     "bad_frame_type", "bad_version", "bad_codec", "bad_flags",
                     "packet_too_large", "lz4_corrupt", "uncompressed_length_mismatch",
                     "checksum_mismatch", "packet_too_short")
FRAME_REASONS = frozenset(FAULTS[code] for code in FRAME_FAULT_CODES)
ALL_REASONS = frozenset(FAULTS.values())
MESSAGE_REASONS = ALL_REASONS - FRAME_REASONS

try:
    import atheris
except ImportError:           # replaying vectors (tests/test_fuzz.py) does not need it
    atheris = None

_HEADERS = packet.FRAME_HEADER_SIZE + packet.PACKET_HEADER_SIZE
_CODEC_NAMES = {value: name for name, value in packet.CODECS.items()}
_fuzzing = False             # set by fuzz(): only then are probes instrumented


class Probes:
    """Coverage feedback for what happens inside the compiled decoder.

    atheris sees Python bytecode only, and the normal build of ext/decode.pyx has no
    SanitizerCoverage (build_instrumented.sh makes one that has), so libFuzzer cannot tell a
    checksum failure from a bad side indicator. Each distinct outcome key (a fault reason, a
    message type decoded, ...) gets its own tiny instrumented function; calling it is new
    coverage the first time, so inputs reaching new outcomes join the corpus."""

    def __init__(self):
        self._probes: dict[str, object] = {}

    def __call__(self, key: str):
        probe = self._probes.get(key)
        if probe is None:
            namespace: dict = {}
            exec(f"def probe():\n    return {key!r}\n", namespace)
            probe = namespace["probe"]
            if _fuzzing:
                probe = atheris.instrument_func(probe)
            self._probes[key] = probe
        probe()


def fuzz(check, mutate=None):
    """Run `check` under libFuzzer with the command line's options and corpus directories."""
    global _fuzzing
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    _fuzzing = True
    # Whatever was imported before: feedhandler's Python code and the harness's contract code.
    for function in gc.get_objects():
        if isinstance(function, types.FunctionType) and (
                function.__module__ or "").partition(".")[0] in ("feedhandler", "fuzz", "__main__"):
            atheris.instrument_func(function)
    atheris.Setup(sys.argv, check, custom_mutator=mutate)
    atheris.Fuzz()


def libfuzzer_mutate(data: bytes, max_size: int) -> bytes:
    return atheris.Mutate(data, max_size)


# ---- message blocks (NASDAQ file framing) ----------------------------------------------------------

def split_block(block: bytes) -> tuple[list[bytes], bytes]:
    """Messages (without length prefixes) and the unframeable tail."""
    messages, position = [], 0
    while position + 2 <= len(block):
        length = int.from_bytes(block[position:position + 2], "big")
        if position + 2 + length > len(block):
            break
        messages.append(block[position + 2:position + 2 + length])
        position += 2 + length
    return messages, block[position:]


def join_block(messages: list[bytes], tail: bytes = b"") -> bytes:
    return packet.frame_messages(messages) + tail


def mutate_block(block: bytes, max_size: int, rng: random.Random) -> bytes:
    """One mutation of a message block that mostly keeps it framed: a whole message is
    duplicated, dropped or swapped, or one message's bytes are mutated and its length prefix
    rewritten; sometimes the raw block is mutated instead."""
    messages, tail = split_block(block)
    choice = rng.randrange(6)
    if not messages or choice == 0:
        return libfuzzer_mutate(block, max_size)
    i = rng.randrange(len(messages))
    if choice == 1:
        messages.insert(rng.randrange(len(messages) + 1), messages[i])
    elif choice == 2:
        del messages[i]
    elif choice == 3:
        j = rng.randrange(len(messages))
        messages[i], messages[j] = messages[j], messages[i]
    elif choice == 4:
        messages[i] = libfuzzer_mutate(messages[i], 64)
    else:
        # A field value at the edges of the checks: type byte, timestamp, side, symbol.
        message = bytearray(messages[i])
        if message:
            at = rng.choice([0, 5, 5, 6, 10, 19, 20, 23, 24, 25, 26, 30, 31, 35, 36])
            if at < len(message):
                message[at] = rng.choice([0x00, 0x1F, 0x20, 0x42, 0x53, 0x7E, 0x7F, 0xFF])
        messages[i] = bytes(message)
    return join_block(messages, tail)[:max_size]


# ---- frames ------------------------------------------------------------------------------------

def unpack_frame(frame: bytes):
    """(session, sequence, count, block, codec) of a frame whose packet can be recovered
    (checksum not checked), else None."""
    if len(frame) < _HEADERS or frame[6] not in _CODEC_NAMES:
        return None
    session, sequence, count = packet.peek(frame)
    body = frame[_HEADERS:]
    codec = _CODEC_NAMES[frame[6]]
    if codec == "lz4":
        import lz4.block
        block_length = int.from_bytes(frame[8:12], "big") - packet.PACKET_HEADER_SIZE
        if not 0 <= block_length <= packet.MAX_PACKET_LENGTH:
            return None
        try:
            body = lz4.block.decompress(body, uncompressed_size=block_length)
        except (ValueError, lz4.block.LZ4BlockError):
            return None
    return session, sequence, count, body, codec


SEQUENCE_EDGES = (0, 1, 2, (1 << 63) - 1, 1 << 63, (1 << 64) - 2, (1 << 64) - 1)


def mutate_frame(frame: bytes, max_size: int, rng: random.Random) -> bytes:
    """A mutated frame that still has valid lengths and checksum (so the decoder's message
    checks run), or now and then a plain byte-level mutation of the frame."""
    unpacked = unpack_frame(frame) if rng.randrange(5) else None
    if unpacked is None:
        return libfuzzer_mutate(frame, max_size)
    session, sequence, count, block, codec = unpacked
    choice = rng.randrange(8)
    if choice < 4:
        block = mutate_block(block, max_size, rng)
    if choice < 5 or choice == 7:
        # Usually make the count agree, so the per-message checks are reached.
        count = min(len(split_block(block)[0]), packet.END_OF_SESSION_COUNT)
    if choice == 5:
        count = rng.choice([0, 1, count + 1, max(count - 1, 0), packet.END_OF_SESSION_COUNT])
    if choice == 6 or choice == 7:
        sequence = rng.choice(SEQUENCE_EDGES + (rng.getrandbits(64),))
    if rng.randrange(4) == 0:
        codec = "none" if codec == "lz4" else "lz4"
    try:
        mutated = packet.encode_block(block, count, session=session, sequence=sequence,
                                      codec=codec)
    except ValueError:
        return libfuzzer_mutate(frame, max_size)
    return mutated if len(mutated) <= max_size else libfuzzer_mutate(frame, max_size)


def split_stream(stream: bytes) -> tuple[list[bytes], bytes]:
    """Session frames (u32 length prefix included) of a byte stream, and the incomplete tail."""
    frames, position = [], 0
    while position + 4 <= len(stream):
        stop = position + 4 + int.from_bytes(stream[position:position + 4], "big")
        if stop > len(stream) or stop == position + 4:
            break
        frames.append(stream[position:stop])
        position = stop
    return frames, stream[position:]


def resequence(frame: bytes, sequence: int) -> bytes:
    """The same frame carrying another first sequence number, re-signed."""
    unpacked = unpack_frame(frame)
    if unpacked is None or not 0 <= sequence < 1 << 64:
        return frame
    session, _, count, block, codec = unpacked
    return packet.encode_block(block, count, session=session, sequence=sequence, codec=codec)

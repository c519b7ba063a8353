"""Write the seed corpora in tests/vectors/{frames,itch,session} from the project's own
encoders: synthetic messages of every type, an order-book-consistent opening, and session
streams as the simulator sends them. Deterministic; run from the repository root:

    python tests/fuzz/make_corpus.py
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedhandler.exchange.orderflow import OrderFlow  # noqa: E402
from feedhandler.session import protocol  # noqa: E402
from feedhandler.wire import packet  # noqa: E402
from fuzz.common import split_block  # noqa: E402
from fuzz.fuzz_session import CLIENT, SERVER_SIDE, TRIM  # noqa: E402
from streams import SESSION, uniform_stream  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def frames(messages: list[bytes], per_frame: int, codec: str, first: int = 1) -> list[bytes]:
    return [packet.encode(messages[i:i + per_frame], session=SESSION, sequence=first + i,
                          codec=codec)
            for i in range(0, len(messages), per_frame)]


def server_stream(messages: list[bytes], per_frame: int, codec: str) -> bytes:
    """Login accepted, data frames, a heartbeat, a debug line, end of session."""
    data = frames(messages, per_frame, codec)
    following = 1 + len(messages)
    return b"".join([protocol.login_accepted(SESSION, 1), *data[:2],
                     protocol.heartbeat(SESSION, 1 + min(2 * per_frame, len(messages))),
                     protocol.debug("closing soon"), *data[2:],
                     protocol.end_of_session(SESSION, following)])


def corpora() -> dict[str, dict[str, bytes]]:
    block, _ = uniform_stream(46, seed=9)          # every message type twice
    messages, _ = split_block(block)
    opening = OrderFlow(symbols=4, seed=3).opening()
    opening_messages, _ = split_block(opening.data)
    frame_seeds = {}
    for codec in packet.CODECS:
        for per_frame in (1, 6, 23):
            for i, frame in enumerate(frames(messages, per_frame, codec)[:3]):
                frame_seeds[f"{codec}-{per_frame}x-{i}"] = frame
        frame_seeds[f"{codec}-opening"] = frames(opening_messages[:40], 40, codec)[0]
    frame_seeds["heartbeat"] = protocol.heartbeat(SESSION, 7)
    frame_seeds["end-of-session"] = protocol.end_of_session(SESSION, 7)

    itch_seeds = {"uniform": block, "opening": packet.frame_messages(opening_messages[:60]),
                  "one-of-each": packet.frame_messages(messages[::2])}
    itch_seeds.update({f"single-{m[:1].decode()}": packet.frame_messages([m])
                       for m in messages[::4]})

    session_seeds = {}
    for codec in packet.CODECS:
        stream = server_stream(messages, 5, codec)
        session_seeds[f"client-{codec}-whole"] = bytes((CLIENT, 0, 1)) + stream
        session_seeds[f"client-{codec}-dribbled"] = bytes((CLIENT, 3, 1)) + stream
        session_seeds[f"client-{codec}-from-now"] = bytes((CLIENT, 40, 0)) + stream
        session_seeds[f"trim-{codec}"] = (bytes((TRIM,)) + (3).to_bytes(8, "big")
                                          + frames(messages, 9, codec)[1])
    # A resume point inside a frame: the client asked for 7, the server resends from 1.
    session_seeds["client-overlap"] = bytes((CLIENT, 0, 4)) + server_stream(messages, 5, "lz4")
    session_seeds["client-rejected"] = bytes((CLIENT, 0, 1)) + protocol.login_rejected(
        protocol.NOT_AUTHORIZED)
    session_seeds["server-side"] = bytes((SERVER_SIDE,)) + b"".join([
        protocol.login_request(b"fuzz", b"fuzz", SESSION, 1),
        protocol.empty_frame(protocol.CLIENT_HEARTBEAT),
        protocol.empty_frame(protocol.LOGOUT_REQUEST)])
    return {"frames": frame_seeds, "itch": itch_seeds, "session": session_seeds}


def main():
    for harness, seeds in corpora().items():
        directory = VECTORS / harness
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{directory}: {len(seeds)} inputs, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()

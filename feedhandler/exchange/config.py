"""What the exchange simulator takes: `SimulatorConfig` and its defaults (`feedhandler simulate
--help` shows the same)."""

from __future__ import annotations

from dataclasses import dataclass

from feedhandler.session.protocol import (HEARTBEAT_INTERVAL, LINK_TIMEOUT, PASSWORD_LENGTH,
                                          USERNAME_LENGTH, pad)
from feedhandler.wire import packet

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9009
DEFAULT_SESSION = b"SIMULATOR"
DEFAULT_USERNAME = b"feed"
DEFAULT_PASSWORD = b"feed"
DEFAULT_MESSAGES_PER_PACKET = 500
LOGIN_TIMEOUT = 5.0           # seconds from connect to a complete login request
PARTIAL_FRAME_TIMEOUT = 5.0   # seconds a started client frame may take to complete
MAX_CLIENTS = 64
# Frames of an endless or replayed session are retained up to this many bytes.
DEFAULT_RETAIN_BYTES = 256 << 20


@dataclass(frozen=True)
class SimulatorConfig:
    """What `feedhandler simulate` takes (see its --help).

    count: synthetic mode, the messages of the whole session (opening and closing included);
        replay mode, the most messages to serve; None: a synthetic session that runs to the
        market close, or the whole file.
    rate: messages per second, 0 = as fast as the fastest client reads; burst: the
        peak-to-average ratio with a rate. speed: replay paced by the ITCH timestamps.
    retain_bytes: frames kept for retransmission by an endless or replay session (a --count
        synthetic session keeps all of its frames).
    status_interval: seconds between status lines on stderr; None for none.
    live_clock: stamp messages with the New York time of day at which their packet goes out
        (`feedhandler.exchange.clock`) instead of the synthetic day's clock (09:30 at the
        start); None (default) = for a paced synthetic session (rate), which stands in for a
        live feed. It needs one."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    session: bytes = DEFAULT_SESSION
    username: bytes = DEFAULT_USERNAME
    password: bytes = DEFAULT_PASSWORD
    count: int | None = None
    seed: int = 0
    symbols: int = 100
    rate: float = 0.0
    burst: float = 1.0
    messages_per_packet: int = DEFAULT_MESSAGES_PER_PACKET
    codec: str = "lz4"
    replay: str | None = None
    speed: float | None = None
    exit_after_end: bool = False
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    timeout: float = LINK_TIMEOUT
    login_timeout: float = LOGIN_TIMEOUT
    partial_frame_timeout: float = PARTIAL_FRAME_TIMEOUT
    max_clients: int = MAX_CLIENTS
    retain_bytes: int = DEFAULT_RETAIN_BYTES
    status_interval: float | None = 1.0
    live_clock: bool | None = None

    def __post_init__(self):
        if not 1 <= self.messages_per_packet < packet.END_OF_SESSION_COUNT:
            raise ValueError(f"messages per packet must be 1..{packet.END_OF_SESSION_COUNT - 1}")
        if self.codec not in packet.CODECS:
            raise ValueError(f"codec must be one of {sorted(packet.CODECS)}")
        if self.rate < 0 or self.burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        if self.speed is not None and (self.speed <= 0 or self.replay is None):
            raise ValueError("speed must be positive and needs replay")
        if self.speed is not None and self.rate:
            raise ValueError("pace by rate or by timestamps (speed), not both")
        if self.live_clock and not (self.rate and self.replay is None):
            raise ValueError("a live clock needs a paced synthetic session (a rate, no replay)")
        if self.count is not None and self.count < 0:
            raise ValueError("count must not be negative")
        self.padded_session                     # validates the session name
        pad(self.username, USERNAME_LENGTH, "username")
        pad(self.password, PASSWORD_LENGTH, "password")

    @property
    def stamps_live(self) -> bool:
        """Whether messages carry the time of day they go out at (see live_clock)."""
        if self.live_clock is None:
            return bool(self.rate) and self.replay is None
        return self.live_clock

    @property
    def padded_session(self) -> bytes:
        return pad(self.session, packet.SESSION_LENGTH, "session")



"""`SoupBinClient`: the frame source of `--transport soupbintcp` (docs/protocol.md,
"SoupBinTCP 4.1").

A SoupBinTCP session carries one ITCH message per sequenced data packet and numbers them by
counting. The client gathers the run of 'S' packets that one socket read brings into ONE feed
frame around one MoldUDP64 packet (`_soupbin.gather_frame`, in C without the GIL: session from
the login, first sequence number = the tracker's next one), so the pipeline gets the same unit as
from every transport, one decode call per read. The control packets between runs (heartbeats,
end of session, debug, unsequenced data) are handled one at a time.

Everything else is the session client's (`SessionClient`): login with the tracker's session and
next sequence number, heartbeats from a thread of its own (R after a second of our silence), a
peer silent for the link timeout (15 s) is a dead link, reconnect and resume with backoff,
LoginRejected, --max-reconnects, the stall timeout. With a backup line the client fails over to
it when the line it reads is lost (and back again on the next loss), logging in at the tracker's
next sequence number, so nothing is skipped or repeated.
"""

from __future__ import annotations

import logging

from feedhandler.session.client import SessionClient
from feedhandler.session.errors import LoginRejected
from feedhandler.session.protocol import ProtocolError
from feedhandler.wire import packet, soupbin
from feedhandler.wire._soupbin import gather_frame

__all__ = ["SoupBinClient"]

_HEADER = soupbin.HEADER_SIZE
_LENGTH_SIZE = soupbin.LENGTH_FIELD.size
_SEQUENCED = soupbin.SEQUENCED_DATA


class SoupBinClient(SessionClient):
    """A SoupBinTCP 4.1 session with a feed server (see `SessionClient` for the arguments).

    backup: (host, port) of a backup line serving the same session; after a lost link the
        next attempt goes to the other line.

    Besides the session client's counters: `unsequenced` (unsequenced data packets received:
    logged, not delivered), `debug_packets`, `failovers` (switches between the lines)."""

    length_field = soupbin.LENGTH_FIELD
    heartbeat_packet = soupbin.client_heartbeat()
    logout_packet = soupbin.logout_request()

    def __init__(self, host: str, port: int, *, backup: tuple[str, int] | None = None,
                 logger: logging.Logger | None = None, **options):
        super().__init__(host, port, logger=logger or logging.getLogger(__name__), **options)
        self.lines = [(host, port)] + ([tuple(backup)] if backup else [])
        self.unsequenced = 0
        self.debug_packets = 0
        self.failovers = 0
        self._mold_session = b""

    # ---- session client hooks --------------------------------------------------------------------
    def _login_request(self) -> bytes:
        return soupbin.login_request(*self._login_fields, self.tracker.session,
                                     self.tracker.next_sequence)

    def _link_failed(self, error: Exception):
        super()._link_failed(error)
        if len(self.lines) > 1 and not self._closing.is_set():
            line = (self.lines.index(self.address) + 1) % len(self.lines)
            self.address = self.lines[line]
            self.failovers += 1
            self.log.warning("failing over to line %s: %s:%s", "AB"[line], *self.address)

    def _control(self, packet_type: int, data: bytes) -> bool:
        if packet_type == soupbin.LOGIN_ACCEPTED:
            if self._logged_in:
                raise ProtocolError("second login accepted")
            session, next_sequence = soupbin.parse_login_accepted(data)
            # The tracker and the MoldUDP64 header keep sessions left-justified.
            self._mold_session = session.ljust(soupbin.SESSION_WIDTH)
            self._login_accepted(self._mold_session, next_sequence)
            return True
        if packet_type == soupbin.LOGIN_REJECTED:
            raise LoginRejected(soupbin.parse_login_rejected(data))
        if not self._logged_in:
            if packet_type == soupbin.DEBUG:
                self._debug(data)
                return False
            raise ProtocolError(f"{chr(packet_type)!r} packet before login accepted")
        if packet_type == soupbin.END_OF_SESSION:
            # The tracker's own end-of-session unit: it ends once nothing is open before it.
            self.tracker.accept(packet.encode_block(
                b"", packet.END_OF_SESSION_COUNT, session=self._mold_session,
                sequence=self.tracker.next_sequence, codec="none"))
            return True
        if packet_type == soupbin.UNSEQUENCED_DATA:
            self.unsequenced += 1
            self.log.info("%s:%s: unsequenced data packet of %d bytes (not delivered)",
                          *self.address, len(data) - _HEADER)
        elif packet_type == soupbin.DEBUG:
            self._debug(data)
        return False        # a server heartbeat: hearing it is all it is for

    def _debug(self, data: bytes):
        self.debug_packets += 1
        self.log.warning("%s:%s: server says: %s", *self.address, soupbin.parse_debug(data))

    # ---- framing ---------------------------------------------------------------------------------
    def _scan(self, batch: list[bytes], max_frames: int) -> int:
        """Control packets one at a time; each run of 'S' packets as one frame."""
        buffer, view = self._buffer, self._view
        start, end = self._start, self._end
        unpack_length = self.length_field.unpack_from
        tracker = self.tracker
        try:
            while end - start >= _HEADER:
                length = unpack_length(buffer, start)[0]
                packet_type = buffer[start + _LENGTH_SIZE]
                if packet_type == _SEQUENCED and self._logged_in:
                    frame, _, stop = gather_frame(view, start, end, self._mold_session,
                                                  tracker.next_sequence)
                    if frame is None:       # the first 'S' packet is not all here yet
                        return _LENGTH_SIZE + length
                    start = stop
                    batch += self._accept_data(frame)
                    if len(batch) >= max_frames or tracker.ended:
                        break
                    continue
                soupbin.check_prefix(packet_type, length, soupbin.SERVER_TYPES, offset=start)
                if packet_type == _SEQUENCED:
                    raise ProtocolError("sequenced data before login accepted")
                stop = start + _LENGTH_SIZE + length
                if stop > end:
                    return stop - start
                data = bytes(view[start:stop])
                start = stop
                if self._control(packet_type, data):
                    break
        except soupbin.PacketError as error:
            raise ProtocolError(f"bad SoupBinTCP packet from the server: {error}") from None
        finally:
            self._start = start
        return 0

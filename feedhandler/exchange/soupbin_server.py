"""The exchange simulator serving SoupBinTCP 4.1 (`feedhandler simulate --transport soupbintcp`).

Generation, pacing, the frame store and the per-client cursors are the simulator's own
(`feedhandler.exchange.server`); only the packets differ. The store holds uncompressed frames,
and each slice a client is sent becomes one 'S' packet per message in C
(`_soupbin.sequenced_packets`). A login at a sequence number inside a stored frame gets that
frame's messages from there on. Server heartbeats ('H') go out after a second without sending,
end of session ('Z') after the last message; a client silent for the link timeout is dropped.
The simulator accepts login request, client heartbeat and logout from clients; anything else
(unsequenced data included: an ITCH feed has no upstream messages) closes the connection with a
debug packet saying why.
"""

from __future__ import annotations

import dataclasses
import socket

from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.server import Simulator, _Client
from feedhandler.wire import packet, soupbin
from feedhandler.wire._soupbin import sequenced_packets

__all__ = ["SoupBinSimulator"]

_CLIENT_TYPES = frozenset({soupbin.LOGIN_REQUEST, soupbin.CLIENT_HEARTBEAT,
                           soupbin.LOGOUT_REQUEST})
# The longest packet a client sends here: the login request.
_MAX_CLIENT_PACKET = len(soupbin.login_request(b"", b"")) - soupbin.LENGTH_FIELD.size


class SoupBinSimulator(Simulator):
    """`Simulator` speaking SoupBinTCP 4.1; the store is framed uncompressed."""

    def __init__(self, config: SimulatorConfig):
        super().__init__(dataclasses.replace(config, codec="none"))

    def _new_client(self, sock: socket.socket, name: str) -> _Client:
        return _SoupBinConnection(self, sock, name)


class _SoupBinConnection(_Client):
    length_field = soupbin.LENGTH_FIELD

    @staticmethod
    def _check_client_packet(packet_type: int, length: int):
        soupbin.check_prefix(packet_type, length, _CLIENT_TYPES, max_length=_MAX_CLIENT_PACKET)

    @staticmethod
    def _debug_packet(text: str) -> bytes:
        return soupbin.debug(text)

    @staticmethod
    def _parse_login(frame) -> tuple[bytes, bytes, bytes, int]:
        return soupbin.parse_login_request(frame)

    @staticmethod
    def _login_rejected(reason: bytes) -> bytes:
        return soupbin.login_rejected(reason)

    @staticmethod
    def _login_accepted(session: bytes, sequence: int) -> bytes:
        return soupbin.login_accepted(session, sequence)

    @staticmethod
    def _rest_of_frame(frame, sequence: int) -> bytes:
        _, first, _ = packet.peek(frame)
        return sequenced_packets(frame, sequence - first)[0]

    @staticmethod
    def _data(frames):
        return sequenced_packets(frames)[0]

    def _heartbeat(self) -> bytes:
        return soupbin.server_heartbeat()

    def _end_of_session(self) -> bytes:
        return soupbin.end_of_session()

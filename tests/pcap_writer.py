"""A classic pcap file (Ethernet, IPv4, TCP or UDP) from bytes a test exchanged, for an
independent decoder (tshark) to read. Checksums are left 0: tshark does not verify them by
default. Only loopback addresses appear: the client is 127.0.0.2, the server 127.0.0.1 (two
addresses, so that tshark tells the directions of a connection apart by address)."""

from __future__ import annotations

import struct
from pathlib import Path

ETHERNET = 1
SEGMENT = 60000         # TCP payload bytes per segment (under the 64 KiB IPv4 limit)
SERVER, CLIENT = bytes((127, 0, 0, 1)), bytes((127, 0, 0, 2))
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


class Pcap:
    def __init__(self):
        self.records: list[bytes] = []
        self._time = 1_700_000_000.0

    def _add(self, ip_payload: bytes, protocol: int, source: bytes, destination: bytes):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(ip_payload), len(self.records) & 0xFFFF,
                         0x4000, 64, protocol, 0, source, destination) + ip_payload
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        self._time += 0.0001
        seconds = int(self._time)
        self.records.append(struct.pack("<IIII", seconds, int((self._time - seconds) * 1e6),
                                        len(frame), len(frame)) + frame)

    def udp(self, source_port: int, port: int, payload: bytes):
        self._add(struct.pack(">HHHH", source_port, port, 8 + len(payload), 0) + payload, 17,
                  SERVER, CLIENT)

    def write(self, path: Path):
        header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, ETHERNET)
        path.write_bytes(header + b"".join(self.records))


class TcpStream:
    """One TCP connection, client -> server port, written into `pcap`: handshake, data in
    segments each way as `send` is called (acknowledged by the other side), FIN."""

    def __init__(self, pcap: Pcap, client_port: int, server_port: int):
        self.pcap = pcap
        self.ports = {"client": (client_port, server_port), "server": (server_port, client_port)}
        self.sequence = {"client": 1000, "server": 5000}
        self._segment("client", SYN, b"")
        self._segment("server", SYN | ACK, b"")
        self._segment("client", ACK, b"")

    def _segment(self, side: str, flags: int, payload: bytes):
        other = "server" if side == "client" else "client"
        source, destination = self.ports[side]
        header = struct.pack(">HHIIBBHHH", source, destination, self.sequence[side],
                             self.sequence[other] if flags & ACK else 0, 5 << 4, flags, 65535,
                             0, 0)
        addresses = (CLIENT, SERVER) if side == "client" else (SERVER, CLIENT)
        self.pcap._add(header + payload, 6, *addresses)
        self.sequence[side] = (self.sequence[side] + len(payload)
                               + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF

    def send(self, side: str, data: bytes):
        for at in range(0, len(data), SEGMENT):
            self._segment(side, ACK | PSH, data[at:at + SEGMENT])

    def close(self):
        self._segment("client", FIN | ACK, b"")
        self._segment("server", FIN | ACK, b"")
        self._segment("client", ACK, b"")

"""Wire conformance with an independent decoder: Wireshark's `tshark` (Debian package `tshark`,
installed by scripts/bootstrap.sh) reads what `SoupBinClient` and the simulator exchanged.

The bytes come from a real session on 127.0.0.1: what the server sent, recorded by the fault
suite's proxy, and what the client sent, recorded by the client. They are written as a pcap
(tests/pcap_writer.py) and decoded with `-d tcp.port==PORT,soupbintcp`. Then the MoldUDP64
packets the client built from the 'S' packets (the unit the pipeline gets) go through tshark's
`moldudp64` dissector, and its payload through `nasdaq_itch` (tshark 4.0's ITCH dissector
knows ITCH 3.0/4.x field layouts, not 5.0: only the message type it reports is compared)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from faults.proxy import TcpProxy
from feedhandler.exchange.config import SimulatorConfig
from feedhandler.exchange.soupbin_server import SoupBinSimulator
from feedhandler.session.soupbin import SoupBinClient
from pcap_writer import Pcap, TcpStream
from streams import split_block

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (Debian package "
                                "tshark; scripts/bootstrap.sh installs it)")
SERVER_PORT, CLIENT_PORT, MOLD_PORT = 26477, 40001, 26400
COUNT, FIRST = 700, 5


class RecordingClient(SoupBinClient):
    """Keeps every packet it sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[bytes] = []

    def _send(self, sock, data):
        self.sent.append(bytes(data))
        super()._send(sock, data)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """(pcap of the TCP session, pcap of the gathered MoldUDP64 packets, frames, messages)."""
    config = SimulatorConfig(port=0, count=COUNT, symbols=4, seed=3, messages_per_packet=9,
                             status_interval=None)
    with SoupBinSimulator(config) as server, \
            TcpProxy(("127.0.0.1", server.port), record=True) as proxy:
        client = RecordingClient("127.0.0.1", proxy.port, username="feed", password="feed",
                                 sequence=FIRST)
        frames = [frame for batch in client.batches() for frame in batch]
        client.close()
        proxy.wait_for(lambda: proxy.links[0].closed.is_set(), 10, "the link to close")
        down = bytes(proxy.links[0].recorded)
    directory = tmp_path_factory.mktemp("tshark")
    capture = Pcap()
    stream = TcpStream(capture, CLIENT_PORT, SERVER_PORT)
    stream.send("client", client.sent[0])
    stream.send("server", down)
    for data in client.sent[1:]:
        stream.send("client", data)
    stream.close()
    capture.write(directory / "soupbintcp.pcap")
    mold = Pcap()
    for frame in frames:
        mold.udp(CLIENT_PORT, MOLD_PORT, frame[16:])       # after the 16-byte frame header
    mold.write(directory / "moldudp64.pcap")
    messages = [m for frame in frames for m in split_block(frame[36:])]
    return directory / "soupbintcp.pcap", directory / "moldudp64.pcap", frames, messages


def tshark(path, *options: str) -> str:
    result = subprocess.run([TSHARK, "-r", str(path), *options], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def soupbin_packets(path) -> list[dict[str, str]]:
    """Every SoupBinTCP packet tshark finds, its fields by their display names."""
    packets = []
    for line in tshark(path, "-d", f"tcp.port=={SERVER_PORT},soupbintcp", "-V").splitlines():
        if line.startswith("SoupBinTCP"):
            packets.append({})
        elif packets and (match := re.match(r"^    ([A-Za-z ]+): (.*)$", line)):
            packets[-1][match.group(1)] = match.group(2)
    return packets


def test_tshark_decodes_every_packet_of_the_session(session):
    capture, _, _, messages = session
    packets = soupbin_packets(capture)
    kinds = [re.search(r"\('(.)'\)", p["Packet Type"]).group(1) for p in packets]
    # Login, accepted, one S per message, end of session; the client's own after it (R while
    # it waited, if any, then the logout).
    assert kinds[:2] == ["L", "A"]
    assert kinds[2:2 + len(messages)] == ["S"] * len(messages)
    assert kinds[2 + len(messages)] == "Z"
    assert set(kinds[3 + len(messages):]) <= {"R", "O"} and kinds[-1] == "O"
    login, accepted = packets[0], packets[1]
    assert login["User Name"].rstrip() == "feed" and login["Password"].rstrip() == "feed"
    assert login["Session"].strip() == "" and login["Requested sequence number"] == str(FIRST)
    assert accepted["Session"].strip() == "SIMULATOR"
    assert accepted["Next sequence number"] == str(FIRST)
    numbers = [int(p["Sequence number"].split()[0]) for p in packets[2:2 + len(messages)]]
    assert numbers == list(range(FIRST, COUNT + 1))
    assert [int(p["Packet Length"]) for p in packets[2:2 + len(messages)]] == \
        [1 + len(m) for m in messages]


def test_tshark_reads_the_same_messages(session):
    capture, _, _, messages = session
    fields = tshark(capture, "-d", f"tcp.port=={SERVER_PORT},soupbintcp", "-T", "fields",
                    "-E", "occurrence=a", "-E", "aggregator=|", "-e", "soupbintcp.message")
    seen = [bytes.fromhex(h) for line in fields.splitlines() for h in line.split("|") if h]
    assert seen == messages and len(seen) == COUNT - FIRST + 1


def test_tshark_decodes_the_gathered_moldudp64_packets(session):
    _, mold, frames, messages = session
    fields = tshark(mold, "-d", f"udp.port=={MOLD_PORT},moldudp64", "-d",
                    "moldudp64.payload,nasdaq_itch", "-T", "fields", "-E", "occurrence=a",
                    "-E", "aggregator=|", "-e", "moldudp64.session", "-e", "moldudp64.sequence",
                    "-e", "moldudp64.count", "-e", "moldudp64.msgseq", "-e", "moldudp64.msglen",
                    "-e", "nasdaq-itch.message_type")
    rows = [line.split("\t") for line in fields.splitlines()]
    assert len(rows) == len(frames)
    expected = FIRST
    lengths, named = [], 0
    for frame, (session_name, sequence, count, numbers, sizes, itch_types) in zip(frames, rows):
        assert session_name.strip() == "SIMULATOR" and int(sequence) == expected
        assert [int(n) for n in numbers.split("|")] == list(range(expected,
                                                                  expected + int(count)))
        lengths += [int(n) for n in sizes.split("|")]
        # tshark's ITCH dissector names the type of each message up to the first it cannot
        # dissect in a packet; those are the messages' own type bytes, in order.
        types = [t.strip("'") for t in itch_types.split("|") if t]
        assert types == [chr(m[0]) for m in split_block(frame[36:])][:len(types)]
        named += len(types)
        expected += int(count)
    assert expected == COUNT + 1
    assert lengths == [len(m) for m in messages]
    assert named > 0

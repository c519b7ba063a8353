"""`ListenSource`: the frame source of `--listen`. The feed connects to the handler and pushes
data frames, with no login; everything else is as with the session client (`FrameSource`)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

from feedhandler.session.errors import ConnectionLost
from feedhandler.session.protocol import LINK_TIMEOUT, ProtocolError
from feedhandler.session.source import (GAP_WAIT, MAX_BATCH, RECEIVE_BUFFER, Lz4FramedSource,
                                        _LinkDown)
from feedhandler.session.tracker import SequenceTracker


class ListenSource(Lz4FramedSource):
    """Accepts one feed connection on (host, port) and yields its data frames.

    session: the session expected, or b"" for whichever the first frame has; a frame of
        another session ends the source with SessionChanged.
    sequence: first sequence number wanted: 1 = the whole session (a first frame after it is
        a gap), 0 = from whatever comes first.
    stall_timeout: seconds a frame may take from its first byte to its last before the feed
        counts as dead (ConnectionLost), whether it paused or trickled. Between frames the
        source waits however long the feed is quiet.
    gap_wait: seconds a gap waits for a late frame before it is given up (the frames held
        behind it are then delivered). A feed that pushes cannot be asked again.

    The stream holds data frames only (type S): messages, heartbeats (count 0) and end of
    session. It ends at end of session (`ended`) or when the feed closes the connection
    between frames (`ended` stays false: the session did not end); a connection closed or
    stalled inside a frame, or anything that is not a data frame, raises ConnectionLost. After
    that one connection the port is closed: a listener serves one feed session."""

    peer = "feed"

    def __init__(self, host: str, port: int, *, session: str | bytes = b"", sequence: int = 1,
                 stall_timeout: float = LINK_TIMEOUT, gap_wait: float = GAP_WAIT,
                 receive_buffer: int = RECEIVE_BUFFER, logger: logging.Logger | None = None):
        logger = logger or logging.getLogger(__name__)
        self.address = (host, port)
        super().__init__(SequenceTracker(session, sequence, name=f"feed on {host}:{port}",
                                         logger=logger),
                         stall_timeout=stall_timeout, gap_wait=gap_wait,
                         receive_buffer=receive_buffer, logger=logger)
        self._server: socket.socket | None = None
        self._opened = False

    def open(self) -> None:
        """Bind and listen (once). A port in use raises OSError naming the address; with port
        0, `address` then holds the port the system picked."""
        if self._opened:
            return
        host, port = self.address
        try:
            server = socket.create_server(self.address)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            refused = OSError(f"cannot listen on {host}:{port}: {reason}")
            refused.errno = error.errno
            raise refused from None
        server.settimeout(self._wake_up)
        self._server, self._opened = server, True
        self.address = server.getsockname()[:2]
        self.tracker.name = f"feed on {self.address[0]}:{self.address[1]}"
        self.log.info("listening on %s:%d", *self.address)

    def batches(self, max_frames: int = MAX_BATCH) -> Iterator[list[bytes]]:
        """Data frames in sequence order, a list per socket read (at most `max_frames`). Waits
        for the feed to connect; ends at end of session, EOF between frames or `close()`;
        raises ConnectionLost or SessionChanged (after every frame before the fault). When the
        feed ends, an open gap is given up and the frames held behind it are delivered."""
        self.open()
        if not self._accept():
            return
        try:
            try:
                yield from self._receive(max_frames)
            except _LinkDown as error:
                if error.mid_frame:
                    raise ConnectionLost(f"{self.tracker.name}: {error}") from None
                self.log.warning("%s: %s before end of session, at sequence %d",
                                 self.tracker.name, error, self.tracker.next_sequence)
            except (OSError, ProtocolError) as error:
                raise ConnectionLost(f"{self.tracker.name}: {error}") from error
        except Exception:
            # The feed cannot be asked again: what is held behind a gap is all there is.
            yield from self._flush(self.tracker.give_up_all(), max_frames)
            raise
        else:
            if not self._closing.is_set():
                yield from self._flush(self.tracker.give_up_all(), max_frames)
        finally:
            sock, self._sock = self._sock, None
            sock.close()

    def close(self) -> None:
        super().close()
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def _accept(self) -> bool:
        """Wait for the feed's connection; False if `close()` came first or it was served."""
        server = self._server
        if server is None:
            return False
        try:
            while True:
                if self._closing.is_set():
                    return False
                try:
                    connection, peer = server.accept()
                    break
                except TimeoutError:
                    continue
                except OSError:
                    if self._closing.is_set():      # close() closed the listening socket
                        return False
                    raise
        finally:
            server.close()
            self._server = None
        connection.settimeout(self._wake_up)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, len(self._buffer))
        self._attach(connection)
        self.log.info("%s: feed connected from %s:%d", self.tracker.name, *peer[:2])
        return True

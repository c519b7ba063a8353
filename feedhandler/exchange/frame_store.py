"""Framed packets of the simulated session: `frame_block` frames slices of a message block once,
and `FrameStore` keeps the frames in order as both what clients are served from and the
retransmission store (each client has its own cursor into it)."""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from dataclasses import dataclass

import numpy as np

from feedhandler.exchange.orderflow import MessageBlock
from feedhandler.wire import packet


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive frames in one buffer: frame i is data[offsets[i]:offsets[i + 1]] and carries
    messages sequences[i] .. sequences[i + 1] - 1. `due` is when each frame may be published, in
    seconds from the start (None: at once)."""

    data: bytes
    offsets: np.ndarray
    sequences: np.ndarray
    due: np.ndarray | None
    packet_bytes: int                 # the MoldUDP64 packets before compression

    @property
    def frames(self) -> int:
        return len(self.offsets) - 1


def frame_block(block: MessageBlock, boundaries: np.ndarray, *, session: bytes, sequence: int,
                codec: str, due: np.ndarray | None = None) -> FrameChunk:
    """Frame the block's messages boundaries[i] .. boundaries[i + 1] - 1 as packet i, the
    first message having sequence number `sequence`."""
    data = block.data
    starts = block.offsets[boundaries]
    counts = np.diff(boundaries)
    frames = [packet.encode_block(data[a:b], n, session=session, sequence=s, codec=codec)
              for a, b, n, s in zip(starts[:-1].tolist(), starts[1:].tolist(), counts.tolist(),
                                    (sequence + boundaries[:-1]).tolist())]
    offsets = np.zeros(len(frames) + 1, np.int64)
    np.cumsum([len(f) for f in frames], out=offsets[1:])
    return FrameChunk(b"".join(frames), offsets, sequence + boundaries.astype(np.int64), due,
                      int(starts[-1] - starts[0]) + packet.PACKET_HEADER_SIZE * len(frames))


class FrameStore:
    """All frames of the session so far, in order, addressed by a global frame index. Frames
    below `published` are visible to clients; chunks wholly older than the retention bound are
    dropped (never with a bound of None)."""

    def __init__(self, first_sequence: int = 1, retain_bytes: int | None = None):
        self.chunks: deque[FrameChunk] = deque()
        self.chunk_starts: deque[int] = deque()    # global index of each chunk's first frame
        self.first_frame = 0
        self.produced = 0
        self.published = 0
        self.finished = False                      # nothing more will be appended
        self.retain_bytes = retain_bytes
        self.retained_bytes = 0
        self.packet_bytes = 0
        self.frame_bytes = 0
        self._first_sequence = first_sequence
        self._changed = asyncio.Event()

    @property
    def ended(self) -> bool:
        """End of session: every frame is published and no more will come."""
        return self.finished and self.published == self.produced

    def changed(self) -> asyncio.Event:
        """An event set at the next publication or end of session."""
        return self._changed

    def _notify(self):
        self._changed.set()
        self._changed = asyncio.Event()

    def append(self, chunk: FrameChunk):
        self.chunks.append(chunk)
        self.chunk_starts.append(self.produced)
        self.produced += chunk.frames
        self.retained_bytes += len(chunk.data)
        self.packet_bytes += chunk.packet_bytes
        self.frame_bytes += len(chunk.data)
        while (self.retain_bytes is not None and self.retained_bytes > self.retain_bytes
               and len(self.chunks) > 1 and self.chunk_starts[1] <= self.published):
            dropped = self.chunks.popleft()
            self.chunk_starts.popleft()
            self.retained_bytes -= len(dropped.data)
            self.first_frame = self.chunk_starts[0]

    def chunks_after(self, frame: int) -> int:
        """Chunks that start after global frame `frame`."""
        return len(self.chunk_starts) - bisect.bisect_right(self.chunk_starts, frame)

    def finish(self):
        self.finished = True
        self._notify()

    def _chunk(self, frame: int) -> tuple[FrameChunk, int]:
        """The chunk holding global frame `frame` and the frame's index in it."""
        if not self.first_frame <= frame < self.produced:
            raise IndexError(f"frame {frame} is not in the store "
                             f"({self.first_frame}..{self.produced - 1})")
        at = bisect.bisect_right(self.chunk_starts, frame) - 1
        return self.chunks[at], frame - self.chunk_starts[at]

    def sequence_at(self, frame: int) -> int:
        """Sequence number of the first message of `frame` (of the next message for
        frame == produced)."""
        if not self.chunks:
            return self._first_sequence
        if frame >= self.produced:
            return int(self.chunks[-1].sequences[-1])
        chunk, index = self._chunk(frame)
        return int(chunk.sequences[index])

    def frame_bytes_at(self, frame: int) -> bytes:
        chunk, index = self._chunk(frame)
        return chunk.data[chunk.offsets[index]:chunk.offsets[index + 1]]

    def position(self, sequence: int) -> int:
        """The published frame holding `sequence`: the oldest retained frame if it is older, the
        next to be published if it is newer or 0 (from now on)."""
        if sequence == 0 or sequence >= self.sequence_at(self.published):
            return self.published
        if sequence <= self.sequence_at(self.first_frame):
            return self.first_frame
        for chunk, start in zip(self.chunks, self.chunk_starts):
            if sequence < chunk.sequences[-1]:
                return start + int(np.searchsorted(chunk.sequences, sequence, "right")) - 1
        return self.published

    def next_due(self) -> float | None:
        chunk, index = self._chunk(self.published)
        return None if chunk.due is None else float(chunk.due[index])

    def publish_due(self, elapsed: float):
        """Publish the frames due by `elapsed` seconds from the start."""
        before = self.published
        while self.published < self.produced:
            chunk, index = self._chunk(self.published)
            if chunk.due is None:
                self.published += chunk.frames - index
                continue
            upto = int(np.searchsorted(chunk.due, elapsed, "right"))
            if upto <= index:
                break
            self.published += upto - index
        if self.published != before:
            self._notify()

    def slice(self, frame: int, max_bytes: int) -> tuple[memoryview, int]:
        """Published frames from `frame` on, at most max_bytes unless one frame is larger, all
        in one chunk: (bytes, global index after the last frame)."""
        chunk, index = self._chunk(frame)
        available = min(self.published - frame, chunk.frames - index)
        begin = int(chunk.offsets[index])
        upto = int(np.searchsorted(chunk.offsets, begin + max_bytes, "right")) - 1
        upto = max(index + 1, min(upto, index + available))
        return memoryview(chunk.data)[begin:int(chunk.offsets[upto])], frame + upto - index

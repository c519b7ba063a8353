"""The handler pipeline: frames in, parallel nogil decode, in-order publishing into a Kafka sink.

    reader (caller's thread)  --socket reads-->  worker pool: packet.decode_many (GIL released)
           |                                            |
           +-- bounded queue of futures, in arrival order
                                                        v
    publisher thread: takes decoded packets strictly in feed order and hands them to the Kafka
    sink (feedhandler.kafka.sink), which builds the records, produces them into the one shared
    producer, applies backpressure and keeps the delivery ledger.

The publisher waits event-driven: on an eventfd the reader signals after queuing a read, and on
the ProducerLink's eventfd, signalled from librdkafka's thread as soon as a frame's records
(and every earlier frame's) are acknowledged (feedhandler.kafka.sink `acknowledgement_wait`);
it serves the producer every POLL_INTERVAL besides. Without a ProducerLink it looks for
acknowledgements every `ack_interval` instead.

With `decode="publisher"` (the latency profile) there is no pool: the publisher decodes each
read when it takes it, one hand-off instead of two (`_PublisherDecodes`).

The reader never parses: it hands every socket read on at once, whatever its size
(the reader's time goes to the socket alone, so a slow decode or a busy producer never delays
the next read's timestamp). Only the publisher thread touches the producer: librdkafka is
thread-safe, but two threads producing at once contend for the GIL and its locks and reach
less than one. Taking packets in arrival order keeps every symbol's ticks in feed order
whatever the number of workers. When the producer's queue is full the publisher waits, the futures queue fills,
and the reader stops reading the socket: backpressure reaches the exchange instead of memory
growing.

However `run()` ends (end of feed, `stop()`, an error from the frame source or the publisher),
what was read is published, the producer is flushed and the account settled before it returns
or re-raises.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from feedhandler.kafka.sink import POLL_INTERVAL, SinkConfig, frame_messages, open_sink
from feedhandler.ops.threads import borrowed_thread, every_role, start_role
from feedhandler.wire import packet as packets
from feedhandler.wire._decode import tick_counts

log = logging.getLogger(__name__)
DECODE_ON = ("pool", "publisher")


@dataclass
class HandlerConfig(SinkConfig):
    """The Kafka sink's settings, plus the pipeline's own."""

    workers: int = 2                # decode threads, with decode="pool"
    decode: str = "pool"            # DECODE_ON: a pool of `workers` threads, or the publisher
    queue_reads: int = 0            # socket reads queued for the publisher; 0 = 4 per worker
    # Without a ProducerLink (nothing signals an acknowledgement): seconds the publisher waits
    # for the next read before it looks for acknowledgements while frames await them (the
    # wait has a millisecond's resolution). With the link it waits for the signal.
    ack_interval: float = POLL_INTERVAL
    # Frames at most per socket read handed on as one task; 0 = the frame source's default.
    read_frames: int = 0
    # CPUs per thread role ("reader", "decode", "publisher"), from feedhandler.ops.threads
    # parse_cpus; a role not named keeps the mask it inherits.
    cpus: dict = field(default_factory=dict)
    # SCHED_FIFO priority of the reader, decode and publisher threads; 0: the normal policy
    # (feedhandler.ops.threads; the caller checks it is permitted: check_realtime).
    realtime_priority: int = 0


@dataclass
class Account:
    """What happened to every frame and tick; `lost` must be 0 for a clean run."""

    frames: int = 0
    messages: int = 0
    decoded: int = 0
    decoded_by_type: Counter = field(default_factory=Counter)   # message type -> ticks
    quarantined: int = 0
    quarantined_frames: int = 0
    records: int = 0
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0
    dead_lettered: int = 0
    already_in_kafka: int = 0       # ticks a resumed run skipped: their partitions held them
    timestamp_fallbacks: int = 0    # records sent with the produce time: ITCH time out of range
    backpressure_waits: int = 0     # times the publisher waited for room in the producer queue
    gaps: int = 0
    missing: int = 0
    duplicates: int = 0
    failure_reasons: dict = field(default_factory=dict)
    producer_path: str = ""         # the sink's delivery path (feedhandler.kafka.sink)

    @property
    def lost(self) -> int:
        """Ticks that did not make it into Kafka: failed, never acknowledged, or missing from
        the feed (gaps the session could not fill)."""
        return self.failed + self.undelivered + self.missing

    def as_dict(self) -> dict:
        return {**asdict(self), "decoded_by_type": dict(self.decoded_by_type), "lost": self.lost}


def _decode(batch: list) -> tuple[list[packets.Packet], int]:
    """A socket read's packets (on a worker) and when their decoding was done."""
    decoded = packets.decode_many(batch, policy="quarantine")
    return decoded, time.monotonic_ns()


class _DecodeWhenTaken:
    """A socket read the publisher decodes when it takes it (`decode="publisher"`)."""

    __slots__ = ("decode", "batch")

    def __init__(self, decode, batch: list):
        self.decode, self.batch = decode, batch

    def result(self) -> tuple[list[packets.Packet], int]:
        return self.decode(self.batch)


class _PublisherDecodes(contextlib.nullcontext):
    """`decode="publisher"`: no pool. The reader still hands each read on at once; the
    publisher decodes it (the GIL released, as on a worker) when it takes it. That saves a
    read its way to a worker and back: at the latency profile's rates a read decodes in
    microseconds, while each thread woken for it may wait for a core and for the GIL."""

    def submit(self, decode, batch: list) -> _DecodeWhenTaken:
        return _DecodeWhenTaken(decode, batch)


class Handler:
    """Runs the pipeline over a frame source until it ends or `stop()` is called.

    Creating a Handler creates the missing topics and the producer (`open_sink`)."""

    def __init__(self, config: HandlerConfig):
        if config.decode not in DECODE_ON:      # before open_sink creates anything
            raise ValueError(f"decode must be one of {', '.join(DECODE_ON)}, "
                             f"not {config.decode!r}")
        self.config = config
        self.account = Account()
        self._stopping = threading.Event()
        self._pending: queue.Queue = queue.Queue(config.queue_reads or 4 * config.workers)
        self._publisher_error: BaseException | None = None
        self._read_queued = -1      # eventfd the reader signals after queuing, during run()
        # For metrics and the service watchdog, read from other threads: when the newest
        # socket read came in; whether the publisher is flushing (nothing more comes) or has
        # settled.
        self.last_read_ns = 0
        self.draining = threading.Event()
        self.settled = False
        self.sink = open_sink(config)
        self.account.producer_path = self.sink.path
        # Every frame's way from its socket read's arrival, per stage (ops.latency.STAGES),
        # all recorded on the publisher thread.
        self.latencies = self.sink.ledger.acks.latencies

    @property
    def link(self):
        """The ProducerLink in use, or None."""
        return self.sink.link

    @property
    def acks(self):
        return self.sink.ledger.acks

    # ---- the reader side (caller's thread) ------------------------------------------------------

    def run(self, frames) -> Account:
        """Read frames, decode them on the worker pool, publish them; return the account once
        everything accepted has been flushed (or the flush timed out).

        `frames` is a frame source (an object with `batches()`, e.g. SessionClient: its
        `tracker`'s gaps, missing messages and duplicates go into the account) or any iterable
        of frames or of lists of frames (one list per socket read, decoded as one task, which
        spares the per-frame cost of the hand-offs)."""
        if not hasattr(frames, "batches"):
            batches = frames
        elif self.config.read_frames:
            batches = frames.batches(self.config.read_frames)
        else:
            batches = frames.batches()
        cpus = every_role(self.config.cpus)
        self._read_queued = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            with borrowed_thread("fh-reader", "reader", cpus, self.config.realtime_priority):
                self._run_threads(batches, cpus, frames)
        finally:
            os.close(self._read_queued)
        if self._publisher_error:
            raise self._publisher_error
        return self.account

    def _run_threads(self, batches, cpus, source) -> None:
        """The publisher and the decode pool, while this thread reads."""
        publisher = threading.Thread(target=self._publish_loop, name="fh-publisher",
                                     daemon=True)
        publisher.start()
        workers = itertools.count()

        def start_worker():
            start_role(f"fh-decode-{next(workers)}", "decode", cpus,
                       self.config.realtime_priority)
        try:
            pool = (ThreadPoolExecutor(self.config.workers, initializer=start_worker)
                    if self.config.decode == "pool" else _PublisherDecodes())
            with pool:
                try:
                    self._read(batches, pool, publisher)
                finally:
                    self._put_end(publisher)
        finally:
            publisher.join()
            self._feed_figures(source)

    def _read(self, batches, pool: ThreadPoolExecutor, publisher: threading.Thread) -> None:
        for batch in batches:
            received = self.last_read_ns = time.monotonic_ns()
            if not isinstance(batch, list):
                batch = [batch]
            self.account.frames += len(batch)
            future = pool.submit(_decode, batch)
            while True:     # blocks while the publisher is behind: backpressure
                try:
                    self._pending.put((future, received), timeout=0.1)
                    os.eventfd_write(self._read_queued, 1)
                    break
                except queue.Full:
                    if self._publisher_error or not publisher.is_alive():
                        return
            if self._stopping.is_set() or self._publisher_error:
                return

    def _put_end(self, publisher: threading.Thread) -> None:
        while publisher.is_alive():
            try:
                self._pending.put(None, timeout=0.1)
                os.eventfd_write(self._read_queued, 1)
                return
            except queue.Full:
                continue

    def _feed_figures(self, source) -> None:
        tracker = getattr(source, "tracker", None)
        if tracker is not None:
            self.account.gaps = len(tracker.gaps)
            self.account.missing = tracker.missing
            self.account.duplicates = tracker.duplicates

    def stop(self) -> None:
        """Stop reading; what was read is still decoded, produced and flushed."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def queue_depth(self) -> int:
        """Socket reads (lists of frames) decoded or decoding, not yet published."""
        return self._pending.qsize()

    def outstanding(self) -> int:
        return self.sink.outstanding()

    # ---- the publisher thread -------------------------------------------------------------------

    def _publish_loop(self) -> None:
        start_role("fh-publisher", "publisher", self.config.cpus,
                   self.config.realtime_priority)
        acks = self.sink.ledger.acks
        wakeups = select.poll()
        wakeups.register(self._read_queued, select.POLLIN)
        acknowledged_fd = self.sink.acknowledgement_fd
        if acknowledged_fd is not None:
            wakeups.register(acknowledged_fd, select.POLLIN)
        try:
            while True:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    self._wait(wakeups, self._wait_time(acks), acknowledged_fd)
                    continue
                if item is None:
                    break
                self._publish_read(*item)
        except BaseException as error:      # surfaced by run() on the reader's thread
            log.exception("publisher failed")
            self._publisher_error = error
        finally:
            self._settle()

    def _publish_read(self, future: Future, received: int) -> None:
        decoded_packets, decoded = future.result()
        self.latencies.decoded.record(decoded - received)
        self.sink.publish_read(decoded_packets, self._count(decoded_packets), received)
        self.sink.service()

    def _wait_time(self, acks) -> float:
        """Seconds the publisher may wait for a read or an acknowledgement signal before it
        looks at the sink itself: the sink's figure, or without a
        ProducerLink `ack_interval` while frames await acknowledgement, else POLL_INTERVAL."""
        timeout = self.sink.acknowledgement_wait()
        if timeout is None:
            timeout = self.config.ack_interval if acks.frames else POLL_INTERVAL
        return timeout

    def _wait(self, wakeups: select.poll, timeout: float, acknowledged_fd: int | None) -> None:
        """Nothing queued: wait for the next read or frames acknowledged, and serve the sink
        after the latter. Once `timeout` passes with neither, the
        sink is idle: it produces what it holds and serves the producer."""
        ready = wakeups.poll(1000 * timeout)
        if not ready:
            self.sink.idle()
            return
        for fd, _ in ready:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:     # drained already
                pass
            if fd == acknowledged_fd:
                self.sink.service()

    def _count(self, decoded_packets: list[packets.Packet]) -> list[int]:
        """Count a socket read's packets into the account; return the ticks of each. The
        ticks are counted in one call into C that leaves the packets' arrays unmade."""
        account = self.account
        ticks = tick_counts(decoded_packets, account.decoded_by_type)
        account.decoded += sum(ticks)
        for packet in decoded_packets:
            if packet.count is not None and not packet.is_end_of_session:
                account.messages += packet.count
            if packet.quarantined:
                self._count_quarantined(packet)
        return ticks

    def _count_quarantined(self, packet: packets.Packet) -> None:
        account = self.account
        for entry in packet.quarantined:
            if packet.count is not None:
                account.quarantined += 1
                continue
            account.quarantined_frames += 1
            # A whole frame set aside: its messages count as quarantined too, where its
            # MoldUDP64 header still says how many there were.
            messages = frame_messages(entry.raw)
            account.messages += messages
            account.quarantined += messages

    def _settle(self) -> None:
        """Flush, then settle the account: every tick is delivered, failed or undelivered."""
        self.draining.set()
        account, ledger = self.account, self.sink.ledger
        for name, ticks in self.sink.finish().items():    # delivered, failed, undelivered
            setattr(account, name, ticks)
        account.records = ledger.records
        account.produced = ledger.ticks
        account.dead_lettered = ledger.dead_lettered
        account.already_in_kafka = ledger.already_in_kafka
        account.timestamp_fallbacks = self.sink.timestamps.fallbacks
        account.backpressure_waits = ledger.backpressure_waits
        account.failure_reasons = dict(ledger.errors.reasons)
        self.settled = True

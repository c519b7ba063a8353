# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Per-tick records produced from C into the shared Producer's own librdkafka handle.

`Producer.produce_batch` costs about 1.7 µs per record in the calling thread: six dict lookups,
a state allocation per message, and a delivery report that takes the GIL for every message,
even with delivery.report.only.error. That caps per-tick records near 0.5 M/s before anything
else runs. This module produces the same records without the GIL and without a Python object
per tick, into the very handle the one shared `confluent_kafka.Producer` owns:

- The module is also a librdkafka plugin: the producer is created with `plugin.library.paths`
  naming this file, so librdkafka calls `conf_init` below, then hands over the handle it
  creates (`on_new`) and reports every message's fate (`on_acknowledgement`). The handle comes
  through librdkafka's documented interceptor interface, not from confluent_kafka's internals.
- librdkafka is not linked; its functions are looked up through confluent_kafka.cimpl's own
  handle (`bind_library`: dlopen with RTLD_NOLOAD, then dlsym, which searches cimpl and the
  libraries it was linked against), so they belong to the copy that owns the handle even when
  the process holds other copies of librdkafka.
- Messages produced here carry no confluent_kafka state (`_private` is NULL), which its delivery
  callback skips without taking the GIL; `on_acknowledgement` counts them, by error, in C.
  Records the application produces through the Producer itself are left to its callbacks.
- Frames are acknowledged exactly, in C, as Kafka settles their records. A frame's records
  spread over many partitions, and partitions are acknowledged independently (one produce
  request each): a count of acknowledged records can reach a frame's running total while one
  of its records is still in flight, with a later frame's records counted in its place. So the
  link counts records per (topic, partition) "bucket" of the topics it tracks (`open_topics`):
  produced (its own records, and those the sink produces through the Producer to a tracked
  topic, `count_produced`) and settled (acknowledged or failed, on the broker threads). Each
  frame (`close_frame`) keeps, for the buckets it wrote to, the produced count at its end.
  Within a partition Kafka settles records in order (idempotent producer), so a frame is
  settled once every one of those buckets has settled that many; frames settle in order. The
  oldest unsettled frame's targets are armed per bucket, so a broker thread sees in one
  comparison whether its record completes one; the last one stamps the frame (and any after it
  already complete) with the time and signals an eventfd the link owns
  (`acknowledgement_fd`), which the publisher waits on next to its other work, then takes the
  settled frames with their times (`take_settled`). Successful deliveries make no delivery
  report (error-only reports), so nothing else could wake it.

Invariants its users keep (feedhandler.kafka.producer and the handler's publisher do):

- One producing thread: `produce_ticks` is called by one thread at a time (it reuses no
  buffers across calls, but the refused count and the order of a topic's records assume it),
  and `count_produced`, `close_frame` and `take_settled` by that same thread
  (`take_settled` reads what `close_frame` alone moves, without the lock).
- No concurrent `close()`: the Producer is not closed or destroyed while `produce_ticks` runs.
  After it is gone, `produce_ticks` raises instead of touching the handle (`on_destroy`).
- Fork: librdkafka's threads do not survive fork(), so in a child every link made before the
  fork refuses to produce (`os.register_at_fork`); the child makes its own Producer and link.
- librdkafka version: the records are librdkafka's own structs (rdkafka.pxd), so links are
  made only with the versions the tests ran on (feedhandler.kafka.producer.TESTED_LIBRDKAFKA).
"""

import os
import threading

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint32_t, uint64_t, uint8_t
from libc.stdio cimport FILE, fclose, fread, rewind, snprintf, tmpfile
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove, memset, strcmp
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, write

cimport numpy as cnp
from rdkafka cimport *
from record_layout cimport SESSION_LENGTH, TICK_HEADER_SIZE, write_tick_value
from tick_order cimport (LOCATES, MAX_TYPES, TickSlot, TypeRows, load_types, locate_of,
                         order_ticks, partition_of, record_timestamp_ms)

cnp.import_array()     # also tells numpy's inline accessors which ABI they run under

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef unsigned long pthread_t
    int PTHREAD_PRIO_INHERIT
    int pthread_mutexattr_init(pthread_mutexattr_t* attributes)
    int pthread_mutexattr_setprotocol(pthread_mutexattr_t* attributes, int protocol)
    int pthread_mutexattr_destroy(pthread_mutexattr_t* attributes)
    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attributes)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    pthread_t pthread_self()

cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flags)
    void* dlsym(void* handle, const char* symbol)
    int RTLD_NOW
    int RTLD_NOLOAD
    ctypedef struct Dl_info:
        const char* dli_fname
    int dladdr(const void* address, Dl_info* info)

cdef enum:
    ERROR_BASE = 256        # librdkafka's error codes run from -200 to about 120
    ERROR_SLOTS = 512
    RECORD_FIELDS = 9       # rd_kafka_produceva fields of a record with headers

cdef struct RecordMetadata:     # what a record with headers carries besides key and value
    uint64_t sequence
    int64_t timestamp_ms
    char message_type


cdef struct FrameTarget:        # a frame is settled once bucket `bucket` has settled `records`
    int64_t bucket
    int64_t records


cdef struct FrameMark:
    int64_t first_target    # absolute index of its first FrameTarget
    int64_t n_targets       # the buckets it wrote to (none: settled once the frames before are)
    int64_t settled_ns      # CLOCK_MONOTONIC when it was found settled; 0 before


cdef struct Tally:
    rd_kafka_t* rk          # NULL until on_new, and again after on_destroy
    int owners              # the ProducerLink and librdkafka's conf (which the handle keeps
                            # until every librdkafka thread is joined); the last one frees
    int64_t acknowledged
    int64_t failed
    int64_t failed_by_error[ERROR_SLOTS]
    int wake_fd             # an eventfd, closed with the tally (broker threads may signal it
                            # until the very end)
    # -- the tracked topics, fixed by open_topics before any record (broker threads read them
    # once `n_topics` is published)
    int64_t n_topics
    char** topic_names
    int32_t* partitions
    int64_t* bucket_start   # first bucket of each topic, then the total
    # -- per bucket
    int64_t* produced       # records handed over; the producing thread only
    int64_t* settled        # acknowledged or failed; broker threads, atomic
    int64_t* armed          # the oldest unsettled frame's target, INT64_MAX if none; atomic
    uint8_t* touched        # written to since the last close_frame (producing thread only)
    int64_t* touched_list
    int64_t n_touched
    int64_t producer_thread     # the thread producing tracked records (see track_settled)
    # -- frames, under `lock`; indices are absolute, arrays hold [taken, end)
    pthread_mutex_t lock
    FrameMark* frames
    int64_t frames_base     # absolute index of frames[0]
    int64_t frames_taken    # frames before this were handed to Python (take_settled)
    int64_t frames_settled  # frames before this are settled: the oldest unsettled frame
                            # (written under `lock` atomically, after the frames' stamps:
                            # take_settled reads it without the lock)
    int64_t frames_end
    int64_t frames_capacity
    FrameTarget* targets
    int64_t targets_base
    int64_t targets_end
    int64_t targets_capacity
    int64_t remaining       # the oldest unsettled frame's armed buckets not yet reached

cdef RdKafkaApi api
cdef bint api_bound = False
# Handed from `linked_producer` to `conf_init`, which librdkafka calls on the same thread while
# the Producer is being configured; `_creating` keeps two creations from crossing.
cdef Tally* pending = NULL
_creating = threading.Lock()
# Links made before a fork() are dead in the child: their handle's threads did not come along.
cdef int fork_generation = 0


def _after_fork_in_child():
    global fork_generation
    fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef void* symbol(void* library, const char* name) except NULL:
    cdef void* found = dlsym(library, name)
    if found == NULL:
        raise OSError(f"librdkafka has no {name.decode()}")
    return found


def bind_library(str owner_path):
    """Look up librdkafka's functions through `owner_path`, a module already loaded that links
    librdkafka (confluent_kafka.cimpl): dlsym() on its handle searches it and its own
    dependencies, so the functions are those of the very copy that module calls, whatever
    other copies the process holds. Returns that librdkafka's version (rd_kafka_version())."""
    global api, api_bound
    cdef void* library = dlopen(owner_path.encode(), RTLD_NOW | RTLD_NOLOAD)
    if library == NULL:
        raise OSError(f"{owner_path} is not loaded")
    cdef RdKafkaApi found
    found.version = <version_f> symbol(library, b"rd_kafka_version")
    found.err2str = <err2str_f> symbol(library, b"rd_kafka_err2str")
    found.conf_properties_show = <conf_properties_show_f> symbol(
        library, b"rd_kafka_conf_properties_show")
    found.topic_new = <topic_new_f> symbol(library, b"rd_kafka_topic_new")
    found.topic_destroy = <topic_destroy_f> symbol(library, b"rd_kafka_topic_destroy")
    found.topic_name = <topic_name_f> symbol(library, b"rd_kafka_topic_name")
    found.produce_batch = <produce_batch_f> symbol(library, b"rd_kafka_produce_batch")
    found.produceva = <produceva_f> symbol(library, b"rd_kafka_produceva")
    found.error_code = <error_code_f> symbol(library, b"rd_kafka_error_code")
    found.error_destroy = <error_destroy_f> symbol(library, b"rd_kafka_error_destroy")
    found.conf_interceptor_add_on_new = <conf_add_on_new_f> symbol(
        library, b"rd_kafka_conf_interceptor_add_on_new")
    found.conf_interceptor_add_on_conf_destroy = <conf_add_on_conf_destroy_f> symbol(
        library, b"rd_kafka_conf_interceptor_add_on_conf_destroy")
    found.interceptor_add_on_acknowledgement = <add_on_acknowledgement_f> symbol(
        library, b"rd_kafka_interceptor_add_on_acknowledgement")
    found.interceptor_add_on_destroy = <add_on_destroy_f> symbol(
        library, b"rd_kafka_interceptor_add_on_destroy")
    # dlopen() of a loaded module only adds a reference, which stays: the functions must.
    api = found
    api_bound = True
    return api.version()


def bound_library():
    """The file the bound librdkafka functions were loaded from (for diagnosis, and the tests)."""
    cdef Dl_info info
    if not api_bound:
        raise RuntimeError("bind_library() first")
    if dladdr(<void*> api.version, &info) == 0 or info.dli_fname == NULL:
        raise OSError("dladdr() does not know librdkafka's file")
    return info.dli_fname.decode()


def configuration_table():
    """The bound librdkafka's table of configuration properties (rd_kafka_conf_properties_show:
    name, C/P scope, range, default, description), as text."""
    cdef FILE* out
    cdef char chunk[65536]
    cdef size_t n
    if not api_bound:
        raise RuntimeError("bind_library() first")
    out = tmpfile()
    if out == NULL:
        raise OSError("no temporary file for librdkafka's configuration table")
    try:
        api.conf_properties_show(out)
        rewind(out)
        text = bytearray()
        while True:
            n = fread(chunk, 1, sizeof(chunk), out)
            if n == 0:
                break
            text += chunk[:n]
        return text.decode()
    finally:
        fclose(out)


# ---- the plugin: called by librdkafka ---------------------------------------------------------

cdef public int conf_init(rd_kafka_conf_t* conf, void** plug_opaque, char* errstr,
                          size_t errstr_size) noexcept nogil:
    """librdkafka's plugin entry point, called when `plugin.library.paths` names this file."""
    global pending
    cdef Tally* tally = pending
    pending = NULL
    if tally == NULL or not api_bound:
        snprintf(errstr, errstr_size, "feedhandler's plugin is loaded by linked_producer() only")
        return RD_KAFKA_RESP_ERR__INVALID_ARG
    # The tally must outlive every on_acknowledgement. librdkafka calls on_destroy before it
    # joins its broker threads, which go on acknowledging (or failing) records in flight; the
    # conf's on_conf_destroy comes after the joins (rd_kafka_destroy_final), or when a conf
    # that never became a handle is destroyed.
    cdef int err = api.conf_interceptor_add_on_conf_destroy(conf, "feedhandler",
                                                            on_conf_destroy, tally)
    if err:
        return err
    tally.owners += 1       # released by on_conf_destroy; nothing else sees the tally yet
    return api.conf_interceptor_add_on_new(conf, "feedhandler", on_new, tally)


cdef int on_new(rd_kafka_t* rk, const rd_kafka_conf_t* conf, void* opaque, char* errstr,
                size_t errstr_size) noexcept nogil:
    cdef Tally* tally = <Tally*> opaque
    cdef int err = api.interceptor_add_on_destroy(rk, "feedhandler", on_destroy, tally)
    if err:
        return err
    tally.rk = rk
    return api.interceptor_add_on_acknowledgement(rk, "feedhandler", on_acknowledgement, tally)


cdef int on_acknowledgement(rd_kafka_t* rk, rd_kafka_message_t* message,
                            void* opaque) noexcept nogil:
    cdef Tally* tally = <Tally*> opaque
    track_settled(tally, message)
    if message._private != NULL:        # produced through confluent_kafka: its callbacks count it
        return 0
    if message.err == RD_KAFKA_RESP_ERR_NO_ERROR:
        fh_atomic_add(&tally.acknowledged, 1)
    else:
        count_failure(tally, message.err)
    return 0


cdef int on_destroy(rd_kafka_t* rk, void* opaque) noexcept nogil:
    # No more produce_ticks; broker threads may still acknowledge records: the tally stays.
    (<Tally*> opaque).rk = NULL
    return 0


cdef int on_conf_destroy(void* opaque) noexcept nogil:
    release_tally(<Tally*> opaque)
    return 0


cdef void release_tally(Tally* tally) noexcept nogil:
    cdef int64_t t
    if fh_release(&tally.owners) == 0:
        if tally.wake_fd >= 0:
            close(tally.wake_fd)
        for t in range(tally.n_topics):
            free(tally.topic_names[t])
        free(tally.topic_names)
        free(tally.partitions)
        free(tally.bucket_start)
        free(tally.produced)
        free(tally.settled)
        free(tally.armed)
        free(tally.touched)
        free(tally.touched_list)
        free(tally.frames)
        free(tally.targets)
        pthread_mutex_destroy(&tally.lock)
        free(tally)


# ---- exact frame acknowledgement (see the module's docstring) --------------------------------

cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)    # the clock of Python's time.monotonic_ns()
    return now.tv_sec * 1_000_000_000 + now.tv_nsec


cdef int64_t bucket_of(Tally* tally, const rd_kafka_message_t* message) noexcept nogil:
    """The tracked bucket a settled record belongs to, or -1."""
    cdef int64_t t, n_topics = fh_atomic_load_seq(&tally.n_topics)
    cdef const char* name
    if n_topics == 0 or message.rkt == NULL:
        return -1
    name = api.topic_name(message.rkt)
    for t in range(n_topics):
        if strcmp(name, tally.topic_names[t]) == 0:
            if 0 <= message.partition < tally.partitions[t]:
                return tally.bucket_start[t] + message.partition
            return -1
    return -1


cdef void track_settled(Tally* tally, const rd_kafka_message_t* message) noexcept nogil:
    """A record settled (acknowledged or failed): count it in its bucket, and where that
    reaches the oldest unsettled frame's target, settle what can be."""
    cdef int64_t bucket = bucket_of(tally, message), records
    if bucket < 0:
        return
    # librdkafka also reports a record whose partitioning failed inside the produce call, on
    # the producing thread; such a record was refused, never queued, and not counted produced.
    if <int64_t> pthread_self() == fh_atomic_load_seq(&tally.producer_thread):
        return
    records = fh_atomic_add_fetch(&tally.settled[bucket], 1)
    if records != fh_atomic_load_seq(&tally.armed[bucket]):
        return
    pthread_mutex_lock(&tally.lock)
    # Re-read under the lock: the publisher may have found this bucket reached while arming.
    cdef bint settled_some = False
    if fh_atomic_load_seq(&tally.armed[bucket]) == records:
        fh_atomic_store(&tally.armed[bucket], INT64_MAX)
        tally.remaining -= 1
        settled_some = settle_ready(tally)
    pthread_mutex_unlock(&tally.lock)
    if settled_some:
        signal_settled(tally)


cdef void arm_oldest(Tally* tally) noexcept nogil:
    """Under the lock: arm the oldest unsettled frame's targets; `remaining` counts those not
    reached yet. A target is stored before its bucket is looked at, so a record settling in
    between is seen by one side or the other: by this look, or by its broker thread, which
    then claims it under the lock."""
    cdef FrameMark* frame = &tally.frames[tally.frames_settled - tally.frames_base]
    cdef FrameTarget* target
    cdef int64_t i
    tally.remaining = 0
    for i in range(frame.n_targets):
        target = &tally.targets[frame.first_target + i - tally.targets_base]
        fh_atomic_store(&tally.armed[target.bucket], target.records)
        if fh_atomic_load_seq(&tally.settled[target.bucket]) >= target.records:
            fh_atomic_store(&tally.armed[target.bucket], INT64_MAX)
        else:
            tally.remaining += 1


cdef bint settle_ready(Tally* tally) noexcept nogil:
    """Under the lock, the oldest unsettled frame's armed targets all reached: stamp it settled,
    and every frame after it that is complete too; arm the first that is not. True if any
    settled: the caller then signals, once it has let go of the lock (`signal_settled`)."""
    cdef int64_t now
    if tally.remaining or tally.frames_settled == tally.frames_end:
        return False
    now = monotonic_ns()
    while tally.remaining == 0 and tally.frames_settled < tally.frames_end:
        tally.frames[tally.frames_settled - tally.frames_base].settled_ns = now
        fh_atomic_store(&tally.frames_settled, tally.frames_settled + 1)
        if tally.frames_settled < tally.frames_end:
            arm_oldest(tally)
    return True


cdef inline void signal_settled(Tally* tally) noexcept nogil:
    """Wake the publisher. Not under the lock: the publisher, woken at once (perhaps at a
    real-time priority), would find the lock still held by a broker thread that may be
    preempted before it lets go."""
    cdef uint64_t one = 1
    write(tally.wake_fd, &one, sizeof(one))     # a full eventfd is already readable


cdef int reserve(void** array, int64_t* base, int64_t taken, int64_t end, int64_t* capacity,
                 size_t item_size) noexcept nogil:
    """Under the lock: room for one more item at `end` in an array holding [base, end) of
    which [base, taken) is no longer needed: slide the live part down, or grow. -1 if out of
    memory."""
    cdef void* grown
    cdef int64_t start = base[0]
    if end - start < capacity[0]:
        return 0
    if capacity[0] and (taken - start) * 2 >= capacity[0]:
        memmove(array[0], <char*> array[0] + (taken - start) * item_size,
                (end - taken) * item_size)
        base[0] = taken
        return 0
    grown = realloc(array[0], max(capacity[0] * 2, 64) * item_size)
    if grown == NULL:
        return -1
    array[0] = grown
    capacity[0] = max(capacity[0] * 2, 64)
    return 0


cdef int any_missing_room(Tally* tally, int64_t targets_taken) noexcept nogil:
    """Under the lock: room for a frame's targets (one per bucket touched); -1 if none."""
    cdef int64_t i
    for i in range(tally.n_touched):
        if reserve(<void**> &tally.targets, &tally.targets_base, targets_taken,
                   tally.targets_end + i, &tally.targets_capacity, sizeof(FrameTarget)):
            return -1
    return 0


cdef inline void count_produced(Tally* tally, int64_t bucket, int64_t records) noexcept nogil:
    """Records handed over to `bucket` (producing thread only), toward the next frame."""
    tally.produced[bucket] += records
    if not tally.touched[bucket]:
        tally.touched[bucket] = 1
        tally.touched_list[tally.n_touched] = bucket
        tally.n_touched += 1


cdef inline void count_failure(Tally* tally, int err) noexcept nogil:
    fh_atomic_add(&tally.failed, 1)
    fh_atomic_add(&tally.failed_by_error[min(max(err + ERROR_BASE, 0), ERROR_SLOTS - 1)], 1)


# ---- the Python side ---------------------------------------------------------------------------

def linked_producer(dict config, factory, str plugin_path):
    """`factory(config)` (a confluent_kafka.Producer) created with this module, at
    `plugin_path`, loaded as its plugin; returns (producer, ProducerLink)."""
    global pending
    if not api_bound:
        raise RuntimeError("bind_library() first")
    cdef ProducerLink link = ProducerLink.__new__(ProducerLink)
    config = dict(config)
    others = config.get("plugin.library.paths")
    config["plugin.library.paths"] = plugin_path + (f";{others}" if others else "")
    with _creating:
        pending = link.tally
        try:
            producer = factory(config)
        finally:
            pending = NULL
    if link.tally.rk == NULL:
        raise RuntimeError("librdkafka did not hand the producer's handle to the plugin")
    link.producer = producer
    link.generation = fork_generation
    return producer, link


cdef class ProducerLink:
    """The shared Producer's librdkafka handle: per-tick records from C, deliveries counted.

    Only one thread may call `produce_ticks` at a time (the handler's publisher), and the
    Producer must not be closed while it runs (see the module's invariants)."""

    cdef Tally* tally
    cdef object producer        # keeps the handle alive as long as this link
    cdef list topic_names       # bytes, by topic index
    cdef int n_topics
    cdef int64_t n_refused
    cdef int64_t n_timestamp_fallbacks
    cdef int generation         # fork_generation when the link was made

    def __cinit__(self):
        self.tally = <Tally*> calloc(1, sizeof(Tally))
        if self.tally == NULL:
            raise MemoryError()
        self.tally.owners = 1
        self.tally.producer_thread = -1
        # Priority inheritance: a broker thread holding the lock runs at the priority of a
        # publisher waiting for it (`--realtime-priority`), instead of behind the host's other
        # work.
        cdef pthread_mutexattr_t attributes
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_setprotocol(&attributes, PTHREAD_PRIO_INHERIT)
        pthread_mutex_init(&self.tally.lock, &attributes)
        pthread_mutexattr_destroy(&attributes)
        self.tally.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.tally.wake_fd < 0:
            raise OSError("no eventfd for the acknowledgement wakeup")

    def __dealloc__(self):
        if self.tally != NULL:
            release_tally(self.tally)

    def open_topics(self, list names, list partition_counts):
        """The topics `produce_ticks` writes to, by index, and their actual partition counts
        (from the cluster's metadata: librdkafka 2.16 loses track of a record sent to a
        partition that does not exist, and flush() then never completes); also the topics
        whose records frames are tracked by (every one a frame can write to). Once per link:
        broker threads read them from then on."""
        cdef Tally* tally = self.tally
        cdef int64_t t, n = len(names), buckets
        if self.n_topics:
            raise RuntimeError("the link's topics are already open")
        if len(partition_counts) != n or not names:
            raise ValueError("one partition count per topic")
        if any(count < 1 for count in partition_counts):
            raise ValueError("every topic needs at least one partition")
        encoded = [name.encode() for name in names]
        buckets = sum(partition_counts)
        tally.topic_names = <char**> calloc(n, sizeof(char*))
        tally.partitions = <int32_t*> calloc(n, sizeof(int32_t))
        tally.bucket_start = <int64_t*> calloc(n + 1, sizeof(int64_t))
        tally.produced = <int64_t*> calloc(buckets, sizeof(int64_t))
        tally.settled = <int64_t*> calloc(buckets, sizeof(int64_t))
        tally.armed = <int64_t*> malloc(buckets * sizeof(int64_t))
        tally.touched = <uint8_t*> calloc(buckets, sizeof(uint8_t))
        tally.touched_list = <int64_t*> calloc(buckets, sizeof(int64_t))
        if tally.topic_names == NULL or tally.partitions == NULL or \
                tally.bucket_start == NULL or tally.produced == NULL or tally.settled == NULL \
                or tally.armed == NULL or tally.touched == NULL or tally.touched_list == NULL:
            raise MemoryError()     # what was allocated goes with the tally
        for t in range(n):
            tally.topic_names[t] = <char*> malloc(len(encoded[t]) + 1)
            if tally.topic_names[t] == NULL:
                raise MemoryError()
            memcpy(tally.topic_names[t], <char*> encoded[t], len(encoded[t]) + 1)
            tally.partitions[t] = partition_counts[t]
            tally.bucket_start[t + 1] = tally.bucket_start[t] + partition_counts[t]
        for t in range(buckets):
            tally.armed[t] = INT64_MAX
        self.topic_names = encoded
        self.n_topics = <int> n
        fh_atomic_store(&tally.n_topics, n)     # published: broker threads look them up now

    def count_produced(self, int topic, int32_t partition, int64_t records=1):
        """`records` handed to the Producer for tracked topic `topic` (an index) and
        `partition`, by the producing thread, just before it produces them: they count
        toward the next `close_frame`."""
        if not 0 <= topic < self.n_topics or not 0 <= partition < self.tally.partitions[topic]:
            raise ValueError(f"no tracked topic {topic} partition {partition}")
        fh_atomic_store(&self.tally.producer_thread, <int64_t> pthread_self())
        count_produced(self.tally, self.tally.bucket_start[topic] + partition, records)

    def close_frame(self):
        """The records counted produced since the last call make a frame, settled once they
        and every frame before are (`take_settled`)."""
        cdef Tally* tally = self.tally
        cdef FrameMark* frame
        cdef int64_t i, bucket, targets_taken
        cdef bint settled_some = False
        if not self.n_topics:
            raise RuntimeError("open_topics() first")
        with nogil:
            pthread_mutex_lock(&tally.lock)
            targets_taken = tally.frames[tally.frames_taken - tally.frames_base].first_target \
                if tally.frames_taken < tally.frames_end else tally.targets_end
            if reserve(<void**> &tally.frames, &tally.frames_base, tally.frames_taken,
                       tally.frames_end, &tally.frames_capacity, sizeof(FrameMark)) or \
                    any_missing_room(tally, targets_taken):
                pthread_mutex_unlock(&tally.lock)
                with gil:
                    raise MemoryError()
            frame = &tally.frames[tally.frames_end - tally.frames_base]
            frame.first_target = tally.targets_end
            frame.n_targets = tally.n_touched
            frame.settled_ns = 0
            for i in range(tally.n_touched):
                bucket = tally.touched_list[i]
                tally.targets[tally.targets_end - tally.targets_base].bucket = bucket
                tally.targets[tally.targets_end - tally.targets_base].records = \
                    tally.produced[bucket]
                tally.targets_end += 1
                tally.touched[bucket] = 0
            tally.n_touched = 0
            tally.frames_end += 1
            if tally.frames_settled == tally.frames_end - 1:     # it is the oldest unsettled
                arm_oldest(tally)
                settled_some = settle_ready(tally)
            pthread_mutex_unlock(&tally.lock)
            if settled_some:
                signal_settled(tally)

    def take_settled(self):
        """The frames settled since the last call, oldest first: the CLOCK_MONOTONIC time
        (time.monotonic_ns()) at which each was found settled.

        Without the lock (the producing thread only, as `close_frame`): the publisher must not
        wait here, holding the GIL, for a broker thread that holds the lock and lost its core.
        Frames before `frames_settled` are stamped before it moves past them, and only
        `close_frame`, on this same thread, moves or grows the array."""
        cdef Tally* tally = self.tally
        cdef int64_t i, settled = fh_atomic_load_seq(&tally.frames_settled)
        times = [tally.frames[i - tally.frames_base].settled_ns
                 for i in range(tally.frames_taken, settled)]
        tally.frames_taken = settled
        return times

    @property
    def unsettled_frames(self) -> int:
        """Frames closed and not yet settled."""
        pthread_mutex_lock(&self.tally.lock)
        n = self.tally.frames_end - self.tally.frames_settled
        pthread_mutex_unlock(&self.tally.lock)
        return n

    cdef int _require_handle(self) except -1:
        if self.tally.rk == NULL:
            raise RuntimeError("the producer's librdkafka handle is gone")
        if self.generation != fork_generation:
            raise RuntimeError("the producer's librdkafka handle belongs to the parent process "
                               "(made before fork())")
        return 0

    def produce_ticks(self, dict messages, dict sequences, uint64_t first_sequence,
                      Py_ssize_t count, dict topic_of_type, list keys,
                      const uint32_t[::1] key_hashes, bytes session, dict raw_blocks=None,
                      bint headers=False, int64_t timestamp_base_ms=0,
                      int64_t timestamp_min_ms=1, int64_t timestamp_max_ms=INT64_MAX):
        """One record per tick of a decoded packet: key `keys[locate]`, partition from the
        key's murmur2 `key_hashes[locate]`, to topic `topic_of_type[type]` (an index into the
        open topics). The value is the tick header (`session`, the tick's sequence number)
        and the struct, or the wire message from `raw_blocks`. Per partition, records keep
        feed order. Returns how many records were made; any librdkafka refused at once are
        counted as failed.

        With `headers`, every record also carries headers `type`, `session` and `sequence`
        (ASCII decimal) and the ITCH time as its timestamp (`timestamp_base_ms` plus the
        nanoseconds since midnight): one rd_kafka_produceva() per record, since
        rd_kafka_produce_batch() takes neither headers nor timestamps. A timestamp outside
        [`timestamp_min_ms`, `timestamp_max_ms`] (what the brokers accept) becomes 0, the
        produce time, and is counted in `timestamp_fallbacks`."""
        cdef TypeRows types[MAX_TYPES]
        cdef Py_ssize_t n_types, slot, t, at, in_topic
        cdef TypeRows* tr
        cdef const uint8_t* row_ptr
        cdef PyObject* key
        cdef uint32_t locate
        cdef Py_ssize_t* fill = NULL
        cdef int32_t* bucket_of = NULL
        cdef TickSlot* order = NULL
        cdef rd_kafka_message_t* out = NULL
        cdef RecordMetadata* metadata = NULL
        cdef uint8_t* values = NULL
        cdef Py_ssize_t value_stride = 0
        cdef const uint8_t* message
        cdef const int64_t* bucket_start = self.tally.bucket_start
        self._require_handle()
        if self.n_topics == 0:
            raise RuntimeError("open_topics() first")
        if len(keys) != LOCATES or key_hashes.shape[0] != LOCATES:
            raise ValueError(f"keys and key hashes need one entry per stock locate ({LOCATES})")
        if len(session) != SESSION_LENGTH:
            raise ValueError(f"session must be {SESSION_LENGTH} bytes")
        n_types = load_types(messages, sequences, topic_of_type, self.n_topics, raw_blocks,
                             types, MAX_TYPES)
        fh_atomic_store(&self.tally.producer_thread, <int64_t> pthread_self())
        for t in range(n_types):    # every value fits a slot of the longest struct
            value_stride = max(value_stride, TICK_HEADER_SIZE + types[t].itemsize)
        # Buckets per (topic, partition), in topic order: librdkafka looks a partition up again
        # whenever consecutive messages change partition, so each topic's records go in
        # partition runs, feed order inside each run.
        cdef Py_ssize_t buckets = bucket_start[self.n_topics]
        try:
            order = <TickSlot*> calloc(max(count, 1), sizeof(TickSlot))
            bucket_of = <int32_t*> calloc(max(count, 1), sizeof(int32_t))
            out = <rd_kafka_message_t*> calloc(max(count, 1), sizeof(rd_kafka_message_t))
            fill = <Py_ssize_t*> calloc(buckets + 1, sizeof(Py_ssize_t))
            values = <uint8_t*> malloc(max(count, 1) * value_stride)
            if headers:
                metadata = <RecordMetadata*> calloc(max(count, 1), sizeof(RecordMetadata))
            if order == NULL or bucket_of == NULL or out == NULL or fill == NULL \
                    or values == NULL or (headers and metadata == NULL):
                raise MemoryError()
            order_ticks(types, n_types, first_sequence, count, order)
            for slot in range(count):       # each tick's bucket, and how many each holds
                if order[slot].type_index:
                    tr = &types[order[slot].type_index - 1]
                    locate = locate_of(tr.rows + order[slot].row * tr.itemsize)
                    bucket_of[slot] = <int32_t>(bucket_start[tr.topic] + partition_of(
                        key_hashes[locate], self.tally.partitions[tr.topic]))
                    fill[bucket_of[slot] + 1] += 1
            for t in range(buckets):        # bucket starts
                fill[t + 1] += fill[t]
            for slot in range(count):
                if order[slot].type_index == 0:
                    continue
                tr = &types[order[slot].type_index - 1]
                row_ptr = tr.rows + order[slot].row * tr.itemsize
                locate = locate_of(row_ptr)
                at = fill[bucket_of[slot]]
                fill[bucket_of[slot]] += 1
                key = PyList_GET_ITEM(keys, locate)
                if type(<object> key) is not bytes:
                    raise TypeError(f"key of locate {locate} is not bytes")
                out[at].key = PyBytes_AS_STRING(<object> key)
                out[at].key_len = PyBytes_GET_SIZE(<object> key)
                out[at].partition = <int32_t>(bucket_of[slot] - bucket_start[tr.topic])
                if tr.raw != NULL:
                    message = tr.raw + order[slot].row * tr.itemsize + 2
                    out[at].len = tr.itemsize - 2
                else:
                    message = row_ptr
                    out[at].len = tr.itemsize
                out[at].payload = values + slot * value_stride
                out[at].len = write_tick_value(<uint8_t*> out[at].payload, session,
                                               first_sequence + slot, message, out[at].len)
                if metadata != NULL:
                    metadata[at].sequence = first_sequence + slot
                    metadata[at].timestamp_ms = record_timestamp_ms(row_ptr, timestamp_base_ms)
                    if not timestamp_min_ms <= metadata[at].timestamp_ms <= timestamp_max_ms:
                        metadata[at].timestamp_ms = 0
                        self.n_timestamp_fallbacks += 1
                    metadata[at].message_type = row_ptr[0]
            # After the fill, bucket b's records end at fill[b]; topic t's span from the end of
            # the bucket before its first to the end of its last.
            for t in range(self.n_topics):
                at = fill[bucket_start[t] - 1] if bucket_start[t] else 0
                in_topic = fill[bucket_start[t + 1] - 1] - at
                if in_topic:
                    self._produce_topic(t, out + at, metadata + at if metadata else NULL,
                                        in_topic, session)
            return fill[buckets]
        finally:
            free(order)
            free(bucket_of)
            free(out)
            free(metadata)
            free(values)
            free(fill)

    cdef int _produce_topic(self, int t, rd_kafka_message_t* records, RecordMetadata* metadata,
                            Py_ssize_t n, bytes session) except -1:
        # A topic handle per call, not per link: one held across calls would keep the librdkafka
        # handle from being destroyed (Producer.close(), or the GC breaking a reference cycle).
        cdef rd_kafka_topic_t* topic = api.topic_new(self.tally.rk, self.topic_names[t], NULL)
        cdef int good
        cdef Py_ssize_t i
        cdef int64_t first_bucket = self.tally.bucket_start[t]
        if topic == NULL:
            raise ValueError(f"librdkafka refused topic {self.topic_names[t]!r}")
        try:
            if metadata != NULL:
                self._produce_with_headers(topic, first_bucket, records, metadata, n, session)
                return 0
            with nogil:
                good = api.produce_batch(topic, RD_KAFKA_PARTITION_UA,
                                         RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_PARTITION,
                                         records, <int>n)
                for i in range(n):
                    if records[i].err == RD_KAFKA_RESP_ERR_NO_ERROR:
                        count_produced(self.tally, first_bucket + records[i].partition, 1)
            if good != n:
                self._count_refused(records, n)
            return 0
        finally:
            api.topic_destroy(topic)

    cdef void _produce_with_headers(self, rd_kafka_topic_t* topic, int64_t first_bucket,
                                    rd_kafka_message_t* records, RecordMetadata* metadata,
                                    Py_ssize_t n, bytes session):
        cdef rd_kafka_vu_t fields[RECORD_FIELDS]
        cdef char sequence_text[24]
        cdef const char* session_bytes = session
        cdef Py_ssize_t session_length = len(session), i
        cdef rd_kafka_error_t* error
        cdef int err
        memset(fields, 0, sizeof(fields))
        fields[0].vtype = RD_KAFKA_VTYPE_RKT
        fields[0].u.rkt = topic
        fields[1].vtype = RD_KAFKA_VTYPE_MSGFLAGS
        fields[1].u.i = RD_KAFKA_MSG_F_COPY
        fields[2].vtype = RD_KAFKA_VTYPE_PARTITION
        fields[3].vtype = RD_KAFKA_VTYPE_KEY
        fields[4].vtype = RD_KAFKA_VTYPE_VALUE
        fields[5].vtype = RD_KAFKA_VTYPE_TIMESTAMP
        fields[6].vtype = RD_KAFKA_VTYPE_HEADER
        fields[6].u.header.name = "type"
        fields[6].u.header.size = 1
        fields[7].vtype = RD_KAFKA_VTYPE_HEADER
        fields[7].u.header.name = "session"
        fields[7].u.header.val = session_bytes
        fields[7].u.header.size = session_length
        fields[8].vtype = RD_KAFKA_VTYPE_HEADER
        fields[8].u.header.name = "sequence"
        fields[8].u.header.val = sequence_text
        with nogil:
            for i in range(n):
                fields[2].u.i32 = records[i].partition
                fields[3].u.mem.ptr = records[i].key
                fields[3].u.mem.size = records[i].key_len
                fields[4].u.mem.ptr = records[i].payload
                fields[4].u.mem.size = records[i].len
                fields[5].u.i64 = metadata[i].timestamp_ms
                fields[6].u.header.val = &metadata[i].message_type
                fields[8].u.header.size = snprintf(sequence_text, sizeof(sequence_text), "%llu",
                                                   <unsigned long long> metadata[i].sequence)
                error = api.produceva(self.tally.rk, fields, RECORD_FIELDS)
                if error == NULL:
                    count_produced(self.tally, first_bucket + records[i].partition, 1)
                    continue
                err = api.error_code(error)
                api.error_destroy(error)
                # A partitioning failure was already reported to on_acknowledgement.
                if err != RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION \
                        and err != RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
                    count_failure(self.tally, err)
                    self.n_refused += 1

    cdef void _count_refused(self, rd_kafka_message_t* messages, Py_ssize_t n) noexcept:
        cdef Py_ssize_t i
        for i in range(n):
            if messages[i].err != RD_KAFKA_RESP_ERR_NO_ERROR:
                count_failure(self.tally, messages[i].err)
                self.n_refused += 1

    @property
    def acknowledged(self) -> int:
        """Records produced here that Kafka acknowledged."""
        return fh_atomic_load(&self.tally.acknowledged)

    @property
    def failed(self) -> int:
        """Records produced here that failed: refused at once or failed delivery."""
        return fh_atomic_load(&self.tally.failed)

    @property
    def acknowledgement_fd(self) -> int:
        """An eventfd (non-blocking) that becomes readable whenever frames have settled
        (`take_settled`); whoever waits on it reads it empty."""
        return self.tally.wake_fd

    @property
    def timestamp_fallbacks(self) -> int:
        """Records sent with the produce time because their ITCH time was out of range."""
        return self.n_timestamp_fallbacks

    @property
    def refused(self) -> int:
        """Records librdkafka refused at once (e.g. queue full), included in `failed`."""
        return self.n_refused

    def failures(self) -> dict:
        """Failed records by reason (librdkafka's error string, as KafkaError.str() gives)."""
        cdef int slot
        cdef int64_t n
        out = {}
        for slot in range(ERROR_SLOTS):
            n = fh_atomic_load(&self.tally.failed_by_error[slot])
            if n:
                out[api.err2str(slot - ERROR_BASE).decode()] = n
        return out

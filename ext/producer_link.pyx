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
- Waiting for acknowledgements is event-driven: `on_acknowledgement` also counts every record
  Kafka acknowledged (`delivered`, whichever API produced it), and once that count reaches the
  target the publisher armed (`wake_when_delivered`) it signals an eventfd the link owns
  (`acknowledgement_fd`), which the publisher waits on next to its other work. Successful
  deliveries make no delivery report (error-only reports), so nothing else could wake it.

Invariants its users keep (feedhandler.kafka.producer and the handler's publisher do):

- One producing thread: `produce_ticks` is called by one thread at a time (it reuses no
  buffers across calls, but the refused count and the order of a topic's records assume it).
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
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset
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


cdef struct Tally:
    rd_kafka_t* rk          # NULL until on_new, and again after on_destroy
    int owners              # the ProducerLink and librdkafka's conf (which the handle keeps
                            # until every librdkafka thread is joined); the last one frees
    int64_t acknowledged
    int64_t failed
    int64_t failed_by_error[ERROR_SLOTS]
    int64_t delivered       # records of either API that Kafka acknowledged
    int64_t wake_at         # signal wake_fd once `delivered` reaches this; INT64_MAX: disarmed
    int wake_fd             # an eventfd, closed with the tally (broker threads may signal it
                            # until the very end)

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
    if message.err == RD_KAFKA_RESP_ERR_NO_ERROR and \
            fh_atomic_add_fetch(&tally.delivered, 1) >= fh_atomic_load_seq(&tally.wake_at):
        signal_once(tally)
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
    if fh_release(&tally.owners) == 0:
        if tally.wake_fd >= 0:
            close(tally.wake_fd)
        free(tally)


cdef inline void signal_once(Tally* tally) noexcept nogil:
    # Whoever disarms the wakeup signals it: one write per arming, from whichever thread.
    cdef uint64_t one = 1
    if fh_atomic_exchange(&tally.wake_at, INT64_MAX) != INT64_MAX:
        write(tally.wake_fd, &one, sizeof(one))     # a full eventfd is already readable


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
    cdef list topic_names         # bytes, by topic index
    cdef int32_t* partitions
    cdef Py_ssize_t* bucket_start    # first (topic, partition) bucket of each topic, then the total
    cdef int n_topics
    cdef int64_t n_refused
    cdef int64_t n_timestamp_fallbacks
    cdef int generation         # fork_generation when the link was made

    def __cinit__(self):
        self.tally = <Tally*> calloc(1, sizeof(Tally))
        if self.tally == NULL:
            raise MemoryError()
        self.tally.owners = 1
        self.tally.wake_at = INT64_MAX
        self.tally.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.tally.wake_fd < 0:
            raise OSError("no eventfd for the acknowledgement wakeup")

    def __dealloc__(self):
        free(self.partitions)
        free(self.bucket_start)
        if self.tally != NULL:
            release_tally(self.tally)

    def open_topics(self, list names, list partition_counts):
        """The topics `produce_ticks` writes to, by index, and their actual partition counts
        (from the cluster's metadata: librdkafka 2.16 loses track of a record sent to a
        partition that does not exist, and flush() then never completes)."""
        cdef int32_t* partitions
        cdef Py_ssize_t* bucket_start
        cdef int t
        if len(names) != len(partition_counts) or not names:
            raise ValueError("one partition count per topic")
        if any(count < 1 for count in partition_counts):
            raise ValueError("every topic needs at least one partition")
        partitions = <int32_t*> calloc(len(names), sizeof(int32_t))
        bucket_start = <Py_ssize_t*> calloc(len(names) + 1, sizeof(Py_ssize_t))
        if partitions == NULL or bucket_start == NULL:
            free(partitions)
            free(bucket_start)
            raise MemoryError()
        for t in range(len(names)):
            partitions[t] = partition_counts[t]
            bucket_start[t + 1] = bucket_start[t] + partitions[t]
        free(self.partitions)
        free(self.bucket_start)
        self.partitions = partitions
        self.bucket_start = bucket_start
        self.topic_names = [name.encode() for name in names]
        self.n_topics = len(names)

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
        cdef const Py_ssize_t* bucket_start = self.bucket_start
        self._require_handle()
        if self.n_topics == 0:
            raise RuntimeError("open_topics() first")
        if len(keys) != LOCATES or key_hashes.shape[0] != LOCATES:
            raise ValueError(f"keys and key hashes need one entry per stock locate ({LOCATES})")
        if len(session) != SESSION_LENGTH:
            raise ValueError(f"session must be {SESSION_LENGTH} bytes")
        n_types = load_types(messages, sequences, topic_of_type, self.n_topics, raw_blocks,
                             types, MAX_TYPES)
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
                        key_hashes[locate], self.partitions[tr.topic]))
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
        if topic == NULL:
            raise ValueError(f"librdkafka refused topic {self.topic_names[t]!r}")
        try:
            if metadata != NULL:
                self._produce_with_headers(topic, records, metadata, n, session)
                return 0
            with nogil:
                good = api.produce_batch(topic, RD_KAFKA_PARTITION_UA,
                                         RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_PARTITION,
                                         records, <int>n)
            if good != n:
                self._count_refused(records, n)
            return 0
        finally:
            api.topic_destroy(topic)

    cdef void _produce_with_headers(self, rd_kafka_topic_t* topic, rd_kafka_message_t* records,
                                    RecordMetadata* metadata, Py_ssize_t n, bytes session):
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
    def delivered(self) -> int:
        """Records Kafka acknowledged, produced here or through the Producer. Counted as
        librdkafka reports them, just before it takes them out of its queue count
        (len(producer))."""
        return fh_atomic_load_seq(&self.tally.delivered)

    @property
    def acknowledgement_fd(self) -> int:
        """An eventfd (non-blocking) that becomes readable once `delivered` reaches the target
        of `wake_when_delivered`; whoever waits on it reads it empty before arming again."""
        return self.tally.wake_fd

    def wake_when_delivered(self, int64_t target):
        """Arm the wakeup: `acknowledgement_fd` is signalled once `delivered` reaches `target`,
        at once if it already has. One signal per arming; arming again replaces the target."""
        fh_atomic_store(&self.tally.wake_at, target)
        if fh_atomic_load_seq(&self.tally.delivered) >= target:
            signal_once(self.tally)

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

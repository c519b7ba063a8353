# The part of librdkafka's stable C ABI (rdkafka.h) that feedhandler calls.
#
# librdkafka is not linked at build time: confluent_kafka ships its own copy (renamed by
# auditwheel), and the handle we produce through belongs to that copy, so every function is
# looked up at run time through confluent_kafka.cimpl's handle (producer_link.pyx,
# `bind_library`) and called through the pointers of `RdKafkaApi`. The types below mirror rdkafka.h field for field; librdkafka has
# kept them unchanged since 1.0.

from libc.stdint cimport int32_t, int64_t
from libc.stdio cimport FILE

cdef extern from *:
    """
    typedef struct rd_kafka_s rd_kafka_t;
    typedef struct rd_kafka_topic_s rd_kafka_topic_t;
    typedef struct rd_kafka_topic_conf_s rd_kafka_topic_conf_t;
    typedef struct rd_kafka_conf_s rd_kafka_conf_t;
    typedef struct rd_kafka_error_s rd_kafka_error_t;
    typedef struct rd_kafka_message_s {
        int err;
        rd_kafka_topic_t *rkt;
        int32_t partition;
        void *payload;
        size_t len;
        void *key;
        size_t key_len;
        int64_t offset;
        void *_private;
    } rd_kafka_message_t;
    /* rd_kafka_vu_t, with names for what rdkafka.h leaves anonymous (same layout). */
    typedef struct { void *ptr; size_t size; } fh_vu_mem;
    typedef struct { const char *name; const void *val; ssize_t size; } fh_vu_header;
    typedef union {
        const char *cstr;
        rd_kafka_topic_t *rkt;
        int i;
        int32_t i32;
        int64_t i64;
        fh_vu_mem mem;
        fh_vu_header header;
        void *ptr;
        char _pad[64];
    } fh_vu_value;
    typedef struct rd_kafka_vu_s {
        int vtype;
        fh_vu_value u;
    } rd_kafka_vu_t;

    /* Delivery counters are bumped by librdkafka's broker threads and read by Python's. */
    static inline void fh_atomic_add(int64_t *counter, int64_t n) {
        __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
    }
    static inline int64_t fh_atomic_load(const int64_t *counter) {
        return __atomic_load_n(counter, __ATOMIC_RELAXED);
    }
    static inline int fh_release(int *owners) {
        return __atomic_sub_fetch(owners, 1, __ATOMIC_ACQ_REL);
    }
    /* Frame acknowledgement: targets armed under the link's lock, reached on broker threads. */
    static inline int64_t fh_atomic_add_fetch(int64_t *counter, int64_t n) {
        return __atomic_add_fetch(counter, n, __ATOMIC_SEQ_CST);
    }
    static inline void fh_atomic_store(int64_t *target, int64_t value) {
        __atomic_store_n(target, value, __ATOMIC_SEQ_CST);
    }
    static inline int64_t fh_atomic_load_seq(const int64_t *counter) {
        return __atomic_load_n(counter, __ATOMIC_SEQ_CST);
    }
    """
    ctypedef struct rd_kafka_t
    ctypedef struct rd_kafka_topic_t
    ctypedef struct rd_kafka_topic_conf_t
    ctypedef struct rd_kafka_conf_t
    ctypedef struct rd_kafka_error_t
    ctypedef struct rd_kafka_message_t:
        int err
        rd_kafka_topic_t* rkt
        int32_t partition
        void* payload
        size_t len
        void* key
        size_t key_len
        int64_t offset
        void* _private
    ctypedef struct fh_vu_mem:
        void* ptr
        size_t size
    ctypedef struct fh_vu_header:
        const char* name
        const void* val
        Py_ssize_t size
    ctypedef union fh_vu_value:
        rd_kafka_topic_t* rkt
        int i
        int32_t i32
        int64_t i64
        fh_vu_mem mem
        fh_vu_header header
    ctypedef struct rd_kafka_vu_t:
        int vtype
        fh_vu_value u

    void fh_atomic_add(int64_t* counter, int64_t n) noexcept nogil
    int64_t fh_atomic_load(const int64_t* counter) noexcept nogil
    int fh_release(int* owners) noexcept nogil
    int64_t fh_atomic_add_fetch(int64_t* counter, int64_t n) noexcept nogil
    void fh_atomic_store(int64_t* target, int64_t value) noexcept nogil
    int64_t fh_atomic_load_seq(const int64_t* counter) noexcept nogil

cdef enum:
    RD_KAFKA_PARTITION_UA = -1
    RD_KAFKA_MSG_F_COPY = 0x2
    RD_KAFKA_MSG_F_PARTITION = 0x8
    RD_KAFKA_RESP_ERR_NO_ERROR = 0
    RD_KAFKA_RESP_ERR__INVALID_ARG = -186
    RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC = -188
    RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION = -190
    # rd_kafka_vtype_t, for rd_kafka_produceva
    RD_KAFKA_VTYPE_RKT = 2
    RD_KAFKA_VTYPE_PARTITION = 3
    RD_KAFKA_VTYPE_VALUE = 4
    RD_KAFKA_VTYPE_KEY = 5
    RD_KAFKA_VTYPE_MSGFLAGS = 7
    RD_KAFKA_VTYPE_TIMESTAMP = 8
    RD_KAFKA_VTYPE_HEADER = 9

ctypedef int (*on_new_f)(rd_kafka_t* rk, const rd_kafka_conf_t* conf, void* opaque,
                         char* errstr, size_t errstr_size) noexcept nogil
ctypedef int (*on_acknowledgement_f)(rd_kafka_t* rk, rd_kafka_message_t* message,
                                     void* opaque) noexcept nogil
ctypedef int (*on_destroy_f)(rd_kafka_t* rk, void* opaque) noexcept nogil
ctypedef int (*on_conf_destroy_f)(void* opaque) noexcept nogil

ctypedef int (*version_f)() noexcept nogil
ctypedef void (*conf_properties_show_f)(FILE* out) noexcept nogil
ctypedef const char* (*err2str_f)(int err) noexcept nogil
ctypedef rd_kafka_topic_t* (*topic_new_f)(rd_kafka_t* rk, const char* topic,
                                          rd_kafka_topic_conf_t* conf) noexcept nogil
ctypedef void (*topic_destroy_f)(rd_kafka_topic_t* rkt) noexcept nogil
ctypedef const char* (*topic_name_f)(const rd_kafka_topic_t* rkt) noexcept nogil
ctypedef int (*produce_batch_f)(rd_kafka_topic_t* rkt, int32_t partition, int msgflags,
                                rd_kafka_message_t* messages, int count) noexcept nogil
ctypedef rd_kafka_error_t* (*produceva_f)(rd_kafka_t* rk, const rd_kafka_vu_t* vus,
                                          size_t count) noexcept nogil
ctypedef int (*error_code_f)(const rd_kafka_error_t* error) noexcept nogil
ctypedef void (*error_destroy_f)(rd_kafka_error_t* error) noexcept nogil
ctypedef int (*conf_add_on_new_f)(rd_kafka_conf_t* conf, const char* name, on_new_f on_new,
                                  void* opaque) noexcept nogil
ctypedef int (*conf_add_on_conf_destroy_f)(rd_kafka_conf_t* conf, const char* name,
                                           on_conf_destroy_f on_conf_destroy,
                                           void* opaque) noexcept nogil
ctypedef int (*add_on_acknowledgement_f)(rd_kafka_t* rk, const char* name,
                                         on_acknowledgement_f on_ack, void* opaque) noexcept nogil
ctypedef int (*add_on_destroy_f)(rd_kafka_t* rk, const char* name, on_destroy_f on_destroy,
                                 void* opaque) noexcept nogil

cdef struct RdKafkaApi:
    version_f version
    conf_properties_show_f conf_properties_show
    err2str_f err2str
    topic_new_f topic_new
    topic_destroy_f topic_destroy
    topic_name_f topic_name
    produce_batch_f produce_batch
    produceva_f produceva
    error_code_f error_code
    error_destroy_f error_destroy
    conf_add_on_new_f conf_interceptor_add_on_new
    conf_add_on_conf_destroy_f conf_interceptor_add_on_conf_destroy
    add_on_acknowledgement_f interceptor_add_on_acknowledgement
    add_on_destroy_f interceptor_add_on_destroy

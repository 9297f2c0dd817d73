/* rdbatch: a librdkafka producer that takes a whole request's records in one call and reports
 * once per request, not once per record.
 *
 * Why: through confluent-kafka-python every record costs a Python call to produce(), a header
 * list converted to C, and a delivery report that takes the interpreter lock and builds a
 * Message object; at 1,000-record requests that is about half of the ingest API's CPU. Here the
 * records of a batch are handed to rd_kafka_producev() in a C loop, their delivery reports are
 * counted on a C thread without the interpreter lock, and a batch is reported once: when its
 * last record is acknowledged, or at its first failure.
 *
 * Threads: librdkafka's own, and one poll thread started here that serves delivery reports.
 * Neither touches Python objects. Finished batches and librdkafka's log lines are queued under
 * a mutex and announced on an eventfd; Producer.wait() (with the interpreter lock released
 * while it waits) hands them to Python.
 *
 * A batch's lifetime: Batch() holds one reference, every record handed to librdkafka holds one.
 * seal() (or the Batch object's end) drops the first; the last reference reports success unless
 * a failure was reported already, then frees the batch. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

/* ---- what the C threads hand to Python ---------------------------------------------------- */

typedef struct Note {
    struct Note *next;
    int kind;            /* NOTE_DONE: a batch finished; NOTE_LOG: a log line */
    uint64_t batch_id;   /* NOTE_DONE */
    int code;            /* NOTE_DONE: 0 or the first failure's rd_kafka_resp_err_t;
                            NOTE_LOG: the syslog level */
    char *text;          /* NOTE_DONE: the failure's description; NOTE_LOG: the line */
    char *facility;      /* NOTE_LOG */
} Note;

enum { NOTE_DONE = 1, NOTE_LOG = 2 };

typedef struct Mailbox {
    pthread_mutex_t lock;
    Note *head, *tail;
    int efd;
} Mailbox;

static void mailbox_post(Mailbox *box, Note *note) {
    uint64_t one = 1;
    pthread_mutex_lock(&box->lock);
    if (box->tail) box->tail->next = note; else box->head = note;
    box->tail = note;
    pthread_mutex_unlock(&box->lock);
    /* An eventfd counter only overflows after 2^64-2 writes; EAGAIN cannot happen here. */
    ssize_t written = write(box->efd, &one, sizeof one);
    (void)written;
}

static Note *mailbox_take_all(Mailbox *box) {
    pthread_mutex_lock(&box->lock);
    Note *all = box->head;
    box->head = box->tail = NULL;
    pthread_mutex_unlock(&box->lock);
    return all;
}

static void note_free(Note *note) {
    free(note->text);
    free(note->facility);
    free(note);
}

static char *copy_text(const char *text) {
    return strdup(text ? text : "");
}

/* ---- batches ------------------------------------------------------------------------------ */

typedef struct BatchState {
    atomic_long refs;       /* 1 while unsealed + 1 per record in librdkafka's hands */
    atomic_int reported;    /* the batch's one report was posted */
    uint64_t id;
    Mailbox *box;
} BatchState;

static void batch_report(BatchState *state, rd_kafka_resp_err_t code) {
    if (atomic_exchange(&state->reported, 1)) return;
    Note *note = calloc(1, sizeof *note);
    if (!note) abort();  /* nowhere to report to; losing the report would hang the request */
    note->kind = NOTE_DONE;
    note->batch_id = state->id;
    note->code = code;
    note->text = code ? copy_text(rd_kafka_err2str(code)) : NULL;
    mailbox_post(state->box, note);
}

static void batch_release(BatchState *state) {
    if (atomic_fetch_sub(&state->refs, 1) == 1) {
        batch_report(state, RD_KAFKA_RESP_ERR_NO_ERROR);
        free(state);
    }
}

/* librdkafka's delivery report, on the poll thread: count it against its batch. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque) {
    (void)rk;
    (void)opaque;
    BatchState *state = message->_private;
    if (!state) return;
    if (message->err) batch_report(state, message->err);
    batch_release(state);
}

static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *line) {
    Mailbox *box = rd_kafka_opaque(rk);
    Note *note = calloc(1, sizeof *note);
    if (!note) return;  /* a log line is not worth aborting for */
    note->kind = NOTE_LOG;
    note->code = level;
    note->facility = copy_text(facility);
    note->text = copy_text(line);
    mailbox_post(box, note);
}

/* ---- Python types ------------------------------------------------------------------------- */

static PyObject *RdBatchError;  /* rdbatch.Error(code, name, message) */

static PyObject *raise_error(rd_kafka_resp_err_t code, const char *message) {
    PyObject *args = Py_BuildValue("(iss)", (int)code, rd_kafka_err2name(code),
                                   message ? message : rd_kafka_err2str(code));
    if (args) {
        PyErr_SetObject(RdBatchError, args);
        Py_DECREF(args);
    }
    return NULL;
}

typedef struct {
    PyObject_HEAD
    rd_kafka_t *rk;          /* NULL once closing: read and cleared with the GIL held */
    rd_kafka_t *polled;      /* the poll thread's handle, cleared after it stopped */
    /* Calls that wait without the GIL (metadata, flush) hold it for reading; close() holds it
     * for writing while it destroys the handle. */
    pthread_rwlock_t use;
    Mailbox *box;
    pthread_t poller;
    atomic_int stopping;
    int running;
    uint64_t next_batch_id;
} ProducerObject;

typedef struct {
    PyObject_HEAD
    BatchState *state;  /* NULL once sealed */
    uint64_t id;
    PyObject *producer; /* kept alive: the batch reports into its mailbox */
} BatchObject;

static PyTypeObject BatchType;

static void *poll_loop(void *arg) {
    ProducerObject *self = arg;
    while (!atomic_load(&self->stopping)) rd_kafka_poll(self->polled, 100);
    return NULL;
}

static int Producer_init(ProducerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", NULL};
    PyObject *config;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyDict_Type, &config))
        return -1;
    if (self->rk) {
        PyErr_SetString(PyExc_RuntimeError, "Producer is already initialised");
        return -1;
    }
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(config, &pos, &key, &value)) {
        const char *k = PyUnicode_AsUTF8(key);
        const char *v = k ? PyUnicode_AsUTF8(value) : NULL;
        if (!v) {
            rd_kafka_conf_destroy(conf);
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_TypeError, "config keys and values must be str");
            }
            return -1;
        }
        if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            PyErr_Format(PyExc_ValueError, "%s", errstr);
            return -1;
        }
    }
    Mailbox *box = calloc(1, sizeof *box);
    if (!box) {
        rd_kafka_conf_destroy(conf);
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&box->lock, NULL);
    box->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (box->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        pthread_mutex_destroy(&box->lock);
        free(box);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_opaque(conf, box);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {  /* conf is still ours on failure */
        rd_kafka_conf_destroy(conf);
        close(box->efd);
        pthread_mutex_destroy(&box->lock);
        free(box);
        PyErr_Format(PyExc_ValueError, "%s", errstr);
        return -1;
    }
    self->box = box;  /* freed with the object: wait() may drain it after close() */
    atomic_store(&self->stopping, 0);
    self->polled = rk;
    if (pthread_create(&self->poller, NULL, poll_loop, self) != 0) {
        self->polled = NULL;
        rd_kafka_destroy(rk);
        PyErr_SetString(PyExc_OSError, "cannot start the delivery-report thread");
        return -1;
    }
    pthread_rwlock_init(&self->use, NULL);
    self->running = 1;
    self->rk = rk;
    return 0;
}

/* For calls that keep the GIL throughout (send, batch): the handle, or an error. */
static int producer_open(ProducerObject *self) {
    if (!self->rk) {
        PyErr_SetString(PyExc_RuntimeError, "producer is closed");
        return 0;
    }
    return 1;
}

/* For calls that wait without the GIL: the handle, kept from close() until use_end(). */
static rd_kafka_t *use_begin(ProducerObject *self) {
    if (!self->running) {
        PyErr_SetString(PyExc_RuntimeError, "producer is closed");
        return NULL;
    }
    pthread_rwlock_rdlock(&self->use);
    if (!self->rk) {
        pthread_rwlock_unlock(&self->use);
        PyErr_SetString(PyExc_RuntimeError, "producer is closed");
        return NULL;
    }
    return self->rk;
}

static void use_end(ProducerObject *self) {
    pthread_rwlock_unlock(&self->use);
}

static PyObject *Producer_close(ProducerObject *self, PyObject *unused) {
    (void)unused;
    if (!self->rk) Py_RETURN_NONE;
    rd_kafka_t *rk = self->rk;
    self->rk = NULL;  /* from here on every call finds the producer closed */
    Py_BEGIN_ALLOW_THREADS
    pthread_rwlock_wrlock(&self->use);
    /* What is still queued fails now with _PURGE_QUEUE/_PURGE_INFLIGHT and its batches are
     * reported, instead of being dropped without a word by rd_kafka_destroy(). */
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(rk, 0);
    atomic_store(&self->stopping, 1);
    pthread_join(self->poller, NULL);
    self->polled = NULL;
    rd_kafka_poll(rk, 0);
    rd_kafka_destroy(rk);
    pthread_rwlock_unlock(&self->use);
    Py_END_ALLOW_THREADS
    /* The mailbox stays until the object goes: wait() may still drain it. */
    Py_RETURN_NONE;
}

static void Producer_dealloc(ProducerObject *self) {
    PyObject *result = Producer_close(self, NULL);
    Py_XDECREF(result);
    if (self->box) {
        Note *note = mailbox_take_all(self->box);
        while (note) {
            Note *next = note->next;
            note_free(note);
            note = next;
        }
        close(self->box->efd);
        pthread_mutex_destroy(&self->box->lock);
        free(self->box);
        self->box = NULL;
    }
    if (self->running) pthread_rwlock_destroy(&self->use);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* send(batch, topic, values, keys, partitions, header_name, header_value, start) -> int
 *
 * Hands values[start:] to librdkafka with their keys (a list, or None for no keys) and
 * partitions (-1: librdkafka's partitioner chooses), each with the one header (header_name
 * None: none). Returns the index after the last record handed over:
 * len(values) unless librdkafka's queue is full. Raises Error for any other refusal (records
 * before it were handed over and will be reported through the batch). */
static PyObject *Producer_send(ProducerObject *self, PyObject *args) {
    BatchObject *batch;
    const char *topic;
    PyObject *values, *keys, *partitions;
    const char *header_name;
    const char *header_value;
    Py_ssize_t header_len, start;
    if (!PyArg_ParseTuple(args, "O!sO!OO!zz#n", &BatchType, &batch, &topic, &PyList_Type,
                          &values, &keys, &PyList_Type, &partitions, &header_name,
                          &header_value, &header_len, &start))
        return NULL;
    if (!producer_open(self)) return NULL;
    if (!batch->state) {
        PyErr_SetString(PyExc_RuntimeError, "batch is sealed");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(values);
    if (PyList_GET_SIZE(partitions) != count ||
        (keys != Py_None && (!PyList_Check(keys) || PyList_GET_SIZE(keys) != count))) {
        PyErr_SetString(PyExc_ValueError, "values, keys and partitions differ in length");
        return NULL;
    }
    if (start < 0 || start > count) {
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(self->rk, topic, NULL);
    if (!rkt) return raise_error(rd_kafka_last_error(), NULL);
    rd_kafka_headers_t *header_template = NULL;
    if (header_name) {
        header_template = rd_kafka_headers_new(1);
        rd_kafka_header_add(header_template, header_name, -1, header_value, header_len);
    }
    BatchState *state = batch->state;
    Py_ssize_t i = start;
    for (; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        PyObject *key = keys == Py_None ? Py_None : PyList_GET_ITEM(keys, i);
        long partition = PyLong_AsLong(PyList_GET_ITEM(partitions, i));
        if (!PyBytes_Check(value) || (key != Py_None && !PyBytes_Check(key))) {
            PyErr_SetString(PyExc_TypeError, "values and keys must be bytes");
            break;
        }
        if (partition == -1 && PyErr_Occurred()) break;
        const char *key_bytes = key == Py_None ? NULL : PyBytes_AS_STRING(key);
        size_t key_len = key == Py_None ? 0 : (size_t)PyBytes_GET_SIZE(key);
        rd_kafka_headers_t *headers =
            header_template ? rd_kafka_headers_copy(header_template) : NULL;
        atomic_fetch_add(&state->refs, 1);
        rd_kafka_resp_err_t err = rd_kafka_producev(
            self->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION((int32_t)partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE(PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value)),
            RD_KAFKA_V_KEY(key_bytes, key_len),
            RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(state), RD_KAFKA_V_END);
        if (err) {
            /* Not handed over: the headers are still ours, and the record's reference goes
             * (the batch's own reference keeps it above zero). */
            if (headers) rd_kafka_headers_destroy(headers);
            atomic_fetch_sub(&state->refs, 1);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) raise_error(err, NULL);
            break;
        }
    }
    if (header_template) rd_kafka_headers_destroy(header_template);
    rd_kafka_topic_destroy(rkt);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(i);
}

/* wait(timeout) -> (finished, logs): waits up to `timeout` seconds for anything to hand over.
 * finished: [(batch_id, code, name, message)], code 0 for a batch wholly acknowledged;
 * logs: [(level, facility, line)]. */
static PyObject *Producer_wait(ProducerObject *self, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout)) return NULL;
    if (!self->box) {
        PyErr_SetString(PyExc_RuntimeError, "producer was never initialised");
        return NULL;
    }
    Mailbox *box = self->box;
    struct pollfd pfd = {.fd = box->efd, .events = POLLIN};
    int ms = timeout <= 0 ? 0 : (int)(timeout * 1000);
    int ready;
    Py_BEGIN_ALLOW_THREADS
    do {
        ready = poll(&pfd, 1, ms);
    } while (ready < 0 && errno == EINTR);
    if (ready > 0) {
        uint64_t counter;
        ssize_t got = read(box->efd, &counter, sizeof counter);
        (void)got;
    }
    Py_END_ALLOW_THREADS
    PyObject *finished = PyList_New(0);
    PyObject *logs = PyList_New(0);
    if (!finished || !logs) goto fail;
    Note *note = mailbox_take_all(box);
    while (note) {
        Note *next = note->next;
        int kind = note->kind;
        PyObject *item;
        if (kind == NOTE_DONE)
            item = Py_BuildValue("(Kiss)", (unsigned long long)note->batch_id, note->code,
                                 rd_kafka_err2name(note->code),
                                 note->text ? note->text : "");
        else
            item = Py_BuildValue("(iss)", note->code, note->facility, note->text);
        note_free(note);
        if (!item || PyList_Append(kind == NOTE_DONE ? finished : logs, item) < 0) {
            Py_XDECREF(item);
            /* the rest would be lost: free them and fail loudly */
            note = next;
            while (note) {
                next = note->next;
                note_free(note);
                note = next;
            }
            goto fail;
        }
        Py_DECREF(item);
        note = next;
    }
    return Py_BuildValue("(NN)", finished, logs);
fail:
    Py_XDECREF(finished);
    Py_XDECREF(logs);
    return NULL;
}

/* partitions(topic, timeout) -> [int]: the topic's partitions from the broker's metadata. */
static PyObject *Producer_partitions(ProducerObject *self, PyObject *args) {
    const char *topic;
    double timeout;
    if (!PyArg_ParseTuple(args, "sd", &topic, &timeout)) return NULL;
    rd_kafka_t *rk = use_begin(self);
    if (!rk) return NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt) {
        use_end(self);
        return raise_error(rd_kafka_last_error(), NULL);
    }
    const struct rd_kafka_metadata *metadata = NULL;
    rd_kafka_resp_err_t err;
    Py_BEGIN_ALLOW_THREADS
    err = rd_kafka_metadata(rk, 0, rkt, &metadata, (int)(timeout * 1000));
    rd_kafka_topic_destroy(rkt);
    Py_END_ALLOW_THREADS
    use_end(self);
    if (err) return raise_error(err, NULL);
    PyObject *found = PyList_New(0);
    for (int t = 0; found && t < metadata->topic_cnt; t++) {
        const struct rd_kafka_metadata_topic *entry = &metadata->topics[t];
        if (strcmp(entry->topic, topic) != 0) continue;
        if (entry->err) {
            Py_CLEAR(found);
            raise_error(entry->err, NULL);
            break;
        }
        for (int p = 0; p < entry->partition_cnt; p++) {
            PyObject *id = PyLong_FromLong(entry->partitions[p].id);
            if (!id || PyList_Append(found, id) < 0) {
                Py_XDECREF(id);
                Py_CLEAR(found);
                break;
            }
            Py_DECREF(id);
        }
    }
    rd_kafka_metadata_destroy(metadata);
    return found;
}

/* ping(timeout): asks a broker for metadata; Error when none answers within `timeout` s
 * (librdkafka connects lazily, so an unreachable cluster shows only here or at the first
 * delivery timeout). */
static PyObject *Producer_ping(ProducerObject *self, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout)) return NULL;
    rd_kafka_t *rk = use_begin(self);
    if (!rk) return NULL;
    const struct rd_kafka_metadata *metadata = NULL;
    rd_kafka_resp_err_t err;
    Py_BEGIN_ALLOW_THREADS
    err = rd_kafka_metadata(rk, 1, NULL, &metadata, (int)(timeout * 1000));
    Py_END_ALLOW_THREADS
    use_end(self);
    if (err) return raise_error(err, NULL);
    rd_kafka_metadata_destroy(metadata);
    Py_RETURN_NONE;
}

/* flush(timeout) -> int: waits up to `timeout` seconds for every record to be reported;
 * returns how many are still in librdkafka's hands. */
static PyObject *Producer_flush(ProducerObject *self, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout)) return NULL;
    rd_kafka_t *rk = use_begin(self);
    if (!rk) return NULL;
    int left;
    Py_BEGIN_ALLOW_THREADS
    rd_kafka_flush(rk, (int)(timeout * 1000));
    left = rd_kafka_outq_len(rk);
    Py_END_ALLOW_THREADS
    use_end(self);
    return PyLong_FromLong(left);
}

static PyObject *Producer_batch(ProducerObject *self, PyObject *unused) {
    (void)unused;
    if (!producer_open(self)) return NULL;
    BatchObject *batch = PyObject_New(BatchObject, &BatchType);
    if (!batch) return NULL;
    batch->id = 0;
    Py_INCREF(self);
    batch->producer = (PyObject *)self;
    batch->state = calloc(1, sizeof *batch->state);
    if (!batch->state) {
        Py_DECREF(batch);
        return PyErr_NoMemory();
    }
    atomic_init(&batch->state->refs, 1);
    atomic_init(&batch->state->reported, 0);
    batch->id = batch->state->id = ++self->next_batch_id;
    batch->state->box = self->box;
    return (PyObject *)batch;
}

/* fileno() -> int: readable when wait() has something to hand over (for an event loop). */
static PyObject *Producer_fileno(ProducerObject *self, PyObject *unused) {
    (void)unused;
    if (!self->box) {
        PyErr_SetString(PyExc_RuntimeError, "producer was never initialised");
        return NULL;
    }
    return PyLong_FromLong(self->box->efd);
}

static PyMethodDef Producer_methods[] = {
    {"fileno", (PyCFunction)Producer_fileno, METH_NOARGS,
     "fileno() -> int: an eventfd, readable when wait() has something to hand over"},
    {"batch", (PyCFunction)Producer_batch, METH_NOARGS,
     "batch() -> Batch: a new batch; its one report comes from wait() under its id"},
    {"send", (PyCFunction)Producer_send, METH_VARARGS,
     "send(batch, topic, values, keys, partitions, header_name, header_value, start) -> int"},
    {"wait", (PyCFunction)Producer_wait, METH_VARARGS,
     "wait(timeout) -> (finished, logs)"},
    {"partitions", (PyCFunction)Producer_partitions, METH_VARARGS,
     "partitions(topic, timeout) -> list[int]"},
    {"ping", (PyCFunction)Producer_ping, METH_VARARGS,
     "ping(timeout): Error unless a broker answers within timeout seconds"},
    {"flush", (PyCFunction)Producer_flush, METH_VARARGS,
     "flush(timeout) -> int: records still unreported"},
    {"close", (PyCFunction)Producer_close, METH_NOARGS,
     "close(): fails what is still queued (reported through wait()) and stops"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chute.kafka.native.rdbatch.Producer",
    .tp_basicsize = sizeof(ProducerObject),
    .tp_dealloc = (destructor)Producer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Producer(config: dict[str, str]): a librdkafka producer reporting per batch",
    .tp_methods = Producer_methods,
    .tp_init = (initproc)Producer_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *Batch_seal(BatchObject *self, PyObject *unused) {
    (void)unused;
    if (self->state) {
        BatchState *state = self->state;
        self->state = NULL;
        batch_release(state);
    }
    Py_RETURN_NONE;
}

static void Batch_dealloc(BatchObject *self) {
    PyObject *result = Batch_seal(self, NULL);
    Py_XDECREF(result);
    Py_XDECREF(self->producer);
    PyObject_Free(self);
}

static PyObject *Batch_id(BatchObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->id);
}

static PyMethodDef Batch_methods[] = {
    {"seal", (PyCFunction)Batch_seal, METH_NOARGS,
     "seal(): no more records; the batch is reported once every record handed over is"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"id", (getter)Batch_id, NULL, "the id its report carries", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chute.kafka.native.rdbatch.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The records of one request: reported once, by id, through Producer.wait()",
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
};

static PyObject *version(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyUnicode_FromString(rd_kafka_version_str());
}

static PyMethodDef module_methods[] = {
    {"librdkafka_version", version, METH_NOARGS, "the version of the librdkafka linked"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rdbatch",
    "A librdkafka producer that sends a batch of records in one call and reports per batch.",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_rdbatch(void) {
    if (PyType_Ready(&ProducerType) < 0 || PyType_Ready(&BatchType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    RdBatchError = PyErr_NewExceptionWithDoc(
        "chute.kafka.native.rdbatch.Error",
        "librdkafka refused: args are (code, name, message)", NULL, NULL);
    if (!RdBatchError || PyModule_AddObjectRef(m, "Error", RdBatchError) < 0 ||
        PyModule_AddObjectRef(m, "Producer", (PyObject *)&ProducerType) < 0 ||
        PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

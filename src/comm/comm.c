/*
 * comm.c -- collectives over MPI (or a solo communicator) with per-phase logical byte counters.
 * The only file that includes mpi.h. MPI errors are returned (MPI_ERRORS_RETURN on our own
 * duplicate of the communicator) and become DSACP_ECOMM with MPI's error string.
 */
#include "comm/comm.h"
#include "dsacp_mpi.h"
#include "numerics/numerics.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The tag bound of a solo communicator: the least MPI_TAG_UB the standard allows. */
#define SOLO_TAG_UB 32767

struct dsacp_comm {
    bool solo;
    bool owns_mpi; /* this handle initialised MPI (dsacp_comm_create_world) */
    MPI_Comm comm;
    int rank, size;
    dsacp_comm_counter own_ctr[DSACP_PHASE_COUNT];
    dsacp_comm_counter *ctr; /* own_ctr, or the parent's for a split communicator */
    json_t *notes; /* JSON object whose members join the report (rank 0's are written); NULL: none */
    double timeout; /* bound on every point-to-point wait, seconds (<= 0: none) */
    int tag_ub;     /* the largest tag (MPI_TAG_UB) */
    /* Bookkeeping of the blocking collectives, allocated with the handle so that they never fail
     * for memory halfway (a rank that returned before the MPI call would leave the others
     * waiting): the status agreement's receive buffer [size], allgather's block sizes [size],
     * MPI counts and displacements [4 size] (all-to-all; reduce-scatter and gather use part). */
    int *agree_buf;
    size_t *zscratch;
    int *iscratch;
    /* The all-reduces' block counts [size] and bytes [size], the bf16 reduce-scatter's send and
     * receive bytes [size] each (with the handle), and their data: grown to the largest call and
     * kept ([0]: the all-reduce's, [1]: the bf16 reduce-scatter's, which it calls), so that a
     * step's reductions allocate nothing once the first steps have run. */
    int64_t *split_counts;
    size_t *split_bytes, *wire_bytes;
    void *grow[2];
    size_t grow_bytes[2];
    /* Requests that were waited on, kept for the next non-blocking call: a step starts and
     * waits the same few every time, so after the first steps none is allocated. `all` lists
     * every request the handle allocated (spare, in flight or given up), freed with it. */
    dsacp_comm_request *spare, *all;
};

/* A non-blocking collective or send in flight. Allocated once with its MPI counts and
 * displacements ([size] each, right after it), then reused through the handle's spare list. */
enum { REQUEST_COLLECTIVE = 0, REQUEST_SEND = 1 };
struct dsacp_comm_request {
    dsacp_comm *c;
    MPI_Request req, req2;
    int phase;
    int kind;      /* REQUEST_*: a send's wait is bounded by the handle's timeout */
    int peer, tag; /* a send's destination and tag (for the timeout's message) */
    int *counts, *displs;
    dsacp_comm_request *next_spare, *next_all;
};

static const char *const phase_names[] = {
#define DSACP_COMM_PHASE_NAME_(name, desc) #name,
    DSACP_COMM_PHASE_MAP(DSACP_COMM_PHASE_NAME_)
#undef DSACP_COMM_PHASE_NAME_
};

const char *dsacp_comm_phase_name(int phase)
{
    return phase >= 0 && phase < DSACP_PHASE_COUNT ? phase_names[phase] : "?";
}

static int mpi_fail(int err, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(err, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", err);
    return dsacp_error(DSACP_ECOMM, "%s: %s", what, s);
}

static void count(dsacp_comm *c, int phase, int64_t sent, int64_t recv, double t0)
{
    if (c->solo || phase < 0 || phase >= DSACP_PHASE_COUNT) return;
    dsacp_comm_counter *k = &c->ctr[phase];
    k->calls++;
    k->bytes_sent += sent;
    k->bytes_recv += recv;
    k->seconds += dsacp_now() - t0;
}

/* ---- handles ---- */

static void scratch_free(dsacp_comm *c)
{
    free(c->agree_buf), free(c->zscratch), free(c->iscratch);
    free(c->split_counts), free(c->split_bytes), free(c->wire_bytes);
    dsacp_free(c->grow[0]), dsacp_free(c->grow[1]);
}

static int scratch_init(dsacp_comm *c)
{
    const size_t W = (size_t)(c->size > 0 ? c->size : 1);
    c->agree_buf = malloc(W * sizeof *c->agree_buf);
    c->zscratch = malloc(W * sizeof *c->zscratch);
    c->iscratch = malloc(4 * W * sizeof *c->iscratch);
    c->split_counts = malloc(W * sizeof *c->split_counts);
    c->split_bytes = malloc(W * sizeof *c->split_bytes);
    c->wire_bytes = malloc(2 * W * sizeof *c->wire_bytes);
    if (c->agree_buf && c->zscratch && c->iscratch && c->split_counts && c->split_bytes && c->wire_bytes)
        return DSACP_OK;
    scratch_free(c);
    return dsacp_error(DSACP_ENOMEM, "out of memory");
}

int dsacp_comm_create_solo(dsacp_comm **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return dsacp_error(DSACP_ENOMEM, "out of memory");
    (*out)->solo = true;
    (*out)->size = 1;
    (*out)->tag_ub = SOLO_TAG_UB;
    (*out)->ctr = (*out)->own_ctr;
    if (scratch_init(*out)) {
        free(*out);
        *out = NULL;
        return DSACP_ENOMEM;
    }
    return DSACP_OK;
}

/* The largest tag of an MPI communicator (MPI_TAG_UB; the standard's minimum when unknown). */
static int mpi_tag_ub(MPI_Comm comm)
{
    int *ub = NULL, flag = 0;
    if (MPI_Comm_get_attr(comm, MPI_TAG_UB, &ub, &flag) != MPI_SUCCESS || !flag || !ub) return SOLO_TAG_UB;
    return *ub;
}

/* The split behind dsacp_comm_split (counters shared with c) and dsacp_comm_split_group (own
 * counters). */
static int split_impl(dsacp_comm *c, int color, int key, bool own_counters, dsacp_comm **out)
{
    *out = NULL;
    dsacp_comm *s = calloc(1, sizeof *s);
    if (!s) {
        /* The split is collective: take part in it anyway, then fail (the caller agrees). */
        if (!c->solo) {
            MPI_Comm sub = MPI_COMM_NULL;
            if (MPI_Comm_split(c->comm, color, key, &sub) == MPI_SUCCESS && sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
        }
        return dsacp_error(DSACP_ENOMEM, "out of memory");
    }
    s->ctr = own_counters ? s->own_ctr : c->ctr;
    s->size = 1;
    s->solo = true;
    s->tag_ub = SOLO_TAG_UB;
    if (!c->solo) {
        MPI_Comm sub;
        int err = MPI_Comm_split(c->comm, color, key, &sub);
        if (err != MPI_SUCCESS) {
            free(s);
            return mpi_fail(err, "MPI_Comm_split");
        }
        MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
        MPI_Comm_size(sub, &s->size);
        if (s->size == 1) { /* a group of one: no MPI calls at all */
            MPI_Comm_free(&sub);
        } else {
            MPI_Comm_rank(sub, &s->rank);
            s->comm = sub;
            s->solo = false;
            s->tag_ub = mpi_tag_ub(sub);
        }
    }
    if (scratch_init(s)) {
        if (!s->solo) MPI_Comm_free(&s->comm);
        free(s);
        return DSACP_ENOMEM;
    }
    *out = s;
    return DSACP_OK;
}

int dsacp_comm_split(dsacp_comm *c, int color, int key, dsacp_comm **out)
{
    return split_impl(c, color, key, false, out);
}

int dsacp_comm_split_group(dsacp_comm *c, int color, int key, dsacp_comm **out)
{
    return split_impl(c, color, key, true, out);
}

/* One color for every rank, ranked as in c: the same group in a new context. */
int dsacp_comm_dup(dsacp_comm *c, dsacp_comm **out) { return split_impl(c, 0, c->rank, true, out); }

void dsacp_comm_set_timeout(dsacp_comm *c, double seconds) { c->timeout = seconds > 0 ? seconds : 0; }

int dsacp_comm_create_mpi(MPI_Comm comm, dsacp_comm **out)
{
    *out = NULL;
    int init = 0;
    MPI_Initialized(&init);
    if (!init) return dsacp_error(DSACP_EINVAL, "dsacp_comm_create_mpi: MPI is not initialised");
    dsacp_comm *c = calloc(1, sizeof *c);
    if (!c) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int err = MPI_Comm_dup(comm, &c->comm);
    if (err != MPI_SUCCESS) {
        free(c);
        return mpi_fail(err, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    c->tag_ub = mpi_tag_ub(c->comm);
    c->ctr = c->own_ctr;
    if (scratch_init(c)) {
        MPI_Comm_free(&c->comm);
        free(c);
        return DSACP_ENOMEM;
    }
    *out = c;
    return DSACP_OK;
}

static bool launched_by_mpirun(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int dsacp_comm_create_world(int *argc, char ***argv, dsacp_comm **out)
{
    *out = NULL;
    int init = 0;
    MPI_Initialized(&init);
    if (!init && !launched_by_mpirun()) return dsacp_comm_create_solo(out);
    bool owns = false;
    if (!init) {
        int provided = 0;
        int err = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (err != MPI_SUCCESS) return dsacp_error(DSACP_ECOMM, "MPI_Init_thread failed (%d)", err);
        owns = true;
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
    int rc = dsacp_comm_create_mpi(MPI_COMM_WORLD, out);
    if (rc) {
        if (owns) MPI_Finalize();
        return rc;
    }
    (*out)->owns_mpi = owns;
    dsacp_fault_set_rank((*out)->rank); /* DSACP_FAULT=<site>:<rank> names world ranks */
    return DSACP_OK;
}

void dsacp_comm_free(dsacp_comm *c)
{
    if (!c) return;
    /* Every request, also those still in flight (a run ending with an error): a send is left to
     * MPI to complete; a collective's MPI request cannot be freed, and MPI may still read the
     * counts it holds, so it is left allocated. */
    while (c->all) {
        dsacp_comm_request *r = c->all;
        c->all = r->next_all;
        if (!c->solo && r->kind == REQUEST_SEND && r->req != MPI_REQUEST_NULL) MPI_Request_free(&r->req);
        if (c->solo || (r->req == MPI_REQUEST_NULL && r->req2 == MPI_REQUEST_NULL)) free(r);
    }
    if (!c->solo) {
        MPI_Comm_free(&c->comm);
        if (c->owns_mpi) MPI_Finalize();
    }
    json_decref(c->notes);
    scratch_free(c);
    free(c);
}

int dsacp_comm_rank(const dsacp_comm *c) { return c->rank; }
int dsacp_comm_size(const dsacp_comm *c) { return c->size; }

dsacp_comm_counter dsacp_comm_get_counter(const dsacp_comm *c, int phase)
{
    dsacp_comm_counter z = {0};
    return phase >= 0 && phase < DSACP_PHASE_COUNT ? c->ctr[phase] : z;
}

void dsacp_comm_reset_counters(dsacp_comm *c) { memset(c->ctr, 0, sizeof c->own_ctr); }

int dsacp_comm_set_notes(dsacp_comm *c, const char *json_members)
{
    json_t *n = NULL;
    if (json_members) {
        /* The members are parsed as the body of one object: anything that is not valid JSON
         * members (an unescaped quote in a string, a trailing comma) is refused here, so the
         * report can never be made invalid by them. */
        const size_t len = strlen(json_members);
        char *wrapped = malloc(len + 3);
        if (!wrapped) return dsacp_error(DSACP_ENOMEM, "comm report notes: out of memory");
        wrapped[0] = '{';
        memcpy(wrapped + 1, json_members, len);
        wrapped[len + 1] = '}', wrapped[len + 2] = 0;
        json_error_t jerr;
        n = json_loads(wrapped, JSON_REJECT_DUPLICATES, &jerr);
        free(wrapped);
        if (!n) return dsacp_error(DSACP_EINVAL, "comm report notes: not valid JSON object members (column %d: %s)",
                                   jerr.column > 0 ? jerr.column - 1 : jerr.column, jerr.text);
        if (!json_is_object(n)) {
            json_decref(n);
            return dsacp_error(DSACP_EINVAL, "comm report notes: not JSON object members");
        }
    }
    json_decref(c->notes);
    c->notes = n;
    return DSACP_OK;
}

/* ---- helpers ---- */

/* Byte counts -> MPI int counts and displacements (W each); false when a count or the total
 * does not fit an int (MPI's count type). */
static int make_counts(const dsacp_comm *c, const size_t *bytes, int *counts, int *displs, const char *what)
{
    size_t off = 0;
    for (int q = 0; q < c->size; q++) {
        if (bytes[q] > INT_MAX || off > INT_MAX)
            return dsacp_error(DSACP_ERANGE, "%s: message of %zu bytes exceeds MPI's 2^31 count", what, bytes[q]);
        counts[q] = (int)bytes[q];
        displs[q] = (int)off;
        off += bytes[q];
    }
    return DSACP_OK;
}

/* A collective over one rank: its own block, copied unless it is already in place. */
static int solo_copy(const void *send, void *recv, size_t bytes)
{
    if (bytes && recv != send) memmove(recv, send, bytes);
    return DSACP_OK;
}

static int64_t sum_others(const dsacp_comm *c, const size_t *bytes)
{
    int64_t s = 0;
    for (int q = 0; q < c->size; q++)
        if (q != c->rank) s += (int64_t)bytes[q];
    return s;
}

/* At least `bytes` of c's kept buffer `which` (64-byte aligned), grown when shorter; NULL with
 * DSACP_ENOMEM recorded (the buffer kept as it was). */
static void *grown(dsacp_comm *c, int which, size_t bytes, const char *what)
{
    if (bytes <= c->grow_bytes[which] && c->grow[which]) return c->grow[which];
    void *p = dsacp_alloc(bytes ? bytes : 1);
    if (!p) {
        dsacp_error(DSACP_ENOMEM, "%s: out of memory for %zu bytes of scratch", what, bytes);
        return NULL;
    }
    dsacp_free(c->grow[which]);
    c->grow[which] = p;
    c->grow_bytes[which] = bytes;
    return p;
}

/* Parts of one kept buffer: sizes[i] bytes each, every part starting 64-byte aligned; false when
 * the total overflows. */
static bool carve(const size_t *sizes, int n, size_t *offsets, size_t *total)
{
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        offsets[i] = off;
        if (!dsacp_add_ok(off, sizes[i], &off) || !dsacp_add_ok(off, 63, &off)) return false;
        off &= ~(size_t)63;
    }
    *total = off;
    return true;
}

/* c's kept buffer `which` carved into n parts of sizes[i] bytes (their offsets in off), once every
 * rank has agreed that it has one (uncounted: a rank short of memory stops every rank here, not
 * inside the collectives); NULL with the agreed status in *rc. */
static unsigned char *agreed_scratch(dsacp_comm *c, int which, const size_t *sizes, int n, size_t *off,
                                     const char *what, int *rc)
{
    size_t need = 0;
    unsigned char *p = NULL;
    if (carve(sizes, n, off, &need)) p = grown(c, which, need, what);
    else dsacp_error(DSACP_ENOMEM, "%s: the scratch size overflows", what);
    *rc = dsacp_comm_agree_phase(c, p ? DSACP_OK : DSACP_ENOMEM, -1);
    return *rc ? NULL : p;
}

/* The balanced split of n elements of `elem` bytes over the ranks, into c's split arrays. */
static void split_blocks(dsacp_comm *c, int64_t n, size_t elem)
{
    for (int q = 0; q < c->size; q++) {
        c->split_counts[q] = dsacp_split_begin(n, q + 1, c->size) - dsacp_split_begin(n, q, c->size);
        c->split_bytes[q] = (size_t)c->split_counts[q] * elem;
    }
}

/* ---- requests ---- */

/* A spare request of c, or a new one when none is spare (NULL with DSACP_ENOMEM recorded). */
static dsacp_comm_request *new_request(dsacp_comm *c, int phase)
{
    dsacp_comm_request *r = c->spare;
    if (r) {
        c->spare = r->next_spare;
    } else {
        const size_t W = (size_t)(c->size > 0 ? c->size : 1); /* an int: 2 W ints cannot overflow */
        r = malloc(sizeof *r + 2 * W * sizeof(int));
        if (!r) {
            dsacp_error(DSACP_ENOMEM, "non-blocking call: out of memory for its request");
            return NULL;
        }
        r->counts = (int *)(r + 1);
        r->displs = r->counts + W;
        r->next_all = c->all;
        c->all = r;
    }
    r->c = c;
    r->phase = phase;
    r->kind = REQUEST_COLLECTIVE;
    r->peer = r->tag = -1;
    r->req = r->req2 = MPI_REQUEST_NULL;
    r->next_spare = NULL;
    return r;
}

/* r back to its handle's spare list (after its wait, or when its start failed). */
static void spare_request(dsacp_comm_request *r)
{
    r->next_spare = r->c->spare;
    r->c->spare = r;
}

/* r handed back after its wait or test, whatever the outcome. A send still active (its wait
 * failed) is left to MPI to complete (MPI_Request_free) and r reused; a collective still active
 * (MPI forbids freeing its request) keeps r out of use until the handle is freed. */
static void release_request(dsacp_comm_request *r)
{
    if (r->kind == REQUEST_SEND && r->req != MPI_REQUEST_NULL) MPI_Request_free(&r->req);
    if (r->req == MPI_REQUEST_NULL && r->req2 == MPI_REQUEST_NULL) spare_request(r);
}

/* Time since t0 added to a phase's seconds (a wait's or a test's, whose call was counted at the
 * start). */
static void add_seconds(dsacp_comm *c, int phase, double t0)
{
    if (!c->solo && phase >= 0 && phase < DSACP_PHASE_COUNT) c->ctr[phase].seconds += dsacp_now() - t0;
}

/* ---- point to point ---- */

/* A bounded wait polls: back to back for POLL_SPIN_S (a message in flight on a live link arrives
 * within it at MPI's own latency, and every poll drives MPI's progress), then sleeping between
 * polls, POLL_SLEEP_MIN_NS doubling up to POLL_SLEEP_MAX_NS. */
#define POLL_SPIN_S 2e-3
#define POLL_SLEEP_MIN_NS 50000L
#define POLL_SLEEP_MAX_NS 200000L

void dsacp_comm_poll_start(dsacp_comm_poll *p, double timeout_s)
{
    const double now = dsacp_now();
    p->spin_end = now + POLL_SPIN_S;
    p->deadline = timeout_s > 0 ? now + timeout_s : 0;
    p->sleep_ns = POLL_SLEEP_MIN_NS;
}

bool dsacp_comm_poll_next(dsacp_comm_poll *p)
{
    if (dsacp_now() >= p->spin_end) {
        struct timespec ts = {0, p->sleep_ns};
        nanosleep(&ts, NULL);
        if (p->sleep_ns < POLL_SLEEP_MAX_NS) p->sleep_ns *= 2;
        if (p->sleep_ns > POLL_SLEEP_MAX_NS) p->sleep_ns = POLL_SLEEP_MAX_NS;
    }
    return !(p->deadline > 0 && dsacp_now() > p->deadline);
}

static int timed_out(const dsacp_comm *c, const char *what, int peer, int tag)
{
    char who[32], t[16];
    if (peer < 0) snprintf(who, sizeof who, "any rank");
    else snprintf(who, sizeof who, "rank %d", peer);
    if (tag < 0) snprintf(t, sizeof t, "any");
    else snprintf(t, sizeof t, "%d", tag);
    return dsacp_error(DSACP_ECOMM, "%s: timed out after %g s waiting for %s (tag %s)", what, c->timeout, who, t);
}

/* A peer rank (`name` the parameter; -1 = any when any_ok), a tag (-1 = any when any_ok) and a
 * size that MPI's int count holds. */
static int check_p2p(const dsacp_comm *c, const char *what, const char *name, int peer, int tag, size_t bytes,
                     bool any_ok)
{
    if (c->solo) return dsacp_error(DSACP_EINVAL, "%s: a solo communicator has no peers", what);
    if (!(any_ok && peer == -1) && (peer < 0 || peer >= c->size))
        return dsacp_error(DSACP_EINVAL, "%s: %s %d outside [0, %d)", what, name, peer, c->size);
    if (peer == c->rank) return dsacp_error(DSACP_EINVAL, "%s: %s %d is this rank (a message to oneself)", what, name, peer);
    if (!(any_ok && tag == -1) && (tag < 0 || tag > c->tag_ub))
        return dsacp_error(DSACP_EINVAL, "%s: tag %d outside [0, %d]", what, tag, c->tag_ub);
    if (bytes > INT_MAX)
        return dsacp_error(DSACP_ERANGE, "%s: message of %zu bytes exceeds MPI's 2^31 count", what, bytes);
    return DSACP_OK;
}

int dsacp_comm_tag_max(const dsacp_comm *c) { return c->tag_ub; }

int dsacp_comm_isend(dsacp_comm *c, int dest, int tag, const void *buf, size_t bytes, int phase,
                     dsacp_comm_request **out)
{
    *out = NULL;
    int rc = check_p2p(c, "dsacp_comm_isend", "dest", dest, tag, bytes, false);
    if (rc) return rc;
    dsacp_comm_request *r = new_request(c, phase);
    if (!r) return DSACP_ENOMEM;
    r->kind = REQUEST_SEND;
    r->peer = dest, r->tag = tag;
    const double t0 = dsacp_now();
    int err = MPI_Isend(buf, (int)bytes, MPI_BYTE, dest, tag, c->comm, &r->req);
    if (err != MPI_SUCCESS) {
        spare_request(r);
        return mpi_fail(err, "MPI_Isend");
    }
    count(c, phase, (int64_t)bytes, 0, t0);
    *out = r;
    return DSACP_OK;
}

/* A send's wait, bounded by the handle's timeout. On expiry the send stays with MPI (its buffer
 * may still be read until the process ends) and the request is handed back. */
static int send_wait(dsacp_comm_request *r)
{
    dsacp_comm *c = r->c;
    const double t0 = dsacp_now();
    dsacp_comm_poll p;
    dsacp_comm_poll_start(&p, c->timeout);
    int rc = DSACP_OK;
    for (;;) {
        int done = 0;
        int err = MPI_Test(&r->req, &done, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS) {
            rc = mpi_fail(err, "MPI_Test (send)");
            break;
        }
        if (done) break;
        if (!dsacp_comm_poll_next(&p)) {
            rc = timed_out(c, "dsacp_comm_wait (send)", r->peer, r->tag);
            break;
        }
    }
    add_seconds(c, r->phase, t0);
    release_request(r);
    return rc;
}

int dsacp_comm_test(dsacp_comm_request *r, bool *done)
{
    *done = true;
    if (!r) return DSACP_OK;
    int rc = DSACP_OK, f1 = 1, f2 = 1;
    if (!r->c->solo) {
        const double t0 = dsacp_now();
        int err = MPI_Test(&r->req, &f1, MPI_STATUS_IGNORE);
        if (err == MPI_SUCCESS && f1) err = MPI_Test(&r->req2, &f2, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Test");
        add_seconds(r->c, r->phase, t0);
    }
    *done = rc || (f1 && f2);
    if (*done) release_request(r);
    return rc;
}

/* MPI_Message kept in the message's opaque pointer. */
_Static_assert(sizeof(MPI_Message) <= sizeof(void *), "an MPI_Message fits dsacp_comm_message.mpi_");

int dsacp_comm_improbe(dsacp_comm *c, int source, int tag, bool *found, dsacp_comm_message *msg)
{
    *found = false;
    int rc = check_p2p(c, "dsacp_comm_improbe", "source", source, tag, 0, true);
    if (rc) return rc;
    int flag = 0;
    MPI_Message m = MPI_MESSAGE_NULL;
    MPI_Status st;
    int err = MPI_Improbe(source < 0 ? MPI_ANY_SOURCE : source, tag < 0 ? MPI_ANY_TAG : tag, c->comm, &flag, &m, &st);
    if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Improbe");
    if (!flag) return DSACP_OK;
    int n = 0;
    MPI_Get_count(&st, MPI_BYTE, &n);
    msg->source = st.MPI_SOURCE;
    msg->tag = st.MPI_TAG;
    msg->bytes = (size_t)(n > 0 ? n : 0);
    msg->mpi_ = NULL;
    memcpy(&msg->mpi_, &m, sizeof m);
    *found = true;
    return DSACP_OK;
}

/* Receive a matched message into cap bytes of buf (a longer message is an MPI truncation error,
 * consumed all the same); counted from t0. */
static int mrecv_into(dsacp_comm *c, dsacp_comm_message *msg, void *buf, size_t cap, int phase, double t0)
{
    if (c->solo || !msg->mpi_)
        return dsacp_error(DSACP_EINVAL, "dsacp_comm_mrecv: msg holds no matched message (received already?)");
    MPI_Message m;
    memcpy(&m, &msg->mpi_, sizeof m);
    msg->mpi_ = NULL;
    int err = MPI_Mrecv(buf, (int)cap, MPI_BYTE, &m, MPI_STATUS_IGNORE);
    if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Mrecv");
    if (msg->bytes == cap) count(c, phase, 0, (int64_t)msg->bytes, t0);
    return DSACP_OK;
}

int dsacp_comm_mrecv(dsacp_comm *c, dsacp_comm_message *msg, void *buf, int phase)
{
    return mrecv_into(c, msg, buf, msg->bytes, phase, dsacp_now());
}

int dsacp_comm_send(dsacp_comm *c, int dest, int tag, const void *buf, size_t bytes, int phase)
{
    dsacp_comm_request *r = NULL;
    int rc = dsacp_comm_isend(c, dest, tag, buf, bytes, phase, &r);
    return rc ? rc : dsacp_comm_wait(r);
}

int dsacp_comm_recv(dsacp_comm *c, int source, int tag, void *buf, size_t bytes, int phase, int *from)
{
    int rc = check_p2p(c, "dsacp_comm_recv", "source", source, tag, bytes, true);
    if (rc) return rc;
    const double t0 = dsacp_now();
    dsacp_comm_poll p;
    dsacp_comm_poll_start(&p, c->timeout);
    dsacp_comm_message msg;
    bool found = false;
    for (;;) {
        rc = dsacp_comm_improbe(c, source, tag, &found, &msg);
        if (rc || found) break;
        if (!dsacp_comm_poll_next(&p)) return timed_out(c, "dsacp_comm_recv", source, tag);
    }
    if (rc) return rc;
    /* A message of another size is consumed (received into what fits), then refused. */
    rc = mrecv_into(c, &msg, buf, bytes, phase, t0);
    if (msg.bytes != bytes)
        return dsacp_error(DSACP_ECOMM, "dsacp_comm_recv: %zu bytes from rank %d (tag %d), expected %zu", msg.bytes,
                           msg.source, msg.tag, bytes);
    if (!rc && from) *from = msg.source;
    return rc;
}

/* ---- collectives ---- */

int dsacp_comm_allgatherv(dsacp_comm *c, const void *send, size_t send_bytes, void *recv,
                          const size_t *recv_bytes, int phase)
{
    if (c->solo) return solo_copy(send, recv, send_bytes);
    /* Blocking, on the handle's bookkeeping (nothing allocated: no rank can fail before the call). */
    const double t0 = dsacp_now();
    int *counts = c->iscratch, *displs = c->iscratch + c->size;
    int rc = make_counts(c, recv_bytes, counts, displs, "all-gather");
    if (!rc && send_bytes != recv_bytes[c->rank])
        rc = dsacp_error(DSACP_EINVAL, "all-gather: send size %zu differs from this rank's block %zu", send_bytes,
                         recv_bytes[c->rank]);
    if (!rc) {
        const void *sb = send == (const uint8_t *)recv + displs[c->rank] ? MPI_IN_PLACE : send;
        int err = MPI_Allgatherv(sb, (int)send_bytes, MPI_BYTE, recv, counts, displs, MPI_BYTE, c->comm);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Allgatherv");
    }
    if (!rc) count(c, phase, (int64_t)send_bytes * (c->size - 1), sum_others(c, recv_bytes), t0);
    return rc;
}

int dsacp_comm_allgather(dsacp_comm *c, const void *send, size_t bytes, void *recv, int phase)
{
    size_t *rb = c->zscratch;
    for (int q = 0; q < c->size; q++) rb[q] = bytes;
    return dsacp_comm_allgatherv(c, send, bytes, recv, rb, phase);
}

int dsacp_comm_iallgatherv(dsacp_comm *c, const void *send, size_t send_bytes, void *recv,
                           const size_t *recv_bytes, int phase, dsacp_comm_request **out)
{
    *out = NULL;
    dsacp_comm_request *r = new_request(c, phase);
    if (!r) return DSACP_ENOMEM;
    if (c->solo) {
        *out = r;
        return solo_copy(send, recv, send_bytes);
    }
    const double t0 = dsacp_now();
    int rc = make_counts(c, recv_bytes, r->counts, r->displs, "all-gather");
    if (!rc && send_bytes != recv_bytes[c->rank])
        rc = dsacp_error(DSACP_EINVAL, "all-gather: send size %zu differs from this rank's block %zu", send_bytes,
                         recv_bytes[c->rank]);
    if (!rc) {
        /* In place when the caller already put its block in recv. */
        const void *sb = send == (const uint8_t *)recv + r->displs[c->rank] ? MPI_IN_PLACE : send;
        int err = MPI_Iallgatherv(sb, (int)send_bytes, MPI_BYTE, recv, r->counts, r->displs, MPI_BYTE, c->comm, &r->req);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Iallgatherv");
    }
    if (rc) {
        spare_request(r);
        return rc;
    }
    count(c, phase, (int64_t)send_bytes * (c->size - 1), sum_others(c, recv_bytes), t0);
    *out = r;
    return DSACP_OK;
}

int dsacp_comm_wait(dsacp_comm_request *r)
{
    if (!r) return DSACP_OK;
    if (r->kind == REQUEST_SEND) return send_wait(r);
    int rc = DSACP_OK;
    if (!r->c->solo) {
        const double t0 = dsacp_now();
        int err = MPI_Wait(&r->req, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Wait");
        err = MPI_Wait(&r->req2, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS && !rc) rc = mpi_fail(err, "MPI_Wait");
        add_seconds(r->c, r->phase, t0);
    }
    release_request(r);
    return rc;
}

int dsacp_comm_ibcast2(dsacp_comm *c, void *buf1, size_t len1, void *buf2, size_t len2, int root, int phase,
                       dsacp_comm_request **out)
{
    *out = NULL;
    dsacp_comm_request *r = new_request(c, phase);
    if (!r) return DSACP_ENOMEM;
    if (c->solo) {
        *out = r;
        return DSACP_OK;
    }
    if (len1 > INT_MAX || len2 > INT_MAX) {
        spare_request(r);
        return dsacp_error(DSACP_ERANGE, "broadcast of %zu bytes exceeds MPI's 2^31 count", len1 > len2 ? len1 : len2);
    }
    const double t0 = dsacp_now();
    int err = MPI_Ibcast(buf1, (int)len1, MPI_BYTE, root, c->comm, &r->req);
    if (err == MPI_SUCCESS && len2) err = MPI_Ibcast(buf2, (int)len2, MPI_BYTE, root, c->comm, &r->req2);
    if (err != MPI_SUCCESS) {
        /* The first broadcast may be in flight (the second failed): its MPI request is left to
         * MPI and this one is not reused (it is freed with the handle). */
        if (r->req == MPI_REQUEST_NULL) spare_request(r);
        return mpi_fail(err, "MPI_Ibcast");
    }
    const int64_t n = (int64_t)(len1 + len2);
    count(c, phase, c->rank == root ? n * (c->size - 1) : 0, c->rank == root ? 0 : n, t0);
    *out = r;
    return DSACP_OK;
}

int dsacp_comm_alltoallv(dsacp_comm *c, const void *send, const size_t *send_bytes, void *recv,
                         const size_t *recv_bytes, int phase)
{
    if (c->solo) return solo_copy(send, recv, send_bytes[0]);
    const double t0 = dsacp_now();
    const size_t W = (size_t)c->size;
    int *buf = c->iscratch;
    int rc = make_counts(c, send_bytes, buf, buf + W, "all-to-all");
    if (!rc) rc = make_counts(c, recv_bytes, buf + 2 * W, buf + 3 * W, "all-to-all");
    if (!rc) {
        int err = MPI_Alltoallv(send, buf, buf + W, MPI_BYTE, recv, buf + 2 * W, buf + 3 * W, MPI_BYTE, c->comm);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Alltoallv");
    }
    if (!rc) count(c, phase, sum_others(c, send_bytes), sum_others(c, recv_bytes), t0);
    return rc;
}

int dsacp_comm_reduce_scatter_f32(dsacp_comm *c, const float *send, float *recv, const int64_t *counts, int phase)
{
    if (c->solo) return solo_copy(send, recv, (size_t)counts[0] * sizeof(float));
    const double t0 = dsacp_now();
    int *ic = c->iscratch;
    int64_t others = 0;
    int rc = DSACP_OK;
    for (int q = 0; q < c->size; q++) {
        if (counts[q] > INT_MAX) rc = dsacp_error(DSACP_ERANGE, "reduce-scatter: block of %lld floats too large",
                                                  (long long)counts[q]);
        ic[q] = (int)counts[q];
        if (q != c->rank) others += counts[q] * (int64_t)sizeof(float);
    }
    if (!rc) {
        int err = MPI_Reduce_scatter(send, recv, ic, MPI_FLOAT, MPI_SUM, c->comm);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Reduce_scatter");
    }
    if (!rc) count(c, phase, others, counts[c->rank] * (int64_t)sizeof(float) * (c->size - 1), t0);
    return rc;
}

/* In-place sum over ranks of n floats, as reduce-scatter then all-gather: every element is
 * summed in one place, so every rank gets bit-identical results (replicated state stays
 * replicated). */
static int allreduce_f32(dsacp_comm *c, float *buf, int64_t n, int phase)
{
    if (c->solo || n == 0) return DSACP_OK;
    split_blocks(c, n, sizeof(float));
    const int64_t *counts = c->split_counts;
    const size_t *bytes = c->split_bytes;
    const size_t size = bytes[c->rank];
    size_t off = 0;
    int rc;
    float *part = (float *)agreed_scratch(c, 0, &size, 1, &off, "all-reduce", &rc);
    /* Counted as one all-reduce: both halves land in the same phase counter, then calls is
     * corrected to one. */
    if (!rc) rc = dsacp_comm_reduce_scatter_f32(c, buf, part, counts, phase);
    if (!rc) rc = dsacp_comm_allgatherv(c, part, bytes[c->rank], buf, bytes, phase);
    if (!rc && phase >= 0 && phase < DSACP_PHASE_COUNT) c->ctr[phase].calls--;
    return rc;
}

/* bf16 on the wire: the blocks travel as bf16 (all-to-all), each rank sums the W blocks of its
 * result in fp32, in rank order (deterministic for a given W; the own block is rounded too, so
 * that the result does not depend on which rank sums it). */
int dsacp_comm_reduce_scatter_wire(dsacp_comm *c, const float *send, float *recv, const int64_t *counts, bool bf16,
                                   int phase)
{
    if (!bf16) return dsacp_comm_reduce_scatter_f32(c, send, recv, counts, phase);
    if (c->solo) return solo_copy(send, recv, (size_t)counts[0] * sizeof(float));
    const int W = c->size, me = c->rank;
    int64_t total = 0;
    for (int q = 0; q < W; q++) total += counts[q];
    const int64_t mine = counts[me];
    /* The send blocks and the received ones, as bf16. */
    const size_t sizes[2] = {(size_t)total * sizeof(uint16_t), (size_t)(mine * W) * sizeof(uint16_t)};
    size_t off[2] = {0};
    int rc;
    unsigned char *p = agreed_scratch(c, 1, sizes, 2, off, "reduce-scatter", &rc);
    if (rc) return rc;
    uint16_t *s16 = (uint16_t *)(p + off[0]), *r16 = (uint16_t *)(p + off[1]);
    size_t *sb = c->wire_bytes, *rb = c->wire_bytes + W;
    for (int64_t i = 0; i < total; i++) s16[i] = dsacp_f32_to_bf16(send[i]);
    for (int q = 0; q < W; q++) sb[q] = (size_t)counts[q] * sizeof(uint16_t), rb[q] = (size_t)mine * sizeof(uint16_t);
    rc = dsacp_comm_alltoallv(c, s16, sb, r16, rb, phase);
    if (!rc)
        for (int64_t i = 0; i < mine; i++) {
            float acc = 0.0f;
            for (int q = 0; q < W; q++) acc += dsacp_bf16_to_f32(r16[(int64_t)q * mine + i]);
            recv[i] = acc;
        }
    return rc;
}

int dsacp_comm_allreduce_wire(dsacp_comm *c, float *buf, int64_t n, bool bf16, int phase)
{
    if (!bf16) return allreduce_f32(c, buf, n, phase);
    if (c->solo || n == 0) return DSACP_OK;
    const int me = c->rank;
    split_blocks(c, n, sizeof(uint16_t));
    const int64_t *counts = c->split_counts;
    const size_t *bytes = c->split_bytes;
    /* This rank's summed block as f32 and as bf16, and the gathered bf16 result. */
    const size_t sizes[3] = {(size_t)counts[me] * sizeof(float), bytes[me], (size_t)n * sizeof(uint16_t)};
    size_t off[3] = {0};
    int rc;
    unsigned char *p = agreed_scratch(c, 0, sizes, 3, off, "all-reduce", &rc);
    if (rc) return rc;
    float *part = (float *)(p + off[0]);
    uint16_t *p16 = (uint16_t *)(p + off[1]), *all16 = (uint16_t *)(p + off[2]);
    rc = dsacp_comm_reduce_scatter_wire(c, buf, part, counts, true, phase);
    if (!rc) {
        for (int64_t i = 0; i < counts[me]; i++) p16[i] = dsacp_f32_to_bf16(part[i]);
        rc = dsacp_comm_allgatherv(c, p16, bytes[me], all16, bytes, phase);
    }
    if (!rc) {
        for (int64_t i = 0; i < n; i++) buf[i] = dsacp_bf16_to_f32(all16[i]);
        if (phase >= 0 && phase < DSACP_PHASE_COUNT) c->ctr[phase].calls--;
    }
    return rc;
}

int dsacp_comm_gatherv(dsacp_comm *c, const void *send, size_t send_bytes, void *recv,
                       const size_t *recv_bytes, int phase)
{
    if (c->solo) return solo_copy(send, recv, send_bytes);
    const double t0 = dsacp_now();
    int *buf = c->iscratch;
    int rc = make_counts(c, recv_bytes, buf, buf + c->size, "gather");
    if (!rc) {
        int err = MPI_Gatherv(send, (int)send_bytes, MPI_BYTE, recv, buf, buf + c->size, MPI_BYTE, 0, c->comm);
        if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Gatherv");
    }
    if (!rc) count(c, phase, c->rank ? (int64_t)send_bytes : 0, c->rank ? 0 : sum_others(c, recv_bytes), t0);
    return rc;
}

int dsacp_comm_bcast(dsacp_comm *c, void *buf, size_t len, int phase)
{
    if (c->solo || len == 0) return DSACP_OK;
    const double t0 = dsacp_now();
    for (size_t off = 0; off < len;) {
        size_t n = len - off > (size_t)INT_MAX ? (size_t)INT_MAX : len - off;
        int err = MPI_Bcast((uint8_t *)buf + off, (int)n, MPI_BYTE, 0, c->comm);
        if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast");
        off += n;
    }
    count(c, phase, c->rank ? 0 : (int64_t)len * (c->size - 1), c->rank ? (int64_t)len : 0, t0);
    return DSACP_OK;
}

int dsacp_comm_agree(dsacp_comm *c, int status) { return dsacp_comm_agree_phase(c, status, DSACP_PHASE_control); }

int dsacp_comm_agree_phase(dsacp_comm *c, int status, int phase)
{
    if (c->solo) return status;
    const double t0 = dsacp_now();
    int *all = c->agree_buf;
    int err = MPI_Allgather(&status, 1, MPI_INT, all, 1, MPI_INT, c->comm);
    if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Allgather (status agreement)");
    int first = -1;
    for (int q = 0; q < c->size && first < 0; q++)
        if (all[q] != DSACP_OK) first = q;
    int rc = first < 0 ? DSACP_OK : all[first];
    count(c, phase, (int64_t)sizeof(int) * (c->size - 1), (int64_t)sizeof(int) * (c->size - 1), t0);
    if (first < 0) return DSACP_OK;
    /* The failing rank's message, so that rank 0 can print the real cause. */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", dsacp_last_error());
    err = MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, c->comm);
    if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast (error message)");
    msg[sizeof msg - 1] = 0;
    if (c->rank != first) dsacp_error(rc, "rank %d: %s", first, msg);
    return rc;
}

/* ---- report ---- */

/* The counters of every rank and the notes as one JSON document (built with jansson, so that no
 * string in the notes -- a model path with quotes, a profile name -- can make it invalid). */
static json_t *report_object(const dsacp_comm *c, const double *all)
{
    const int W = c->size, P = DSACP_PHASE_COUNT;
    json_t *root = json_object(), *ranks = json_array();
    bool ok = root && ranks && !json_object_set_new(root, "world", json_integer(W)) &&
              !json_object_set_new(root, "bytes", json_string("logical bytes (docs/context-parallel.md)"));
    for (int q = 0; ok && q < W; q++) {
        json_t *r = json_object(), *phases = json_object();
        ok = r && phases && !json_object_set_new(r, "rank", json_integer(q));
        for (int p = 0; ok && p < P; p++) {
            const double *v = all + ((size_t)q * P + p) * 4;
            json_t *k = json_pack("{s:I, s:I, s:I, s:f}", "calls", (json_int_t)v[0], "bytes_sent", (json_int_t)v[1],
                                  "bytes_recv", (json_int_t)v[2], "seconds", v[3]);
            ok = k && !json_object_set_new(phases, phase_names[p], k);
        }
        if (ok) ok = !json_object_set_new(r, "phases", phases), phases = NULL;
        if (ok) ok = !json_array_append_new(ranks, r), r = NULL;
        json_decref(phases);
        json_decref(r);
    }
    if (ok) ok = !json_object_set_new(root, "ranks", ranks), ranks = NULL;
    /* The notes' members beside the counters (a member named like one of them replaces it). */
    if (ok && c->notes) ok = !json_object_update(root, c->notes);
    json_decref(ranks);
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

int dsacp_comm_report_json(dsacp_comm *c, char **json_out)
{
    *json_out = NULL;
    const int W = c->size, P = DSACP_PHASE_COUNT;
    double *mine = calloc((size_t)P * 4, sizeof *mine);
    double *all = c->rank == 0 ? calloc((size_t)P * 4 * (size_t)W, sizeof *all) : NULL;
    int rc = (mine && (c->rank || all)) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "comm report: out of memory");
    /* Every rank learns whether every rank can take part before the gather (no rank is left
     * waiting in it); uncounted, so that the report holds exactly the run's counters. */
    rc = dsacp_comm_agree_phase(c, rc, -1);
    if (!rc) {
        for (int p = 0; p < P; p++) {
            mine[p * 4 + 0] = (double)c->ctr[p].calls;
            mine[p * 4 + 1] = (double)c->ctr[p].bytes_sent;
            mine[p * 4 + 2] = (double)c->ctr[p].bytes_recv;
            mine[p * 4 + 3] = c->ctr[p].seconds;
        }
        if (c->solo) memcpy(all, mine, (size_t)P * 4 * sizeof *mine);
        else {
            int err = MPI_Gather(mine, P * 4, MPI_DOUBLE, all, P * 4, MPI_DOUBLE, 0, c->comm);
            if (err != MPI_SUCCESS) rc = mpi_fail(err, "MPI_Gather (comm report)");
        }
    }
    char *text = NULL;
    if (!rc && c->rank == 0) {
        json_t *root = report_object(c, all);
        text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_decref(root);
        if (!text) rc = dsacp_error(DSACP_ENOMEM, "comm report: out of memory building the JSON");
    }
    free(mine);
    free(all);
    rc = dsacp_comm_agree_phase(c, rc, -1);
    if (rc) {
        free(text);
        return rc;
    }
    *json_out = text;
    return DSACP_OK;
}

int dsacp_comm_write_report(dsacp_comm *c, const char *path)
{
    char *text = NULL;
    int rc = dsacp_comm_report_json(c, &text);
    if (rc) return rc;
    if (c->rank == 0) {
        /* jansson's text ends without a newline; the file ends with one. */
        const size_t n = strlen(text);
        char *t = realloc(text, n + 2);
        if (!t) rc = dsacp_error(DSACP_ENOMEM, "comm report: out of memory");
        else {
            text = t;
            text[n] = '\n', text[n + 1] = 0;
            rc = dsacp_write_file_atomic(path, text, n + 1);
        }
    }
    free(text);
    return dsacp_comm_agree(c, rc);
}

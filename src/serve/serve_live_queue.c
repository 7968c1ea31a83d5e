/*
 * serve_live_queue.c -- the online loop's queue, slots and events (serve_live.h; docs/serving.md
 * "Online"): what other threads of rank 0 call (submit, abort, shutdown, stats) and the hooks the
 * loop calls at each plan and step (serve_loop.h). Below serve.c and serve_plan.c; calls the
 * engine and core only.
 */
#include "serve/serve_live.h"
#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double dsacp_live_now(void) { return dsacp_now(); }

/* ---- growable arrays ---- */

int dsacp_live_grow(void **p, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap) return DSACP_OK;
    int64_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return dsacp_error(DSACP_ENOMEM, "out of memory for the online loop's queue");
    *p = q, *cap = c;
    return DSACP_OK;
}

int dsacp_live_slots_grow(dsacp_live *lv, int64_t cap)
{
    sched *S = &lv->S;
    const size_t n1 = (size_t)cap + 1;
#define GROW(ptr, count)                                                                   \
    do {                                                                                   \
        void *q_ = realloc((ptr), (count) * sizeof *(ptr));                                \
        if (!q_) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld online requests", (long long)cap); \
        (ptr) = q_;                                                                        \
    } while (0)
    GROW(S->r, (size_t)cap);
    GROW(S->eid, (size_t)cap);
    GROW(S->ent_s, n1);
    GROW(S->ent_n, n1);
    GROW(S->ent_k, n1);
    GROW(S->ent_a, n1);
    GROW(S->fit_id, n1);
    GROW(S->fit_len, n1);
    GROW(S->order, 2 * n1);
    GROW(lv->res.out, (size_t)cap);
    GROW(lv->S.lrq, (size_t)cap);
    GROW(lv->slot_id, (size_t)cap);
    GROW(lv->slot_user, (size_t)cap);
#undef GROW
    for (int64_t s = lv->cap; s < cap; s++) {
        memset(&S->r[s], 0, sizeof S->r[s]);
        S->r[s].state = ST_DONE;
        S->eid[s] = -1;
        memset(&lv->res.out[s], 0, sizeof lv->res.out[s]);
        memset(&S->lrq[s], 0, sizeof S->lrq[s]);
        lv->slot_id[s] = 0, lv->slot_user[s] = NULL;
    }
    for (int64_t s = lv->cap; s < (int64_t)n1; s++) S->ent_k[s] = 0, S->ent_a[s] = 0;
    lv->cap = S->n = cap;
    lv->res.n_requests = cap;
    S->rq = S->lrq;
    return DSACP_OK;
}

int dsacp_live_reserve(sched *S, int64_t s)
{
    if (s < S->n) return DSACP_OK;
    const int64_t cap = s + 1 > 2 * S->n ? s + 1 : 2 * S->n;
    int64_t *n = realloc(S->eid, (size_t)cap * sizeof *n);
    if (!n) return dsacp_error(DSACP_ENOMEM, "out of memory for %lld online requests", (long long)cap);
    for (int64_t i = S->n; i < cap; i++) n[i] = -1;
    S->eid = n, S->n = cap;
    return DSACP_OK;
}

/* ---- events ---- */

/* Queues an event of slot s (or of a request without a slot: s = -1, id and user given). */
static int event_push(dsacp_live *lv, int64_t s, uint64_t id, void *user, int32_t tok, dsacp_finish fin, int status,
                      const char *msg, int64_t prompt_len)
{
    if (dsacp_live_grow((void **)&lv->ev, &lv->cap_ev, lv->n_ev + 1, sizeof *lv->ev) ||
        dsacp_live_grow((void **)&lv->ev_msg, &lv->cap_msg, lv->n_ev + 1, sizeof *lv->ev_msg))
        return DSACP_ENOMEM;
    const dsacp_serve_out *out = s >= 0 ? &lv->res.out[s] : NULL;
    lv->ev_msg[lv->n_ev] = msg ? strdup(msg) : NULL;
    lv->ev[lv->n_ev++] = (dsacp_live_event){
        .id = s >= 0 ? lv->slot_id[s] : id, .user = s >= 0 ? lv->slot_user[s] : user, .token = tok, .finish = fin,
        .status = status, .message = "", .prompt_tokens = s >= 0 ? lv->S.lrq[s].prompt_len : prompt_len,
        .n_generated = out ? out->n_tokens : 0, .preemptions = out ? out->preemptions : 0, .t_s = dsacp_now()};
    return DSACP_OK;
}

static void ids_remove(dsacp_live *lv, uint64_t id)
{
    for (int64_t i = 0; i < lv->n_ids; i++)
        if (lv->ids[i] == id) {
            lv->ids[i] = lv->ids[--lv->n_ids];
            return;
        }
}

/* Hands the queued events to the sink (no lock held: it may submit or abort). */
static void events_flush(dsacp_live *lv)
{
    for (int64_t i = 0; i < lv->n_ev; i++) {
        dsacp_live_event *ev = &lv->ev[i];
        ev->message = lv->ev_msg[i] ? lv->ev_msg[i] : "";
        if (ev->finish != DSACP_FINISH_NONE) {
            pthread_mutex_lock(&lv->mu);
            ids_remove(lv, ev->id);
            lv->stats.finished[ev->finish]++;
            pthread_mutex_unlock(&lv->mu);
        }
        if (lv->sink) lv->sink(lv->sink_arg, ev);
        free(lv->ev_msg[i]);
        lv->ev_msg[i] = NULL;
    }
    lv->n_ev = 0;
}

/* ---- submissions ---- */

static int check_request(const dsacp_live *lv, const dsacp_live_request *q)
{
    const dsacp_config *cfg = dsacp_engine_config(lv->e);
    const int64_t V = cfg->vocab_size, maxpos = cfg->max_position_embeddings;
    if (!q || q->prompt_len < 1 || !q->prompt)
        return dsacp_error(DSACP_EINVAL, "prompt: a request needs at least one prompt token");
    if (q->prompt_len > maxpos)
        return dsacp_error(DSACP_EINVAL, "prompt: %lld tokens, more than the model's max_position_embeddings %lld",
                           (long long)q->prompt_len, (long long)maxpos);
    if (q->max_new_tokens < 1 || q->max_new_tokens > maxpos - q->prompt_len)
        return dsacp_error(DSACP_EINVAL, "max_new_tokens: %lld must be >= 1 and with the prompt's %lld tokens within "
                           "max_position_embeddings %lld", (long long)q->max_new_tokens, (long long)q->prompt_len,
                           (long long)maxpos);
    if (!(q->temperature >= 0) || !isfinite(q->temperature))
        return dsacp_error(DSACP_EINVAL, "temperature: %g must be finite and >= 0", q->temperature);
    if (!(q->top_p > 0 && q->top_p <= 1)) return dsacp_error(DSACP_EINVAL, "top_p: %g must be in (0, 1]", q->top_p);
    if (q->n_stop < 0 || (q->n_stop > 0 && !q->stop_ids))
        return dsacp_error(DSACP_EINVAL, "stop_ids: %lld of them without an array", (long long)q->n_stop);
    for (int64_t j = 0; j < q->prompt_len; j++)
        if (q->prompt[j] < 0 || q->prompt[j] >= V)
            return dsacp_error(DSACP_EINVAL, "prompt: token %lld = %d is outside the vocabulary [0, %lld)",
                               (long long)j, q->prompt[j], (long long)V);
    return DSACP_OK;
}

int dsacp_live_submit(dsacp_live *lv, const dsacp_live_request *rq, uint64_t *id)
{
    if (!lv || !id) return dsacp_error(DSACP_EINVAL, "dsacp_live_submit: lv and id must not be NULL");
    if (!lv->root) return dsacp_error(DSACP_EINVAL, "dsacp_live_submit: only rank 0 submits");
    int rc = check_request(lv, rq);
    if (rc) return rc;
    pending p = {.rq = *rq};
    p.prompt = malloc((size_t)rq->prompt_len * sizeof *p.prompt);
    p.stop = malloc((size_t)(rq->n_stop > 0 ? rq->n_stop : 1) * sizeof *p.stop);
    if (!p.prompt || !p.stop) {
        free(p.prompt), free(p.stop);
        return dsacp_error(DSACP_ENOMEM, "out of memory for a request of %lld tokens", (long long)rq->prompt_len);
    }
    memcpy(p.prompt, rq->prompt, (size_t)rq->prompt_len * sizeof *p.prompt);
    if (rq->n_stop > 0) memcpy(p.stop, rq->stop_ids, (size_t)rq->n_stop * sizeof *p.stop);
    pthread_mutex_lock(&lv->mu);
    if (atomic_load(&lv->shut) || lv->failed)
        rc = dsacp_error(DSACP_EBUSY, "the server is stopping: no new requests");
    else if (lv->n_pend + lv->waiting >= lv->opt.max_waiting)
        rc = dsacp_error(DSACP_EBUSY, "%lld requests are waiting already (max_waiting)", (long long)lv->opt.max_waiting);
    else if (!(rc = dsacp_live_grow((void **)&lv->pend, &lv->cap_pend, lv->n_pend + 1, sizeof *lv->pend)) &&
             !(rc = dsacp_live_grow((void **)&lv->ids, &lv->cap_ids, lv->n_ids + 1, sizeof *lv->ids))) {
        p.id = ++lv->next_id;
        lv->pend[lv->n_pend++] = p;
        lv->ids[lv->n_ids++] = p.id;
        *id = p.id;
        pthread_cond_signal(&lv->cv);
    }
    pthread_mutex_unlock(&lv->mu);
    if (rc) free(p.prompt), free(p.stop);
    return rc;
}

int dsacp_live_abort(dsacp_live *lv, uint64_t id)
{
    if (!lv) return dsacp_error(DSACP_EINVAL, "dsacp_live_abort: lv must not be NULL");
    int rc = DSACP_OK;
    pthread_mutex_lock(&lv->mu);
    bool live = false;
    for (int64_t i = 0; i < lv->n_ids && !live; i++) live = lv->ids[i] == id;
    if (!live) rc = dsacp_error(DSACP_ENOTFOUND, "request %llu is not in flight", (unsigned long long)id);
    else if (!(rc = dsacp_live_grow((void **)&lv->aborts, &lv->cap_abort, lv->n_abort + 1, sizeof *lv->aborts))) {
        lv->aborts[lv->n_abort++] = id;
        pthread_cond_signal(&lv->cv);
    }
    pthread_mutex_unlock(&lv->mu);
    return rc;
}

void dsacp_live_shutdown(dsacp_live *lv, bool abort_all)
{
    if (!lv) return;
    const int want = abort_all ? 2 : 1;
    int cur = atomic_load(&lv->shut);
    while (cur < want && !atomic_compare_exchange_weak(&lv->shut, &cur, want)) {
    }
}

void dsacp_live_get_stats(dsacp_live *lv, dsacp_live_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!lv) return;
    pthread_mutex_lock(&lv->mu);
    *out = lv->stats;
    out->waiting += lv->n_pend;
    pthread_mutex_unlock(&lv->mu);
}

/* ---- the loop's side ---- */

/* Slot s takes pending request p (the slot is free: its request ended on every rank). */
static int slot_fill(dsacp_live *lv, int64_t s, pending *p)
{
    sched *S = &lv->S;
    sreq *r = &S->r[s];
    dsacp_serve_out *out = &lv->res.out[s];
    dsacp_serve_request *q = &S->lrq[s];
    free(q->prompt), free((void *)q->stop_ids), free(r->seq), free(r->chunks);
    free(out->tokens), free(out->token_s), free(out->gap);
    memset(r, 0, sizeof *r), memset(out, 0, sizeof *out), memset(q, 0, sizeof *q);
    r->state = ST_DONE; /* free until filled */
    const int64_t n = p->rq.max_new_tokens + 1;
    r->cap = p->rq.prompt_len + n;
    r->seq = malloc((size_t)r->cap * sizeof *r->seq);
    out->tokens = malloc((size_t)n * sizeof *out->tokens);
    out->token_s = malloc((size_t)n * sizeof *out->token_s);
    out->gap = malloc((size_t)n * sizeof *out->gap);
    if (!r->seq || !out->tokens || !out->token_s || !out->gap)
        return dsacp_error(DSACP_ENOMEM, "out of memory for a request of %lld tokens", (long long)p->rq.prompt_len);
    memcpy(r->seq, p->prompt, (size_t)p->rq.prompt_len * sizeof *r->seq);
    r->len = p->rq.prompt_len;
    r->admit = -2; /* not preempted: queued by arrival */
    r->temperature = p->rq.temperature, r->top_p = p->rq.top_p, r->seed = p->rq.seed, r->rng_req = 0;
    *q = (dsacp_serve_request){.prompt = p->prompt, .prompt_len = p->rq.prompt_len, .max_new_tokens = p->rq.max_new_tokens,
                               .stop_ids = p->stop, .n_stop = p->rq.n_stop, .arrival_s = (double)lv->seq++};
    p->prompt = p->stop = NULL; /* the slot owns them now */
    lv->slot_id[s] = p->id, lv->slot_user[s] = p->rq.user;
    r->state = ST_WAITING;
    return DSACP_OK;
}

static int64_t free_slot(const dsacp_live *lv)
{
    for (int64_t s = 0; s < lv->cap; s++)
        if (lv->S.r[s].state == ST_DONE && lv->S.eid[s] < 0 && lv->slot_id[s] == 0) return s;
    return -1;
}

/* Takes one pending request into a slot, or answers it with a final error event. */
static int admit_pending(dsacp_live *lv, pending *p)
{
    const int64_t cached = p->rq.prompt_len + p->rq.max_new_tokens - 1;
    int rc = DSACP_OK;
    if (!dsacp_engine_fits_alone(lv->e, cached)) {
        char msg[256];
        snprintf(msg, sizeof msg, "the request (%lld tokens cached with its output) does not fit the KV pool even alone",
                 (long long)cached);
        rc = event_push(lv, -1, p->id, p->rq.user, -1, DSACP_FINISH_ERROR, DSACP_ECAPACITY, msg, p->rq.prompt_len);
    } else {
        int64_t s = free_slot(lv);
        if (s < 0 && !(rc = dsacp_live_slots_grow(lv, lv->cap ? 2 * lv->cap : 16))) s = free_slot(lv);
        if (!rc) rc = slot_fill(lv, s, p);
        if (!rc) {
            pthread_mutex_lock(&lv->mu);
            lv->stats.prompt_tokens += p->rq.prompt_len;
            pthread_mutex_unlock(&lv->mu);
        }
    }
    free(p->prompt), free(p->stop);
    return rc;
}

/* Ends slot s's request (an abort): its engine request is ended by this plan on every rank. */
static int slot_abort(dsacp_live *lv, int64_t s)
{
    lv->S.r[s].state = ST_DONE;
    int rc = event_push(lv, s, 0, NULL, -1, DSACP_FINISH_ABORT, DSACP_OK, NULL, 0);
    lv->slot_id[s] = 0, lv->slot_user[s] = NULL;
    return rc;
}

static bool slot_active(const dsacp_live *lv, int64_t s)
{
    const int st = lv->S.r[s].state;
    return lv->slot_id[s] != 0 && (st == ST_WAITING || st == ST_RUNNING);
}

/* Takes what other threads queued: submissions into slots, then aborts. */
static int take_queued(dsacp_live *lv, int *shut, bool *any)
{
    pthread_mutex_lock(&lv->mu);
    pending *pend = lv->pend;
    const int64_t n_pend = lv->n_pend;
    uint64_t *ab = lv->aborts;
    const int64_t n_ab = lv->n_abort;
    lv->pend = NULL, lv->n_pend = lv->cap_pend = 0;
    lv->aborts = NULL, lv->n_abort = lv->cap_abort = 0;
    *shut = atomic_load(&lv->shut);
    pthread_mutex_unlock(&lv->mu);
    int rc = DSACP_OK;
    for (int64_t i = 0; i < n_pend; i++) {
        int r2 = rc ? DSACP_OK : admit_pending(lv, &pend[i]);
        if (rc) free(pend[i].prompt), free(pend[i].stop);
        rc = rc ? rc : r2;
    }
    for (int64_t i = 0; i < n_ab && !rc; i++)
        for (int64_t s = 0; s < lv->cap; s++)
            if (lv->slot_id[s] == ab[i] && slot_active(lv, s)) {
                rc = slot_abort(lv, s);
                break;
            }
    free(pend), free(ab);
    *any = n_pend > 0 || n_ab > 0;
    return rc;
}

int dsacp_live_plan_begin(sched *S, loop *L, bool *over)
{
    (void)L;
    dsacp_live *lv = S->live;
    *over = false;
    int shut = 0;
    bool any = false;
    int rc = take_queued(lv, &shut, &any);
    bool active = false, ends = false;
    for (int64_t s = 0; s < lv->cap && !rc; s++) active |= slot_active(lv, s), ends |= S->r[s].state == ST_DONE && S->eid[s] >= 0;
    /* Idle: wait a little for a submission -- unless requests that just ended still hold blocks:
     * this plan ends them first, so the KV gauge reads 0 as soon as the last request is done. */
    if (!rc && !active && !any && !shut && !ends) {
        pthread_mutex_lock(&lv->mu);
        if (lv->n_pend == 0 && lv->n_abort == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += (long)(LIVE_IDLE_S * 1e9);
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&lv->cv, &lv->mu, &ts);
        }
        pthread_mutex_unlock(&lv->mu);
        rc = take_queued(lv, &shut, &any);
        for (int64_t s = 0; s < lv->cap && !rc; s++) active |= slot_active(lv, s);
    }
    if (!rc && shut == 2)
        for (int64_t s = 0; s < lv->cap && !rc; s++)
            if (slot_active(lv, s)) rc = slot_abort(lv, s), active = false;
    if (!rc && shut) {
        active = false;
        for (int64_t s = 0; s < lv->cap; s++) active |= slot_active(lv, s);
        pthread_mutex_lock(&lv->mu);
        *over = !active && lv->n_pend == 0;
        pthread_mutex_unlock(&lv->mu);
    }
    events_flush(lv);
    return rc;
}

int dsacp_live_token(sched *S, loop *L, int64_t s, int32_t tok, bool stopped)
{
    (void)L;
    dsacp_live *lv = S->live;
    dsacp_finish fin = DSACP_FINISH_NONE;
    if (stopped) {
        fin = DSACP_FINISH_LENGTH;
        for (int64_t k = 0; k < S->rq[s].n_stop; k++)
            if (S->rq[s].stop_ids[k] == tok) fin = DSACP_FINISH_STOP;
    }
    lv->gen_step++;
    int rc = event_push(lv, s, 0, NULL, tok, fin, DSACP_OK, NULL, 0);
    if (stopped) lv->slot_id[s] = 0, lv->slot_user[s] = NULL;
    return rc;
}

void dsacp_live_stats_update(sched *S)
{
    dsacp_live *lv = S->live;
    int64_t running = 0, waiting = 0;
    for (int64_t s = 0; s < lv->cap; s++) {
        running += lv->slot_id[s] != 0 && S->r[s].state == ST_RUNNING;
        waiting += lv->slot_id[s] != 0 && S->r[s].state == ST_WAITING;
    }
    const double kv = dsacp_engine_kv_use(lv->e);
    pthread_mutex_lock(&lv->mu);
    lv->stats.running = running;
    lv->stats.waiting = waiting;
    lv->waiting = waiting;
    lv->stats.kv_use = kv;
    lv->stats.preemptions = lv->res.preemptions;
    lv->stats.generation_tokens += lv->gen_step;
    pthread_mutex_unlock(&lv->mu);
    lv->gen_step = 0;
}

void dsacp_live_step_end(sched *S, loop *L)
{
    (void)L;
    dsacp_live *lv = S->live;
    dsacp_live_stats_update(S);
    pthread_mutex_lock(&lv->mu);
    lv->stats.steps++;
    pthread_mutex_unlock(&lv->mu);
    lv->res.n_steps = 0; /* an online loop keeps no step records */
    events_flush(lv);
}

/* After a failed run: every request in flight gets a final error event; no more submissions. */
void dsacp_live_fail_all(dsacp_live *lv, int status)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", dsacp_last_error());
    pthread_mutex_lock(&lv->mu);
    lv->failed = true;
    pending *pend = lv->pend;
    const int64_t n_pend = lv->n_pend;
    lv->pend = NULL, lv->n_pend = lv->cap_pend = 0;
    pthread_mutex_unlock(&lv->mu);
    for (int64_t i = 0; i < n_pend; i++) {
        event_push(lv, -1, pend[i].id, pend[i].rq.user, -1, DSACP_FINISH_ERROR, status, msg, pend[i].rq.prompt_len);
        free(pend[i].prompt), free(pend[i].stop);
    }
    free(pend);
    for (int64_t s = 0; s < lv->cap; s++)
        if (lv->slot_id[s] != 0) {
            event_push(lv, s, 0, NULL, -1, DSACP_FINISH_ERROR, status, msg, 0);
            lv->slot_id[s] = 0;
        }
    events_flush(lv);
    dsacp_error(status, "%s", msg);
}


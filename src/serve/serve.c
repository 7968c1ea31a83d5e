/*
 * serve.c -- the serving loop (serve.h; docs/serving.md).
 *
 * Rank 0 owns the requests and the scheduler; every step it builds a plan -- requests to end
 * (finished or preempted), requests to add, the step's entries and their token ids -- applies it
 * to its own engine and broadcasts it (phase `input`); the other ranks apply the same plan, so
 * every rank's engine holds the same requests under the same ids and runs the same steps.
 *
 * Scheduling (build_step): per step, within `max_batch_tokens`, decode tokens of running requests
 * (oldest admitted first), then prefill chunks of running requests, then new requests while the
 * budget and the KV pools of every rank (dsacp_engine_fits) allow. A running request -- decoding
 * or mid-prefill -- that cannot get one token into the pools preempts the youngest running
 * request admitted after it: its blocks are freed and it goes back to the head of the queue with
 * its prompt and generated tokens, to be recomputed (vLLM's recompute preemption). The oldest
 * running request is never preempted and always runs, so every request finishes: each fits every
 * rank's pool alone (checked up front).
 *
 * Disaggregated (docs/disaggregation.md): with a link (dsacp_serve_options.pd) the same loop runs
 * in each group. The producer's leader asks the consumer's leader to reserve each arrived
 * request's prompt (ASK), admits a request to prefill only once granted (GRANT: back-pressure, the
 * consumer's pool decides), runs prefill chunks whose entries the link sends layer by layer, and
 * samples the first token, which it sends with the chunks it ran (DONE). The consumer's leader
 * grants asked requests in ask order while its pool holds their prompts, and activates a request
 * once DONE arrived and every consumer rank received its entries; the request then decodes like any
 * other. A consumer that must preempt recomputes the victim itself (chunked prefill on the consumer,
 * as kv_both does): the producer's entries are not asked for again.
 */
#include "serve/serve_loop.h"
#include "serve/serve_spec.h"
#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void dsacp_serve_options_default(dsacp_serve_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_batch_tokens = 2048;
    o->max_num_seqs = 256;
    o->top_p = 1.0;
    o->realtime = true;
}

void dsacp_serve_result_free(dsacp_serve_result *r)
{
    for (int64_t i = 0; r->out && i < r->n_requests; i++) {
        free(r->out[i].tokens);
        free(r->out[i].token_s);
        free(r->out[i].gap);
    }
    free(r->out);
    free(r->steps);
    memset(r, 0, sizeof *r);
}


/* The activations of a consumer's plan, first in the plan (every rank but 0): [n_act, (s,
 * n_chunks, a0, b0, ...)...]. They come before the ends because the leader activates before it
 * schedules, and a request it activated may be preempted by the same plan. *k moves past them. */
static int plan_apply_acts(dsacp_pd *pd, const int64_t *w, int64_t *k, bool structural)
{
    int rc = DSACP_OK;
    const int64_t n_act = w[(*k)++];
    for (int64_t i = 0; i < n_act; i++) {
        const int64_t s = w[*k], nc = w[*k + 1];
        if (structural && !rc) rc = dsacp_pd_import_finish(pd, s, w + *k + 2, nc);
        *k += 2 + 2 * nc;
    }
    return rc;
}

/* The imports of a consumer's plan, after its adds (the leader grants after it admits):
 * [n_imp, (s, length)...]. */
static int plan_apply_imps(dsacp_engine *e, dsacp_pd *pd, const int64_t *w, int64_t *k, int64_t *eid, bool structural)
{
    int rc = DSACP_OK;
    const int64_t n_imp = w[(*k)++];
    for (int64_t i = 0; i < n_imp; i++, *k += 2)
        if (structural && !rc && !(rc = dsacp_engine_import_begin(e, w[*k + 1], &eid[w[*k]])))
            rc = dsacp_pd_import_add(pd, w[*k], eid[w[*k]], w[*k + 1]);
    return rc;
}

/* The step's entries as a plan gives them (every rank; rank 0 builds its own the same way). */
typedef struct step_ents {
    dsacp_step_entry *ent;
    dsacp_entry_opts *opts; /* with speculation: a verify entry's flags and n_logits */
    int32_t *ids;
    int64_t *ent_s, n;
} step_ents;

static void step_ents_free(step_ents *se)
{
    free(se->ent), free(se->opts), free(se->ids), free(se->ent_s);
    memset(se, 0, sizeof *se);
}

/* With speculation, the cut backs of the last step's verify entries (ngram; rank 0 made them at
 * once): [n_trunc, (s, length)...], after the activations. */
static int plan_apply_truncs(sched *S, const int64_t *w, int64_t *k, bool structural)
{
    int rc = DSACP_OK;
    const int64_t n = S->o->spec.method != DSACP_SPEC_NONE ? w[(*k)++] : 0;
    for (int64_t i = 0; i < n; i++, *k += 2)
        if (structural && !rc) rc = dsacp_spec_cut_back(S, w[*k], w[*k + 1]);
    return rc;
}

/* The entries of a plan: [n, (s, c[, k])..., token ids], k (speculation only) the drafts of a
 * verify entry. */
static int plan_apply_entries(sched *S, const int64_t *w, int64_t k, step_ents *se)
{
    const int64_t n = w[k++], per = S->o->spec.method != DSACP_SPEC_NONE ? 3 : 2;
    int64_t T = 0;
    for (int64_t i = 0; i < n; i++) T += w[k + per * i + 1];
    se->ent = malloc((size_t)(n > 0 ? n : 1) * sizeof *se->ent);
    se->opts = calloc((size_t)(n > 0 ? n : 1), sizeof *se->opts);
    se->ids = malloc((size_t)(T > 0 ? T : 1) * sizeof *se->ids);
    se->ent_s = malloc((size_t)(n > 0 ? n : 1) * sizeof *se->ent_s);
    if (!se->ent || !se->opts || !se->ids || !se->ent_s) return dsacp_error(DSACP_ENOMEM, "out of memory");
    const int64_t *tok = w + k + per * n;
    for (int64_t i = 0, t = 0; i < n; i++) {
        const int64_t s = w[k + per * i], c = w[k + per * i + 1], nd = per == 3 ? w[k + per * i + 2] : 0;
        for (int64_t j = 0; j < c; j++) se->ids[t + j] = (int32_t)tok[t + j];
        se->ent_s[i] = s;
        se->ent[i] = (dsacp_step_entry){S->eid[s], c, se->ids + t};
        se->opts[i] = (dsacp_entry_opts){nd > 0 ? nd + 1 : 1, nd > 0 ? DSACP_ENTRY_VERIFY : 0u};
        t += c;
    }
    se->n = n;
    return DSACP_OK;
}

/* Applies the ends and adds of a plan (every rank but 0, which applied them while planning), and
 * returns the step's entries. S->eid: serve index -> engine id. */
static int plan_apply(sched *S, const plan *p, bool structural, step_ents *se)
{
    const int64_t *w = p->w;
    int64_t k = 0;
    int rc = plan_apply_acts(S->pd, w, &k, structural);
    if (!rc) rc = plan_apply_truncs(S, w, &k, structural);
    if (rc) return rc;
    const int64_t n_end = w[k++];
    for (int64_t i = 0; i < n_end; i++, k++)
        if (structural) {
            rc = dsacp_engine_end_request(S->e, S->eid[w[k]]);
            S->eid[w[k]] = -1;
            if (rc) return rc;
        }
    const int64_t n_add = w[k++];
    for (int64_t i = 0; i < n_add; i++, k++) {
        if (structural && S->live && (rc = dsacp_live_reserve(S, w[k]))) return rc;
        if (structural && (rc = dsacp_engine_add_request(S->e, &S->eid[w[k]]))) return rc;
    }
    if ((rc = plan_apply_imps(S->e, S->pd, w, &k, S->eid, structural))) return rc;
    return plan_apply_entries(S, w, k, se);
}

/* ---- sampling ---- */


/* Descending probability, then the lower id: a total order, so the draw is deterministic. */
static int prob_desc(const void *a, const void *b)
{
    const prob *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Greedy: the first largest logit. Otherwise softmax(logits / T) restricted to the smallest set of
 * tokens whose probability reaches top_p, drawn with a generator seeded by (seed, request, index),
 * so a token does not depend on the batch it was computed in. The request's own sampling (a batch
 * run's options with seed + request index, or an online request's own). work: V entries. */
static int32_t sample(const float *logits, int64_t V, const sreq *r, int64_t index, prob *work)
{
    const int64_t best = dsacp_spec_argmax(logits, V);
    if (r->temperature <= 0) return (int32_t)best;
    double sum = 0;
    for (int64_t i = 0; i < V; i++) {
        work[i] = (prob){(float)exp((logits[i] - logits[best]) / r->temperature), (int32_t)i};
        sum += work[i].p;
    }
    qsort(work, (size_t)V, sizeof *work, prob_desc);
    double keep = 0;
    int64_t n = 0;
    while (n < V && (n == 0 || keep < r->top_p * sum)) keep += work[n++].p;
    dsacp_rng rng;
    dsacp_spec_rng(&rng, r->seed, r->rng_req, index);
    const double u = dsacp_rng_uniform(&rng) * keep;
    double acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += work[i].p;
        if (u < acc) return work[i].id;
    }
    return work[n - 1].id;
}

static void sleep_s(double s)
{
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int64_t comm_recv_total(dsacp_comm *c, double *seconds)
{
    int64_t b = 0;
    *seconds = 0;
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        dsacp_comm_counter k = dsacp_comm_get_counter(c, p);
        b += k.bytes_recv;
        *seconds += k.seconds;
    }
    return b;
}

/* ---- rank 0 ---- */


/* Would the step so far plus (request s growing by c) fit every rank's pool? */
static bool fits_with(sched *S, int64_t s, int64_t c)
{
    const int64_t k = S->n_ent;
    for (int64_t i = 0; i < k; i++) {
        S->fit_id[i] = S->eid[S->ent_s[i]];
        S->fit_len[i] = S->r[S->ent_s[i]].fed + S->ent_n[i];
    }
    S->fit_id[k] = S->eid[s];
    S->fit_len[k] = S->r[s].fed + c;
    return dsacp_engine_fits(S->e, S->fit_id, S->fit_len, k + 1);
}

/* The index of request s's entry in the step so far, -1 when it has none. */
static int64_t entry_of(const sched *S, int64_t s)
{
    for (int64_t i = 0; i < S->n_ent; i++)
        if (S->ent_s[i] == s) return i;
    return -1;
}

/* The largest chunk in [0, want] of request s that fits every rank's pool beside the step so far
 * (the blocks a request needs grow with its length on every rank, so a bisection finds it). */
static int64_t largest_fit(sched *S, int64_t s, int64_t want)
{
    if (want < 1 || !fits_with(S, s, 1)) return 0;
    int64_t lo = 1, hi = want;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (fits_with(S, s, mid)) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Preempts the youngest running request admitted after request s (recompute later): its blocks
 * are freed, its entry in this step (if any) is withdrawn and its tokens go back to the budget,
 * and it returns to the head of the queue. *victim = -1 when no running request is younger. */
static int preempt_younger_than(sched *S, int64_t s, int64_t *budget, int64_t *victim)
{
    int64_t v = -1;
    for (int64_t i = 0; i < S->n; i++)
        if (S->r[i].state == ST_RUNNING && S->r[i].admit > S->r[s].admit && (v < 0 || S->r[i].admit > S->r[v].admit)) v = i;
    *victim = v;
    if (v < 0) return DSACP_OK;
    const int64_t k = entry_of(S, v);
    if (k >= 0) {
        *budget += S->ent_n[k];
        for (int64_t i = k + 1; i < S->n_ent; i++)
            S->ent_s[i - 1] = S->ent_s[i], S->ent_n[i - 1] = S->ent_n[i], S->ent_k[i - 1] = S->ent_k[i];
        S->n_ent--;
    }
    int rc = dsacp_engine_end_request(S->e, S->eid[v]);
    if (!rc) rc = dsacp_serve_plan_push(&S->ends, v);
    S->eid[v] = -1;
    S->r[v].fed = 0;
    S->r[v].n_draft = 0; /* a preempted request loses its drafts */
    S->r[v].state = ST_WAITING;
    S->r[v].admit = -1; /* back to the head of the queue */
    S->res->out[v].preemptions++;
    S->res->preemptions++;
    return rc;
}

static void add_entry(sched *S, int64_t s, int64_t c)
{
    S->ent_s[S->n_ent] = s;
    S->ent_n[S->n_ent] = c;
    S->ent_k[S->n_ent] = 0;
    S->n_ent++;
}

/* The next waiting request: preempted ones first (they were admitted before), then by arrival. */
static int64_t next_waiting(const sched *S)
{
    int64_t best = -1;
    for (int64_t s = 0; s < S->n; s++) {
        if (S->r[s].state != ST_WAITING || (S->role == DSACP_KV_PRODUCER && !S->r[s].granted)) continue;
        if (best < 0) best = s;
        else if (S->r[s].admit == -1 && S->r[best].admit != -1) best = s;
        else if ((S->r[s].admit == -1) == (S->r[best].admit == -1) && S->rq[s].arrival_s < S->rq[best].arrival_s) best = s;
    }
    return best;
}

/* Schedules running request s for up to `want` tokens (its decode token, or its next prefill
 * chunk within the budget): the largest chunk that fits every rank's pool; when not even one
 * token fits, the youngest running requests admitted after s are preempted one by one until it
 * does. With none younger left, s gets nothing this step and keeps its blocks. *short_of_pool:
 * set when s got less than `want` because of the pools (not the budget). */
static int schedule_running(sched *S, int64_t s, int64_t want, int64_t *budget, bool *short_of_pool)
{
    if (want > *budget) want = *budget;
    if (want < 1) return DSACP_OK;
    int64_t c;
    while ((c = largest_fit(S, s, want)) == 0) {
        int64_t v;
        int rc = preempt_younger_than(S, s, budget, &v);
        if (rc) return rc;
        if (v < 0) break;
    }
    if (c < want) *short_of_pool = true;
    if (c > 0) add_entry(S, s, c), *budget -= c;
    return DSACP_OK;
}

/* Consumer: grants asked requests in ask order (none overtakes another) while every rank's pool
 * holds the prompt beside the step so far and the running and importing requests stay within
 * max_num_seqs: the prompt's blocks are reserved (an import, in the plan) and the producer told. */
static int grant_asked(sched *S, int64_t running)
{
    int64_t importing = 0;
    for (int64_t s = 0; s < S->n; s++) importing += S->r[s].state == ST_IMPORTING;
    while (running + importing < S->o->max_num_seqs) {
        int64_t s = -1;
        for (int64_t i = 0; i < S->n; i++)
            if (S->r[i].state == ST_ASKED && (s < 0 || S->r[i].ask < S->r[s].ask)) s = i;
        if (s < 0) return DSACP_OK;
        const int64_t len = S->rq[s].prompt_len;
        if (!fits_with(S, s, len)) return DSACP_OK;
        int rc = dsacp_engine_import_begin(S->e, len, &S->eid[s]);
        if (!rc) rc = dsacp_pd_import_add(S->pd, s, S->eid[s], len);
        if (!rc && !(rc = dsacp_serve_plan_push(&S->imps, s))) rc = dsacp_serve_plan_push(&S->imps, len);
        const int64_t g[2] = {DSACP_PD_GRANT, s};
        if (!rc) rc = dsacp_pd_ctl_send(S->pd, g, 2);
        if (rc) return rc;
        S->r[s].state = ST_IMPORTING;
        importing++;
    }
    return DSACP_OK;
}

/* (admission, index) pairs by admission. */
static int admit_asc(const void *a, const void *b)
{
    const int64_t x = ((const int64_t *)a)[0], y = ((const int64_t *)b)[0];
    return (x > y) - (x < y);
}

/* One step's plan (docs/serving.md "Scheduling"):
 *   1. the decode token of every running request that has fed its whole sequence but one token,
 *      oldest admitted first -- keeping one token of the budget for the oldest running request
 *      when it is still prefilling;
 *   2. the next prefill chunk of every running request still prefilling (or recomputing after a
 *      preemption), oldest first;
 *   3. waiting requests in queue order (preempted ones first, then by arrival), their first
 *      chunk, while the budget, max_num_seqs and the pools allow -- but only in a step where
 *      every running request got all the tokens it asked for within the budget (no preemption,
 *      no chunk cut short by the pools), so that a request is never admitted only to be
 *      preempted by the next step's older ones.
 * Preemption (schedule_running): a request that cannot get one token into the pools preempts the
 * youngest running requests admitted after it. The oldest running request therefore always runs
 * at least one token per step (every other running request is younger, and each request fits
 * every rank's pool alone, checked up front), it is never preempted, and it finishes; then the
 * next one is the oldest: every request completes. */
static int build_step(sched *S, loop *L)
{
    const dsacp_serve_options *o = S->o;
    int64_t budget = o->max_batch_tokens, running = 0;
    bool short_of_pool = false;
    int rc = DSACP_OK;
    const int64_t preempted0 = S->res->preemptions;
    S->n_ent = 0;
    /* The running requests as (admission, index) pairs, oldest first. */
    for (int64_t s = 0; s < S->n; s++)
        if (S->r[s].state == ST_RUNNING) S->order[2 * running] = S->r[s].admit, S->order[2 * running + 1] = s, running++;
    qsort(S->order, (size_t)running, 2 * sizeof *S->order, admit_asc);
    /* 1. Decode tokens, oldest admitted first, one token of the budget kept for the oldest running
     * request when it is still prefilling. Preemption only removes younger requests, which come
     * later in the order. */
    const int64_t keep = running > 0 && S->r[S->order[1]].len - S->r[S->order[1]].fed > 1 ? 1 : 0;
    for (int64_t k = 0; k < running; k++) {
        const int64_t s = S->order[2 * k + 1];
        if (S->r[s].state != ST_RUNNING || S->r[s].len - S->r[s].fed != 1) continue;
        int64_t b = budget - keep;
        if (b < 1) break;
        /* With speculation: the last token and its drafts, a verify entry (drafts cut by the
         * budget and the pools like any tokens). */
        const int64_t nd = o->spec.method != DSACP_SPEC_NONE ? dsacp_spec_drafts(S, L, s) : 0;
        if ((rc = schedule_running(S, s, 1 + nd, &b, &short_of_pool))) return rc;
        if (S->n_ent > 0 && S->ent_s[S->n_ent - 1] == s) S->ent_k[S->n_ent - 1] = S->ent_n[S->n_ent - 1] - 1;
        budget = b + keep;
    }
    /* 2. Running requests still prefilling (or recomputing), oldest first; these may withdraw and
     * preempt younger requests given a decode token in 1. */
    for (int64_t k = 0; k < running && budget > 0; k++) {
        const int64_t s = S->order[2 * k + 1];
        if (S->r[s].state != ST_RUNNING || S->r[s].len - S->r[s].fed <= 1) continue;
        if ((rc = schedule_running(S, s, S->r[s].len - S->r[s].fed, &budget, &short_of_pool))) return rc;
    }
    if (short_of_pool || S->res->preemptions != preempted0) return DSACP_OK;
    /* 3. New requests. */
    while (budget > 0 && running < o->max_num_seqs) {
        const int64_t s = next_waiting(S);
        if (s < 0) break;
        const int64_t c = largest_fit(S, s, S->r[s].len - S->r[s].fed < budget ? S->r[s].len - S->r[s].fed : budget);
        if (c == 0) break;
        if ((rc = dsacp_engine_add_request(S->e, &S->eid[s])) || (rc = dsacp_serve_plan_push(&S->adds, s))) return rc;
        S->r[s].state = ST_RUNNING;
        S->r[s].admit = S->admitted++;
        running++;
        add_entry(S, s, c);
        budget -= c;
    }
    return S->role == DSACP_KV_CONSUMER ? grant_asked(S, running) : DSACP_OK;
}

/* The check of dsacp_serve_check for a group of the given role: a producer caches the prompt
 * only (it samples the first token and hands the request over). */
static int serve_check_role(const dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n,
                            const dsacp_serve_options *opt, dsacp_kv_role role)
{
    const dsacp_config *cfg = dsacp_engine_config(e);
    const int64_t V = cfg->vocab_size, maxpos = cfg->max_position_embeddings;
    if (opt->max_batch_tokens < 1 || opt->max_num_seqs < 1)
        return dsacp_error(DSACP_EINVAL, "serve: max_batch_tokens %lld and max_num_seqs %lld must be >= 1",
                           (long long)opt->max_batch_tokens, (long long)opt->max_num_seqs);
    if (!(opt->temperature >= 0) || !isfinite(opt->temperature) || !(opt->top_p > 0 && opt->top_p <= 1))
        return dsacp_error(DSACP_EINVAL, "serve: temperature %g must be finite and >= 0, top_p %g in (0, 1]", opt->temperature,
                           opt->top_p);
    if (n < 1 || !reqs) return dsacp_error(DSACP_EINVAL, "serve: no requests");
    for (int64_t i = 0; i < n; i++) {
        const dsacp_serve_request *q = &reqs[i];
        if (q->prompt_len < 1 || !q->prompt || q->max_new_tokens < 1)
            return dsacp_error(DSACP_EINVAL, "request %lld: needs a prompt and max_new_tokens >= 1", (long long)i);
        if (q->n_stop < 0 || (q->n_stop > 0 && !q->stop_ids))
            return dsacp_error(DSACP_EINVAL, "request %lld: n_stop %lld without stop ids", (long long)i, (long long)q->n_stop);
        if (!(q->arrival_s >= 0) || !isfinite(q->arrival_s))
            return dsacp_error(DSACP_ERANGE, "request %lld: arrival_s %g must be finite and >= 0", (long long)i, q->arrival_s);
        if (q->prompt_len > maxpos || q->max_new_tokens > maxpos - q->prompt_len)
            return dsacp_error(DSACP_ERANGE, "request %lld: prompt %lld + max_new_tokens %lld exceeds the model's "
                               "max_position_embeddings %lld", (long long)i, (long long)q->prompt_len,
                               (long long)q->max_new_tokens, (long long)maxpos);
        /* The cache holds the prompt and every generated token but the last (never fed back). Each
         * rank's share grows with the length, so fitting at this length means fitting at every
         * point of the request's life, on every rank. */
        const int64_t cached = role == DSACP_KV_PRODUCER ? q->prompt_len : q->prompt_len + q->max_new_tokens - 1, id = -1;
        if (!dsacp_engine_fits(e, &id, &cached, 1))
            return dsacp_error(DSACP_ECAPACITY, "request %lld (%lld tokens cached%s) does not fit the %sKV pool even alone",
                               (long long)i, (long long)cached, role == DSACP_KV_PRODUCER ? ": its prompt" : " with its output",
                               role == DSACP_KV_PRODUCER ? "kv_producer group's " : role == DSACP_KV_CONSUMER ?
                               "kv_consumer group's " : "");
        for (int64_t j = 0; j < q->prompt_len; j++)
            if (q->prompt[j] < 0 || q->prompt[j] >= V)
                return dsacp_error(DSACP_ERANGE, "request %lld: prompt token %lld = %d is outside the vocabulary [0, %lld)",
                                   (long long)i, (long long)j, q->prompt[j], (long long)V);
    }
    return DSACP_OK;
}

int dsacp_serve_check(const dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n, const dsacp_serve_options *opt)
{
    int rc = dsacp_spec_check(e, opt);
    return rc ? rc : serve_check_role(e, reqs, n, opt, opt->pd ? dsacp_pd_role(opt->pd) : DSACP_KV_BOTH);
}


/* Rank 0: the scheduler's arrays, each request's sequence and its outputs, after the workload's
 * check (dsacp_serve_check). Not agreed. */
static int serve_setup(sched *S, loop *L)
{
    const int64_t n = S->n;
    const dsacp_serve_request *reqs = S->rq;
    dsacp_serve_result *res = S->res;
    S->r = calloc((size_t)(n > 0 ? n : 1), sizeof *S->r);
    res->out = calloc((size_t)(n > 0 ? n : 1), sizeof *res->out);
    S->ent_s = malloc((size_t)(n + 1) * sizeof *S->ent_s);
    S->ent_n = malloc((size_t)(n + 1) * sizeof *S->ent_n);
    S->ent_k = calloc((size_t)(n + 1), sizeof *S->ent_k);
    S->ent_a = calloc((size_t)(n + 1), sizeof *S->ent_a);
    S->fit_id = malloc((size_t)(n + 1) * sizeof *S->fit_id);
    S->fit_len = malloc((size_t)(n + 1) * sizeof *S->fit_len);
    S->order = malloc((size_t)(2 * n + 2) * sizeof *S->order);
    L->work = malloc((size_t)L->V * sizeof *L->work);
    int rc = DSACP_OK;
    const bool spec_sampling = S->o->spec.method != DSACP_SPEC_NONE && S->o->temperature > 0;
    if (spec_sampling) { /* rejection sampling's distributions */
        L->probs = malloc((size_t)(DSACP_SPEC_MAX_TOKENS + 2) * (size_t)L->V * sizeof *L->probs);
        L->swork = malloc((size_t)L->V * sizeof *L->swork);
    }
    if (!S->ent_k || !S->ent_a || (spec_sampling && (!L->probs || !L->swork)) || !S->r || !res->out || !S->ent_s || !S->ent_n || !S->fit_id || !S->fit_len || !S->order || !L->work)
        rc = dsacp_error(DSACP_ENOMEM, "out of memory for %lld requests", (long long)n);
    res->n_requests = n;
    res->spec = S->o->spec;
    if (!rc) rc = dsacp_spec_check(S->e, S->o);
    if (!rc) rc = serve_check_role(S->e, reqs, n, S->o, S->role);
    for (int64_t i = 0; i < n && !rc; i++) {
        const dsacp_serve_request *q = &reqs[i];
        sreq *r = &S->r[i];
        r->cap = q->prompt_len + q->max_new_tokens + 1; /* bounded by dsacp_serve_check */
        r->seq = malloc((size_t)r->cap * sizeof *r->seq);
        res->out[i].tokens = malloc((size_t)(q->max_new_tokens + 1) * sizeof(int32_t));
        res->out[i].token_s = malloc((size_t)(q->max_new_tokens + 1) * sizeof(double));
        res->out[i].gap = malloc((size_t)(q->max_new_tokens + 1) * sizeof(float));
        res->out[i].arrival_s = S->o->realtime ? q->arrival_s : 0;
        if (!r->seq || !res->out[i].tokens || !res->out[i].token_s || !res->out[i].gap)
            rc = dsacp_error(DSACP_ENOMEM, "out of memory");
        else memcpy(r->seq, q->prompt, (size_t)q->prompt_len * sizeof *r->seq), r->len = q->prompt_len;
        r->state = ST_FUTURE;
        /* Request i's draws are (seed + i, index)'s: what an online request sent with seed + i gets
         * (dsacp run --url sends that), so the in-process run and the benchmark client agree. */
        r->temperature = S->o->temperature, r->top_p = S->o->top_p, r->seed = S->o->seed + (uint64_t)i, r->rng_req = 0;
    }
    return rc;
}

/* Rank 0: waits (realtime) until a request has arrived or none is left to arrive. A producer asks
 * the consumer to reserve each request that arrives. A consumer learns of requests from the
 * producer's asks instead. */
static int await_arrivals(sched *S, const loop *L)
{
    const dsacp_serve_request *reqs = S->rq;
    if (S->role == DSACP_KV_CONSUMER) return DSACP_OK;
    double now = dsacp_now() - L->t0;
    for (;;) {
        bool waiting = false, future = false;
        double next = INFINITY;
        for (int64_t s = 0; s < S->n; s++) {
            if (S->r[s].state == ST_FUTURE) {
                if (!S->o->realtime || reqs[s].arrival_s <= now) {
                    S->r[s].state = ST_WAITING;
                    const int64_t ask[2] = {DSACP_PD_ASK, s};
                    int rc = S->pd ? dsacp_pd_ctl_send(S->pd, ask, 2) : DSACP_OK;
                    if (rc) return rc;
                } else {
                    future = true, next = fmin(next, reqs[s].arrival_s);
                }
            }
            if (S->r[s].state == ST_WAITING || S->r[s].state == ST_RUNNING) waiting = true;
        }
        if (waiting || !future) return DSACP_OK;
        if (S->pd) {
            int rc = dsacp_pd_alive(S->pd);
            if (rc) return rc;
        }
        sleep_s(fmin(next - now, 0.05)); /* nothing to run before the next arrival */
        now = dsacp_now() - L->t0;
    }
}



static int chunk_push(sreq *r, int64_t a, int64_t b)
{
    if (r->n_chunks == r->cap_chunks) {
        const int64_t cap = r->cap_chunks ? 2 * r->cap_chunks : 8;
        int64_t *n = realloc(r->chunks, (size_t)(2 * cap) * sizeof *n);
        if (!n) return dsacp_error(DSACP_ENOMEM, "out of memory for a request's chunks");
        r->chunks = n, r->cap_chunks = cap;
    }
    r->chunks[2 * r->n_chunks] = a, r->chunks[2 * r->n_chunks + 1] = b;
    r->n_chunks++;
    return DSACP_OK;
}

/* A leader's control message from the other group: GRANT (producer), ASK and DONE (consumer);
 * the producer's RESULT, when it comes during the consumer's loop, is kept for the end. */
static int handle_ctl(sched *S, const int64_t *w, int64_t n)
{
    const int64_t s = n > 1 ? w[1] : -1;
    const bool ok_s = s >= 0 && s < S->n;
    if (w[0] == DSACP_PD_ABORT) return dsacp_pd_abort_error(S->pd, w, n);
    if (w[0] == DSACP_PD_RESULT && S->role == DSACP_KV_CONSUMER) {
        free(S->stash);
        if (!(S->stash = malloc((size_t)n * sizeof *S->stash))) return dsacp_error(DSACP_ENOMEM, "out of memory");
        memcpy(S->stash, w, (size_t)n * sizeof *w);
        S->n_stash = n;
        return DSACP_OK;
    }
    if (w[0] == DSACP_PD_GRANT && S->role == DSACP_KV_PRODUCER && ok_s && n == 2) {
        S->r[s].granted = true;
        return DSACP_OK;
    }
    if (w[0] == DSACP_PD_ASK && S->role == DSACP_KV_CONSUMER && ok_s && n == 2 && S->r[s].state == ST_FUTURE) {
        S->r[s].state = ST_ASKED;
        S->r[s].ask = S->asks++;
        return DSACP_OK;
    }
    if (w[0] == DSACP_PD_DONE && S->role == DSACP_KV_CONSUMER && ok_s && n >= 7 && n == 7 + 2 * w[6] && w[6] >= 1 &&
        S->r[s].state == ST_IMPORTING && w[2] >= 0 && w[2] < dsacp_engine_config(S->e)->vocab_size) {
        sreq *r = &S->r[s];
        r->n_chunks = 0;
        for (int64_t i = 0; i < w[6]; i++) {
            int rc = chunk_push(r, w[7 + 2 * i], w[8 + 2 * i]);
            if (rc) return rc;
        }
        int32_t g;
        memcpy(&g, &w[3], sizeof g);
        memcpy(&r->first_gap, &g, sizeof r->first_gap);
        r->first_tok = (int32_t)w[2];
        r->prefill_s = bits_f64(w[4]);
        r->pre_preempt = w[5];
        r->done_known = true;
        return DSACP_OK;
    }
    return dsacp_error(DSACP_ECOMM, "unexpected control message (kind %lld, %lld words) from the other group",
                       (long long)w[0], (long long)n);
}

static int drain_ctl(sched *S)
{
    for (;;) {
        const int64_t *w;
        int64_t n;
        int rc = dsacp_pd_ctl_poll(S->pd, &w, &n);
        if (rc || n == 0) return rc;
        if ((rc = handle_ctl(S, w, n))) return rc;
    }
}

/* Consumer leader: every imported request whose DONE arrived is activated (its remaining entries
 * received, the first token recorded) and decodes from this step on; the plan carries the
 * activations so that the other ranks receive theirs too. */
static int activate_ready(sched *S, loop *L)
{
    int rc = DSACP_OK;
    for (int64_t s = 0; s < S->n && !rc; s++) {
        sreq *r = &S->r[s];
        if (r->state != ST_IMPORTING || !r->done_known) continue;
        if ((rc = dsacp_pd_import_finish(S->pd, s, r->chunks, r->n_chunks))) break;
        rc = dsacp_serve_plan_push(&S->acts, s);
        if (!rc) rc = dsacp_serve_plan_push(&S->acts, r->n_chunks);
        for (int64_t i = 0; i < 2 * r->n_chunks && !rc; i++) rc = dsacp_serve_plan_push(&S->acts, r->chunks[i]);
        dsacp_serve_out *out = &S->res->out[s];
        const double now = dsacp_now() - L->t0;
        r->state = ST_RUNNING;
        r->fed = S->rq[s].prompt_len;
        r->admit = S->admitted++;
        out->tokens[0] = r->first_tok, out->gap[0] = r->first_gap, out->token_s[0] = now, out->n_tokens = 1;
        out->first_s = out->kv_ready_s = now;
        out->prefill_done_s = r->prefill_s;
        out->preemptions += r->pre_preempt;
        dsacp_pd_chunks_cost(S->pd, r->chunks, r->n_chunks, &out->kv_bytes, &out->kv_messages);
        bool stop = S->rq[s].max_new_tokens <= 1;
        for (int64_t k = 0; k < S->rq[s].n_stop; k++) stop |= r->first_tok == S->rq[s].stop_ids[k];
        if (stop) {
            r->state = ST_DONE;
            out->finish_s = now;
            L->done++;
        } else if (!rc) {
            rc = dsacp_serve_seq_push(r, r->first_tok);
        }
    }
    return rc;
}

/* The plan's words, in the order the leader applied them: activations, ends, adds, imports (the
 * last two only in a consumer's plans), the entries and their token ids. */
static int plan_words(sched *S, plan *p)
{
    int64_t n_act = 0;
    for (int64_t k = 0; k < S->acts.n; k += 2 + 2 * S->acts.w[k + 1]) n_act++;
    int rc = dsacp_serve_plan_push(p, n_act);
    for (int64_t i = 0; i < S->acts.n && !rc; i++) rc = dsacp_serve_plan_push(p, S->acts.w[i]);
    /* With speculation the cut backs of the last step (ngram; mtp cut back after its catch-up). */
    const bool spec = S->o->spec.method != DSACP_SPEC_NONE, ngram = S->o->spec.method == DSACP_SPEC_NGRAM;
    if (spec && !rc) rc = dsacp_serve_plan_push(p, ngram ? S->truncs.n / 2 : 0);
    for (int64_t i = 0; ngram && i < S->truncs.n && !rc; i++) rc = dsacp_serve_plan_push(p, S->truncs.w[i]);
    /* Sent once: a consumer's next plan may follow an empty step (no record_step resets them), and
     * a request ended by this plan must not be cut back again by the next. */
    if (ngram) S->truncs.n = 0;
    if (!rc) rc = dsacp_serve_plan_push(p, S->ends.n);
    for (int64_t i = 0; i < S->ends.n && !rc; i++) rc = dsacp_serve_plan_push(p, S->ends.w[i]);
    if (!rc) rc = dsacp_serve_plan_push(p, S->adds.n);
    for (int64_t i = 0; i < S->adds.n && !rc; i++) rc = dsacp_serve_plan_push(p, S->adds.w[i]);
    if (!rc) rc = dsacp_serve_plan_push(p, S->imps.n / 2);
    for (int64_t i = 0; i < S->imps.n && !rc; i++) rc = dsacp_serve_plan_push(p, S->imps.w[i]);
    if (!rc) rc = dsacp_serve_plan_push(p, S->n_ent);
    for (int64_t i = 0; i < S->n_ent && !rc; i++) {
        if (!(rc = dsacp_serve_plan_push(p, S->ent_s[i]))) rc = dsacp_serve_plan_push(p, S->ent_n[i]);
        if (spec && !rc) rc = dsacp_serve_plan_push(p, S->ent_k[i]);
    }
    /* A verify entry's tokens: the last sampled one, then its drafts. */
    for (int64_t i = 0; i < S->n_ent && !rc; i++) {
        const sreq *r = &S->r[S->ent_s[i]];
        for (int64_t j = 0; j < S->ent_n[i] && !rc; j++)
            rc = dsacp_serve_plan_push(p, S->ent_k[i] > 0 && j > 0 ? r->draft[j - 1] : r->seq[r->fed + j]);
    }
    return rc;
}

/* Disaggregated leader with nothing to run: waits for the other group (a grant, a DONE, an ask),
 * at most 50 ms at a time so that arrivals are asked for and, on a consumer with transfers in
 * flight, every rank drains its messages (*poll_only: an empty step). */
static int idle_wait(sched *S, bool *poll_only)
{
    *poll_only = false;
    bool importing = false;
    for (int64_t s = 0; s < S->n; s++) importing |= S->r[s].state == ST_IMPORTING;
    const int64_t *w;
    int64_t n;
    int rc = dsacp_pd_ctl_wait(S->pd, importing ? 0.005 : 0.05, &w, &n);
    if (rc) return rc;
    if (n > 0) return handle_ctl(S, w, n);
    *poll_only = importing;
    return DSACP_OK;
}

/* Rank 0 plans the next step into L->p (empty: every request is done, or a failure). */
static int plan_next(sched *S, loop *L)
{
    plan *p = &L->p;
    int rc = DSACP_OK;
    S->ends.n = S->adds.n = S->imps.n = S->acts.n = 0;
    bool over = false;
    /* Online: what was submitted and aborted since the last plan (an idle engine waits here). */
    if (S->live && ((rc = dsacp_live_plan_begin(S, L, &over)) || over)) {
        p->n = 0;
        return rc;
    }
    /* Finished requests were ended while sampling; their ids travel now (a request activated and
     * finished at once below travels in the next plan: the plan's ends come before its
     * activations). */
    for (int64_t s = 0; s < S->n && !rc; s++)
        if (S->r[s].state == ST_DONE && S->eid[s] >= 0) {
            rc = dsacp_engine_end_request(S->e, S->eid[s]);
            if (!rc) rc = dsacp_serve_plan_push(&S->ends, s);
            S->eid[s] = -1;
        }
    if (S->live) dsacp_live_stats_update(S); /* KV in use after the ends */
    for (; !rc;) {
        if ((rc = await_arrivals(S, L))) break;
        if (S->pd && (rc = drain_ctl(S))) break;
        if (S->role == DSACP_KV_CONSUMER && (rc = activate_ready(S, L))) break;
        if (!rc) rc = build_step(S, L);
        if (rc || !S->pd || S->n_ent > 0 || S->imps.n > 0 || S->acts.n > 0 || L->done == S->n) break;
        bool poll_only;
        if ((rc = idle_wait(S, &poll_only)) || poll_only) break;
    }
    if (!rc && S->n_ent == 0 && !S->pd && !S->live && L->done < S->n)
        rc = dsacp_error(DSACP_ECAPACITY, "serve: no request can be scheduled although each fits the KV "
                         "pool alone (a scheduler bug: the oldest running request always runs)");
    /* Online, a plan is sent every time (perhaps with no entries: the engine idles), until the
     * shutdown's empty one above. */
    if (!rc && (S->live || L->done < S->n)) rc = plan_words(S, p);
    if (rc) p->n = 0;
    return rc;
}

/* Producer leader: the request's prompt is prefilled; its first token, the chunks that were
 * sent and its preemptions go to the consumer's leader. */
static int send_done(sched *S, int64_t s, int32_t tok, float gap, double when)
{
    sreq *r = &S->r[s];
    const int64_t n = 7 + 2 * r->n_chunks;
    int64_t *w = malloc((size_t)n * sizeof *w);
    if (!w) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int32_t g;
    memcpy(&g, &gap, sizeof g);
    w[0] = DSACP_PD_DONE, w[1] = s, w[2] = tok, w[3] = g, w[4] = f64_bits(when), w[5] = S->res->out[s].preemptions;
    w[6] = r->n_chunks;
    memcpy(w + 7, r->chunks, (size_t)(2 * r->n_chunks) * sizeof *w);
    int rc = dsacp_pd_ctl_send(S->pd, w, n);
    free(w);
    return rc;
}

/* Rank 0 after a step: feeds the schedule, samples where a sequence's last token was fed,
 * records the step and reports progress. ts/te: the step's start and end; cs/cb: the seconds and
 * bytes the communicator counted during it. */
static int record_step(sched *S, loop *L, double ts, double te, double cs, int64_t cb)
{
    dsacp_serve_result *res = S->res;
    const dsacp_serve_request *reqs = S->rq;
    const dsacp_serve_options *opt = S->o;
    const int64_t V = L->V;
    int rc = DSACP_OK;
    if (res->n_steps == res->cap_steps) {
        int64_t cap = res->cap_steps ? 2 * res->cap_steps : 256;
        dsacp_serve_step *ns = realloc(res->steps, (size_t)cap * sizeof *ns);
        if (ns) res->steps = ns, res->cap_steps = cap;
    }
    int64_t pre = 0, dec = 0, ver = 0, row = 0;
    S->truncs.n = 0;
    for (int64_t i = 0; i < S->n_ent && !rc; i++, row++) {
        sreq *r = &S->r[S->ent_s[i]];
        const int64_t s = S->ent_s[i], cnt = S->ent_n[i];
        if (S->ent_k[i] > 0) { /* a verify entry: its k + 1 logits rows */
            bool stopped;
            dec += cnt, ver += cnt;
            rc = dsacp_spec_accept(S, L, i, L->logits + row * V, &stopped);
            row += S->ent_k[i];
            continue;
        }
        if (cnt == 1 && r->len - r->fed == 1 && r->fed >= reqs[s].prompt_len) dec++;
        else pre += cnt;
        if (S->role == DSACP_KV_PRODUCER && (rc = chunk_push(r, r->fed, r->fed + cnt))) break;
        r->fed += cnt;
        if (r->fed < r->len) continue;
        const float *lg = L->logits + row * V;
        const int32_t tok = sample(lg, V, r, res->out[s].n_tokens, L->work);
        bool stop;
        rc = dsacp_serve_emit(S, L, s, tok, dsacp_serve_top2_gap(lg, V), &stop);
        if (!rc && S->role == DSACP_KV_PRODUCER) {
            dsacp_serve_out *out = &res->out[s];
            out->prefill_done_s = out->token_s[0];
            /* With the MTP layer the DONE waits for the catch-up's entries to be posted (serve_step):
             * the consumer's import then never waits on a step the producer has yet to run. */
            rc = opt->spec.method == DSACP_SPEC_MTP ? dsacp_serve_plan_push(&S->dones, s)
                                                    : send_done(S, s, tok, out->gap[0], out->token_s[0]);
        }
    }
    const double kv = dsacp_engine_kv_use(S->e);
    L->kv_peak = fmax(L->kv_peak, kv);
    if (res->n_steps < res->cap_steps) {
        const dsacp_step_times tm = dsacp_engine_last_step_times(S->e);
        res->steps[res->n_steps++] = (dsacp_serve_step){
            .t_s = ts - L->t0, .dur_ms = (te - ts) * 1e3, .prefill_tokens = pre, .decode_tokens = dec,
            .attention_ms = tm.attention * 1e3, .mlp_ms = tm.mlp * 1e3, .comm_ms = cs * 1e3,
            .comm_bytes = cb, .projections_ms = tm.projections * 1e3, .attend_ms = tm.attend * 1e3,
            .o_proj_ms = tm.o_proj * 1e3, .group = S->role, .verify_tokens = ver,
            .draft_ms = L->draft_ms};
        res->target_steps_decode += dec > 0;
    }
    if (opt->progress && S->role != DSACP_KV_PRODUCER) { /* a producer's leader knows first tokens only */
        int64_t gen = 0, ptok = 0;
        for (int64_t s = 0; s < S->n; s++) gen += res->out[s].n_tokens, ptok += reqs[s].prompt_len;
        dsacp_serve_progress pr = {L->done, S->n, gen, ptok, dsacp_now() - L->t0, kv};
        opt->progress(opt->progress_arg, &pr);
    }
    return rc;
}

/* Producer, every rank: the step's entries for the link's layer hook (serve index, engine id,
 * old length, new tokens). */
static int pd_step_begin(sched *S, const dsacp_step_entry *ent, const int64_t *ent_s, int64_t n, int64_t **arr)
{
    if (!(*arr = malloc((size_t)(4 * (n > 0 ? n : 1)) * sizeof **arr))) return dsacp_error(DSACP_ENOMEM, "out of memory");
    int64_t *s = *arr, *id = s + n, *a = id + n, *c = a + n;
    for (int64_t i = 0; i < n; i++) {
        s[i] = ent_s[i], id[i] = ent[i].request_id, c[i] = ent[i].n_tokens;
        a[i] = dsacp_engine_request_length(S->e, id[i]);
        if (a[i] < 0) return (int)a[i];
    }
    dsacp_pd_step_begin(S->pd, s, id, a, c, n);
    return DSACP_OK;
}

/* The target step: with speculation the logits rows of each entry (k + 1 for a verify entry),
 * otherwise after each entry's last token only (lm_head runs on those). Rank 0's logits buffer
 * grows to the rows. */
static int target_step(sched *S, loop *L, const step_ents *se)
{
    const bool spec = S->o->spec.method != DSACP_SPEC_NONE;
    int64_t rows = 0;
    for (int64_t i = 0; i < se->n; i++) rows += spec ? se->opts[i].n_logits : 1;
    if (L->root && !(L->logits = realloc(L->logits, (size_t)((rows > 0 ? rows : 1) * L->V) * sizeof *L->logits)))
        return dsacp_error(DSACP_ENOMEM, "out of memory for the logits");
    float *lg = L->root ? L->logits : NULL;
    return spec ? dsacp_engine_step_opts(S->e, se->ent, se->opts, se->n, lg, NULL)
                : dsacp_engine_step_last(S->e, se->ent, se->n, lg, NULL);
}

/* One step on every rank: rank 0's plan broadcast and applied, the engine's step (logits after
 * each entry's last token, on rank 0), rank 0's record; with MTP speculation the draft steps
 * that follow. *finished when the plan was empty. */
static int serve_step(sched *S, loop *L, bool *finished)
{
    dsacp_comm *c = L->c;
    L->p.n = 0;
    L->draft_ms = 0, L->draft_steps = 0;
    int rc = L->root ? plan_next(S, L) : DSACP_OK;
    rc = dsacp_comm_agree(c, rc);
    if (rc) return rc;
    if ((rc = dsacp_serve_plan_bcast(c, &L->p))) return rc;
    if (L->p.n == 0) { /* all requests done */
        *finished = true;
        return DSACP_OK;
    }
    step_ents se = {0};
    int64_t *hook = NULL;
    rc = plan_apply(S, &L->p, !L->root, &se);
    /* A consumer drains the entries that have arrived, on every rank, at every step. */
    if (!rc && S->role == DSACP_KV_CONSUMER) rc = dsacp_pd_poll(S->pd);
    rc = dsacp_comm_agree(c, rc);
    if (rc || se.n == 0) { /* an empty step: a consumer only drained its transfers */
        step_ents_free(&se);
        return rc;
    }
    if (!rc && S->role == DSACP_KV_PRODUCER) rc = pd_step_begin(S, se.ent, se.ent_s, se.n, &hook);
    rc = dsacp_comm_agree(c, rc);
    double cs0 = 0, cs1 = 0;
    const int64_t cb0 = comm_recv_total(c, &cs0);
    const double ts = dsacp_now();
    if (!rc) rc = target_step(S, L, &se);
    const double te = dsacp_now();
    const int64_t cb1 = comm_recv_total(c, &cs1);
    if (!rc && L->root) rc = record_step(S, L, ts, te, cs1 - cs0, cb1 - cb0);
    if (L->root && S->live) dsacp_live_step_end(S, L);
    if (!rc && L->root && S->pd) rc = dsacp_pd_alive(S->pd);
    if (S->o->spec.method == DSACP_SPEC_MTP) {
        L->ent = se.ent, L->opts = se.opts, L->ent_s = se.ent_s, L->n_ent = se.n;
        rc = dsacp_comm_agree(c, rc);
        if (!rc) rc = dsacp_spec_mtp_round(S, L);
        if (L->root && S->res->n_steps > 0)
            S->res->steps[S->res->n_steps - 1].draft_ms = L->draft_ms, S->res->steps[S->res->n_steps - 1].draft_steps = L->draft_steps;
        /* A producer's catch-up wrote the MTP layer's entries of the step's chunks: they go now,
         * then the DONE of each request whose prompt the step finished. */
        if (!rc && S->role == DSACP_KV_PRODUCER) rc = dsacp_pd_send_layer(S->pd, dsacp_engine_config(S->e)->num_hidden_layers);
        for (int64_t i = 0; !rc && L->root && i < S->dones.n; i++) {
            const dsacp_serve_out *out = &S->res->out[S->dones.w[i]];
            rc = send_done(S, S->dones.w[i], out->tokens[0], out->gap[0], out->token_s[0]);
        }
        S->dones.n = 0;
    }
    if (S->role == DSACP_KV_PRODUCER) dsacp_pd_step_end(S->pd);
    step_ents_free(&se);
    free(hook);
    return dsacp_comm_agree(c, rc);
}

void dsacp_serve_sched_free(sched *S, loop *L, dsacp_engine *e, int64_t n)
{
    for (int64_t s = 0; s < n; s++) {
        if (S->eid && S->eid[s] >= 0) dsacp_engine_end_request(e, S->eid[s]);
        if (S->r) free(S->r[s].seq), free(S->r[s].chunks);
    }
    free(S->r), free(S->eid), free(S->ent_s), free(S->ent_n), free(S->ent_k), free(S->ent_a), free(S->fit_id), free(S->fit_len), free(S->order);
    free(S->ends.w), free(S->adds.w), free(S->imps.w), free(S->acts.w), free(S->truncs.w), free(S->dones.w), free(S->stash);
    free(L->p.w), free(L->logits), free(L->work), free(L->mtp_logits), free(L->probs), free(L->swork), free(L->sw.w);
}

/* The loop itself, every rank of the group; rank 0 passes the requests. */
int dsacp_serve_loop(sched *S, loop *L)
{
    int rc = DSACP_OK;
    if (!S->live) { /* online, serve_live.c made them and grows them */
        S->eid = malloc((size_t)(S->n > 0 ? S->n : 1) * sizeof *S->eid);
        if (!S->eid) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
        for (int64_t i = 0; i < S->n && S->eid; i++) S->eid[i] = -1;
        if (L->root && !rc) rc = serve_setup(S, L);
    }
    rc = dsacp_comm_agree(L->c, rc);
    if (S->pd) rc = dsacp_comm_agree_phase(dsacp_pd_world(S->pd), rc, -1); /* both groups start together */
    L->t0 = dsacp_now();
    /* One clock for the run: the consumer's times are put on the producer's at the end. */
    if (S->pd && L->root && !rc) rc = dsacp_pd_clock_sync(S->pd, L->t0, &S->shift);
    if (S->pd) rc = dsacp_comm_agree(L->c, rc);
    for (bool finished = false; !rc && !finished;) rc = serve_step(S, L, &finished);
    if (L->root) {
        S->res->duration_s = dsacp_now() - L->t0;
        S->res->kv_peak_use = L->kv_peak;
    }
    return rc;
}

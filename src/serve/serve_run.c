/*
 * serve_run.c -- dsacp_serve_run (serve.h; docs/serving.md): a run of one group, or a
 * disaggregated run (docs/disaggregation.md) -- the workload from the world's rank 0 to both
 * leaders, the loop in each group (serve.c), the end: the verdicts exchanged between the leaders
 * over the link, the other group's part merged into the world's rank 0's result.
 */
#include "serve/serve_loop.h"
#include "serve/serve_spec.h"
#include "engine/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int serve_run_pd(dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n_in, const dsacp_serve_options *opt,
                        dsacp_serve_result *res);

int dsacp_serve_run(dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n_in, const dsacp_serve_options *opt,
                    dsacp_serve_result *res)
{
    if (opt->pd) return serve_run_pd(e, reqs, n_in, opt, res);
    loop L = {.c = dsacp_engine_comm(e), .V = dsacp_engine_config(e)->vocab_size};
    L.root = dsacp_comm_rank(L.c) == 0;
    memset(res, 0, sizeof *res);
    int64_t n = L.root ? n_in : 0;
    int rc = dsacp_comm_bcast(L.c, &n, sizeof n, DSACP_PHASE_input);
    if (rc) return rc;
    sched S = {0};
    S.e = e, S.rq = reqs, S.n = n, S.o = opt, S.res = res;
    rc = dsacp_serve_loop(&S, &L);
    dsacp_serve_sched_free(&S, &L, e, n);
    if (rc && L.root) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dsacp_last_error());
        dsacp_serve_result_free(res);
        dsacp_error(rc, "%s", msg);
    }
    return rc;
}

/* ---- disaggregated runs: the workload to both leaders, the end, the merged result ---- */

/* The world's rank 0 sends the workload to every rank as words; the leaders rebuild it. */
static int workload_bcast(dsacp_comm *world, const dsacp_serve_request *reqs, int64_t n_in, plan *wl)
{
    const bool root = dsacp_comm_rank(world) == 0;
    int rc = DSACP_OK;
    if (root) {
        rc = dsacp_serve_plan_push(wl, n_in);
        for (int64_t i = 0; i < n_in && !rc; i++) {
            const dsacp_serve_request *q = &reqs[i];
            const bool bad = q->prompt_len < 0 || q->n_stop < 0 || (q->prompt_len > 0 && !q->prompt) || (q->n_stop > 0 && !q->stop_ids);
            const int64_t np = bad ? 0 : q->prompt_len, ns = bad ? 0 : q->n_stop;
            rc = dsacp_serve_plan_push(wl, bad ? 0 : q->prompt_len);
            if (!rc) rc = dsacp_serve_plan_push(wl, q->max_new_tokens);
            if (!rc) rc = dsacp_serve_plan_push(wl, ns);
            if (!rc) rc = dsacp_serve_plan_push(wl, f64_bits(q->arrival_s));
            for (int64_t j = 0; j < np && !rc; j++) rc = dsacp_serve_plan_push(wl, q->prompt[j]);
            for (int64_t j = 0; j < ns && !rc; j++) rc = dsacp_serve_plan_push(wl, q->stop_ids[j]);
        }
    }
    rc = dsacp_comm_agree_phase(world, rc, -1);
    if (!rc) rc = dsacp_serve_plan_bcast(world, wl);
    return rc;
}

/* The requests of the words (pointing into them). */
static int workload_parse(const plan *wl, dsacp_serve_request **out, int32_t **store, int64_t *n)
{
    const int64_t *w = wl->w;
    *n = wl->n > 0 ? w[0] : 0;
    *out = calloc((size_t)(*n > 0 ? *n : 1), sizeof **out);
    *store = malloc((size_t)(wl->n > 0 ? wl->n : 1) * sizeof **store);
    if (!*out || !*store) return dsacp_error(DSACP_ENOMEM, "out of memory for the workload");
    int64_t k = 1;
    for (int64_t i = 0; i < *n; i++) {
        dsacp_serve_request *q = &(*out)[i];
        q->prompt_len = w[k], q->max_new_tokens = w[k + 1], q->n_stop = w[k + 2], q->arrival_s = bits_f64(w[k + 3]);
        k += 4;
        q->prompt = *store + k;
        for (int64_t j = 0; j < q->prompt_len; j++) q->prompt[j] = (int32_t)w[k + j];
        k += q->prompt_len;
        int32_t *st = *store + k;
        for (int64_t j = 0; j < q->n_stop; j++) st[j] = (int32_t)w[k + j];
        q->stop_ids = st;
        k += q->n_stop;
    }
    return DSACP_OK;
}

static int push_f64(plan *p, double d) { return dsacp_serve_plan_push(p, f64_bits(d)); }

/* A message's text as words (NUL-terminated, at most 399 characters). */
static int push_text(plan *p, const char *t)
{
    int64_t w[50] = {0};
    const size_t len = strlen(t) < 399 ? strlen(t) : 399;
    memcpy(w, t, len);
    int rc = DSACP_OK;
    for (size_t i = 0; i < (len + 8) / 8 && !rc; i++) rc = dsacp_serve_plan_push(p, w[i]);
    return rc;
}

/* The text of words w[0..n) (as push_text wrote it). */
static void words_text(const int64_t *w, int64_t n, char *out, size_t cap)
{
    const size_t bytes = n > 0 ? (size_t)n * 8 : 0;
    snprintf(out, cap, "%.*s", (int)(bytes < cap - 1 ? bytes : cap - 1), (const char *)w);
}

/* A leader's part of the result as words: its steps, peak KV use, preemptions, duration and
 * speculative counters (a consumer's; the producer never speculates); a consumer's also every
 * request's outputs. */
static int result_words(const dsacp_serve_result *r, dsacp_kv_role role, plan *p)
{
    const int64_t sw = (int64_t)((sizeof(dsacp_serve_step) + 7) / 8);
    int rc = dsacp_serve_plan_push(p, r->n_steps);
    for (int64_t i = 0; i < r->n_steps && !rc; i++) {
        int64_t w[64] = {0};
        memcpy(w, &r->steps[i], sizeof r->steps[i]);
        for (int64_t j = 0; j < sw && !rc; j++) rc = dsacp_serve_plan_push(p, w[j]);
    }
    if (!rc) rc = push_f64(p, r->kv_peak_use);
    if (!rc) rc = dsacp_serve_plan_push(p, r->preemptions);
    if (!rc) rc = push_f64(p, r->duration_s);
    const int64_t spec[4] = {r->spec_num_drafts, r->spec_num_draft_tokens, r->spec_num_accepted_tokens,
                             r->target_steps_decode};
    for (int j = 0; j < 4 && !rc; j++) rc = dsacp_serve_plan_push(p, spec[j]);
    for (int j = 0; j < DSACP_SPEC_MAX_TOKENS && !rc; j++) rc = dsacp_serve_plan_push(p, r->spec_accepted_per_pos[j]);
    for (int64_t i = 0; role == DSACP_KV_CONSUMER && i < r->n_requests && !rc; i++) {
        const dsacp_serve_out *o = &r->out[i];
        rc = dsacp_serve_plan_push(p, o->n_tokens);
        for (int64_t j = 0; j < o->n_tokens && !rc; j++) {
            int32_t g;
            memcpy(&g, &o->gap[j], sizeof g);
            if (!(rc = dsacp_serve_plan_push(p, o->tokens[j])) && !(rc = push_f64(p, o->token_s[j]))) rc = dsacp_serve_plan_push(p, g);
        }
        const double t[5] = {o->arrival_s, o->first_s, o->finish_s, o->prefill_done_s, o->kv_ready_s};
        for (int j = 0; j < 5 && !rc; j++) rc = push_f64(p, t[j]);
        if (!rc) rc = dsacp_serve_plan_push(p, o->kv_bytes);
        if (!rc) rc = dsacp_serve_plan_push(p, o->kv_messages);
        if (!rc) rc = dsacp_serve_plan_push(p, o->preemptions);
    }
    return rc;
}

static int step_t_asc(const void *a, const void *b)
{
    const dsacp_serve_step *x = a, *y = b;
    return (x->t_s > y->t_s) - (x->t_s < y->t_s);
}

/* The world's rank 0: the other leader's words (w[0] = RESULT, w[1] = status, then its part)
 * merged into its own result. */
static int result_merge(dsacp_serve_result *res, dsacp_kv_role mine, const int64_t *w, int64_t n)
{
    const int64_t sw = (int64_t)((sizeof(dsacp_serve_step) + 7) / 8);
    int64_t k = 2;
    const int64_t ns = n > k ? w[k++] : -1;
    enum { SPEC_WORDS = 4 + DSACP_SPEC_MAX_TOKENS };
    if (ns < 0 || k + ns * sw + 3 + SPEC_WORDS > n) return dsacp_error(DSACP_ECOMM, "malformed result from the other group");
    dsacp_serve_step *st = realloc(res->steps, (size_t)(res->n_steps + ns + 1) * sizeof *st);
    if (!st) return dsacp_error(DSACP_ENOMEM, "out of memory");
    res->steps = st, res->cap_steps = res->n_steps + ns + 1;
    for (int64_t i = 0; i < ns; i++, k += sw) memcpy(&st[res->n_steps++], w + k, sizeof *st);
    const int g = mine == DSACP_KV_PRODUCER ? 1 : 0; /* the other group's index */
    res->pd_kv_peak_use[g] = bits_f64(w[k]);
    res->pd_preemptions[g] = w[k + 1];
    const double dur = bits_f64(w[k + 2]);
    k += 3;
    /* The speculative counters: the consumer's (the producer's are zero). */
    res->spec_num_drafts += w[k], res->spec_num_draft_tokens += w[k + 1];
    res->spec_num_accepted_tokens += w[k + 2], res->target_steps_decode += w[k + 3];
    for (int j = 0; j < DSACP_SPEC_MAX_TOKENS; j++) res->spec_accepted_per_pos[j] += w[k + 4 + j];
    k += SPEC_WORDS;
    res->pd_kv_peak_use[1 - g] = res->kv_peak_use;
    res->pd_preemptions[1 - g] = res->preemptions;
    res->duration_s = fmax(res->duration_s, dur);
    for (int64_t i = 0; g == 1 && i < res->n_requests; i++) { /* the consumer's outputs replace the producer's */
        dsacp_serve_out *o = &res->out[i];
        const int64_t nt = k < n ? w[k++] : -1;
        if (nt < 0 || nt > o->n_tokens + (int64_t)1e9 || k + 3 * nt + 8 > n) return dsacp_error(DSACP_ECOMM, "malformed result");
        int32_t *tk = realloc(o->tokens, (size_t)(nt + 1) * sizeof *tk);
        double *ts = realloc(o->token_s, (size_t)(nt + 1) * sizeof *ts);
        float *gp = realloc(o->gap, (size_t)(nt + 1) * sizeof *gp);
        if (tk) o->tokens = tk;
        if (ts) o->token_s = ts;
        if (gp) o->gap = gp;
        if (!tk || !ts || !gp) return dsacp_error(DSACP_ENOMEM, "out of memory");
        for (int64_t j = 0; j < nt; j++, k += 3) {
            const int32_t gb = (int32_t)w[k + 2];
            o->tokens[j] = (int32_t)w[k], o->token_s[j] = bits_f64(w[k + 1]);
            memcpy(&o->gap[j], &gb, sizeof gb);
        }
        o->n_tokens = nt;
        o->arrival_s = bits_f64(w[k]), o->first_s = bits_f64(w[k + 1]), o->finish_s = bits_f64(w[k + 2]);
        o->prefill_done_s = bits_f64(w[k + 3]), o->kv_ready_s = bits_f64(w[k + 4]);
        o->kv_bytes = w[k + 5], o->kv_messages = w[k + 6], o->preemptions = w[k + 7];
        k += 8;
    }
    res->preemptions = res->pd_preemptions[0] + res->pd_preemptions[1];
    res->kv_peak_use = fmax(res->pd_kv_peak_use[0], res->pd_kv_peak_use[1]);
    qsort(res->steps, (size_t)res->n_steps, sizeof *res->steps, step_t_asc);
    for (int64_t i = 0; i < res->n_steps; i++) {
        const int j = res->steps[i].group == DSACP_KV_PRODUCER ? 0 : 1;
        res->pd_steps[j]++;
        res->pd_busy_s[j] += res->steps[i].dur_ms * 1e-3;
    }
    return DSACP_OK;
}

/* The world's rank 0 waits for the other leader's RESULT, any other leader for the FINAL verdict
 * (an ABORT on the way is noted: the other group failed and says why). *w / *n: the message. */
static int pd_end_wait(sched *S, int64_t want, const int64_t **w, int64_t *n, int *peer, char *text, size_t cap)
{
    *w = S->stash, *n = S->n_stash;
    while (!(*n > 0 && (*w)[0] == want)) {
        int st = dsacp_pd_ctl_wait(S->pd, -1, w, n);
        if (st) return st;
        if (*n > 0 && (*w)[0] == DSACP_PD_ABORT) {
            *peer = dsacp_pd_abort_error(S->pd, *w, *n);
            snprintf(text, cap, "%s", dsacp_last_error());
        }
    }
    return DSACP_OK;
}

/* The end of a disaggregated run: a producer's sends complete, the group agrees, the other
 * leader's part and verdict come to the world's rank 0, which sends the run's verdict back; each
 * leader gives it to its group. Every wait on the other group is bounded by the link's timeout. */
/* The consumer leader's times onto the producer's clock (the run's: arrivals are there); a
 * request's arrival stays as it is. */
static void shift_times(dsacp_serve_result *r, double shift)
{
    for (int64_t i = 0; i < r->n_requests && r->out; i++) {
        dsacp_serve_out *o = &r->out[i];
        for (int64_t j = 0; j < o->n_tokens; j++) o->token_s[j] += shift;
        o->first_s += shift, o->finish_s += shift, o->kv_ready_s += shift;
    }
    for (int64_t i = 0; i < r->n_steps; i++) r->steps[i].t_s += shift;
}

static int pd_end(sched *S, loop *L, int rc)
{
    dsacp_pd *pd = S->pd;
    if (L->root && S->role == DSACP_KV_CONSUMER && !rc) shift_times(S->res, S->shift);
    rc = dsacp_comm_agree(L->c, rc);
    char text[400] = "";
    if (rc) snprintf(text, sizeof text, "%s", dsacp_last_error());
    int64_t verdict[1 + 50] = {rc};
    if (L->root) {
        const bool wroot = dsacp_pd_world_rank(pd) == 0;
        const char *other = S->role == DSACP_KV_PRODUCER ? "kv_consumer" : "kv_producer";
        plan out = {0};
        int peer = DSACP_OK, st = DSACP_OK;
        if (!wroot) { /* RESULT: status, then the part (or the failure's text) */
            st = dsacp_serve_plan_push(&out, DSACP_PD_RESULT);
            if (!st) st = dsacp_serve_plan_push(&out, rc);
            if (!st) st = rc ? push_text(&out, text) : result_words(S->res, S->role, &out);
            if (!st) st = dsacp_pd_ctl_send(pd, out.w, out.n);
        }
        const int64_t *w = NULL;
        int64_t n = 0;
        if (!st) st = pd_end_wait(S, wroot ? DSACP_PD_RESULT : DSACP_PD_FINAL, &w, &n, &peer, text, sizeof text);
        if (!st && !rc && n > 1 && w[1]) { /* the other group failed, or (FINAL) the run did */
            char pm[400];
            words_text(w + 2, n - 2, pm, sizeof pm);
            peer = (int)w[1];
            if (wroot) snprintf(text, sizeof text, "the %s group failed: %.340s", other, pm);
            else snprintf(text, sizeof text, "%s", pm);
        }
        if (wroot && !st && !rc && !peer) st = result_merge(S->res, S->role, w, n);
        if (st && !rc) snprintf(text, sizeof text, "%s", dsacp_last_error());
        const int final = rc ? rc : st ? st : peer;
        if (wroot && !(st == DSACP_ECOMM && !rc)) { /* the verdict and its text to the other leader */
            out.n = 0;
            if (!dsacp_serve_plan_push(&out, DSACP_PD_FINAL) && !dsacp_serve_plan_push(&out, final) && !push_text(&out, final ? text : ""))
                (void)dsacp_pd_ctl_send(pd, out.w, out.n);
            (void)dsacp_pd_flush(pd, final ? 2.0 : -1); /* after a failure: the verdict's send, briefly */
        }
        verdict[0] = final;
        memcpy(verdict + 1, text, strlen(text) < 399 ? strlen(text) : 399);
        free(out.w);
    }
    int b = dsacp_comm_bcast(L->c, verdict, sizeof verdict, DSACP_PHASE_input);
    if (b) return b;
    /* A producer's sends: after a verdict of success the consumer has received every message (it
     * activated every request), so this returns at once; after a failure they are left to MPI (a
     * consumer that failed never takes them: waiting would only cost the timeout). */
    if (S->role == DSACP_KV_PRODUCER && !verdict[0] && (b = dsacp_pd_flush(pd, -1))) return b;
    if (verdict[0] && !(rc && !L->root && verdict[0] == rc)) {
        char msg[400];
        words_text(verdict + 1, 50, msg, sizeof msg);
        return dsacp_error((int)verdict[0], "%s", msg);
    }
    return (int)verdict[0];
}

static int serve_run_pd(dsacp_engine *e, const dsacp_serve_request *reqs, int64_t n_in, const dsacp_serve_options *opt,
                        dsacp_serve_result *res)
{
    dsacp_pd *pd = opt->pd;
    dsacp_comm *world = dsacp_pd_world(pd);
    memset(res, 0, sizeof *res);
    plan wl = {0};
    dsacp_serve_request *own = NULL;
    int32_t *store = NULL;
    int64_t n = 0;
    /* The speculative configuration on every rank of both groups. */
    int rc = dsacp_comm_agree_phase(world, dsacp_spec_check(e, opt), -1);
    if (!rc) rc = workload_bcast(world, reqs, n_in, &wl);
    if (!rc) rc = workload_parse(&wl, &own, &store, &n);
    rc = dsacp_comm_agree_phase(world, rc, -1);
    const bool wroot = dsacp_comm_rank(world) == 0;
    dsacp_serve_result local = {0};
    loop L = {.c = dsacp_engine_comm(e), .V = dsacp_engine_config(e)->vocab_size};
    L.root = dsacp_comm_rank(L.c) == 0;
    sched S = {0};
    /* The producer never speculates: it prefills and samples the first token (greedy or with the
     * seed stream of token 0, as kv_both does); the consumer decodes with verify entries. With the
     * MTP layer the producer runs the catch-up MTP step after each prefill step (method mtp, no
     * chain: k = 1), whose cache entries travel beside the target layers'. */
    dsacp_serve_options own_opt = *opt;
    if (dsacp_pd_role(pd) == DSACP_KV_PRODUCER)
        own_opt.spec = dsacp_engine_options_get(e)->mtp ? (dsacp_spec_config){DSACP_SPEC_MTP, 1, 0, 0}
                                                         : (dsacp_spec_config){DSACP_SPEC_NONE, 0, 0, 0};
    S.e = e, S.rq = own, S.n = n, S.o = &own_opt, S.res = wroot ? res : &local, S.pd = pd, S.role = dsacp_pd_role(pd);
    if (!rc) rc = dsacp_serve_loop(&S, &L);
    if (rc && L.root) dsacp_pd_abort(pd, rc, dsacp_last_error());
    if (!rc || L.t0 > 0) rc = pd_end(&S, &L, rc);
    if (wroot && !rc) {
        int wp, wd;
        dsacp_pd_sizes(pd, &wp, &wd);
        res->pd = true, res->pd_W[0] = wp, res->pd_W[1] = wd;
        res->spec = opt->spec; /* the run's configuration, whichever group's leader reports */
    }
    dsacp_serve_sched_free(&S, &L, e, n);
    dsacp_serve_result_free(&local);
    free(own), free(store), free(wl.w);
    if (rc && wroot) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dsacp_last_error());
        dsacp_serve_result_free(res);
        dsacp_error(rc, "%s", msg);
    }
    return rc;
}

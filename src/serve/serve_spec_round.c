/*
 * serve_spec_round.c -- the speculative round in the serving loop (serve_loop.h;
 * docs/speculative.md): drafts for a step's verify entries (ngram: prompt lookup over the
 * request's tokens; mtp: the last round's MTP steps), rank 0's acceptance after the target step,
 * the cut back of rejected positions, and for method mtp the catch-up and chain MTP steps whose
 * tokens rank 0 broadcasts.
 */
#include "serve/serve_loop.h"
#include "serve/serve_spec.h"

#include <stdlib.h>
#include <string.h>

/* Drafts a request may still use: k, and one fewer than the tokens it may still generate (the
 * verify step adds a bonus token). None on a producer: it never speculates (with the MTP layer it
 * runs the catch-up steps only, and a prompt's last token is prefilled, not verified). */
static int64_t drafts_wanted(const sched *S, int64_t s)
{
    if (S->role == DSACP_KV_PRODUCER) return 0;
    const int64_t k = S->o->spec.num_speculative_tokens;
    const int64_t left = S->rq[s].max_new_tokens - S->res->out[s].n_tokens - 1;
    return k < left ? k : left;
}

int64_t dsacp_spec_drafts(sched *S, loop *L, int64_t s)
{
    sreq *r = &S->r[s];
    const int64_t k = drafts_wanted(S, s);
    if (k < 1) return 0;
    if (S->o->spec.method == DSACP_SPEC_NGRAM) {
        const double t = dsacp_now();
        r->n_draft = dsacp_spec_ngram_propose(r->seq, r->len, S->o->spec.prompt_lookup_min, S->o->spec.prompt_lookup_max,
                                              k, r->draft);
        L->draft_ms += (dsacp_now() - t) * 1e3;
    }
    return r->n_draft < k ? r->n_draft : k;
}

int32_t dsacp_spec_token_at(const sched *S, int64_t s, int64_t q)
{
    const dsacp_serve_request *rq = &S->rq[s];
    const dsacp_serve_out *out = &S->res->out[s];
    if (q < rq->prompt_len) return rq->prompt[q];
    q -= rq->prompt_len;
    return q < out->n_tokens ? out->tokens[q] : 0;
}

int dsacp_spec_cut_back(sched *S, int64_t s, int64_t keep)
{
    /* The MTP positions beyond `keep` go too; below it they are the catch-up's to extend (method
     * mtp), or what an import brought (an MTP engine under ngram) -- never more than held. */
    const int64_t ml = dsacp_engine_request_mtp_length(S->e, S->eid[s]);
    return ml < 0 ? (int)ml : dsacp_engine_truncate_request(S->e, S->eid[s], keep, ml < keep ? ml : keep);
}

typedef struct spec_rng_arg {
    uint64_t seed;
    int64_t req, base;
} spec_rng_arg;

/* Output token base + j of the request: the loop's sampler's seeding. */
static void spec_rng_for(void *arg, int64_t j, dsacp_rng *rng)
{
    const spec_rng_arg *a = arg;
    dsacp_spec_rng(rng, a->seed, a->req, a->base + j);
}

int dsacp_spec_accept(sched *S, loop *L, int64_t i, const float *logits, bool *stopped)
{
    const int64_t s = S->ent_s[i], k = S->ent_k[i], V = L->V;
    sreq *r = &S->r[s];
    dsacp_serve_result *res = S->res;
    const dsacp_serve_options *o = S->o;
    int32_t run[DSACP_SPEC_MAX_TOKENS + 1];
    int64_t a;
    if (o->temperature <= 0) {
        a = dsacp_spec_accept_greedy(logits, V, r->draft, k, run);
    } else {
        for (int64_t j = 0; j <= k; j++)
            dsacp_spec_target_probs(logits + j * V, V, o->temperature, o->top_p, L->swork, L->probs + j * V);
        spec_rng_arg arg = {S->r[s].seed, S->r[s].rng_req, res->out[s].n_tokens};
        a = dsacp_spec_accept_sample(L->probs, NULL, V, r->draft, k, spec_rng_for, &arg,
                                     L->probs + (DSACP_SPEC_MAX_TOKENS + 1) * V, run);
    }
    res->spec_num_drafts++;
    res->spec_num_draft_tokens += k;
    res->spec_num_accepted_tokens += a;
    for (int64_t j = 0; j < a; j++) res->spec_accepted_per_pos[j]++;
    S->ent_a[i] = a;
    /* The last sampled token and the accepted drafts stay cached; the rest is cut back. */
    const int64_t keep = r->fed + 1 + a;
    r->fed = keep;
    r->n_draft = 0;
    int rc = dsacp_serve_plan_push(&S->truncs, s);
    if (!rc) rc = dsacp_serve_plan_push(&S->truncs, keep);
    if (!rc) rc = dsacp_spec_cut_back(S, s, keep);
    *stopped = false;
    for (int64_t j = 0; j <= a && !rc && !*stopped; j++)
        rc = dsacp_serve_emit(S, L, s, run[j], dsacp_serve_top2_gap(logits + j * V, V), stopped);
    return rc;
}

/* ---- method mtp ---- */

/* Rank 0's words for the catch-up step: per entry its logits rows and its rows' tokens (row p:
 * the token at p + 1 where known), then the cut backs [n, (s, length)...]. */
static int catchup_words(sched *S, loop *L, plan *w)
{
    int rc = DSACP_OK;
    w->n = 0;
    for (int64_t i = 0; i < L->n_ent && !rc; i++) {
        const int64_t s = L->ent_s[i], c = L->ent[i].n_tokens;
        const int64_t p0 = dsacp_engine_request_mtp_length(S->e, S->eid[s]);
        if (p0 < 0) return (int)p0;
        const bool verify = L->opts[i].flags & DSACP_ENTRY_VERIFY;
        rc = dsacp_serve_plan_push(w, verify ? L->opts[i].n_logits - S->ent_a[i] : 1);
        for (int64_t j = 0; j < c && !rc; j++) rc = dsacp_serve_plan_push(w, dsacp_spec_token_at(S, s, p0 + j + 1));
    }
    if (!rc) rc = dsacp_serve_plan_push(w, S->truncs.n / 2);
    for (int64_t j = 0; j < S->truncs.n && !rc; j++) rc = dsacp_serve_plan_push(w, S->truncs.w[j]);
    return rc;
}

/* Every rank: the cut backs of the target step's verify entries (rank 0 made them while
 * accepting), the catch-up MTP step over its entries, each entry's MTP positions cut back to its
 * target length. Rank 0:
 * each request that now decodes gets its first draft (the argmax of the entry's first logits
 * row: row a of a verify entry, the last row of any other). */
static int mtp_catchup(sched *S, loop *L)
{
    const int64_t n = L->n_ent, V = L->V;
    int rc = L->root ? catchup_words(S, L, &L->sw) : DSACP_OK;
    rc = dsacp_comm_agree(L->c, rc);
    if (!rc) rc = dsacp_serve_plan_bcast(L->c, &L->sw);
    if (rc) return rc;
    dsacp_step_entry *ent = malloc((size_t)(n > 0 ? n : 1) * sizeof *ent);
    dsacp_entry_opts *opts = malloc((size_t)(n > 0 ? n : 1) * sizeof *opts);
    int32_t *ids = malloc((size_t)(L->sw.n > 0 ? L->sw.n : 1) * sizeof *ids);
    int64_t k = 0, t = 0, rows = 0;
    if (!ent || !opts || !ids) rc = dsacp_error(DSACP_ENOMEM, "out of memory for an MTP step");
    for (int64_t i = 0; i < n && !rc; i++) {
        const int64_t c = L->ent[i].n_tokens;
        opts[i] = (dsacp_entry_opts){L->sw.w[k++], L->opts[i].flags};
        for (int64_t j = 0; j < c; j++) ids[t + j] = (int32_t)L->sw.w[k + j];
        ent[i] = (dsacp_step_entry){L->ent[i].request_id, c, ids + t};
        k += c, t += c, rows += opts[i].n_logits;
    }
    if (!rc && L->root && !(L->mtp_logits = realloc(L->mtp_logits, (size_t)(rows > 0 ? rows : 1) * (size_t)V * sizeof *L->mtp_logits)))
        rc = dsacp_error(DSACP_ENOMEM, "out of memory for the MTP logits");
    const int64_t n_trunc = rc ? 0 : L->sw.w[k++];
    for (int64_t j = 0; j < n_trunc && !rc && !L->root; j++, k += 2) rc = dsacp_spec_cut_back(S, L->sw.w[k], L->sw.w[k + 1]);
    rc = dsacp_comm_agree(L->c, rc);
    if (!rc) rc = dsacp_engine_mtp_step(S->e, ent, opts, n, L->root ? L->mtp_logits : NULL, NULL);
    for (int64_t i = 0; i < n && !rc; i++) {
        const int64_t len = dsacp_engine_request_length(S->e, ent[i].request_id);
        rc = len < 0 ? (int)len : dsacp_engine_truncate_request(S->e, ent[i].request_id, len, len);
    }
    for (int64_t i = 0, row = 0; i < n && !rc && L->root; row += opts[i].n_logits, i++) {
        sreq *r = &S->r[L->ent_s[i]];
        const bool decoding = r->state == ST_RUNNING && r->len - r->fed == 1;
        r->n_draft = decoding ? 1 : 0;
        if (decoding) r->draft[0] = dsacp_spec_argmax(L->mtp_logits + row * V, V);
    }
    free(ent), free(opts), free(ids);
    return rc;
}

/* Rank 0's words for chain step j (1-based): [n, (s, token)...], the requests of the previous MTP
 * step that decode and want a draft j + 1 (in[s] marks them; it is narrowed). */
static int chain_words(sched *S, int64_t j, bool *in, plan *w)
{
    w->n = 0;
    int64_t n = 0;
    int rc = dsacp_serve_plan_push(w, 0);
    for (int64_t s = 0; s < S->n && !rc; s++) {
        const sreq *r = &S->r[s];
        in[s] = in[s] && r->state == ST_RUNNING && r->n_draft == j && drafts_wanted(S, s) > j;
        if (!in[s]) continue;
        /* The chain row at p = fed + j - 1 may need a block beyond the target's: the pools must
         * hold it beside the others of this step (the scheduler counts target positions only). */
        S->fit_id[n] = S->eid[s], S->fit_len[n] = r->fed + j;
        if (!dsacp_engine_fits(S->e, S->fit_id, S->fit_len, n + 1)) {
            in[s] = false;
            continue;
        }
        if (!(rc = dsacp_serve_plan_push(w, s))) rc = dsacp_serve_plan_push(w, r->draft[j - 1]);
        n++;
    }
    w->w[0] = n;
    return rc;
}

/* Every rank: one chain step of the words' entries (one row each, at the request's MTP length);
 * rank 0 keeps each row's argmax as the request's draft j + 1. */
static int chain_step(sched *S, loop *L, int64_t j)
{
    const int64_t n = L->sw.w[0];
    dsacp_step_entry *ent = malloc((size_t)n * sizeof *ent);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    int rc = ent && ids ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for an MTP step");
    for (int64_t i = 0; i < n && !rc; i++) {
        ids[i] = (int32_t)L->sw.w[2 + 2 * i];
        ent[i] = (dsacp_step_entry){S->eid[L->sw.w[1 + 2 * i]], 1, ids + i};
    }
    rc = dsacp_comm_agree(L->c, rc);
    if (!rc) rc = dsacp_engine_mtp_step(S->e, ent, NULL, n, L->root ? L->mtp_logits : NULL, NULL);
    for (int64_t i = 0; i < n && !rc && L->root; i++) {
        sreq *r = &S->r[L->sw.w[1 + 2 * i]];
        r->draft[j] = dsacp_spec_argmax(L->mtp_logits + i * L->V, L->V);
        r->n_draft = j + 1;
    }
    free(ent), free(ids);
    return rc;
}

/* Every rank: after the chain, each chained request's MTP positions are cut back to its target
 * length (the chain's rows are scratch; the next catch-up starts there). */
static int chain_cut(sched *S, const plan *first)
{
    int rc = DSACP_OK;
    for (int64_t i = 0; i < first->w[0] && !rc; i++) {
        const int64_t id = S->eid[first->w[1 + 2 * i]], len = dsacp_engine_request_length(S->e, id);
        rc = len < 0 ? (int)len : dsacp_engine_truncate_request(S->e, id, len, len);
    }
    return rc;
}

int dsacp_spec_mtp_round(sched *S, loop *L)
{
    const double t0 = dsacp_now();
    int rc = mtp_catchup(S, L);
    L->draft_steps = 1;
    bool *in = L->root ? malloc((size_t)(S->n > 0 ? S->n : 1) * sizeof *in) : NULL;
    if (L->root && !in) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t s = 0; in && s < S->n; s++) in[s] = false;
    for (int64_t i = 0; in && i < L->n_ent; i++) in[L->ent_s[i]] = true; /* the catch-up's requests */
    plan first = {0};
    rc = dsacp_comm_agree(L->c, rc);
    for (int64_t j = 1; j < S->o->spec.num_speculative_tokens && !rc; j++) {
        if (L->root) rc = chain_words(S, j, in, &L->sw);
        rc = dsacp_comm_agree(L->c, rc);
        if (!rc) rc = dsacp_serve_plan_bcast(L->c, &L->sw);
        if (rc || L->sw.w[0] == 0) break;
        if (j == 1) /* the chained requests: later steps take subsets */
            for (int64_t i = 0; i < L->sw.n && !rc; i++) rc = dsacp_serve_plan_push(&first, L->sw.w[i]);
        if (!rc) rc = chain_step(S, L, j);
        L->draft_steps++;
    }
    if (!rc && first.n > 0) rc = chain_cut(S, &first);
    free(first.w), free(in);
    L->draft_ms += (dsacp_now() - t0) * 1e3;
    return rc;
}

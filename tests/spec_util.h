/*
 * spec_util.h -- the speculative greedy driver that test_spec_engine.c (W = 1) and test_cp_spec.c
 * (W = 1..4) share (issue 23, docs/speculative.md). One driver runs a few requests through an
 * engine step by step: prompts prefilled (whole, or in chunks from a chosen step on, mixed with
 * the others' verify entries), then greedy decoding, either
 *   - SPEC_REF: one token per step (dsacp_engine_step, every row's logits and selected sets: the
 *     one-by-one reference, recorded per position), or
 *   - SPEC_ORACLE: verify entries [t_L, d_1..d_k'] (DSACP_ENTRY_VERIFY, n_logits k' + 1) whose
 *     drafts are the reference's continuation, corrupted at a chosen draft per round (full,
 *     partial and zero acceptance), or
 *   - SPEC_MTP: the same with the MTP layer's drafts (catch-up step with the target step's
 *     entries, then k - 1 chain steps),
 * accepting greedily on rank 0 (the verdicts broadcast), truncating the rejected positions on
 * every rank, and checking on rank 0, row by row, each valid row (a prefill row, a verify row whose
 * inputs were all accepted) against the reference at its position (selected sets of every layer
 * identical, logits bit-identical or within tol), every step against another run's log
 * (want: rows, tokens, selected sets, logits), and after every truncation this rank's KV use
 * against the blocks its requests' spans need.
 */
#ifndef DSACP_SPEC_UTIL_H
#define DSACP_SPEC_UTIL_H

#include "test.h"
#include "dsacp_cp.h"
#include "ref/test_util.h"

#include <math.h>
#include <stdint.h>

enum { SPEC_MAXR = 6, SPEC_MAXK = 3 };

typedef enum spec_mode { SPEC_REF = 0, SPEC_ORACLE = 1, SPEC_MTP = 2 } spec_mode;

typedef struct spec_req {
    int64_t prompt, n_new; /* prompt tokens, tokens to generate */
    int64_t chunk, start;  /* prefill chunk (0: the whole prompt) and the step it starts at */
    int k;                 /* drafts per round (0..SPEC_MAXK) */
    const char *miss;      /* oracle: per round (cycling), the first wrong draft ('0': none) */
    uint64_t seed;         /* prompt ids */
} spec_req;

/* One request's one-by-one reference (the REF run; logits and sets on rank 0, seq everywhere). */
typedef struct spec_ref {
    int64_t n;      /* prompt + n_new */
    int32_t *seq;   /* [n] */
    float *lg;      /* [n][V]: after the token at p */
    int32_t *tk;    /* [n][L][K] */
    float *mlg;     /* [n][V] MTP logits at p (token p + 1, target hidden p), or NULL */
    int32_t *mtk;   /* [n][K] */
} spec_ref;

/* One step's outputs as rank 0 saw them (the log another run is compared with). */
typedef struct spec_rec {
    bool mtp;
    int64_t nent, T, M;
    int64_t req[SPEC_MAXR], pos0[SPEC_MAXR], n[SPEC_MAXR];
    int32_t *tok; /* [T] */
    float *lg;    /* [M][V] */
    int32_t *tk;  /* [layers][T][K] (target: L layers, MTP: 1) */
} spec_rec;

typedef struct spec_log {
    spec_rec *s;
    int64_t n, cap;
} spec_log;

typedef struct spec_stats {
    int64_t steps, mtp_steps, chain_steps, verify_entries, verify_rows, drafted, accepted, crossings, mixed;
    int64_t full, partial, zero; /* verify entries with every draft, some, none accepted */
    int64_t rows_checked, usage_checks, truncations;
    int64_t rows_req[SPEC_MAXR]; /* target rows checked against the reference, per request */
    int64_t rows_prompt, rows_decode; /* target rows of prompt chunks, of decode and verify entries (every rank) */
    double worst_rel; /* logits against the reference */
    double worst_log; /* logits against want */
} spec_stats;

typedef struct spec_run {
    const char *what;
    dsacp_engine *e;
    const dsacp_config *cfg;
    dsacp_comm *comm; /* NULL: one process */
    int rank;
    spec_mode mode;
    bool mtp;              /* run the MTP layer's steps (engine created with opt.mtp) */
    const spec_req *req;
    int nreq;
    spec_ref *ref;         /* [nreq]: filled by SPEC_REF, read by the others */
    double tol;            /* logits against ref and want: 0 = bit-identical */
    spec_log *log;         /* rank 0: every step appended (NULL: none) */
    const spec_log *want;  /* rank 0: every step compared (NULL: none) */
    /* KV use after every truncation (rank's blocks of each layout); block_size 0: not checked */
    int64_t block_size, I, W, nlayers;
    dsacp_cp_layout kv_layout, index_layout;
    dsacp_kv_dtype kv_dtype;
    bool deployed;
    spec_stats st;
} spec_run;

/* Per request state of a run. */
typedef struct spec_state {
    int64_t id, len, gen, round; /* len: target positions cached; seq holds len + 1 once decoding */
    int64_t nseq;
    int32_t *seq;                /* [prompt + n_new] */
    int32_t *buf;                /* [prompt + n_new + SPEC_MAXK + 1]: verify / catch-up tokens */
    int32_t draft[SPEC_MAXK + 1];
    int64_t ndraft;              /* drafts of the next round (MTP) */
    bool started, done, ended;
} spec_state;

static inline int32_t spec_argmax(const float *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return (int32_t)b;
}

static inline void spec_bcast(const spec_run *r, void *buf, size_t n)
{
    if (r->comm) REQUIRE_OK(dsacp_comm_bcast(r->comm, buf, n, DSACP_PHASE_input));
}

static inline void *spec_xalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* The reference's arrays for the requests (REF run: seq on every rank, the rest on rank 0). */
static inline void spec_ref_alloc(spec_ref *ref, const spec_req *q, int nreq, const dsacp_config *cfg, bool mtp)
{
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, L = cfg->num_hidden_layers;
    for (int i = 0; i < nreq; i++) {
        const int64_t n = q[i].prompt + q[i].n_new;
        ref[i].n = n;
        ref[i].seq = spec_xalloc((size_t)n * sizeof(int32_t));
        tu_random_ids(ref[i].seq, q[i].prompt, V, q[i].seed);
        ref[i].lg = spec_xalloc((size_t)(n * V) * sizeof(float));
        ref[i].tk = spec_xalloc((size_t)(n * L * K) * sizeof(int32_t));
        ref[i].mlg = mtp ? spec_xalloc((size_t)(n * V) * sizeof(float)) : NULL;
        ref[i].mtk = mtp ? spec_xalloc((size_t)(n * K) * sizeof(int32_t)) : NULL;
    }
}

static inline void spec_ref_free(spec_ref *ref, int nreq)
{
    for (int i = 0; i < nreq; i++) free(ref[i].seq), free(ref[i].lg), free(ref[i].tk), free(ref[i].mlg), free(ref[i].mtk);
}

static inline void spec_log_free(spec_log *lg)
{
    for (int64_t i = 0; i < lg->n; i++) free(lg->s[i].tok), free(lg->s[i].lg), free(lg->s[i].tk);
    free(lg->s);
    memset(lg, 0, sizeof *lg);
}

/* Relative difference of two logits rows (0 when bit-identical). */
static inline double spec_row_diff(const float *a, const float *b, int64_t V)
{
    if (memcmp(a, b, (size_t)V * sizeof(float)) == 0) return 0;
    const double r = tu_max_rel_ff(a, b, V);
    return isnan(r) ? INFINITY : r > 0 ? r : 1e-30; /* differing bits count as a difference */
}

static inline bool spec_within(double d, double tol) { return tol == 0 ? d == 0 : d <= tol; }

/* The step against want's step of the same index (rank 0). */
static inline void spec_check_want(spec_run *r, const spec_rec *g)
{
    const int64_t s = r->st.steps + r->st.mtp_steps - 1;
    const char *kind = g->mtp ? "MTP" : "target";
    if (!r->want) return;
    if (s >= r->want->n) {
        CHECKF(0, "%s: %s step %lld: the reference run had only %lld steps", r->what, kind, (long long)s, (long long)r->want->n);
        return;
    }
    const spec_rec *w = &r->want->s[s];
    bool same = w->mtp == g->mtp && w->nent == g->nent && w->T == g->T && w->M == g->M;
    for (int64_t i = 0; same && i < g->nent; i++) same = w->req[i] == g->req[i] && w->pos0[i] == g->pos0[i] && w->n[i] == g->n[i];
    if (!same) {
        CHECKF(0, "%s: %s step %lld has other entries than the one-process run's (%lld entries, %lld rows; there %lld, %lld): "
               "an acceptance differed before", r->what, kind, (long long)s, (long long)g->nent, (long long)g->T,
               (long long)w->nent, (long long)w->T);
        return;
    }
    const int64_t V = r->cfg->vocab_size, K = r->cfg->index_topk, NL = g->mtp ? 1 : r->cfg->num_hidden_layers;
    CHECKF(memcmp(w->tok, g->tok, (size_t)g->T * sizeof(int32_t)) == 0, "%s: %s step %lld: token ids (drafts) differ from "
           "the one-process run's", r->what, kind, (long long)s);
    for (int64_t t = 0, i = 0, j = 0; t < g->T; t++, j++) {
        while (j >= g->n[i]) i++, j = 0;
        for (int64_t l = 0; l < NL; l++)
            CHECKF(memcmp(w->tk + (l * g->T + t) * K, g->tk + (l * g->T + t) * K, (size_t)K * sizeof(int32_t)) == 0,
                   "%s: %s step %lld, request %lld row %lld (position %lld), layer %lld: selected set differs from the "
                   "one-process run's", r->what, kind, (long long)s, (long long)g->req[i], (long long)j,
                   (long long)(g->pos0[i] + j), (long long)(g->mtp ? r->cfg->num_hidden_layers : l));
    }
    for (int64_t m = 0; m < g->M; m++) {
        const double d = spec_row_diff(g->lg + m * V, w->lg + m * V, V);
        r->st.worst_log = fmax(r->st.worst_log, d);
        CHECKF(spec_within(d, r->tol), "%s: %s step %lld, logits row %lld: max rel %.3g from the one-process run's "
               "(tolerance %.1g)", r->what, kind, (long long)s, (long long)m, d, r->tol);
    }
}

/* Appends the step to the log and compares it with want (rank 0). */
static inline void spec_record(spec_run *r, bool mtp, const dsacp_step_entry *en, const int64_t *req, const int64_t *pos0,
                               int64_t nent, int64_t T, int64_t M, const float *lg, const int32_t *tk)
{
    const int64_t V = r->cfg->vocab_size, K = r->cfg->index_topk, NL = mtp ? 1 : r->cfg->num_hidden_layers;
    spec_rec g = {.mtp = mtp, .nent = nent, .T = T, .M = M};
    g.tok = spec_xalloc((size_t)T * sizeof(int32_t));
    for (int64_t i = 0, t = 0; i < nent; t += en[i].n_tokens, i++) {
        g.req[i] = req[i], g.pos0[i] = pos0[i], g.n[i] = en[i].n_tokens;
        memcpy(g.tok + t, en[i].token_ids, (size_t)en[i].n_tokens * sizeof(int32_t));
    }
    g.lg = spec_xalloc((size_t)(M * V) * sizeof(float));
    memcpy(g.lg, lg, (size_t)(M * V) * sizeof(float));
    g.tk = spec_xalloc((size_t)(NL * T * K) * sizeof(int32_t));
    memcpy(g.tk, tk, (size_t)(NL * T * K) * sizeof(int32_t));
    spec_check_want(r, &g);
    if (!r->log) {
        free(g.tok), free(g.lg), free(g.tk);
        return;
    }
    if (r->log->n == r->log->cap) {
        r->log->cap = r->log->cap ? 2 * r->log->cap : 64;
        r->log->s = realloc(r->log->s, (size_t)r->log->cap * sizeof *r->log->s);
        if (!r->log->s) exit(1);
    }
    r->log->s[r->log->n++] = g;
}

/* This rank's KV use against the blocks its live requests' spans need. */
static inline void spec_check_usage(spec_run *r, const spec_state *s)
{
    if (!r->block_size) return;
    const int64_t B = r->block_size, q = r->rank;
    int64_t blocks[2] = {0, 0};
    const dsacp_cp_layout lay[2] = {r->kv_layout, r->index_layout};
    for (int i = 0; i < r->nreq; i++) {
        if (!s[i].started || s[i].ended) continue;
        const int64_t ml = r->mtp ? dsacp_engine_request_mtp_length(r->e, s[i].id) : 0;
        const int64_t span = s[i].len > ml ? s[i].len : ml;
        for (int c = 0; c < 2; c++) {
            const int64_t kept = r->W == 1 || lay[c] == DSACP_LAYOUT_REPLICATED ? span : dsacp_cp_local_len(span, q, r->I, r->W);
            blocks[c] += (kept + B - 1) / B;
        }
    }
    dsacp_kv_usage u;
    dsacp_engine_kv_usage(r->e, &u);
    const int64_t lat = blocks[0] * B * dsacp_mla_cache_bytes_per_token(r->cfg, r->kv_dtype) * r->nlayers;
    const int64_t idx = blocks[1] * B * dsacp_index_cache_bytes_per_token(r->cfg, r->deployed ? DSACP_KV_FP8 : DSACP_KV_F32) *
                        r->nlayers;
    r->st.usage_checks++;
    CHECKF(u.latent_used_bytes == lat, "%s: rank %d after step %lld's truncation: latent cache uses %lld bytes, the "
           "requests' spans need %lld (%lld blocks)", r->what, r->rank, (long long)r->st.steps, (long long)u.latent_used_bytes,
           (long long)lat, (long long)blocks[0]);
    if (r->index_layout != DSACP_LAYOUT_PARTIAL)
        CHECKF(u.index_used_bytes == idx, "%s: rank %d after step %lld's truncation: indexer cache uses %lld bytes, the "
               "requests' spans need %lld (%lld blocks)", r->what, r->rank, (long long)r->st.steps,
               (long long)u.index_used_bytes, (long long)idx, (long long)blocks[1]);
}

/* One step of the run: its entries and, per entry, its request, first position and drafts
 * (-1: a prompt chunk), and rank 0's verdicts (accepted a, next token b or -1). */
typedef struct spec_step {
    dsacp_step_entry en[SPEC_MAXR];
    dsacp_entry_opts op[SPEC_MAXR];
    int64_t req[SPEC_MAXR], pos0[SPEC_MAXR], kp[SPEC_MAXR], expect[SPEC_MAXR]; /* expect: the oracle's a */
    int64_t n, T, M;
    int32_t verdict[SPEC_MAXR][3]; /* a, b, the MTP draft d'_1 (-1: none) */
} spec_step;

/* The oracle's first wrong draft of a round (0: none). */
static inline int64_t spec_miss(const spec_req *q, int64_t round)
{
    const size_t n = q->miss ? strlen(q->miss) : 0;
    return n ? q->miss[round % (int64_t)n] - '0' : 0;
}

/* Entry i of the target step for request i's state, if it runs in step `s`. */
static inline void spec_add_entry(spec_run *r, spec_step *st, spec_state *x, int i, int64_t s)
{
    const spec_req *q = &r->req[i];
    if (x->done) return;
    if (!x->started) {
        if (s < q->start) return;
        REQUIRE_OK(dsacp_engine_add_request(r->e, &x->id));
        x->started = true;
    }
    const int64_t e = st->n++;
    st->req[e] = i, st->pos0[e] = x->len;
    if (x->len < q->prompt) {
        const int64_t left = q->prompt - x->len, n = q->chunk && q->chunk < left ? q->chunk : left;
        st->en[e] = (dsacp_step_entry){x->id, n, x->seq + x->len};
        st->op[e] = (dsacp_entry_opts){r->mode == SPEC_REF ? n : 1, 0};
        st->kp[e] = st->expect[e] = -1;
        return;
    }
    int64_t kp = r->mode == SPEC_REF ? 0 : q->k < q->n_new - x->gen - 1 ? q->k : q->n_new - x->gen - 1;
    if (r->mode == SPEC_MTP && kp > x->ndraft) kp = x->ndraft;
    const int64_t miss = spec_miss(q, x->round);
    x->buf[0] = x->seq[x->len];
    for (int64_t j = 1; j <= kp; j++) {
        const int32_t want = r->mode == SPEC_MTP ? x->draft[j - 1] : r->ref[i].seq[x->len + j];
        x->buf[j] = r->mode == SPEC_ORACLE && miss && j >= miss ? (int32_t)((want + 1 + j) % r->cfg->vocab_size) : want;
    }
    st->en[e] = (dsacp_step_entry){x->id, kp + 1, x->buf};
    st->op[e] = (dsacp_entry_opts){kp + 1, r->mode == SPEC_REF ? 0u : DSACP_ENTRY_VERIFY};
    st->kp[e] = kp;
    st->expect[e] = r->mode != SPEC_ORACLE ? -1 : miss >= 1 && miss <= kp ? miss - 1 : kp;
}

/* Rank 0: one row's selected sets (every layer of the target, or the MTP layer's) against the
 * reference at position p. */
static inline void spec_check_sets(spec_run *r, bool mtp, const int32_t *tk, int64_t T, int64_t t, int i, int64_t p)
{
    const int64_t K = r->cfg->index_topk, L = r->cfg->num_hidden_layers;
    const spec_ref *f = &r->ref[i];
    for (int64_t l = 0; l < (mtp ? 1 : L); l++) {
        const int32_t *want = mtp ? f->mtk + p * K : f->tk + (p * L + l) * K;
        CHECKF(memcmp(tk + (l * T + t) * K, want, (size_t)K * sizeof(int32_t)) == 0, "%s: %s step %lld, request %d "
               "position %lld, layer %lld: selected set differs from the one-by-one decode's", r->what, mtp ? "MTP" : "target",
               (long long)(mtp ? r->st.mtp_steps : r->st.steps), i, (long long)p, (long long)(mtp ? L : l));
    }
    r->st.rows_checked++;
    if (!mtp) r->st.rows_req[i]++;
}

/* Rank 0: a logits row against the reference's at position p. */
static inline void spec_check_logits(spec_run *r, bool mtp, const float *row, int i, int64_t p)
{
    const int64_t V = r->cfg->vocab_size;
    const double d = spec_row_diff(row, (mtp ? r->ref[i].mlg : r->ref[i].lg) + p * V, V);
    r->st.worst_rel = fmax(r->st.worst_rel, d);
    CHECKF(spec_within(d, r->tol), "%s: %s logits of request %d at position %lld: max rel %.3g from the one-by-one "
           "decode's (tolerance %.1g%s)", r->what, mtp ? "MTP" : "target", i, (long long)p, d, r->tol,
           r->tol == 0 ? ": bit-identical expected" : "");
}

/* Rank 0: the REF run records row t (position p) of a step. */
static inline void spec_keep(spec_run *r, bool mtp, const float *row, const int32_t *tk, int64_t T, int64_t t, int i, int64_t p)
{
    const int64_t V = r->cfg->vocab_size, K = r->cfg->index_topk, L = r->cfg->num_hidden_layers;
    spec_ref *f = &r->ref[i];
    if (row) memcpy((mtp ? f->mlg : f->lg) + p * V, row, (size_t)V * sizeof(float));
    for (int64_t l = 0; l < (mtp ? 1 : L); l++)
        memcpy(mtp ? f->mtk + p * K : f->tk + (p * L + l) * K, tk + (l * T + t) * K, (size_t)K * sizeof(int32_t));
}

/* Rank 0: the target step's verdicts and its rows against the reference. */
static inline void spec_judge(spec_run *r, spec_step *st, const float *lg, const int32_t *tk)
{
    const int64_t V = r->cfg->vocab_size, K = r->cfg->index_topk;
    bool prefill = false, verify = false;
    for (int64_t e = 0, t = 0, m = 0; e < st->n; t += st->en[e].n_tokens, m += st->op[e].n_logits, e++) {
        const int i = (int)st->req[e];
        const int64_t n = st->en[e].n_tokens, p0 = st->pos0[e], kp = st->kp[e];
        int32_t *v = st->verdict[e];
        v[0] = 0, v[1] = -1, v[2] = -1;
        if (kp < 0) { /* a prompt chunk */
            prefill |= n > 1;
            if (p0 + n == r->req[i].prompt) v[1] = spec_argmax(lg + (m + st->op[e].n_logits - 1) * V, V);
            for (int64_t j = 0; j < n; j++) {
                const float *row = j >= n - st->op[e].n_logits ? lg + (m + j - (n - st->op[e].n_logits)) * V : NULL;
                if (r->mode == SPEC_REF) spec_keep(r, false, row, tk, st->T, t + j, i, p0 + j);
                else spec_check_sets(r, false, tk, st->T, t + j, i, p0 + j);
            }
            if (r->mode != SPEC_REF) spec_check_logits(r, false, lg + (m + st->op[e].n_logits - 1) * V, i, p0 + n - 1);
            continue;
        }
        int64_t a = 0;
        while (a < kp && spec_argmax(lg + (m + a) * V, V) == st->en[e].token_ids[a + 1]) a++;
        v[0] = (int32_t)a, v[1] = spec_argmax(lg + (m + a) * V, V);
        if (r->mode == SPEC_REF) {
            spec_keep(r, false, lg + m * V, tk, st->T, t, i, p0);
            continue;
        }
        verify |= kp > 0;
        r->st.verify_entries++, r->st.verify_rows += kp + 1, r->st.drafted += kp, r->st.accepted += a;
        r->st.crossings += p0 + 1 <= K && p0 + kp + 1 > K;
        r->st.full += kp > 0 && a == kp, r->st.partial += a > 0 && a < kp, r->st.zero += kp > 0 && a == 0;
        if (st->expect[e] >= 0)
            CHECKF(a == st->expect[e], "%s: step %lld, request %d at position %lld: %lld of %lld drafts accepted, the oracle's "
                   "drafts make %lld", r->what, (long long)r->st.steps, i, (long long)p0, (long long)a, (long long)kp,
                   (long long)st->expect[e]);
        for (int64_t j = 0; j <= a; j++) {
            spec_check_sets(r, false, tk, st->T, t + j, i, p0 + j);
            spec_check_logits(r, false, lg + (m + j) * V, i, p0 + j);
        }
    }
    r->st.mixed += prefill && verify;
}

/* Every rank: the verdicts applied -- tokens appended, rejected positions truncated. */
static inline void spec_apply(spec_run *r, const spec_step *st, spec_state *xs)
{
    for (int64_t e = 0; e < st->n; e++) {
        spec_state *x = &xs[st->req[e]];
        const int32_t *v = st->verdict[e];
        const int64_t n = st->en[e].n_tokens, p0 = st->pos0[e];
        x->len = p0 + n;
        if (st->kp[e] < 0) {
            if (v[1] >= 0) x->seq[x->nseq++] = v[1], x->gen = 1;
        } else {
            for (int64_t j = 1; j <= v[0]; j++) x->seq[x->nseq++] = st->en[e].token_ids[j];
            x->seq[x->nseq++] = v[1];
            x->gen += v[0] + 1, x->round++;
            if (r->mode != SPEC_REF) {
                const int64_t ml = r->mtp ? dsacp_engine_request_mtp_length(r->e, x->id) : 0;
                CHECK_OK(dsacp_engine_truncate_request(r->e, x->id, p0 + v[0] + 1, ml));
                r->st.truncations++;
                x->len = p0 + v[0] + 1;
                CHECKF(dsacp_engine_request_length(r->e, x->id) == x->len, "%s: rank %d: request length %lld after "
                       "truncating to %lld", r->what, r->rank, (long long)dsacp_engine_request_length(r->e, x->id),
                       (long long)x->len);
            }
        }
        x->done = x->gen == r->req[st->req[e]].n_new;
    }
}

/* Every rank: each MTP length of the step's requests back to its target length. */
static inline void spec_mtp_truncate(spec_run *r, const int64_t *req, int64_t n, spec_state *xs)
{
    for (int64_t e = 0; e < n; e++) {
        spec_state *x = &xs[req[e]];
        CHECK_OK(dsacp_engine_truncate_request(r->e, x->id, x->len, x->len));
        const int64_t ml = dsacp_engine_request_mtp_length(r->e, x->id);
        CHECKF(ml == x->len, "%s: rank %d: MTP length %lld after truncating to %lld", r->what, r->rank, (long long)ml,
               (long long)x->len);
    }
}

/* One MTP step (catch-up when chain is false): the call, rank 0's checks and drafts, the log. */
static inline int spec_mtp_call(spec_run *r, spec_step *c, bool chain)
{
    const int64_t V = r->cfg->vocab_size, K = r->cfg->index_topk;
    float *lg = spec_xalloc((size_t)(c->M * V) * sizeof(float));
    int32_t *tk = spec_xalloc((size_t)(c->T * K) * sizeof(int32_t));
    const int rc = dsacp_engine_mtp_step(r->e, c->en, c->op, c->n, lg, tk);
    CHECKF(rc == DSACP_OK, "%s: rank %d: %s MTP step %lld: %s: %s", r->what, r->rank, chain ? "chain" : "catch-up",
           (long long)r->st.mtp_steps, dsacp_status_name(rc), dsacp_last_error());
    r->st.mtp_steps++, r->st.chain_steps += chain;
    if (!rc && r->rank == 0) {
        for (int64_t e = 0, t = 0, m = 0; e < c->n; t += c->en[e].n_tokens, m += c->op[e].n_logits, e++) {
            const int i = (int)c->req[e];
            const int64_t n = c->en[e].n_tokens, p0 = c->pos0[e], a = c->kp[e] < 0 ? n - 1 : c->verdict[e][0];
            c->verdict[e][2] = spec_argmax(lg + m * V, V);
            if (chain) continue;
            for (int64_t j = 0; j < n; j++) {
                if (r->mode == SPEC_REF) spec_keep(r, true, lg + (m + j) * V, tk, c->T, t + j, i, p0 + j);
                else if (j <= a) spec_check_sets(r, true, tk, c->T, t + j, i, p0 + j);
            }
            if (r->mode != SPEC_REF) spec_check_logits(r, true, lg + m * V, i, p0 + a);
        }
        int64_t req[SPEC_MAXR];
        for (int64_t e = 0; e < c->n; e++) req[e] = c->req[e];
        spec_record(r, true, c->en, req, c->pos0, c->n, c->T, c->M, lg, tk);
    }
    free(lg), free(tk);
    spec_bcast(r, c->verdict, sizeof c->verdict);
    return rc;
}

/* The MTP catch-up step with the target step's entries (row p's token: seq[p + 1] when known),
 * then the chain steps to each request's next round's drafts; MTP lengths back to the target's. */
static inline int spec_mtp(spec_run *r, const spec_step *st, spec_state *xs)
{
    spec_step c = *st;
    c.M = 0;
    for (int64_t e = 0; e < c.n; e++) {
        spec_state *x = &xs[c.req[e]];
        const int64_t n = c.en[e].n_tokens, p0 = c.pos0[e];
        int32_t *b = x->buf + SPEC_MAXK + 1;
        for (int64_t j = 0; j < n; j++) b[j] = p0 + j + 1 < x->nseq ? x->seq[p0 + j + 1] : 0;
        c.en[e].token_ids = b;
        c.op[e].n_logits = r->mode == SPEC_REF ? n : c.kp[e] < 0 ? 1 : c.kp[e] + 1 - c.verdict[e][0];
        c.M += c.op[e].n_logits;
    }
    int rc = spec_mtp_call(r, &c, false);
    if (rc) return rc;
    for (int64_t e = 0; e < c.n; e++) xs[c.req[e]].draft[0] = c.verdict[e][2], xs[c.req[e]].ndraft = 1;
    spec_mtp_truncate(r, c.req, c.n, xs);
    int64_t chained[SPEC_MAXR], nch = 0;
    for (int j = 1; j < SPEC_MAXK && r->mode == SPEC_MTP; j++) {
        spec_step h = {0};
        for (int i = 0; i < r->nreq; i++) {
            spec_state *x = &xs[i];
            const int64_t need = r->req[i].k < r->req[i].n_new - x->gen - 1 ? r->req[i].k : r->req[i].n_new - x->gen - 1;
            if (!x->started || x->done || x->ndraft != j || need <= j) continue;
            const int64_t e = h.n++;
            h.req[e] = i, h.pos0[e] = x->len + j - 1, h.kp[e] = -1;
            h.en[e] = (dsacp_step_entry){x->id, 1, &x->draft[j - 1]};
            h.op[e] = (dsacp_entry_opts){1, 0};
            h.T++, h.M++;
            CHECKF(dsacp_engine_request_mtp_length(r->e, x->id) == h.pos0[e], "%s: rank %d: MTP length %lld before chain "
                   "step %d, expected %lld", r->what, r->rank, (long long)dsacp_engine_request_mtp_length(r->e, x->id), j,
                   (long long)h.pos0[e]);
            if (j == 1) chained[nch++] = i;
        }
        if (!h.n) break;
        if ((rc = spec_mtp_call(r, &h, true))) return rc;
        for (int64_t e = 0; e < h.n; e++) xs[h.req[e]].draft[j] = h.verdict[e][2], xs[h.req[e]].ndraft = j + 1;
    }
    spec_mtp_truncate(r, chained, nch, xs);
    return DSACP_OK;
}

/* One target step: entries, the call, verdicts, truncation, the MTP steps. 1: nothing ran. */
static inline int spec_one_step(spec_run *r, spec_state *xs, int64_t s)
{
    const int64_t V = r->cfg->vocab_size, K = r->cfg->index_topk, L = r->cfg->num_hidden_layers;
    spec_step st = {0};
    for (int i = 0; i < r->nreq; i++) spec_add_entry(r, &st, &xs[i], i, s);
    if (!st.n) return 1;
    for (int64_t e = 0; e < st.n; e++) {
        st.T += st.en[e].n_tokens, st.M += st.op[e].n_logits;
        if (st.kp[e] < 0) r->st.rows_prompt += st.en[e].n_tokens;
        else r->st.rows_decode += st.en[e].n_tokens;
    }
    float *lg = spec_xalloc((size_t)(st.M * V) * sizeof(float));
    int32_t *tk = spec_xalloc((size_t)(L * st.T * K) * sizeof(int32_t));
    int rc = r->mode == SPEC_REF ? dsacp_engine_step(r->e, st.en, st.n, lg, tk)
                                 : dsacp_engine_step_opts(r->e, st.en, st.op, st.n, lg, tk);
    CHECKF(rc == DSACP_OK, "%s: rank %d: target step %lld: %s: %s", r->what, r->rank, (long long)r->st.steps,
           dsacp_status_name(rc), dsacp_last_error());
    r->st.steps++;
    if (!rc && r->rank == 0) {
        spec_judge(r, &st, lg, tk);
        int64_t req[SPEC_MAXR];
        for (int64_t e = 0; e < st.n; e++) req[e] = st.req[e];
        spec_record(r, false, st.en, req, st.pos0, st.n, st.T, st.M, lg, tk);
    }
    free(lg), free(tk);
    if (rc) return rc;
    spec_bcast(r, st.verdict, sizeof st.verdict);
    spec_apply(r, &st, xs);
    if (r->mtp && (rc = spec_mtp(r, &st, xs))) return rc;
    spec_check_usage(r, xs);
    for (int i = 0; i < r->nreq; i++)
        if (xs[i].done && !xs[i].ended) {
            CHECK_OK(dsacp_engine_end_request(r->e, xs[i].id));
            xs[i].ended = true;
        }
    return DSACP_OK;
}

/* The whole run; the tokens against the reference's (SPEC_REF: fills it). */
static inline int spec_drive(spec_run *r)
{
    spec_state xs[SPEC_MAXR];
    memset(xs, 0, sizeof xs);
    memset(&r->st, 0, sizeof r->st);
    for (int i = 0; i < r->nreq; i++) {
        const int64_t n = r->req[i].prompt + r->req[i].n_new;
        xs[i].seq = r->mode == SPEC_REF ? r->ref[i].seq : spec_xalloc((size_t)n * sizeof(int32_t));
        if (r->mode != SPEC_REF) memcpy(xs[i].seq, r->ref[i].seq, (size_t)r->req[i].prompt * sizeof(int32_t));
        xs[i].nseq = r->req[i].prompt;
        xs[i].buf = spec_xalloc((size_t)(n + 2 * SPEC_MAXK + 2) * sizeof(int32_t));
    }
    int rc = DSACP_OK;
    for (int64_t s = 0, left = r->nreq; left && !rc && s < 100000; s++) {
        rc = spec_one_step(r, xs, s);
        if (rc == 1) rc = DSACP_OK;
        left = 0;
        for (int i = 0; i < r->nreq; i++) left += !xs[i].ended;
    }
    for (int i = 0; i < r->nreq; i++) {
        if (!rc && r->mode != SPEC_REF) {
            int64_t p = 0;
            while (p < xs[i].nseq && p < r->ref[i].n && xs[i].seq[p] == r->ref[i].seq[p]) p++;
            CHECKF(xs[i].nseq == r->ref[i].n && p == r->ref[i].n, "%s: rank %d: request %d's tokens differ from the "
                   "one-by-one decode's at position %lld (%lld tokens, %lld expected)", r->what, r->rank, i, (long long)p,
                   (long long)xs[i].nseq, (long long)r->ref[i].n);
        }
        if (xs[i].started && !xs[i].ended) dsacp_engine_end_request(r->e, xs[i].id);
        if (r->mode != SPEC_REF) free(xs[i].seq);
        free(xs[i].buf);
    }
    return rc;
}

#endif /* DSACP_SPEC_UTIL_H */

/*
 * engine -- requests and steps (docs/dsa-math.md section 7): creation, the request table, and the
 * order of one step: embedding, per layer h += attn(RMSNorm(h)); h += mlp(RMSNorm(h)), final
 * norm, lm_head. The model stack is engine_model.c, the CP setup engine_cp.c, the planner's
 * bookkeeping engine_plan.c, the report engine_report.c (engine_internal.h lists them). Calls
 * everything below it (core, numerics, kernels, cache, attn, cp, comm, model); nothing below
 * calls it.
 */
#include "engine/engine_internal.h"

#include <stdlib.h>
#include <string.h>

static size_t step_workspace(const dsacp_engine *e, int64_t T, int64_t n);

void dsacp_engine_options_default(dsacp_engine_options *opt)
{
    opt->numerics = DSACP_NUMERICS_EXACT;
    opt->kv_dtype = DSACP_KV_F32;
    opt->block_size = 64;
    opt->num_blocks = 1024;
    opt->mtp = false;
}

void dsacp_engine_free(dsacp_engine *e)
{
    if (!e) return;
    dsacp_engine_plan_free(e);
    dsacp_arena_destroy(&e->ws);
    dsacp_engine_stash_free(&e->stash_target);
    dsacp_engine_stash_free(&e->stash_mtp);
    for (int64_t i = 0; i < e->nreq; i++)
        if (e->req[i].live) {
            dsacp_kv_release(e->cache, &e->req[i].seq);
            if (e->icache != e->cache) dsacp_kv_release(e->icache, &e->req[i].iseq);
        }
    free(e->req);
    dsacp_engine_release_cp(e);
    dsacp_engine_model_release(e);
    if (e->icache != e->cache) dsacp_kv_cache_free(e->icache);
    dsacp_kv_cache_free(e->cache);
    if (e->owns_comm) dsacp_comm_free(e->comm);
    free(e);
}

int dsacp_engine_create(const dsacp_model *model, const dsacp_engine_options *opt_in, dsacp_engine **out)
{
    return dsacp_engine_create_cp(model, opt_in, NULL, NULL, out);
}

int dsacp_engine_create_cp(const dsacp_model *model, const dsacp_engine_options *opt_in,
                           const dsacp_cp_options *cp_in, dsacp_comm *comm, dsacp_engine **out)
{
    *out = NULL;
    dsacp_cp_options cpo;
    if (cp_in) cpo = *cp_in;
    else dsacp_cp_options_default(&cpo);
    dsacp_engine_options opt;
    if (opt_in) opt = *opt_in;
    else dsacp_engine_options_default(&opt);
    const dsacp_config *cfg = dsacp_model_config(model);
    /* Every failure of creation is agreed by the group before any rank returns (docs/
     * context-parallel.md, "Failures"): the options, then each allocation stage. */
    int crc = dsacp_engine_check_options(cfg, &opt, &cpo, comm ? dsacp_comm_size(comm) : 1);
    const int64_t di = cfg->index_head_dim;
    if (!crc && opt.numerics == DSACP_NUMERICS_DEPLOYED && (di & (di - 1)))
        crc = dsacp_error(DSACP_EUNSUPPORTED, "deployed mode needs a power-of-two index_head_dim "
                          "for the Hadamard transform (got %lld)", (long long)di);
    if (!crc && (di > 1024 || cfg->qk_rope_head_dim > 512 || cfg->kv_lora_rank + cfg->qk_rope_head_dim > 1024))
        crc = dsacp_error(DSACP_EUNSUPPORTED, "head dimensions beyond the engine's limits "
                          "(index_head_dim <= 1024, kv_lora_rank + rope <= 1024)");
    if (!crc && opt.mtp && !dsacp_model_has_mtp(model))
        crc = dsacp_error(DSACP_EINVAL, "option mtp: the model has no MTP layer (config num_nextn_predict_layers "
                          "= %lld; a checkpoint layer %lld with enorm, hnorm, eh_proj and shared_head is needed)",
                          (long long)cfg->num_nextn_predict_layers, (long long)cfg->num_hidden_layers);
    if (!crc && (cfg->n_routed_experts > 4096 || cfg->n_group > 1024))
        crc = dsacp_error(DSACP_EUNSUPPORTED, "more than 4096 routed experts or 1024 expert groups");
    if (crc) return comm ? dsacp_comm_agree(comm, crc) : crc;
    dsacp_engine *e = calloc(1, sizeof *e);
    if (!e) return comm ? dsacp_comm_agree(comm, dsacp_error(DSACP_ENOMEM, "out of memory"))
                        : dsacp_error(DSACP_ENOMEM, "out of memory");
    if (comm) {
        e->comm = comm;
    } else {
        int src = dsacp_comm_create_solo(&e->comm);
        if (src) {
            free(e);
            return src;
        }
        e->owns_comm = true;
    }
    e->model = model;
    e->cfg = cfg;
    e->opt = opt;
    e->L = cfg->num_hidden_layers;
    e->NL = e->L + (opt.mtp ? 1 : 0);
    int rc = dsacp_rope_init(&e->rope, cfg);
    /* Layouts that differ: the indexer keys get a pool of their own, and each pool holds only its
     * part. */
    const bool split = dsacp_comm_size(e->comm) > 1 && cpo.kv_layout != cpo.index_layout;
    const bool fp8_index = opt.numerics == DSACP_NUMERICS_DEPLOYED;
    if (!rc && dsacp_fault("pools")) rc = dsacp_fault_error("pools", "KV cache pool");
    if (!rc)
        rc = dsacp_kv_cache_create_parts(cfg, e->NL, opt.kv_dtype, fp8_index, opt.block_size, opt.num_blocks, true,
                                         !split, &e->cache);
    e->icache = e->cache;
    if (!rc && split)
        rc = dsacp_kv_cache_create_parts(cfg, e->NL, opt.kv_dtype, fp8_index, opt.block_size, opt.num_blocks, false,
                                         true, &e->icache);
    if (!e->icache) e->icache = e->cache;
    if (!rc) rc = dsacp_engine_model_bind(e);
    if (!rc) rc = dsacp_arena_create(&e->ws, step_workspace(e, 1, 1), "the engine's step workspace");
    /* The pools and the layers: agreed before dsacp_engine_setup_cp's collective (the partial layout's split). */
    rc = dsacp_comm_agree_phase(e->comm, rc, -1);
    if (!rc) rc = dsacp_engine_setup_cp(e, &cpo);
    if (!rc) rc = dsacp_engine_plan_setup(e); /* local: sets fields, counts nothing */
    if (!rc) rc = dsacp_arena_reserve(&e->ws, step_workspace(e, 1, 1), "the engine's step workspace"); /* with cp's */
    rc = dsacp_comm_agree(e->comm, rc);
    if (rc) goto fail;
    *out = e;
    return DSACP_OK;
fail:
    if (!e->owns_comm) e->comm = NULL;
    dsacp_engine_free(e);
    return rc;
}

/* ---- requests ---- */

int dsacp_engine_add_request(dsacp_engine *e, int64_t *id)
{
    for (int64_t i = 0; i < e->nreq; i++)
        if (!e->req[i].live) {
            memset(&e->req[i], 0, sizeof e->req[i]);
            e->req[i].live = true;
            *id = i;
            return DSACP_OK;
        }
    if (e->nreq == e->capreq) {
        int64_t cap = e->capreq ? 2 * e->capreq : 16;
        dsacp_engine_request *r = realloc(e->req, (size_t)cap * sizeof *r);
        if (!r) return dsacp_error(DSACP_ENOMEM, "out of memory adding a request");
        e->req = r;
        e->capreq = cap;
    }
    memset(&e->req[e->nreq], 0, sizeof e->req[e->nreq]);
    e->req[e->nreq].live = true;
    *id = e->nreq++;
    return DSACP_OK;
}

dsacp_engine_request *dsacp_engine_find_request(const dsacp_engine *e, int64_t id)
{
    if (id < 0 || id >= e->nreq || !e->req[id].live) return NULL;
    return &e->req[id];
}

int dsacp_engine_end_request(dsacp_engine *e, int64_t id)
{
    dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "no live request %lld", (long long)id);
    dsacp_kv_release(e->cache, &r->seq);
    if (e->icache != e->cache) dsacp_kv_release(e->icache, &r->iseq);
    r->live = false;
    return DSACP_OK;
}

int64_t dsacp_engine_request_length(const dsacp_engine *e, int64_t id)
{
    const dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "no live request %lld", (long long)id);
    return r->length;
}

/* ---- the step ---- */


/* Positions of [0, L) this rank keeps in a cache of the given layout. */
static int64_t kept(const dsacp_engine *e, dsacp_cp_layout layout, int64_t L) { return dsacp_engine_kept_on(e, layout, L, e->cp.rank); }

static int64_t blocks_of(const dsacp_engine *e, int64_t tokens) { return (tokens + e->opt.block_size - 1) / e->opt.block_size; }

bool dsacp_engine_fits(const dsacp_engine *e, const int64_t *ids, const int64_t *new_len, int64_t n)
{
    const bool split = e->icache != e->cache;
    for (int q = 0; q < e->cp.W; q++) {
        int64_t used_l = 0, used_i = 0, need_l = 0, need_i = 0;
        for (int64_t i = 0; i < e->nreq; i++)
            if (e->req[i].live) {
                const int64_t span = dsacp_engine_request_span(&e->req[i]);
                used_l += blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.kv_layout, span, q));
                used_i += blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.index_layout, span, q));
            }
        for (int64_t i = 0; i < n; i++) {
            const dsacp_engine_request *r = ids[i] >= 0 ? dsacp_engine_find_request(e, ids[i]) : NULL;
            const int64_t cur = r ? dsacp_engine_request_span(r) : 0, nl = new_len[i] > cur ? new_len[i] : cur;
            need_l += blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.kv_layout, nl, q)) - blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.kv_layout, cur, q));
            need_i += blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.index_layout, nl, q)) - blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.index_layout, cur, q));
        }
        if (used_l + need_l > e->cache->num_blocks) return false;
        if (split && used_i + need_i > e->icache->num_blocks) return false;
    }
    return true;
}

bool dsacp_engine_fits_alone(const dsacp_engine *e, int64_t length)
{
    for (int q = 0; q < e->cp.W; q++) {
        if (blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.kv_layout, length, q)) > e->cache->num_blocks) return false;
        if (e->icache != e->cache &&
            blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.index_layout, length, q)) > e->icache->num_blocks)
            return false;
    }
    return true;
}

double dsacp_engine_kv_use(const dsacp_engine *e)
{
    double worst = 0;
    for (int q = 0; q < e->cp.W; q++) {
        int64_t used = 0;
        for (int64_t i = 0; i < e->nreq; i++)
            if (e->req[i].live)
                used += blocks_of(e, dsacp_engine_kept_on(e, e->cp.opt.kv_layout, dsacp_engine_request_span(&e->req[i]), q));
        const double u = (double)used / (double)e->cache->num_blocks;
        if (u > worst) worst = u;
    }
    return worst;
}

const dsacp_config *dsacp_engine_config(const dsacp_engine *e) { return e->cfg; }

/* What kind of step runs: the target's (every layer of the model, then lm_head) or the MTP
 * layer's (docs/mtp.md), the logits rows each entry wants, and the entries' flags. */
typedef struct step_kind {
    bool mtp;
    bool last;                    /* logits after each entry's last n_logits tokens (else every token) */
    const dsacp_entry_opts *opts; /* [n] or NULL */
} step_kind;

/* The position a request's entry starts at: its target length, or its MTP length. */
static int64_t entry_base(const dsacp_engine_request *r, bool mtp) { return mtp ? r->mtp_length : r->length; }

static int64_t entry_logits(const step_kind *k, int64_t i)
{
    return k->opts && k->opts[i].n_logits > 1 ? k->opts[i].n_logits : 1;
}

/* Validates the entries (the same verdict on every rank: entries are the same everywhere). */
static int check_entries(const dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const step_kind *k,
                         int64_t *T_out)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t V = cfg->vocab_size;
    if (n < 0 || (n > 0 && !entries)) return dsacp_error(DSACP_EINVAL, "step: bad entry list");
    if (k->mtp && e->NL == e->L)
        return dsacp_error(DSACP_EINVAL, "MTP step: the engine was created without its MTP layer (option mtp)");
    int64_t T = 0;
    for (int64_t i = 0; i < n; i++) {
        const dsacp_step_entry *en = &entries[i];
        dsacp_engine_request *r = dsacp_engine_find_request(e, en->request_id);
        if (!r) return dsacp_error(DSACP_EINVAL, "step entry %lld: no live request %lld", (long long)i,
                                   (long long)en->request_id);
        if (r->importing)
            return dsacp_error(DSACP_EINVAL, "step entry %lld: request %lld is being imported "
                               "(dsacp_engine_import_end not called)", (long long)i, (long long)en->request_id);
        for (int64_t j = 0; j < i; j++)
            if (entries[j].request_id == en->request_id)
                return dsacp_error(DSACP_EINVAL, "step entry %lld: request %lld appears twice in one step",
                                   (long long)i, (long long)en->request_id);
        if (en->n_tokens < 1 || !en->token_ids)
            return dsacp_error(DSACP_EINVAL, "step entry %lld: needs n_tokens >= 1 and token ids", (long long)i);
        if (k->opts && (k->opts[i].n_logits < 0 || k->opts[i].n_logits > en->n_tokens))
            return dsacp_error(DSACP_EINVAL, "step entry %lld: n_logits %lld outside [0, n_tokens = %lld]",
                               (long long)i, (long long)k->opts[i].n_logits, (long long)en->n_tokens);
        if (k->opts && (k->opts[i].flags & ~DSACP_ENTRY_VERIFY))
            return dsacp_error(DSACP_EINVAL, "step entry %lld: unknown flags 0x%x", (long long)i,
                               (unsigned)(k->opts[i].flags & ~DSACP_ENTRY_VERIFY));
        const int64_t base = entry_base(r, k->mtp);
        if (en->n_tokens > cfg->max_position_embeddings - base)
            return dsacp_error(DSACP_ERANGE, "step entry %lld: request %lld would reach position %lld, beyond "
                               "max_position_embeddings %lld of the model's config", (long long)i,
                               (long long)en->request_id, (long long)(base + en->n_tokens - 1),
                               (long long)cfg->max_position_embeddings);
        for (int64_t j = 0; j < en->n_tokens; j++)
            if (en->token_ids[j] < 0 || en->token_ids[j] >= V)
                return dsacp_error(DSACP_ERANGE, "step entry %lld: token id %d out of vocabulary [0, %lld)",
                                   (long long)i, en->token_ids[j], (long long)V);
        if (base + en->n_tokens > INT32_MAX)
            return dsacp_error(DSACP_ERANGE, "step entry %lld: sequence longer than 2^31", (long long)i);
        T += en->n_tokens;
    }
    if (e->max_step_tokens > 0 && T > e->max_step_tokens)
        return dsacp_error(DSACP_EINVAL, "step of %lld tokens: more than the engine's max_num_batched_tokens %lld",
                           (long long)T, (long long)e->max_step_tokens);
    *T_out = T;
    return DSACP_OK;
}

int dsacp_engine_set_max_num_batched_tokens(dsacp_engine *e, int64_t max_tokens)
{
    if (max_tokens < 0)
        return dsacp_error(DSACP_EINVAL, "max_num_batched_tokens %lld: must be >= 0 (0: no limit)",
                           (long long)max_tokens);
    if (max_tokens > 0) {
        int rc = dsacp_arena_reserve(&e->ws, step_workspace(e, max_tokens, max_tokens),
                                     "the step workspace for max_num_batched_tokens");
        if (rc) return rc;
    }
    e->max_step_tokens = max_tokens;
    return DSACP_OK;
}

/* The positions request r's blocks must cover after its entry of n tokens. */
static int64_t span_after(const dsacp_engine_request *r, int64_t n, bool mtp)
{
    const int64_t grown = entry_base(r, mtp) + n, span = dsacp_engine_request_span(r);
    return grown > span ? grown : span;
}

/* Reserves this rank's blocks for every entry, or changes nothing (DSACP_ECAPACITY). */
static int reserve(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, bool mtp)
{
    int64_t need_l = 0, need_i = 0;
    for (int64_t i = 0; i < n; i++) {
        dsacp_engine_request *r = dsacp_engine_find_request(e, entries[i].request_id);
        const int64_t L = span_after(r, entries[i].n_tokens, mtp);
        need_l += dsacp_kv_blocks_needed(e->cache, &r->seq, kept(e, e->cp.opt.kv_layout, L));
        if (e->icache != e->cache) need_i += dsacp_kv_blocks_needed(e->icache, &r->iseq, kept(e, e->cp.opt.index_layout, L));
    }
    if (need_l > e->cache->num_free || need_i > e->icache->num_free)
        return dsacp_error(DSACP_ECAPACITY, "step refused: it needs %lld more cache blocks of %lld tokens, "
                           "%lld of %lld are free", (long long)(need_l > e->cache->num_free ? need_l : need_i),
                           (long long)e->opt.block_size,
                           (long long)(need_l > e->cache->num_free ? e->cache->num_free : e->icache->num_free),
                           (long long)e->cache->num_blocks);
    for (int64_t i = 0; i < n; i++) {
        dsacp_engine_request *r = dsacp_engine_find_request(e, entries[i].request_id);
        const int64_t L = span_after(r, entries[i].n_tokens, mtp);
        int rc = dsacp_kv_reserve(e->cache, &r->seq, kept(e, e->cp.opt.kv_layout, L));
        if (!rc && e->icache != e->cache) rc = dsacp_kv_reserve(e->icache, &r->iseq, kept(e, e->cp.opt.index_layout, L));
        if (rc) return rc; /* cannot happen after the check above, except out of memory */
    }
    return DSACP_OK;
}

/* ---- the step ----
 * Its buffers come from the engine's workspace (e->ws, reset at every step): first the step's own
 * (below), then, one phase at a time, a layer's MLP scratch (engine_model.c), the logits' gather
 * and the planner's entries, each given back before the next. */

typedef struct step_bufs {
    int64_t *pos, *old_len, *new_len; /* [T] position of each row; [n] each entry's lengths */
    int64_t *nlog;                    /* [n] logits rows of each entry (when last) */
    uint32_t *flags;                  /* [n] entry flags */
    int32_t *ent;                     /* [T] entry of each row */
    int32_t *place;                   /* [T] an MTP step's placement (its hidden rows') */
    int64_t *src;                     /* [T] an MTP step's hidden row of each token on this rank */
    int64_t *apos;                    /* [T] an MTP step's active rows' positions */
    int32_t *atok;                    /* [T] an MTP step's active rows' tokens */
    dsacp_kv_seq **lseqs, **iseqs;    /* [n] block tables */
    float *h, *xb, *ob;               /* [T][D] residual stream, normed rows, a sublayer's output */
    float *xf;                        /* [T][D] rank 0's rows for lm_head (NULL elsewhere or unwanted) */
} step_bufs;

static void step_bufs_need(size_t *bytes, int64_t T, int64_t n, int64_t D)
{
    dsacp_arena_need(bytes, T, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, n, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, n, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, n, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, n, 1, sizeof(uint32_t));
    dsacp_arena_need(bytes, T, 1, sizeof(int32_t));
    dsacp_arena_need(bytes, T, 1, sizeof(int32_t));
    dsacp_arena_need(bytes, T, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, T, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, T, 1, sizeof(int32_t));
    dsacp_arena_need(bytes, n, 1, sizeof(dsacp_kv_seq *));
    dsacp_arena_need(bytes, n, 1, sizeof(dsacp_kv_seq *));
    for (int i = 0; i < 4; i++) dsacp_arena_need(bytes, T, D, sizeof(float));
}

static int step_bufs_take(dsacp_arena *ws, int64_t T, int64_t n, int64_t D, bool head_rows, step_bufs *b)
{
    b->pos = dsacp_arena_take(ws, T, 1, sizeof(int64_t), "step positions");
    b->old_len = dsacp_arena_take(ws, n, 1, sizeof(int64_t), "step lengths");
    b->new_len = dsacp_arena_take(ws, n, 1, sizeof(int64_t), "step lengths");
    b->nlog = dsacp_arena_take(ws, n, 1, sizeof(int64_t), "step logits rows");
    b->flags = dsacp_arena_take(ws, n, 1, sizeof(uint32_t), "step entry flags");
    b->ent = dsacp_arena_take(ws, T, 1, sizeof(int32_t), "step entries");
    b->place = dsacp_arena_take(ws, T, 1, sizeof(int32_t), "step placement");
    b->src = dsacp_arena_take(ws, T, 1, sizeof(int64_t), "step hidden sources");
    b->apos = dsacp_arena_take(ws, T, 1, sizeof(int64_t), "step active positions");
    b->atok = dsacp_arena_take(ws, T, 1, sizeof(int32_t), "step active tokens");
    b->lseqs = dsacp_arena_take(ws, n, 1, sizeof(dsacp_kv_seq *), "step block tables");
    b->iseqs = dsacp_arena_take(ws, n, 1, sizeof(dsacp_kv_seq *), "step block tables");
    b->h = dsacp_arena_take(ws, T, D, sizeof(float), "residual stream");
    b->xb = dsacp_arena_take(ws, T, D, sizeof(float), "normed rows");
    b->ob = dsacp_arena_take(ws, T, D, sizeof(float), "sublayer output");
    b->xf = head_rows ? dsacp_arena_take(ws, T, D, sizeof(float), "lm_head rows") : NULL;
    return b->pos && b->old_len && b->new_len && b->nlog && b->flags && b->ent && b->place && b->src && b->apos && b->atok && b->lseqs &&
                   b->iseqs && b->h && b->xb && b->ob && (b->xf || !head_rows)
               ? DSACP_OK
               : DSACP_ENOMEM;
}

/* The logits' gather of prefill rows to rank 0 (W > 1): the byte counts and rank 0's rows. */
static void logits_gather_need(size_t *bytes, int W, int64_t T, int64_t D)
{
    dsacp_arena_need(bytes, W, 1, sizeof(size_t));
    dsacp_arena_need(bytes, T * D + 1, 1, sizeof(float));
}

/* The workspace of a step of T tokens in n entries: the step's buffers and its CP metadata, then
 * the largest of the phases that follow one another after them (a layer's attention; its MLP;
 * the logits' gather; lm_head; the planner's entries). SIZE_MAX when it overflows. Before the CP
 * context is set up (cfg NULL), without its parts. */
static size_t step_workspace(const dsacp_engine *e, int64_t T, int64_t n)
{
    const int64_t D = e->cfg->hidden_size;
    size_t fixed = 0, gather = 0;
    step_bufs_need(&fixed, T, n, D);
    const bool cp = e->cp.cfg != NULL;
    if (cp && !dsacp_add_ok(fixed, dsacp_cp_step_ws_bytes(&e->cp, T, n), &fixed)) return SIZE_MAX;
    logits_gather_need(&gather, dsacp_comm_size(e->comm), T, D);
    size_t phase = dsacp_arena_max(dsacp_engine_model_workspace(e, T), gather);
    phase = dsacp_arena_max(phase, dsacp_engine_head_workspace(e, T));
    phase = dsacp_arena_max(phase, dsacp_engine_plan_workspace(e, T, n));
    if (cp) phase = dsacp_arena_max(phase, dsacp_cp_layer_ws_bytes(&e->cp, T));
    if (fixed == SIZE_MAX || phase == SIZE_MAX || !dsacp_add_ok(fixed, phase, &fixed)) return SIZE_MAX;
    return fixed;
}

/* The step's bookkeeping rows and its CP metadata (dsacp_cp_step_build). An MTP step's rows run
 * where their hidden inputs are (dsacp_engine_mtp_sources). */
static int step_build(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, int64_t T, const step_kind *k,
                      bool want_topk, step_bufs *b, dsacp_cp_step *st, dsacp_cp_step_mem *mem,
                      const dsacp_engine_stash **from)
{
    int64_t t = 0;
    for (int64_t i = 0; i < n; i++) {
        dsacp_engine_request *r = dsacp_engine_find_request(e, entries[i].request_id);
        const int64_t base = entry_base(r, k->mtp);
        b->lseqs[i] = &r->seq;
        b->iseqs[i] = e->icache == e->cache ? &r->seq : &r->iseq;
        b->old_len[i] = base;
        b->new_len[i] = base + entries[i].n_tokens;
        b->nlog[i] = entry_logits(k, i);
        b->flags[i] = k->opts && !k->mtp ? k->opts[i].flags : 0;
        for (int64_t j = 0; j < entries[i].n_tokens; j++, t++) {
            b->pos[t] = base + j;
            b->ent[t] = (int32_t)i;
        }
    }
    int rc = DSACP_OK;
    *from = NULL;
    if (k->mtp) rc = dsacp_engine_mtp_sources(e, entries, n, b->old_len, b->place, b->src, from);
    *st = (dsacp_cp_step){.T = T, .n_ent = n, .pos = b->pos, .ent = b->ent, .old_len = b->old_len,
                          .new_len = b->new_len, .lat_seq = b->lseqs, .idx_seq = b->iseqs, .want_topk = want_topk,
                          .layer0 = k->mtp ? e->L : 0, .layer1 = k->mtp ? e->L + 1 : e->L, .flags = b->flags,
                          .place = k->mtp ? b->place : NULL};
    if (rc) return rc;
    return dsacp_cp_step_build(&e->cp, st, mem);
}

/* The step's first rows on this rank: the target's embeddings, or the MTP layer's input (its
 * tokens, positions and the hidden rows it reads from `from`, docs/mtp.md). */
static int step_input(dsacp_engine *e, const dsacp_step_entry *entries, const step_bufs *b, const dsacp_cp_step *st,
                      const dsacp_engine_stash *from)
{
    const int64_t D = e->cfg->hidden_size, na = st->n_dec + st->n_pre;
    for (int64_t j = 0; j < na; j++) {
        const int64_t t = st->act[j], i = b->ent[t];
        const int32_t tok = entries[i].token_ids[b->pos[t] - b->old_len[i]];
        if (!from) {
            dsacp_weight_row_f32(e->embed, tok, b->h + j * D);
            continue;
        }
        b->apos[j] = b->pos[t];
        b->atok[j] = tok;
        memcpy(b->ob + j * D, from->h + b->src[t] * D, (size_t)D * sizeof(float));
    }
    if (!from) return DSACP_OK;
    return dsacp_engine_mtp_input(e, &e->ws, b->atok, b->apos, b->ob, na, b->h,
                                  e->opt.numerics == DSACP_NUMERICS_DEPLOYED);
}

/* Every layer of the step (the target's, or the MTP layer): h += attn(RMSNorm(h)); h +=
 * mlp(RMSNorm(h)), timed. A local failure goes to *lrc (this rank keeps taking part); the status
 * returned is the group's failure (DSACP_ECOMM), after which nothing can be agreed. */
static int step_layers(dsacp_engine *e, const step_bufs *b, const dsacp_cp_step *st, int32_t *topk, int *lrc)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t D = cfg->hidden_size, K = cfg->index_topk, na = st->n_dec + st->n_pre;
    float *h = b->h, *xb = b->xb, *ob = b->ob;
    const bool deployed = e->opt.numerics == DSACP_NUMERICS_DEPLOYED;
    /* W > 1: the phases of src/attn the CP layer runs take their scratch from the step workspace
     * (sized by dsacp_cp_layer_ws_bytes); W = 1 hands it to the single-process layer itself. */
    dsacp_dsa_ctx ctx = {cfg, deployed ? DSACP_MODE_DEPLOYED : DSACP_MODE_EXACT, &e->rope, e->cache,
                         e->cp.W > 1 ? &e->ws : NULL};
    int rc = DSACP_OK;
    for (int64_t l = st->layer0; l < st->layer1 && !rc; l++) {
        for (int64_t i = 0; i < na; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->in_norm[l], D, cfg->rms_norm_eps);
        const double t0 = dsacp_now();
        int r2 = dsacp_cp_layer_forward(&e->cp, &ctx, &e->attn[l], l, st, xb, ob,
                                        e->cp.rank == 0 && topk ? topk + (l - st->layer0) * st->T * K : NULL);
        if (r2 == DSACP_ECOMM) rc = r2; /* the group itself failed: no agreement possible */
        else if (r2 && !*lrc) *lrc = r2;
        /* An agreed failure (a stage's allocation on some rank): every rank stops here. */
        if (e->cp.step_failed) break;
        e->times.attention += dsacp_now() - t0;
        /* The layer's cache entries of the step are written: the disaggregation's hook (a
         * producer sends them from here, in flight with the rest of the step; its time counts
         * in the step's only). Target layers only. */
        if (e->layer_hook && l < e->L) {
            const int hrc = e->layer_hook(e->layer_hook_arg, l);
            if (hrc && !*lrc) *lrc = hrc;
        }
        const double t1 = dsacp_now();
        for (int64_t i = 0; i < na * D; i++) h[i] += ob[i];
        for (int64_t i = 0; i < na; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->post_norm[l], D, cfg->rms_norm_eps);
        if (!*lrc) *lrc = dsacp_engine_mlp(e, &e->ws, l, xb, na, ob, deployed);
        for (int64_t i = 0; i < na * D; i++) h[i] += ob[i];
        e->times.mlp += dsacp_now() - t1;
    }
    return rc;
}

/* Whether rank 0's head needs row t: every row, or (last) one of its entry's last nlog tokens. */
static bool row_needed(const step_bufs *b, int64_t t, bool last)
{
    return !last || b->pos[t] >= b->new_len[b->ent[t]] - b->nlog[b->ent[t]];
}

/* W > 1 with prefill rows: the rows rank 0's head needs travel to it (a chunk's other rows
 * never do), into b->xf in step order. */
static int gather_head_rows(dsacp_engine *e, const step_bufs *b, const dsacp_cp_step *st, bool last, int *lrc)
{
    const int W = e->cp.W, me = e->cp.rank;
    const int64_t D = e->cfg->hidden_size;
    float *xb = b->xb, *xf = b->xf;
    const size_t mark = dsacp_arena_mark(&e->ws);
    size_t *rb = dsacp_arena_take(&e->ws, W, 1, sizeof(size_t), "logits' gather counts");
    int64_t nrows = 0, nmine = 0;
    for (int q = 0; rb && q < W; q++) {
        rb[q] = 0;
        for (int64_t k = st->pre_off[q]; k < st->pre_off[q + 1]; k++)
            if (row_needed(b, st->pre_all[k], last)) rb[q] += (size_t)D * sizeof(float), nrows++;
    }
    float *all = me == 0 && rb ? dsacp_arena_take(&e->ws, nrows * D + 1, 1, sizeof(float), "logits' inputs") : NULL;
    int rc = DSACP_OK;
    const int arc = dsacp_cp_agree_alloc(&e->cp, "logits", rb && (me != 0 || all), "the logits' inputs");
    if (arc) {
        if (!*lrc) *lrc = arc; /* agreed: every rank skips the gather */
    } else {
        /* this rank's needed rows, packed in place (xb is not read again) */
        for (int64_t j = 0; j < st->n_pre; j++)
            if (row_needed(b, st->act[st->n_dec + j], last)) {
                if (j != nmine) memmove(xb + (st->n_dec + nmine) * D, xb + (st->n_dec + j) * D, (size_t)D * sizeof(float));
                nmine++;
            }
        rc = dsacp_comm_gatherv(e->comm, xb + st->n_dec * D, rb[me], all, rb, DSACP_PHASE_logits);
        if (!rc && me == 0) {
            for (int64_t j = 0; j < st->n_dec; j++) memcpy(xf + st->act[j] * D, xb + j * D, (size_t)D * sizeof(float));
            for (int64_t k = 0, r = 0; k < st->n_pre_all; k++)
                if (row_needed(b, st->pre_all[k], last))
                    memcpy(xf + st->pre_all[k] * D, all + (r++) * D, (size_t)D * sizeof(float));
        }
    }
    dsacp_arena_rewind(&e->ws, mark);
    return rc;
}

/* The final norm of the active rows into xb (the target's, or the MTP layer's shared head's).
 * With the MTP layer bound, the rows are kept for the MTP step that follows: a target step's
 * final-normed rows, an MTP step's own output before its norm (a chained draft's input). */
static int step_final(dsacp_engine *e, const dsacp_step_entry *entries, const step_bufs *b, const dsacp_cp_step *st,
                      bool mtp)
{
    const int64_t D = e->cfg->hidden_size, na = st->n_dec + st->n_pre;
    int rc = DSACP_OK;
    if (mtp) rc = dsacp_engine_stash_keep(e, &e->stash_mtp, entries, b->old_len, st, b->h);
    const float *w = mtp ? e->mtp_norm : e->final_norm;
    for (int64_t i = 0; i < na; i++) dsacp_rmsnorm(b->xb + i * D, b->h + i * D, w, D, e->cfg->rms_norm_eps);
    if (!mtp && e->NL > e->L) rc = dsacp_engine_stash_keep(e, &e->stash_target, entries, b->old_len, st, b->xb);
    return rc;
}

/* Rank 0 applies the head to the rows it needs: prefill rows travel to it first (or, last, only
 * each entry's last nlog tokens do), in step order. */
static int step_logits(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const step_bufs *b,
                       const dsacp_cp_step *st, const step_kind *k, float *logits, int *lrc)
{
    const int64_t D = e->cfg->hidden_size, na = st->n_dec + st->n_pre;
    const int me = e->cp.rank;
    float *xb = b->xb, *xf = b->xf;
    int rc = DSACP_OK;
    if (e->cp.W == 1 || st->n_pre_all == 0) {
        if (me == 0)
            for (int64_t j = 0; j < na; j++) memcpy(xf + st->act[j] * D, xb + j * D, (size_t)D * sizeof(float));
    } else {
        rc = gather_head_rows(e, b, st, k->last, lrc);
    }
    if (rc || *lrc || me != 0 || !logits) return rc;
    if (!k->last) {
        *lrc = dsacp_engine_head(e, &e->ws, xf, st->T, logits, k->mtp);
        return rc;
    }
    /* Only the rows sampling or a verify reads: each entry's last nlog tokens (rows are
     * independent and the linear batch-invariant, so these are the full step's bits). */
    int64_t rows = 0;
    for (int64_t i = 0, t = 0; i < n; i++) {
        t += entries[i].n_tokens;
        for (int64_t j = t - b->nlog[i]; j < t; j++, rows++)
            if (rows != j) memmove(xf + rows * D, xf + j * D, (size_t)D * sizeof(float));
    }
    *lrc = dsacp_engine_head(e, &e->ws, xf, rows, logits, k->mtp);
    return rc;
}

/* Validation, capacity, what rank 0 wants: agreed by the group before anything is computed. *T
 * is the step's token count; a return of DSACP_OK with *T == 0 is an empty step. */
static int step_admit(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const step_kind *k, uint8_t want[2],
                      int64_t *T)
{
    *T = 0;
    int rc = check_entries(e, entries, n, k, T);
    if (!rc && *T > 0) rc = reserve(e, entries, n, k->mtp);
    rc = dsacp_comm_agree(e->comm, rc);
    if (rc || *T == 0) {
        dsacp_engine_plan_agreement(e); /* the step's plan counts this agreement when it goes on */
        return rc;
    }
    /* Rank 0 decides what is gathered to it. */
    return dsacp_comm_bcast(e->comm, want, 2 * sizeof *want, DSACP_PHASE_control);
}

/* The step's compute once built: input rows, layers, final norm (and the rows kept for the MTP
 * layer), logits. */
static int step_run(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const step_kind *k,
                    const uint8_t want[2], const step_bufs *b, const dsacp_cp_step *st,
                    const dsacp_engine_stash *from, float *logits, int32_t *topk)
{
    int lrc = step_input(e, entries, b, st, from); /* a local failure: keep taking part, agree at the end */
    memset(&e->times, 0, sizeof e->times);
    e->cp.t_proj = e->cp.t_attn = e->cp.t_oproj = 0;
    e->cp.ovl_compute = e->cp.ovl_wait = 0;
    const double t_step = dsacp_now();
    int rc = step_layers(e, b, st, topk, &lrc);
    if (!rc && !e->cp.step_failed) {
        const int frc = step_final(e, entries, b, st, k->mtp);
        if (frc && !lrc) lrc = frc;
    }
    if (!rc && want[0] && !e->cp.step_failed) rc = step_logits(e, entries, n, b, st, k, logits, &lrc);
    e->times.step = dsacp_now() - t_step;
    e->times.projections = e->cp.t_proj, e->times.attend = e->cp.t_attn, e->times.o_proj = e->cp.t_oproj;
    e->times.overlap_compute = e->cp.ovl_compute, e->times.overlap_wait = e->cp.ovl_wait;
    if (!rc) rc = dsacp_comm_agree(e->comm, lrc);
    return rc;
}

static int engine_step(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, const step_kind *k, float *logits,
                       int32_t *topk)
{
    int64_t T = 0;
    uint8_t want[2] = {logits != NULL, topk != NULL};
    int rc = step_admit(e, entries, n, k, want, &T);
    if (rc || T == 0) return rc;
    step_bufs b = {0};
    dsacp_cp_step_mem mem = {0};
    dsacp_cp_step st = {0};
    const dsacp_engine_stash *from = NULL;
    /* Before any collective of the layers: every rank learns of a failure at the agreement below. */
    dsacp_arena_reset(&e->ws);
    rc = dsacp_arena_reserve(&e->ws, step_workspace(e, T, n), "the step's workspace");
    if (!rc) rc = step_bufs_take(&e->ws, T, n, e->cfg->hidden_size, e->cp.rank == 0 && want[0], &b);
    if (rc) rc = dsacp_error_context(rc, "a step of %lld tokens", (long long)T);
    else if (dsacp_fault("step")) rc = dsacp_fault_error("step", "the step's buffers");
    e->cp.step_failed = false;
    if (!rc) rc = step_build(e, entries, n, T, k, want[1], &b, &st, &mem, &from);
    rc = dsacp_comm_agree(e->comm, rc);
    if (!rc) rc = dsacp_cp_weights_step_begin(&e->cp, &st); /* DSA-CP: the first weight broadcasts */
    const bool ran = !rc;
    if (!rc) rc = step_run(e, entries, n, k, want, &b, &st, from, logits, topk);
    /* The hidden rows a catch-up read are spent; a step that failed once its compute began leaves
     * none to read (one refused before it -- its entries, the pools -- keeps them). */
    if (ran && k->mtp && from == &e->stash_target) e->stash_target.valid = false;
    if (ran && rc) e->stash_target.valid = e->stash_mtp.valid = false;
    if (!rc)
        for (int64_t i = 0; i < n; i++) {
            dsacp_engine_request *r = dsacp_engine_find_request(e, entries[i].request_id);
            if (k->mtp) r->mtp_length += entries[i].n_tokens;
            else r->length += entries[i].n_tokens;
            r->seq.length = kept(e, e->cp.opt.kv_layout, dsacp_engine_request_span(r));
            if (e->icache != e->cache) r->iseq.length = kept(e, e->cp.opt.index_layout, dsacp_engine_request_span(r));
        }
    if (rc) dsacp_engine_plan_lost(e);
    else dsacp_engine_plan_step(e, &e->ws, &st, b.nlog, want, k->last, k->mtp);
    dsacp_cp_step_free(&mem);
    return rc;
}

/* A step of either kind with its counters added to the measured side of the plan. */
static int measured_step(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, step_kind k, float *logits,
                         int32_t *topk)
{
    dsacp_comm_counter before[DSACP_PHASE_COUNT];
    dsacp_engine_measure_begin(e, before);
    const int rc = engine_step(e, entries, n, &k, logits, topk);
    dsacp_engine_measure_end(e, before);
    return rc;
}

int dsacp_engine_step(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, float *logits, int32_t *topk)
{
    return measured_step(e, entries, n, (step_kind){false, false, NULL}, logits, topk);
}

int dsacp_engine_step_last(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, float *logits_last,
                           int32_t *topk)
{
    return dsacp_engine_step_opts(e, entries, NULL, n, logits_last, topk);
}

int dsacp_engine_step_opts(dsacp_engine *e, const dsacp_step_entry *entries, const dsacp_entry_opts *opts, int64_t n,
                           float *logits, int32_t *topk)
{
    return measured_step(e, entries, n, (step_kind){false, true, opts}, logits, topk);
}

int dsacp_engine_mtp_step(dsacp_engine *e, const dsacp_step_entry *entries, const dsacp_entry_opts *opts, int64_t n,
                          float *logits, int32_t *topk)
{
    return measured_step(e, entries, n, (step_kind){true, true, opts}, logits, topk);
}

dsacp_comm *dsacp_engine_comm(const dsacp_engine *e) { return e->comm; }

dsacp_step_times dsacp_engine_last_step_times(const dsacp_engine *e) { return e->times; }

/* Deterministic pseudo-random values of one position (the same on every rank and every W). */
static void fill_row(uint64_t seed, int64_t p, float *v, int64_t n, float scale)
{
    dsacp_rng r;
    dsacp_rng_seed(&r, seed ^ ((uint64_t)p * 0x9E3779B97F4A7C15ull));
    for (int64_t i = 0; i < n; i++) v[i] = (float)((dsacp_rng_uniform(&r) * 2 - 1) * scale);
}

int dsacp_engine_fill_random(dsacp_engine *e, int64_t id, int64_t length, uint64_t seed)
{
    dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r || r->length != 0 || r->importing) return dsacp_error(DSACP_EINVAL, "fill: request %lld must be live and empty", (long long)id);
    if (length < 1 || length > e->cfg->max_position_embeddings)
        return dsacp_error(DSACP_ERANGE, "fill: length %lld outside [1, max_position_embeddings]", (long long)length);
    dsacp_step_entry en = {id, length, NULL};
    int rc = reserve(e, &en, 1, false);
    dsacp_comm_counter before[DSACP_PHASE_COUNT];
    dsacp_engine_measure_begin(e, before);
    rc = dsacp_comm_agree(e->comm, rc);
    dsacp_engine_plan_agreement(e);
    dsacp_engine_measure_end(e, before);
    if (rc) return rc;
    const dsacp_config *cfg = e->cfg;
    const int64_t dc = cfg->kv_lora_rank, dr = cfg->qk_rope_head_dim, di = cfg->index_head_dim;
    const int W = e->cp.W, me = e->cp.rank;
    const int64_t I = e->cp.opt.interleave;
    const bool lat_all = W == 1 || e->cp.opt.kv_layout == DSACP_LAYOUT_REPLICATED;
    dsacp_kv_seq *is = e->icache == e->cache ? &r->seq : &r->iseq;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < length; p++) {
        float v[2048];
        const bool mine = dsacp_cp_owner(p, I, W) == me;
        for (int64_t l = 0; l < e->NL; l++) {
            const uint64_t s = seed + (uint64_t)l * 1000003u;
            if (lat_all || mine) {
                fill_row(s, p, v, dc + dr, 1.0f);
                const int64_t lp = lat_all ? p : dsacp_cp_local_pos(p, I, W);
                dsacp_kv_write_mla(e->cache, l, dsacp_kv_slot(e->cache, &r->seq, lp), v, v + dc);
            }
            if (dsacp_cp_idx_holds(&e->cp, p)) {
                fill_row(s + 1, p, v, di, 1.0f);
                dsacp_kv_write_index(e->icache, l, dsacp_kv_slot(e->icache, is, dsacp_cp_idx_local(&e->cp, p)), v);
            }
        }
    }
    r->length = length;
    r->mtp_length = e->NL > e->L ? length : 0;
    r->seq.length = kept(e, e->cp.opt.kv_layout, length);
    if (e->icache != e->cache) r->iseq.length = kept(e, e->cp.opt.index_layout, length);
    return DSACP_OK;
}

/* ---- speculative decoding: the MTP layer's length, and truncation (engine_spec.c keeps the rows
 * an MTP step reads) ---- */

int64_t dsacp_engine_request_mtp_length(const dsacp_engine *e, int64_t id)
{
    const dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "no live request %lld", (long long)id);
    return r->mtp_length;
}

int dsacp_engine_truncate_request(dsacp_engine *e, int64_t id, int64_t length, int64_t mtp_length)
{
    dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    if (!r || r->importing) return dsacp_error(DSACP_EINVAL, "truncate: no live request %lld", (long long)id);
    if (length < 0 || length > r->length)
        return dsacp_error(DSACP_EINVAL, "truncate: request %lld holds %lld positions, cannot keep %lld",
                           (long long)id, (long long)r->length, (long long)length);
    if (e->NL == e->L) mtp_length = 0;
    else if (mtp_length < 0 || mtp_length > r->mtp_length)
        return dsacp_error(DSACP_EINVAL, "truncate: request %lld's MTP layer holds %lld positions, cannot keep %lld",
                           (long long)id, (long long)r->mtp_length, (long long)mtp_length);
    r->length = length;
    r->mtp_length = mtp_length;
    const int64_t span = dsacp_engine_request_span(r), me = e->cp.rank;
    dsacp_kv_shrink(e->cache, &r->seq, dsacp_engine_kept_on(e, e->cp.opt.kv_layout, span, (int)me));
    r->seq.length = dsacp_engine_kept_on(e, e->cp.opt.kv_layout, span, (int)me);
    if (e->icache != e->cache) {
        dsacp_kv_shrink(e->icache, &r->iseq, dsacp_engine_kept_on(e, e->cp.opt.index_layout, span, (int)me));
        r->iseq.length = dsacp_engine_kept_on(e, e->cp.opt.index_layout, span, (int)me);
    }
    return DSACP_OK;
}

void dsacp_engine_kv_usage(const dsacp_engine *e, dsacp_kv_usage *u)
{
    memset(u, 0, sizeof *u);
    const int64_t B = e->opt.block_size, L = e->NL;
    const dsacp_kv_cache *lc = e->cache, *ic = e->icache;
    u->latent_pool_bytes = lc->num_blocks * B * lc->mla_bytes * L;
    u->index_pool_bytes = ic->num_blocks * B * ic->index_bytes * L;
    u->latent_used_bytes = (lc->num_blocks - lc->num_free) * B * lc->mla_bytes * L;
    u->index_used_bytes = (ic->num_blocks - ic->num_free) * B * ic->index_bytes * L;
    u->transient_peak_bytes = e->cp.transient_peak;
}

/* ---- internal views (engine.h) ---- */

dsacp_kv_cache *dsacp_engine_cache(dsacp_engine *e) { return e->cache; }

const dsacp_kv_seq *dsacp_engine_request_seq(const dsacp_engine *e, int64_t id)
{
    const dsacp_engine_request *r = dsacp_engine_find_request(e, id);
    return r ? &r->seq : NULL;
}

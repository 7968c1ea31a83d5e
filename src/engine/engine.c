/*
 * engine -- requests, steps and the model stack around the attention (docs/dsa-math.md section 7):
 * embedding, per layer h += attn(RMSNorm(h)); h += mlp(RMSNorm(h)), final norm, lm_head.
 * Dense MLP and DeepSeek-V3 MoE routing live here. Calls everything below it (core, numerics,
 * kernels, cache, attn, model); nothing below calls it.
 */
#include "attn/dsa_layer.h"
#include "cp/cp.h"
#include "engine/engine.h"
#include "model/model.h"
#include "dsacp_plan.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mlp_weights {
    bool moe;
    const dsacp_weight *gate, *up, *down; /* dense MLP, or the shared experts of an MoE layer */
    const dsacp_weight *router;           /* [E][D] */
    float *bias;                          /* F32 [E] e_score_correction_bias */
    const dsacp_weight **egate, **eup, **edown; /* [E] each */
} mlp_weights;

typedef struct request {
    bool live;
    int64_t length;    /* tokens of the request so far (all ranks) */
    dsacp_kv_seq seq;  /* this rank's latent block table (and indexer, when one cache) */
    dsacp_kv_seq iseq; /* this rank's indexer block table when the layouts differ */
} request;

struct dsacp_engine {
    const dsacp_model *model;
    const dsacp_config *cfg;
    dsacp_engine_options opt;
    dsacp_rope rope;
    dsacp_kv_cache *cache;  /* latent cache (and indexer cache when both layouts agree) */
    dsacp_kv_cache *icache; /* indexer cache when the layouts differ, else == cache */
    dsacp_comm *comm;
    bool owns_comm;
    dsacp_cp_ctx cp;
    dsacp_step_times times; /* of the last step */
    int64_t L;
    dsacp_dsa_weights *attn;
    mlp_weights *mlp;
    float **in_norm, **post_norm, *final_norm;
    const dsacp_weight *embed, *head;
    request *req;
    int64_t nreq, capreq;
    /* The planner's prediction of this engine's collectives on this rank (dsacp_engine_plan_comm):
     * the counters at creation, then every step through dsacp_plan_entries_comm. */
    dsacp_plan_step pbase;
    int64_t *pq, *po, *psh;
    dsacp_comm_counter planned[DSACP_PHASE_COUNT];
    dsacp_comm_counter measured[DSACP_PHASE_COUNT]; /* the counters' growth during those calls */
    int64_t seen_fb_tokens, seen_fb_rounds, seen_winners;
    bool plan_lost; /* a step failed after its first collectives: not predicted */
};

void dsacp_engine_options_default(dsacp_engine_options *opt)
{
    opt->numerics = DSACP_NUMERICS_EXACT;
    opt->kv_dtype = DSACP_KV_F32;
    opt->block_size = 64;
    opt->num_blocks = 1024;
}

static const dsacp_weight *need(const dsacp_model *m, int *rc, const char *name)
{
    const dsacp_weight *w = dsacp_model_weight(m, name);
    if (!w && !*rc) *rc = dsacp_error(DSACP_ENOTFOUND, "model has no '%s'", name);
    return w;
}

static int bind_mlp(dsacp_engine *e, int64_t l)
{
    const dsacp_model *m = e->model;
    const dsacp_config *cfg = e->cfg;
    mlp_weights *w = &e->mlp[l];
    char n[200];
    int rc = DSACP_OK;
    w->moe = dsacp_config_layer_is_moe(cfg, l);
    const char *dense = w->moe ? "shared_experts." : "";
    if (!w->moe || cfg->n_shared_experts > 0) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.%sgate_proj.weight", (long long)l, dense);
        w->gate = need(m, &rc, n);
        snprintf(n, sizeof n, "model.layers.%lld.mlp.%sup_proj.weight", (long long)l, dense);
        w->up = need(m, &rc, n);
        snprintf(n, sizeof n, "model.layers.%lld.mlp.%sdown_proj.weight", (long long)l, dense);
        w->down = need(m, &rc, n);
    }
    if (!w->moe || rc) return rc;
    const int64_t E = cfg->n_routed_experts;
    snprintf(n, sizeof n, "model.layers.%lld.mlp.gate.weight", (long long)l);
    w->router = need(m, &rc, n);
    snprintf(n, sizeof n, "model.layers.%lld.mlp.gate.e_score_correction_bias", (long long)l);
    if (!rc) w->bias = dsacp_model_vector_f32(m, n, E, &rc);
    w->egate = calloc((size_t)E, sizeof *w->egate);
    w->eup = calloc((size_t)E, sizeof *w->eup);
    w->edown = calloc((size_t)E, sizeof *w->edown);
    if (!w->egate || !w->eup || !w->edown) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t x = 0; x < E && !rc; x++) {
        snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld.gate_proj.weight", (long long)l, (long long)x);
        w->egate[x] = need(m, &rc, n);
        snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld.up_proj.weight", (long long)l, (long long)x);
        w->eup[x] = need(m, &rc, n);
        snprintf(n, sizeof n, "model.layers.%lld.mlp.experts.%lld.down_proj.weight", (long long)l, (long long)x);
        w->edown[x] = need(m, &rc, n);
    }
    return rc;
}

void dsacp_engine_free(dsacp_engine *e)
{
    if (!e) return;
    free(e->pq), free(e->po), free(e->psh);
    for (int64_t l = 0; l < e->L; l++) {
        if (e->attn) dsacp_dsa_weights_release(&e->attn[l]);
        if (e->mlp) {
            dsacp_free(e->mlp[l].bias);
            free(e->mlp[l].egate);
            free(e->mlp[l].eup);
            free(e->mlp[l].edown);
        }
        if (e->in_norm) dsacp_free(e->in_norm[l]);
        if (e->post_norm) dsacp_free(e->post_norm[l]);
    }
    free(e->attn);
    free(e->mlp);
    free(e->in_norm);
    free(e->post_norm);
    dsacp_free(e->final_norm);
    for (int64_t i = 0; i < e->nreq; i++)
        if (e->req[i].live) {
            dsacp_kv_release(e->cache, &e->req[i].seq);
            if (e->icache != e->cache) dsacp_kv_release(e->icache, &e->req[i].iseq);
        }
    free(e->req);
    if (e->cp.o_shard) {
        for (int64_t l = 0; l < e->L; l++) dsacp_cp_weight_free(e->cp.o_shard[l]);
        free(e->cp.o_shard);
    }
    dsacp_cp_weights_free(e->cp.wp);
    free(e->cp.ctx_choices);
    free(e->cp.hw);
    dsacp_comm_free(e->cp.icomm_own);
    if (e->icache != e->cache) dsacp_kv_cache_free(e->icache);
    dsacp_kv_cache_free(e->cache);
    if (e->owns_comm) dsacp_comm_free(e->comm);
    free(e);
}

static int setup_cp(dsacp_engine *e, const dsacp_cp_options *cp)
{
    const dsacp_config *cfg = e->cfg;
    const int W = dsacp_comm_size(e->comm), me = dsacp_comm_rank(e->comm);
    const int64_t H = cfg->num_attention_heads, dv = cfg->v_head_dim;
    e->cp.comm = e->comm;
    e->cp.W = W;
    e->cp.icomm = e->comm;
    if (W > 1 && cp->index_layout == DSACP_LAYOUT_PARTIAL) {
        /* The one collective of the setup, first: every rank reaches it (the caller agreed
         * before), whatever fails below is local and agreed after. The candidates travel
         * between the groups: one rank of each, the same place in its group. */
        int rc = dsacp_comm_split(e->comm, (int)(me % cp->index_group), me, &e->cp.icomm_own);
        if (rc) return rc;
        e->cp.icomm = e->cp.icomm_own;
    }
    if (dsacp_fault("cp")) return dsacp_fault_error("cp", "context-parallel setup");
    if (cp->context_hardware) { /* --context-path auto by the planner's time on this profile */
        e->cp.hw = malloc(sizeof *e->cp.hw);
        if (!e->cp.hw) return dsacp_error(DSACP_ENOMEM, "out of memory");
        int hrc = dsacp_hw_load(cp->context_hardware, e->cp.hw);
        if (hrc) return hrc;
    }
    e->cp.rank = me;
    e->cp.opt = *cp;
    e->cp.opt.context_hardware = NULL; /* read into cp.hw above; the caller's string need not outlive this */
    e->cp.lat = e->cache;
    e->cp.idx = e->icache;
    e->cp.block_size = e->opt.block_size;
    e->cp.h0 = dsacp_split_begin(H, me, W);
    e->cp.h1 = dsacp_split_begin(H, me + 1, W);
    e->cp.cfg = cfg;
    /* The indexer cache as a sharding of its own: W_i holders of I_i-position runs (docs section 1). */
    e->cp.iW = 1, e->cp.iI = 1, e->cp.ir = 0;
    if (W > 1 && cp->index_layout == DSACP_LAYOUT_SHARDED) e->cp.iW = W, e->cp.iI = cp->interleave, e->cp.ir = me;
    if (W > 1 && cp->index_layout == DSACP_LAYOUT_PARTIAL) {
        const int64_t G = cp->index_group;
        e->cp.iW = W / G, e->cp.iI = cp->interleave * G, e->cp.ir = me / G;
    }
    e->cp.deployed = e->opt.numerics == DSACP_NUMERICS_DEPLOYED;
    /* DSA-CP: every rank runs all heads for its tokens; the weight plans say where the whole
     * q_b_proj and o_proj come from (cp_weights.c). */
    if (cp->mode == DSACP_CP_DSA_CP) {
        int rc = dsacp_cp_weights_setup(&e->cp, e->attn, e->L);
        const bool dcp_decode = W > 1 && (cp->kv_layout == DSACP_LAYOUT_SHARDED || cp->index_layout == DSACP_LAYOUT_SHARDED);
        if (rc || !dcp_decode) return rc;
        /* DSA-CP + DCP: decode tokens are processed by every rank with the heads split. Their o_proj
         * columns: tp's shards (cp_layer.c), or the whole layer-shard weight after a v gather, or,
         * with a replicated o_proj, the column copies below. */
        if (cp->o_proj == DSACP_WEIGHTS_LAYER_SHARD) e->cp.o_gather_v = true;
        if (cp->o_proj != DSACP_WEIGHTS_REPLICATED) return DSACP_OK;
    }
    if (W == 1) return DSACP_OK;
    /* One decision for the whole group: the head columns of every rank must fall on o_proj's
     * FP8 blocks for the column shards, otherwise the heads' outputs travel instead. */
    const dsacp_weight *o0 = e->attn[0].o;
    bool aligned = true;
    if (o0->dtype == DSACP_F8_E4M3 && o0->block > 0)
        for (int q = 0; q <= W; q++) {
            const int64_t c = dsacp_split_begin(H, q, W) * dv;
            if (c % o0->block && c != o0->cols) aligned = false;
        }
    e->cp.o_gather_v = !aligned;
    if (!aligned) return DSACP_OK;
    e->cp.o_shard = calloc((size_t)e->L, sizeof *e->cp.o_shard);
    if (!e->cp.o_shard) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t l = 0; l < e->L; l++) {
        int rc = dsacp_cp_weight_columns(e->attn[l].o, e->cp.h0 * dv, e->cp.h1 * dv, false, &e->cp.o_shard[l]);
        if (rc) return rc;
    }
    return DSACP_OK;
}

int dsacp_engine_create(const dsacp_model *model, const dsacp_engine_options *opt_in, dsacp_engine **out)
{
    return dsacp_engine_create_cp(model, opt_in, NULL, NULL, out);
}

/* Validation of the options, before anything is allocated (the same verdict on every rank). */
static int check_options(const dsacp_config *cfg, const dsacp_engine_options *opt, const dsacp_cp_options *cp, int W)
{
    if (opt->numerics != DSACP_NUMERICS_EXACT && opt->numerics != DSACP_NUMERICS_DEPLOYED)
        return dsacp_error(DSACP_EINVAL, "unknown numerics mode %d", (int)opt->numerics);
    if (opt->kv_dtype != DSACP_KV_F32 && opt->kv_dtype != DSACP_KV_BF16 && opt->kv_dtype != DSACP_KV_FP8)
        return dsacp_error(DSACP_EINVAL, "unknown kv dtype %d", (int)opt->kv_dtype);
    if (opt->kv_dtype == DSACP_KV_FP8 && opt->numerics != DSACP_NUMERICS_DEPLOYED)
        return dsacp_error(DSACP_EINVAL, "the fp8 latent cache belongs to the deployed numerics mode");
    if (cp->interleave < 1 || cp->interleave > ((int64_t)1 << 30))
        return dsacp_error(DSACP_EINVAL, "--cp-interleave %lld: must be in [1, 2^30]", (long long)cp->interleave);
    if ((unsigned)cp->decode > DSACP_DECODE_LEAN || (unsigned)cp->kv_layout > 1 || (unsigned)cp->index_layout > 2 ||
        (unsigned)cp->prefill_split > 2 || (unsigned)cp->mode > 1 || (unsigned)cp->q_proj > 5 || (unsigned)cp->o_proj > 5 ||
        (unsigned)cp->lean_merge > 1 || (unsigned)cp->partials > 1 || (unsigned)cp->context_path > 2 ||
        (unsigned)cp->merge_backend > 1)
        return dsacp_error(DSACP_EINVAL, "unknown context-parallel option value");
    if (cp->context_hardware && cp->context_path != DSACP_CONTEXT_AUTO)
        return dsacp_error(DSACP_EINVAL, "--context-hardware %s: belongs to '--context-path auto' (the path is %s)",
                           cp->context_hardware, dsacp_context_path_name(cp->context_path));
    if (!(cp->lean_factor >= 1.0 && cp->lean_factor <= 1024.0))
        return dsacp_error(DSACP_EINVAL, "--lean-candidates %g: must be in [1, 1024] (times index_topk / W scores "
                           "per rank)", cp->lean_factor);
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && (cp->index_group < 1 || W % cp->index_group))
        return dsacp_error(DSACP_EINVAL, "--index-layout partial:%lld: the group size must divide the %d ranks",
                           (long long)cp->index_group, W);
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && cp->mode == DSACP_CP_DSA_CP)
        return dsacp_error(DSACP_EINVAL, "--index-layout partial:G belongs to --cp-mode dcp");
    if (cp->prefetch < 1 || cp->prefetch > 64)
        return dsacp_error(DSACP_EINVAL, "--prefetch %lld: must be in [1, 64]", (long long)cp->prefetch);
    if (cp->mode == DSACP_CP_DCP && (cp->q_proj != DSACP_WEIGHTS_REPLICATED || cp->o_proj != DSACP_WEIGHTS_REPLICATED))
        return dsacp_error(DSACP_EINVAL, "--q-proj/--o-proj plans belong to --cp-mode dsa-cp (DCP splits the heads "
                           "of q_b_proj and o_proj already)");
    if (cp->q_proj >= DSACP_WEIGHTS_TP)
        return dsacp_error(DSACP_EINVAL, "--q-proj %s: q_b_proj is replicated or layer-shard (tp and auto are "
                           "o_proj plans)", dsacp_weight_plan_name(cp->q_proj));

    /* Decode tokens attend over the sharded cache with the decode strategy in DCP and in DSA-CP + DCP
     * (DSA-CP with every cache replicated attends locally). */
    const bool dcp_decode = cp->mode == DSACP_CP_DCP || cp->kv_layout == DSACP_LAYOUT_SHARDED ||
                            cp->index_layout == DSACP_LAYOUT_SHARDED;
    if (W > 1 && dcp_decode && cp->decode == DSACP_DECODE_REPLICATED_INDEX &&
        cp->index_layout != DSACP_LAYOUT_REPLICATED)
        return dsacp_error(DSACP_EINVAL, "--decode-strategy replicated-index needs --index-layout replicated "
                           "(every rank scores every position)");
    if (W > 1 && dcp_decode && cp->decode == DSACP_DECODE_EXACT_TOPK &&
        cp->index_layout == DSACP_LAYOUT_REPLICATED)
        return dsacp_error(DSACP_EINVAL, "--decode-strategy exact-topk scores each rank's shard of the indexer "
                           "cache: it needs --index-layout sharded or partial:G (replicated-index uses a replicated one)");
    if (W > cfg->max_position_embeddings)
        return dsacp_error(DSACP_EINVAL, "%d ranks exceed max_position_embeddings %lld: a rank would own no "
                           "position", W, (long long)cfg->max_position_embeddings);
    return DSACP_OK;
}

static int64_t weight_travel_bytes(const dsacp_weight *w)
{
    return w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype) +
           (w->dtype == DSACP_F8_E4M3 && w->scale ? w->scale_rows * w->scale_stride * 4 : 0);
}

/* What the planner needs to know of this engine (dsacp_plan_step's fixed fields), and the
 * counters so far (creation's agreements) as the prediction's start. */
static int plan_setup(dsacp_engine *e)
{
    const dsacp_config *cfg = e->cfg;
    const dsacp_cp_options *cp = &e->cp.opt;
    const int W = e->cp.W;
    dsacp_plan_step *b = &e->pbase;
    b->W = W, b->rank = e->cp.rank, b->hidden_bytes = cfg->hidden_size * 4;
    b->deployed = e->cp.deployed;
    b->latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, e->opt.kv_dtype);
    b->index_bytes = dsacp_index_cache_bytes_per_token(cfg, b->deployed ? DSACP_KV_FP8 : DSACP_KV_F32);
    const dsacp_weight *o = e->attn[0].o;
    dsacp_plan_o_paths(cfg, cp, W, o->dtype, o->block, &b->o_gather_v, &b->o_tp_f32);
    b->context_hw = e->cp.hw;
    if (dsacp_fault("plan")) return dsacp_fault_error("plan", "the engine's plan");
    if (cp->mode != DSACP_CP_DSA_CP) return DSACP_OK;
    const int64_t L = e->L, H = cfg->num_attention_heads, dv = cfg->v_head_dim;
    e->pq = calloc((size_t)L, sizeof *e->pq), e->po = calloc((size_t)L, sizeof *e->po);
    e->psh = calloc((size_t)W, sizeof *e->psh);
    if (!e->pq || !e->po || !e->psh) return dsacp_error(DSACP_ENOMEM, "out of memory for the engine's plan");
    for (int64_t l = 0; l < L; l++) e->pq[l] = weight_travel_bytes(e->attn[l].q_b), e->po[l] = weight_travel_bytes(e->attn[l].o);
    for (int q = 0; q < W; q++) {
        const int64_t nc = (dsacp_split_begin(H, q + 1, W) - dsacp_split_begin(H, q, W)) * dv;
        e->psh[q] = o->rows * nc * (b->o_tp_f32 ? 4 : (int64_t)dsacp_dtype_size(o->dtype));
        if (!b->o_tp_f32 && o->dtype == DSACP_F8_E4M3) e->psh[q] += o->scale_rows * ((nc + o->block - 1) / o->block) * 4;
    }
    b->q_bytes = e->pq, b->o_bytes = e->po, b->o_shard_bytes = e->psh;
    return DSACP_OK;
}

static void plan_add(dsacp_engine *e, const dsacp_comm_counter *c)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++)
        e->planned[p].calls += c[p].calls, e->planned[p].bytes_sent += c[p].bytes_sent, e->planned[p].bytes_recv += c[p].bytes_recv;
}

/* The counters before an engine call, and their growth added to `measured` after it: what the
 * engine itself moved, whatever else uses the communicator between its calls. */
static void counters_now(const dsacp_engine *e, dsacp_comm_counter *c)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) c[p] = dsacp_comm_get_counter(e->comm, p);
}

static void measured_add(dsacp_engine *e, const dsacp_comm_counter *before)
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter a = dsacp_comm_get_counter(e->comm, p);
        e->measured[p].calls += a.calls - before[p].calls;
        e->measured[p].bytes_sent += a.bytes_sent - before[p].bytes_sent;
        e->measured[p].bytes_recv += a.bytes_recv - before[p].bytes_recv;
    }
}

/* One agreement of the group (4 bytes from and to every other rank). */
static void plan_agreement(dsacp_engine *e)
{
    dsacp_comm_counter c[DSACP_PHASE_COUNT] = {{0}};
    if (e->cp.W > 1) c[DSACP_PHASE_control] = (dsacp_comm_counter){1, 4 * (e->cp.W - 1), 4 * (e->cp.W - 1), 0};
    plan_add(e, c);
}

/* A step that completed: the planner's view of it added to the prediction. */
static void plan_step(dsacp_engine *e, const int64_t *old_len, const int64_t *new_len, int64_t n, const uint8_t *want,
                      bool last)
{
    if (e->plan_lost) return;
    dsacp_plan_entry *pe = malloc((size_t)(n > 0 ? n : 1) * sizeof *pe);
    if (!pe) {
        e->plan_lost = true;
        return;
    }
    for (int64_t i = 0; i < n; i++) pe[i] = (dsacp_plan_entry){old_len[i], new_len[i] - old_len[i]};
    dsacp_plan_step b = e->pbase;
    const dsacp_cp_stats *st = &e->cp.stats;
    const int64_t ft = st->lean_fallback_threshold + st->lean_fallback_ties;
    b.lean_fallback_tokens = ft - e->seen_fb_tokens, b.lean_fallback_rounds = st->lean_fallback_rounds - e->seen_fb_rounds;
    b.lean_owned_winners = st->lean_owned_winners - e->seen_winners;
    e->seen_fb_tokens = ft, e->seen_fb_rounds = st->lean_fallback_rounds, e->seen_winners = st->lean_owned_winners;
    b.want_logits = want[0], b.want_topk = want[1], b.logits_last = last;
    dsacp_comm_counter c[DSACP_PHASE_COUNT];
    if (dsacp_plan_entries_comm(e->cfg, &e->cp.opt, &b, pe, n, c)) e->plan_lost = true;
    else plan_add(e, c);
    free(pe);
}

int dsacp_engine_plan_comm(const dsacp_engine *e, dsacp_comm_counter planned[DSACP_PHASE_COUNT],
                           dsacp_comm_counter measured[DSACP_PHASE_COUNT])
{
    memcpy(planned, e->planned, sizeof e->planned);
    if (measured) memcpy(measured, e->measured, sizeof e->measured);
    return e->plan_lost ? dsacp_error(DSACP_EUNSUPPORTED, "a step failed midway: its collectives are not predicted") : DSACP_OK;
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
    int crc = check_options(cfg, &opt, &cpo, comm ? dsacp_comm_size(comm) : 1);
    const int64_t di = cfg->index_head_dim;
    if (!crc && opt.numerics == DSACP_NUMERICS_DEPLOYED && (di & (di - 1)))
        crc = dsacp_error(DSACP_EUNSUPPORTED, "deployed mode needs a power-of-two index_head_dim "
                          "for the Hadamard transform (got %lld)", (long long)di);
    if (!crc && (di > 1024 || cfg->qk_rope_head_dim > 512 || cfg->kv_lora_rank + cfg->qk_rope_head_dim > 1024))
        crc = dsacp_error(DSACP_EUNSUPPORTED, "head dimensions beyond the engine's limits "
                          "(index_head_dim <= 1024, kv_lora_rank + rope <= 1024)");
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
    int rc = dsacp_rope_init(&e->rope, cfg);
    /* Layouts that differ: the indexer keys get a pool of their own, and each pool holds only its
     * part. */
    const bool split = dsacp_comm_size(e->comm) > 1 && cpo.kv_layout != cpo.index_layout;
    const bool fp8_index = opt.numerics == DSACP_NUMERICS_DEPLOYED;
    if (!rc && dsacp_fault("pools")) rc = dsacp_fault_error("pools", "KV cache pool");
    if (!rc)
        rc = dsacp_kv_cache_create_parts(cfg, e->L, opt.kv_dtype, fp8_index, opt.block_size, opt.num_blocks, true,
                                         !split, &e->cache);
    e->icache = e->cache;
    if (!rc && split)
        rc = dsacp_kv_cache_create_parts(cfg, e->L, opt.kv_dtype, fp8_index, opt.block_size, opt.num_blocks, false,
                                         true, &e->icache);
    if (!e->icache) e->icache = e->cache;
    if (!rc) {
        e->attn = calloc((size_t)e->L, sizeof *e->attn);
        e->mlp = calloc((size_t)e->L, sizeof *e->mlp);
        e->in_norm = calloc((size_t)e->L, sizeof *e->in_norm);
        e->post_norm = calloc((size_t)e->L, sizeof *e->post_norm);
        if (!e->attn || !e->mlp || !e->in_norm || !e->post_norm) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the layers");
        else if (dsacp_fault("engine")) rc = dsacp_fault_error("engine", "engine layers");
    }
    for (int64_t l = 0; l < e->L && !rc; l++) {
        char n[160];
        rc = dsacp_dsa_weights_bind(&e->attn[l], model, l);
        snprintf(n, sizeof n, "model.layers.%lld.input_layernorm.weight", (long long)l);
        if (!rc) e->in_norm[l] = dsacp_model_vector_f32(model, n, cfg->hidden_size, &rc);
        snprintf(n, sizeof n, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        if (!rc) e->post_norm[l] = dsacp_model_vector_f32(model, n, cfg->hidden_size, &rc);
        if (!rc) rc = bind_mlp(e, l);
    }
    if (!rc) e->final_norm = dsacp_model_vector_f32(model, "model.norm.weight", cfg->hidden_size, &rc);
    if (!rc) e->embed = need(model, &rc, "model.embed_tokens.weight");
    if (!rc) e->head = need(model, &rc, "lm_head.weight");
    /* The pools and the layers: agreed before setup_cp's collective (the partial layout's split). */
    rc = dsacp_comm_agree_phase(e->comm, rc, -1);
    if (!rc) rc = setup_cp(e, &cpo);
    if (!rc) rc = plan_setup(e); /* local: sets fields, counts nothing */
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
        request *r = realloc(e->req, (size_t)cap * sizeof *r);
        if (!r) return dsacp_error(DSACP_ENOMEM, "out of memory adding a request");
        e->req = r;
        e->capreq = cap;
    }
    memset(&e->req[e->nreq], 0, sizeof e->req[e->nreq]);
    e->req[e->nreq].live = true;
    *id = e->nreq++;
    return DSACP_OK;
}

static request *find_request(const dsacp_engine *e, int64_t id)
{
    if (id < 0 || id >= e->nreq || !e->req[id].live) return NULL;
    return &e->req[id];
}

int dsacp_engine_end_request(dsacp_engine *e, int64_t id)
{
    request *r = find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "no live request %lld", (long long)id);
    dsacp_kv_release(e->cache, &r->seq);
    if (e->icache != e->cache) dsacp_kv_release(e->icache, &r->iseq);
    r->live = false;
    return DSACP_OK;
}

int64_t dsacp_engine_request_length(const dsacp_engine *e, int64_t id)
{
    const request *r = find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "no live request %lld", (long long)id);
    return r->length;
}

/* ---- MLP ---- */

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* out[t] = down(silu(gate x[t]) * up x[t]) for the n rows of x. */
static int swiglu(const dsacp_weight *gate, const dsacp_weight *up, const dsacp_weight *down,
                  const float *x, int64_t n, int64_t D, float *out, bool aq)
{
    const int64_t I = gate->rows;
    float *g = dsacp_alloc((size_t)(n * I) * 4), *u = dsacp_alloc((size_t)(n * I) * 4);
    int rc = (g && u) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory in MLP");
    if (!rc) rc = dsacp_linear(gate, x, n, D, g, I, aq);
    if (!rc) rc = dsacp_linear(up, x, n, D, u, I, aq);
    if (!rc) {
        for (int64_t i = 0; i < n * I; i++) g[i] = silu(g[i]) * u[i];
        rc = dsacp_linear(down, g, n, I, out, D, aq);
    }
    dsacp_free(g);
    dsacp_free(u);
    return rc;
}

/* DeepSeek-V3 routing of one token: sigmoid scores, bias-corrected choice within the best
 * groups, weights from the unbiased scores. Ties go to the lower index. Writes the chosen
 * experts in ascending order with their weights. */
static void route(const dsacp_config *cfg, const float *logits, const float *bias, int32_t *experts,
                  float *weights)
{
    const int64_t E = cfg->n_routed_experts, G = cfg->n_group, per = E / G;
    const int64_t k = cfg->num_experts_per_tok;
    float s[4096], b[4096], gs[1024];
    bool keep[1024] = {0}, taken[4096] = {0};
    for (int64_t x = 0; x < E; x++) {
        s[x] = 1.0f / (1.0f + expf(-logits[x]));
        b[x] = s[x] + bias[x];
    }
    for (int64_t g = 0; g < G; g++) {
        float m1 = -INFINITY, m2 = -INFINITY;
        for (int64_t x = g * per; x < (g + 1) * per; x++) {
            if (b[x] > m1) {
                m2 = m1;
                m1 = b[x];
            } else if (b[x] > m2) {
                m2 = b[x];
            }
        }
        gs[g] = per >= 2 ? m1 + m2 : m1;
    }
    for (int64_t r = 0; r < cfg->topk_group; r++) {
        int64_t best = -1;
        for (int64_t g = 0; g < G; g++)
            if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
        keep[best] = true;
    }
    for (int64_t r = 0; r < k; r++) {
        int64_t best = -1;
        for (int64_t x = 0; x < E; x++)
            if (keep[x / per] && !taken[x] && (best < 0 || b[x] > b[best])) best = x;
        taken[best] = true;
    }
    double sum = 0;
    int64_t n = 0;
    for (int64_t x = 0; x < E; x++)
        if (taken[x]) {
            experts[n] = (int32_t)x;
            weights[n++] = s[x];
            sum += s[x];
        }
    for (int64_t j = 0; j < k; j++) {
        double wgt = cfg->norm_topk_prob ? weights[j] / (sum + 1e-20) : weights[j];
        weights[j] = (float)(wgt * cfg->routed_scaling_factor);
    }
}

static int moe_forward(const dsacp_engine *e, const mlp_weights *w, const float *x, int64_t T, float *out,
                       bool aq)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t D = cfg->hidden_size, E = cfg->n_routed_experts, k = cfg->num_experts_per_tok;
    float *logits = dsacp_alloc((size_t)(T * E) * 4);
    int32_t *chosen = dsacp_alloc((size_t)(T * k) * 4);
    float *cw = dsacp_alloc((size_t)(T * k) * 4);
    float *y = dsacp_alloc((size_t)(T * k * D) * 4);   /* [T][k][D] expert outputs */
    float *xe = dsacp_alloc((size_t)(T * D) * 4), *ye = dsacp_alloc((size_t)(T * D) * 4);
    int64_t *rows = dsacp_alloc((size_t)T * sizeof(int64_t));
    int rc = (logits && chosen && cw && y && xe && ye && rows) ? DSACP_OK
                                                             : dsacp_error(DSACP_ENOMEM, "out of memory in MoE");
    if (!rc) rc = dsacp_linear(w->router, x, T, D, logits, E, false);
    if (!rc)
        for (int64_t t = 0; t < T; t++) route(cfg, logits + t * E, w->bias, chosen + t * k, cw + t * k);
    /* Each expert runs on the rows routed to it; kernels are row-invariant, so the grouping does
     * not change any token's result. */
    for (int64_t x_ = 0; x_ < E && !rc; x_++) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < k; j++)
                if (chosen[t * k + j] == x_) {
                    memcpy(xe + n * D, x + t * D, (size_t)D * 4);
                    rows[n++] = t * k + j;
                }
        if (!n) continue;
        rc = swiglu(w->egate[x_], w->eup[x_], w->edown[x_], xe, n, D, ye, aq);
        for (int64_t r = 0; r < n && !rc; r++) memcpy(y + rows[r] * D, ye + r * D, (size_t)D * 4);
    }
    if (!rc && w->gate) rc = swiglu(w->gate, w->up, w->down, x, T, D, out, aq);
    else if (!rc) memset(out, 0, (size_t)(T * D) * 4);
    if (!rc)
        for (int64_t t = 0; t < T; t++) {
            /* Routed experts in ascending expert order, then the shared expert. */
            float *o = out + t * D;
            for (int64_t i = 0; i < D; i++) {
                float acc = 0;
                for (int64_t j = 0; j < k; j++) acc += cw[t * k + j] * y[(t * k + j) * D + i];
                o[i] = acc + o[i];
            }
        }
    dsacp_free(logits);
    dsacp_free(chosen);
    dsacp_free(cw);
    dsacp_free(y);
    dsacp_free(xe);
    dsacp_free(ye);
    dsacp_free(rows);
    return rc;
}

/* ---- the step ---- */

/* Positions of [0, L) rank q keeps in a cache of the given layout. */
static int64_t kept_on(const dsacp_engine *e, dsacp_cp_layout layout, int64_t L, int q)
{
    const int W = e->cp.W;
    const int64_t I = e->cp.opt.interleave, G = e->cp.opt.index_group;
    if (W > 1 && layout == DSACP_LAYOUT_PARTIAL) return dsacp_cp_local_len(L, q / G, I * G, W / G);
    return W == 1 || layout == DSACP_LAYOUT_REPLICATED ? L : dsacp_cp_local_len(L, q, I, W);
}

/* Positions of [0, L) this rank keeps in a cache of the given layout. */
static int64_t kept(const dsacp_engine *e, dsacp_cp_layout layout, int64_t L) { return kept_on(e, layout, L, e->cp.rank); }

static int64_t blocks_of(const dsacp_engine *e, int64_t tokens) { return (tokens + e->opt.block_size - 1) / e->opt.block_size; }

bool dsacp_engine_fits(const dsacp_engine *e, const int64_t *ids, const int64_t *new_len, int64_t n)
{
    const bool split = e->icache != e->cache;
    for (int q = 0; q < e->cp.W; q++) {
        int64_t used_l = 0, used_i = 0, need_l = 0, need_i = 0;
        for (int64_t i = 0; i < e->nreq; i++)
            if (e->req[i].live) {
                used_l += blocks_of(e, kept_on(e, e->cp.opt.kv_layout, e->req[i].length, q));
                used_i += blocks_of(e, kept_on(e, e->cp.opt.index_layout, e->req[i].length, q));
            }
        for (int64_t i = 0; i < n; i++) {
            const request *r = ids[i] >= 0 ? find_request(e, ids[i]) : NULL;
            const int64_t cur = r ? r->length : 0;
            need_l += blocks_of(e, kept_on(e, e->cp.opt.kv_layout, new_len[i], q)) - blocks_of(e, kept_on(e, e->cp.opt.kv_layout, cur, q));
            need_i += blocks_of(e, kept_on(e, e->cp.opt.index_layout, new_len[i], q)) - blocks_of(e, kept_on(e, e->cp.opt.index_layout, cur, q));
        }
        if (used_l + need_l > e->cache->num_blocks) return false;
        if (split && used_i + need_i > e->icache->num_blocks) return false;
    }
    return true;
}

double dsacp_engine_kv_use(const dsacp_engine *e)
{
    double worst = 0;
    for (int q = 0; q < e->cp.W; q++) {
        int64_t used = 0;
        for (int64_t i = 0; i < e->nreq; i++)
            if (e->req[i].live) used += blocks_of(e, kept_on(e, e->cp.opt.kv_layout, e->req[i].length, q));
        const double u = (double)used / (double)e->cache->num_blocks;
        if (u > worst) worst = u;
    }
    return worst;
}

const dsacp_config *dsacp_engine_config(const dsacp_engine *e) { return e->cfg; }

/* Validates the entries (the same verdict on every rank: entries are the same everywhere). */
static int check_entries(const dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, int64_t *T_out)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t V = cfg->vocab_size;
    if (n < 0 || (n > 0 && !entries)) return dsacp_error(DSACP_EINVAL, "step: bad entry list");
    int64_t T = 0;
    for (int64_t i = 0; i < n; i++) {
        const dsacp_step_entry *en = &entries[i];
        request *r = find_request(e, en->request_id);
        if (!r) return dsacp_error(DSACP_EINVAL, "step entry %lld: no live request %lld", (long long)i,
                                   (long long)en->request_id);
        for (int64_t j = 0; j < i; j++)
            if (entries[j].request_id == en->request_id)
                return dsacp_error(DSACP_EINVAL, "step entry %lld: request %lld appears twice in one step",
                                   (long long)i, (long long)en->request_id);
        if (en->n_tokens < 1 || !en->token_ids)
            return dsacp_error(DSACP_EINVAL, "step entry %lld: needs n_tokens >= 1 and token ids", (long long)i);
        if (en->n_tokens > cfg->max_position_embeddings - r->length)
            return dsacp_error(DSACP_ERANGE, "step entry %lld: request %lld would reach position %lld, beyond "
                               "max_position_embeddings %lld of the model's config", (long long)i,
                               (long long)en->request_id, (long long)(r->length + en->n_tokens - 1),
                               (long long)cfg->max_position_embeddings);
        for (int64_t j = 0; j < en->n_tokens; j++)
            if (en->token_ids[j] < 0 || en->token_ids[j] >= V)
                return dsacp_error(DSACP_ERANGE, "step entry %lld: token id %d out of vocabulary [0, %lld)",
                                   (long long)i, en->token_ids[j], (long long)V);
        if (r->length + en->n_tokens > INT32_MAX)
            return dsacp_error(DSACP_ERANGE, "step entry %lld: sequence longer than 2^31", (long long)i);
        T += en->n_tokens;
    }
    *T_out = T;
    return DSACP_OK;
}

/* Reserves this rank's blocks for every entry, or changes nothing (DSACP_ECAPACITY). */
static int reserve(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n)
{
    int64_t need_l = 0, need_i = 0;
    for (int64_t i = 0; i < n; i++) {
        request *r = find_request(e, entries[i].request_id);
        const int64_t L = r->length + entries[i].n_tokens;
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
        request *r = find_request(e, entries[i].request_id);
        const int64_t L = r->length + entries[i].n_tokens;
        int rc = dsacp_kv_reserve(e->cache, &r->seq, kept(e, e->cp.opt.kv_layout, L));
        if (!rc && e->icache != e->cache) rc = dsacp_kv_reserve(e->icache, &r->iseq, kept(e, e->cp.opt.index_layout, L));
        if (rc) return rc; /* cannot happen after the check above, except out of memory */
    }
    return DSACP_OK;
}

/* The first non-finite logit, reported instead of being sampled as token 0. */
static int check_logits(const float *logits, int64_t T, int64_t V)
{
    for (int64_t i = 0; i < T * V; i++)
        if (!isfinite(logits[i]))
            return dsacp_error(DSACP_ERANGE, "non-finite logit (%g) for token %lld of the step, vocabulary id "
                               "%lld: the weights or activations overflowed (run `dsacp inspect --scan-weights`)",
                               (double)logits[i], (long long)(i / V), (long long)(i % V));
    return DSACP_OK;
}

static int engine_step(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, float *logits, bool last,
                       int32_t *topk)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t D = cfg->hidden_size, V = cfg->vocab_size, K = cfg->index_topk;
    const int W = e->cp.W, me = e->cp.rank;
    /* Validate everything before touching any state; capacity is agreed by the group. */
    int64_t T = 0;
    int rc = check_entries(e, entries, n, &T);
    if (!rc && T > 0) rc = reserve(e, entries, n);
    rc = dsacp_comm_agree(e->comm, rc);
    if (rc || T == 0) {
        plan_agreement(e); /* the step's plan counts this agreement when it goes on */
        return rc;
    }
    /* Rank 0 decides what is gathered to it. */
    uint8_t want[2] = {logits != NULL, topk != NULL};
    rc = dsacp_comm_bcast(e->comm, want, sizeof want, DSACP_PHASE_control);
    if (rc) return rc;

    int64_t *pos = malloc((size_t)T * sizeof *pos), *old_len = malloc((size_t)n * sizeof *old_len);
    int64_t *new_len = malloc((size_t)n * sizeof *new_len);
    int32_t *ent = malloc((size_t)T * sizeof *ent);
    dsacp_kv_seq **lseqs = malloc((size_t)n * sizeof *lseqs), **iseqs = malloc((size_t)n * sizeof *iseqs);
    float *h = dsacp_alloc((size_t)(T * D) * 4), *xb = dsacp_alloc((size_t)(T * D) * 4);
    float *ob = dsacp_alloc((size_t)(T * D) * 4);
    float *xf = me == 0 && want[0] ? dsacp_alloc((size_t)(T * D) * 4) : NULL;
    dsacp_cp_step_mem mem = {0};
    dsacp_cp_step st = {0};
    if (!pos || !old_len || !new_len || !ent || !lseqs || !iseqs || !h || !xb || !ob || (me == 0 && want[0] && !xf)) {
        /* Before any collective of the layers: every rank learns it at the agreement below. */
        rc = dsacp_error(DSACP_ENOMEM, "out of memory for a step of %lld tokens", (long long)T);
    } else if (dsacp_fault("step")) {
        rc = dsacp_fault_error("step", "the step's buffers");
    }
    e->cp.step_failed = false;
    if (!rc) {
        int64_t t = 0;
        for (int64_t i = 0; i < n; i++) {
            request *r = find_request(e, entries[i].request_id);
            lseqs[i] = &r->seq;
            iseqs[i] = e->icache == e->cache ? &r->seq : &r->iseq;
            old_len[i] = r->length;
            new_len[i] = r->length + entries[i].n_tokens;
            for (int64_t j = 0; j < entries[i].n_tokens; j++, t++) {
                pos[t] = r->length + j;
                ent[t] = (int32_t)i;
            }
        }
        st = (dsacp_cp_step){.T = T, .n_ent = n, .pos = pos, .ent = ent, .old_len = old_len, .new_len = new_len,
                             .lat_seq = lseqs, .idx_seq = iseqs, .want_topk = want[1]};
        rc = dsacp_cp_step_build(&e->cp, &st, &mem);
    }
    rc = dsacp_comm_agree(e->comm, rc);
    if (!rc) rc = dsacp_cp_weights_step_begin(&e->cp, &st); /* DSA-CP: the first weight broadcasts */
    const int64_t na = st.n_dec + st.n_pre;
    if (!rc) {
        /* The active rows: every decode token, and the prefill tokens this rank owns. */
        for (int64_t j = 0; j < na; j++) {
            const int64_t t = st.act[j];
            dsacp_weight_row_f32(e->embed, entries[ent[t]].token_ids[pos[t] - old_len[ent[t]]], h + j * D);
        }
        const bool deployed = e->opt.numerics == DSACP_NUMERICS_DEPLOYED;
        dsacp_dsa_ctx ctx = {cfg, deployed ? DSACP_MODE_DEPLOYED : DSACP_MODE_EXACT, &e->rope, e->cache};
        int lrc = DSACP_OK; /* a local failure: keep taking part, agree at the end */
        memset(&e->times, 0, sizeof e->times);
        e->cp.t_proj = e->cp.t_attn = e->cp.t_oproj = 0;
        e->cp.ovl_compute = e->cp.ovl_wait = 0;
        const double t_step = dsacp_now();
        for (int64_t l = 0; l < e->L && !rc; l++) {
            for (int64_t i = 0; i < na; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->in_norm[l], D, cfg->rms_norm_eps);
            const double t0 = dsacp_now();
            int r2 = dsacp_cp_layer_forward(&e->cp, &ctx, &e->attn[l], l, &st, xb, ob,
                                            me == 0 && topk ? topk + l * T * K : NULL);
            if (r2 == DSACP_ECOMM) rc = r2; /* the group itself failed: no agreement possible */
            else if (r2 && !lrc) lrc = r2;
            /* An agreed failure (a stage's allocation on some rank): every rank stops here. */
            if (e->cp.step_failed) break;
            const double t1 = dsacp_now();
            e->times.attention += t1 - t0;
            for (int64_t i = 0; i < na * D; i++) h[i] += ob[i];
            for (int64_t i = 0; i < na; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->post_norm[l], D, cfg->rms_norm_eps);
            const mlp_weights *mw = &e->mlp[l];
            if (!lrc) lrc = mw->moe ? moe_forward(e, mw, xb, na, ob, deployed)
                                    : swiglu(mw->gate, mw->up, mw->down, xb, na, D, ob, deployed);
            for (int64_t i = 0; i < na * D; i++) h[i] += ob[i];
            e->times.mlp += dsacp_now() - t1;
        }
        e->times.step = dsacp_now() - t_step;
        e->times.projections = e->cp.t_proj, e->times.attend = e->cp.t_attn, e->times.o_proj = e->cp.t_oproj;
        e->times.overlap_compute = e->cp.ovl_compute, e->times.overlap_wait = e->cp.ovl_wait;
        if (!rc && want[0] && !e->cp.step_failed) {
            /* Final norm of the active rows; prefill rows travel to rank 0, which applies the head
             * to every token in step order. */
            for (int64_t i = 0; i < na; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->final_norm, D, cfg->rms_norm_eps);
            if (W == 1 || st.n_pre_all == 0) {
                if (me == 0)
                    for (int64_t j = 0; j < na; j++) memcpy(xf + st.act[j] * D, xb + j * D, (size_t)D * 4);
            } else {
                /* The prefill rows rank 0's head needs: all of them, or (last) each entry's last
                 * token's only -- a chunk's other rows never travel. */
#define ROW_NEEDED(t) (!last || pos[t] == new_len[ent[t]] - 1)
                size_t *rb = calloc((size_t)W, sizeof *rb);
                int64_t nrows = 0, nmine = 0;
                for (int q = 0; rb && q < W; q++)
                    for (int64_t k = st.pre_off[q]; k < st.pre_off[q + 1]; k++)
                        if (ROW_NEEDED(st.pre_all[k])) rb[q] += (size_t)D * 4, nrows++;
                float *all = me == 0 ? dsacp_alloc((size_t)(nrows * D) * 4 + 4) : NULL;
                const int arc = dsacp_cp_agree_alloc(&e->cp, "logits", rb && (me != 0 || all), "the logits' inputs");
                if (arc) {
                    if (!lrc) lrc = arc; /* agreed: every rank skips the gather */
                } else {
                    /* this rank's needed rows, packed in place (xb is not read again) */
                    for (int64_t j = 0; j < st.n_pre; j++)
                        if (ROW_NEEDED(st.act[st.n_dec + j])) {
                            if (j != nmine) memmove(xb + (st.n_dec + nmine) * D, xb + (st.n_dec + j) * D, (size_t)D * 4);
                            nmine++;
                        }
                    rc = dsacp_comm_gatherv(e->comm, xb + st.n_dec * D, rb[me], all, rb, DSACP_PHASE_logits);
                    if (!rc && me == 0) {
                        for (int64_t j = 0; j < st.n_dec; j++) memcpy(xf + st.act[j] * D, xb + j * D, (size_t)D * 4);
                        for (int64_t k = 0, r = 0; k < st.n_pre_all; k++)
                            if (ROW_NEEDED(st.pre_all[k])) memcpy(xf + st.pre_all[k] * D, all + (r++) * D, (size_t)D * 4);
                    }
                }
#undef ROW_NEEDED
                free(rb);
                dsacp_free(all);
            }
            if (!rc && !lrc && me == 0 && logits) {
                if (last) {
                    /* Only the rows sampling reads: each entry's last token (rows are independent
                     * and the linear batch-invariant, so these are the full step's bits). */
                    for (int64_t i = 0, t = 0; i < n; i++) {
                        t += entries[i].n_tokens;
                        if (i != t - 1) memmove(xf + i * D, xf + (t - 1) * D, (size_t)D * 4);
                    }
                    lrc = dsacp_linear(e->head, xf, n, D, logits, V, false);
                    if (!lrc) lrc = check_logits(logits, n, V);
                } else {
                    lrc = dsacp_linear(e->head, xf, T, D, logits, V, false);
                    if (!lrc) lrc = check_logits(logits, T, V);
                }
            }
        }
        if (!rc) rc = dsacp_comm_agree(e->comm, lrc);
    }
    if (!rc)
        for (int64_t i = 0; i < n; i++) {
            request *r = find_request(e, entries[i].request_id);
            r->length += entries[i].n_tokens;
            r->seq.length = kept(e, e->cp.opt.kv_layout, r->length);
            if (e->icache != e->cache) r->iseq.length = kept(e, e->cp.opt.index_layout, r->length);
        }
    if (rc) e->plan_lost = true;
    else plan_step(e, old_len, new_len, n, want, last);
    dsacp_cp_step_free(&mem);
    free(pos), free(old_len), free(new_len), free(ent), free(lseqs), free(iseqs);
    dsacp_free(h), dsacp_free(xb), dsacp_free(ob), dsacp_free(xf);
    return rc;
}

int dsacp_engine_step(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, float *logits, int32_t *topk)
{
    dsacp_comm_counter before[DSACP_PHASE_COUNT];
    counters_now(e, before);
    const int rc = engine_step(e, entries, n, logits, false, topk);
    measured_add(e, before);
    return rc;
}

int dsacp_engine_step_last(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, float *logits_last,
                           int32_t *topk)
{
    dsacp_comm_counter before[DSACP_PHASE_COUNT];
    counters_now(e, before);
    const int rc = engine_step(e, entries, n, logits_last, true, topk);
    measured_add(e, before);
    return rc;
}

dsacp_comm *dsacp_engine_comm(const dsacp_engine *e) { return e->comm; }

void dsacp_engine_cp_stats(const dsacp_engine *e, dsacp_cp_stats *out) { *out = e->cp.stats; }
void dsacp_engine_cp_stats_reset(dsacp_engine *e)
{
    memset(&e->cp.stats, 0, sizeof e->cp.stats);
    e->seen_fb_tokens = e->seen_fb_rounds = e->seen_winners = 0;
}

int dsacp_engine_report_notes(const dsacp_engine *e)
{
    /* Every rank's attention work (uncounted: phase -1), for the load balance of the split. */
    const int W = e->cp.W > 0 ? e->cp.W : 1;
    enum { NS = sizeof(dsacp_cp_stats) / sizeof(int64_t) };
    int64_t *all = calloc((size_t)W * NS, sizeof *all);
    size_t *rb = malloc((size_t)W * sizeof *rb);
    if (!all || !rb) {
        free(all), free(rb);
        return dsacp_error(DSACP_ENOMEM, "out of memory");
    }
    for (int q = 0; q < W; q++) rb[q] = sizeof(dsacp_cp_stats);
    int grc = dsacp_comm_gatherv(e->comm, &e->cp.stats, sizeof(dsacp_cp_stats), all, rb, -1);
    free(rb);
    if (grc) {
        free(all);
        return grc;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        free(all);
        return dsacp_error(DSACP_ENOMEM, "out of memory");
    }
    if (!f) return dsacp_error(DSACP_ENOMEM, "out of memory");
    const dsacp_cp_options *o = &e->cp.opt;
    dsacp_kv_usage ku;
    dsacp_engine_kv_usage(e, &ku);
    fprintf(f, "\"cp\": {\"mode\": \"%s\", \"decode_strategy\": \"%s\", \"kv_layout\": \"%s\", \"index_layout\": \"%s\", "
               "\"interleave\": %lld, \"prefill_split\": \"%s\", \"kv_bytes_rank0\": {\"latent_used\": %lld, "
               "\"index_used\": %lld, \"transient_peak\": %lld}",
            dsacp_cp_mode_name(o->mode), dsacp_decode_strategy_name(o->decode), dsacp_cp_layout_name(o->kv_layout),
            o->index_layout == DSACP_LAYOUT_PARTIAL ? "partial" : dsacp_cp_layout_name(o->index_layout), (long long)o->interleave, dsacp_prefill_split_name(o->prefill_split),
            (long long)ku.latent_used_bytes, (long long)ku.index_used_bytes, (long long)ku.transient_peak_bytes);
    {
        double g = 0, per = 0;
        if (e->cp.lat && e->cp.idx) dsacp_cp_context_rule(&e->cp, 1, &g, &per);
        if (e->cp.hw) {
            /* The profile's name comes from a file: escaped as a JSON string. */
            json_t *js = json_string(e->cp.hw->name);
            char *name = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
            json_decref(js);
            fprintf(f, ", \"context_hardware\": %s", name ? name : "null");
            free(name);
        }
        fprintf(f, ", \"context_path\": \"%s\", \"context_rule\": \"%s\", \"context_gather_bytes_per_context_token\": %.1f, "
                   "\"context_distributed_bytes_per_query_token\": %.1f, \"context_choices\": \"%s\"",
                dsacp_context_path_name(o->context_path),
                e->cp.hw ? "distributed when the planner's time of the layer on context_hardware is lower"
                         : "distributed when new tokens x per-token bytes < gather bytes per context token x context length",
                g, per, e->cp.ctx_choices ? e->cp.ctx_choices : "");
    }
    if (o->decode == DSACP_DECODE_LEAN)
        fprintf(f, ", \"dcp_comm_backend\": \"%s\"", dsacp_merge_backend_name(o->merge_backend));
    if (o->decode == DSACP_DECODE_LEAN)
        fprintf(f, ", \"lean\": {\"candidates_factor\": %g, \"merge\": \"%s\", \"partials\": \"%s\"}", o->lean_factor,
                dsacp_lean_merge_name(o->lean_merge), dsacp_partials_dtype_name(o->partials));
    fprintf(f, ", \"attention_work\": [");
    for (int q = 0; q < W; q++) {
        const dsacp_cp_stats *k = (const dsacp_cp_stats *)(all + (size_t)q * NS);
        fprintf(f, "%s{\"rank\": %d, \"prefill_tokens\": %lld, \"decode_tokens\": %lld, \"keys_scored\": %lld, "
                   "\"keys_attended\": %lld, \"lean_decisions\": %lld, \"lean_fallback_threshold\": %lld, "
                   "\"lean_fallback_ties\": %lld, \"lean_fallback_rounds\": %lld, \"context_gather\": %lld, "
                   "\"context_distributed\": %lld}", q ? ", " : "", q,
                (long long)k->prefill_tokens, (long long)k->decode_tokens, (long long)k->keys_scored,
                (long long)k->keys_attended, (long long)k->lean_decisions, (long long)k->lean_fallback_threshold,
                (long long)k->lean_fallback_ties, (long long)k->lean_fallback_rounds, (long long)k->context_gather,
                (long long)k->context_distributed);
    }
    fprintf(f, "]");
    free(all);
    {
        /* The planner's prediction of the engine's collectives against what they measured, every
         * rank (dsacp_engine_plan_comm). */
        /* and the memory: the KV bytes its live requests hold and (DSA-CP) the q_b_proj / o_proj
         * bytes, planned (dsacp_plan_kv_bytes, dsacp_plan_weight_usage) and as the engine reports */
        enum { P = DSACP_PHASE_COUNT, NM = 12, NP = 6 * DSACP_PHASE_COUNT + NM + 1 };
        int64_t mine[NP], *pall = calloc((size_t)W * NP, sizeof *pall);
        size_t *pb = malloc((size_t)W * sizeof *pb);
        int64_t *lens = malloc((size_t)(e->nreq > 0 ? e->nreq : 1) * sizeof *lens), nlive = 0;
        int prc = pall && pb && lens ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
        for (int p = 0; p < P; p++) {
            mine[6 * p + 0] = e->planned[p].calls, mine[6 * p + 1] = e->planned[p].bytes_sent, mine[6 * p + 2] = e->planned[p].bytes_recv;
            mine[6 * p + 3] = e->measured[p].calls, mine[6 * p + 4] = e->measured[p].bytes_sent, mine[6 * p + 5] = e->measured[p].bytes_recv;
        }
        int64_t *mem = mine + 6 * P;
        memset(mem, 0, NM * sizeof *mem);
        if (!prc) {
            for (int64_t i = 0; i < e->nreq; i++)
                if (e->req[i].live) lens[nlive++] = e->req[i].length;
            dsacp_plan_kv_bytes(e->cfg, o, W, e->cp.rank, lens, nlive, e->opt.block_size, e->pbase.latent_bytes, e->pbase.index_bytes,
                                &mem[0], &mem[1]);
            mem[2] = ku.latent_used_bytes, mem[3] = ku.index_used_bytes;
            if (e->cp.wp) {
                dsacp_weight_usage pu, eu;
                const dsacp_weight *ow = e->attn[0].o;
                dsacp_plan_weight_usage(e->cfg, o, W, e->cp.rank, ow->dtype, ow->block, &pu);
                dsacp_engine_weight_usage(e, &eu);
                mem[4] = pu.q_proj_resident, mem[5] = pu.o_proj_resident, mem[6] = pu.ring_bytes, mem[7] = pu.gather_bytes;
                mem[8] = eu.q_proj_resident, mem[9] = eu.o_proj_resident, mem[10] = eu.ring_bytes, mem[11] = eu.gather_bytes;
            }
        }
        free(lens);
        mine[NP - 1] = e->plan_lost;
        for (int q = 0; pb && q < W; q++) pb[q] = sizeof mine;
        if (!prc) prc = dsacp_comm_gatherv(e->comm, mine, sizeof mine, pall, pb, -1);
        if (!prc && e->cp.rank == 0) {
            bool match = true, lost = false;
            for (int q = 0; q < W; q++) {
                const int64_t *r = pall + (size_t)q * NP, *m = r + 6 * P;
                lost = lost || r[NP - 1];
                for (int p = 0; p < P; p++)
                    for (int k = 0; k < 3; k++) match = match && r[6 * p + k] == r[6 * p + 3 + k];
                match = match && m[0] == m[2] && m[1] == m[3];
                for (int k = 4; k < 8; k++) match = match && m[k] == m[k + 4];
            }
            fprintf(f, ", \"plan\": {\"predicted\": \"every collective of the engine's steps from the planner's formulas "
                       "(dsacp_plan_entries_comm), against the counters' growth during those steps; the KV bytes of the live "
                       "requests [latent, index] and (dsa-cp) q_b_proj / o_proj bytes [q resident, o resident, ring, gather] "
                       "against the engine's\", \"tracked\": %s, \"matches\": %s, "
                       "\"ranks\": [", lost ? "false" : "true", match && !lost ? "true" : "false");
            for (int q = 0; q < W; q++) {
                const int64_t *r = pall + (size_t)q * NP;
                const int64_t *m = r + 6 * P;
                fprintf(f, "%s{\"rank\": %d, \"kv\": {\"planned\": [%lld, %lld], \"engine\": [%lld, %lld]}", q ? ", " : "", q,
                        (long long)m[0], (long long)m[1], (long long)m[2], (long long)m[3]);
                if (e->cp.wp)
                    fprintf(f, ", \"weights\": {\"planned\": [%lld, %lld, %lld, %lld], \"engine\": [%lld, %lld, %lld, %lld]}",
                            (long long)m[4], (long long)m[5], (long long)m[6], (long long)m[7], (long long)m[8], (long long)m[9],
                            (long long)m[10], (long long)m[11]);
                fprintf(f, ", \"phases\": {");
                for (int p = 0, first = 1; p < P; p++) {
                    const int64_t *x = r + 6 * p;
                    if (!x[0] && !x[1] && !x[2] && !x[3] && !x[4] && !x[5]) continue;
                    fprintf(f, "%s\"%s\": {\"planned\": [%lld, %lld, %lld], \"measured\": [%lld, %lld, %lld]}", first ? "" : ", ",
                            dsacp_comm_phase_name(p), (long long)x[0], (long long)x[1], (long long)x[2], (long long)x[3],
                            (long long)x[4], (long long)x[5]);
                    first = 0;
                }
                fprintf(f, "}}");
            }
            fprintf(f, "]}");
        }
        free(pall), free(pb);
        if (prc) {
            fclose(f);
            free(text);
            return prc;
        }
    }
    if (e->cp.wp) {
        dsacp_weight_usage u;
        dsacp_engine_weight_usage(e, &u);
        double g, a;
        dsacp_cp_weights_rule(&e->cp, &g, &a);
        fprintf(f, ", \"q_proj\": \"%s\", \"o_proj\": \"%s\", \"prefetch\": %lld, \"weights_rank0\": {\"q_proj_resident\": "
                   "%lld, \"o_proj_resident\": %lld, \"ring\": %lld, \"gather_buffers\": %lld}",
                dsacp_weight_plan_name(o->q_proj), dsacp_weight_plan_name(o->o_proj), (long long)o->prefetch,
                (long long)u.q_proj_resident, (long long)u.o_proj_resident, (long long)u.ring_bytes, (long long)u.gather_bytes);
        if (e->cp.wp->col)
            fprintf(f, ", \"o_proj_rule\": \"tp: gather the weight in steps with prefill tokens, else move activations; "
                       "auto: gather when the gathered bytes per rank < activation bytes per rank; a decode-only step with "
                       "sharded layouts (DSA-CP + DCP) moves neither: head columns and one all-reduce (r)\", "
                       "\"o_proj_gather_bytes\": %.0f, \"o_proj_activation_bytes_per_token\": %.0f, "
                       "\"o_proj_crossover_tokens\": %.0f, \"o_proj_steps\": {\"gather\": %lld, \"activations\": %lld, "
                       "\"allreduce\": %lld}, \"o_proj_choices\": \"%s\"",
                    g, a, a > 0 ? g / a : 0, (long long)u.steps_gather, (long long)u.steps_activations,
                    (long long)u.steps_allreduce,
                    e->cp.wp->choices ? e->cp.wp->choices : "");
    }
    fprintf(f, "}");
    fclose(f);
    int rc = dsacp_comm_set_notes(e->comm, text);
    free(text);
    return rc;
}

void dsacp_engine_weight_usage(const dsacp_engine *e, dsacp_weight_usage *u) { dsacp_cp_weights_usage(&e->cp, u); }

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
    request *r = find_request(e, id);
    if (!r || r->length != 0) return dsacp_error(DSACP_EINVAL, "fill: request %lld must be live and empty", (long long)id);
    if (length < 1 || length > e->cfg->max_position_embeddings)
        return dsacp_error(DSACP_ERANGE, "fill: length %lld outside [1, max_position_embeddings]", (long long)length);
    dsacp_step_entry en = {id, length, NULL};
    int rc = reserve(e, &en, 1);
    dsacp_comm_counter before[DSACP_PHASE_COUNT];
    counters_now(e, before);
    rc = dsacp_comm_agree(e->comm, rc);
    plan_agreement(e);
    measured_add(e, before);
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
        for (int64_t l = 0; l < e->L; l++) {
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
    r->seq.length = kept(e, e->cp.opt.kv_layout, length);
    if (e->icache != e->cache) r->iseq.length = kept(e, e->cp.opt.index_layout, length);
    return DSACP_OK;
}

void dsacp_engine_kv_usage(const dsacp_engine *e, dsacp_kv_usage *u)
{
    memset(u, 0, sizeof *u);
    const int64_t B = e->opt.block_size, L = e->L;
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
    const request *r = find_request(e, id);
    return r ? &r->seq : NULL;
}

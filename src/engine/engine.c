/*
 * engine -- requests, steps and the model stack around the attention (dsa-spec.md section 7):
 * embedding, per layer h += attn(RMSNorm(h)); h += mlp(RMSNorm(h)), final norm, lm_head.
 * Dense MLP and DeepSeek-V3 MoE routing live here. Calls everything below it (core, numerics,
 * kernels, cache, attn, model); nothing below calls it.
 */
#include "attn/dsa_layer.h"
#include "engine/engine.h"
#include "model/model.h"

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
    dsacp_kv_seq seq;
} request;

struct dsacp_engine {
    const dsacp_model *model;
    const dsacp_config *cfg;
    dsacp_engine_options opt;
    dsacp_rope rope;
    dsacp_kv_cache *cache;
    int64_t L;
    dsacp_dsa_weights *attn;
    mlp_weights *mlp;
    float **in_norm, **post_norm, *final_norm;
    const dsacp_weight *embed, *head;
    request *req;
    int64_t nreq, capreq;
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
        if (e->req[i].live) dsacp_kv_release(e->cache, &e->req[i].seq);
    free(e->req);
    dsacp_kv_cache_free(e->cache);
    free(e);
}

int dsacp_engine_create(const dsacp_model *model, const dsacp_engine_options *opt_in, dsacp_engine **out)
{
    *out = NULL;
    dsacp_engine_options opt;
    if (opt_in) opt = *opt_in;
    else dsacp_engine_options_default(&opt);
    const dsacp_config *cfg = dsacp_model_config(model);
    if (opt.numerics != DSACP_NUMERICS_EXACT && opt.numerics != DSACP_NUMERICS_DEPLOYED)
        return dsacp_error(DSACP_EINVAL, "unknown numerics mode %d", (int)opt.numerics);
    if (opt.kv_dtype != DSACP_KV_F32 && opt.kv_dtype != DSACP_KV_BF16 && opt.kv_dtype != DSACP_KV_FP8)
        return dsacp_error(DSACP_EINVAL, "unknown kv dtype %d", (int)opt.kv_dtype);
    if (opt.kv_dtype == DSACP_KV_FP8 && opt.numerics != DSACP_NUMERICS_DEPLOYED)
        return dsacp_error(DSACP_EINVAL, "the fp8 latent cache belongs to the deployed numerics mode");
    const int64_t di = cfg->index_head_dim;
    if (opt.numerics == DSACP_NUMERICS_DEPLOYED && (di & (di - 1)))
        return dsacp_error(DSACP_EUNSUPPORTED, "deployed mode needs a power-of-two index_head_dim "
                           "for the Hadamard transform (got %lld)", (long long)di);
    if (di > 1024 || cfg->qk_rope_head_dim > 512 || cfg->kv_lora_rank + cfg->qk_rope_head_dim > 1024)
        return dsacp_error(DSACP_EUNSUPPORTED, "head dimensions beyond the engine's limits "
                           "(index_head_dim <= 1024, kv_lora_rank + rope <= 1024)");
    if (cfg->n_routed_experts > 4096 || cfg->n_group > 1024)
        return dsacp_error(DSACP_EUNSUPPORTED, "more than 4096 routed experts or 1024 expert groups");
    dsacp_engine *e = calloc(1, sizeof *e);
    if (!e) return dsacp_error(DSACP_ENOMEM, "out of memory");
    e->model = model;
    e->cfg = cfg;
    e->opt = opt;
    e->L = cfg->num_hidden_layers;
    int rc = dsacp_rope_init(&e->rope, cfg);
    if (!rc)
        rc = dsacp_kv_cache_create(cfg, e->L, opt.kv_dtype, opt.numerics == DSACP_NUMERICS_DEPLOYED,
                                   opt.block_size, opt.num_blocks, &e->cache);
    if (rc) goto fail;
    e->attn = calloc((size_t)e->L, sizeof *e->attn);
    e->mlp = calloc((size_t)e->L, sizeof *e->mlp);
    e->in_norm = calloc((size_t)e->L, sizeof *e->in_norm);
    e->post_norm = calloc((size_t)e->L, sizeof *e->post_norm);
    if (!e->attn || !e->mlp || !e->in_norm || !e->post_norm) {
        rc = dsacp_error(DSACP_ENOMEM, "out of memory");
        goto fail;
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
    if (rc) goto fail;
    *out = e;
    return DSACP_OK;
fail:
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
    r->live = false;
    return DSACP_OK;
}

int64_t dsacp_engine_request_length(const dsacp_engine *e, int64_t id)
{
    const request *r = find_request(e, id);
    if (!r) return dsacp_error(DSACP_EINVAL, "no live request %lld", (long long)id);
    return r->seq.length;
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

int dsacp_engine_step(dsacp_engine *e, const dsacp_step_entry *entries, int64_t n, float *logits,
                      int32_t *topk)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t D = cfg->hidden_size, V = cfg->vocab_size, K = cfg->index_topk;
    if (n < 0 || (n > 0 && !entries)) return dsacp_error(DSACP_EINVAL, "step: bad entry list");
    /* Validate everything before touching any state. */
    int64_t T = 0, extra_blocks = 0;
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
        for (int64_t j = 0; j < en->n_tokens; j++)
            if (en->token_ids[j] < 0 || en->token_ids[j] >= V)
                return dsacp_error(DSACP_ERANGE, "step entry %lld: token id %d out of vocabulary [0, %lld)",
                                   (long long)i, en->token_ids[j], (long long)V);
        if (r->seq.length + en->n_tokens > INT32_MAX)
            return dsacp_error(DSACP_ERANGE, "step entry %lld: sequence longer than 2^31", (long long)i);
        T += en->n_tokens;
        extra_blocks += dsacp_kv_blocks_needed(e->cache, &r->seq, r->seq.length + en->n_tokens);
    }
    if (extra_blocks > e->cache->num_free)
        return dsacp_error(DSACP_ECAPACITY, "step refused: it needs %lld more cache blocks of %lld tokens, "
                           "%lld of %lld are free", (long long)extra_blocks, (long long)e->opt.block_size,
                           (long long)e->cache->num_free, (long long)e->cache->num_blocks);
    if (T == 0) return DSACP_OK;
    for (int64_t i = 0; i < n; i++) {
        request *r = find_request(e, entries[i].request_id);
        int rc = dsacp_kv_reserve(e->cache, &r->seq, r->seq.length + entries[i].n_tokens);
        if (rc) return rc; /* cannot happen after the check above, except out of memory */
    }

    int64_t *pos = malloc((size_t)T * sizeof *pos);
    int32_t *seqi = malloc((size_t)T * sizeof *seqi);
    dsacp_kv_seq **seqs = malloc((size_t)n * sizeof *seqs);
    float *h = dsacp_alloc((size_t)(T * D) * 4), *xb = dsacp_alloc((size_t)(T * D) * 4);
    float *ob = dsacp_alloc((size_t)(T * D) * 4);
    int rc = (pos && seqi && seqs && h && xb && ob) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory in step");
    int64_t t = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        request *r = find_request(e, entries[i].request_id);
        seqs[i] = &r->seq;
        for (int64_t j = 0; j < entries[i].n_tokens; j++, t++) {
            pos[t] = r->seq.length + j;
            seqi[t] = (int32_t)i;
            dsacp_weight_row_f32(e->embed, entries[i].token_ids[j], h + t * D);
        }
    }
    const bool deployed = e->opt.numerics == DSACP_NUMERICS_DEPLOYED;
    dsacp_step_tokens tok = {T, pos, seqi, seqs};
    dsacp_dsa_ctx ctx = {cfg, deployed ? DSACP_MODE_DEPLOYED : DSACP_MODE_EXACT, &e->rope, e->cache};
    for (int64_t l = 0; l < e->L && !rc; l++) {
        for (int64_t i = 0; i < T; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->in_norm[l], D, cfg->rms_norm_eps);
        rc = dsacp_dsa_forward(&ctx, &e->attn[l], l, &tok, xb, ob, topk ? topk + l * T * K : NULL);
        if (rc) break;
        for (int64_t i = 0; i < T * D; i++) h[i] += ob[i];
        for (int64_t i = 0; i < T; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->post_norm[l], D, cfg->rms_norm_eps);
        const mlp_weights *mw = &e->mlp[l];
        rc = mw->moe ? moe_forward(e, mw, xb, T, ob, deployed)
                     : swiglu(mw->gate, mw->up, mw->down, xb, T, D, ob, deployed);
        if (rc) break;
        for (int64_t i = 0; i < T * D; i++) h[i] += ob[i];
    }
    if (!rc && logits) {
        for (int64_t i = 0; i < T; i++) dsacp_rmsnorm(xb + i * D, h + i * D, e->final_norm, D, cfg->rms_norm_eps);
        rc = dsacp_linear(e->head, xb, T, D, logits, V, false);
    }
    if (!rc)
        for (int64_t i = 0; i < n; i++) find_request(e, entries[i].request_id)->seq.length += entries[i].n_tokens;
    free(pos);
    free(seqi);
    free(seqs);
    dsacp_free(h);
    dsacp_free(xb);
    dsacp_free(ob);
    return rc;
}

/* ---- internal views (engine.h) ---- */

dsacp_kv_cache *dsacp_engine_cache(dsacp_engine *e) { return e->cache; }

const dsacp_kv_seq *dsacp_engine_request_seq(const dsacp_engine *e, int64_t id)
{
    const request *r = find_request(e, id);
    return r ? &r->seq : NULL;
}

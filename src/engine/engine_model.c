/*
 * engine_model -- the model stack around the attention (docs/dsa-math.md section 7): the weights
 * of every layer bound from the model, the dense SwiGLU MLP, DeepSeek-V3 MoE routing and its
 * experts, and lm_head with its check of the logits.
 */
#include "engine/engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    dsacp_mlp_weights *w = &e->mlp[l];
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

int dsacp_engine_model_bind(dsacp_engine *e)
{
    const dsacp_model *model = e->model;
    const dsacp_config *cfg = e->cfg;
    int rc = DSACP_OK;
    e->attn = calloc((size_t)e->L, sizeof *e->attn);
    e->mlp = calloc((size_t)e->L, sizeof *e->mlp);
    e->in_norm = calloc((size_t)e->L, sizeof *e->in_norm);
    e->post_norm = calloc((size_t)e->L, sizeof *e->post_norm);
    if (!e->attn || !e->mlp || !e->in_norm || !e->post_norm) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the layers");
    else if (dsacp_fault("engine")) rc = dsacp_fault_error("engine", "engine layers");
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
    return rc;
}

void dsacp_engine_model_release(dsacp_engine *e)
{
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

static int moe_forward(const dsacp_engine *e, const dsacp_mlp_weights *w, const float *x, int64_t T, float *out,
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

int dsacp_engine_mlp(const dsacp_engine *e, int64_t l, const float *x, int64_t n, float *out, bool act_quant)
{
    const dsacp_mlp_weights *mw = &e->mlp[l];
    return mw->moe ? moe_forward(e, mw, x, n, out, act_quant)
                   : swiglu(mw->gate, mw->up, mw->down, x, n, e->cfg->hidden_size, out, act_quant);
}

/* ---- lm_head ---- */

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

int dsacp_engine_head(const dsacp_engine *e, const float *x, int64_t n, float *logits)
{
    const int64_t D = e->cfg->hidden_size, V = e->cfg->vocab_size;
    int rc = dsacp_linear(e->head, x, n, D, logits, V, false);
    if (!rc) rc = check_logits(logits, n, V);
    return rc;
}

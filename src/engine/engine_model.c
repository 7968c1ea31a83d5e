/*
 * engine_model -- the model stack around the attention (docs/dsa-math.md section 7): the weights
 * of every layer bound from the model, the dense SwiGLU MLP, DeepSeek-V3 MoE routing and its
 * experts, and lm_head with its check of the logits.
 */
#include "engine/engine_internal.h"
#include "kernels/kernels.h"

#include <math.h>
#include <omp.h>
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

/* The MTP layer's own parts (docs/mtp.md): its two input norms, eh_proj, its shared head's norm,
 * and its embedding and head when the checkpoint has its own (else the target's). */
static int bind_mtp(dsacp_engine *e)
{
    const dsacp_model *m = e->model;
    const int64_t M = e->L, D = e->cfg->hidden_size;
    int rc = DSACP_OK;
    char n[160];
    snprintf(n, sizeof n, "model.layers.%lld.enorm.weight", (long long)M);
    e->mtp_enorm = dsacp_model_vector_f32(m, n, D, &rc);
    snprintf(n, sizeof n, "model.layers.%lld.hnorm.weight", (long long)M);
    if (!rc) e->mtp_hnorm = dsacp_model_vector_f32(m, n, D, &rc);
    snprintf(n, sizeof n, "model.layers.%lld.shared_head.norm.weight", (long long)M);
    if (!rc) e->mtp_norm = dsacp_model_vector_f32(m, n, D, &rc);
    snprintf(n, sizeof n, "model.layers.%lld.eh_proj.weight", (long long)M);
    if (!rc) e->mtp_eh = need(m, &rc, n);
    if (!rc && (e->mtp_eh->rows != D || e->mtp_eh->cols != 2 * D))
        rc = dsacp_error(DSACP_EFORMAT, "'%s' is [%lld][%lld], expected [%lld][%lld]", n, (long long)e->mtp_eh->rows,
                         (long long)e->mtp_eh->cols, (long long)D, (long long)(2 * D));
    e->mtp_head = dsacp_model_weightf(m, "model.layers.%lld.shared_head.head.weight", (long long)M);
    if (!e->mtp_head) e->mtp_head = e->head;
    e->mtp_embed = dsacp_model_weightf(m, "model.layers.%lld.embed_tokens.weight", (long long)M);
    if (!e->mtp_embed) e->mtp_embed = e->embed;
    return rc;
}

int dsacp_engine_model_bind(dsacp_engine *e)
{
    const dsacp_model *model = e->model;
    const dsacp_config *cfg = e->cfg;
    int rc = DSACP_OK;
    e->attn = calloc((size_t)e->NL, sizeof *e->attn);
    e->mlp = calloc((size_t)e->NL, sizeof *e->mlp);
    e->in_norm = calloc((size_t)e->NL, sizeof *e->in_norm);
    e->post_norm = calloc((size_t)e->NL, sizeof *e->post_norm);
    if (!e->attn || !e->mlp || !e->in_norm || !e->post_norm) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the layers");
    else if (dsacp_fault("engine")) rc = dsacp_fault_error("engine", "engine layers");
    for (int64_t l = 0; l < e->NL && !rc; l++) {
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
    if (!rc && e->NL > e->L) rc = bind_mtp(e);
    return rc;
}

void dsacp_engine_model_release(dsacp_engine *e)
{
    dsacp_free(e->mtp_enorm), dsacp_free(e->mtp_hnorm), dsacp_free(e->mtp_norm);
    for (int64_t l = 0; l < e->NL; l++) {
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

/* The scratch of linear() over n rows of w. */
static void linear_need(size_t *bytes, const dsacp_weight *w, int64_t n, bool aq)
{
    const size_t b = dsacp_linear_ws_bytes(w, n, aq);
    if (b > (size_t)INT64_MAX) *bytes = SIZE_MAX;
    else dsacp_arena_need(bytes, 1, (int64_t)b, 1);
}

/* y[n][ldy] = x[n][ldx] W^T (dsacp_linear_ws) with the kernel's scratch from ws, given back. */
static int linear(dsacp_arena *ws, const dsacp_weight *w, const float *x, int64_t n, int64_t ldx, float *y,
                  int64_t ldy, bool aq)
{
    const size_t mark = dsacp_arena_mark(ws), b = dsacp_linear_ws_bytes(w, n, aq);
    void *scratch = b <= (size_t)INT64_MAX ? dsacp_arena_take(ws, 1, (int64_t)b, 1, "linear kernel scratch") : NULL;
    int rc = scratch ? dsacp_linear_ws(w, x, n, ldx, y, ldy, aq, scratch, b) : DSACP_ENOMEM;
    dsacp_arena_rewind(ws, mark);
    return rc;
}

/* The scratch of swiglu over n rows: its two [n][I] buffers, then one linear's at a time. */
static void swiglu_need(size_t *bytes, const dsacp_weight *gate, const dsacp_weight *up, const dsacp_weight *down,
                        int64_t n, bool aq)
{
    const int64_t I = gate->rows;
    size_t lg = 0, lu = 0, ld = 0;
    dsacp_arena_need(bytes, n, I, sizeof(float));
    dsacp_arena_need(bytes, n, I, sizeof(float));
    linear_need(&lg, gate, n, aq), linear_need(&lu, up, n, aq), linear_need(&ld, down, n, aq);
    const size_t lin = dsacp_arena_max(lg, dsacp_arena_max(lu, ld));
    if (*bytes == SIZE_MAX || lin == SIZE_MAX || !dsacp_add_ok(*bytes, lin, bytes)) *bytes = SIZE_MAX;
}

/* out[t] = down(silu(gate x[t]) * up x[t]) for the n rows of x; its scratch from ws, given back. */
static int swiglu(dsacp_arena *ws, const dsacp_weight *gate, const dsacp_weight *up, const dsacp_weight *down,
                  const float *x, int64_t n, int64_t D, float *out, bool aq)
{
    const int64_t I = gate->rows;
    const size_t mark = dsacp_arena_mark(ws);
    float *g = dsacp_arena_take(ws, n, I, sizeof(float), "MLP gate rows");
    float *u = g ? dsacp_arena_take(ws, n, I, sizeof(float), "MLP up rows") : NULL;
    int rc = u ? DSACP_OK : DSACP_ENOMEM;
    if (!rc) rc = linear(ws, gate, x, n, D, g, I, aq);
    if (!rc) rc = linear(ws, up, x, n, D, u, I, aq);
    if (!rc) {
        for (int64_t i = 0; i < n * I; i++) g[i] = silu(g[i]) * u[i];
        rc = linear(ws, down, g, n, I, out, D, aq);
    }
    dsacp_arena_rewind(ws, mark);
    return rc;
}

/* ---- a few-token step's experts in one parallel region ----
 *
 * A decode step's MoE layer is num_experts_per_tok + 1 small SwiGLUs (the small preset: five of
 * 256 x 1024), three linears each: fifteen parallel regions of ~20 us, whose fork and join cost a
 * few us each on a quiet machine and a scheduler time slice each when the machine runs more
 * threads than cores (libgomp's waiting threads spin). For steps of fewer than MOE_MAX_T
 * tokens the experts run in one region instead: every gate and up projection split into chunks
 * of MOE_CHUNK output rows over the threads, then every down projection likewise. A chunk is the
 * linear on a view of those weight rows (rows_view), on one thread (inside a region the kernels
 * split nothing); a linear's output rows are independent of the rows beside them (the chains are
 * per output and thread-count invariant), so every expert output has the bits the per-expert path
 * gives (test_engine: one token per step against whole-prompt steps, bit for bit). */
/* MOE_MAX_T: the batched GEMM's threshold (DSACP_GEMM_MIN_T): from there on each linear is a
 * GEMM worth its own region. */
enum { MOE_CHUNK = 128, MOE_MAX_T = 8 };

/* Rows [o0, o0 + n) of w as a weight of their own; F8: o0 a multiple of its block. */
static dsacp_weight rows_view(const dsacp_weight *w, int64_t o0, int64_t n)
{
    dsacp_weight v = *w;
    v.rows = n;
    v.data = (const unsigned char *)w->data + (size_t)(o0 * w->cols) * dsacp_dtype_size(w->dtype);
    if (w->dtype == DSACP_F8_E4M3) {
        v.scale = w->scale + (o0 / w->block) * w->scale_stride;
        v.scale_rows = (n + w->block - 1) / w->block;
    }
    return v;
}

static bool chunkable(const dsacp_weight *w)
{
    return w->ndim == 2 && (w->dtype != DSACP_F8_E4M3 || (w->block > 0 && MOE_CHUNK % w->block == 0));
}

/* Whether T tokens of layer w take the one-region path with `threads` threads. */
static bool fused_applies(const dsacp_config *cfg, const dsacp_mlp_weights *w, int64_t T, int threads)
{
    if (T >= MOE_MAX_T || threads < 2) return false;
    const int64_t Ir = w->egate[0]->rows; /* the routed experts' rows lie Ir apart in the region's g and u */
    for (int64_t x = 0; x < cfg->n_routed_experts; x++)
        if (!chunkable(w->egate[x]) || !chunkable(w->eup[x]) || !chunkable(w->edown[x]) || w->egate[x]->rows != Ir ||
            w->eup[x]->rows != Ir)
            return false;
    return !w->gate || (chunkable(w->gate) && chunkable(w->up) && chunkable(w->down) && w->up->rows == w->gate->rows);
}

/* The largest scratch of a chunk of w over T rows (a whole chunk and the last one). */
static size_t chunk_ws(const dsacp_weight *w, int64_t T, bool aq)
{
    const int64_t full = w->rows < MOE_CHUNK ? w->rows : MOE_CHUNK, last = w->rows % MOE_CHUNK;
    dsacp_weight v = rows_view(w, 0, full);
    size_t b = dsacp_linear_ws_bytes(&v, T, aq);
    if (last) {
        v = rows_view(w, 0, last);
        b = dsacp_arena_max(b, dsacp_linear_ws_bytes(&v, T, aq));
    }
    return b;
}

/* One SwiGLU of the region: its weights, n input rows x (ldx D), g and u [n][I], out [n][D]. */
typedef struct moe_slot {
    const dsacp_weight *gate, *up, *down;
    const float *x;
    int64_t n;
    float *g, *u, *out;
} moe_slot;

typedef struct moe_region {
    const moe_slot *slot;
    int64_t nslot, D;
    bool aq;
    unsigned char *scratch; /* per thread, `bytes` each */
    size_t bytes;
    int rc;
} moe_region;

/* Chunk c of phase `down` (false: gate and up) of slot s, as `item` of the phase's list. */
static int region_item(const moe_region *m, unsigned char *ws, bool down, int64_t item)
{
    for (int64_t s = 0; s < m->nslot; s++) {
        const moe_slot *sl = &m->slot[s];
        const int64_t rows = down ? sl->down->rows : sl->gate->rows, nc = (rows + MOE_CHUNK - 1) / MOE_CHUNK;
        const int64_t per = down ? nc : 2 * nc;
        if (item >= per) {
            item -= per;
            continue;
        }
        const bool second = !down && item >= nc;
        const int64_t o0 = (second ? item - nc : item) * MOE_CHUNK, n = rows - o0 < MOE_CHUNK ? rows - o0 : MOE_CHUNK;
        const int64_t I = sl->gate->rows;
        const dsacp_weight v = rows_view(down ? sl->down : second ? sl->up : sl->gate, o0, n);
        if (down) return dsacp_linear_ws(&v, sl->g, sl->n, I, sl->out + o0, m->D, m->aq, ws, m->bytes);
        return dsacp_linear_ws(&v, sl->x, sl->n, m->D, (second ? sl->u : sl->g) + o0, I, m->aq, ws, m->bytes);
    }
    return DSACP_OK;
}

static int64_t region_items(const moe_region *m, bool down)
{
    int64_t n = 0;
    for (int64_t s = 0; s < m->nslot; s++) {
        const moe_slot *sl = &m->slot[s];
        const int64_t rows = down ? sl->down->rows : sl->gate->rows, nc = (rows + MOE_CHUNK - 1) / MOE_CHUNK;
        n += down ? nc : 2 * nc;
    }
    return n;
}

static void region_note(moe_region *m, int rc)
{
    if (!rc) return;
#pragma omp critical(dsacp_moe_region)
    if (!m->rc) m->rc = rc;
}

/* Every slot's SwiGLU in one region of nth threads. */
static int region_run(moe_region *m, int nth)
{
    const int64_t na = region_items(m, false), nd = region_items(m, true);
#pragma omp parallel num_threads(nth)
    {
        unsigned char *ws = m->scratch + (size_t)omp_get_thread_num() * m->bytes;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < na; i++) region_note(m, region_item(m, ws, false, i));
#pragma omp for schedule(static)
        for (int64_t s = 0; s < m->nslot; s++) {
            const moe_slot *sl = &m->slot[s];
            for (int64_t i = 0; i < sl->n * sl->gate->rows; i++) sl->g[i] = silu(sl->g[i]) * sl->u[i];
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nd; i++) region_note(m, region_item(m, ws, true, i));
    }
    return m->rc;
}

/* Whether a and b have the same kind (the scratch of a linear depends on nothing else). */
static bool same_kind(const dsacp_weight *a, const dsacp_weight *b)
{
    return a->dtype == b->dtype && a->rows == b->rows && a->cols == b->cols && a->block == b->block;
}

/* The scratch of one thread of the region: the largest chunk's of any expert (64-byte multiple;
 * experts of the kind of the one before are not asked again: V3.2 has 256). */
static size_t fused_lin_bytes(const dsacp_config *cfg, const dsacp_mlp_weights *w, int64_t T, bool aq)
{
    size_t lin = 0;
    for (int64_t x = 0; x < cfg->n_routed_experts; x++) {
        if (x > 0 && same_kind(w->egate[x], w->egate[x - 1]) && same_kind(w->eup[x], w->eup[x - 1]) &&
            same_kind(w->edown[x], w->edown[x - 1]))
            continue;
        lin = dsacp_arena_max(lin, chunk_ws(w->egate[x], T, aq));
        lin = dsacp_arena_max(lin, dsacp_arena_max(chunk_ws(w->eup[x], T, aq), chunk_ws(w->edown[x], T, aq)));
    }
    if (w->gate) {
        lin = dsacp_arena_max(lin, chunk_ws(w->gate, T, aq));
        lin = dsacp_arena_max(lin, dsacp_arena_max(chunk_ws(w->up, T, aq), chunk_ws(w->down, T, aq)));
    }
    return lin > (size_t)INT64_MAX - 64 ? SIZE_MAX : (lin + 63) & ~(size_t)63;
}

/* The region's buffers over T tokens with nth threads, in the order moe_fused takes them, and
 * (*lin) one thread's scratch; 0 when the path does not apply, SIZE_MAX on overflow. */
static size_t fused_bytes(const dsacp_config *cfg, const dsacp_mlp_weights *w, int64_t T, bool aq, int nth,
                          size_t *lin_out)
{
    if (!fused_applies(cfg, w, T, nth)) return 0;
    const int64_t D = cfg->hidden_size, R = T * cfg->num_experts_per_tok, Ir = w->egate[0]->rows;
    const int64_t Is = w->gate ? w->gate->rows : 0;
    const size_t lin = fused_lin_bytes(cfg, w, T, aq);
    *lin_out = lin;
    if (lin == SIZE_MAX || lin > (size_t)INT64_MAX / (size_t)nth) return SIZE_MAX;
    size_t bytes = 0;
    dsacp_arena_need(&bytes, R + 1, 1, sizeof(moe_slot));
    dsacp_arena_need(&bytes, R, 1, sizeof(int64_t));
    dsacp_arena_need(&bytes, R, D, sizeof(float)); /* the routed rows' inputs */
    dsacp_arena_need(&bytes, R, D, sizeof(float)); /* ... and outputs */
    for (int i = 0; i < 2; i++) {                  /* gate, then up rows */
        dsacp_arena_need(&bytes, R, Ir, sizeof(float));
        dsacp_arena_need(&bytes, T, Is, sizeof(float));
    }
    dsacp_arena_need(&bytes, nth, (int64_t)lin, 1);
    return bytes;
}

/* The router's per-token scratch: scores, biased scores and group scores, kept groups, chosen
 * experts. */
typedef struct router_scratch {
    float *s, *b, *gs; /* [E], [E], [G] */
    bool *keep, *taken; /* [G], [E] */
} router_scratch;

/* DeepSeek-V3 routing of one token: sigmoid scores, bias-corrected choice within the best
 * groups, weights from the unbiased scores. Ties go to the lower index. Writes the chosen
 * experts in ascending order with their weights. */
static void route(const dsacp_config *cfg, const float *logits, const float *bias, const router_scratch *rs,
                  int32_t *experts, float *weights)
{
    const int64_t E = cfg->n_routed_experts, G = cfg->n_group, per = E / G;
    const int64_t k = cfg->num_experts_per_tok;
    float *s = rs->s, *b = rs->b, *gs = rs->gs;
    bool *keep = rs->keep, *taken = rs->taken;
    memset(keep, 0, (size_t)G * sizeof *keep);
    memset(taken, 0, (size_t)E * sizeof *taken);
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

/* The buffers of one MoE layer over T rows, in the order moe_buffers takes them. */
static void moe_need(const dsacp_config *cfg, const dsacp_mlp_weights *w, int64_t T, bool aq, size_t *bytes)
{
    const int64_t D = cfg->hidden_size, E = cfg->n_routed_experts, G = cfg->n_group, k = cfg->num_experts_per_tok;
    dsacp_arena_need(bytes, T, E, sizeof(float));
    dsacp_arena_need(bytes, T, k, sizeof(int32_t));
    dsacp_arena_need(bytes, T, k, sizeof(float));
    dsacp_arena_need(bytes, T * k, D, sizeof(float)); /* T * k: bounded by the config's limits */
    dsacp_arena_need(bytes, T, D, sizeof(float));
    dsacp_arena_need(bytes, T, D, sizeof(float));
    dsacp_arena_need(bytes, T, 1, sizeof(int64_t));
    dsacp_arena_need(bytes, 2, E, sizeof(float));
    dsacp_arena_need(bytes, G, 1, sizeof(float));
    dsacp_arena_need(bytes, G, 1, sizeof(bool));
    dsacp_arena_need(bytes, E, 1, sizeof(bool));
    size_t tail = 0; /* the router's linear or one swiglu at a time, after the buffers above */
    linear_need(&tail, w->router, T, false);
    for (int64_t x = 0; x < E; x++) {
        size_t one = 0;
        swiglu_need(&one, w->egate[x], w->eup[x], w->edown[x], T, aq);
        tail = dsacp_arena_max(tail, one);
    }
    size_t shared = 0;
    if (w->gate) swiglu_need(&shared, w->gate, w->up, w->down, T, aq);
    tail = dsacp_arena_max(tail, shared);
    size_t lin;
    tail = dsacp_arena_max(tail, fused_bytes(cfg, w, T, aq, dsacp_kernel_threads(), &lin));
    if (*bytes == SIZE_MAX || tail == SIZE_MAX || !dsacp_add_ok(*bytes, tail, bytes)) *bytes = SIZE_MAX;
}

typedef struct moe_buffers {
    float *logits;  /* [T][E] router logits */
    int32_t *chosen; /* [T][k] experts of each row */
    float *cw;      /* [T][k] their weights */
    float *y;       /* [T][k][D] expert outputs */
    float *xe, *ye; /* [T][D] one expert's rows in and out */
    int64_t *rows;  /* [T] where they came from */
    router_scratch rs;
} moe_buffers;

static int moe_take(dsacp_arena *ws, const dsacp_config *cfg, int64_t T, moe_buffers *b)
{
    const int64_t D = cfg->hidden_size, E = cfg->n_routed_experts, G = cfg->n_group, k = cfg->num_experts_per_tok;
    b->logits = dsacp_arena_take(ws, T, E, sizeof(float), "MoE router logits");
    b->chosen = dsacp_arena_take(ws, T, k, sizeof(int32_t), "MoE chosen experts");
    b->cw = dsacp_arena_take(ws, T, k, sizeof(float), "MoE expert weights");
    b->y = dsacp_arena_take(ws, T * k, D, sizeof(float), "MoE expert outputs");
    b->xe = dsacp_arena_take(ws, T, D, sizeof(float), "MoE expert inputs");
    b->ye = dsacp_arena_take(ws, T, D, sizeof(float), "MoE expert rows");
    b->rows = dsacp_arena_take(ws, T, 1, sizeof(int64_t), "MoE routed rows");
    b->rs.s = dsacp_arena_take(ws, 2, E, sizeof(float), "MoE router scores");
    b->rs.b = b->rs.s ? b->rs.s + E : NULL;
    b->rs.gs = dsacp_arena_take(ws, G, 1, sizeof(float), "MoE group scores");
    b->rs.keep = dsacp_arena_take(ws, G, 1, sizeof(bool), "MoE kept groups");
    b->rs.taken = dsacp_arena_take(ws, E, 1, sizeof(bool), "MoE taken experts");
    return b->logits && b->chosen && b->cw && b->y && b->xe && b->ye && b->rows && b->rs.s && b->rs.gs && b->rs.keep &&
                   b->rs.taken
               ? DSACP_OK
               : DSACP_ENOMEM;
}

/* The routed rows (b->chosen) and the shared expert through one region of nth threads: b->y gets
 * every routed row's output and out the shared expert's (zeros without one), as moe_forward's
 * loop gives them. *ran false (nothing taken or computed): the path does not apply or the arena
 * lacks its room, and the loop runs. */
static int moe_fused(const dsacp_config *cfg, dsacp_arena *ws, const dsacp_mlp_weights *w, const float *x, int64_t T,
                     const moe_buffers *b, float *out, bool aq, int nth, bool *ran)
{
    size_t lin = 0;
    const size_t need = fused_bytes(cfg, w, T, aq, nth, &lin);
    *ran = need > 0 && need != SIZE_MAX && ws->cap - ws->used >= need;
    if (!*ran) return DSACP_OK;
    const int64_t D = cfg->hidden_size, E = cfg->n_routed_experts, k = cfg->num_experts_per_tok, R = T * k;
    const int64_t Ir = w->egate[0]->rows, Is = w->gate ? w->gate->rows : 0;
    const size_t mark = dsacp_arena_mark(ws);
    moe_slot *slot = dsacp_arena_take(ws, R + 1, 1, sizeof *slot, "MoE region slots");
    int64_t *rows = dsacp_arena_take(ws, R, 1, sizeof *rows, "MoE region rows");
    float *xin = dsacp_arena_take(ws, R, D, sizeof(float), "MoE region inputs");
    float *yout = dsacp_arena_take(ws, R, D, sizeof(float), "MoE region outputs");
    float *gr = dsacp_arena_take(ws, R, Ir, sizeof(float), "MoE region gate rows");
    float *gs = dsacp_arena_take(ws, T, Is, sizeof(float), "MoE region shared gate rows");
    float *ur = dsacp_arena_take(ws, R, Ir, sizeof(float), "MoE region up rows");
    float *us = dsacp_arena_take(ws, T, Is, sizeof(float), "MoE region shared up rows");
    unsigned char *scratch = dsacp_arena_take(ws, nth, (int64_t)lin, 1, "MoE region scratch");
    if (!slot || !rows || !xin || !yout || !gr || !gs || !ur || !us || !scratch) return DSACP_ENOMEM;
    int64_t ns = 0, r = 0;
    for (int64_t e = 0; e < E; e++) { /* ascending experts, each its rows in token order */
        const int64_t r0 = r;
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < k; j++)
                if (b->chosen[t * k + j] == e) {
                    memcpy(xin + r * D, x + t * D, (size_t)D * sizeof(float));
                    rows[r++] = t * k + j;
                }
        if (r > r0)
            slot[ns++] = (moe_slot){w->egate[e], w->eup[e], w->edown[e], xin + r0 * D, r - r0,
                                    gr + r0 * Ir, ur + r0 * Ir, yout + r0 * D};
    }
    if (w->gate) slot[ns++] = (moe_slot){w->gate, w->up, w->down, x, T, gs, us, out};
    moe_region m = {slot, ns, D, aq, scratch, lin, DSACP_OK};
    const int rc = region_run(&m, nth);
    for (int64_t i = 0; i < r && !rc; i++) memcpy(b->y + rows[i] * D, yout + i * D, (size_t)D * sizeof(float));
    if (!rc && !w->gate) memset(out, 0, (size_t)(T * D) * sizeof(float));
    dsacp_arena_rewind(ws, mark);
    return rc;
}

static int moe_forward(const dsacp_engine *e, dsacp_arena *ws, const dsacp_mlp_weights *w, const float *x, int64_t T,
                       float *out, bool aq)
{
    const dsacp_config *cfg = e->cfg;
    const int64_t D = cfg->hidden_size, E = cfg->n_routed_experts, k = cfg->num_experts_per_tok;
    const size_t mark = dsacp_arena_mark(ws);
    moe_buffers b;
    int rc = moe_take(ws, cfg, T, &b);
    if (!rc) rc = linear(ws, w->router, x, T, D, b.logits, E, false);
    if (!rc)
        for (int64_t t = 0; t < T; t++) route(cfg, b.logits + t * E, w->bias, &b.rs, b.chosen + t * k, b.cw + t * k);
    bool fused = false;
    if (!rc) rc = moe_fused(cfg, ws, w, x, T, &b, out, aq, dsacp_kernel_threads(), &fused);
    /* Each expert runs on the rows routed to it; kernels are row-invariant, so the grouping does
     * not change any token's result. */
    for (int64_t x_ = 0; x_ < E && !rc && !fused; x_++) {
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < k; j++)
                if (b.chosen[t * k + j] == x_) {
                    memcpy(b.xe + n * D, x + t * D, (size_t)D * sizeof(float));
                    b.rows[n++] = t * k + j;
                }
        if (!n) continue;
        rc = swiglu(ws, w->egate[x_], w->eup[x_], w->edown[x_], b.xe, n, D, b.ye, aq);
        for (int64_t r = 0; r < n && !rc; r++) memcpy(b.y + b.rows[r] * D, b.ye + r * D, (size_t)D * sizeof(float));
    }
    if (!rc && !fused && w->gate) rc = swiglu(ws, w->gate, w->up, w->down, x, T, D, out, aq);
    else if (!rc && !fused) memset(out, 0, (size_t)(T * D) * sizeof(float));
    if (!rc)
        for (int64_t t = 0; t < T; t++) {
            /* Routed experts in ascending expert order, then the shared expert. */
            float *o = out + t * D;
            for (int64_t i = 0; i < D; i++) {
                float acc = 0;
                for (int64_t j = 0; j < k; j++) acc += b.cw[t * k + j] * b.y[(t * k + j) * D + i];
                o[i] = acc + o[i];
            }
        }
    dsacp_arena_rewind(ws, mark);
    return rc;
}

size_t dsacp_engine_model_workspace(const dsacp_engine *e, int64_t T)
{
    const bool aq = e->opt.numerics == DSACP_NUMERICS_DEPLOYED; /* as the step calls dsacp_engine_mlp */
    size_t most = 0;
    if (e->mtp_eh) { /* the MTP input: [T][2D] concatenation, then eh_proj's scratch */
        size_t one = 0;
        dsacp_arena_need(&one, T, 2 * e->cfg->hidden_size, sizeof(float));
        linear_need(&one, e->mtp_eh, T, aq);
        most = one;
    }
    for (int64_t l = 0; l < e->NL; l++) {
        size_t one = 0;
        const dsacp_mlp_weights *w = &e->mlp[l];
        if (w->moe) moe_need(e->cfg, w, T, aq, &one);
        else swiglu_need(&one, w->gate, w->up, w->down, T, aq);
        most = dsacp_arena_max(most, one);
    }
    return most;
}

int dsacp_engine_mlp(const dsacp_engine *e, dsacp_arena *ws, int64_t l, const float *x, int64_t n, float *out,
                     bool act_quant)
{
    const dsacp_mlp_weights *mw = &e->mlp[l];
    return mw->moe ? moe_forward(e, ws, mw, x, n, out, act_quant)
                   : swiglu(ws, mw->gate, mw->up, mw->down, x, n, e->cfg->hidden_size, out, act_quant);
}

/* ---- lm_head ---- */

/* The first non-finite logit, reported instead of being sampled as token 0. */
static int check_logits(const float *logits, int64_t T, int64_t V)
{
    for (int64_t i = 0; i < T * V; i++)
        if (!isfinite(logits[i]))
            return dsacp_error(DSACP_ERANGE, "non-finite logit (%g) for token %lld of the step, vocabulary id "
                               "%lld: the weights or activations overflowed (dsacp_model_scan_finite finds non-finite weights)",
                               (double)logits[i], (long long)(i / V), (long long)(i % V));
    return DSACP_OK;
}

size_t dsacp_engine_head_workspace(const dsacp_engine *e, int64_t T)
{
    size_t bytes = 0, mtp = 0;
    linear_need(&bytes, e->head, T, false);
    if (e->mtp_head) linear_need(&mtp, e->mtp_head, T, false);
    return dsacp_arena_max(bytes, mtp);
}

int dsacp_engine_head(const dsacp_engine *e, dsacp_arena *ws, const float *x, int64_t n, float *logits, bool mtp)
{
    const int64_t D = e->cfg->hidden_size, V = e->cfg->vocab_size;
    int rc = linear(ws, mtp ? e->mtp_head : e->head, x, n, D, logits, V, false);
    if (!rc) rc = check_logits(logits, n, V);
    return rc;
}

/* ---- the MTP layer's input ---- */

int dsacp_engine_mtp_input(const dsacp_engine *e, dsacp_arena *ws, const int32_t *tokens, const int64_t *pos,
                           const float *hidden, int64_t n, float *out, bool aq)
{
    const int64_t D = e->cfg->hidden_size;
    const double eps = e->cfg->rms_norm_eps;
    const size_t mark = dsacp_arena_mark(ws);
    float *cat = dsacp_arena_take(ws, n > 0 ? n : 1, 2 * D, sizeof(float), "the MTP layer's input rows");
    int rc = cat ? DSACP_OK : DSACP_ENOMEM;
    for (int64_t i = 0; i < n && !rc; i++) {
        float *c = cat + i * 2 * D;
        /* [enorm(embed(token)); hnorm(hidden)]: the embedding half first; position 0's embedding
         * is zeroed, as vLLM's MTP layer does (docs/mtp.md), and RMSNorm keeps a zero row zero. */
        if (pos[i] == 0) memset(c + D, 0, (size_t)D * sizeof(float));
        else dsacp_weight_row_f32(e->mtp_embed, tokens[i], c + D);
        dsacp_rmsnorm(c, c + D, e->mtp_enorm, D, eps);
        dsacp_rmsnorm(c + D, hidden + i * D, e->mtp_hnorm, D, eps);
    }
    if (!rc) rc = linear(ws, e->mtp_eh, cat, n, 2 * D, out, D, aq);
    dsacp_arena_rewind(ws, mark);
    return rc;
}

/*
 * mla_bf16_model.c -- the bottom of deployed mode's sparse MLA (mla_bf16.h): the definition
 * (dsacp_sparse_mla_bf16_model), the exp it uses, the rounding of keys, and the generic phases
 * (the scalar ISA's phase set: any bf16-dot kernel per score, the values' fmaf chain), which the
 * SIMD phases (mla_bf16_x86.c) call for the forms they do not run and for their NaN results.
 * Calls bf16dot*.c and numerics.
 */
#include "kernels/mla_bf16.h"
#include "core/core.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "mla_bf16_model.c must not be built with -ffast-math (the definition relies on IEEE fmaf)"
#endif

enum { LANES = 16, KCHUNK = 64 };
static const uint32_t CANON_NAN = 0x7FC00000u;

/* ---- the exp ---- */

static float pow2i(float k) { return dsacp_f32_of_bits((uint32_t)((int32_t)k + 127) << 23); }

float dsacp_exp_model(float x)
{
    if (x != x) return dsacp_f32_of_bits(dsacp_f32_bits(x) | 0x00400000u);
    if (x < -88.0f) return 0.0f;
    if (x > 89.0f) x = 89.0f;
    const float t = x * 1.44269504088896341f;
    const float n = rintf(t);
    float r = fmaf(-n, 0.693359375f, x);
    r = fmaf(-n, -2.12194440e-4f, r);
    float p = 1.9875691500E-4f;
    p = fmaf(p, r, 1.3981999507E-3f);
    p = fmaf(p, r, 8.3334519073E-3f);
    p = fmaf(p, r, 4.1665795894E-2f);
    p = fmaf(p, r, 1.6666665459E-1f);
    p = fmaf(p, r, 5.0000001201E-1f);
    const float r2 = r * r;
    p = fmaf(p, r2, r);
    p = p + 1.0f;
    const float half = n * 0.5f;
    const float n1 = floorf(half);
    const float n2 = n - n1;
    const float y1 = p * pow2i(n1);
    const float y = y1 * pow2i(n2);
    return y < 0x1p-126f ? 0.0f : y;
}

/* ---- rounding and floors ---- */

/* The bf16 half of an f32 holding a bf16 value. */
static uint16_t hi16(float x) { return (uint16_t)(dsacp_f32_bits(x) >> 16); }

int dsacp_mla16_check_keys(const float *kv, int64_t rows, int64_t D, bool *same)
{
    int fl = 256;
    bool eq = true;
    for (int64_t i = 0; i < rows * D; i++) {
        const float r = dsacp_mla16_r16(kv[i]);
        eq = eq && dsacp_f32_bits(r) == dsacp_f32_bits(kv[i]);
        const int e = dsacp_mla16_expo(r);
        fl = e < fl ? e : fl;
    }
    *same = eq;
    return fl;
}

void dsacp_mla16_round_keys(const float *kv, int64_t rows, int64_t D, float *out, int64_t Dp)
{
    for (int64_t s = 0; s < rows; s++) {
        for (int64_t d = 0; d < D; d++) out[s * Dp + d] = dsacp_mla16_r16(kv[s * D + d]);
        for (int64_t d = D; d < Dp; d++) out[s * Dp + d] = 0.0f;
    }
}

/* ---- the generic phases ---- */

static int64_t scr_half(const dsacp_mla16_job *j) { return j->Dp > j->np ? j->Dp : j->np; }

float dsacp_mla16_score(const dsacp_mla16_job *j, dsacp_bf16dot_fn dot, const dsacp_mla16_group *g, int64_t hh,
                        int64_t s)
{
    uint16_t *qb = (uint16_t *)g->scr, *kb = qb + scr_half(j);
    const float *k = dsacp_mla16_key(j, s);
    for (int64_t d = 0; d < j->Dp; d++) {
        qb[d] = hi16(j->Qt[dsacp_mla16_qrow(j, d) * j->Hp + g->h0 + hh]);
        kb[d] = hi16(k[d]);
    }
    const float v = dot(qb, kb, j->Dp / 2);
    return v * j->scale;
}

/* The 16 lane sums by the fixed tree (IEEE adds). */
static float tree16(float *l)
{
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) l[i] = l[i] + l[i + w];
    return l[0];
}

float dsacp_mla16_pv(const float *p, const float *v, int64_t np)
{
    float lanes[LANES] = {0};
    const int64_t J = np / 2, JP = (J + LANES - 1) / LANES * LANES;
    for (int64_t q = 0; q < JP; q++) {
        const float p0 = q < J ? p[2 * q] : 0.0f, p1 = q < J ? p[2 * q + 1] : 0.0f;
        const float v0 = q < J ? v[2 * q] : 0.0f, v1 = q < J ? v[2 * q + 1] : 0.0f;
        float acc = lanes[q % LANES];
        acc = fmaf(p1, v1, acc);
        lanes[q % LANES] = fmaf(p0, v0, acc);
    }
    return tree16(lanes);
}

float dsacp_mla16_value(const dsacp_mla16_job *j, const dsacp_mla16_group *g, int64_t hh, int64_t d)
{
    float *p = g->scr, *v = g->scr + scr_half(j);
    for (int64_t s = 0; s < j->np; s++) {
        p[s] = g->St[dsacp_mla16_row(j, s) * j->width + hh];
        v[s] = dsacp_mla16_key(j, s)[d];
    }
    return dsacp_mla16_pv(p, v, j->np);
}

void dsacp_mla16_scores_generic(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    for (int64_t hh = 0; hh < g->cnt; hh++)
        for (int64_t s = 0; s < j->n; s++)
            g->St[dsacp_mla16_row(j, s) * j->width + hh] = dsacp_mla16_score(j, j->dot, g, hh, s);
}

void dsacp_mla16_softmax_generic(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    const int64_t W = j->width;
    for (int64_t hh = 0; hh < g->cnt; hh++) {
        float *col = g->St + hh, m = -INFINITY, lanes[LANES] = {0};
        for (int64_t s = 0; s < j->n; s++)
            if (col[dsacp_mla16_row(j, s) * W] > m) m = col[dsacp_mla16_row(j, s) * W];
        for (int64_t s = 0; s < j->n; s++) {
            float *at = col + dsacp_mla16_row(j, s) * W;
            const float p = dsacp_exp_model(*at - m);
            lanes[s % LANES] = lanes[s % LANES] + p;
            *at = p;
        }
        if (j->np > j->n) col[dsacp_mla16_row(j, j->n) * W] = 0.0f;
        g->m[hh] = m;
        g->l[hh] = tree16(lanes);
    }
}

void dsacp_mla16_values_generic(const dsacp_mla16_job *j, const dsacp_mla16_group *g)
{
    for (int64_t hh = 0; hh < g->cnt && g->h0 + hh < j->H; hh++) {
        if (isnan(g->l[hh])) continue;
        float *oh = j->o + (g->h0 + hh) * j->dc;
        for (int64_t d = 0; d < j->dc; d++) oh[d] = dsacp_mla16_value(j, g, hh, d) / g->l[hh];
    }
}

static void scores_scalar(const dsacp_mla16_job *j, int form, const dsacp_mla16_group *g)
{
    (void)form;
    dsacp_mla16_scores_generic(j, g);
}

void dsacp_mla16_pack_values(const dsacp_mla16_job *j, float *Vp, int64_t s0, int64_t s1)
{
    enum { T = DSACP_MLA16_TILE };
    const int64_t ct = (j->dc + T - 1) / T, full = j->dc / T, rest = j->dc - full * T;
    for (int64_t s = s0; s < s1; s++) { /* the keys in order (a sequential read), each spread over the tiles */
        const int64_t q = s >> 1, l = q % LANES, k = q / LANES;
        const float *row = s < j->n ? j->K + s * j->ldk : j->zrow;
        float *out = Vp + ((l * j->kq + k) * 2 + (s & 1)) * T;
        const int64_t step = LANES * j->kq * 2 * T;
        for (int64_t c = 0; c < full; c++, out += step, row += T) memcpy(out, row, T * sizeof(float));
        if (ct > full) {
            memset(out, 0, T * sizeof(float));
            memcpy(out, row, (size_t)rest * sizeof(float));
        }
    }
}

const dsacp_mla16_isa dsacp_mla16_scalar = {1, 16, false, dsacp_mla16_check_keys, dsacp_mla16_round_keys, scores_scalar,
                                             dsacp_mla16_softmax_generic, dsacp_mla16_values_generic};

/* ---- the definition, plainly ---- */

/* An empty selection, or a head whose softmax sum is NaN (o and lse the canonical NaN). */
void dsacp_mla16_head_nan(float *oh, int64_t dc, float *lse)
{
    for (int64_t d = 0; d < dc; d++) oh[d] = dsacp_f32_of_bits(CANON_NAN);
    *lse = dsacp_f32_of_bits(CANON_NAN);
}

/* Head h of the definition over the rounded keys kb [np][Dp] (scratch: S [np], qb [Dp], col
 * [np]). */
static void model_head(const float *qh, const uint16_t *kb, int64_t n, int64_t D, int64_t dc, float scale, float *S,
                       uint16_t *qb, float *col, float *oh, float *lse)
{
    const int64_t Dp = D + (D & 1), np = n + (n & 1);
    for (int64_t d = 0; d < Dp; d++) qb[d] = d < D ? dsacp_f32_to_bf16(qh[d]) : 0;
    float m = -INFINITY, lanes[LANES] = {0};
    for (int64_t s = 0; s < n; s++) {
        const float v = dsacp_bf16dot_scalar(qb, kb + s * Dp, Dp / 2);
        S[s] = v * scale;
        if (S[s] > m) m = S[s];
    }
    for (int64_t s = 0; s < np; s++) { /* S becomes p */
        S[s] = s < n ? dsacp_exp_model(S[s] - m) : 0.0f;
        if (s < n) lanes[s % LANES] = lanes[s % LANES] + S[s];
    }
    const float l = tree16(lanes);
    if (isnan(l)) {
        dsacp_mla16_head_nan(oh, dc, lse);
        return;
    }
    for (int64_t d = 0; d < dc; d++) {
        for (int64_t s = 0; s < np; s++) col[s] = dsacp_bf16_to_f32(kb[s * Dp + d]);
        const float v = dsacp_mla16_pv(S, col, np);
        oh[d] = v / l;
    }
    *lse = m + logf(l);
}

int dsacp_sparse_mla_bf16_model(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                                float scale, float *o, float *lse)
{
    if (n == 0) {
        dsacp_mla_empty(H, dc, o, lse);
        return DSACP_OK;
    }
    const int64_t D = dc + dr, Dp = D + (D & 1), np = n + (n & 1);
    uint16_t *kb = dsacp_calloc((size_t)(np * Dp + Dp), sizeof *kb);
    float *S = dsacp_alloc((size_t)(2 * np) * sizeof *S);
    if (!kb || !S) {
        dsacp_free(kb), dsacp_free(S);
        return dsacp_error(DSACP_ENOMEM, "sparse MLA (bf16 model): out of memory for %lld keys", (long long)n);
    }
    for (int64_t s = 0; s < n; s++)
        for (int64_t d = 0; d < D; d++) kb[s * Dp + d] = dsacp_f32_to_bf16(kv[s * D + d]);
    uint16_t *qb = kb + np * Dp;
    for (int64_t h = 0; h < H; h++) model_head(q + h * D, kb, n, D, dc, scale, S, qb, S + np, o + h * dc, lse + h);
    dsacp_free(kb), dsacp_free(S);
    return DSACP_OK;
}

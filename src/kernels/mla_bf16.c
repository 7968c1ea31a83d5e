/*
 * mla_bf16.c -- the deployed-mode sparse MLA (kernels.h, dsacp_sparse_mla_bf16_ws; mla_bf16.h):
 * the definition, the exp it uses, the workspace, and the driver that rounds the operands once,
 * splits the head groups over the threads and runs each group's three phases (scores, softmax,
 * values), the scores in the fastest form whose bits are the definition's for the operands at
 * hand. Also the generic phases (the scalar ISA's path: any bf16-dot kernel per score, the
 * values' fmaf chain). Calls
 * mla_bf16_x86.c, gemm_bf16.c (the measured choice of form), bf16dot*.c, kernels_threads.c and
 * dispatch.c (the active ISA; nothing below this file calls it).
 */
#include "kernels/mla_bf16.h"
#include "core/core.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "mla_bf16.c must not be built with -ffast-math (the definition relies on IEEE fmaf)"
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

/* x rounded to bf16, as the f32 holding it. */
static float r16(float x) { return dsacp_f32_of_bits((uint32_t)dsacp_f32_to_bf16(x) << 16); }
/* The bf16 half of an f32 holding a bf16 value. */
static uint16_t hi16(float x) { return (uint16_t)(dsacp_f32_bits(x) >> 16); }
/* The exponent field of a nonzero value, 256 for +-0 (dsacp_bf16_exp_floor's rule). */
static int expo(float x)
{
    const uint32_t u = dsacp_f32_bits(x);
    return (u & 0x7FFFFFFFu) ? (int)(u >> 23 & 0xFF) : 256;
}

int dsacp_mla16_check_keys(const float *kv, int64_t rows, int64_t D, bool *same)
{
    int fl = 256;
    bool eq = true;
    for (int64_t i = 0; i < rows * D; i++) {
        const float r = r16(kv[i]);
        eq = eq && dsacp_f32_bits(r) == dsacp_f32_bits(kv[i]);
        const int e = expo(r);
        fl = e < fl ? e : fl;
    }
    *same = eq;
    return fl;
}

void dsacp_mla16_round_keys(const float *kv, int64_t rows, int64_t D, float *out, int64_t Dp)
{
    for (int64_t s = 0; s < rows; s++) {
        for (int64_t d = 0; d < D; d++) out[s * Dp + d] = r16(kv[s * D + d]);
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

static const dsacp_mla16_isa mla16_scalar = {1, 16, false, dsacp_mla16_check_keys, dsacp_mla16_round_keys, scores_scalar,
                                             dsacp_mla16_softmax_generic, dsacp_mla16_values_generic};

/* ---- the definition, plainly ---- */

/* An empty selection, or a head whose softmax sum is NaN (o and lse the canonical NaN). */
static void head_nan(float *oh, int64_t dc, float *lse)
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
        head_nan(oh, dc, lse);
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

/* ---- the workspace ---- */

/* The phase set of an ISA this CPU runs. */
static const dsacp_mla16_isa *isa_set(dsacp_isa isa)
{
#if defined(__x86_64__)
    if (isa == DSACP_ISA_AVX512) return &dsacp_mla16_avx512;
    if (isa == DSACP_ISA_AVX2) return &dsacp_mla16_avx2;
#endif
    (void)isa;
    return &mla16_scalar;
}

/* A call's shape under one phase set, and its scratch's parts in the order they are taken. */
typedef struct shape {
    int64_t n, np, D, Dp, H, Hp, G, W, nch, kq, kd, ct;
    size_t part[7], group[5];
} shape;

static shape shape_of(const dsacp_mla16_isa *is, int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    shape s = {.n = n, .np = n + (n & 1), .D = dc + dr, .H = H, .W = is->width};
    s.Dp = s.D + (s.D & 1);
    s.Hp = (H + is->lanes - 1) / is->lanes * is->lanes;
    s.G = (s.Hp + s.W - 1) / s.W;
    s.nch = (n + KCHUNK - 1) / KCHUNK;
    s.kq = (s.np / 2 + LANES - 1) / LANES;
    s.ct = is->packs_values ? (dc + DSACP_MLA16_TILE - 1) / DSACP_MLA16_TILE : 0;
    const size_t f = sizeof(float), np = (size_t)(s.np > 0 ? s.np : 1), Dp = (size_t)s.Dp, W = (size_t)s.W;
    s.kd = (s.Dp / 2 + LANES - 1) / LANES;
    s.part[0] = dsacp_ws_mul(dsacp_ws_mul((size_t)(2 * LANES * s.kd), (size_t)s.Hp), f); /* Qt */
    s.part[1] = dsacp_ws_mul(Dp, f);                                        /* zrow */
    s.part[2] = dsacp_ws_mul((size_t)s.Hp, sizeof(int));                    /* the heads' floors */
    s.part[3] = dsacp_ws_mul((size_t)(s.nch > 0 ? s.nch : 1), 2 * sizeof(int)); /* the chunks' floors */
    s.part[4] = dsacp_ws_mul(dsacp_ws_mul(np, Dp), f);                      /* the rounded keys */
    s.group[0] = dsacp_ws_mul(dsacp_ws_mul((size_t)(2 * LANES * (s.kq > 0 ? s.kq : 1)), W), f); /* St */
    s.group[1] = dsacp_ws_mul((size_t)(LANES * DSACP_MLA16_TILE) * W, f);   /* the lanes' tiles */
    s.group[2] = s.group[3] = dsacp_ws_mul(W, f);                           /* m, l */
    s.group[4] = dsacp_ws_mul(2 * (Dp > np ? Dp : np), f);                  /* scr */
    size_t per = 0;
    for (int i = 0; i < 5; i++) per = dsacp_ws_add(per, dsacp_ws_round(s.group[i]));
    s.part[5] = dsacp_ws_mul(per, (size_t)(s.G > 0 ? s.G : 1));
    s.part[6] = dsacp_ws_mul(dsacp_ws_mul((size_t)(s.ct * LANES * 2 * DSACP_MLA16_TILE), (size_t)s.kq), f); /* Vp */
    return s;
}

static size_t shape_bytes(const shape *s)
{
    size_t b = DSACP_WS_ALIGN;
    for (int i = 0; i < 7; i++) b = dsacp_ws_add(b, dsacp_ws_round(s->part[i]));
    return b;
}

size_t dsacp_sparse_mla_bf16_work_bytes(int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    size_t most = 0;
    for (int i = DSACP_ISA_SCALAR; i <= (int)dsacp_isa_best(); i++) {
        const shape s = shape_of(isa_set((dsacp_isa)i), n, H, dc, dr);
        const size_t b = shape_bytes(&s);
        most = b > most ? b : most;
    }
    return most;
}

/* ---- the driver ---- */

typedef struct call {
    dsacp_mla16_job j;
    const dsacp_mla16_isa *is;
    const float *kv;
    float *Kr, *Vp;
    int *qfloor, *kfl; /* kfl: per chunk of keys, its floor and whether rounding kept it */
    unsigned char *groups;
    size_t per;
    int64_t D, nch;
    int kfloor, prefer, hw;
} call;

static void check_chunk(void *ctx, int64_t c)
{
    call *a = ctx;
    const int64_t s0 = c * KCHUNK, rows = a->j.n - s0 < KCHUNK ? a->j.n - s0 : KCHUNK;
    bool same;
    a->kfl[2 * c] = a->is->check_keys(a->kv + s0 * a->D, rows, a->D, &same);
    a->kfl[2 * c + 1] = same;
}

static void round_chunk(void *ctx, int64_t c)
{
    call *a = ctx;
    const int64_t s0 = c * KCHUNK, rows = a->j.n - s0 < KCHUNK ? a->j.n - s0 : KCHUNK;
    a->is->round_keys(a->kv + s0 * a->D, rows, a->D, a->Kr + s0 * a->j.Dp, a->j.Dp);
}

static void pack_chunk(void *ctx, int64_t c)
{
    const call *a = ctx;
    const int64_t end = 2 * LANES * a->j.kq, s1 = (c + 1) * KCHUNK < end ? (c + 1) * KCHUNK : end;
    dsacp_mla16_pack_values(&a->j, a->Vp, c * KCHUNK, s1);
}

/* The keys: their floor, and K = kv itself when rounding keeps every value (the latents of a
 * bf16 or fp8_ds_mla cache) and D is even, else the rounded copy. */
static void prepare_keys(call *a)
{
    const bool big = (double)a->j.n * (double)a->D >= 65536.0;
    dsacp_parallel_for(a->nch, big, check_chunk, a);
    bool same = a->D == a->j.Dp;
    a->kfloor = 256;
    for (int64_t c = 0; c < a->nch; c++) {
        a->kfloor = a->kfl[2 * c] < a->kfloor ? a->kfl[2 * c] : a->kfloor;
        same = same && a->kfl[2 * c + 1];
    }
    if (same) {
        a->j.K = a->kv, a->j.ldk = a->D;
        return;
    }
    dsacp_parallel_for(a->nch, big, round_chunk, a);
    a->j.K = a->Kr, a->j.ldk = a->j.Dp;
}

/* Qt and the heads' floors. */
static void prepare_query(call *a, const float *q)
{
    const dsacp_mla16_job *j = &a->j;
    for (int64_t h = 0; h < j->Hp; h++) a->qfloor[h] = 256;
    float *Qt = (float *)j->Qt;
    for (int64_t d = 0; d < 2 * LANES * j->kd; d++)
        for (int64_t h = 0; h < j->Hp; h++) {
            const float v = h < j->H && d < a->D ? r16(q[h * a->D + d]) : 0.0f;
            Qt[dsacp_mla16_qrow(j, d) * j->Hp + h] = v;
            const int e = expo(v);
            a->qfloor[h] = e < a->qfloor[h] ? e : a->qfloor[h];
        }
}

/* The form of the scores whose query has the floor fa (and the keys' floor). */
static int form_of(const call *a, int fa)
{
    const bool plain = dsacp_bf16dot_plain_ok(fa, a->kfloor);
    if (a->is->lanes == 1) return DSACP_MLA16_GENERIC;
    if (a->is->lanes == 8) return plain ? DSACP_MLA16_AVX2 : DSACP_MLA16_GENERIC;
    const bool dp = a->hw == DSACP_BF16DOT_HW_ALL || (a->hw == DSACP_BF16DOT_HW_PLAIN && plain);
    if (dp && a->prefer == DSACP_BF16GEMM_DPBF16) return DSACP_MLA16_DPBF16;
    if (plain) return DSACP_MLA16_FMA;
    return dp ? DSACP_MLA16_DPBF16 : DSACP_MLA16_GENERIC;
}

/* Group gi: scores, softmax, values, then lse (and the canonical NaN of a head whose sum is). */
static void group_task(void *ctx, int64_t gi)
{
    const call *a = ctx;
    const dsacp_mla16_job *j = &a->j;
    dsacp_ws w = dsacp_ws_open(a->groups + (size_t)gi * a->per, a->per);
    const shape s = shape_of(a->is, j->n, j->H, j->dc, a->D - j->dc);
    dsacp_mla16_group g = {.h0 = gi * j->width};
    g.cnt = j->Hp - g.h0 < j->width ? j->Hp - g.h0 : j->width;
    g.St = dsacp_ws_take(&w, s.group[0]), g.tile = dsacp_ws_take(&w, s.group[1]);
    g.m = dsacp_ws_take(&w, s.group[2]), g.l = dsacp_ws_take(&w, s.group[3]);
    g.scr = dsacp_ws_take(&w, s.group[4]);
    int qf = 256;
    for (int64_t hh = 0; hh < g.cnt; hh++) qf = a->qfloor[g.h0 + hh] < qf ? a->qfloor[g.h0 + hh] : qf;
    a->is->scores(j, form_of(a, qf), &g);
    a->is->softmax(j, &g);
    a->is->values(j, &g);
    for (int64_t hh = 0; hh < g.cnt && g.h0 + hh < j->H; hh++) {
        const int64_t h = g.h0 + hh;
        if (isnan(g.l[hh])) head_nan(j->o + h * j->dc, j->dc, j->lse + h);
        else j->lse[h] = g.m[hh] + logf(g.l[hh]);
    }
}

static int run(dsacp_isa isa, int prefer, int hw_cap, const float *q, const float *kv, int64_t n, int64_t H,
               int64_t dc, int64_t dr, float scale, float *o, float *lse, void *work, size_t work_bytes)
{
    if (n < 0 || H < 0 || dc < 0 || dr < 0)
        return dsacp_error(DSACP_EINVAL, "sparse MLA (bf16): negative n, H, dc or dr");
    if (isa > dsacp_isa_best())
        return dsacp_error(DSACP_EUNSUPPORTED, "sparse MLA (bf16): this CPU lacks %s", dsacp_isa_name(isa));
    const size_t need = dsacp_sparse_mla_bf16_work_bytes(n, H, dc, dr);
    if (!work || work_bytes < need)
        return dsacp_error(DSACP_EINVAL, "sparse MLA (bf16): workspace of %zu bytes, %zu needed", work_bytes, need);
    if (n == 0 || H == 0) {
        dsacp_mla_empty(H, dc, o, lse);
        return DSACP_OK;
    }
    const dsacp_mla16_isa *is = isa_set(isa);
    const shape s = shape_of(is, n, H, dc, dr);
    dsacp_ws w = dsacp_ws_open(work, work_bytes);
    call a = {.is = is, .kv = kv, .D = s.D, .nch = s.nch};
    a.j = (dsacp_mla16_job){.n = n, .np = s.np, .H = H, .Hp = s.Hp, .dc = dc, .Dp = s.Dp, .width = s.W, .kq = s.kq, .kd = s.kd,
                            .scale = scale, .o = o, .lse = lse};
    a.j.Qt = dsacp_ws_take(&w, s.part[0]);
    float *zrow = dsacp_ws_take(&w, s.part[1]);
    a.qfloor = dsacp_ws_take(&w, s.part[2]), a.kfl = dsacp_ws_take(&w, s.part[3]);
    a.Kr = dsacp_ws_take(&w, s.part[4]), a.groups = dsacp_ws_take(&w, s.part[5]);
    a.Vp = dsacp_ws_take(&w, s.part[6]);
    a.per = s.part[5] / (size_t)s.G;
    memset(zrow, 0, s.part[1]);
    a.j.zrow = zrow;
    a.j.dot = isa == DSACP_ISA_SCALAR ? dsacp_bf16dot_scalar : dsacp_bf16dot_kernel(DSACP_ISA_AVX2);
    const int hw = dsacp_bf16dot_hw_level();
    a.hw = hw < hw_cap ? hw : hw_cap;
    a.prefer = prefer != DSACP_BF16GEMM_AUTO ? prefer : a.hw != DSACP_BF16DOT_HW_NONE ? dsacp_bf16gemm_form()
                                                                                      : DSACP_BF16GEMM_FMA;
    prepare_query(&a, q);
    prepare_keys(&a);
    if (s.ct > 0) {
        dsacp_parallel_for((2 * LANES * s.kq + KCHUNK - 1) / KCHUNK, (double)n * (double)dc >= 65536.0, pack_chunk, &a);
        a.j.Vp = a.Vp;
    }
    const double flops = (double)n * (double)H * (double)(s.D + dc);
    dsacp_parallel_for(s.G, flops >= 1e6, group_task, &a);
    return DSACP_OK;
}

int dsacp_sparse_mla_bf16_as(dsacp_isa isa, int prefer, int hw_cap, const float *q, const float *kv, int64_t n,
                             int64_t H, int64_t dc, int64_t dr, float scale, float *o, float *lse, void *work,
                             size_t work_bytes)
{
    return run(isa, prefer, hw_cap, q, kv, n, H, dc, dr, scale, o, lse, work, work_bytes);
}

int dsacp_sparse_mla_bf16_ws(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                             float scale, float *o, float *lse, void *work, size_t work_bytes)
{
    return run(dsacp_isa_active(), DSACP_BF16GEMM_AUTO, DSACP_BF16DOT_HW_ALL, q, kv, n, H, dc, dr, scale, o, lse,
               work, work_bytes);
}

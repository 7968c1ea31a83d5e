/*
 * mla_bf16.c -- the deployed-mode sparse MLA (kernels.h, dsacp_sparse_mla_bf16_ws; mla_bf16.h):
 * the workspace and the driver that rounds the operands once, splits the head groups over the
 * threads and runs each group's three phases (scores, softmax, values), the scores in the fastest
 * form whose bits are the definition's (mla_bf16_model.c) for the operands at hand. Calls
 * mla_bf16_x86.c, mla_bf16_model.c, gemm_bf16.c (the measured choice of form), bf16dot*.c,
 * kernels_threads.c and isa.c (the active ISA).
 */
#include "kernels/mla_bf16.h"
#include "core/core.h"
#include "numerics/numerics.h"

#include <math.h>
#include <string.h>

enum { LANES = 16, KCHUNK = 64 };

/* ---- the workspace ---- */

/* The phase set of an ISA this CPU runs. */
static const dsacp_mla16_isa *isa_set(dsacp_isa isa)
{
#if defined(__x86_64__)
    if (isa == DSACP_ISA_AVX512) return &dsacp_mla16_avx512;
    if (isa == DSACP_ISA_AVX2) return &dsacp_mla16_avx2;
#endif
    (void)isa;
    return &dsacp_mla16_scalar;
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
            const float v = h < j->H && d < a->D ? dsacp_mla16_r16(q[h * a->D + d]) : 0.0f;
            Qt[dsacp_mla16_qrow(j, d) * j->Hp + h] = v;
            const int e = dsacp_mla16_expo(v);
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
        if (isnan(g.l[hh])) dsacp_mla16_head_nan(j->o + h * j->dc, j->dc, j->lse + h);
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

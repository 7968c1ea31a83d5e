/*
 * bench_gemm.c -- the "gemm" case: the batched linear (the blocked GEMM) on T tokens for T in
 * {16, 256, 2048}, weights of q_a's shape (hidden x q_lora, the layer's first and most common
 * GEMM shape) stored as f32, bf16 and fp8, each beside the reference product on the same f32
 * problem; and the bf16-dot chain's batched product (src/kernels/gemm_bf16.c, deployed mode's
 * arithmetic: the activations rounded to bf16 and the bf16 weights packed once, untimed) beside
 * the reference and the bf16-dot peak, where the chain runs VDPBF16PS (else an n/a row saying
 * why), and its FMA form (two f32 FMAs per pair, for plain operands) beside the reference and the
 * f32 FMA peak; and deployed mode's linear as the model runs it (linear_deployed_{bf16,fp8}_T*:
 * dsacp_linear with act_quant = true on the bf16 and fp8 weights, whatever --numerics says, so
 * the chain dispatch.c picks for deployed BF16/FP8 weights, the bf16-dot chain, activation
 * rounding included) beside the reference, the bf16-dot peak and the f32 FMA peak. The eight
 * products are timed interleaved, one after another in every repetition, and each keeps its
 * minimum: on a shared VM the machine's speed drifts by 30-40 % between seconds, which a ratio of
 * separately timed runs would carry.
 */
#include "bench/bench.h"
#include "core/core.h"
#include "kernels/bf16dot.h"

#include <stdio.h>

static const int64_t tokens[] = {16, 256, 2048};
enum { NT = sizeof tokens / sizeof *tokens, TMAX = 2048, NW = 3 /* f32, bf16, fp8 */ };
/* The products timed: the reference; dsacp_linear on w[0..2] (act_quant as --numerics says for
 * fp8, as before); dsacp_linear deployed on the bf16 and fp8 weights; the batched bf16-dot
 * product by VDPBF16PS and by its FMA form (both forced, whatever the automatic choice). */
enum { P_REF, P_F32, P_BF16, P_FP8, P_DEP_BF16, P_DEP_FP8, P_DOT, P_FMA, NP };

typedef struct gemm_state {
    int64_t N, K;
    bench_weight w[NW];
    float *x, *y;
    /* the bf16-dot product: why it does not run here (NULL: it does), the packed bf16 weight,
     * the activations rounded to bf16, its workspace */
    const char *dot_na;
    const char *fma_na; /* why the FMA form does not run (operands not plain), or NULL */
    void *dot_w, *dot_ws;
    uint16_t *dot_x;
    size_t dot_ws_bytes;
} gemm_state;

/* The bf16-dot product's operands from the bf16 weight b and the f32 activations, or the reason
 * it does not run (the kernel needs VDPBF16PS equal to the model, and the kernels' ISA to allow
 * AVX-512). */
static int setup_dot(gemm_state *s, const uint16_t *b)
{
    s->dot_na = bench_bf16dot_na();
    if (!s->dot_na && dsacp_isa_active() != DSACP_ISA_AVX512)
        s->dot_na = "n/a: no batched bf16-dot kernel below the avx512 ISA";
    if (s->dot_na) return DSACP_OK;
    const int64_t N = s->N, K = s->K;
    s->dot_ws_bytes = dsacp_bf16gemm_ws_bytes(K, TMAX);
    s->dot_w = dsacp_alloc(dsacp_bf16gemm_pack_bytes(N, K));
    s->dot_ws = dsacp_alloc(s->dot_ws_bytes);
    s->dot_x = dsacp_calloc((size_t)(TMAX * K), sizeof *s->dot_x);
    if (!s->dot_w || !s->dot_ws || !s->dot_x) return dsacp_error(DSACP_ENOMEM, "out of memory for the bf16-dot operands");
    dsacp_bf16gemm_pack(b, N, K, K, s->dot_w);
    const int fx = dsacp_bf16_round_row(s->x, TMAX * K, s->dot_x);
    if (!dsacp_bf16dot_plain_ok(dsacp_bf16_exp_floor(b, N * K), fx))
        s->fma_na = "n/a: the operands are not plain (the FMA form would run VDPBF16PS)";
    return DSACP_OK;
}

static int setup(bench_run *r, void **state)
{
    const dsacp_config *c = r->cfg;
    gemm_state *s = dsacp_calloc(1, sizeof *s);
    *state = s;
    if (!s) return DSACP_ENOMEM;
    s->N = c->q_lora_rank > 0 ? c->q_lora_rank : c->hidden_size, s->K = c->hidden_size;
    const int64_t N = s->N, K = s->K;
    int rc = bench_weight_make(&s->w[0], "gemm_f32", N, K, false, 201);
    if (!rc) rc = bench_weight_make(&s->w[2], "gemm_fp8", N, K, true, 202);
    if (rc) return rc;
    uint16_t *b = dsacp_calloc((size_t)(N * K), sizeof *b);
    if (!b) return dsacp_error(DSACP_ENOMEM, "out of memory for the bf16 weight");
    const float *f = s->w[0].data;
    for (int64_t i = 0; i < N * K; i++) b[i] = dsacp_f32_to_bf16(f[i]);
    s->w[1].w = s->w[0].w;
    s->w[1].data = b;
    s->w[1].w.name = "gemm_bf16", s->w[1].w.dtype = DSACP_BF16, s->w[1].w.data = b;
    s->x = dsacp_calloc((size_t)(TMAX * K), sizeof(float));
    s->y = dsacp_calloc((size_t)(TMAX * N), sizeof(float));
    if (!s->x || !s->y) return dsacp_error(DSACP_ENOMEM, "out of memory for the batched linear operands");
    bench_fill(s->x, TMAX * K, 203, 1);
    return setup_dot(s, b);
}

static void teardown(void *state)
{
    gemm_state *s = state;
    if (!s) return;
    for (int k = 0; k < NW; k++) bench_weight_free(&s->w[k]);
    dsacp_free(s->x), dsacp_free(s->y);
    dsacp_free(s->dot_w), dsacp_free(s->dot_ws), dsacp_free(s->dot_x);
    dsacp_free(s);
}

typedef struct product {
    const bench_run *r;
    const gemm_state *s;
    int64_t T;
    int k; /* P_x */
    int rc;
} product;

static void product_run(product *p)
{
    const gemm_state *s = p->s;
    if (p->k == P_REF) {
        p->r->opt->reference_gemm(p->T, s->N, s->K, s->x, s->K, s->w[0].data, s->K, true, s->y, s->N);
        return;
    }
    int rc;
    if (p->k == P_DOT || p->k == P_FMA) {
        const int form = p->k == P_DOT ? DSACP_BF16GEMM_DPBF16 : DSACP_BF16GEMM_FMA;
        rc = dsacp_bf16gemm_as(form, s->dot_w, s->N, s->K, s->dot_x, p->T, s->K, s->y, s->N, s->dot_ws,
                               s->dot_ws_bytes);
    } else if (p->k == P_DEP_BF16 || p->k == P_DEP_FP8) {
        const dsacp_weight *w = &s->w[p->k == P_DEP_BF16 ? 1 : 2].w;
        rc = dsacp_linear(w, s->x, p->T, s->K, s->y, s->N, true);
    } else {
        const bool act_quant = p->r->opt->deployed && p->k == P_FP8;
        rc = dsacp_linear(&s->w[p->k - P_F32].w, s->x, p->T, s->K, s->y, s->N, act_quant);
    }
    if (rc && !p->rc) p->rc = rc;
}

/* Whether product k runs here (the batched bf16-dot forms need their operands). */
static bool product_runs(const gemm_state *s, int k)
{
    if (k == P_DOT) return !s->dot_na;
    if (k == P_FMA) return !s->dot_na && !s->fma_na;
    return true;
}

static double work(const bench_run *r, int64_t T)
{
    const dsacp_config *c = r->cfg;
    const double N = (double)(c->q_lora_rank > 0 ? c->q_lora_rank : c->hidden_size);
    return 2.0 * (double)T * N * (double)c->hidden_size;
}

/* The best time of each product on T tokens, interleaved over the repetitions (the products that
 * do not run here keep 1e30). */
static int time_interleaved(const bench_run *r, const gemm_state *s, int64_t T, double best[NP])
{
    product p[NP];
    int64_t inner[NP];
    for (int k = 0; k < NP; k++) { /* warm-up; calls per timing of >= 20 ms */
        p[k] = (product){r, s, T, k, 0};
        best[k] = 1e30, inner[k] = 0;
        if (!product_runs(s, k)) continue;
        const double t0 = dsacp_now();
        product_run(&p[k]);
        const double once = dsacp_now() - t0;
        inner[k] = once >= 0.02 ? 1 : (int64_t)(0.02 / (once > 1e-7 ? once : 1e-7)) + 1;
    }
    const int64_t reps = r->opt->reps < 5 ? 5 : r->opt->reps;
    for (int64_t rep = 0; rep < reps; rep++)
        for (int k = 0; k < NP; k++) {
            if (!inner[k]) continue;
            if (k == P_F32) bench_reference_settle();
            const double t0 = dsacp_now();
            for (int64_t it = 0; it < inner[k]; it++) product_run(&p[k]);
            const double t = (dsacp_now() - t0) / (double)inner[k];
            if (t < best[k]) best[k] = t;
        }
    for (int k = P_F32; k < NP; k++)
        if (p[k].rc) return p[k].rc;
    return DSACP_OK;
}

/* One bf16-dot form's rows on T tokens, gemm_<tag>_T<T>: its rate beside the reference (as the
 * other rows) and, as _peak, beside its own ceiling (peak_bf16dot for VDPBF16PS, the f32 FMA
 * peak for the FMA form); or why it does not run (na). */
static void report_form(bench_run *r, const char *tag, const char *na, int64_t T, double best, const char *cname,
                        double sgemm, const char *peak_name, double peak)
{
    char name[64];
    snprintf(name, sizeof name, "gemm_%s_T%lld", tag, (long long)T);
    if (na) {
        bench_na(r, name, na);
        return;
    }
    bench_work_rate(r, name, T, best, cname, sgemm);
    snprintf(name, sizeof name, "gemm_%s_T%lld_peak", tag, (long long)T);
    bench_work_rate(r, name, T, best, peak > 0 ? peak_name : NULL, peak);
}

/* Deployed mode's linear on the `tag` weights on T tokens, linear_deployed_<tag>_T<T>: beside the
 * reference, then (_peak) the bf16-dot peak and (_fma) the f32 FMA peak, its two ceilings. */
static void report_deployed(bench_run *r, const char *tag, int64_t T, double best, const char *cname, double sgemm)
{
    char name[64];
    snprintf(name, sizeof name, "linear_deployed_%s_T%lld", tag, (long long)T);
    bench_work_rate(r, name, T, best, cname, sgemm);
    snprintf(name, sizeof name, "linear_deployed_%s_T%lld_peak", tag, (long long)T);
    bench_work_rate(r, name, T, best, r->peak_bf16dot > 0 ? "peak_bf16dot" : NULL, r->peak_bf16dot);
    snprintf(name, sizeof name, "linear_deployed_%s_T%lld_fma", tag, (long long)T);
    bench_work_rate(r, name, T, best, r->peak_fma > 0 ? r->peak_fma_name : NULL, r->peak_fma);
}

static int run(bench_run *r, void *state)
{
    const gemm_state *s = state;
    static const char *const tag[NW] = {"f32", "bf16", "fp8"};
    for (int i = 0; i < NT; i++) {
        const int64_t T = tokens[i];
        const double flops = work(r, T);
        double best[NP];
        const int rc = time_interleaved(r, s, T, best);
        char name[64], cname[64];
        snprintf(cname, sizeof cname, "sgemm_T%lld", (long long)T);
        const double sg = flops / best[P_REF] * 1e-9;
        bench_result(r, cname, sg, "GFLOP/s", NULL, 0, 0);
        for (int k = 0; k < NW; k++) {
            snprintf(name, sizeof name, "gemm_%s_T%lld", tag[k], (long long)T);
            bench_work_rate(r, name, T, best[P_F32 + k], cname, sg);
        }
        if (rc) return rc;
        report_form(r, "bf16dot", s->dot_na, T, best[P_DOT], cname, sg, "peak_bf16dot", r->peak_bf16dot);
        report_form(r, "bf16fma", s->dot_na ? s->dot_na : s->fma_na, T, best[P_FMA], cname, sg, r->peak_fma_name,
                    r->peak_fma);
        report_deployed(r, "bf16", T, best[P_DEP_BF16], cname, sg);
        report_deployed(r, "fp8", T, best[P_DEP_FP8], cname, sg);
    }
    return DSACP_OK;
}

const bench_case bench_case_gemm = {
    .name = "gemm",
    .options = 1u << DSACP_BENCH_OPT_PRESET | 1u << DSACP_BENCH_OPT_NUMERICS | 1u << DSACP_BENCH_OPT_ISA,
    .ceilings = BENCH_CEIL_FMA | BENCH_CEIL_REFERENCE,
    .setup = setup,
    .run = run,
    .teardown = teardown,
    .work = work,
    .work_unit = "flop",
};

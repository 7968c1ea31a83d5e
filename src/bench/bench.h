/*
 * bench -- the harness of dsacp_bench.h and its cases (nccl-tests' shape): one harness (the
 * timing loop and the results in bench_harness.c, the ceilings, the synthetic data) and one
 * small file per case, each described by a bench_case in the one registration table of bench.c
 * (above the cases; they call the harness below them). Adding a case is one file plus one line
 * of that table.
 *
 * Calls: attn (the decode layer and prefill), cache, kernels, model, numerics, engine (the cp
 * case's steps), comm (its reduction over ranks) and core. Nothing below calls it; the CLI
 * reaches it through include/dsacp_bench.h only.
 */
#ifndef DSACP_BENCH_INTERNAL_H
#define DSACP_BENCH_INTERNAL_H

#include "attn/dsa_layer.h"
#include "dsacp_bench.h"

/* The ceilings a case is set beside; the harness measures the union of its cases' before them. */
enum {
    BENCH_CEIL_FMA = 1 << 0,          /* peak FMA (and the AVX512-BF16 dot rate, the bf16-dot peak) */
    BENCH_CEIL_STREAM = 1 << 1,       /* stream copy and read */
    BENCH_CEIL_SGEMM_INDEX = 1 << 2,  /* the reference product of one indexer query */
    BENCH_CEIL_SGEMM_INDEX16 = 1 << 3, /* ... and of 16 (prefill) queries */
    BENCH_CEIL_SGEMM_MLA = 1 << 4,    /* the two reference products of sparse MLA */
    BENCH_CEIL_REFERENCE = 1 << 5,    /* none measured: the case times the reference product itself */
};

/* One run: the options, the ceilings measured so far (0 until measured), the report. */
typedef struct bench_run {
    const dsacp_bench_options *opt;
    const dsacp_config *cfg;
    dsacp_bench_report *report;
    double peak_fma, stream_copy, stream_read, sgemm_indexer, sgemm_indexer_prefill, sgemm_mla;
    double peak_bf16dot;         /* the bf16-dot chain's ceiling (0 where bench_bf16dot_na says why not) */
    const char *peak_fma_name;   /* peak_fma's result name ("peak_fma_avx512" or "_avx2"), once measured */
    double indexer_fp8_s;        /* one decode query's fp8 scoring, once the indexer case timed it */
    const dsacp_dsa_weights *lw; /* layer 0's weights, for the cases with layer_weights */
    const struct bench_case *current; /* the case running */
} bench_run;

/* A case: setup builds its operands (untimed, *state NULL when nothing could be allocated), run
 * times them and reports, teardown frees what setup built (also after a failed setup). work(r, i):
 * the flops (or bytes: work_unit) of one call the case reports a rate of, i saying which (its
 * tokens, queries, selected rows or weight index, as the case documents); NULL when the case
 * reports times only. */
typedef struct bench_case {
    const char *name;
    unsigned options;  /* 1u << DSACP_BENCH_OPT_x read */
    unsigned ceilings; /* BENCH_CEIL_x measured before it */
    bool layer_weights;
    bool engine; /* run by the caller through dsacp_bench_cp_* */
    const struct bench_case *const *members; /* a case made of others (NULL-terminated), or NULL */
    int (*setup)(bench_run *r, void **state);
    int (*run)(bench_run *r, void *state);
    void (*teardown)(void *state);
    double (*work)(const bench_run *r, int64_t i);
    const char *work_unit; /* "flop" or "byte" */
} bench_case;

extern const bench_case bench_case_ceilings, bench_case_indexer, bench_case_topk, bench_case_mla,
    bench_case_linear, bench_case_layer, bench_case_gemm, bench_case_prefill;

/* ---- results (bench_harness.c) ---- */
/* Appends a figure (dropped beyond DSACP_BENCH_MAX_RESULTS) and passes it to on_result.
 * ceil_name NULL: no ceiling. */
void bench_result(bench_run *r, const char *name, double value, const char *unit, const char *ceil_name,
                  double ceil_value, double ratio);
/* A figure that cannot be measured here: value NaN (null in JSON), unit `why` (static, "n/a: ..."),
 * no ceiling. */
void bench_na(bench_run *r, const char *name, const char *why);
/* A rate against a ceiling of the same unit (ratio value / ceil_value). */
void bench_rate(bench_run *r, const char *name, double value, const char *unit, const char *ceil_name,
                double ceil_value);
/* The running case's rate of call i taking `seconds`: work(r, i) / seconds, in GFLOP/s or GB/s
 * (its work_unit), against a ceiling as bench_rate. */
void bench_work_rate(bench_run *r, const char *name, int64_t i, double seconds, const char *ceil_name,
                     double ceil_value);

/* ---- timing (bench_harness.c) ---- */
typedef void (*bench_fn)(void *arg);
/* Seconds per call of fn(arg), the minimum over `reps` repetitions after one warm-up call; a
 * repetition loops fn until it lasts >= min_s. before(arg), when given, runs untimed before every
 * call, and then every call is timed on its own. */
double bench_time(bench_fn fn, bench_fn before, void *arg, int64_t reps, double min_s);
/* Measures the ceilings `which` (BENCH_CEIL_x) in a fixed order (bench_ceilings.c). */
int bench_measure_ceilings(bench_run *r, unsigned which);
/* The peak FMA rate of the widest FMA this CPU runs (bench_ceilings.c); *lanes: floats per vector. */
double bench_peak_fma(const bench_run *r, int *lanes);
/* Why the bf16-dot chain (src/kernels/bf16dot.h) runs no VDPBF16PS here, as "n/a: ...", or NULL
 * where its start-up check finds the instruction is the model on every input (bench_ceilings.c). */
const char *bench_bf16dot_na(void);
/* OpenBLAS's workers spin after a call: lets them park before OpenMP code is timed. */
void bench_reference_settle(void);

/* ---- synthetic data (bench_data.c, bench_indexer.c, bench_step.c) ---- */
/* x[i] = u * scale, u uniform with unit variance, from one dsacp_rng stream per chunk of 65536
 * elements seeded by (seed, chunk): the same values whatever the number of OpenMP threads. */
void bench_fill(float *x, int64_t n, uint64_t seed, float scale);
/* The same from a given stream, serially. */
void bench_fill_rng(float *x, int64_t n, dsacp_rng *rng, float scale);

/* An in-memory weight [rows][cols] ~ N(0, 1/cols): F8_E4M3 with block scales, or F32. */
typedef struct bench_weight {
    dsacp_weight w;
    void *data;
    float *scale;
} bench_weight;
int bench_weight_make(bench_weight *o, const char *name, int64_t rows, int64_t cols, bool fp8, uint64_t seed);
void bench_weight_free(bench_weight *o);
int64_t bench_weight_bytes(const dsacp_weight *w);

/* Layer 0's attention weights: bound from the model, or generated (the preset path). */
typedef struct bench_layer_weights {
    dsacp_dsa_weights w; /* released with dsacp_dsa_weights_release in both paths */
    bench_weight q_a, q_b, kv_a, kv_b, o, wq_b, wk, wproj;
} bench_layer_weights;
int bench_layer_weights_make(const bench_run *r, bench_layer_weights *lw);
void bench_layer_weights_free(bench_layer_weights *lw);

/* The indexer's operands at `context` keys: fp8 keys with their scales and the same keys in f32,
 * 16 deployed (e4m3-valued) queries and their head weights, scores for 16 queries. */
typedef struct bench_index_data {
    int64_t Hi, di, n, queries;
    uint8_t *k8;
    float *kscale, *kf32, *q, *w, *scores;
} bench_index_data;
int bench_index_data_make(const bench_run *r, bench_index_data *d);
void bench_index_data_free(bench_index_data *d);
/* Seconds of one query's fp8 scoring over all keys (the indexer case's figure, which top-k is
 * set beside), leaving its scores in d->scores. */
double bench_index_time_fp8(bench_run *r, const bench_index_data *d);
/* One query's scores against d->n keys (fp8 keys when fp8, else f32), split over the threads. */
void bench_index_score(const bench_index_data *d, bool fp8, int64_t queries);

/* The paged cache and step of one layer run (decode and prefill). */
typedef struct bench_layer_step {
    dsacp_kv_cache *cache;
    dsacp_kv_seq *seqs;
    dsacp_kv_seq **seqp;
    int64_t *pos;
    int32_t *seq;
    float *x, *out;
    dsacp_rope rope;
    int64_t requests, tokens;
    bool deployed; /* the numerics the cache was made for and the layer runs in */
} bench_layer_step;
/* A case's state (*state) of `requests` sequences with `length` reserved positions each and a
 * step of `tokens` tokens (positions and sequence indices 0: the caller sets them), their input
 * rows x filled from `seed`; `what` names the step in an out-of-memory message (NULL: none).
 * The numerics are r->opt->deployed's (an fp8 cache when deployed, f32 otherwise). The case's
 * teardown is bench_layer_step_teardown (also after a failure). */
int bench_layer_step_new(const bench_run *r, void **state, int64_t requests, int64_t length, int64_t tokens,
                         uint64_t seed, const char *what);
void bench_layer_step_teardown(void *state);
/* One call of the layer on the step (the decode layer's and prefill's timed function). */
typedef struct bench_layer_call {
    dsacp_dsa_ctx ctx;
    const dsacp_dsa_weights *w;
    dsacp_step_tokens tok;
    const float *x;
    float *out;
    int rc;
} bench_layer_call;
void bench_layer_call_init(const bench_run *r, bench_layer_step *s, bench_layer_call *c);
void bench_layer_call_run(void *call);

#endif

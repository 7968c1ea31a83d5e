/*
 * dsacp_bench.h -- the kernel benchmarks behind `dsacp bench`: each case times one kernel (index
 * scores, top-k, sparse MLA, the fp8 linears, the batched GEMM), one decode layer or a layer
 * prefill at a model's dimensions, beside the machine's own ceilings measured in the same run
 * (peak FMA, stream bandwidth, a reference dense product on the same shape). The cases and their
 * harness live in the library (src/bench) because they drive its internal kernels; a program
 * lists the cases, reads which options each reads, runs one and gets its figures in a struct.
 * docs/performance.md explains every figure.
 *
 * The context-parallel case ("cp") runs a whole engine over a CP group: the caller creates the
 * engine (dsacp_cp.h) and times its steps with dsacp_bench_cp_fill and dsacp_bench_cp_steps.
 *
 * Thread safety: one benchmark at a time per process. dsacp_bench_setup and dsacp_bench_run set
 * process-wide state (the kernels' ISA, the OpenMP thread count) and a run owns every core it
 * is given. The functions that only describe (cases, options, machine) may be called anytime.
 * Ownership: every result is copied into the caller's structs; nothing returned needs freeing,
 * and the strings returned are static.
 */
#ifndef DSACP_BENCH_H
#define DSACP_BENCH_H

#include "dsacp.h"
#include "dsacp_cp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the cases and the options they read ---- */

/* The options whose use depends on the case; every case reads the model (or config), reps and
 * threads. Names as a command line spells them ("block-size"): dsacp_bench_option_name. */
enum {
    DSACP_BENCH_OPT_PRESET,     /* the dimensions come from a preset (the cp case needs a model) */
    DSACP_BENCH_OPT_CONTEXT,    /* cached positions */
    DSACP_BENCH_OPT_BATCH,      /* decode requests per step */
    DSACP_BENCH_OPT_NUMERICS,   /* exact or deployed */
    DSACP_BENCH_OPT_ISA,        /* the kernels' instruction set (no kernel runs in "ceilings") */
    DSACP_BENCH_OPT_BLOCK_SIZE, /* tokens per cache block */
    DSACP_BENCH_OPT_WARM,       /* linears timed with warm caches */
    DSACP_BENCH_OPT_CHUNK,      /* tokens of the prefill chunk (cp) */
    DSACP_BENCH_OPT_COUNT
};
const char *dsacp_bench_option_name(int option);

typedef struct dsacp_bench_case_info {
    const char *name;
    unsigned options; /* bit (1u << DSACP_BENCH_OPT_x) for each option the case reads */
    bool engine;      /* runs an engine over a CP group (the caller drives it: dsacp_bench_cp_*) */
} dsacp_bench_case_info;

/* The cases, in a fixed order: all, ceilings, indexer, topk, mla, linear, layer, gemm, prefill,
 * cp ("all" runs ceilings, indexer, topk, mla, linear and layer). */
int dsacp_bench_case_count(void);
/* Case i (0 <= i < dsacp_bench_case_count()); DSACP_EINVAL for another i. */
int dsacp_bench_case_get(int i, dsacp_bench_case_info *out);
/* The index of the case named `name`, or -1. */
int dsacp_bench_case_find(const char *name);

/* ---- the machine ---- */

typedef struct dsacp_bench_machine {
    char cpu[256];            /* /proc/cpuinfo's model name, "unknown" without it */
    int cores;                /* processors OpenMP sees */
    const char *isa;          /* the kernels' instruction set now: "scalar", "avx2" or "avx512" */
    const char *isa_best;     /* the best this CPU runs */
    bool avx512_bf16, avx512_vnni;
    double loadavg;           /* 1-minute load average now (NaN when unknown) */
} dsacp_bench_machine;
void dsacp_bench_machine_describe(dsacp_bench_machine *out);

/* The instruction set named `name` ("scalar", "avx2", "avx512"), as an index for
 * dsacp_bench_setup, or -1 for another name. */
int dsacp_bench_isa_find(const char *name);
/* Runs the kernels with `isa` (an index from dsacp_bench_isa_find; -1 keeps the current one) and
 * `threads` OpenMP threads (>= 1). DSACP_EUNSUPPORTED when this CPU lacks the ISA. */
int dsacp_bench_setup(int isa, int64_t threads);

/* ---- one run ---- */

typedef struct dsacp_bench_result {
    char name[64];
    double value;
    const char *unit;         /* static: "GFLOP/s", "GB/s", "ms", "tok/s", "x"; or "n/a: <why>" with
                               * value NaN (null in JSON): a figure this machine cannot give */
    char ceiling_name[64];    /* the figure it is set beside; "" when none */
    double ceiling_value;     /* NaN when no ceiling */
    double ratio;             /* value / ceiling_value (or the ratio the case states); NaN when no ceiling */
} dsacp_bench_result;

enum { DSACP_BENCH_MAX_RESULTS = 64 };
typedef struct dsacp_bench_report {
    dsacp_bench_result results[DSACP_BENCH_MAX_RESULTS]; /* in the order measured */
    int count;
} dsacp_bench_report;

/* The reference dense product the kernels are set beside, f32 row-major:
 * C[M][N] = A[M][K] B, B being [K][N] (or [N][K] read transposed when transb). `dsacp bench`
 * passes OpenBLAS's sgemm; the library itself links no BLAS. */
typedef void (*dsacp_bench_gemm_fn)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                                    int64_t ldb, bool transb, float *C, int64_t ldc);
/* Called with each figure as soon as it is measured (a progress table). */
typedef void (*dsacp_bench_result_fn)(const dsacp_bench_result *result, void *user);

typedef struct dsacp_bench_options {
    const dsacp_config *config; /* the dimensions (required) */
    const dsacp_model *model;   /* NULL: the layer's weights are generated; else layer 0's are bound */
    int64_t context;            /* cached positions, 1 .. 2^24 (default 32768) */
    int64_t batch;              /* decode requests per step (layer), 1 .. 1024 (default 1) */
    int64_t threads;            /* OpenMP threads, 1 .. 1024 (default: OpenMP's maximum) */
    int64_t reps;               /* repetitions, 1 .. 1000; each figure is the minimum (default 5) */
    int64_t block_size;         /* tokens per cache block, a power of two (default 64) */
    bool deployed;              /* deployed numerics (default) or exact */
    bool warm;                  /* linears timed with warm caches (default: flushed before each call) */
    dsacp_bench_gemm_fn reference_gemm; /* required by ceilings, indexer, mla and gemm */
    dsacp_bench_result_fn on_result;    /* may be NULL */
    void *user;                         /* on_result's argument */
} dsacp_bench_options;
void dsacp_bench_options_default(dsacp_bench_options *opt);

/* Runs the case named `name` (not an engine case) and fills `out` with its figures. Errors:
 * DSACP_EINVAL for an unknown case or an option out of range (naming it), DSACP_ENOMEM, or the
 * status of the kernel that failed. */
int dsacp_bench_run(const char *name, const dsacp_bench_options *opt, dsacp_bench_report *out);

/* ---- the cp case: steps of an engine over a CP group ---- */

/* Gives the live, empty request `request_id` `length` cached positions of deterministic
 * pseudo-random cache entries (what a prefill would leave, without running one; the same values
 * for every W and layout). Collective. */
int dsacp_bench_cp_fill(dsacp_engine *engine, int64_t request_id, int64_t length, uint64_t seed);

/* The figures of `steps` steps, each the busiest (slowest) rank's, the same on every rank. */
typedef struct dsacp_bench_cp_figures {
    /* seconds, the median over the steps of the slowest rank: the step; the attention layer and
     * its parts (projections, attend, o_proj); the MLP; compute while a non-blocking collective
     * was in flight and the wait that followed it */
    double step, attention, mlp, projections, attend, o_proj, overlap_compute, overlap_wait;
    /* per phase, the mean per step of the busiest rank: seconds inside collectives, bytes
     * received, calls */
    double phase_seconds[DSACP_PHASE_COUNT], phase_recv_bytes[DSACP_PHASE_COUNT], phase_calls[DSACP_PHASE_COUNT];
    double kv_bytes_max;             /* cache bytes in use on the rank that holds most */
    double transient_peak_bytes_max; /* the largest transient peak of any rank */
} dsacp_bench_cp_figures;

/* Runs `steps` (>= 1) steps of the `n` entries through the engine, resetting its counters before
 * each, and reduces the step times and counters over the ranks. Collective. */
int dsacp_bench_cp_steps(dsacp_engine *engine, const dsacp_step_entry *entries, int64_t n, int64_t steps,
                         dsacp_bench_cp_figures *out);

#ifdef __cplusplus
}
#endif
#endif /* DSACP_BENCH_H */

/*
 * test_alloc.c -- heap allocations per steady-state decode token (issue 21, "one step
 * workspace"). malloc, calloc, realloc, aligned_alloc, posix_memalign, memalign and free are
 * interposed in this executable (the library, OpenMP and jansson resolve to them), counted while
 * a run is measured, and passed on to glibc's own. A generate run -- create the engine, prefill
 * a prompt, decode N tokens greedily, free -- is measured with N and with N + 16 decode tokens;
 * the difference is what 16 more decode tokens cost. Configurations: the tiny and tiny-moe
 * presets, exact numerics with f32 and bf16 latent caches, deployed numerics with the fp8 one
 * over FP8 weights, W = 1; each run stays inside the blocks it started in (the lengths below
 * never cross a block boundary between N and N + 16), so the block tables never grow.
 * DSACP_ALLOC_SITES=1 prints the call stack of every allocation of the extra tokens on stderr;
 * tests/alloc_sites.py test_alloc FILE sums them per token by file:function (addr2line).
 * The counter is alloc_count.h's. Under AddressSanitizer (which owns malloc) the test is skipped
 * (exit 77); under LLVM's OpenMP runtime it counts without asserting (that runtime allocates in
 * every parallel region, even with a full team: a few per region, about three per chunk of a
 * dynamic schedule; GCC's libgomp only in regions of one thread and nested ones).
 */
#include "test.h"
#include "engine/engine.h"
#include "model/model.h"

#include "alloc_count.h"

#include <unistd.h>

#if ALLOC_COUNTING
#include <execinfo.h>

/* ---- the call stacks (DSACP_ALLOC_SITES=1): alloc_count.h's hook ---- */

enum { SITES = 16384, DEPTH = 16 };
static atomic_int g_nsites;
static void *g_site[SITES][DEPTH];
static int g_site_depth[SITES];
static _Thread_local bool g_in_hook;

static void record_site(void)
{
    if (g_in_hook) return;
    const int s = atomic_fetch_add(&g_nsites, 1);
    if (s >= SITES) return;
    g_in_hook = true;
    g_site_depth[s] = backtrace(g_site[s], DEPTH);
    g_in_hook = false;
}

/* ---- the runs ---- */

/* The step's buffers (the engine's, src/cp's, the single-process layer's, the kernels' scratch,
 * the planner's prediction) come from the engine's one step workspace or nothing at W = 1: the
 * test asserts zero (run with DSACP_ALLOC_SITES=1 for the sites when it fails). */
#define EXPECT_ZERO 1

enum { PROMPT = 20, DECODE = 8, EXTRA = 16, BLOCK = 64 }; /* PROMPT + DECODE + EXTRA < BLOCK */

/* Allocations of one generate run with `decode` tokens after the prompt (0 on failure, with a
 * failed check). */
static long generate_allocs(const dsacp_model *m, const dsacp_engine_options *eo, int64_t decode, bool sites)
{
    const int64_t V = dsacp_model_config(m)->vocab_size;
    int32_t prompt[PROMPT];
    for (int i = 0; i < PROMPT; i++) prompt[i] = (int32_t)((i * 37 + 11) % V);
    float *logits = dsacp_alloc((size_t)V * sizeof(float));
    if (!logits) return 0;
    atomic_store(&alloc_count, 0);
    atomic_store(&g_nsites, 0);
    atomic_store(&alloc_counting, true);
    dsacp_engine *e = NULL;
    int64_t id = -1;
    int rc = dsacp_engine_create(m, eo, &e);
    if (!rc) rc = dsacp_engine_add_request(e, &id);
    dsacp_step_entry en = {id, PROMPT, prompt};
    if (!rc) rc = dsacp_engine_step_last(e, &en, 1, logits, NULL);
    for (int64_t t = 0; t < decode && !rc; t++) {
        if (t == decode - EXTRA && sites) alloc_hook = record_site;
        int32_t next = 0;
        for (int64_t v = 1; v < V; v++)
            if (logits[v] > logits[next]) next = (int32_t)v;
        en = (dsacp_step_entry){id, 1, &next};
        rc = dsacp_engine_step_last(e, &en, 1, logits, NULL);
    }
    alloc_hook = NULL;
    if (e) dsacp_engine_free(e);
    atomic_store(&alloc_counting, false);
    dsacp_free(logits);
    CHECKF(rc == 0, "generate: %s", dsacp_last_error());
    return rc ? 0 : atomic_load(&alloc_count);
}

static void print_sites(void)
{
    const int n = atomic_load(&g_nsites) < SITES ? atomic_load(&g_nsites) : SITES;
    for (int s = 0; s < n; s++) {
        fprintf(stderr, "allocation %d:\n", s);
        backtrace_symbols_fd(g_site[s] + 1, g_site_depth[s] - 1, STDERR_FILENO);
    }
}

static void check_config(const char *preset, dsacp_weight_format wf, dsacp_numerics nm, dsacp_kv_dtype kv,
                         const char *dir, bool sites)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config(preset, &cfg));
    REQUIRE_OK(dsacp_model_init(&cfg, dir, 7, wf));
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = nm, eo.kv_dtype = kv, eo.block_size = BLOCK;
    const long a = generate_allocs(m, &eo, DECODE, false);
    const long b = generate_allocs(m, &eo, DECODE + EXTRA, sites);
    printf("%s, %s numerics, kv %s: %ld allocations with %d decode tokens, %ld with %d: %.2f per decode token\n",
           preset, nm == DSACP_NUMERICS_DEPLOYED ? "deployed" : "exact", kv == DSACP_KV_F32 ? "f32" : kv == DSACP_KV_BF16 ? "bf16" : "fp8", a, DECODE, b,
           DECODE + EXTRA, (double)(b - a) / EXTRA);
    if (sites) print_sites();
    if (EXPECT_ZERO && !alloc_llvm_openmp())
        CHECKF(b - a == 0, "%s: %ld heap allocations in %d decode tokens (DSACP_ALLOC_SITES=1 lists them)", preset,
               b - a, EXTRA);
    dsacp_model_free(m);
}

int main(void)
{
    void *warm[4];
    backtrace(warm, 4); /* loads the unwinder now, not inside a counted allocation */
    const bool sites = getenv("DSACP_ALLOC_SITES") != NULL;
    if (alloc_llvm_openmp()) printf("LLVM's OpenMP runtime: allocations counted, zero not asserted\n");
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/dsacp_alloc_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    const char *const presets[] = {"tiny", "tiny-moe"};
    for (int p = 0; p < 2; p++) {
        char d[128];
        snprintf(d, sizeof d, "%s/%s", dir, presets[p]);
        check_config(presets[p], DSACP_WEIGHTS_F32, DSACP_NUMERICS_EXACT, DSACP_KV_F32, d, sites);
        check_config(presets[p], DSACP_WEIGHTS_F32, DSACP_NUMERICS_EXACT, DSACP_KV_BF16, d, sites);
        snprintf(d, sizeof d, "%s/%s-fp8", dir, presets[p]);
        check_config(presets[p], DSACP_WEIGHTS_FP8, DSACP_NUMERICS_DEPLOYED, DSACP_KV_FP8, d, sites);
    }
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_finish("test_alloc");
}

#else

int main(void)
{
    fprintf(stderr, "test_alloc: skipped under AddressSanitizer (it owns malloc)\n");
    return 77;
}

#endif

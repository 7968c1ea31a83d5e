/*
 * test_cp_alloc.c -- heap allocations per steady-state decode token at W > 1 (issue 21, "one
 * step workspace"), for every decode strategy of the table, with exact numerics (f32 cache) and
 * deployed numerics (FP8 weights and cache). A generate run -- create the CP engine over the
 * world, prefill a prompt, decode N tokens greedily, free -- is measured with N and N + 16 decode
 * tokens on every rank; the difference is what 16 more decode tokens cost.
 *
 * What is counted: the malloc family is interposed here, and an allocation counts only when the
 * function that called the allocator lies in this executable's text (libdsacp.a is linked into
 * it; __executable_start .. etext), so what Open MPI, OpenMP and glibc allocate inside their own
 * calls (MPI's request and datatype objects, libgomp's teams, qsort's buffer) is not counted: it
 * is theirs, not dsacp's. Runs alone (W = 1, where test_alloc covers the engine) and under mpirun
 * at W = 2, 3, 4; rank 0 prints the counts, every rank asserts ALLOCS_PER_TOKEN (zero, the
 * planner's per-step prediction included). DSACP_ALLOC_SITES=1
 * prints each counted allocation's caller and the two frames above it as offsets for
 * addr2line -f -e test_cp_alloc. Skipped under AddressSanitizer (exit 77).
 */
#include "test_cp_util.h"
#include "engine/engine.h"
#include "model/model.h"

#if defined(__SANITIZE_ADDRESS__)
#define CP_ALLOC_COUNTING 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CP_ALLOC_COUNTING 0
#endif
#endif
#ifndef CP_ALLOC_COUNTING
#define CP_ALLOC_COUNTING 1
#endif

#if CP_ALLOC_COUNTING
#include <execinfo.h>
#include <stdatomic.h>

void *__libc_malloc(size_t);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void __libc_free(void *);

extern const char __executable_start[], etext[];
static atomic_bool g_on;
static atomic_long g_count;
/* DSACP_ALLOC_SITES=1: the callers of the counted allocations and two frames above them. */
enum { SITES = 65536 };
static const void *g_site[SITES][3];
static bool g_sites;

/* Counts an allocation called from `caller` when it is dsacp's (or this test's) code. */
static void seen(const void *caller)
{
    if (!atomic_load_explicit(&g_on, memory_order_relaxed)) return;
    const char *c = caller;
    if (c < __executable_start || c >= etext) return;
    const long k = atomic_fetch_add(&g_count, 1);
    if (!g_sites || k >= SITES) return;
    void *bt[5];
    const int d = backtrace(bt, 5); /* this function, the allocator, its caller and two above */
    g_site[k][0] = caller, g_site[k][1] = d > 3 ? bt[3] : NULL, g_site[k][2] = d > 4 ? bt[4] : NULL;
}

void *malloc(size_t n)
{
    seen(__builtin_return_address(0));
    return __libc_malloc(n);
}
void *calloc(size_t c, size_t n)
{
    seen(__builtin_return_address(0));
    return __libc_calloc(c, n);
}
void *realloc(void *p, size_t n)
{
    seen(__builtin_return_address(0));
    return __libc_realloc(p, n);
}
void *memalign(size_t a, size_t n)
{
    seen(__builtin_return_address(0));
    return __libc_memalign(a, n);
}
void *aligned_alloc(size_t a, size_t n)
{
    seen(__builtin_return_address(0));
    return __libc_memalign(a, n);
}
int posix_memalign(void **out, size_t a, size_t n)
{
    seen(__builtin_return_address(0));
    void *p = __libc_memalign(a, n);
    if (!p) return 12; /* ENOMEM */
    *out = p;
    return 0;
}
void free(void *p) { __libc_free(p); }

enum { PROMPT = 20, DECODE = 8, EXTRA = 16, BLOCK = 64 }; /* PROMPT + DECODE + EXTRA < BLOCK */

/* Heap allocations per decode token, at every W and for every strategy: none. The planner's
 * per-step prediction of the engine's collectives (dsacp_engine_plan_comm) takes its lists and
 * per-rank counts from the engine's plan memory, grown to the largest step (the prompt's), like
 * every other buffer of a step from the step workspace. */
enum { ALLOCS_PER_TOKEN = 0 };

/* Allocations of one generate run on this rank with `decode` tokens after the prompt (-1 on a
 * failure, with a failed check). */
static long generate_allocs(const dsacp_model *m, const dsacp_engine_options *eo, const dsacp_cp_options *cp, int64_t decode)
{
    const int64_t V = dsacp_model_config(m)->vocab_size;
    int32_t prompt[PROMPT];
    for (int i = 0; i < PROMPT; i++) prompt[i] = (int32_t)((i * 37 + 11) % V);
    float *logits = dsacp_alloc((size_t)V * sizeof(float));
    if (!logits) return -1;
    atomic_store(&g_count, 0);
    atomic_store(&g_on, true);
    dsacp_engine *e = NULL;
    int64_t id = -1;
    int rc = dsacp_engine_create_cp(m, eo, cp, g_world, &e);
    if (!rc) rc = dsacp_engine_add_request(e, &id);
    dsacp_step_entry en = {id, PROMPT, prompt};
    if (!rc) rc = dsacp_engine_step_last(e, &en, 1, logits, NULL);
    for (int64_t t = 0; t < decode && !rc; t++) {
        int32_t next = 0;
        for (int64_t v = 1; v < V; v++)
            if (logits[v] > logits[next]) next = (int32_t)v;
        en = (dsacp_step_entry){id, 1, &next};
        rc = dsacp_engine_step_last(e, &en, 1, logits, NULL);
    }
    if (e) dsacp_engine_free(e);
    atomic_store(&g_on, false);
    dsacp_free(logits);
    CHECKF(rc == 0, "generate: %s", dsacp_last_error());
    return rc ? -1 : atomic_load(&g_count);
}

/* The options of strategy `id` in its supported layout (the CLI's defaults). */
static void strategy_options(int id, dsacp_cp_options *cp)
{
    const dsacp_cp_strategy *s = dsacp_cp_strategy_at(id);
    dsacp_cp_options_default(cp);
    cp->decode = (dsacp_decode_strategy)id;
    if (s->replicated_index) cp->index_layout = DSACP_LAYOUT_REPLICATED;
    if (strcmp(s->name, "allgather-blocks") == 0) cp->interleave = BLOCK;
}

static void check_model(const dsacp_model *m, const char *label, dsacp_numerics nm, dsacp_kv_dtype kv)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.numerics = nm, eo.kv_dtype = kv, eo.block_size = BLOCK;
    for (int id = 0; id < dsacp_cp_strategy_count(); id++) {
        const char *name = dsacp_cp_strategy_at(id)->name;
        dsacp_cp_options cp;
        strategy_options(id, &cp);
        const long a = generate_allocs(m, &eo, &cp, DECODE);
        const long b = generate_allocs(m, &eo, &cp, DECODE + EXTRA);
        if (g_rank == 0)
            printf("W=%d %-16s %s: %ld allocations with %d decode tokens, %ld with %d: %.2f per decode token\n", g_W,
                   name, label, a, DECODE, b, DECODE + EXTRA, (double)(b - a) / EXTRA);
        if (g_sites && g_rank == 0)
            for (long k = 0; k < b && k < SITES; k++) fprintf(stderr, "site %s %lx %lx %lx\n", name, (unsigned long)((const char *)g_site[k][0] - __executable_start),
                        (unsigned long)((const char *)g_site[k][1] - __executable_start),
                        (unsigned long)((const char *)g_site[k][2] - __executable_start));
        const long bound = EXTRA * ALLOCS_PER_TOKEN;
        if (a >= 0 && b >= 0)
            CHECKF(b - a <= bound, "W=%d rank %d %s %s: %ld heap allocations in %d decode tokens, at most %ld expected "
                   "(DSACP_ALLOC_SITES=1 lists them)", g_W, g_rank, name, label, b - a, EXTRA, bound);
    }
}

int main(int argc, char **argv)
{
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &g_world));
    g_rank = dsacp_comm_rank(g_world), g_W = dsacp_comm_size(g_world);
    g_sites = getenv("DSACP_ALLOC_SITES") != NULL;
    void *warm[4];
    backtrace(warm, 4); /* loads the unwinder now, not inside a counted allocation */
    char *dir = NULL;
    dsacp_model *m = shared_model(&dir, "tiny", DSACP_WEIGHTS_F32, false);
    check_model(m, "exact f32", DSACP_NUMERICS_EXACT, DSACP_KV_F32);
    drop_model(m, dir);
    m = shared_model(&dir, "tiny", DSACP_WEIGHTS_FP8, false);
    check_model(m, "deployed fp8", DSACP_NUMERICS_DEPLOYED, DSACP_KV_FP8);
    drop_model(m, dir);
    const int failed = test_failures_;
    const int rc = dsacp_comm_agree(g_world, failed ? DSACP_EINVAL : DSACP_OK);
    dsacp_comm_free(g_world);
    if (rc && !failed) {
        fprintf(stderr, "FAIL test_cp_alloc: another rank failed\n");
        return 1;
    }
    return test_finish("test_cp_alloc");
}

#else

int main(void)
{
    fprintf(stderr, "test_cp_alloc: skipped under AddressSanitizer (it owns malloc)\n");
    return 77;
}

#endif

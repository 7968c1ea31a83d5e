#!/usr/bin/env bash
# The benchmarks are library API (include/dsacp_bench.h, issue 21): a program built against the
# shared library alone -- no BLAS, no internal header -- lists the cases in `dsacp bench`'s order
# with the options each reads, runs a case with its own reference product (a plain C GEMM), is
# refused a case that needs one without it, the engine case and an option out of range, and
# gets finite figures set beside their ceilings. Seconds.
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:?set by CTest}
BUILD=${DSACP_BUILD_DIR:?set by CTest}
command -v cc >/dev/null || { echo "SKIP: needs cc"; exit 77; }
# A sanitizer build's library needs the sanitizer runtime on the program's link line too.
[[ ${DSACP_SANITIZE:-0} == 1 ]] && { echo "SKIP: sanitizer build"; exit 77; }
[[ -e $BUILD/libdsacp.so ]] || { echo "SKIP: no $BUILD/libdsacp.so"; exit 77; }

cat >"$tmp/app.c" <<'C'
#include "dsacp_bench.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int fails;
#define CHECK(c, ...) do { if (!(c)) { fails++; printf("FAIL " __VA_ARGS__); printf("\n"); } } while (0)

/* The reference product as a program without BLAS would give it. */
static void plain_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                       bool transb, float *C, int64_t ldc)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float s = 0;
            for (int64_t k = 0; k < K; k++) s += A[m * lda + k] * (transb ? B[n * ldb + k] : B[k * ldb + n]);
            C[m * ldc + n] = s;
        }
}

static const dsacp_bench_result *find(const dsacp_bench_report *r, const char *name)
{
    for (int i = 0; i < r->count; i++)
        if (!strcmp(r->results[i].name, name)) return &r->results[i];
    return NULL;
}

int main(void)
{
    static const char *const order[] = {"all", "ceilings", "indexer", "topk", "mla", "linear",
                                        "layer", "gemm", "prefill", "cp"};
    const int n = dsacp_bench_case_count();
    CHECK(n == 10, "%d cases", n);
    dsacp_bench_case_info info[10];
    for (int i = 0; i < n && i < 10; i++) {
        CHECK(dsacp_bench_case_get(i, &info[i]) == DSACP_OK, "case %d", i);
        CHECK(!strcmp(info[i].name, order[i]) && dsacp_bench_case_find(order[i]) == i, "case %d is %s", i, info[i].name);
        CHECK(info[i].engine == (i == 9), "only cp runs an engine (%s)", info[i].name);
    }
    CHECK(dsacp_bench_case_get(n, &info[0]) == DSACP_EINVAL && dsacp_bench_case_find("bogus") == -1, "out of range");
    const unsigned batch = 1u << DSACP_BENCH_OPT_BATCH, chunk = 1u << DSACP_BENCH_OPT_CHUNK;
    CHECK((info[0].options & batch) && !(info[3].options & batch) && (info[6].options & batch), "who reads batch");
    CHECK((info[9].options & chunk) && !(info[0].options & chunk), "who reads chunk");
    CHECK(!strcmp(dsacp_bench_option_name(DSACP_BENCH_OPT_BLOCK_SIZE), "block-size"), "option name");

    dsacp_config cfg;
    CHECK(dsacp_preset_config("tiny", &cfg) == DSACP_OK, "preset tiny");
    dsacp_bench_options o;
    dsacp_bench_options_default(&o);
    CHECK(o.context == 32768 && o.batch == 1 && o.reps == 5 && o.block_size == 64 && o.deployed, "defaults");
    o.config = &cfg, o.context = 64, o.reps = 1, o.threads = 1;
    static dsacp_bench_report rep;
    CHECK(dsacp_bench_run("mla", &o, &rep) == DSACP_EINVAL, "mla without a reference product");
    o.reps = 0;
    CHECK(dsacp_bench_run("topk", &o, &rep) == DSACP_EINVAL && strstr(dsacp_last_error(), "reps"), "reps 0");
    o.reps = 1;
    CHECK(dsacp_bench_run("cp", &o, &rep) == DSACP_EINVAL, "the engine case through dsacp_bench_run");
    o.reference_gemm = plain_gemm;
    CHECK(dsacp_bench_run("mla", &o, &rep) == DSACP_OK, "mla: %s", dsacp_last_error());
    const dsacp_bench_result *r = find(&rep, "sparse_mla");
    CHECK(r && isfinite(r->value) && r->value > 0 && !strcmp(r->unit, "GFLOP/s") &&
              !strcmp(r->ceiling_name, "sgemm_mla") && isfinite(r->ratio) && r->ratio > 0, "sparse_mla figure");
    /* Deployed mode's twin (the bf16-dot chain) beside it, against the same reference. */
    const dsacp_bench_result *rd = find(&rep, "sparse_mla_deployed");
    CHECK(rd && isfinite(rd->value) && rd->value > 0 && !strcmp(rd->ceiling_name, "sgemm_mla") &&
              find(&rep, "sparse_mla_deployed_time") && find(&rep, "sparse_mla_deployed_vs_exact"),
          "sparse_mla_deployed figures");
    CHECK(find(&rep, "sgemm_mla") && find(&rep, "sparse_mla_time") && find(&rep, "sparse_mla_peak") &&
              find(&rep, "sparse_mla_fma"),
          "mla: %d figures", rep.count);
    o.batch = 2;
    CHECK(dsacp_bench_run("layer", &o, &rep) == DSACP_OK, "layer: %s", dsacp_last_error());
    r = find(&rep, "decode_layer_step_time");
    CHECK(r && r->value > 0 && !strcmp(r->unit, "ms") && isnan(r->ratio) && !r->ceiling_name[0], "layer figure");
    dsacp_bench_machine m;
    dsacp_bench_machine_describe(&m);
    CHECK(m.cores >= 1 && m.isa && m.cpu[0], "machine");
    CHECK(dsacp_bench_isa_find("scalar") >= 0 && dsacp_bench_isa_find("sse9") == -1, "isa names");
    if (!fails) printf("ok %d cases, %d figures of the layer\n", n, rep.count);
    return fails != 0;
}
C
if cc -std=c11 -Wall -Wextra -Werror -I"$SRC/include" -I"$BUILD/include" "$tmp/app.c" -o "$tmp/app" \
     -L"$BUILD" -Wl,-rpath,"$BUILD" -ldsacp -lm 2>"$tmp/cc.log"; then
  pass "a program with dsacp_bench.h and libdsacp.so only compiles"
else
  fail "compile: $(head -c 2000 "$tmp/cc.log")"; finish; exit 1
fi
if out=$(OMP_NUM_THREADS=1 "$tmp/app" 2>&1) && [[ $out == "ok "* ]]; then
  pass "the benchmarks through the library API: $out"
else
  fail "the benchmarks through the library API: $out"
fi
if objdump -p "$tmp/app" 2>/dev/null | grep NEEDED | grep -qi blas; then fail "the program links BLAS"; fi
finish

/*
 * cli_plan.c -- `dsacp plan`: what each decode strategy of a CP deployment would move, hold and
 * cost per layer, from the formulas test_cp checks against the counters (src/plan) and a hardware
 * profile (one of the files in hardware/, or this machine's, measured by --calibrate under mpirun).
 * docs/planning.md explains the model and its limits.
 */
#include "cli.h"
#include "cli_plan_spec.h"
#include "dsacp_serve.h"
#include "dsacp_util.h"
#include "dsacp_plan.h"
#include "plot.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A priced configuration: a decode strategy (by its name in the table) with its layouts. */
typedef struct variant {
    const char *label;
    const char *strategy;
    dsacp_cp_layout kv, idx;
    int64_t group;
    dsacp_lean_merge merge;
    dsacp_merge_backend backend;
} variant;

#define S_ DSACP_LAYOUT_SHARDED
#define R_ DSACP_LAYOUT_REPLICATED
/* The rows priced for the strategies they name, in the table's order; a strategy of the table
 * without a row here gets one (its name, both caches sharded). */
static const variant rows[] = {
    /* no context parallelism: every rank keeps the whole cache and runs its heads (tensor parallel
     * attention: the engine's DCP path with both layouts replicated moves only o_proj's sums) */
    {"TP, no CP (caches replicated)", "allgather-kv", R_, R_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"allgather-kv (vllm-ascend #6563)", "allgather-kv", S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"replicated-index (vllm-ascend, SGLang)", "replicated-index", S_, R_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"exact-topk ag_rs (vLLM)", "exact-topk", S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"exact-topk a2a (Helix merge)", "exact-topk", S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_A2A},
    {"exact-topk partial:2", "exact-topk", S_, DSACP_LAYOUT_PARTIAL, 2, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"lean output", "lean", S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"lean values a2a", "lean", S_, S_, 1, DSACP_LEAN_MERGE_VALUES, DSACP_MERGE_A2A},
    {"allgather-blocks (vllm-ascend, as run)", "allgather-blocks", S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
};
#undef S_
#undef R_
enum { NV_MAX = 32 };

/* The variants priced: every strategy of the table in order, with its rows. */
typedef struct variant_list {
    int n;
    variant v[NV_MAX];
    dsacp_decode_strategy s[NV_MAX];
} variant_list;

static void variants_build(variant_list *vs)
{
    vs->n = 0;
    for (int id = 0; id < dsacp_decode_strategy_count(); id++) {
        const char *name = dsacp_decode_strategy_name((dsacp_decode_strategy)id);
        const int n0 = vs->n;
        for (size_t i = 0; i < sizeof rows / sizeof rows[0] && vs->n < NV_MAX; i++)
            if (!strcmp(rows[i].strategy, name)) vs->s[vs->n] = (dsacp_decode_strategy)id, vs->v[vs->n++] = rows[i];
        if (vs->n == n0 && vs->n < NV_MAX)
            vs->s[vs->n] = (dsacp_decode_strategy)id,
            vs->v[vs->n++] = (variant){name, name, DSACP_LAYOUT_SHARDED, DSACP_LAYOUT_SHARDED, 1, DSACP_LEAN_MERGE_OUTPUT,
                                       DSACP_MERGE_AG_RS};
    }
}

/* Variant v's options on W ranks: the interleave 1, or the engine's cache block where the
 * strategy needs the interleave equal to it (allgather-blocks, as the seed forces it). */
static void variant_options(const variant_list *vs, int v, int64_t W, double f, dsacp_cp_options *cp)
{
    const variant *x = &vs->v[v];
    dsacp_cp_options_default(cp);
    cp->decode = vs->s[v], cp->kv_layout = x->kv, cp->index_layout = x->idx, cp->index_group = x->group;
    cp->lean_merge = x->merge, cp->merge_backend = x->backend, cp->lean_factor = f;
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    dsacp_cp_options t = *cp;
    t.interleave = eo.block_size;
    if (dsacp_decode_strategy_check(cp, (int)W, eo.block_size) && !dsacp_decode_strategy_check(&t, (int)W, eo.block_size))
        *cp = t;
}

/* Prints text (and tail) on stdout at once; DSACP_EIO when stdout cannot take it. */
static int print_stdout(const char *text, size_t len, const char *tail)
{
    if ((len && fwrite(text, 1, len, stdout) != len) || fputs(tail, stdout) < 0 || fflush(stdout) != 0)
        return dsacp_error(DSACP_EIO, "stdout: write failed");
    return DSACP_OK;
}

/* ---- the report: stdout's text built in memory, the JSON tree (jansson), and the check that
 * every figure printed or written is a finite number ---- */
typedef struct report {
    FILE *txt; /* stdout's text, printed once every output file is written */
    char *text;
    size_t len;
    json_t *root;
    bool oom;
    char bad[256]; /* the first figure that is not finite */
} report;

/* v, remembering `what` when it is not finite (the report is then refused). */
static double fin(report *r, const char *what, double v)
{
    if (!isfinite(v) && !r->bad[0]) snprintf(r->bad, sizeof r->bad, "%s", what);
    return v;
}
static void jset(report *r, json_t *obj, const char *key, json_t *v)
{
    if (!v || json_object_set_new(obj, key, v)) r->oom = true;
}
static void jreal(report *r, json_t *obj, const char *key, double v, const char *where)
{
    if (!isfinite(v)) {
        /* a long name is cut at the buffer (checking the length keeps gcc's truncation warning
         * at -O2 quiet: the cut is intended) */
        if (!r->bad[0] && snprintf(r->bad, sizeof r->bad, "%s%s%s", where, *where ? " " : "", key) < 0)
            r->bad[0] = '?';
        v = 0;
    }
    jset(r, obj, key, json_real(v));
}
static void jint(report *r, json_t *obj, const char *key, int64_t v) { jset(r, obj, key, json_integer((json_int_t)v)); }
/* text as a JSON string; bytes that are not UTF-8 (a path may hold any) become '?' */
static void jstr(report *r, json_t *obj, const char *key, const char *text)
{
    json_t *v = json_string(text);
    if (!v) {
        char *t = strdup(text);
        for (char *c = t; c && *c; c++)
            if ((unsigned char)*c >= 0x80) *c = '?';
        v = t ? json_string(t) : NULL;
        free(t);
    }
    jset(r, obj, key, v);
}
static json_t *jappend(report *r, json_t *arr, json_t *v)
{
    if (!v || json_array_append_new(arr, v)) {
        r->oom = true;
        return NULL;
    }
    return v;
}

/* --calibrate: this machine as a profile (peak from an sgemm, bandwidth from a copy, links from
 * timed all-gathers over the run's ranks). Collective. */
static int calibrate(const char *path)
{
    if (!cli_world) return dsacp_error(DSACP_EINVAL, "--calibrate: no process group (internal error)");
    const int W = dsacp_comm_size(cli_world), me = dsacp_comm_rank(cli_world);
    /* the output first (rank 0): a path that cannot be written is refused before measuring */
    dsacp_out o = {.fd = -1};
    int orc = me == 0 ? cli_check_not_input("calibrate", path) : DSACP_OK;
    if (!orc && me == 0) orc = dsacp_out_open(&o, path);
    if (orc) dsacp_error_context(orc, "--calibrate");
    orc = dsacp_comm_agree(cli_world, orc);
    if (orc) {
        dsacp_out_abort(&o);
        return orc;
    }
    const int n = 1024;
    float *a = malloc((size_t)n * n * 4), *b = malloc((size_t)n * n * 4), *c = malloc((size_t)n * n * 4);
    const size_t big = (size_t)256 << 20;
    char *x = malloc(big), *y = malloc(big);
    const size_t lbytes = (size_t)8 << 20;
    char *sb = malloc(lbytes), *rb = malloc(lbytes * (size_t)W);
    int rc = (a && b && c && x && y && sb && rb) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for --calibrate");
    double flops = 0, bw = 0, copy_bw = 0, lbw = 0, lat = 0;
    if (!rc) {
        for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = 1.0f / (float)(1 + i % 7);
        memset(x, 1, big), memset(y, 2, big), memset(sb, 3, lbytes);
        double best = 1e30;
        for (int r = 0; r < 3; r++) {
            const double t0 = dsacp_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            best = fmin(best, dsacp_now() - t0);
        }
        flops = 2.0 * n * n * n / best;
        best = 1e30;
        for (int r = 0; r < 3; r++) {
            const double t0 = dsacp_now();
            memcpy(y, x, big);
            best = fmin(best, dsacp_now() - t0);
        }
        copy_bw = 2.0 * (double)big / best; /* read + write */
        /* what decode's matrix-vector products read weights at: the engine's own linear kernel,
         * one token, over a 256 MB f32 matrix (a copy streams faster than a product reads) */
        const int64_t K = 4096, N = (int64_t)(big / 4 / (size_t)K);
        float *xv = malloc((size_t)K * 4), *yv = malloc((size_t)N * 4);
        if (!xv || !yv) rc = dsacp_error(DSACP_ENOMEM, "out of memory for --calibrate");
        for (int64_t i = 0; !rc && i < K; i++) xv[i] = 1.0f / (float)(1 + i % 5);
        for (int64_t i = 0; !rc && i < N * K; i++) ((float *)x)[i] = 1.0f / (float)(1 + i % 3);
        best = 1e30;
        for (int r = 0; r < 4 && !rc; r++) {
            const double t0 = dsacp_now();
            rc = dsacp_linear_f32((const float *)x, N, K, xv, yv);
            best = fmin(best, dsacp_now() - t0);
        }
        bw = (double)(N * K) * 4 / best;
        free(xv), free(yv);
    }
    rc = dsacp_comm_agree(cli_world, rc);
    if (!rc && W > 1) {
        double t0 = dsacp_now();
        for (int r = 0; r < 5 && !rc; r++) rc = dsacp_comm_allgather(cli_world, sb, lbytes, rb, -1);
        lbw = 5.0 * (double)lbytes * (W - 1) / (dsacp_now() - t0);
        t0 = dsacp_now();
        for (int r = 0; r < 200 && !rc; r++) rc = dsacp_comm_allgather(cli_world, sb, 4, rb, -1);
        lat = (dsacp_now() - t0) / 200 * 1e6;
    } else if (!rc) {
        lbw = copy_bw, lat = 1;
    }
    free(a), free(b), free(c), free(x), free(y), free(sb), free(rb);
    /* the profile, written through jansson (dsacp_hw_load reads it back) */
    char *text = NULL;
    if (!rc && me == 0) {
        char name[160], source[512];
        snprintf(name, sizeof name, "this machine, %d rank%s (dsacp plan --calibrate)", W, W == 1 ? "" : "s");
        snprintf(source, sizeof source,
                 "measured by dsacp plan --calibrate: sgemm %d^3 (OpenBLAS, %d threads); mem_bw: the engine's linear kernel on "
                 "one token over a %zu MB f32 matrix (a copy moved %.3g B/s); all-gathers of 8 MB and 4 B over %d ranks",
                 n, omp_get_max_threads(), big >> 20, copy_bw, W);
        const double v[] = {flops, flops, bw, 8e9, lbw, lat, lbw, lat};
        for (int i = 0; i < 8 && !rc; i++)
            if (!isfinite(v[i]) || v[i] <= 0)
                rc = dsacp_error(DSACP_ERANGE, "--calibrate: measurement %d is not a positive finite number (%g)", i, v[i]);
        json_t *j = rc ? NULL : json_pack("{s:s, s:s, s:f, s:f, s:f, s:f, s:i, s:f, s:f, s:f, s:f}", "name", name, "source", source,
                                          "flops_bf16", flops, "flops_fp8", flops, "mem_bw", bw, "mem_bytes", 8e9,
                                          "ranks_per_node", W, "link_bw", lbw, "link_latency_us", lat, "net_bw", lbw,
                                          "net_latency_us", lat);
        if (!rc) text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_decref(j);
        if (!rc && !text) rc = dsacp_error(DSACP_ENOMEM, "out of memory writing the profile");
        if (!rc) rc = dsacp_out_write(&o, text, strlen(text));
        if (!rc) rc = dsacp_out_write(&o, "\n", 1);
        if (!rc) rc = dsacp_out_commit(&o);
    }
    dsacp_out_abort(&o); /* the temporary of a failed run (a no-op once committed) */
    rc = dsacp_comm_agree(cli_world, rc);
    if (!rc && me == 0) rc = print_stdout(text, strlen(text), "\n");
    free(text);
    return rc;
}

/* --plot FILE.svg|png: one horizontal bar per strategy, TPOT split into the attention layers'
 * compute or memory part and their communication part, and the KV per rank beside it; with
 * --prefill one bar per prefill split. Encoded into *data (SVG or PNG by the path's extension). */
static int render_plot(const char *path, const char *title, const variant *vs, const dsacp_plan_decode *r, const bool *ok,
                       int n, double layers, const char *const *plabel, const double *pttft, int np, int64_t P, uint8_t **data,
                       size_t *len)
{
    /* the scale: the largest bar within 10x of the smallest; longer ones are cut (their value printed) */
    double tmin = 1e300, tmax = 0;
    for (int v = 0; v < n; v++)
        if (ok[v]) tmin = fmin(tmin, r[v].t_layer * layers);
    for (int v = 0; v < n; v++)
        if (ok[v] && r[v].t_layer * layers <= 10 * tmin) tmax = fmax(tmax, r[v].t_layer * layers);
    const int W0 = 1000, row = 28, top = 60, left = 290, bw = 440;
    const int extra = np > 0 ? 50 + row * np : 0;
    plot *pl = plot_new(W0, top + row * n + 30 + extra);
    if (!pl) return dsacp_error(DSACP_ENOMEM, "out of memory");
    plot_text(pl, 10, 22, 14, "%s", title);
    plot_text(pl, 10, 42, 12, "attention time per output token (ms): compute or memory (blue) + communication (orange); "
                              "KV per rank per layer at the right");
    int y = top;
    for (int v = 0; v < n; v++) {
        if (!ok[v]) continue;
        const double a = fmax(r[v].t_compute, r[v].t_memory) * layers, c = r[v].t_comm * layers;
        const double cut = tmax > 0 && a + c > 1.1 * tmax ? 1.1 * tmax / (a + c) : 1.0;
        const double wa = tmax > 0 ? a * cut / tmax * bw : 0, wc = tmax > 0 ? c * cut / tmax * bw : 0;
        plot_text(pl, 10, y + 16, 12, "%s", vs[v].label);
        plot_rect(pl, left, y + 2, wa, 20, 0x4878cf);
        plot_rect(pl, left + wa, y + 2, wc, 20, 0xee854a);
        plot_text(pl, left + wa + wc + 6, y + 16, 12, "%.2f ms%s", (a + c) * 1e3, cut < 1 ? " (bar cut)" : "");
        plot_text(pl, W0 - 70, y + 16, 12, "%.1f MB", r[v].kv_bytes_per_rank / 1048576);
        y += row;
    }
    if (np > 0) {
        double pmax = 0;
        for (int i = 0; i < np; i++) pmax = fmax(pmax, pttft[i]);
        y += 20;
        plot_text(pl, 10, y + 10, 12, "prefill of a %lld-token prompt (TTFT of the attention layers, s)", (long long)P);
        y += 22;
        for (int i = 0; i < np; i++, y += row) {
            const double w = pmax > 0 ? pttft[i] / pmax * bw : 0;
            plot_text(pl, 10, y + 16, 12, "%s", plabel[i]);
            plot_rect(pl, left, y + 2, w, 20, 0x6acc64);
            plot_text(pl, left + w + 6, y + 16, 12, "%.2f s", pttft[i]);
        }
    }
    int rc = plot_encode(pl, path, data, len);
    plot_free(pl);
    return rc;
}

/* The phases of a layer as JSON: per collective phase on the busiest rank, calls and bytes received. */
/* A new JSON object, or NULL with the report marked out of memory. */
static json_t *jobject(report *R)
{
    json_t *o = json_object();
    if (!o) R->oom = true;
    return o;
}

static json_t *phases_json(report *R, const dsacp_plan_decode *d, const char *where)
{
    json_t *o = jobject(R);
    if (!o) return NULL;
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        if (d->calls_phase[p] == 0 && d->recv_phase[p] == 0) continue;
        json_t *ph = json_object();
        jset(R, o, dsacp_comm_phase_name(p), ph);
        if (!ph) continue;
        jreal(R, ph, "calls", d->calls_phase[p], where);
        jreal(R, ph, "recv_bytes", d->recv_phase[p], where);
    }
    return o;
}

static json_t *chunk_path_json(report *R, const dsacp_plan_decode *d, const char *where)
{
    json_t *o = jobject(R);
    if (!o) return NULL;
    jreal(R, o, "recv_bytes", d->recv_bytes, where);
    jreal(R, o, "calls", d->calls, where);
    jreal(R, o, "t_compute", d->t_compute, where);
    jreal(R, o, "t_memory", d->t_memory, where);
    jreal(R, o, "t_comm", d->t_comm, where);
    jreal(R, o, "t_layer", d->t_layer, where);
    return o;
}

/* The exit status of a failure before the work starts: 2 (the invocation), or 1 when the machine
 * failed (out of memory). */
static int invocation_fail(int rc)
{
    cli_fail("plan", rc);
    return rc == DSACP_ENOMEM ? 1 : 2;
}

enum { PD_RATES_MAX = 32 };

/* The planning itself, everything into R (stdout's text and the JSON tree). */
typedef struct plan_args {
    const char *model, *preset, *hwp;
    const dsacp_hw *hw;
    dsacp_config cfg; /* num_hidden_layers = the model's layers (--layers) */
    int64_t L, B, W, Pp, C, ep, layers;
    double f, wbytes;
    bool deployed;
    const variant_list *vs; /* the strategies priced */
    /* --pd P:D: a disaggregated deployment against PD-mixed (P = 0: not asked) */
    int64_t pd_P, pd_D, gen_len, pchunk;
    double link_bw, link_lat; /* bytes/s, seconds per message; 0: the profile's net_* */
    double rates[PD_RATES_MAX];
    int nrates; /* 0: a sweep around the producers' capacity */
    cli_plan_spec spec; /* --speculative-config (off when not given) */
} plan_args;

/* The planning itself, phase by phase, everything into R (stdout's text and the JSON tree);
 * F(what, x) checks that a figure is finite (the report names it otherwise). */
#define F(what, x) fin(R, what, (x))

/* The title, the decode table's header and the run's parameters. */
static void plan_header(const plan_args *A, report *R)
{
    const dsacp_hw *hw = A->hw;
    FILE *out = R->txt;
    json_t *root = R->root;
    const int64_t L = A->L, B = A->B, W = A->W, ep = A->ep, layers = A->layers;
    const bool deployed = A->deployed;
    fprintf(out, "dsacp plan: %s, context %lld, batch %lld, W = %lld, %s numerics, %s\n", A->preset ? A->preset : A->model,
            (long long)L, (long long)B, (long long)W, deployed ? "deployed" : "exact", hw->name);
    fprintf(out, "per attention layer, busiest rank; t = max(compute, memory) + bytes / link + calls x latency; model: + MLP / MoE\n"
                 "(experts %s) + lm_head; held: batch x KV + weights per rank for the %lld layers ('!' beyond 90%% of the memory)\n",
            ep > 1 ? "spread over ranks, --ep" : "replicated", (long long)layers);
    if (ep > 1) fprintf(out, "expert parallelism over %lld ranks\n", (long long)ep);
    fprintf(out, "%-40s %10s %6s %9s %10s %9s %9s %9s %9s %9s %10s %10s %9s\n", "strategy", "KB/token", "calls", "KV MB",
            "weights MB", "compute", "memory", "comm", "hidden", "layer", "x layers", "model", "held GB");
    jstr(R, root, "model", A->preset ? A->preset : A->model);
    jint(R, root, "context", L);
    jint(R, root, "batch", B);
    jint(R, root, "world", W);
    jstr(R, root, "numerics", deployed ? "deployed" : "exact");
    jstr(R, root, "hardware", hw->name);
    jstr(R, root, "hardware_file", A->hwp);
    jreal(R, root, "mem_bytes", hw->mem_bytes, "");
    jint(R, root, "layers", layers);
    jint(R, root, "ep", ep);
}

/* Decode: every strategy variant's layer and model, one table row each; *best_out the fastest
 * layer (-1: none). */
static int plan_decode(const plan_args *A, report *R, dsacp_plan_decode *r, bool *okv, int *best_out)
{
    const dsacp_hw hw = *A->hw;
    const dsacp_config cfg = A->cfg;
    const int64_t L = A->L, B = A->B, W = A->W, ep = A->ep, layers = A->layers;
    const double f = A->f, wbytes = A->wbytes;
    const bool deployed = A->deployed;
    FILE *out = R->txt;
    json_t *root = R->root;
    char where[256];
    json_t *strategies = json_array();
    jset(R, root, "strategies", strategies);
    int best = -1, rc = DSACP_OK;
    *best_out = -1;
    double tbest = 0;
    const variant *variants = A->vs->v;
    for (int v = 0; v < A->vs->n && strategies; v++) {
        dsacp_cp_options cp;
        variant_options(A->vs, v, W, f, &cp);
        if (cp.index_layout == DSACP_LAYOUT_PARTIAL && (W % cp.index_group || W < 2 * cp.index_group)) continue;
        dsacp_plan_model pm;
        if ((rc = dsacp_plan_decode_model(&cfg, &cp, W, ep, L, B, deployed, wbytes, &hw, &pm)))
            return dsacp_error_context(rc, "strategy '%s'", variants[v].label);
        r[v] = pm.layer;
        okv[v] = true;
        /* the KV of every cached layer: the MTP layer's too when --speculative-config asks for mtp */
        const double kv_layers = (double)layers + (A->spec.on && A->spec.spec.mtp ? 1 : 0);
        const double held = (double)B * r[v].kv_bytes_per_rank * kv_layers + pm.weights_per_rank;
        snprintf(where, sizeof where, "strategy '%s':", variants[v].label);
        json_t *o = jappend(R, strategies, json_object());
        if (o) {
            jstr(R, o, "strategy", variants[v].label);
            jreal(R, o, "recv_bytes_per_token", r[v].recv_bytes / (double)B, where);
            jreal(R, o, "calls", r[v].calls, where);
            jreal(R, o, "kv_bytes_per_rank", r[v].kv_bytes_per_rank, where);
            jreal(R, o, "weight_bytes", r[v].weight_bytes, where);
            jreal(R, o, "flops", r[v].flops, where);
            jreal(R, o, "t_compute", r[v].t_compute, where);
            jreal(R, o, "t_memory", r[v].t_memory, where);
            jreal(R, o, "t_comm", r[v].t_comm, where);
            jreal(R, o, "t_hidden", r[v].t_hidden, where);
            jreal(R, o, "t_layer", r[v].t_layer, where);
            jreal(R, o, "tpot", r[v].t_layer * (double)layers, where);
            jreal(R, o, "tpot_model", pm.tpot, where);
            jreal(R, o, "t_mlp", pm.t_mlp, where);
            jreal(R, o, "t_moe_comm", pm.t_moe_comm, where);
            jreal(R, o, "t_head", pm.t_head, where);
            jreal(R, o, "weights_per_rank", pm.weights_per_rank, where);
            jreal(R, o, "held_per_rank", held, where);
            jset(R, o, "fits", json_boolean(held <= 0.9 * hw.mem_bytes));
            jset(R, o, "phases", phases_json(R, &r[v], where));
        }
        fprintf(out, "%-40s %10.1f %6.0f %9.2f %10.1f %7.1fus %7.1fus %7.1fus %7.1fus %7.1fus %8.2fms %8.2fms %8.1f%s\n",
                variants[v].label, F(where, r[v].recv_bytes / 1024 / (double)B), r[v].calls, r[v].kv_bytes_per_rank / 1048576,
                r[v].weight_bytes / 1048576, r[v].t_compute * 1e6, r[v].t_memory * 1e6, r[v].t_comm * 1e6,
                r[v].t_hidden * 1e6, F(where, r[v].t_layer * 1e6), F(where, r[v].t_layer * 1e3 * (double)layers),
                F(where, pm.tpot * 1e3), F(where, held / 1e9), held > 0.9 * hw.mem_bytes ? "!" : "");
        if (best < 0 || r[v].t_layer < tbest) best = v, tbest = r[v].t_layer;
    }
    *best_out = best;
    return DSACP_OK;
}

/* The recommendation, DSA-CP's o_proj and lean's query crossovers, the context path's crossover. */
static void plan_recommend(const plan_args *A, report *R, const dsacp_plan_decode *r, const bool *okv, int best)
{
    const variant *variants = A->vs->v;
    const dsacp_hw hw = *A->hw;
    const dsacp_config cfg = A->cfg;
    const int64_t B = A->B, W = A->W;
    const bool deployed = A->deployed;
    FILE *out = R->txt;
    json_t *root = R->root;
    if (best >= 0) {
        const dsacp_plan_decode *b = &r[best];
        fprintf(out, "recommendation: %s -- %.1f us per layer (%s-bound: compute %.1f us, memory %.1f us; communication %.1f us "
                     "for %.1f KB in %.0f calls)\n", variants[best].label, b->t_layer * 1e6,
                b->t_compute > b->t_memory ? "compute" : "memory", b->t_compute * 1e6, b->t_memory * 1e6, b->t_comm * 1e6,
                b->recv_bytes / 1024, b->calls);
        /* DSA-CP's o_proj: gathering the weight (once per step) vs moving activations (per token) */
        if (W > 1) {
            const double ob = (double)cfg.hidden_size * (double)(cfg.num_attention_heads * cfg.v_head_dim) * (deployed ? 1 : 2);
            const double g = (double)(W - 1) / (double)W * ob;
            const double a1 = (double)(W - 1) / (double)W *
                              ((double)(cfg.num_attention_heads * cfg.v_head_dim) * 4 / (double)W + (double)cfg.hidden_size * 4);
            fprintf(out, "dsa-cp o_proj tp: gathering the weight moves fewer bytes than the activations from %.0f tokens per step "
                         "(%.1f MB vs %.1f KB per token)\n", F("o_proj crossover", g / a1), F("o_proj bytes", g / 1048576),
                    F("o_proj activations", a1 / 1024));
            /* lean replicates q_b_proj and W_UK: extra weight reads per step vs the query rows it does not gather */
            const double H = (double)cfg.num_attention_heads, dk = (double)(cfg.kv_lora_rank + cfg.qk_rope_head_dim);
            const double extra = (H - H / (double)W) * ((double)cfg.q_lora_rank * (double)(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) +
                                                        (double)cfg.qk_nope_head_dim * (double)cfg.kv_lora_rank) * (deployed ? 1 : 2);
            const double qbytes = (H - H / (double)W) * dk * 4;
            const double bw = W > hw.ranks_per_node ? hw.net_bw : hw.link_bw;
            fprintf(out, "lean's replicated query: +%.1f MB of weight reads per step (%.1f us) against %.1f KB per token not "
                         "gathered (%.2f us) and one round (%.1f us): pays from %.0f tokens per step, or at once when the round "
                         "counts\n", F("lean's extra weight reads", extra / 1048576), F("lean's extra read time", extra / hw.mem_bw * 1e6),
                    qbytes / 1024, F("lean's query time", qbytes / bw * 1e6),
                    (W > hw.ranks_per_node ? hw.net_latency_us : hw.link_latency_us),
                    F("lean's crossover", ceil((extra / hw.mem_bw) / (qbytes / bw))));
        }
        /* the context path's crossover for the recommended strategy and for the default one */
        dsacp_cp_options def;
        dsacp_cp_options_default(&def);
        for (int v = 0; v < A->vs->n; v++) {
            if (!okv[v] || (v != best && A->vs->s[v] != def.decode) || variants[v].backend != DSACP_MERGE_AG_RS ||
                variants[v].idx == DSACP_LAYOUT_PARTIAL || variants[v].kv == DSACP_LAYOUT_REPLICATED)
                continue;
            const double esh = (double)(dsacp_mla_cache_bytes_per_token(&cfg, deployed ? DSACP_KV_FP8 : DSACP_KV_F32) +
                                        dsacp_index_cache_bytes_per_token(&cfg, deployed ? DSACP_KV_FP8 : DSACP_KV_F32)) *
                               (double)(W - 1) / (double)W;
            if (W > 1)
                fprintf(out, "chunked prefill with %s: distributed path below %.0f context tokens per chunk token "
                             "(%.1f KB per query token vs %.0f B per context token)\n", variants[v].label,
                        F("context path crossover", r[v].recv_bytes / (double)B / esh), r[v].recv_bytes / (double)B / 1024, esh);
        }
    }
    jstr(R, root, "recommendation", best >= 0 ? variants[best].label : "");
}

/* Chunked prefill (W > 1): a chunk of C tokens after the context, by each context path. */
static int plan_chunks(const plan_args *A, report *R)
{
    const dsacp_hw hw = *A->hw;
    const dsacp_config cfg = A->cfg;
    const int64_t L = A->L, W = A->W, C = A->C;
    const double f = A->f;
    const bool deployed = A->deployed;
    FILE *out = R->txt;
    json_t *root = R->root;
    char where[256];
    int rc = DSACP_OK;
    if (W <= 1) return DSACP_OK;
    {
        /* chunked prefill: a chunk of C tokens after the context, by each context path, priced */
        fprintf(out, "\nchunked prefill: a chunk of %lld tokens after the %lld-token context, per layer on the busiest rank\n",
                (long long)C, (long long)L);
        fprintf(out, "%-40s %11s %9s %11s %9s %14s %12s\n", "strategy", "gather", "MB recv", "distributed", "MB recv",
                "auto (bytes)", "faster");
        jint(R, root, "chunk_tokens", C);
        json_t *chunk = json_array();
        jset(R, root, "chunk", chunk);
        const variant *variants = A->vs->v;
        for (int v = 0; v < A->vs->n && chunk; v++) {
            if (dsacp_decode_strategy_gathers_context(A->vs->s[v])) continue; /* it gathers for decode tokens too */
            dsacp_cp_options cp;
            variant_options(A->vs, v, W, f, &cp);
            if (cp.index_layout == DSACP_LAYOUT_PARTIAL && (W % cp.index_group || W < 2 * cp.index_group)) continue;
            dsacp_plan_decode g, d, a;
            bool dg, dd, da;
            cp.context_path = DSACP_CONTEXT_GATHER;
            if (!rc) rc = dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, deployed, &hw, &g, &dg);
            cp.context_path = DSACP_CONTEXT_DISTRIBUTED;
            if (!rc) rc = dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, deployed, &hw, &d, &dd);
            cp.context_path = DSACP_CONTEXT_AUTO;
            if (!rc) rc = dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, deployed, &hw, &a, &da);
            if (rc) return dsacp_error_context(rc, "chunked prefill, strategy '%s'", variants[v].label);
            const char *faster = d.t_layer < g.t_layer ? "distributed" : "gather";
            snprintf(where, sizeof where, "chunk, strategy '%s': gather", variants[v].label);
            json_t *o = jappend(R, chunk, json_object());
            if (o) {
                jstr(R, o, "strategy", variants[v].label);
                jset(R, o, "gather", chunk_path_json(R, &g, where));
                snprintf(where, sizeof where, "chunk, strategy '%s': distributed", variants[v].label);
                jset(R, o, "distributed", chunk_path_json(R, &d, where));
                jstr(R, o, "auto", da ? "distributed" : "gather");
                jstr(R, o, "faster", faster);
            }
            fprintf(out, "%-40s %9.1fus %9.2f %9.1fus %9.2f %14s %12s\n", variants[v].label, F(where, g.t_layer * 1e6),
                    g.recv_bytes / 1048576, F(where, d.t_layer * 1e6), d.recv_bytes / 1048576, da ? "distributed" : "gather", faster);
        }
    }
    return DSACP_OK;
}

/* Prefill of a fresh --prefill prompt: TTFT by split (plabels/pttft: the plot's bars). */
static int plan_prefill(const plan_args *A, report *R, const char **plabels, double *pttft)
{
    const dsacp_hw hw = *A->hw;
    const dsacp_config cfg = A->cfg;
    const int64_t W = A->W, Pp = A->Pp, layers = A->layers;
    const bool deployed = A->deployed;
    FILE *out = R->txt;
    json_t *root = R->root;
    char where[256];
    int rc;
    if (Pp <= 0) return DSACP_OK;
    {
        /* TTFT of a fresh prompt: TP (indexer replicated), TP with the indexer's rows split
         * (TensorRT-LLM #11871), and the CP engine's splits */
        static const struct {
            const char *label;
            int mode;
            dsacp_prefill_split split;
        } pv[] = {{"TP, indexer replicated", DSACP_PLAN_PREFILL_TP, DSACP_PREFILL_OWNER},
                  {"TP, indexer rows split (TRT-LLM)", DSACP_PLAN_PREFILL_TP_IDXSPLIT, DSACP_PREFILL_OWNER},
                  {"CP owner (I = 1)", DSACP_PLAN_PREFILL_CP, DSACP_PREFILL_OWNER},
                  {"CP contiguous (DSA-CP seed)", DSACP_PLAN_PREFILL_CP, DSACP_PREFILL_CONTIGUOUS},
                  {"CP zigzag", DSACP_PLAN_PREFILL_CP, DSACP_PREFILL_ZIGZAG}};
        fprintf(out, "\nprefill of a %lld-token prompt, per layer on the busiest rank; TTFT = layer x %lld (attention only)\n",
                (long long)Pp, (long long)layers);
        fprintf(out, "%-34s %10s %6s %10s %10s %10s %10s %9s\n", "split", "MB recv", "calls", "compute", "memory", "comm", "TTFT",
                "vs TP");
        jint(R, root, "prefill_tokens", Pp);
        json_t *prefill = json_array();
        jset(R, root, "prefill", prefill);
        double tp = 0;
        for (int v = 0; v < 5 && prefill; v++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.prefill_split = pv[v].split;
            dsacp_plan_decode r2;
            if ((rc = dsacp_plan_prefill_layer(&cfg, &cp, W, Pp, pv[v].mode, deployed, &hw, &r2)))
                return dsacp_error_context(rc, "prefill, split '%s'", pv[v].label);
            const double ttft = r2.t_layer * (double)layers;
            plabels[v] = pv[v].label, pttft[v] = ttft;
            if (v == 0) tp = ttft;
            snprintf(where, sizeof where, "prefill, split '%s':", pv[v].label);
            json_t *o = jappend(R, prefill, json_object());
            if (o) {
                jstr(R, o, "split", pv[v].label);
                jreal(R, o, "recv_bytes", r2.recv_bytes, where);
                jreal(R, o, "calls", r2.calls, where);
                jreal(R, o, "flops", r2.flops, where);
                jreal(R, o, "t_compute", r2.t_compute, where);
                jreal(R, o, "t_memory", r2.t_memory, where);
                jreal(R, o, "t_comm", r2.t_comm, where);
                jreal(R, o, "ttft", ttft, where);
            }
            fprintf(out, "%-34s %10.1f %6.0f %9.3fs %9.3fs %9.3fs %9.2fs %8.2fx\n", pv[v].label, r2.recv_bytes / 1048576, r2.calls,
                    r2.t_compute, r2.t_memory, r2.t_comm, ttft, F(where, tp / ttft));
        }
    }
    return DSACP_OK;
}

/* DSA-CP's weight plans (W > 1). */
static void plan_weights(const plan_args *A, report *R)
{
    const dsacp_hw hw = *A->hw;
    const dsacp_config cfg = A->cfg;
    const int64_t B = A->B, W = A->W, Pp = A->Pp, layers = A->layers;
    const double wbytes = A->wbytes;
    const bool deployed = A->deployed;
    FILE *out = R->txt;
    json_t *root = R->root;
    char where[256];
    /* DSA-CP's weight plans for a step of T tokens (the prompt with --prefill, else the batch):
     * bytes each rank receives per layer for q_b_proj / o_proj, and what it holds */
    if (W <= 1) return;
    {
        const int64_t T = Pp > 0 ? Pp : B;
        static const struct {
            const char *label;
            dsacp_weight_plan q, o;
        } wv[] = {{"replicated q, replicated o", DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_REPLICATED},
                  {"layer-shard q and o (prefill node)", DSACP_WEIGHTS_LAYER_SHARD, DSACP_WEIGHTS_LAYER_SHARD},
                  {"replicated q, tp o: weight gather", DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_TP_GATHER},
                  {"replicated q, tp o: activations", DSACP_WEIGHTS_REPLICATED, DSACP_WEIGHTS_TP_A2A}};
        const double H = (double)cfg.num_attention_heads, dv = (double)cfg.v_head_dim, D = (double)cfg.hidden_size;
        const double wbp = wbytes > 0 ? wbytes : deployed ? 1 : 2;
        const double qb = H * (double)(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) * (double)cfg.q_lora_rank * wbp;
        const double ob = D * H * dv * wbp, Wd = (double)W;
        const bool net = W > hw.ranks_per_node;
        const double bw = net ? hw.net_bw : hw.link_bw, lat = (net ? hw.net_latency_us : hw.link_latency_us) * 1e-6;
        fprintf(out, "\ndsa-cp weight plans, a step of %lld tokens split over %lld ranks, per layer (busiest rank):\n",
                (long long)T, (long long)W);
        fprintf(out, "%-36s %12s %6s %10s %14s\n", "plan", "MB recv", "calls", "comm", "q+o MB held");
        json_t *plans = json_array();
        jset(R, root, "weight_plans", plans);
        for (int v = 0; v < 4 && plans; v++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.mode = DSACP_CP_DSA_CP, cp.q_proj = wv[v].q, cp.o_proj = wv[v].o;
            double recv = 0, calls = 0;
            if (wv[v].q == DSACP_WEIGHTS_LAYER_SHARD) recv += qb, calls += 1; /* non-owner of the layer */
            if (wv[v].o == DSACP_WEIGHTS_LAYER_SHARD) recv += ob, calls += 1;
            if (wv[v].o == DSACP_WEIGHTS_TP_GATHER) recv += ob * (Wd - 1) / Wd, calls += 1;
            if (wv[v].o == DSACP_WEIGHTS_TP_A2A) {
                const double Tq = ceil((double)T / Wd);
                recv += (Wd - 1) * Tq * (H * dv / Wd) * 4 + (Wd - 1) * Tq * D * 4; /* v columns in, partial sums back */
                calls += 2;
            }
            /* held per layer of a model with --layers layers, on rank 1 (owns layers 1, W + 1, ...) */
            dsacp_config cl = cfg;
            cl.num_hidden_layers = layers;
            dsacp_weight_usage u;
            dsacp_plan_weight_usage(&cl, &cp, W, 1 % W, wbp == 1 ? DSACP_F8_E4M3 : wbp == 4 ? DSACP_F32 : DSACP_BF16, 128, &u);
            const double held = (double)(u.q_proj_resident + u.o_proj_resident + u.ring_bytes + u.gather_bytes) / (double)layers;
            snprintf(where, sizeof where, "weight plan '%s':", wv[v].label);
            json_t *o = jappend(R, plans, json_object());
            if (o) {
                jstr(R, o, "plan", wv[v].label);
                jreal(R, o, "recv_bytes", recv, where);
                jreal(R, o, "calls", calls, where);
                jreal(R, o, "t_comm", recv / bw + calls * lat, where);
                jreal(R, o, "weights_held_per_layer", held, where);
            }
            fprintf(out, "%-36s %12.2f %6.0f %8.1fus %14.1f\n", wv[v].label, recv / 1048576, calls,
                    F(where, (recv / bw + calls * lat) * 1e6), held / 1048576);
        }
    }
}
/* One deployment at one load as JSON: its times, null where it does not keep up. */
static json_t *pd_side_json(report *R, const dsacp_plan_pd_side *d, const char *where)
{
    json_t *o = jobject(R);
    if (!o) return NULL;
    jset(R, o, "stable", json_boolean(d->stable));
    jstr(R, o, "limit", d->limit);
    const struct {
        const char *key;
        double v;
    } f[] = {{"ttft", d->ttft}, {"tpot", d->tpot}, {"itl_max", d->itl_max}, {"batch", d->batch}, {"held_per_rank", d->held_per_rank}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (d->stable) jreal(R, o, f[i].key, f[i].v, where);
        else jset(R, o, f[i].key, json_null());
    jreal(R, o, "prefill_util", d->prefill_util, where);
    return o;
}

/* A deployment's cells of the --pd table: TTFT s, TPOT ms, (ITL max ms,) batch; or what saturates. */
static void pd_cells(report *R, const dsacp_plan_pd_side *d, bool itl, const char *where)
{
    if (!d->stable) {
        fprintf(R->txt, " %9s %9s%s %7s", "-", "-", itl ? "         -" : "", d->limit);
        return;
    }
    fprintf(R->txt, " %9.4g %9.4g", F(where, d->ttft), F(where, d->tpot * 1e3));
    if (itl) fprintf(R->txt, " %9.4g", F(where, d->itl_max * 1e3));
    fprintf(R->txt, " %7.1f", F(where, d->batch));
}

/* Which deployment's figures are lower at one load. */
static const char *pd_verdict(const dsacp_plan_pd_side *d, const dsacp_plan_pd_side *m)
{
    if (!d->stable) return m->stable ? "PD-mixed (only it keeps up)" : "neither keeps up";
    if (!m->stable) return "disaggregated (only it keeps up)";
    const bool ttft = d->ttft < m->ttft, tpot = d->tpot < m->tpot;
    return ttft && tpot ? "disaggregated" : ttft ? "disaggregated TTFT, PD-mixed TPOT"
                                        : tpot ? "PD-mixed TTFT, disaggregated TPOT" : "PD-mixed";
}

/* d's figure minus m's (TTFT or TPOT) at one load; a deployment that does not keep up is +inf. */
static double pd_gap(const dsacp_plan_pd_side *d, const dsacp_plan_pd_side *m, bool ttft)
{
    const double a = d->stable ? (ttft ? d->ttft : d->tpot) : INFINITY, b = m->stable ? (ttft ? m->ttft : m->tpot) : INFINITY;
    return isinf(a) && isinf(b) ? NAN : a - b;
}

/* Where the lower of the two deployments changes over the loads rates[0..n) (ascending), at most
 * 4 times: *low whether the disaggregated one is lower at the lightest load; at[k] the loads where
 * the gap crosses 0 (interpolated between the two loads around it), *stop the first load where one
 * of the two stops keeping up (-1: none). Returns the count. */
static int pd_crossover(const double *rates, const dsacp_plan_pd_side *d, const dsacp_plan_pd_side *m, int n, bool ttft,
                        bool *low, double at[4], int *stop)
{
    *low = pd_gap(&d[0], &m[0], ttft) < 0, *stop = !d[0].stable || !m[0].stable ? 0 : -1;
    bool cur = *low;
    int k = 0;
    for (int i = 1; i < n && k < 4 && *stop < 0; i++) {
        const double g = pd_gap(&d[i], &m[i], ttft), gp = pd_gap(&d[i - 1], &m[i - 1], ttft);
        if (!d[i].stable || !m[i].stable) *stop = i;
        else if ((g < 0) != cur) at[k++] = rates[i - 1] + (rates[i] - rates[i - 1]) * gp / (gp - g), cur = g < 0;
    }
    return k;
}

/* The crossovers over a fine sweep of loads (to twice the producers' capacity), printed and in J. */
static int pd_crossovers(const plan_args *A, report *R, const dsacp_cp_options *cp, const dsacp_plan_pd_options *o, double cap,
                         json_t *J)
{
    double rates[PD_RATES_MAX], at[4];
    int stop;
    dsacp_plan_pd q;
    dsacp_plan_pd_side d[PD_RATES_MAX], m[PD_RATES_MAX];
    for (int i = 0; i < PD_RATES_MAX; i++) rates[i] = cap * 0.01 * pow(200.0, (double)i / (PD_RATES_MAX - 1));
    int rc = dsacp_plan_pd_price(&A->cfg, cp, A->hw, o, rates, PD_RATES_MAX, &q, d, m);
    if (rc) return dsacp_error_context(rc, "--pd");
    for (int t = 0; t < 2; t++) {
        bool low;
        const int k = pd_crossover(rates, d, m, PD_RATES_MAX, t == 0, &low, at, &stop);
        json_t *c = jobject(R), *arr = json_array();
        jset(R, J, t == 0 ? "crossover_ttft" : "crossover_tpot", c);
        if (c) jstr(R, c, "lower_at_light_load", stop == 0 ? "" : low ? "disaggregated" : "PD-mixed"), jset(R, c, "rates", arr);
        else json_decref(arr), arr = NULL;
        fprintf(R->txt, "%s lower: %s", t == 0 ? "TTFT" : "TPOT", stop == 0 ? "-" : low ? "disaggregated" : "PD-mixed");
        for (int i = 0; i < k; i++) {
            fprintf(R->txt, " to %.3g requests/s (%.0f%% of the producers' capacity), then %s", F("--pd: crossover", at[i]),
                    at[i] / cap * 100, (i % 2 == 0) == low ? "PD-mixed" : "disaggregated");
            if (arr) jappend(R, arr, json_real(at[i]));
        }
        if (stop >= 0)
            fprintf(R->txt, "%s %.3g requests/s %s", stop ? "; from" : " (from", rates[stop],
                    !d[stop].stable && !m[stop].stable ? "neither keeps up"
                    : !d[stop].stable ? "only PD-mixed keeps up" : "only the disaggregated one keeps up");
        fprintf(R->txt, "%s\n", stop == 0 ? ")" : "");
    }
    return DSACP_OK;
}

/* --pd P:D: the disaggregated deployment against the same ranks run PD-mixed, per load. */
static int plan_pd(const plan_args *A, report *R)
{
    if (A->pd_P <= 0) return DSACP_OK;
    dsacp_cp_options cp;
    dsacp_cp_options_default(&cp);
    const dsacp_plan_pd_options o = {.producers = A->pd_P, .consumers = A->pd_D, .W = A->W, .ep = A->ep, .prompt = A->L,
                                     .output = A->gen_len, .chunk = A->C, .producer_chunk = A->pchunk,
                                     .link_bw = A->link_bw, .link_latency_s = A->link_lat,
                                     .deployed = A->deployed, .weight_bytes = A->wbytes,
                                     .mtp = A->spec.on && A->spec.spec.mtp};
    dsacp_plan_pd q;
    double rates[PD_RATES_MAX];
    int n = A->nrates;
    int rc = dsacp_plan_pd_price(&A->cfg, &cp, A->hw, &o, NULL, 0, &q, NULL, NULL);
    if (rc) return dsacp_error_context(rc, "--pd");
    /* the producers' capacity: their prefill, or the link when it is slower */
    const double cap = fmin((double)A->pd_P / fmax(q.prefill_s, dsacp_plan_link_seconds(&q.sent, 0, q.link_bw, q.link_latency_s)),
                            (double)A->pd_D / dsacp_plan_link_seconds(&q.recv, 1, q.link_bw, q.link_latency_s));
    static const double sweep[] = {0.1, 0.25, 0.5, 0.75, 0.9, 1.25, 1.5, 2.0};
    if (n == 0)
        for (n = 0; n < (int)(sizeof sweep / sizeof sweep[0]); n++) rates[n] = sweep[n] * cap;
    else memcpy(rates, A->rates, (size_t)n * sizeof rates[0]);
    dsacp_plan_pd_side dis[PD_RATES_MAX], mix[PD_RATES_MAX];
    if ((rc = dsacp_plan_pd_price(&A->cfg, &cp, A->hw, &o, rates, n, &q, dis, mix))) return dsacp_error_context(rc, "--pd");
    FILE *out = R->txt;
    const char *where = "--pd:";
    fprintf(out, "\ndisaggregated prefill and decode: %lld producer + %lld consumer instances of W = %lld ranks against %lld "
                 "PD-mixed; prompt %lld, output %lld tokens, %lld-token chunks (a producer's: %lld), decode strategy %s\n",
            (long long)A->pd_P, (long long)A->pd_D, (long long)A->W, (long long)(A->pd_P + A->pd_D), (long long)A->L,
            (long long)A->gen_len, (long long)A->C, (long long)(A->pchunk ? A->pchunk : A->C), dsacp_decode_strategy_name(cp.decode));
    fprintf(out, "transfer per request (%lld chunks x %lld layers): %.1f MB in %lld messages from the busiest producer rank, "
                 "%.1f MB in %lld to the busiest consumer rank; on a %.3g Gb/s link at %.3g us per message %.3g s, %.3g s of it "
                 "after the prefill (%.3g s on a producer; the producers keep up with %.3g requests/s)\n", (long long)q.chunks,
            (long long)(A->layers + (o.mtp ? 1 : 0)),
            (double)q.sent.bytes_sent / 1e6, (long long)q.sent.calls, (double)q.recv.bytes_recv / 1e6, (long long)q.recv.calls,
            q.link_bw * 8 / 1e9, q.link_latency_s * 1e6, F(where, q.transfer_s), F(where, q.transfer_exposed_s),
            F(where, q.prefill_s), F(where, cap));
    fprintf(out, "%10s | %-37s | %-47s | %s\n", "", "disaggregated", "PD-mixed", "");
    fprintf(out, "%10s | %9s %9s %7s %9s | %9s %9s %9s %7s %9s | %s\n", "req/s", "TTFT s", "TPOT ms", "batch", "prefill", "TTFT s",
            "TPOT ms", "ITLmax ms", "batch", "prefill", "lower");
    json_t *pd = jobject(R), *loads = json_array();
    jset(R, R->root, "pd", pd);
    if (pd) {
        jint(R, pd, "producers", A->pd_P), jint(R, pd, "consumers", A->pd_D), jint(R, pd, "prompt", A->L);
        jint(R, pd, "output", A->gen_len), jint(R, pd, "chunk", A->C), jint(R, pd, "producer_chunk", A->pchunk ? A->pchunk : A->C);
        jint(R, pd, "chunks", q.chunks);
        jreal(R, pd, "link_bw", q.link_bw, where), jreal(R, pd, "link_latency_s", q.link_latency_s, where);
        jint(R, pd, "sent_calls", q.sent.calls), jint(R, pd, "sent_bytes", q.sent.bytes_sent);
        jint(R, pd, "recv_calls", q.recv.calls), jint(R, pd, "recv_bytes", q.recv.bytes_recv);
        jreal(R, pd, "transfer_s", q.transfer_s, where), jreal(R, pd, "transfer_exposed_s", q.transfer_exposed_s, where);
        jreal(R, pd, "prefill_s", q.prefill_s, where), jreal(R, pd, "producer_capacity", cap, where);
        jset(R, pd, "loads", loads);
    } else json_decref(loads), loads = NULL;
    for (int i = 0; i < n; i++) {
        fprintf(out, "%10.3g |", rates[i]);
        pd_cells(R, &dis[i], false, where);
        fprintf(out, " %8.0f%% |", dis[i].prefill_util * 100);
        pd_cells(R, &mix[i], true, where);
        fprintf(out, " %8.0f%% | %s\n", mix[i].prefill_util * 100, pd_verdict(&dis[i], &mix[i]));
        json_t *l = loads ? jappend(R, loads, json_object()) : NULL;
        if (!l) continue;
        jreal(R, l, "rate", rates[i], where);
        jset(R, l, "disaggregated", pd_side_json(R, &dis[i], where));
        jset(R, l, "mixed", pd_side_json(R, &mix[i], where));
        jstr(R, l, "lower", pd_verdict(&dis[i], &mix[i]));
    }
    return pd_crossovers(A, R, &cp, &o, cap, pd);
}
#undef F

/* --speculative-config: each priced strategy's TPOT with k drafts (cli_plan_spec.c). */
static int plan_spec(const plan_args *A, report *R, const bool *okv)
{
    if (!A->spec.on) return DSACP_OK;
    cli_plan_spec_row sr[NV_MAX];
    int n = 0;
    for (int v = 0; v < A->vs->n; v++)
        if (okv[v]) {
            sr[n].label = A->vs->v[v].label;
            variant_options(A->vs, v, A->W, A->f, &sr[n++].cp);
        }
    return cli_plan_spec_section(R->txt, R->root, &A->spec, &A->cfg, sr, n, A->W, A->ep, A->L, A->B, A->deployed,
                                 A->wbytes, A->hw);
}

static int plan_report(const plan_args *A, report *R, dsacp_plan_decode *r, bool *okv, const char **plabels, double *pttft)
{
    int best = -1;
    plan_header(A, R);
    int rc = plan_decode(A, R, r, okv, &best);
    if (rc) return rc;
    plan_recommend(A, R, r, okv, best);
    if ((rc = plan_spec(A, R, okv))) return rc;
    if ((rc = plan_chunks(A, R)) || (rc = plan_prefill(A, R, plabels, pttft))) return rc;
    plan_weights(A, R);
    return plan_pd(A, R);
}

/* --pd P:D and the flags that go with it (--link-gbps, --link-latency-us, --rate R[,R...],
 * --gen-len); false after the error naming the flag. */
static bool pd_flags(const cli_opt *opts, plan_args *A)
{
    static const char *const with[] = {"link-gbps", "link-latency-us", "rate", "gen-len", "producer-chunk"};
    const char *pd = cli_get(opts, "pd"), *s;
    for (size_t i = 0; i < sizeof with / sizeof with[0] && !pd; i++)
        if (cli_get(opts, with[i])) {
            fprintf(stderr, "dsacp plan: option '--%s' prices a disaggregated deployment: it needs '--pd P:D'\n", with[i]);
            return false;
        }
    A->gen_len = 1024;
    if (!pd) return true;
    const char *colon = strchr(pd, ':');
    char left[32];
    const size_t n = colon ? (size_t)(colon - pd) : 0;
    bool ok = colon && n < sizeof left;
    if (ok) memcpy(left, pd, n), left[n] = 0;
    ok = ok && cli_parse_i64(left, &A->pd_P) && cli_parse_i64(colon + 1, &A->pd_D) && A->pd_P >= 1 && A->pd_D >= 1 &&
         A->pd_P <= 4096 && A->pd_D <= 4096;
    if (!ok) {
        fprintf(stderr, "dsacp plan: option '--pd' = '%s': P:D, the producer and the consumer instance counts (each 1 to 4096)\n",
                pd);
        return false;
    }
    double x;
    if ((s = cli_get(opts, "link-gbps"))) {
        if (!cli_double("plan", "link-gbps", s, 0.008, 8e6, &x)) return false;
        A->link_bw = x * 1e9 / 8;
    }
    if ((s = cli_get(opts, "link-latency-us"))) {
        if (!cli_double("plan", "link-latency-us", s, 1e-3, 1e6, &x)) return false;
        A->link_lat = x * 1e-6;
    }
    if ((s = cli_get(opts, "gen-len")) && !cli_int("plan", "gen-len", s, 1, (int64_t)1 << 24, &A->gen_len)) return false;
    if ((s = cli_get(opts, "producer-chunk")) && !cli_int("plan", "producer-chunk", s, 1, (int64_t)1 << 20, &A->pchunk))
        return false;
    if (A->C > (int64_t)1 << 20) {
        fprintf(stderr, "dsacp plan: option '--chunk' = %lld: with '--pd' at most 1048576\n", (long long)A->C);
        return false;
    }
    const char *rates = cli_get(opts, "rate");
    for (const char *r = rates && !*rates ? "," : rates; r && *r;) {
        const char *comma = strchr(r, ',');
        const size_t len = comma ? (size_t)(comma - r) : strlen(r);
        char one[64];
        ok = len < sizeof one && A->nrates < PD_RATES_MAX;
        if (ok) memcpy(one, r, len), one[len] = 0;
        if (!ok || !cli_parse_f64(one, &x) || !(x > 0 && x <= 1e9)) {
            fprintf(stderr, "dsacp plan: option '--rate' = '%s': up to %d request rates per second, each in (0, 1e9], "
                    "separated by commas\n", rates, PD_RATES_MAX);
            return false;
        }
        A->rates[A->nrates++] = x;
        r = comma ? comma + 1 : r + len;
        if (comma && !*r) r = ","; /* a trailing comma: refused on the next turn */
    }
    return true;
}

int cli_plan(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},    {"preset", true, NULL},   {"context", true, NULL},
                      {"batch", true, NULL},    {"cp", true, NULL},       {"hardware", true, NULL},
                      {"numerics", true, NULL}, {"json", true, NULL},     {"calibrate", true, NULL},
                      {"lean-candidates", true, NULL}, {"layers", true, NULL}, {"prefill", true, NULL},
                      {"weight-bytes", true, NULL}, {"plot", true, NULL}, {"chunk", true, NULL}, {"ep", true, NULL},
                      {"pd", true, NULL}, {"link-gbps", true, NULL}, {"link-latency-us", true, NULL}, {"rate", true, NULL},
                      {"gen-len", true, NULL}, {"producer-chunk", true, NULL}, {"speculative-config", true, NULL},
                      {"spec-acceptance-rate", true, NULL}, {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *s;
    if ((s = cli_get(opts, "calibrate"))) {
        int rc = calibrate(s);
        if (rc) cli_fail("plan", rc);
        return rc ? cli_output_exit(rc) : 0; /* 2 when the profile would replace an input */
    }
    variant_list vs;
    variants_build(&vs);
    plan_args A = {.model = cli_get(opts, "model"), .preset = cli_get(opts, "preset"), .hwp = cli_get(opts, "hardware"),
                   .L = 131072, .B = 1, .W = 8, .Pp = 0, .C = 2048, .ep = 0, .f = 2.0, .wbytes = 0, .deployed = true,
                   .vs = &vs};
    if (!A.model == !A.preset) {
        fprintf(stderr, "dsacp plan: give exactly one of '--model DIR' and '--preset NAME'\n");
        return 2;
    }
    if (!A.hwp) {
        fprintf(stderr, "dsacp plan: '--hardware FILE.json' is needed (the profiles in hardware/, or one written by "
                        "'mpirun -np W dsacp plan --calibrate FILE.json')\n");
        return 2;
    }
    /* every numeric flag through the one strict parser (cli.h) */
    if ((s = cli_get(opts, "context")) && !cli_int("plan", "context", s, 1, (int64_t)1 << 32, &A.L)) return 2;
    if ((s = cli_get(opts, "batch")) && !cli_int("plan", "batch", s, 1, 1 << 16, &A.B)) return 2;
    if ((s = cli_get(opts, "cp")) && !cli_int("plan", "cp", s, 1, 4096, &A.W)) return 2;
    if ((s = cli_get(opts, "prefill")) && !cli_int("plan", "prefill", s, 1, (int64_t)1 << 24, &A.Pp)) return 2;
    if ((s = cli_get(opts, "chunk")) && !cli_int("plan", "chunk", s, 1, (int64_t)1 << 24, &A.C)) return 2;
    if ((s = cli_get(opts, "ep")) && !cli_int("plan", "ep", s, 1, 4096, &A.ep)) return 2;
    if ((s = cli_get(opts, "lean-candidates")) && !cli_double("plan", "lean-candidates", s, 1, 1024, &A.f)) return 2;
    if ((s = cli_get(opts, "weight-bytes"))) {
        if (!cli_double("plan", "weight-bytes", s, 1, 4, &A.wbytes)) return 2;
        if (A.wbytes != 1 && A.wbytes != 2 && A.wbytes != 4) {
            fprintf(stderr, "dsacp plan: option '--weight-bytes' = '%s': 1 (fp8), 2 (bf16) or 4 (f32)\n", s);
            return 2;
        }
    }
    if (!pd_flags(opts, &A)) return 2;
    if (!cli_plan_spec_flags(cli_get(opts, "speculative-config"), cli_get(opts, "spec-acceptance-rate"), &A.spec)) return 2;
    if ((s = cli_get(opts, "numerics"))) {
        if (!strcmp(s, "exact")) A.deployed = false;
        else if (strcmp(s, "deployed")) {
            fprintf(stderr, "dsacp plan: option '--numerics' must be exact or deployed, got '%s'\n", s);
            return 2;
        }
    }
    const char *jpath = cli_get(opts, "json"), *ppath = cli_get(opts, "plot");
    if (ppath) {
        const size_t n = strlen(ppath);
        if (n < 5 || (strcmp(ppath + n - 4, ".svg") && strcmp(ppath + n - 4, ".png"))) {
            fprintf(stderr, "dsacp plan: option '--plot' = '%s': an .svg or .png file\n", ppath);
            return 2;
        }
    }
    if (jpath && ppath && cli_same_file(jpath, ppath)) {
        fprintf(stderr, "dsacp plan: options '--json' and '--plot' name the same file '%s'\n", jpath);
        return 2;
    }
    dsacp_hw hw;
    int rc = dsacp_hw_load(A.hwp, &hw);
    if (rc) return invocation_fail(dsacp_error_context(rc, "--hardware"));
    A.hw = &hw;
    dsacp_model *m = NULL;
    if (A.preset) rc = dsacp_plan_preset(A.preset, &A.cfg);
    else if (!(rc = dsacp_model_load(A.model, &m))) A.cfg = *dsacp_model_config(m);
    dsacp_model_free(m); /* only its configuration is planned */
    if (rc) return invocation_fail(rc);
    if (A.spec.on && A.spec.spec.mtp && A.cfg.num_nextn_predict_layers < 1) {
        fprintf(stderr, "dsacp plan: option '--speculative-config': method mtp, but the model has no MTP layer "
                        "(num_nextn_predict_layers 0)\n");
        return 2;
    }
    A.layers = A.cfg.num_hidden_layers;
    if ((s = cli_get(opts, "layers")) && !cli_int("plan", "layers", s, 1, 4096, &A.layers)) return 2;
    /* expert parallelism: as given; else replicated experts when the whole model fits a rank
     * at half its memory (dsacp's engine), else spread over the W ranks (or the largest divisor
     * of the routed experts not above W) */
    const int64_t W = A.W;
    if (A.ep > W || (A.ep > 0 && A.cfg.n_routed_experts > 0 && A.cfg.n_routed_experts % A.ep)) {
        fprintf(stderr, "dsacp plan: option '--ep' = %lld: at most --cp (%lld) and a divisor of the %lld routed experts\n",
                (long long)A.ep, (long long)W, (long long)A.cfg.n_routed_experts);
        return 2;
    }
    if (A.ep == 0) {
        dsacp_cp_options cp0;
        dsacp_cp_options_default(&cp0);
        dsacp_plan_model pm0;
        dsacp_config c1 = A.cfg;
        c1.num_hidden_layers = A.layers;
        A.ep = 1;
        if (!dsacp_plan_decode_model(&c1, &cp0, W, 1, A.L, A.B, A.deployed, A.wbytes, &hw, &pm0) &&
            pm0.weights_per_rank > hw.mem_bytes / 2)
            for (A.ep = W; A.ep > 1 && A.cfg.n_routed_experts > 0 && A.cfg.n_routed_experts % A.ep; A.ep--) {}
        if (A.cfg.n_routed_experts == 0) A.ep = 1;
    }
    A.cfg.num_hidden_layers = A.layers; /* the whole model's layers for the weights and the MLPs */

    /* The outputs before any work: a path that cannot be written fails now, with nothing printed. */
    dsacp_out jo = {.fd = -1}, po = {.fd = -1};
    if ((rc = cli_check_not_input("json", jpath)) || (rc = cli_check_not_input("plot", ppath))) {
        cli_fail("plan", dsacp_error_context(rc, "%s", cli_check_not_input("json", jpath) ? "--json" : "--plot"));
        return 2; /* an output naming an input (the profile, the model's files): a bad invocation */
    }
    if (jpath && (rc = dsacp_out_open(&jo, jpath))) return cli_fail("plan", dsacp_error_context(rc, "--json"));
    if (ppath && (rc = dsacp_out_open(&po, ppath))) {
        dsacp_out_abort(&jo);
        return cli_fail("plan", dsacp_error_context(rc, "--plot"));
    }
    report R = {0};
    R.txt = open_memstream(&R.text, &R.len);
    R.root = json_object();
    if (!R.txt || !R.root) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    dsacp_plan_decode r[NV_MAX];
    bool okv[NV_MAX] = {0};
    const char *plabels[5] = {NULL};
    double pttft[5] = {0};
    if (!rc) rc = plan_report(&A, &R, r, okv, plabels, pttft);
    if (R.txt) {
        const bool bad = ferror(R.txt) != 0;
        if ((fclose(R.txt) != 0 || bad) && !rc) rc = dsacp_error(DSACP_ENOMEM, "out of memory");
        R.txt = NULL;
    }
    if (!rc && R.oom) rc = dsacp_error(DSACP_ENOMEM, "out of memory building the report");
    if (!rc && R.bad[0])
        rc = dsacp_error(DSACP_ERANGE, "plan: %s is not finite: the profile or the sizes overflow the model", R.bad);
    /* the files: every byte written before either is committed */
    char *jtext = NULL;
    uint8_t *ptext = NULL;
    size_t plen = 0;
    if (!rc && jpath) {
        jtext = json_dumps(R.root, JSON_PRESERVE_ORDER);
        rc = jtext ? dsacp_out_write(&jo, jtext, strlen(jtext)) : dsacp_error(DSACP_ENOMEM, "out of memory writing --json");
        if (!rc) rc = dsacp_out_write(&jo, "\n", 1);
    }
    if (!rc && ppath) {
        char title[512];
        snprintf(title, sizeof title, "%s, context %lld, batch %lld, W = %lld, %s", A.preset ? A.preset : A.model,
                 (long long)A.L, (long long)A.B, (long long)W, hw.name);
        rc = render_plot(ppath, title, vs.v, r, okv, vs.n, (double)A.layers, plabels, pttft, A.Pp > 0 ? 5 : 0, A.Pp, &ptext,
                         &plen);
        if (!rc) rc = dsacp_out_write(&po, ptext, plen);
    }
    if (!rc && jpath) rc = dsacp_out_commit(&jo);
    if (!rc && ppath) rc = dsacp_out_commit(&po);
    dsacp_out_abort(&jo), dsacp_out_abort(&po); /* the temporaries of a failed run (no-ops once committed) */
    if (!rc) rc = print_stdout(R.text, R.len, "");
    free(jtext), free(ptext), free(R.text);
    json_decref(R.root);
    if (!rc) return 0;
    cli_fail("plan", rc);
    /* sizes or a profile beyond what the model can price (a figure that is not finite, byte
     * counts past 64 bits): the invocation (2); anything else failed the run (1) */
    return rc == DSACP_ERANGE ? 2 : 1;
}

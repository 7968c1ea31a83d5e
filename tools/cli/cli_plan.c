/*
 * cli_plan.c -- `dsacp plan`: what each decode strategy of a CP deployment would move, hold and
 * cost per layer, from the formulas test_cp checks against the counters (src/plan) and a hardware
 * profile (one of the files in hardware/, or this machine's, measured by --calibrate under mpirun).
 * docs/planning.md explains the model and its limits.
 */
#include "cli.h"
#include "comm/comm.h"
#include "core/core.h"
#include "dsacp_plan.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "plot.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct variant {
    const char *label;
    dsacp_decode_strategy s;
    dsacp_cp_layout kv, idx;
    int64_t group;
    dsacp_lean_merge merge;
    dsacp_merge_backend backend;
} variant;

#define S_ DSACP_LAYOUT_SHARDED
#define R_ DSACP_LAYOUT_REPLICATED
static const variant variants[] = {
    /* no context parallelism: every rank keeps the whole cache and runs its heads (tensor parallel
     * attention: the engine's DCP path with both layouts replicated moves only o_proj's sums) */
    {"TP, no CP (caches replicated)", DSACP_DECODE_ALLGATHER_KV, R_, R_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"allgather-kv (vllm-ascend #6563)", DSACP_DECODE_ALLGATHER_KV, S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"replicated-index (vllm-ascend, SGLang)", DSACP_DECODE_REPLICATED_INDEX, S_, R_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"exact-topk ag_rs (vLLM)", DSACP_DECODE_EXACT_TOPK, S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"exact-topk a2a (Helix merge)", DSACP_DECODE_EXACT_TOPK, S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_A2A},
    {"exact-topk partial:2", DSACP_DECODE_EXACT_TOPK, S_, DSACP_LAYOUT_PARTIAL, 2, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"lean output", DSACP_DECODE_LEAN, S_, S_, 1, DSACP_LEAN_MERGE_OUTPUT, DSACP_MERGE_AG_RS},
    {"lean values a2a", DSACP_DECODE_LEAN, S_, S_, 1, DSACP_LEAN_MERGE_VALUES, DSACP_MERGE_A2A},
};
#undef S_
#undef R_
enum { NV = sizeof variants / sizeof variants[0] };

/* --calibrate: this machine as a profile (peak from an sgemm, bandwidth from a copy, links from
 * timed all-gathers over the run's ranks). Collective. */
static int calibrate(const char *path)
{
    if (!cli_world) return dsacp_error(DSACP_EINVAL, "--calibrate: no process group (internal error)");
    const int W = dsacp_comm_size(cli_world), me = dsacp_comm_rank(cli_world);
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
        dsacp_weight w = {.name = "calibrate", .dtype = DSACP_F32, .ndim = 2, .rows = N, .cols = K, .data = x};
        float *xv = malloc((size_t)K * 4), *yv = malloc((size_t)N * 4);
        if (!xv || !yv) rc = dsacp_error(DSACP_ENOMEM, "out of memory for --calibrate");
        for (int64_t i = 0; !rc && i < K; i++) xv[i] = 1.0f / (float)(1 + i % 5);
        for (int64_t i = 0; !rc && i < N * K; i++) ((float *)x)[i] = 1.0f / (float)(1 + i % 3);
        best = 1e30;
        for (int r = 0; r < 4 && !rc; r++) {
            const double t0 = dsacp_now();
            rc = dsacp_linear(&w, xv, 1, K, yv, N, false);
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
    if (rc) return rc;
    char text[1024];
    const int len = snprintf(text, sizeof text,
                             "{\n  \"name\": \"this machine, %d rank%s (dsacp plan --calibrate)\",\n"
                             "  \"source\": \"measured by dsacp plan --calibrate: sgemm %d^3 (OpenBLAS, %d threads); mem_bw: "
                             "the engine's linear kernel on one token over a %zu MB f32 matrix (a copy moved %.3g B/s); "
                             "all-gathers of 8 MB and 4 B over %d ranks\",\n"
                             "  \"flops_bf16\": %.4g,\n  \"flops_fp8\": %.4g,\n  \"mem_bw\": %.4g,\n  \"mem_bytes\": %.4g,\n"
                             "  \"ranks_per_node\": %d,\n  \"link_bw\": %.4g,\n  \"link_latency_us\": %.4g,\n"
                             "  \"net_bw\": %.4g,\n  \"net_latency_us\": %.4g\n}\n",
                             W, W == 1 ? "" : "s", n, omp_get_max_threads(), big >> 20, copy_bw, W, flops, flops, bw, 8e9, W,
                             lbw, lat, lbw, lat);
    if (me == 0) rc = dsacp_write_file_atomic(path, text, (size_t)len);
    rc = dsacp_comm_agree(cli_world, rc);
    if (!rc && me == 0) printf("%s", text);
    return rc;
}

/* --plot FILE.svg|png: one horizontal bar per strategy, TPOT split into the attention layers'
 * compute or memory part and their communication part, and the KV per rank beside it; with
 * --prefill one bar per prefill split. Written atomically. */
static int write_plot(const char *path, const char *title, const variant *vs, const dsacp_plan_decode *r, const bool *ok,
                      int n, double layers, const char *const *plabel, const double *pttft, int np, int64_t P)
{
    /* the scale: the largest bar within 10x of the smallest; longer ones are cut (their value printed) */
    double tmin = 1e30, tmax = 0;
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
    int rc = plot_write(pl, path);
    plot_free(pl);
    return rc;
}

int cli_plan(int argc, char **argv)
{
    cli_opt opts[] = {{"model", true, NULL},    {"preset", true, NULL},   {"context", true, NULL},
                      {"batch", true, NULL},    {"cp", true, NULL},       {"hardware", true, NULL},
                      {"numerics", true, NULL}, {"json", true, NULL},     {"calibrate", true, NULL},
                      {"lean-candidates", true, NULL}, {"layers", true, NULL}, {"prefill", true, NULL},
                      {"weight-bytes", true, NULL}, {"plot", true, NULL}, {"chunk", true, NULL}, {"ep", true, NULL},
                      {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const char *s;
    if ((s = cli_get(opts, "calibrate"))) {
        int rc = calibrate(s);
        return rc ? cli_fail("plan", rc) : 0;
    }
    const char *model = cli_get(opts, "model"), *preset = cli_get(opts, "preset"), *hwp = cli_get(opts, "hardware");
    if (!model == !preset) {
        fprintf(stderr, "dsacp plan: give exactly one of '--model DIR' and '--preset NAME'\n");
        return 2;
    }
    if (!hwp) {
        fprintf(stderr, "dsacp plan: '--hardware FILE.json' is needed (the profiles in hardware/, or one written by "
                        "'mpirun -np W dsacp plan --calibrate FILE.json')\n");
        return 2;
    }
    int64_t L = 131072, B = 1, W = 8, Pp = 0, C = 2048, ep = 0;
    double f = 2.0;
    if ((s = cli_get(opts, "context")) && !cli_int("plan", "context", s, 1, (int64_t)1 << 32, &L)) return 2;
    if ((s = cli_get(opts, "batch")) && !cli_int("plan", "batch", s, 1, 1 << 16, &B)) return 2;
    if ((s = cli_get(opts, "cp")) && !cli_int("plan", "cp", s, 1, 4096, &W)) return 2;
    if ((s = cli_get(opts, "prefill")) && !cli_int("plan", "prefill", s, 1, (int64_t)1 << 24, &Pp)) return 2;
    if ((s = cli_get(opts, "chunk")) && !cli_int("plan", "chunk", s, 1, (int64_t)1 << 24, &C)) return 2;
    if ((s = cli_get(opts, "ep")) && !cli_int("plan", "ep", s, 1, 4096, &ep)) return 2;
    if ((s = cli_get(opts, "lean-candidates"))) {
        char *end;
        f = strtod(s, &end);
        if (end == s || *end || !(f >= 1 && f <= 1024)) {
            fprintf(stderr, "dsacp plan: option '--lean-candidates' = '%s': a number in [1, 1024]\n", s);
            return 2;
        }
    }
    bool deployed = true;
    double wbytes = 0;
    if ((s = cli_get(opts, "weight-bytes"))) {
        char *end;
        wbytes = strtod(s, &end);
        if (end == s || *end || !(wbytes == 1 || wbytes == 2 || wbytes == 4)) {
            fprintf(stderr, "dsacp plan: option '--weight-bytes' = '%s': 1 (fp8), 2 (bf16) or 4 (f32)\n", s);
            return 2;
        }
    }
    if ((s = cli_get(opts, "numerics"))) {
        if (!strcmp(s, "exact")) deployed = false;
        else if (strcmp(s, "deployed")) {
            fprintf(stderr, "dsacp plan: option '--numerics' must be exact or deployed, got '%s'\n", s);
            return 2;
        }
    }
    dsacp_hw hw;
    int rc = dsacp_hw_load(hwp, &hw);
    if (rc) return cli_fail("plan", rc);
    dsacp_config cfg;
    dsacp_model *m = NULL;
    if (preset) rc = dsacp_plan_preset(preset, &cfg);
    else if (!(rc = dsacp_model_load(model, &m))) cfg = *dsacp_model_config(m);
    if (rc) return cli_fail("plan", rc);
    int64_t layers = cfg.num_hidden_layers;
    if ((s = cli_get(opts, "layers")) && !cli_int("plan", "layers", s, 1, 4096, &layers)) {
        dsacp_model_free(m);
        return 2;
    }
    /* expert parallelism: as given; else replicated experts when the whole model fits a rank
     * at half its memory (dsacp's engine), else spread over the W ranks (or the largest divisor
     * of the routed experts not above W) */
    if (ep > W || (ep > 0 && cfg.n_routed_experts > 0 && cfg.n_routed_experts % ep)) {
        fprintf(stderr, "dsacp plan: option '--ep' = %lld: at most --cp (%lld) and a divisor of the %lld routed experts\n",
                (long long)ep, (long long)W, (long long)cfg.n_routed_experts);
        dsacp_model_free(m);
        return 2;
    }
    if (ep == 0) {
        dsacp_cp_options cp0;
        dsacp_cp_options_default(&cp0);
        dsacp_plan_model pm0;
        dsacp_config c1 = cfg;
        c1.num_hidden_layers = layers;
        ep = 1;
        if (!dsacp_plan_decode_model(&c1, &cp0, W, 1, L, B, deployed, wbytes, &hw, &pm0) && pm0.weights_per_rank > hw.mem_bytes / 2)
            for (ep = W; ep > 1 && cfg.n_routed_experts > 0 && cfg.n_routed_experts % ep; ep--) {}
        if (cfg.n_routed_experts == 0) ep = 1;
    }
    cfg.num_hidden_layers = layers; /* the whole model's layers for the weights and the MLPs */
    FILE *js = NULL;
    char *jtext = NULL;
    size_t jlen = 0;
    if (cli_get(opts, "json")) js = open_memstream(&jtext, &jlen);
    printf("dsacp plan: %s, context %lld, batch %lld, W = %lld, %s numerics, %s\n", preset ? preset : model,
           (long long)L, (long long)B, (long long)W, deployed ? "deployed" : "exact", hw.name);
    printf("per attention layer, busiest rank; t = max(compute, memory) + bytes / link + calls x latency; model: + MLP / MoE\n"
           "(experts %s) + lm_head; held: batch x KV + weights per rank for the %lld layers ('!' beyond 90%% of the memory)\n",
           ep > 1 ? "spread over ranks, --ep" : "replicated", (long long)layers);
    if (ep > 1) printf("expert parallelism over %lld ranks\n", (long long)ep);
    printf("%-40s %10s %6s %9s %10s %9s %9s %9s %9s %9s %10s %10s %9s\n", "strategy", "KB/token", "calls", "KV MB",
           "weights MB", "compute", "memory", "comm", "hidden", "layer", "x layers", "model", "held GB");
    if (js)
        fprintf(js, "{\"context\": %lld, \"batch\": %lld, \"world\": %lld, \"numerics\": \"%s\", \"hardware\": \"%s\", "
                    "\"mem_bytes\": %.4g, \"layers\": %lld, \"ep\": %lld, \"strategies\": [", (long long)L, (long long)B,
                (long long)W, deployed ? "deployed" : "exact", hw.name, hw.mem_bytes, (long long)layers, (long long)ep);
    int best = -1;
    double tbest = 0;
    dsacp_plan_decode r[NV];
    bool okv[NV] = {0};
    for (int v = 0; v < NV; v++) {
        dsacp_cp_options cp;
        dsacp_cp_options_default(&cp);
        cp.decode = variants[v].s, cp.kv_layout = variants[v].kv, cp.index_layout = variants[v].idx;
        cp.index_group = variants[v].group;
        cp.lean_merge = variants[v].merge, cp.merge_backend = variants[v].backend, cp.lean_factor = f;
        if (cp.index_layout == DSACP_LAYOUT_PARTIAL && (W % cp.index_group || W < 2 * cp.index_group)) continue;
        dsacp_plan_model pm;
        if (dsacp_plan_decode_model(&cfg, &cp, W, ep, L, B, deployed, wbytes, &hw, &pm)) continue;
        r[v] = pm.layer;
        okv[v] = true;
        const double held = (double)B * r[v].kv_bytes_per_rank * (double)layers + pm.weights_per_rank;
        printf("%-40s %10.1f %6.0f %9.2f %10.1f %7.1fus %7.1fus %7.1fus %7.1fus %7.1fus %8.2fms %8.2fms %8.1f%s\n",
               variants[v].label, r[v].recv_bytes / 1024 / (double)B, r[v].calls, r[v].kv_bytes_per_rank / 1048576,
               r[v].weight_bytes / 1048576, r[v].t_compute * 1e6, r[v].t_memory * 1e6, r[v].t_comm * 1e6, r[v].t_hidden * 1e6,
               r[v].t_layer * 1e6, r[v].t_layer * 1e3 * (double)layers, pm.tpot * 1e3, held / 1e9,
               held > 0.9 * hw.mem_bytes ? "!" : "");
        if (js)
            fprintf(js, "%s{\"strategy\": \"%s\", \"recv_bytes_per_token\": %.0f, \"calls\": %.0f, \"kv_bytes_per_rank\": %.0f, "
                        "\"weight_bytes\": %.0f, \"flops\": %.4g, \"t_compute\": %.4g, \"t_memory\": %.4g, \"t_comm\": %.4g, "
                        "\"t_hidden\": %.4g, \"t_layer\": %.4g, \"tpot\": %.4g, \"tpot_model\": %.4g, \"t_mlp\": %.4g, \"t_moe_comm\": %.4g, "
                        "\"t_head\": %.4g, \"weights_per_rank\": %.0f, \"held_per_rank\": %.0f, \"fits\": %s",
                    v ? ", " : "", variants[v].label, r[v].recv_bytes / (double)B, r[v].calls, r[v].kv_bytes_per_rank,
                    r[v].weight_bytes, r[v].flops, r[v].t_compute, r[v].t_memory, r[v].t_comm, r[v].t_hidden, r[v].t_layer,
                    r[v].t_layer * (double)layers, pm.tpot, pm.t_mlp, pm.t_moe_comm, pm.t_head, pm.weights_per_rank, held,
                    held <= 0.9 * hw.mem_bytes ? "true" : "false");
        if (js) {
            /* per collective phase on the busiest rank, per layer: calls and bytes received */
            fprintf(js, ", \"phases\": {");
            for (int p = 0, first = 1; p < DSACP_PHASE_COUNT; p++) {
                if (r[v].calls_phase[p] == 0 && r[v].recv_phase[p] == 0) continue;
                fprintf(js, "%s\"%s\": {\"calls\": %.0f, \"recv_bytes\": %.0f}", first ? "" : ", ", dsacp_comm_phase_name(p),
                        r[v].calls_phase[p], r[v].recv_phase[p]);
                first = 0;
            }
            fprintf(js, "}}");
        }
        if (best < 0 || r[v].t_layer < tbest) best = v, tbest = r[v].t_layer;
    }
    if (best >= 0) {
        const dsacp_plan_decode *b = &r[best];
        printf("recommendation: %s -- %.1f us per layer (%s-bound: compute %.1f us, memory %.1f us; communication %.1f us "
               "for %.1f KB in %.0f calls)\n", variants[best].label, b->t_layer * 1e6,
               b->t_compute > b->t_memory ? "compute" : "memory", b->t_compute * 1e6, b->t_memory * 1e6, b->t_comm * 1e6,
               b->recv_bytes / 1024, b->calls);
        /* DSA-CP's o_proj: gathering the weight (once per step) vs moving activations (per token) */
        if (W > 1) {
            const double ob = (double)cfg.hidden_size * (double)(cfg.num_attention_heads * cfg.v_head_dim) * (deployed ? 1 : 2);
            const double g = (double)(W - 1) / (double)W * ob;
            const double a1 = (double)(W - 1) / (double)W *
                              ((double)(cfg.num_attention_heads * cfg.v_head_dim) * 4 / (double)W + (double)cfg.hidden_size * 4);
            printf("dsa-cp o_proj tp: gathering the weight moves fewer bytes than the activations from %.0f tokens per step "
                   "(%.1f MB vs %.1f KB per token)\n", g / a1, g / 1048576, a1 / 1024);
            /* lean replicates q_b_proj and W_UK: extra weight reads per step vs the query rows it does not gather */
            const double H = (double)cfg.num_attention_heads, dk = (double)(cfg.kv_lora_rank + cfg.qk_rope_head_dim);
            const double extra = (H - H / (double)W) * ((double)cfg.q_lora_rank * (double)(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) +
                                                        (double)cfg.qk_nope_head_dim * (double)cfg.kv_lora_rank) * (deployed ? 1 : 2);
            const double qbytes = (H - H / (double)W) * dk * 4;
            const double bw = W > hw.ranks_per_node ? hw.net_bw : hw.link_bw;
            printf("lean's replicated query: +%.1f MB of weight reads per step (%.1f us) against %.1f KB per token not gathered "
                   "(%.2f us) and one round (%.1f us): pays from %.0f tokens per step, or at once when the round counts\n",
                   extra / 1048576, extra / hw.mem_bw * 1e6, qbytes / 1024, qbytes / bw * 1e6,
                   (W > hw.ranks_per_node ? hw.net_latency_us : hw.link_latency_us),
                   ceil((extra / hw.mem_bw) / (qbytes / bw)));
        }
        /* the context path's crossover for the recommended strategy and for exact-topk */
        for (int v = 0; v < NV; v++) {
            if (!okv[v] || (v != best && variants[v].s != DSACP_DECODE_EXACT_TOPK) || variants[v].backend != DSACP_MERGE_AG_RS ||
                variants[v].idx == DSACP_LAYOUT_PARTIAL || variants[v].kv == DSACP_LAYOUT_REPLICATED)
                continue;
            const double esh = (double)(dsacp_mla_cache_bytes_per_token(&cfg, deployed ? DSACP_KV_FP8 : DSACP_KV_F32) +
                                        dsacp_index_cache_bytes_per_token(&cfg, deployed ? DSACP_KV_FP8 : DSACP_KV_F32)) *
                               (double)(W - 1) / (double)W;
            if (W > 1)
                printf("chunked prefill with %s: distributed path below %.0f context tokens per chunk token "
                       "(%.1f KB per query token vs %.0f B per context token)\n", variants[v].label,
                       r[v].recv_bytes / (double)B / esh, r[v].recv_bytes / (double)B / 1024, esh);
        }
    }
    if (js) fprintf(js, "], \"recommendation\": \"%s\"", best >= 0 ? variants[best].label : "");
    if (W > 1) {
        /* chunked prefill: a chunk of C tokens after the context, by each context path, priced */
        printf("\nchunked prefill: a chunk of %lld tokens after the %lld-token context, per layer on the busiest rank\n",
               (long long)C, (long long)L);
        printf("%-40s %11s %9s %11s %9s %14s %12s\n", "strategy", "gather", "MB recv", "distributed", "MB recv", "auto (bytes)",
               "faster");
        if (js) fprintf(js, ", \"chunk_tokens\": %lld, \"chunk\": [", (long long)C);
        int nj = 0;
        for (int v = 0; v < NV; v++) {
            if (variants[v].s == DSACP_DECODE_ALLGATHER_KV) continue; /* gathers the context for decode tokens too */
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.decode = variants[v].s, cp.kv_layout = variants[v].kv, cp.index_layout = variants[v].idx;
            cp.index_group = variants[v].group;
            cp.lean_merge = variants[v].merge, cp.merge_backend = variants[v].backend, cp.lean_factor = f;
            if (cp.index_layout == DSACP_LAYOUT_PARTIAL && (W % cp.index_group || W < 2 * cp.index_group)) continue;
            dsacp_plan_decode g, d, a;
            bool dg, dd, da;
            cp.context_path = DSACP_CONTEXT_GATHER;
            if (dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, deployed, &hw, &g, &dg)) continue;
            cp.context_path = DSACP_CONTEXT_DISTRIBUTED;
            if (dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, deployed, &hw, &d, &dd)) continue;
            cp.context_path = DSACP_CONTEXT_AUTO;
            if (dsacp_plan_chunk_layer(&cfg, &cp, W, L, C, deployed, &hw, &a, &da)) continue;
            const char *faster = d.t_layer < g.t_layer ? "distributed" : "gather";
            printf("%-40s %9.1fus %9.2f %9.1fus %9.2f %14s %12s\n", variants[v].label, g.t_layer * 1e6, g.recv_bytes / 1048576,
                   d.t_layer * 1e6, d.recv_bytes / 1048576, da ? "distributed" : "gather", faster);
            if (js)
                fprintf(js, "%s{\"strategy\": \"%s\", \"gather\": {\"recv_bytes\": %.0f, \"calls\": %.0f, \"t_compute\": %.4g, "
                            "\"t_memory\": %.4g, \"t_comm\": %.4g, \"t_layer\": %.4g}, \"distributed\": {\"recv_bytes\": %.0f, "
                            "\"calls\": %.0f, \"t_compute\": %.4g, \"t_memory\": %.4g, \"t_comm\": %.4g, \"t_layer\": %.4g}, "
                            "\"auto\": \"%s\", \"faster\": \"%s\"}", nj++ ? ", " : "", variants[v].label, g.recv_bytes, g.calls,
                        g.t_compute, g.t_memory, g.t_comm, g.t_layer, d.recv_bytes, d.calls, d.t_compute, d.t_memory, d.t_comm,
                        d.t_layer, da ? "distributed" : "gather", faster);
        }
        if (js) fprintf(js, "]");
    }
    const char *plabels[5] = {NULL};
    double pttft[5] = {0};
    if (Pp > 0) {
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
        printf("\nprefill of a %lld-token prompt, per layer on the busiest rank; TTFT = layer x %lld (attention only)\n",
               (long long)Pp, (long long)layers);
        printf("%-34s %10s %6s %10s %10s %10s %10s %9s\n", "split", "MB recv", "calls", "compute", "memory", "comm", "TTFT",
               "vs TP");
        if (js) fprintf(js, ", \"prefill_tokens\": %lld, \"prefill\": [", (long long)Pp);
        double tp = 0;
        for (int v = 0; v < 5; v++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.prefill_split = pv[v].split;
            dsacp_plan_decode r2;
            rc = dsacp_plan_prefill_layer(&cfg, &cp, W, Pp, pv[v].mode, deployed, &hw, &r2);
            if (rc) break;
            const double ttft = r2.t_layer * (double)layers;
            plabels[v] = pv[v].label, pttft[v] = ttft;
            if (v == 0) tp = ttft;
            printf("%-34s %10.1f %6.0f %9.3fs %9.3fs %9.3fs %9.2fs %8.2fx\n", pv[v].label, r2.recv_bytes / 1048576, r2.calls,
                   r2.t_compute, r2.t_memory, r2.t_comm, ttft, tp / ttft);
            if (js)
                fprintf(js, "%s{\"split\": \"%s\", \"recv_bytes\": %.0f, \"calls\": %.0f, \"flops\": %.4g, \"t_compute\": %.4g, "
                            "\"t_memory\": %.4g, \"t_comm\": %.4g, \"ttft\": %.4g}", v ? ", " : "", pv[v].label,
                        r2.recv_bytes, r2.calls, r2.flops, r2.t_compute, r2.t_memory, r2.t_comm, ttft);
        }
        if (js) fprintf(js, "]");
        if (rc) {
            if (js) fclose(js), free(jtext);
            dsacp_model_free(m);
            return cli_fail("plan", rc);
        }
    }
    /* DSA-CP's weight plans for a step of T tokens (the prompt with --prefill, else the batch):
     * bytes each rank receives per layer for q_b_proj / o_proj, and what it holds */
    if (W > 1) {
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
        printf("\ndsa-cp weight plans, a step of %lld tokens split over %lld ranks, per layer (busiest rank):\n", (long long)T,
               (long long)W);
        printf("%-36s %12s %6s %10s %14s\n", "plan", "MB recv", "calls", "comm", "q+o MB held");
        if (js) fprintf(js, ", \"weight_plans\": [");
        for (int v = 0; v < 4; v++) {
            dsacp_cp_options cp;
            dsacp_cp_options_default(&cp);
            cp.mode = DSACP_CP_DSA_CP, cp.q_proj = wv[v].q, cp.o_proj = wv[v].o;
            double recv = 0, calls = 0;
            if (wv[v].q == DSACP_WEIGHTS_LAYER_SHARD) recv += qb, calls += 1;          /* non-owner of the layer */
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
            printf("%-36s %12.2f %6.0f %8.1fus %14.1f\n", wv[v].label, recv / 1048576, calls, (recv / bw + calls * lat) * 1e6,
                   held / 1048576);
            if (js)
                fprintf(js, "%s{\"plan\": \"%s\", \"recv_bytes\": %.0f, \"calls\": %.0f, \"t_comm\": %.4g, "
                            "\"weights_held_per_layer\": %.0f}", v ? ", " : "", wv[v].label, recv, calls, recv / bw + calls * lat, held);
        }
        if (js) fprintf(js, "]");
    }
    if ((s = cli_get(opts, "plot"))) {
        const size_t n = strlen(s);
        if (n < 5 || (strcmp(s + n - 4, ".svg") && strcmp(s + n - 4, ".png"))) {
            fprintf(stderr, "dsacp plan: option '--plot' = '%s': an .svg or .png file\n", s);
            dsacp_model_free(m);
            if (js) fclose(js), free(jtext);
            return 2;
        }
        char title[512];
        snprintf(title, sizeof title, "%s, context %lld, batch %lld, W = %lld, %s", preset ? preset : model, (long long)L,
                 (long long)B, (long long)W, hw.name);
        rc = write_plot(s, title, variants, r, okv, NV, (double)layers, plabels, pttft, Pp > 0 ? 5 : 0, Pp);
        if (rc) {
            dsacp_model_free(m);
            if (js) fclose(js), free(jtext);
            return cli_fail("plan", rc);
        }
    }
    if (js) {
        fprintf(js, "}\n");
        fclose(js);
        rc = dsacp_write_file_atomic(cli_get(opts, "json"), jtext, jlen);
        free(jtext);
        if (rc) {
            dsacp_model_free(m);
            return cli_fail("plan", rc);
        }
    }
    dsacp_model_free(m);
    return 0;
}

/*
 * plan_cost.c -- hardware profiles and the roofline of one decode layer per strategy
 * (include/dsacp_plan.h, docs/planning.md). The bytes and calls come from dsacp_plan_step_comm
 * (checked against the counters by test_cp); flops and memory traffic are counted from the
 * shapes the engine computes on a rank (docs/context-parallel.md 3.5 lists what each strategy
 * replicates).
 */
#include "plan/plan.h"
#include "core/core.h"
#include "cp/cp_strategy.h"

#include <jansson.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The physical range of every numeric field of a profile (docs/planning.md, "Hardware
 * profiles"): wide enough for any device from a CPU core to beyond today's accelerators, narrow
 * enough that every time the planner derives from them stays a finite double. */
static const struct {
    const char *key, *unit;
    double lo, hi;
} hw_fields[9] = {
    {"flops_bf16", "FLOP/s", 1e6, 1e18},     {"flops_fp8", "FLOP/s", 1e6, 1e18},   {"mem_bw", "bytes/s", 1e6, 1e15},
    {"mem_bytes", "bytes", 1e6, 1e15},       {"ranks_per_node", "ranks", 1, 65536}, {"link_bw", "bytes/s", 1e6, 1e15},
    {"link_latency_us", "us", 1e-3, 1e6},    {"net_bw", "bytes/s", 1e6, 1e15},     {"net_latency_us", "us", 1e-3, 1e6},
};

int dsacp_hw_load(const char *path, dsacp_hw *out)
{
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t len = 0;
    /* cannot open / not a regular file / too large: dsacp_read_file names the file and the cause */
    int rc = dsacp_read_file(path, &text, &len, (size_t)1 << 20);
    if (rc) {
        char why[1024];
        snprintf(why, sizeof why, "%s", dsacp_last_error());
        return dsacp_error(DSACP_EINVAL, "%s", why);
    }
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    dsacp_free(text);
    if (!root) return dsacp_error(DSACP_EINVAL, "%s: JSON error at line %d: %s", path, err.line, err.text);
    if (!json_is_object(root)) rc = dsacp_error(DSACP_EINVAL, "%s: not a JSON object", path);
    const char *sk[2] = {"name", "source"};
    char *sd[2] = {out->name, out->source};
    const size_t sn[2] = {sizeof out->name, sizeof out->source};
    for (int i = 0; i < 2 && !rc; i++) {
        json_t *v = json_object_get(root, sk[i]);
        if (!json_is_string(v) || json_string_length(v) == 0) {
            rc = dsacp_error(DSACP_EINVAL, "%s: field '%s': missing or not a non-empty string", path, sk[i]);
            break;
        }
        const char *t = json_string_value(v);
        const size_t n = json_string_length(v);
        if (n >= sn[i]) {
            rc = dsacp_error(DSACP_EINVAL, "%s: field '%s': %zu bytes, at most %zu", path, sk[i], n, sn[i] - 1);
            break;
        }
        for (size_t k = 0; k < n && !rc; k++)
            if ((unsigned char)t[k] < 0x20 || t[k] == 0x7f)
                rc = dsacp_error(DSACP_EINVAL, "%s: field '%s': control character at byte %zu", path, sk[i], k);
        if (!rc) memcpy(sd[i], t, n + 1);
    }
    double v9[9] = {0};
    for (int i = 0; i < 9 && !rc; i++) {
        json_t *v = json_object_get(root, hw_fields[i].key);
        const bool whole = i == 4; /* ranks_per_node: a JSON integer */
        if (!v) {
            rc = dsacp_error(DSACP_EINVAL, "%s: field '%s': missing", path, hw_fields[i].key);
        } else if (whole ? !json_is_integer(v) : !json_is_number(v)) {
            rc = dsacp_error(DSACP_EINVAL, "%s: field '%s': not %s", path, hw_fields[i].key, whole ? "an integer" : "a number");
        } else {
            const double x = json_number_value(v);
            if (!isfinite(x) || x < hw_fields[i].lo || x > hw_fields[i].hi)
                rc = dsacp_error(DSACP_EINVAL, "%s: field '%s' = %g %s: outside the physical range [%g, %g]", path,
                                 hw_fields[i].key, x, hw_fields[i].unit, hw_fields[i].lo, hw_fields[i].hi);
            else v9[i] = x;
        }
    }
    json_decref(root);
    if (rc) return rc;
    out->flops_bf16 = v9[0], out->flops_fp8 = v9[1], out->mem_bw = v9[2], out->mem_bytes = v9[3];
    out->ranks_per_node = (int64_t)v9[4], out->link_bw = v9[5], out->link_latency_us = v9[6];
    out->net_bw = v9[7], out->net_latency_us = v9[8];
    return DSACP_OK;
}

/* Every figure of a planned layer is a finite number, or DSACP_ERANGE naming the first that is
 * not (a profile or a configuration beyond what the model can price). */
static int finite_layer(const dsacp_plan_decode *d, const char *what)
{
    const struct {
        const char *name;
        double v;
    } f[] = {{"recv_bytes", d->recv_bytes}, {"sent_bytes", d->sent_bytes}, {"calls", d->calls}, {"flops", d->flops},
             {"weight_bytes", d->weight_bytes}, {"kv_read_bytes", d->kv_read_bytes}, {"kv_bytes_per_rank", d->kv_bytes_per_rank},
             {"t_compute", d->t_compute}, {"t_memory", d->t_memory}, {"t_comm", d->t_comm}, {"t_hidden", d->t_hidden},
             {"t_layer", d->t_layer}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!isfinite(f[i].v))
            return dsacp_error(DSACP_ERANGE, "plan: %s: %s is not finite (%g): the profile or the sizes overflow the model",
                               what, f[i].name, f[i].v);
    return DSACP_OK;
}

/* The roofline of a layer's counts on the profile: compute and memory time, and the link's time
 * for its bytes and calls (*bw, *lat: the link's, NVLink within a node, the network beyond). */
static void roofline(const dsacp_hw *hw, int64_t W, bool deployed, dsacp_plan_decode *out, double *bw, double *lat)
{
    const double peak = deployed ? hw->flops_fp8 : hw->flops_bf16;
    out->t_compute = out->flops / peak;
    out->t_memory = (out->weight_bytes + out->kv_read_bytes) / hw->mem_bw;
    const bool net = W > hw->ranks_per_node;
    *bw = net ? hw->net_bw : hw->link_bw, *lat = (net ? hw->net_latency_us : hw->link_latency_us) * 1e-6;
    out->t_comm = W > 1 ? out->recv_bytes / *bw + out->calls * *lat : 0;
}

/* Times of a prefill or chunk layer; `overlap_bytes` travel in one call during `overlap_macs` of
 * the query projection (`qparams` weights): the prefill path's entry all-gather (cp_layer.c). */
static void link_time(const dsacp_hw *hw, int64_t W, dsacp_plan_decode *out, bool deployed, double overlap_bytes,
                      double overlap_macs, double qparams)
{
    const double peak = deployed ? hw->flops_fp8 : hw->flops_bf16;
    double bw, lat;
    roofline(hw, W, deployed, out, &bw, &lat);
    if (W > 1 && overlap_macs > 0)
        out->t_hidden = fmin(overlap_bytes / bw + lat, fmax(2 * overlap_macs / peak, (deployed ? 1 : 2) * qparams / hw->mem_bw));
    out->t_layer = fmax(out->t_compute, out->t_memory) + out->t_comm - out->t_hidden;
}

int dsacp_plan_decode_layer(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t context, int64_t batch,
                            bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out)
{
    return dsacp_plan_layer_rows(cfg, cp, W, context, batch, 1, deployed, hw, out);
}

/* The busiest rank: the one that receives the most in the step. batch requests of `rows` decode
 * rows each (a verify entry's k + 1: row j of a request after context + j positions). */
int dsacp_plan_layer_rows(const dsacp_config *cfg_in, const dsacp_cp_options *cp, int64_t W, int64_t context, int64_t batch,
                          int64_t rows, bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out)
{
    memset(out, 0, sizeof *out);
    if (W < 1 || context < 0 || batch < 1 || rows < 1 || rows > 64 || batch > INT64_MAX / 64)
        return dsacp_error(DSACP_EINVAL, "plan: W, context, batch or rows out of range");
    dsacp_config cfg = *cfg_in;
    cfg.num_hidden_layers = 1; /* one layer */
    const int64_t H = cfg.num_attention_heads, D = cfg.hidden_size, K = cfg.index_topk, Hi = cfg.index_n_heads;
    const int64_t di = cfg.index_head_dim, dc = cfg.kv_lora_rank, dr = cfg.qk_rope_head_dim, dk = dc + dr;
    const int64_t nope = cfg.qk_nope_head_dim, dq = nope + dr, dv = cfg.v_head_dim, ql = cfg.q_lora_rank;
    const dsacp_kv_dtype kvd = deployed ? DSACP_KV_FP8 : DSACP_KV_F32;
    const int64_t lat_b = dsacp_mla_cache_bytes_per_token(&cfg, kvd), idx_b = dsacp_index_cache_bytes_per_token(&cfg, kvd);
    const int64_t nd = batch * rows;
    int64_t *ctx = malloc((size_t)nd * sizeof *ctx), *req = malloc((size_t)nd * sizeof *req);
    int64_t *old = malloc((size_t)batch * sizeof *old);
    if (!ctx || !req || !old) {
        free(ctx), free(req), free(old);
        return dsacp_error(DSACP_ENOMEM, "out of memory");
    }
    for (int64_t j = 0; j < nd; j++) ctx[j] = context + j % rows, req[j] = j / rows;
    for (int64_t j = 0; j < batch; j++) old[j] = context;
    dsacp_comm_counter *all = malloc((size_t)W * DSACP_PHASE_COUNT * sizeof *all);
    dsacp_plan_step s = {.W = W, .rank = 0, .nd = nd, .context = ctx, .request = req, .nreq = batch,
                         .req_old = old, .latent_bytes = lat_b, .index_bytes = idx_b, .hidden_bytes = D * 4, .want_logits = true,
                         .deployed = deployed};
    int rc = all ? dsacp_plan_step_comm_ranks(&cfg, cp, &s, all) : dsacp_error(DSACP_ENOMEM, "out of memory");
    double best = -1;
    for (int64_t r = 0; r < W && !rc; r++) {
        const dsacp_comm_counter *c = all + r * DSACP_PHASE_COUNT;
        double recv = 0, sent = 0, calls = 0;
        for (int p = 0; p < DSACP_PHASE_COUNT; p++)
            if (p != DSACP_PHASE_control) recv += (double)c[p].bytes_recv, sent += (double)c[p].bytes_sent, calls += (double)c[p].calls;
        if (recv > best) {
            best = recv;
            out->recv_bytes = recv, out->sent_bytes = sent, out->calls = calls;
            for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
                out->recv_phase[p] = p == DSACP_PHASE_control ? 0 : (double)c[p].bytes_recv;
                out->calls_phase[p] = p == DSACP_PHASE_control ? 0 : (double)c[p].calls;
            }
        }
    }
    free(all);
    free(ctx), free(req), free(old);
    if (rc) return rc;

    /* What a rank computes and reads for the batch (rank with the most heads, the largest shard):
     * every row, at the rows' mean context (index and attention work are linear in it below
     * index_topk and flat above, so the mean is exact for rows = 1 and within a row's work else). */
    const double B = (double)nd, Wd = (double)W, n = (double)context + 1 + (double)(rows - 1) / 2;
    const dsacp_cp_strategy *st = dsacp_cp_strategy_of(cp);
    const bool lean = st->all_query_heads, out_merge = st->merges_output && st->merges_output(cp, false);
    const double Hs = W > 1 ? ceil((double)H / Wd) : (double)H;
    double Hq = lean ? (double)H : Hs, Ho = out_merge ? (double)H : Hs; /* heads of q_b/W_UK/W_UV, of o_proj */
    if (W == 1) Hq = Ho = (double)H;
    const bool idx_all = W == 1 || cp->index_layout == DSACP_LAYOUT_REPLICATED || st->gathers_context;
    double groups = Wd;
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL) groups = Wd / (double)cp->index_group;
    const double scored = idx_all ? n : ceil(n / groups);
    const bool all_heads = !st->gathers_context && W > 1; /* merge strategies: every head */
    const double kk = fmin((double)K, n), attended = st->gathers_context || W == 1 ? kk : ceil(kk / Wd);
    const double heads_attn = all_heads ? (double)H : Hs;
    /* multiply-adds per token: projections, W_UK / W_UV, index scores, sparse MLA */
    const double mac_proj = (double)D * ql + (double)ql * Hq * dq + (double)D * dk + (double)ql * Hi * di + (double)D * di +
                            (double)D * Hi + Ho * dv * D;
    const double mac_absorb = Hq * nope * dc + (lean ? (double)H : Hs) * dc * dv;
    const double mac_attn = scored * Hi * di + attended * heads_attn * (dk + dc);
    out->flops = 2 * B * (mac_proj + mac_absorb + mac_attn);
    const double wb = deployed ? 1.0 : 2.0;
    out->weight_bytes = wb * (mac_proj + mac_absorb); /* every weight is read once per step (shared by the batch) */
    out->kv_read_bytes = B * (scored * (double)idx_b + attended * (double)lat_b);
    const double idiv = W == 1 || cp->index_layout == DSACP_LAYOUT_REPLICATED ? 1 : groups;
    out->kv_bytes_per_rank = (double)context * (double)lat_b / (W > 1 && cp->kv_layout == DSACP_LAYOUT_SHARDED ? Wd : 1) +
                             (double)context * (double)idx_b / idiv;
    const double peak = deployed ? hw->flops_fp8 : hw->flops_bf16;
    double bw, lat;
    roofline(hw, W, deployed, out, &bw, &lat);
    /* overlap (cp_exact_topk.c, cp_lean.c): the candidates (lean: the scores) travel while W_UK
     * absorbs the query rows of this rank's heads (lean: every head) */
    if (W > 1 && st->overlaps_candidates) {
        const double p = DSACP_PHASE_index_candidates, mac_uk = Hq * (double)nope * (double)dc;
        const double t_cand = out->recv_phase[(int)p] / bw + out->calls_phase[(int)p] * lat;
        const double t_uk = fmax(2 * B * mac_uk / peak, wb * mac_uk / hw->mem_bw);
        out->t_hidden = fmin(t_cand, t_uk);
    }
    out->t_layer = fmax(out->t_compute, out->t_memory) + out->t_comm - out->t_hidden;
    return finite_layer(out, "decode layer");
}

/* Over the integers x in [lo, hi]: the sum of x and the sum of min(x, K). */
static void range_sums(double lo, double hi, double K, double *sx, double *smin)
{
    *sx = *smin = 0;
    if (hi < lo) return;
    *sx = (lo + hi) * (hi - lo + 1) / 2;
    const double top = fmin(hi, K);
    if (top >= lo) *smin = (lo + top) * (top - lo + 1) / 2;
    if (hi > K) *smin += K * (hi - fmax(lo - 1, K));
}

/* Over the positions p < n that rank q owns (blocks of I every I W): the sum of p + 1. */
static double owned_sum(int64_t n, int64_t q, int64_t I, int64_t W)
{
    const int64_t IW = I * W, c = n / IW, rest = n - c * IW;
    const int64_t m = rest - q * I < 0 ? 0 : rest - q * I > I ? I : rest - q * I;
    const double Id = (double)I, cd = (double)c, md = (double)m;
    const double full = Id * (double)IW * cd * (cd - 1) / 2 + cd * (Id * ((double)(q * I) + 1) + Id * (Id - 1) / 2);
    return full + md * (cd * (double)IW + (double)(q * I) + 1) + md * (md - 1) / 2;
}

/* Keys scored and attended by the rank that computes the most of them, for P new tokens after O
 * cached positions split as the engine splits them (or rows split evenly in zigzag order for
 * TP_IDXSPLIT): token i scores O + i + 1 keys and attends min(O + i + 1, K). Each rank's sums in
 * closed form over its ranges of tokens (O(W), the counts of the token-by-token split). */
static void prefill_work(const dsacp_cp_options *cp, int64_t W, int64_t O, int64_t P, int64_t K, int mode, double *scored,
                         double *attended, double *tokens)
{
    *scored = *attended = *tokens = 0;
    const dsacp_prefill_split sp = mode == DSACP_PLAN_PREFILL_CP ? cp->prefill_split : DSACP_PREFILL_ZIGZAG;
    const double Kd = (double)K, Od = (double)O;
    const int64_t chunk = (P + W - 1) / W, I = cp->interleave;
    for (int64_t q = 0; q < W; q++) {
        double sc = 0, at = 0, tk = 0;
        if (sp == DSACP_PREFILL_OWNER) {
            /* the positions q owns in [O, O + P): sums up to O + P less those up to O */
            const int64_t n1 = O + P, k1 = n1 < K ? n1 : K, k0 = O < K ? O : K;
            sc = owned_sum(n1, q, I, W) - owned_sum(O, q, I, W);
            const double a1 = owned_sum(k1, q, I, W) + Kd * (double)(dsacp_cp_local_len(n1, q, I, W) - dsacp_cp_local_len(k1, q, I, W));
            const double a0 = owned_sum(k0, q, I, W) + Kd * (double)(dsacp_cp_local_len(O, q, I, W) - dsacp_cp_local_len(k0, q, I, W));
            at = a1 - a0;
            tk = (double)(dsacp_cp_local_len(n1, q, I, W) - dsacp_cp_local_len(O, q, I, W));
        } else {
            /* contiguous: tokens [q chunk, (q + 1) chunk); zigzag: chunks q and 2W - 1 - q of 2W */
            int64_t lo[2] = {q * chunk, 0}, hi[2] = {(q + 1) * chunk, 0};
            int nr = 1;
            if (sp == DSACP_PREFILL_ZIGZAG) {
                lo[0] = P * q / (2 * W), hi[0] = P * (q + 1) / (2 * W);
                lo[1] = P * (2 * W - 1 - q) / (2 * W), hi[1] = P * (2 * W - q) / (2 * W), nr = 2;
            }
            for (int k = 0; k < nr; k++) {
                const int64_t l = lo[k] < P ? lo[k] : P, h = hi[k] < P ? hi[k] : P;
                double sx, sm;
                range_sums(Od + (double)l + 1, Od + (double)h, Kd, &sx, &sm);
                sc += sx, at += sm, tk += (double)(h - l);
            }
        }
        *scored = fmax(*scored, sc);
        *attended = fmax(*attended, at);
        *tokens = fmax(*tokens, tk);
    }
}

int dsacp_plan_prefill_layer(const dsacp_config *cfg_in, const dsacp_cp_options *cp, int64_t W, int64_t P, int mode,
                             bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out)
{
    memset(out, 0, sizeof *out);
    if (W < 1 || P < 1 || mode < 0 || mode > 2) return dsacp_error(DSACP_EINVAL, "plan: prefill W, tokens or mode out of range");
    dsacp_config cfg = *cfg_in;
    cfg.num_hidden_layers = 1;
    const double H = (double)cfg.num_attention_heads, D = (double)cfg.hidden_size, Hi = (double)cfg.index_n_heads;
    const double di = (double)cfg.index_head_dim, dc = (double)cfg.kv_lora_rank, dr = (double)cfg.qk_rope_head_dim;
    const double dk = dc + dr, nope = (double)cfg.qk_nope_head_dim, dq = nope + dr, dv = (double)cfg.v_head_dim;
    const double ql = (double)cfg.q_lora_rank, Wd = (double)W, Pd = (double)P;
    const dsacp_kv_dtype kvd = deployed ? DSACP_KV_FP8 : DSACP_KV_F32;
    const int64_t lat_b = dsacp_mla_cache_bytes_per_token(&cfg, kvd), idx_b = dsacp_index_cache_bytes_per_token(&cfg, kvd);
    double scored, attended, tokens, q_macs = 0;
    const double Hs = ceil(H / Wd);
    if (mode == DSACP_PLAN_PREFILL_CP) {
        prefill_work(cp, W, 0, P, cfg.index_topk, mode, &scored, &attended, &tokens);
        /* a token's rank runs every head: the whole projections for its tokens */
        const double mac_tok = D * ql + ql * H * dq + D * dk + ql * Hi * di + D * di + D * Hi + H * dv * D +
                               H * nope * dc + H * dc * dv;
        out->flops = 2 * (tokens * mac_tok + scored * Hi * di + attended * H * (dk + dc));
        out->weight_bytes = (deployed ? 1 : 2) * (D * ql + ql * H * dq + D * dk + ql * Hi * di + D * di + D * Hi + H * dv * D +
                                                  H * nope * dc + H * dc * dv);
        dsacp_plan_step s = {.W = W, .rank = 0, .npre = 1, .latent_bytes = lat_b, .index_bytes = idx_b,
                             .hidden_bytes = cfg.hidden_size * 4, .want_logits = true, .logits_last = true, .deployed = deployed};
        const int64_t zero = 0;
        s.pre_old = &zero, s.pre_new = &P;
        dsacp_comm_counter *all = malloc((size_t)W * DSACP_PHASE_COUNT * sizeof *all);
        int rc = all ? dsacp_plan_step_comm_ranks(&cfg, cp, &s, all) : dsacp_error(DSACP_ENOMEM, "out of memory");
        double best = -1;
        for (int64_t r = 0; r < W && !rc; r++) {
            const dsacp_comm_counter *c = all + r * DSACP_PHASE_COUNT;
            const double recv = (double)c[DSACP_PHASE_prefill_kv].bytes_recv;
            if (recv > best) best = recv, out->recv_bytes = recv, out->calls = (double)c[DSACP_PHASE_prefill_kv].calls;
        }
        free(all);
        if (rc) return rc;
        q_macs = tokens * ql * H * dq; /* the query projection the entries' all-gather overlaps */
    } else {
        /* TP: every rank runs every token with its heads; the indexer whole (replicated) or its
         * rows split (TensorRT-LLM), then the selected positions all-gathered */
        const bool split = mode == DSACP_PLAN_PREFILL_TP_IDXSPLIT;
        prefill_work(cp, W, 0, P, cfg.index_topk, mode, &scored, &attended, &tokens);
        const double all_scored = Pd * (Pd + 1) / 2;
        double all_att = 0;
        double all_keys;
        range_sums(1, Pd, (double)cfg.index_topk, &all_keys, &all_att); /* token i attends min(i + 1, K) */
        const double idx_rows = split ? tokens : Pd, idx_keys = split ? scored : all_scored;
        const double mac_rep = D * ql + D * dk + D * di + D * Hi;              /* replicated projections */
        const double mac_heads = ql * Hs * dq + Hs * dv * D + Hs * nope * dc + Hs * dc * dv;
        out->flops = 2 * (Pd * (mac_rep + mac_heads) + idx_rows * ql * Hi * di + idx_keys * Hi * di + all_att * Hs * (dk + dc));
        out->weight_bytes = (deployed ? 1 : 2) * (mac_rep + mac_heads + ql * Hi * di);
        out->recv_bytes = W > 1 ? 2 * (Wd - 1) / Wd * Pd * D * 2 : 0; /* o_proj all-reduce (bf16) */
        out->calls = W > 1 ? 1 : 0;
        if (split && W > 1) {
            out->recv_bytes += (Wd - 1) / Wd * Pd * (double)cfg.index_topk * 4; /* selected positions */
            out->calls += 1;
        }
    }
    out->kv_read_bytes = Pd * (double)(lat_b + idx_b);
    /* the entries (one call) travel during the query projection (cp_layer.c) */
    link_time(hw, W, out, deployed, out->recv_bytes, q_macs, ql * H * dq);
    return finite_layer(out, "prefill layer");
}

/* Times of a chunk's layer; `overlap_bytes` travel in one call during `overlap_macs` of the query
 * projection (`qparams` weights): the prefill path's entry all-gather (cp_layer.c). */

/* dsacp_plan_chunk_layer with the engine's entry sizes and o_proj paths given; dist_in < 0: the
 * path by cp->context_path (auto: bytes), else forced (1: distributed). */
static int chunk_layer(const dsacp_config *cfg_in, const dsacp_cp_options *cp_in, int64_t W, int64_t context, int64_t chunk,
                       bool deployed, int64_t lat_b, int64_t idx_b, bool gv, bool f32, const dsacp_hw *hw, int dist_in,
                       dsacp_plan_decode *out, bool *distributed)
{
    memset(out, 0, sizeof *out);
    *distributed = false;
    if (W < 1 || context < 0 || chunk < 1) return dsacp_error(DSACP_EINVAL, "plan: W, context or chunk out of range");
    dsacp_config cfg = *cfg_in;
    cfg.num_hidden_layers = 1;
    dsacp_cp_options cp = *cp_in;
    const bool sharded = W > 1 && (cp.kv_layout == DSACP_LAYOUT_SHARDED || cp.index_layout != DSACP_LAYOUT_REPLICATED);
    bool dist = sharded && context > 0 && cp.context_path == DSACP_CONTEXT_DISTRIBUTED;
    if (sharded && context > 0 && cp.context_path == DSACP_CONTEXT_AUTO) {
        double g, per;
        dsacp_cp_context_bytes(&cfg, &cp, W, lat_b, idx_b, deployed, gv, context, &g, &per);
        dist = (double)chunk * per < g;
    }
    if (dist_in >= 0) dist = sharded && context > 0 && dist_in;
    cp.context_path = dist ? DSACP_CONTEXT_DISTRIBUTED : DSACP_CONTEXT_GATHER;
    cp.context_hardware = NULL;
    *distributed = dist;
    /* the bytes and calls: the step as the engine runs it, on the rank receiving the most */
    const dsacp_plan_entry ent = {context, chunk};
    const dsacp_plan_step s = {.W = W, .rank = 0, .latent_bytes = lat_b, .index_bytes = idx_b, .hidden_bytes = cfg.hidden_size * 4,
                               .want_logits = true, .logits_last = true, .deployed = deployed, .o_gather_v = gv, .o_tp_f32 = f32};
    const int kind = dsacp_plan_entry_kind(&cp, W, &ent, NULL);
    const bool decodes = kind == DSACP_PLAN_ENTRY_DECODE || (kind == DSACP_PLAN_ENTRY_CONTEXT && dist);
    int64_t lists[2 * 1 + 6], *ctx = NULL; /* a one-token entry's lists; a decoded chunk's tokens below */
    dsacp_plan_lists l;
    if (decodes && chunk > (INT64_MAX - 6) / 2) return dsacp_error(DSACP_ERANGE, "plan: chunk %lld too long", (long long)chunk);
    if (decodes && chunk > 1 && !(ctx = dsacp_calloc((size_t)chunk * 2 + 6, sizeof *ctx)))
        return dsacp_error_context(DSACP_ENOMEM, "plan: a chunk of %lld tokens", (long long)chunk);
    dsacp_plan_entries_lists(&s, decodes ? chunk : 1, 1, ctx ? (void *)ctx : (void *)lists, &l);
    dsacp_plan_entries_step(&cp, &ent, 1, &decodes, &l);
    dsacp_comm_counter *all = malloc((size_t)W * DSACP_PHASE_COUNT * sizeof *all);
    int crc = all ? dsacp_plan_step_comm_ranks(&cfg, &cp, &l.s, all) : dsacp_error(DSACP_ENOMEM, "out of memory");
    dsacp_free(ctx);
    if (crc) {
        free(all);
        return crc;
    }
    double best = -1;
    for (int64_t r = 0; r < W; r++) {
        const dsacp_comm_counter *c = all + r * DSACP_PHASE_COUNT;
        double recv = 0, calls = 0;
        for (int p = 0; p < DSACP_PHASE_COUNT; p++)
            if (p != DSACP_PHASE_control) recv += (double)c[p].bytes_recv, calls += (double)c[p].calls;
        if (recv > best) best = recv, out->recv_bytes = recv, out->calls = calls;
    }
    free(all);
    const double rb = out->recv_bytes, calls = out->calls;
    double ov_bytes = 0, ov_macs = 0, qparams = 0;
    if (dist) {
        /* every token on every rank through the decode strategy: the decode layer's work for a
         * batch of `chunk` tokens at the chunk's mean context (index and attention work are
         * linear in the context, so the mean gives their sum) */
        dsacp_plan_decode d;
        int rc = dsacp_plan_decode_layer(&cfg, &cp, W, context + (chunk - 1) / 2, chunk, deployed, hw, &d);
        if (rc) return rc;
        *out = d;
        out->kv_bytes_per_rank = d.kv_bytes_per_rank;
    } else {
        /* the prefill path: the chunk's tokens split, every head for a rank's tokens, over the
         * gathered context */
        const double H = (double)cfg.num_attention_heads, D = (double)cfg.hidden_size, Hi = (double)cfg.index_n_heads;
        const double di = (double)cfg.index_head_dim, dc = (double)cfg.kv_lora_rank, dr = (double)cfg.qk_rope_head_dim;
        const double dk = dc + dr, nope = (double)cfg.qk_nope_head_dim, dq = nope + dr, dv = (double)cfg.v_head_dim;
        const double ql = (double)cfg.q_lora_rank;
        double scored, attended, tokens;
        prefill_work(&cp, W, context, chunk, cfg.index_topk, DSACP_PLAN_PREFILL_CP, &scored, &attended, &tokens);
        const double mac_tok = D * ql + ql * H * dq + D * dk + ql * Hi * di + D * di + D * Hi + H * dv * D + H * nope * dc + H * dc * dv;
        out->flops = 2 * (tokens * mac_tok + scored * Hi * di + attended * H * (dk + dc));
        out->weight_bytes = (deployed ? 1 : 2) * mac_tok;
        /* the gathered context's index keys once for the chunk, the winners' latent rows per token */
        out->kv_read_bytes = (double)(context + chunk) * (double)idx_b + attended * (double)lat_b;
        out->kv_bytes_per_rank = (double)context * (double)(lat_b + idx_b); /* the transient gathered views */
        ov_bytes = (double)(chunk - (int64_t)tokens) * (double)(lat_b + idx_b); /* the other ranks' new entries */
        ov_macs = tokens * ql * H * dq, qparams = ql * H * dq;
    }
    const double hidden_dist = out->t_hidden;
    out->recv_bytes = rb, out->calls = calls, out->t_hidden = 0;
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) out->recv_phase[p] = out->calls_phase[p] = 0;
    link_time(hw, W, out, deployed, ov_bytes, ov_macs, qparams);
    if (dist) { /* the decode strategy's overlap, as in a decode step of the chunk's tokens */
        out->t_hidden = fmin(hidden_dist, out->t_comm);
        out->t_layer = fmax(out->t_compute, out->t_memory) + out->t_comm - out->t_hidden;
    }
    return finite_layer(out, "chunk layer");
}

int dsacp_plan_chunk_layer(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t context, int64_t chunk,
                           bool deployed, const dsacp_hw *hw, dsacp_plan_decode *out, bool *distributed)
{
    const dsacp_kv_dtype kvd = deployed ? DSACP_KV_FP8 : DSACP_KV_F32;
    const int64_t lat_b = dsacp_mla_cache_bytes_per_token(cfg, kvd), idx_b = dsacp_index_cache_bytes_per_token(cfg, kvd);
    /* the engine's o_proj path for FP8 blocks */
    bool gv = false, f32 = false;
    dsacp_cp_o_paths(cfg, cp, W, deployed ? DSACP_F8_E4M3 : DSACP_BF16, 128, &gv, &f32);
    return chunk_layer(cfg, cp, W, context, chunk, deployed, lat_b, idx_b, gv, f32, hw, -1, out, distributed);
}

int dsacp_plan_context_distributed(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t latent_bytes,
                                   int64_t index_bytes, bool deployed, bool o_gather_v, bool o_tp_f32, const dsacp_hw *hw,
                                   int64_t old_len, int64_t n_new, bool *distributed)
{
    *distributed = cp->context_path == DSACP_CONTEXT_DISTRIBUTED;
    if (cp->context_path != DSACP_CONTEXT_AUTO) return DSACP_OK;
    if (!hw) {
        double g, per;
        dsacp_cp_context_bytes(cfg, cp, W, latent_bytes, index_bytes, deployed, o_gather_v, old_len, &g, &per);
        *distributed = (double)n_new * per < g;
        return DSACP_OK;
    }
    /* the planner's time of one layer by each path, on the profile */
    dsacp_plan_decode g, d;
    bool dg, dd;
    int rc = chunk_layer(cfg, cp, W, old_len, n_new, deployed, latent_bytes, index_bytes, o_gather_v, o_tp_f32, hw, 0, &g, &dg);
    if (!rc) rc = chunk_layer(cfg, cp, W, old_len, n_new, deployed, latent_bytes, index_bytes, o_gather_v, o_tp_f32, hw, 1, &d, &dd);
    if (!rc) *distributed = d.t_layer < g.t_layer;
    return rc;
}

/* Attention parameters a rank holds and reads per layer under the strategy: the replicated parts
 * (q_a, kv_a, the indexer's projections) whole; q_b_proj, W_UK / W_UV and o_proj by heads
 * (W > 1), whole where lean replicates them (q_b, W_UK, W_UV; o_proj with the output merge). */
static double attn_params(const dsacp_config *c, const dsacp_cp_options *cp, int64_t W)
{
    const double D = (double)c->hidden_size, H = (double)c->num_attention_heads, ql = (double)c->q_lora_rank;
    const double dc = (double)c->kv_lora_rank, dr = (double)c->qk_rope_head_dim, nope = (double)c->qk_nope_head_dim;
    const double dv = (double)c->v_head_dim, Hi = (double)c->index_n_heads, di = (double)c->index_head_dim;
    const double rep = D * ql + D * (dc + dr) + ql * Hi * di + D * di + D * Hi;
    const double qb = ql * H * (nope + dr), kvb = dc * H * (nope + dv), o = H * dv * D, Wd = (double)W;
    const dsacp_cp_strategy *st = dsacp_cp_strategy_of(cp);
    const bool lean = W > 1 && st->all_query_heads, out = lean && st->merges_output && st->merges_output(cp, false);
    return rep + (lean ? qb + kvb : (qb + kvb) / Wd) + (out ? o : o / Wd);
}

/* The most distinct experts one of ep ranks (E / ep experts each) serves for a batch of B
 * tokens routed to k distinct experts each, uniformly: the mean over seeded random routings. */
static double busiest_experts(int64_t E, int64_t k, int64_t B, int64_t ep)
{
    if (k >= E) return (double)E / (double)ep;
    if (ep <= 1) /* expected distinct experts touched: each token takes k distinct of E */
        return (double)E * (1 - pow(1 - (double)k / (double)E, (double)B));
    uint64_t x = 0x9e3779b97f4a7c15ull;
    const int S = 64;
    double sum = 0;
    unsigned char *hit = malloc((size_t)E);
    int64_t *cnt = malloc((size_t)ep * sizeof *cnt);
    if (!hit || !cnt) {
        free(hit), free(cnt);
        return (double)E / (double)ep;
    }
    for (int smp = 0; smp < S; smp++) {
        memset(hit, 0, (size_t)E);
        for (int64_t t = 0; t < B && t < 4096; t++) {
            int64_t pick[64], np = 0; /* k distinct experts (k <= 64 here; more: drawn with repeats) */
            while (np < k) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                const int64_t e = (int64_t)(x % (uint64_t)E);
                bool seen = false;
                for (int64_t i = 0; i < np && i < 64; i++) seen = seen || pick[i] == e;
                if (seen && k <= 64) continue;
                if (np < 64) pick[np] = e;
                np++;
                hit[e] = 1;
            }
        }
        memset(cnt, 0, (size_t)ep * sizeof *cnt);
        int64_t mx = 0;
        for (int64_t e = 0; e < E; e++)
            if (hit[e] && ++cnt[e * ep / E] > mx) mx = cnt[e * ep / E];
        sum += (double)mx;
    }
    free(hit), free(cnt);
    return sum / S;
}

int dsacp_plan_decode_model(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                            int64_t batch, bool deployed, double weight_bytes, const dsacp_hw *hw, dsacp_plan_model *out)
{
    return dsacp_plan_model_rows(cfg, cp, W, ep, context, batch, 1, deployed, weight_bytes, hw, out);
}

int dsacp_plan_model_rows(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                          int64_t batch_in, int64_t rows, bool deployed, double weight_bytes, const dsacp_hw *hw,
                          dsacp_plan_model *out)
{
    memset(out, 0, sizeof *out);
    const int64_t batch = batch_in * (rows > 0 ? rows : 1); /* the MLPs and the head run every row */
    if (ep < 1 || ep > W || (cfg->n_routed_experts > 0 && cfg->n_routed_experts % ep))
        return dsacp_error(DSACP_EINVAL, "plan: expert parallelism %lld must divide the routed experts and be at most W",
                           (long long)ep);
    int rc = dsacp_plan_layer_rows(cfg, cp, W, context, batch_in, rows, deployed, hw, &out->layer);
    if (rc) return rc;
    const double wb0 = deployed ? 1.0 : 2.0, wb = weight_bytes > 0 ? weight_bytes : wb0;
    const double peak = deployed ? hw->flops_fp8 : hw->flops_bf16, B = (double)batch;
    dsacp_plan_decode *l = &out->layer;
    l->weight_bytes *= wb / wb0;
    l->t_memory = (l->weight_bytes + l->kv_read_bytes) / hw->mem_bw;
    l->t_layer = fmax(l->t_compute, l->t_memory) + l->t_comm - l->t_hidden;
    const double D = (double)cfg->hidden_size, V = (double)cfg->vocab_size, nl = (double)cfg->num_hidden_layers;
    out->t_attention = l->t_layer * nl;
    out->ep = ep;
    out->weights_per_rank = wb * attn_params(cfg, cp, W) * nl + wb * 2 * D * V; /* + embedding and lm_head (rank 0) */
    const bool net = ep > hw->ranks_per_node;
    const double bw = net ? hw->net_bw : hw->link_bw, lat = (net ? hw->net_latency_us : hw->link_latency_us) * 1e-6;
    const double touched = cfg->n_routed_experts > 0
                               ? busiest_experts(cfg->n_routed_experts, cfg->num_experts_per_tok, batch, ep) : 0;
    for (int64_t i = 0; i < cfg->num_hidden_layers; i++) {
        const bool moe = cfg->n_routed_experts > 0 && i >= cfg->first_k_dense_replace &&
                         (cfg->moe_layer_freq <= 1 || i % cfg->moe_layer_freq == 0);
        double params, mac, held;
        if (!moe) {
            params = mac = held = 3 * D * (double)cfg->intermediate_size;
        } else {
            /* every rank has every decode token (DCP): with experts spread over ep ranks each rank
             * runs its own experts for the tokens routed to them and an all-reduce sums the D
             * outputs (bf16); shared experts and the router on every rank */
            const double e = 3 * D * (double)cfg->moe_intermediate_size, E = (double)cfg->n_routed_experts;
            const double rep = D * E + e * (double)cfg->n_shared_experts;
            params = rep + e * touched;
            mac = rep + e * (double)cfg->num_experts_per_tok / (double)ep;
            held = rep + e * E / (double)ep;
            if (ep > 1) {
                const double ar = 2 * (double)(ep - 1) / (double)ep * B * D * 2;
                out->t_moe_comm += ar / bw + 2 * lat;
            }
        }
        out->t_mlp += fmax(2 * B * mac / peak, params * wb / hw->mem_bw);
        out->weights_per_rank += held * wb;
    }
    out->t_head = fmax(2 * B * D * V / peak, D * V * wb / hw->mem_bw);
    out->tpot = out->t_attention + out->t_mlp + out->t_moe_comm + out->t_head;
    rc = finite_layer(l, "decode layer");
    const struct {
        const char *name;
        double v;
    } f[] = {{"t_attention", out->t_attention}, {"t_mlp", out->t_mlp}, {"t_moe_comm", out->t_moe_comm},
             {"t_head", out->t_head}, {"tpot", out->tpot}, {"weights_per_rank", out->weights_per_rank}};
    for (size_t i = 0; i < sizeof f / sizeof f[0] && !rc; i++)
        if (!isfinite(f[i].v))
            rc = dsacp_error(DSACP_ERANGE, "plan: whole model: %s is not finite (%g): the profile or the sizes overflow the model",
                             f[i].name, f[i].v);
    return rc;
}

int dsacp_plan_preset(const char *name, dsacp_config *out) { return dsacp_preset_config_planning(name, out); }

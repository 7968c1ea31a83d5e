/*
 * engine_report -- the engine's members of the communication report (dsacp_engine_report_notes):
 * the CP options, KV use, the context rule, every rank's attention work, the planner's prediction
 * against the counters, and DSA-CP's weight plans. Built with jansson; the report shows each
 * number as it always has (integers as integers, the rules' ratios at their fixed precision).
 */
#include "cp/cp_strategy.h"
#include "engine/engine_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    NSTATS = sizeof(dsacp_cp_stats) / sizeof(int64_t),
    NPHASE = DSACP_PHASE_COUNT,
    NMEM = 12,                    /* kv planned [2], engine [2]; weights planned [4], engine [4] */
    NPLAN = 6 * NPHASE + NMEM + 1 /* per phase planned [3], measured [3]; memory; lost */
};

/* The report's number `v` printed with `fmt` ("%.1f", "%g"), as JSON reads that text back: the
 * value and its type (integer or real) the report shows. */
static json_t *formatted(const char *fmt, double v)
{
    char text[64];
    snprintf(text, sizeof text, fmt, v);
    return json_loads(text, JSON_DECODE_ANY, NULL);
}

static json_t *integer(int64_t v) { return json_integer((json_int_t)v); }

/* Adds key = v to o (v NULL: the allocation failed) and clears *ok on any failure. */
static void put(json_t *o, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(o, key, v)) *ok = false;
}

static void put_str(json_t *o, const char *key, const char *s, bool *ok) { put(o, key, json_string(s), ok); }

/* [a0, a1, ...] of n integers. */
static json_t *int_array(const int64_t *a, int n)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, integer(a[i]))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

/* The options, rank 0's KV bytes and the context path's rule. */
static void options_members(const dsacp_engine *e, json_t *cp, bool *ok)
{
    const dsacp_cp_options *o = &e->cp.opt;
    dsacp_kv_usage ku;
    dsacp_engine_kv_usage(e, &ku);
    put_str(cp, "mode", dsacp_cp_mode_name(o->mode), ok);
    put_str(cp, "decode_strategy", dsacp_decode_strategy_name(o->decode), ok);
    put_str(cp, "kv_layout", dsacp_cp_layout_name(o->kv_layout), ok);
    put_str(cp, "index_layout", o->index_layout == DSACP_LAYOUT_PARTIAL ? "partial" : dsacp_cp_layout_name(o->index_layout), ok);
    put(cp, "interleave", integer(o->interleave), ok);
    put_str(cp, "prefill_split", dsacp_prefill_split_name(o->prefill_split), ok);
    put(cp, "kv_bytes_rank0", json_pack("{s:I, s:I, s:I}", "latent_used", (json_int_t)ku.latent_used_bytes, "index_used",
                                        (json_int_t)ku.index_used_bytes, "transient_peak", (json_int_t)ku.transient_peak_bytes), ok);
    double g = 0, per = 0;
    if (e->cp.lat && e->cp.idx) dsacp_cp_context_rule(&e->cp, 1, &g, &per);
    const char *hw = dsacp_engine_plan_hw_name(e);
    if (hw) {
        json_t *name = json_string(hw); /* NULL: not UTF-8, shown as null */
        put(cp, "context_hardware", name ? name : json_null(), ok);
    }
    put_str(cp, "context_path", dsacp_context_path_name(o->context_path), ok);
    put_str(cp, "context_rule", hw ? "distributed when the planner's time of the layer on context_hardware is lower"
                                   : "distributed when new tokens x per-token bytes < gather bytes per context token x "
                                     "context length", ok);
    put(cp, "context_gather_bytes_per_context_token", formatted("%.1f", g), ok);
    put(cp, "context_distributed_bytes_per_query_token", formatted("%.1f", per), ok);
    put_str(cp, "context_choices", e->cp.ctx_choices ? e->cp.ctx_choices : "", ok);
    if (dsacp_cp_strategy_report(o, cp)) *ok = false; /* the strategy's own members (lean's) */
}

/* Every rank's attention work (gathered uncounted: phase -1), for the load balance of the split. */
static int attention_work(const dsacp_engine *e, int W, json_t *cp, bool *ok)
{
    int64_t *all = dsacp_calloc((size_t)W * NSTATS, sizeof *all);
    size_t *rb = dsacp_calloc((size_t)W, sizeof *rb);
    int rc = all && rb ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int q = 0; !rc && q < W; q++) rb[q] = sizeof(dsacp_cp_stats);
    if (!rc) rc = dsacp_comm_gatherv(e->comm, &e->cp.stats, sizeof(dsacp_cp_stats), all, rb, -1);
    json_t *work = rc ? NULL : json_array();
    for (int q = 0; work && q < W; q++) {
        const dsacp_cp_stats *k = (const dsacp_cp_stats *)(all + (size_t)q * NSTATS);
        json_t *r = json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "rank", q, "prefill_tokens",
                              (json_int_t)k->prefill_tokens, "decode_tokens", (json_int_t)k->decode_tokens, "keys_scored",
                              (json_int_t)k->keys_scored, "keys_attended", (json_int_t)k->keys_attended, "lean_decisions",
                              (json_int_t)k->lean_decisions, "lean_fallback_threshold",
                              (json_int_t)k->lean_fallback_threshold, "lean_fallback_ties", (json_int_t)k->lean_fallback_ties,
                              "lean_fallback_rounds", (json_int_t)k->lean_fallback_rounds, "context_gather",
                              (json_int_t)k->context_gather, "context_distributed", (json_int_t)k->context_distributed);
        if (!r || json_array_append_new(work, r)) *ok = false;
    }
    if (!rc) put(cp, "attention_work", work, ok);
    dsacp_free(all), dsacp_free(rb);
    return rc;
}

/* This rank's row of the plan's table: the planned and measured counters, the memory planned and
 * as the engine reports it, and whether the prediction was lost. */
static int plan_row(const dsacp_engine *e, int64_t mine[NPLAN])
{
    dsacp_comm_counter planned[NPHASE], measured[NPHASE];
    const bool tracked = dsacp_engine_plan_tracked(e);
    dsacp_engine_plan_counters(e, planned, measured);
    for (int p = 0; p < NPHASE; p++) {
        int64_t *x = mine + 6 * p;
        x[0] = planned[p].calls, x[1] = planned[p].bytes_sent, x[2] = planned[p].bytes_recv;
        x[3] = measured[p].calls, x[4] = measured[p].bytes_sent, x[5] = measured[p].bytes_recv;
    }
    int64_t *mem = mine + 6 * NPHASE;
    for (int k = 0; k < NMEM; k++) mem[k] = 0;
    mine[NPLAN - 1] = !tracked;
    int rc = dsacp_engine_plan_memory(e, &mem[0], &mem[4]);
    if (rc) return rc;
    dsacp_kv_usage ku;
    dsacp_engine_kv_usage(e, &ku);
    mem[2] = ku.latent_used_bytes, mem[3] = ku.index_used_bytes;
    if (e->cp.wp) {
        dsacp_weight_usage eu;
        dsacp_engine_weight_usage(e, &eu);
        mem[8] = eu.q_proj_resident, mem[9] = eu.o_proj_resident, mem[10] = eu.ring_bytes, mem[11] = eu.gather_bytes;
    }
    return DSACP_OK;
}

/* One rank's entry of the plan's "ranks": KV bytes, weights (DSA-CP), the phases that moved. */
static json_t *plan_rank(const dsacp_engine *e, int q, const int64_t *r)
{
    const int64_t *m = r + 6 * NPHASE;
    const int64_t kv_engine[2] = {m[2], m[3]};
    bool ok = true;
    json_t *o = json_object(), *kv = json_object(), *phases = json_object();
    if (!o || !kv || !phases) ok = false;
    put(o, "rank", json_integer(q), &ok);
    if (kv) put(kv, "planned", int_array(m, 2), &ok), put(kv, "engine", int_array(kv_engine, 2), &ok);
    put(o, "kv", kv, &ok);
    if (e->cp.wp) put(o, "weights", json_pack("{s:o, s:o}", "planned", int_array(m + 4, 4), "engine", int_array(m + 8, 4)), &ok);
    for (int p = 0; phases && p < NPHASE; p++) {
        const int64_t *x = r + 6 * p;
        if (!x[0] && !x[1] && !x[2] && !x[3] && !x[4] && !x[5]) continue;
        put(phases, dsacp_comm_phase_name(p), json_pack("{s:o, s:o}", "planned", int_array(x, 3), "measured",
                                                        int_array(x + 3, 3)), &ok);
    }
    put(o, "phases", phases, &ok);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The planner's prediction of the engine's collectives against what they measured, and the
 * memory, planned (dsacp_plan_kv_bytes, dsacp_plan_weight_usage) and as the engine reports it,
 * every rank's (gathered uncounted), written by rank 0. */
static int plan_members(const dsacp_engine *e, int W, json_t *cp, bool *ok)
{
    int64_t mine[NPLAN], *pall = dsacp_calloc((size_t)W * NPLAN, sizeof *pall);
    size_t *pb = dsacp_calloc((size_t)W, sizeof *pb);
    int rc = pall && pb ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc) rc = plan_row(e, mine);
    for (int q = 0; !rc && q < W; q++) pb[q] = sizeof mine;
    if (!rc) rc = dsacp_comm_gatherv(e->comm, mine, sizeof mine, pall, pb, -1);
    if (!rc && e->cp.rank == 0) {
        bool match = true, lost = false;
        json_t *ranks = json_array();
        for (int q = 0; q < W; q++) {
            const int64_t *r = pall + (size_t)q * NPLAN, *m = r + 6 * NPHASE;
            lost = lost || r[NPLAN - 1];
            for (int p = 0; p < NPHASE; p++)
                for (int k = 0; k < 3; k++) match = match && r[6 * p + k] == r[6 * p + 3 + k];
            match = match && m[0] == m[2] && m[1] == m[3];
            for (int k = 4; k < 8; k++) match = match && m[k] == m[k + 4];
            json_t *one = plan_rank(e, q, r);
            if (!ranks || !one || json_array_append_new(ranks, one)) *ok = false;
        }
        put(cp, "plan", json_pack("{s:s, s:b, s:b, s:o}", "predicted",
                                  "every collective of the engine's steps from the planner's formulas "
                                  "(dsacp_plan_entries_comm), against the counters' growth during those steps; the KV "
                                  "bytes of the live requests [latent, index] and (dsa-cp) q_b_proj / o_proj bytes [q "
                                  "resident, o resident, ring, gather] against the engine's",
                                  "tracked", !lost, "matches", match && !lost, "ranks", ranks), ok);
    }
    dsacp_free(pall), dsacp_free(pb);
    return rc;
}

/* DSA-CP: the q_b_proj / o_proj plans, rank 0's weight bytes, and o_proj's rule and choices. */
static void weights_members(const dsacp_engine *e, json_t *cp, bool *ok)
{
    const dsacp_cp_options *o = &e->cp.opt;
    dsacp_weight_usage u;
    dsacp_engine_weight_usage(e, &u);
    double g, a;
    dsacp_cp_weights_rule(&e->cp, &g, &a);
    put_str(cp, "q_proj", dsacp_weight_plan_name(o->q_proj), ok);
    put_str(cp, "o_proj", dsacp_weight_plan_name(o->o_proj), ok);
    put(cp, "prefetch", integer(o->prefetch), ok);
    put(cp, "weights_rank0", json_pack("{s:I, s:I, s:I, s:I}", "q_proj_resident", (json_int_t)u.q_proj_resident,
                                       "o_proj_resident", (json_int_t)u.o_proj_resident, "ring", (json_int_t)u.ring_bytes,
                                       "gather_buffers", (json_int_t)u.gather_bytes), ok);
    if (!e->cp.wp->col) return;
    put_str(cp, "o_proj_rule", "tp: gather the weight in steps with prefill tokens, else move activations; auto: gather "
                               "when the gathered bytes per rank < activation bytes per rank; a decode-only step with "
                               "sharded layouts (DSA-CP + DCP) moves neither: head columns and one all-reduce (r)", ok);
    put(cp, "o_proj_gather_bytes", formatted("%.0f", g), ok);
    put(cp, "o_proj_activation_bytes_per_token", formatted("%.0f", a), ok);
    put(cp, "o_proj_crossover_tokens", formatted("%.0f", a > 0 ? g / a : 0), ok);
    put(cp, "o_proj_steps", json_pack("{s:I, s:I, s:I}", "gather", (json_int_t)u.steps_gather, "activations",
                                      (json_int_t)u.steps_activations, "allreduce", (json_int_t)u.steps_allreduce), ok);
    put_str(cp, "o_proj_choices", e->cp.wp->choices ? e->cp.wp->choices : "", ok);
}

/* {"cp": {...}} as the members of an object (without its braces), the form comm's notes take. */
static int set_notes(const dsacp_engine *e, json_t *cp)
{
    json_t *root = json_pack("{s:O}", "cp", cp);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text) return dsacp_error(DSACP_ENOMEM, "out of memory for the report's notes");
    const size_t len = strlen(text);
    text[len - 1] = 0; /* the closing brace; the opening one is skipped below */
    int rc = dsacp_comm_set_notes(e->comm, text + 1);
    free(text);
    return rc;
}

int dsacp_engine_report_notes(const dsacp_engine *e)
{
    const int W = e->cp.W > 0 ? e->cp.W : 1;
    bool ok = true;
    json_t *cp = json_object();
    if (!cp) ok = false;
    else options_members(e, cp, &ok);
    /* The two gathers are collective: every rank takes part whatever its own object's state. */
    int rc = attention_work(e, W, cp, &ok);
    if (!rc) rc = plan_members(e, W, cp, &ok);
    if (!rc && ok && e->cp.wp) weights_members(e, cp, &ok);
    if (!rc && !ok) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report's notes");
    if (!rc) rc = set_notes(e, cp);
    json_decref(cp);
    return rc;
}

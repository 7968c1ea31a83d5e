/* cli_run_report.c -- `dsacp run`'s report: --verify's comparison with the one-process replay,
 * the text report (vLLM's metric names) and the --json object (docs/serving.md's schema). */
#include "cli_run.h"
#include "dsacp_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct stats {
    double mean, median, std, p90, p99;
    int64_t n;
} stats;

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static stats stats_of(double *v, int64_t n)
{
    stats s = {0};
    s.n = n;
    if (n == 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    for (int64_t i = 0; i < n; i++) sq += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = sqrt(sq / n);
    s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    s.p90 = v[(int64_t)ceil(0.90 * n) - 1];
    s.p99 = v[(int64_t)ceil(0.99 * n) - 1];
    return s;
}

/* A number for the JSON report: null when not finite (an empty run's rates). */
static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }
static json_t *jint(int64_t v) { return json_integer((json_int_t)v); }

/* Compares every request of res with the reference ver: the first step where they differ. */
int run_compare(const dsacp_serve_result *res, const dsacp_serve_result *ver, int64_t n, bool deployed,
                divergence **out, int64_t *n_div)
{
    *out = NULL;
    *n_div = 0;
    divergence *d = calloc((size_t)n + 1, sizeof *d);
    if (!d) return dsacp_error(DSACP_ENOMEM, "--verify: out of memory");
    for (int64_t i = 0; i < n; i++) {
        const dsacp_serve_out *a = &res->out[i], *b = &ver->out[i];
        const int64_t m = a->n_tokens < b->n_tokens ? a->n_tokens : b->n_tokens;
        int64_t k = 0;
        while (k < m && a->tokens[k] == b->tokens[k]) k++;
        if (k == m && a->n_tokens == b->n_tokens) continue;
        divergence *v = &d[(*n_div)++];
        v->request = i, v->step = k;
        v->token = k < a->n_tokens ? a->tokens[k] : -1;
        v->ref_token = k < b->n_tokens ? b->tokens[k] : -1;
        v->ref_gap = k < b->n_tokens && b->gap ? (double)b->gap[k] : NAN;
        v->near_tie = deployed && v->token >= 0 && v->ref_token >= 0 && v->ref_gap <= RUN_VERIFY_NEAR_TIE;
    }
    *out = d;
    return DSACP_OK;
}

static json_t *stats_json(json_t *o, const char *name, const stats *st)
{
    char k[32];
    const struct { const char *what; double v; } f[] = {
        {"mean", st->mean}, {"median", st->median}, {"std", st->std}, {"p90", st->p90}, {"p99", st->p99}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        snprintf(k, sizeof k, "%s_%s_ms", f[i].what, name);
        json_object_set_new(o, k, jnum(f[i].v));
    }
    return o;
}

/* Steps' times summed (ms) and bytes: of every step, or of one group's. */
typedef struct phase_sums {
    double attn, mlp, comm, total, bytes, proj, att, oproj;
    int64_t steps;
} phase_sums;

/* The steps of `group` (a dsacp_kv_role; -1: every step). */
static phase_sums phase_sums_of(const dsacp_serve_result *res, int group)
{
    phase_sums p = {0};
    for (int64_t i = 0; i < res->n_steps; i++) {
        const dsacp_serve_step *k = &res->steps[i];
        if (group >= 0 && (int)k->group != group) continue;
        p.attn += k->attention_ms, p.mlp += k->mlp_ms, p.comm += k->comm_ms, p.total += k->dur_ms;
        p.bytes += (double)k->comm_bytes;
        p.proj += k->projections_ms, p.att += k->attend_ms, p.oproj += k->o_proj_ms;
        p.steps++;
    }
    return p;
}

/* The latencies of a run (ms), per request and pooled, and its totals. */
typedef struct run_metrics {
    double *ttft, *tpot, *e2el, *itl; /* sorted by stats_of */
    double *ttft_r, *e2el_r;          /* per request, in request order */
    int64_t ntpot, nitl, in_tok, out_tok;
    stats sec[4]; /* TTFT, TPOT, ITL, E2EL */
    phase_sums ph; /* every step */
} run_metrics;

static void metrics_free(run_metrics *mt)
{
    free(mt->ttft), free(mt->tpot), free(mt->e2el), free(mt->itl), free(mt->ttft_r), free(mt->e2el_r);
}

/* Whether request i failed (the client's: a failed request counts in no metric, as in vllm bench serve). */
static bool failed(const report_ctx *c, int64_t i) { return c->errors && c->errors[i]; }

static int metrics_of(const report_ctx *c, run_metrics *mt)
{
    const workload *wl = c->wl;
    const dsacp_serve_result *res = c->res;
    const int64_t n = wl->n;
    *mt = (run_metrics){0};
    int64_t nitl = 0;
    for (int64_t i = 0; i < n; i++) nitl += res->out[i].n_tokens > 1 ? res->out[i].n_tokens - 1 : 0;
    mt->ttft = malloc((size_t)(n + 1) * sizeof(double)), mt->tpot = malloc((size_t)(n + 1) * sizeof(double));
    mt->e2el = malloc((size_t)(n + 1) * sizeof(double)), mt->itl = malloc((size_t)(nitl + 1) * sizeof(double));
    mt->ttft_r = malloc((size_t)(n + 1) * sizeof(double)), mt->e2el_r = malloc((size_t)(n + 1) * sizeof(double));
    if (!mt->ttft || !mt->tpot || !mt->e2el || !mt->itl || !mt->ttft_r || !mt->e2el_r) {
        metrics_free(mt);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    }
    int64_t ok = 0;
    for (int64_t i = 0; i < n; i++) {
        const dsacp_serve_out *o = &res->out[i];
        mt->ttft_r[i] = (o->first_s - o->arrival_s) * 1e3;
        mt->e2el_r[i] = (o->finish_s - o->arrival_s) * 1e3;
        if (failed(c, i)) continue;
        mt->in_tok += wl->rq[i].prompt_len, mt->out_tok += o->n_tokens;
        mt->ttft[ok] = mt->ttft_r[i], mt->e2el[ok++] = mt->e2el_r[i];
        if (o->n_tokens > 1) mt->tpot[mt->ntpot++] = (mt->e2el_r[i] - mt->ttft_r[i]) / (double)(o->n_tokens - 1);
        for (int64_t k = 1; k < o->n_tokens; k++) mt->itl[mt->nitl++] = (o->token_s[k] - o->token_s[k - 1]) * 1e3;
    }
    mt->sec[0] = stats_of(mt->ttft, ok), mt->sec[1] = stats_of(mt->tpot, mt->ntpot);
    mt->sec[2] = stats_of(mt->itl, mt->nitl), mt->sec[3] = stats_of(mt->e2el, ok);
    mt->ph = phase_sums_of(res, -1);
    return DSACP_OK;
}

static const char *const metric_keys[4] = {"ttft", "tpot", "itl", "e2el"};

/* The time-per-phase lines of steps summed in p. */
static void text_phases(FILE *f, const phase_sums *p, double idle_s)
{
    /* The attention layer's time outside its three timed parts: buffer set-up and agreement,
     * staging the new cache entries, waiting for the prefill exchange, the CP merge's own calls. */
    const double arest = fmax(p->attn - p->proj - p->att - p->oproj, 0), total = p->total;
    fprintf(f, "  attention layer: %.2f s (%.0f%%) = projections %.2f + indexer, top-k and sparse MLA %.2f + o_proj %.2f\n"
               "    + set-up, staging and exchange waits %.2f\n",
            p->attn / 1e3, 100 * p->attn / fmax(total, 1e-9), p->proj / 1e3, p->att / 1e3, p->oproj / 1e3, arest / 1e3);
    fprintf(f, "  MLP / MoE: %.2f s (%.0f%%)   communication (inside collectives, waits included): %.2f s (%.0f%%)\n",
            p->mlp / 1e3, 100 * p->mlp / fmax(total, 1e-9), p->comm / 1e3, 100 * p->comm / fmax(total, 1e-9));
    fprintf(f, "  other (embedding, norms, head, scheduling): %.2f s; idle between steps: %.2f s\n",
            (total - p->attn - p->mlp) / 1e3, idle_s);
}

/* The "Ranks:" line: the run's plan, or each group's. */
static void text_ranks(FILE *f, const report_ctx *c)
{
    const dsacp_cp_options *cpo = c->cpo;
    const int W = c->W;
    if (!c->pd) {
        const char *detail = W > 1 ? (cpo->mode == DSACP_CP_DCP ? dsacp_decode_strategy_name(cpo->decode)
                                                               : dsacp_weight_plan_name(cpo->o_proj)) : "";
        fprintf(f, "%-42s %d (%s%s%s)\n", "Ranks:", W, dsacp_cp_mode_name(cpo->mode), W > 1 ? ", " : "", detail);
        return;
    }
    fprintf(f, "%-42s %d, disaggregated:\n", "Ranks:", c->world_W);
    for (int g = DSACP_KV_PRODUCER; g <= DSACP_KV_CONSUMER; g++) {
        int n = 0, lead = -1, last = -1;
        for (int q = 0; q < c->world_W; q++)
            if (c->pd[q].role == g) n++, lead = lead < 0 ? q : lead, last = q;
        char who[64];
        if (n == 1) snprintf(who, sizeof who, "1 rank (world rank %d)", lead);
        else snprintf(who, sizeof who, "%d ranks (world ranks %d%s%d)", n, lead, last - lead + 1 == n ? "-" : ", ..., ", last);
        if (lead >= 0) fprintf(f, "  %-11s %s: %s\n", dsacp_kv_role_name((dsacp_kv_role)g), who, c->pd[lead].plan);
    }
}

/* The text report's throughput, latency and time-per-phase sections. */
static void text_timing(FILE *f, const report_ctx *c, const run_metrics *mt)
{
    const dsacp_serve_result *res = c->res;
    const int64_t n = c->wl->n - c->n_failed;
    const double dur = res->duration_s, total = mt->ph.total;
    const int64_t in_tok = mt->in_tok, out_tok = mt->out_tok;
    fprintf(f, "============ dsacp run: serving result ============\n");
    fprintf(f, "%-42s %s\n", "Model:", c->model);
    if (c->url) fprintf(f, "%-42s %s (the client's view: no server-side numbers)\n", "Server:", c->url);
    else text_ranks(f, c);
    fprintf(f, "%-42s %lld\n", "Successful requests:", (long long)n);
    if (c->url) fprintf(f, "%-42s %lld\n", "Failed requests:", (long long)c->n_failed);
    fprintf(f, "%-42s %.2f\n", "Benchmark duration (s):", dur);
    fprintf(f, "%-42s %lld\n", "Total input tokens:", (long long)in_tok);
    fprintf(f, "%-42s %lld\n", "Total generated tokens:", (long long)out_tok);
    fprintf(f, "%-42s %.2f\n", "Request throughput (req/s):", n / dur);
    fprintf(f, "%-42s %.2f\n", "Output token throughput (tok/s):", out_tok / dur);
    fprintf(f, "%-42s %.2f\n", "Total Token throughput (tok/s):", (in_tok + out_tok) / dur);
    static const char *const titles[4] = {"Time to First Token", "Time per Output Token (excl. 1st token)",
                                          "Inter-token Latency", "End-to-end Latency"};
    static const char *const names[4] = {"TTFT", "TPOT", "ITL", "E2EL"};
    for (int k = 0; k < 4; k++) {
        fprintf(f, "%s\n", titles[k]);
        fprintf(f, "  Mean / Median / P90 / P99 %s (ms):%*s %.2f / %.2f / %.2f / %.2f\n", names[k], (int)(10 - strlen(names[k])),
                "", mt->sec[k].mean, mt->sec[k].median, mt->sec[k].p90, mt->sec[k].p99);
    }
    if (c->url) return; /* the steps are the server's */
    if (c->pd) {
        fprintf(f, "  (TTFT includes the KV transfer: the first token reaches the client from the decode group; TPOT\n"
                   "   and ITL are the decode group's)\n");
        return; /* each group's phases follow in text_groups */
    }
    fprintf(f, "Time per phase (rank 0, summed over %lld steps)\n", (long long)res->n_steps);
    text_phases(f, &mt->ph, fmax(dur - total / 1e3, 0));
}

/* ---- speculative decoding (docs/speculative.md, "Metrics") ---- */

/* vLLM's spec-decode metrics of a run, and the time of its draft and verify phases. */
typedef struct spec_metrics {
    double acceptance_rate, mean_acceptance_length, tokens_per_step, per_pos[DSACP_SPEC_MAX_TOKENS];
    double draft_s, verify_s;
    int64_t draft_steps, verify_steps;
} spec_metrics;

static spec_metrics spec_metrics_of(const dsacp_serve_result *res, const run_metrics *mt, int64_t n)
{
    spec_metrics m = {0};
    const double drafts = (double)res->spec_num_drafts;
    m.acceptance_rate = res->spec_num_draft_tokens > 0 ? (double)res->spec_num_accepted_tokens / (double)res->spec_num_draft_tokens : NAN;
    m.mean_acceptance_length = drafts > 0 ? 1 + (double)res->spec_num_accepted_tokens / drafts : NAN;
    for (int64_t j = 0; j < res->spec.num_speculative_tokens && j < DSACP_SPEC_MAX_TOKENS; j++)
        m.per_pos[j] = drafts > 0 ? (double)res->spec_accepted_per_pos[j] / drafts : NAN;
    /* The tokens decode and verify rows produced (every request's first token comes from its prefill). */
    m.tokens_per_step = res->target_steps_decode > 0 ? (double)(mt->out_tok - n) / (double)res->target_steps_decode : NAN;
    for (int64_t i = 0; i < res->n_steps; i++) {
        const dsacp_serve_step *k = &res->steps[i];
        m.draft_s += k->draft_ms / 1e3, m.draft_steps += k->draft_steps;
        if (k->verify_tokens > 0) m.verify_s += k->dur_ms / 1e3, m.verify_steps++;
    }
    return m;
}

static void text_spec(FILE *f, const report_ctx *c, const run_metrics *mt)
{
    const dsacp_serve_result *res = c->res;
    const dsacp_spec_config *sc = &res->spec;
    if (sc->method == DSACP_SPEC_NONE) return;
    const spec_metrics m = spec_metrics_of(res, mt, c->wl->n);
    if (sc->method == DSACP_SPEC_NGRAM)
        fprintf(f, "Speculative decoding: ngram (prompt lookup %lld..%lld), %lld draft tokens per step\n",
                (long long)sc->prompt_lookup_min, (long long)sc->prompt_lookup_max, (long long)sc->num_speculative_tokens);
    else
        fprintf(f, "Speculative decoding: mtp (the model's MTP layer), %lld draft tokens per step\n",
                (long long)sc->num_speculative_tokens);
    fprintf(f, "  spec_decode_num_drafts / num_draft_tokens / num_accepted_tokens: %lld / %lld / %lld\n",
            (long long)res->spec_num_drafts, (long long)res->spec_num_draft_tokens, (long long)res->spec_num_accepted_tokens);
    if (res->spec_num_drafts > 0) {
        fprintf(f, "  Draft acceptance rate: %.1f%%   Mean acceptance length: %.2f   Tokens per target step (batch): %.2f\n",
                100 * m.acceptance_rate, m.mean_acceptance_length, m.tokens_per_step);
        fprintf(f, "  Per-position acceptance rate:");
        for (int64_t j = 0; j < sc->num_speculative_tokens; j++) fprintf(f, "%s %.3f", j ? "," : "", m.per_pos[j]);
    } else { /* no rate to print: nothing was proposed */
        fprintf(f, "  No drafts were proposed%s   Tokens per target step (batch): %.2f",
                sc->method == DSACP_SPEC_NGRAM ? " (no suffix n-gram of a sequence occurred earlier in it)." : ".",
                m.tokens_per_step);
    }
    if (sc->method == DSACP_SPEC_NGRAM)
        fprintf(f, "\n  Time per phase: draft %.3f s (prompt lookups), verify %.2f s (%lld target steps with verify rows)\n",
                m.draft_s, m.verify_s, (long long)m.verify_steps);
    else
        fprintf(f, "\n  Time per phase: draft %.2f s (%lld MTP steps), verify %.2f s (%lld target steps with verify rows)\n",
                m.draft_s, (long long)m.draft_steps, m.verify_s, (long long)m.verify_steps);
}

static json_t *json_spec(const report_ctx *c, const run_metrics *mt)
{
    const dsacp_serve_result *res = c->res;
    const dsacp_spec_config *sc = &res->spec;
    if (sc->method == DSACP_SPEC_NONE) return json_null();
    const spec_metrics m = spec_metrics_of(res, mt, c->wl->n);
    json_t *o = json_object(), *pos = json_array(), *rate = json_array();
    json_object_set_new(o, "method", json_string(sc->method == DSACP_SPEC_NGRAM ? "ngram" : "mtp"));
    json_object_set_new(o, "num_speculative_tokens", jint(sc->num_speculative_tokens));
    if (sc->method == DSACP_SPEC_NGRAM) {
        json_object_set_new(o, "prompt_lookup_min", jint(sc->prompt_lookup_min));
        json_object_set_new(o, "prompt_lookup_max", jint(sc->prompt_lookup_max));
    }
    json_object_set_new(o, "spec_decode_num_drafts", jint(res->spec_num_drafts));
    json_object_set_new(o, "spec_decode_num_draft_tokens", jint(res->spec_num_draft_tokens));
    json_object_set_new(o, "spec_decode_num_accepted_tokens", jint(res->spec_num_accepted_tokens));
    for (int64_t j = 0; j < sc->num_speculative_tokens; j++) {
        json_array_append_new(pos, jint(res->spec_accepted_per_pos[j]));
        json_array_append_new(rate, jnum(m.per_pos[j]));
    }
    json_object_set_new(o, "spec_decode_num_accepted_tokens_per_pos", pos);
    json_object_set_new(o, "acceptance_rate_per_pos", rate);
    json_object_set_new(o, "acceptance_rate", jnum(m.acceptance_rate));
    json_object_set_new(o, "mean_acceptance_length", jnum(m.mean_acceptance_length));
    json_object_set_new(o, "tokens_per_target_step", jnum(m.tokens_per_step));
    json_object_set_new(o, "target_steps_decode", jint(res->target_steps_decode));
    json_object_set_new(o, "draft_s", jnum(m.draft_s));
    json_object_set_new(o, "draft_steps", jint(m.draft_steps));
    json_object_set_new(o, "verify_s", jnum(m.verify_s));
    json_object_set_new(o, "verify_steps", jint(m.verify_steps));
    return o;
}

/* ---- disaggregated runs ---- */

/* The first world rank of group g (a dsacp_kv_role), -1 when none. */
static int group_lead(const report_ctx *c, int g)
{
    for (int q = 0; q < c->world_W; q++)
        if (c->pd[q].role == g) return q;
    return -1;
}

/* The transfer per request: bytes and the time from the producer's first token to the consumer
 * holding every entry (kv_ready_s - prefill_done_s). */
typedef struct transfer_stats {
    stats bytes, ms;
    int64_t total_bytes, messages;
    bool counters_equal; /* the link's kv_transfer counters equal the formula on every rank */
} transfer_stats;

static int transfer_of(const report_ctx *c, transfer_stats *t)
{
    const int64_t n = c->wl->n;
    double *b = malloc((size_t)(n + 1) * sizeof *b), *ms = malloc((size_t)(n + 1) * sizeof *ms);
    if (!b || !ms) {
        free(b), free(ms);
        return dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    }
    *t = (transfer_stats){.counters_equal = true};
    for (int64_t i = 0; i < n; i++) {
        const dsacp_serve_out *o = &c->res->out[i];
        b[i] = (double)o->kv_bytes, ms[i] = (o->kv_ready_s - o->prefill_done_s) * 1e3;
        t->total_bytes += o->kv_bytes, t->messages += o->kv_messages;
    }
    t->bytes = stats_of(b, n), t->ms = stats_of(ms, n);
    free(b), free(ms);
    for (int q = 0; q < c->world_W; q++) {
        const dsacp_comm_counter *m = &c->pd[q].measured, *p = &c->pd[q].predicted;
        t->counters_equal &= m->calls == p->calls && m->bytes_sent == p->bytes_sent && m->bytes_recv == p->bytes_recv;
    }
    return DSACP_OK;
}

/* Each group's steps, time per phase, KV use and preemptions; the transfer and the link's counters. */
static void text_groups(FILE *f, const report_ctx *c, const transfer_stats *t)
{
    const dsacp_serve_result *res = c->res;
    for (int g = DSACP_KV_PRODUCER; g <= DSACP_KV_CONSUMER; g++) {
        const int lead = group_lead(c, g);
        if (lead < 0) continue;
        const phase_sums p = phase_sums_of(res, g);
        fprintf(f, "Group %s (W %d): %lld steps, busy %.2f s; KV peak %.0f%% of %lld blocks of %lld tokens; "
                "preemptions %lld\n", dsacp_kv_role_name((dsacp_kv_role)g), res->pd_W[g - 1], (long long)res->pd_steps[g - 1],
                res->pd_busy_s[g - 1], 100 * res->pd_kv_peak_use[g - 1], (long long)c->pd[lead].kv_blocks,
                (long long)c->pd[lead].block_size, (long long)res->pd_preemptions[g - 1]);
        text_phases(f, &p, fmax(res->duration_s - p.total / 1e3, 0));
    }
    fprintf(f, "KV transfer (kv_producer -> kv_consumer, point to point, in flight with the next layer):\n");
    fprintf(f, "  %.2f MB in %lld messages; per request: Mean / Median / P99 %.1f / %.1f / %.1f KB, transfer time "
            "(prefill done -> KV ready) %.2f / %.2f / %.2f ms\n", (double)t->total_bytes / 1048576, (long long)t->messages,
            t->bytes.mean / 1024, t->bytes.median / 1024, t->bytes.p99 / 1024, t->ms.mean, t->ms.median, t->ms.p99);
    fprintf(f, "  link counters (kv_transfer: calls / bytes sent / bytes received) against the relayout's formula "
            "(dsacp_pd_predicted): %s\n", t->counters_equal ? "equal on every rank" : "DIFFERENT");
    for (int q = 0; q < c->world_W; q++) {
        const dsacp_comm_counter *m = &c->pd[q].measured, *p = &c->pd[q].predicted;
        fprintf(f, "    rank %d (%s %d): %lld / %lld / %lld", q, dsacp_kv_role_name((dsacp_kv_role)c->pd[q].role),
                c->pd[q].group_rank, (long long)m->calls, (long long)m->bytes_sent, (long long)m->bytes_recv);
        if (!t->counters_equal)
            fprintf(f, "   formula %lld / %lld / %lld", (long long)p->calls, (long long)p->bytes_sent,
                    (long long)p->bytes_recv);
        fprintf(f, "\n");
    }
}

/* The text report's communication, memory, KV and --verify sections. */
static void text_resources(FILE *f, const report_ctx *c, const run_metrics *mt)
{
    const dsacp_serve_result *res = c->res;
    const int64_t n = c->wl->n;
    fprintf(f, "Communication %s: %.1f MB, %.1f KB per generated token; %s\n",
            c->pd ? "inside each group (its rank 0 received)" : "(rank 0 received)", mt->ph.bytes / 1048576,
            mt->ph.bytes / 1024 / fmax((double)mt->out_tok, 1),
            c->pd ? "per group and phase: --comm-report FILE (members producer, consumer, link)" : "by phase:");
    if (c->world && !c->pd) {
        for (int ph = 0, k = 0; ph < DSACP_PHASE_COUNT; ph++) {
            const dsacp_comm_counter ct = dsacp_comm_get_counter(c->world, ph);
            if (!ct.calls) continue;
            fprintf(f, "%s%s %lld calls %.1f MB", k++ % 3 ? ",  " : "  ", dsacp_comm_phase_name(ph), (long long)ct.calls,
                    (double)ct.bytes_recv / 1048576);
            if (k % 3 == 0) fprintf(f, "\n");
        }
        fprintf(f, "\n");
    }
    fprintf(f, "Memory per rank (MB): weights / KV pool / KV peak used (busiest rank's share) / transient peak / weight buffers\n");
    for (int q = 0; q < (c->pd ? c->world_W : c->W); q++) {
        const double *am = c->pd ? c->pd[q].mem : c->allmem + 6 * q;
        char who[48] = "";
        if (c->pd) snprintf(who, sizeof who, " (%s %d)", dsacp_kv_role_name((dsacp_kv_role)c->pd[q].role), c->pd[q].group_rank);
        fprintf(f, "  rank %d%s: %.1f / %.1f / %.1f / %.1f / %.1f\n", q, who, am[0] / 1048576, am[1] / 1048576,
                am[2] / 1048576, am[3] / 1048576, am[4] / 1048576);
    }
    if (!c->pd) /* a disaggregated run gives each group's in text_groups */
        fprintf(f, "KV utilisation peak: %.0f%% of %lld blocks of %lld tokens; preemptions: %lld\n", 100 * res->kv_peak_use,
                (long long)c->eo->num_blocks, (long long)c->eo->block_size, (long long)res->preemptions);
    if (c->verify) {
        if (!c->deployed)
            fprintf(f, "Verify (exact numerics: every token identical to one process): %lld of %lld requests generated "
                       "identical tokens%s\n", (long long)(n - c->n_div), (long long)n, c->passed ? "" : "  <-- MISMATCH");
        else
            fprintf(f, "Verify (deployed numerics: identical tokens, or diverging only at a near-tie, the one-process "
                       "top-2 logit gap <= %g): %lld of %lld requests generated identical tokens, %lld diverged at "
                       "near-ties%s\n", RUN_VERIFY_NEAR_TIE, (long long)(n - c->n_div), (long long)n,
                    (long long)c->near_ties, c->passed ? "" : "  <-- MISMATCH");
        for (int64_t k = 0; k < c->n_div; k++) {
            const divergence *d = &c->div[k];
            fprintf(f, "  request %lld differs at generated token %lld: %d here, %d on one process (its top-2 gap %.4g%s)\n",
                    (long long)d->request, (long long)d->step, d->token, d->ref_token, d->ref_gap,
                    d->near_tie ? ": a near-tie" : c->deployed ? ": NOT a near-tie" : "");
        }
    }
    fprintf(f, "===================================================\n");
}

static json_t *json_engine_config(const report_ctx *c);
static json_t *json_client_config(const report_ctx *c);

/* --json: "config" and the run's totals. */
static void json_summary(json_t *j, const report_ctx *c, const run_metrics *mt)
{
    const dsacp_serve_result *res = c->res;
    const int64_t n = c->wl->n - c->n_failed, in_tok = mt->in_tok, out_tok = mt->out_tok;
    const double dur = res->duration_s;
    json_object_set_new(j, "config", c->url ? json_client_config(c) : json_engine_config(c));
    json_object_set_new(j, "completed", jint(n));
    if (c->url) json_object_set_new(j, "failed", jint(c->n_failed));
    json_object_set_new(j, "duration_s", jnum(dur));
    json_object_set_new(j, "total_input_tokens", jint(in_tok));
    json_object_set_new(j, "total_output_tokens", jint(out_tok));
    json_object_set_new(j, "request_throughput", jnum(n / dur));
    json_object_set_new(j, "output_throughput", jnum(out_tok / dur));
    json_object_set_new(j, "total_token_throughput", jnum((in_tok + out_tok) / dur));
    for (int k = 0; k < 4; k++) stats_json(j, metric_keys[k], &mt->sec[k]);
    /* The server's side of the run: null from the client, which cannot see it. */
    json_object_set_new(j, "preemptions", c->url ? json_null() : jint(res->preemptions));
    json_object_set_new(j, "kv_utilization_peak", c->url ? json_null() : jnum(res->kv_peak_use));
    json_object_set_new(j, "comm_bytes_rank0", c->url ? json_null() : jnum(mt->ph.bytes));
    json_object_set_new(j, "comm_bytes_per_generated_token",
                        c->url ? json_null() : jnum(mt->ph.bytes / fmax((double)out_tok, 1)));
}

/* --json "config" of a run of the engine. */
static json_t *json_engine_config(const report_ctx *c)
{
    const dsacp_engine_options *eo = c->eo;
    const dsacp_cp_options *cpo = c->cpo;
    json_t *cfgj = json_object();
    json_object_set_new(cfgj, "model", json_string(c->model));
    json_object_set_new(cfgj, "world", jint(c->pd ? c->world_W : c->W));
    json_object_set_new(cfgj, "cp_mode", json_string(dsacp_cp_mode_name(cpo->mode)));
    json_object_set_new(cfgj, "decode_strategy", json_string(dsacp_decode_strategy_name(cpo->decode)));
    json_object_set_new(cfgj, "kv_layout", json_string(dsacp_cp_layout_name(cpo->kv_layout)));
    json_object_set_new(cfgj, "index_layout", json_string(dsacp_cp_layout_name(cpo->index_layout)));
    json_object_set_new(cfgj, "o_proj", json_string(dsacp_weight_plan_name(cpo->o_proj)));
    json_object_set_new(cfgj, "numerics", json_string(c->deployed ? "deployed" : "exact"));
    json_object_set_new(cfgj, "max_batch_tokens", jint(c->mbt));
    json_object_set_new(cfgj, "kv_blocks", jint(eo->num_blocks));
    json_object_set_new(cfgj, "block_size", jint(eo->block_size));
    return cfgj;
}

/* --json "config" of the client: the model's name and the server. */
static json_t *json_client_config(const report_ctx *c)
{
    json_t *cfgj = json_object();
    json_object_set_new(cfgj, "model", json_string(c->model));
    json_object_set_new(cfgj, "url", json_string(c->url));
    return cfgj;
}

/* --json: "verify" (null without --verify). */
static json_t *json_verify(const report_ctx *c)
{
    if (!c->verify) return json_null();
    const int64_t n = c->wl->n;
    json_t *vj = json_object();
    json_object_set_new(vj, "numerics", json_string(c->deployed ? "deployed" : "exact"));
    json_object_set_new(vj, "checks", json_string(c->deployed ? "identical tokens, or the first divergence of each "
                                                                "request at a near-tie" : "identical tokens"));
    json_object_set_new(vj, "near_tie_gap", c->deployed ? jnum(RUN_VERIFY_NEAR_TIE) : json_null());
    json_object_set_new(vj, "requests", jint(n));
    json_object_set_new(vj, "identical", jint(n - c->n_div));
    json_object_set_new(vj, "passed", json_boolean(c->passed));
    json_t *dv = json_array();
    for (int64_t k = 0; k < c->n_div; k++) {
        const divergence *d = &c->div[k];
        json_t *o = json_object();
        json_object_set_new(o, "request", jint(d->request));
        json_object_set_new(o, "step", jint(d->step));
        json_object_set_new(o, "token", d->token >= 0 ? jint(d->token) : json_null());
        json_object_set_new(o, "reference_token", d->ref_token >= 0 ? jint(d->ref_token) : json_null());
        json_object_set_new(o, "reference_gap", jnum(d->ref_gap));
        json_object_set_new(o, "near_tie", json_boolean(d->near_tie));
        json_array_append_new(dv, o);
    }
    json_object_set_new(vj, "divergences", dv);
    return vj;
}

/* --json: "memory_per_rank" and "steps". */
static void json_memory_steps(json_t *j, const report_ctx *c)
{
    const dsacp_serve_result *res = c->res;
    json_t *mj = json_array();
    for (int q = 0; q < (c->pd ? c->world_W : c->W); q++) {
        json_t *o = json_object();
        json_object_set_new(o, "rank", jint(q));
        if (c->pd) json_object_set_new(o, "role", json_string(dsacp_kv_role_name((dsacp_kv_role)c->pd[q].role)));
        static const char *const mk[5] = {"weights", "kv_pool", "kv_peak_used", "transient_peak", "weight_buffers"};
        const double *am = c->pd ? c->pd[q].mem : c->allmem + 6 * q;
        for (int k = 0; k < 5; k++) json_object_set_new(o, mk[k], jnum(round(am[k])));
        json_array_append_new(mj, o);
    }
    json_object_set_new(j, "memory_per_rank", mj);
    json_t *sj = json_array();
    for (int64_t i = 0; i < res->n_steps; i++) {
        const dsacp_serve_step *k = &res->steps[i];
        json_t *o = json_object(), *ph = json_object();
        json_object_set_new(o, "index", jint(i));
        json_object_set_new(o, "t_s", jnum(k->t_s));
        json_object_set_new(o, "dur_ms", jnum(k->dur_ms));
        json_object_set_new(o, "prefill_tokens", jint(k->prefill_tokens));
        json_object_set_new(o, "decode_tokens", jint(k->decode_tokens));
        if (res->spec.method != DSACP_SPEC_NONE) {
            json_object_set_new(o, "verify_tokens", jint(k->verify_tokens));
            json_object_set_new(o, "draft_steps", jint(k->draft_steps));
            json_object_set_new(o, "draft_ms", jnum(k->draft_ms));
        }
        json_object_set_new(o, "comm_bytes", jint(k->comm_bytes));
        if (c->pd) json_object_set_new(o, "group", json_string(dsacp_kv_role_name(k->group)));
        json_object_set_new(ph, "projections", jnum(k->projections_ms));
        json_object_set_new(ph, "attention", jnum(k->attend_ms));
        json_object_set_new(ph, "o_proj", jnum(k->o_proj_ms));
        json_object_set_new(ph, "attention_other",
                            jnum(fmax(k->attention_ms - k->projections_ms - k->attend_ms - k->o_proj_ms, 0)));
        json_object_set_new(ph, "mlp", jnum(k->mlp_ms));
        json_object_set_new(ph, "other", jnum(fmax(k->dur_ms - k->attention_ms - k->mlp_ms, 0)));
        json_object_set_new(o, "phases_ms", ph);
        json_object_set_new(o, "comm_ms", jnum(k->comm_ms));
        json_array_append_new(sj, o);
    }
    json_object_set_new(j, "steps", sj);
}

/* --json: "requests", each with its tokens. */
static json_t *json_requests(const report_ctx *c, const run_metrics *mt)
{
    json_t *rj = json_array();
    for (int64_t i = 0; i < c->wl->n; i++) {
        const dsacp_serve_out *o = &c->res->out[i];
        json_t *r = json_object(), *tk = json_array();
        json_object_set_new(r, "id", jint(i));
        json_object_set_new(r, "prompt_len", jint(c->wl->rq[i].prompt_len));
        json_object_set_new(r, "output_len", jint(o->n_tokens));
        json_object_set_new(r, "arrival_s", jnum(o->arrival_s));
        const bool bad = failed(c, i);
        json_object_set_new(r, "ttft_ms", bad ? json_null() : jnum(mt->ttft_r[i]));
        json_object_set_new(r, "e2el_ms", bad ? json_null() : jnum(mt->e2el_r[i]));
        json_object_set_new(r, "tpot_ms", o->n_tokens > 1 && !bad
                                              ? jnum((mt->e2el_r[i] - mt->ttft_r[i]) / (double)(o->n_tokens - 1))
                                              : json_null());
        json_object_set_new(r, "preemptions", c->url ? json_null() : jint(o->preemptions));
        if (c->url) json_object_set_new(r, "error", bad ? json_string(c->errors[i]) : json_null());
        if (c->pd) {
            json_object_set_new(r, "prefill_done_s", jnum(o->prefill_done_s));
            json_object_set_new(r, "kv_ready_s", jnum(o->kv_ready_s));
            json_object_set_new(r, "transfer_ms", jnum((o->kv_ready_s - o->prefill_done_s) * 1e3));
            json_object_set_new(r, "kv_bytes", jint(o->kv_bytes));
            json_object_set_new(r, "kv_messages", jint(o->kv_messages));
        }
        /* The client: -1 where the server sent text without its token ids. */
        for (int64_t k = 0; k < o->n_tokens; k++) json_array_append_new(tk, o->tokens[k] >= 0 ? jint(o->tokens[k]) : json_null());
        json_object_set_new(r, "tokens", tk);
        json_array_append_new(rj, r);
    }
    return rj;
}

/* --json "disaggregated": a group's numbers. */
static json_t *json_group(const report_ctx *c, int g)
{
    const dsacp_serve_result *res = c->res;
    const int lead = group_lead(c, g);
    const phase_sums p = phase_sums_of(res, g);
    json_t *o = json_object(), *ph = json_object();
    json_object_set_new(o, "world", jint(res->pd_W[g - 1]));
    json_object_set_new(o, "first_world_rank", jint(lead));
    json_object_set_new(o, "plan", json_string(lead >= 0 ? c->pd[lead].plan : ""));
    json_object_set_new(o, "kv_blocks", jint(lead >= 0 ? c->pd[lead].kv_blocks : 0));
    json_object_set_new(o, "block_size", jint(lead >= 0 ? c->pd[lead].block_size : 0));
    json_object_set_new(o, "steps", jint(res->pd_steps[g - 1]));
    json_object_set_new(o, "busy_s", jnum(res->pd_busy_s[g - 1]));
    json_object_set_new(o, "kv_utilization_peak", jnum(res->pd_kv_peak_use[g - 1]));
    json_object_set_new(o, "preemptions", jint(res->pd_preemptions[g - 1]));
    const struct { const char *k; double v; } f[] = {
        {"attention", p.attn}, {"projections", p.proj}, {"indexer_topk_sparse_mla", p.att}, {"o_proj", p.oproj},
        {"mlp", p.mlp}, {"communication", p.comm}, {"steps_total", p.total}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) json_object_set_new(ph, f[i].k, jnum(f[i].v / 1e3));
    json_object_set_new(o, "phases_s", ph);
    return o;
}

static json_t *json_counter(const dsacp_comm_counter *k)
{
    json_t *o = json_object();
    json_object_set_new(o, "calls", jint(k->calls));
    json_object_set_new(o, "bytes_sent", jint(k->bytes_sent));
    json_object_set_new(o, "bytes_recv", jint(k->bytes_recv));
    return o;
}

/* --json "disaggregated": both groups, the transfer, the link's counters beside the formula. */
static json_t *json_disaggregated(const report_ctx *c, const transfer_stats *t)
{
    json_t *o = json_object(), *tj = json_object(), *lj = json_array();
    json_object_set_new(o, "producer", json_group(c, DSACP_KV_PRODUCER));
    json_object_set_new(o, "consumer", json_group(c, DSACP_KV_CONSUMER));
    json_object_set_new(tj, "bytes", jint(t->total_bytes));
    json_object_set_new(tj, "messages", jint(t->messages));
    const struct { const char *k; double v; } f[] = {
        {"mean_kv_bytes", t->bytes.mean}, {"median_kv_bytes", t->bytes.median}, {"p99_kv_bytes", t->bytes.p99},
        {"mean_transfer_ms", t->ms.mean}, {"median_transfer_ms", t->ms.median}, {"p99_transfer_ms", t->ms.p99}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) json_object_set_new(tj, f[i].k, jnum(f[i].v));
    json_object_set_new(tj, "counters_equal_formula", json_boolean(t->counters_equal));
    for (int q = 0; q < c->world_W; q++) {
        json_t *r = json_object();
        json_object_set_new(r, "rank", jint(q));
        json_object_set_new(r, "role", json_string(dsacp_kv_role_name((dsacp_kv_role)c->pd[q].role)));
        json_object_set_new(r, "group_rank", jint(c->pd[q].group_rank));
        json_object_set_new(r, "kv_transfer", json_counter(&c->pd[q].measured));
        json_object_set_new(r, "predicted", json_counter(&c->pd[q].predicted));
        json_array_append_new(lj, r);
    }
    json_object_set_new(tj, "link_counters", lj);
    json_object_set_new(o, "transfer", tj);
    return o;
}

/* The client's end of the text report: each failed request with the server's answer (the first
 * ten; the --json report has them all). */
static void text_failures(FILE *f, const report_ctx *c)
{
    for (int64_t i = 0, shown = 0; i < c->wl->n && c->n_failed; i++) {
        if (!failed(c, i)) continue;
        if (shown++ == 10) {
            fprintf(f, "  ... %lld more failed requests (--json FILE lists each)\n", (long long)(c->n_failed - 10));
            break;
        }
        fprintf(f, "  request %lld failed: %s\n", (long long)i, c->errors[i]);
    }
    fprintf(f, "===================================================\n");
}

int run_write_report(FILE *f, json_t *j, const report_ctx *c)
{
    run_metrics mt;
    transfer_stats t = {.counters_equal = true};
    int rc = metrics_of(c, &mt);
    if (rc) return rc;
    if (c->pd && (rc = transfer_of(c, &t))) {
        metrics_free(&mt);
        return rc;
    }
    text_timing(f, c, &mt);
    if (c->pd) text_groups(f, c, &t);
    if (c->url) text_failures(f, c);
    else text_spec(f, c, &mt), text_resources(f, c, &mt);
    if (j) {
        json_summary(j, c, &mt);
        if (c->pd) json_object_set_new(j, "disaggregated", json_disaggregated(c, &t));
        json_object_set_new(j, "verify", json_verify(c));
        json_object_set_new(j, "speculative", c->url ? json_null() : json_spec(c, &mt));
        if (!c->url) json_memory_steps(j, c); /* the server's: the client cannot see them */
        json_object_set_new(j, "requests", json_requests(c, &mt));
    }
    metrics_free(&mt);
    return DSACP_OK;
}

int run_report_build(const report_ctx *c, cli_output *json_out, bool json, char **text, size_t *len, char **jtext)
{
    FILE *f = open_memstream(text, len);
    json_t *j = json_object();
    int rc = f && j ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    if (!rc) rc = run_write_report(f, json ? j : NULL, c);
    if (f && fclose(f) != 0 && !rc) rc = dsacp_error(DSACP_ENOMEM, "out of memory for the report");
    if (!rc && json) {
        *jtext = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        if (!*jtext) rc = dsacp_error(DSACP_ENOMEM, "--json: out of memory for the report");
    }
    json_decref(j);
    if (!rc && *jtext) {
        const size_t jl = strlen(*jtext);
        (*jtext)[jl] = '\n'; /* its NUL becomes the final newline */
        rc = cli_output_commit_bytes(json_out, *jtext, jl + 1);
        if (rc) dsacp_error_context(rc, "--json");
    }
    return rc;
}

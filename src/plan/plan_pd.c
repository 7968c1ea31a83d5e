/*
 * plan_pd.c -- disaggregated prefill and decode priced (include/dsacp_plan.h, docs/planning.md
 * "Disaggregated prefill and decode"): the kv_transfer counters of a relayout from src/cp's one
 * formula (dsacp_cp_relayout_comm) and their time on a link, and a producer / consumer deployment
 * against the same ranks run PD-mixed, with every step time from plan_cost.c's functions
 * (dsacp_plan_decode_model, dsacp_plan_chunk_layer) and a steady-state queueing model on top.
 * Above plan_cost.c in the module's call order; nothing in src/plan calls it.
 */
#include "plan/plan.h"
#include "core/core.h"
#include "cp/cp.h"

#include <math.h>
#include <string.h>

/* ---- the transfer ---- */

static int relayout_from(const dsacp_plan_relayout *r, dsacp_cp_relayout *c)
{
    const struct {
        const char *name;
        int64_t v;
    } pos[] = {{"Wp", r->Wp}, {"Ip", r->Ip}, {"Wd", r->Wd}, {"Id", r->Id}, {"layers", r->layers}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v < 1 || pos[i].v > ((int64_t)1 << 32))
            return dsacp_error(DSACP_EINVAL, "plan: relayout field '%s' = %lld: outside [1, 2^32]", pos[i].name,
                               (long long)pos[i].v);
    if (r->latent_bytes < 0 || r->index_bytes < 0 || r->latent_bytes > ((int64_t)1 << 32) || r->index_bytes > ((int64_t)1 << 32))
        return dsacp_error(DSACP_EINVAL, "plan: relayout fields 'latent_bytes' / 'index_bytes' = %lld / %lld: outside [0, 2^32]",
                           (long long)r->latent_bytes, (long long)r->index_bytes);
    const dsacp_cp_layout ly[2] = {r->kv_layout, r->index_layout};
    for (int i = 0; i < 2; i++)
        if ((int)ly[i] < 0 || ly[i] > DSACP_LAYOUT_PARTIAL || (i == 0 && ly[i] == DSACP_LAYOUT_PARTIAL))
            return dsacp_error(DSACP_EINVAL, "plan: relayout field '%s' = %d: not a layout", i ? "index_layout" : "kv_layout",
                               (int)ly[i]);
    if (r->index_layout == DSACP_LAYOUT_PARTIAL && (r->index_group < 1 || r->Wd % r->index_group))
        return dsacp_error(DSACP_EINVAL, "plan: relayout field 'index_group' = %lld: must divide Wd = %lld",
                           (long long)r->index_group, (long long)r->Wd);
    memset(c, 0, sizeof *c);
    c->Wp = r->Wp, c->Ip = r->Ip, c->Wd = r->Wd, c->Id = r->Id;
    c->kv_layout = r->kv_layout, c->index_layout = r->index_layout;
    c->index_group = r->index_layout == DSACP_LAYOUT_PARTIAL ? r->index_group : 1;
    c->latent_bytes = r->latent_bytes, c->index_bytes = r->index_bytes, c->layers = r->layers;
    return DSACP_OK;
}

/* The relayout's period in positions, lcm(Wp Ip, Wd Id), or 0 when it passes 2^40. */
static int64_t period_of(const dsacp_cp_relayout *c)
{
    const int64_t lim = (int64_t)1 << 40;
    if (c->Wp > lim / c->Ip || c->Wd > lim / c->Id) return 0;
    const int64_t a = c->Wp * c->Ip, b = c->Wd * c->Id;
    int64_t x = a, y = b;
    while (y) {
        const int64_t t = x % y;
        x = y, y = t;
    }
    return a / x > lim / b ? 0 : a / x * b;
}

/* A chunk's counter by its phase in the period and its length. */
typedef struct chunk_count {
    int64_t phase, len;
    dsacp_comm_counter c;
} chunk_count;

int dsacp_plan_kv_transfer(const dsacp_plan_relayout *r, const dsacp_plan_chunk *chunks, int64_t n, int side, int64_t rank,
                           dsacp_comm_counter *out)
{
    memset(out, 0, sizeof *out);
    dsacp_cp_relayout c;
    int rc = relayout_from(r, &c);
    if (rc) return rc;
    if (side != 0 && side != 1) return dsacp_error(DSACP_EINVAL, "plan: side %d: 0 (producer) or 1 (consumer)", side);
    const int64_t W = side ? c.Wd : c.Wp;
    if (rank < 0 || rank >= W)
        return dsacp_error(DSACP_EINVAL, "plan: rank %lld outside the %s group of %lld", (long long)rank,
                           side ? "consumer" : "producer", (long long)W);
    if (n < 0 || (n > 0 && !chunks)) return dsacp_error(DSACP_EINVAL, "plan: chunks: %lld given", (long long)n);
    /* the most a rank can count: every position to every consumer rank, one header per message */
    const double per_pos = (double)c.latent_bytes + (double)c.index_bytes * (double)c.Wd;
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        const dsacp_plan_chunk *k = &chunks[i];
        if (k->request < 0 || k->a < 0 || k->b <= k->a)
            return dsacp_error(DSACP_EINVAL, "plan: chunk %lld (request %lld, [%lld, %lld)): request >= 0 and 0 <= a < b",
                               (long long)i, (long long)k->request, (long long)k->a, (long long)k->b);
        total += (double)(k->b - k->a) * (per_pos + DSACP_RELAYOUT_HEADER * (double)c.Wd) * (double)c.layers;
    }
    if (total > 0x1p62) return dsacp_error(DSACP_ERANGE, "plan: the chunks' transfer (%g bytes) exceeds 64-bit counters", total);
    /* Who sends and who keeps a position repeats every lcm(Wp Ip, Wd Id) positions (the sender's
     * rule, and every consumer layout's, are periodic in Wp Ip and Wd Id), so a chunk shifted by
     * whole periods counts what the first one did: the formula runs once per distinct chunk
     * (a mod period, b - a) -- a 1M-token prompt in 2048-token chunks is one run, not 512. */
    const int64_t period = period_of(&c);
    chunk_count seen[16];
    int ns = 0;
    for (int64_t i = 0; i < n; i++) {
        const chunk_count key = {period ? chunks[i].a % period : -1, chunks[i].b - chunks[i].a, {0}};
        int j = 0;
        while (j < ns && (seen[j].phase != key.phase || seen[j].len != key.len)) j++;
        chunk_count one = key;
        if (j < ns) one = seen[j];
        else dsacp_cp_relayout_comm(&c, chunks[i].a, chunks[i].b, side, rank, &one.c);
        if (j == ns && key.phase >= 0 && ns < (int)(sizeof seen / sizeof seen[0])) seen[ns++] = one;
        out->calls += one.c.calls, out->bytes_sent += one.c.bytes_sent, out->bytes_recv += one.c.bytes_recv;
    }
    return DSACP_OK;
}

double dsacp_plan_link_seconds(const dsacp_comm_counter *c, int side, double bytes_per_s, double latency_s)
{
    return (double)(side ? c->bytes_recv : c->bytes_sent) / bytes_per_s + (double)c->calls * latency_s;
}

/* ---- a request's work, whatever the load ---- */

enum { PD_MEMO = 512 };

typedef struct pd_ctx {
    const dsacp_config *cfg;
    const dsacp_cp_options *cp;
    const dsacp_hw *hw;
    const dsacp_plan_pd_options *o;
    int64_t ctx;       /* a decoding request's mean context: prompt + output / 2 */
    int64_t nc, last;  /* PD-mixed: the prompt's chunks, its last chunk's tokens */
    double att_sum;    /* seconds: the attention layers of every such chunk */
    double att_max;    /* the slowest chunk's attention layers */
    double head1;      /* lm_head for one token (the prompt's first output) */
    dsacp_plan_pd *req;
    /* model_at's results by batch (direct-mapped): the loads' searches ask for the same batches */
    int64_t memo_batch[PD_MEMO];
    double memo[PD_MEMO][3];
} pd_ctx;

/* The whole model's decode step for `batch` tokens at the decode context: *step its time; *mlp
 * the part that grows with the tokens whoever they are (MLP / MoE and its all-reduce; attention
 * and lm_head left out); *held the busiest rank's KV of `batch` requests plus its weights. */
static int model_at(pd_ctx *x, int64_t batch, double *step, double *mlp, double *held)
{
    const size_t k = (size_t)batch % PD_MEMO;
    double *v = x->memo[k];
    if (x->memo_batch[k] != batch) {
        dsacp_plan_model m;
        int rc = dsacp_plan_decode_model(x->cfg, x->cp, x->o->W, x->o->ep, x->ctx, batch, x->o->deployed, x->o->weight_bytes,
                                         x->hw, &m);
        if (rc) return rc;
        v[0] = m.tpot, v[1] = m.t_mlp + m.t_moe_comm;
        v[2] = (double)batch * m.layer.kv_bytes_per_rank * (double)x->cfg->num_hidden_layers + m.weights_per_rank;
        x->memo_batch[k] = batch;
    }
    if (step) *step = v[0];
    if (mlp) *mlp = v[1];
    if (held) *held = v[2];
    return DSACP_OK;
}

/* The attention layers of the prompt prefilled in `chunk`-token chunks (dsacp_plan_chunk_layer
 * after each chunk's context): their sum and the slowest chunk's, in seconds. */
static int prompt_attention(const pd_ctx *x, int64_t chunk, double *sum, double *max)
{
    const dsacp_plan_pd_options *o = x->o;
    const double layers = (double)x->cfg->num_hidden_layers;
    *sum = *max = 0;
    for (int64_t a = 0; a < o->prompt; a += chunk) {
        const int64_t n = o->prompt - a < chunk ? o->prompt - a : chunk;
        dsacp_plan_decode d;
        bool dist;
        int rc = dsacp_plan_chunk_layer(x->cfg, x->cp, o->W, a, n, o->deployed, x->hw, &d, &dist);
        if (rc) return dsacp_error_context(rc, "plan: prefill chunk [%lld, %lld)", (long long)a, (long long)(a + n));
        *sum += d.t_layer * layers;
        *max = fmax(*max, d.t_layer * layers);
    }
    return DSACP_OK;
}

/* The prompt's chunks on a PD-mixed instance (their attention layers), and the producer's
 * prefill in its own chunks: attention + each chunk's MLP + one lm_head row. */
static int pd_prefill(pd_ctx *x)
{
    const dsacp_plan_pd_options *o = x->o;
    const int64_t pc = o->producer_chunk > 0 ? o->producer_chunk : o->chunk;
    x->nc = (o->prompt + o->chunk - 1) / o->chunk;
    x->last = o->prompt - (x->nc - 1) * o->chunk;
    x->req->chunks = (o->prompt + pc - 1) / pc;
    const int64_t plast = o->prompt - (x->req->chunks - 1) * pc;
    double psum = 0, pmax, full = 0, part = 0;
    int rc = prompt_attention(x, o->chunk, &x->att_sum, &x->att_max);
    if (!rc && pc != o->chunk) rc = prompt_attention(x, pc, &psum, &pmax);
    else psum = x->att_sum;
    dsacp_plan_model one;
    if (!rc) rc = dsacp_plan_decode_model(x->cfg, x->cp, o->W, o->ep, x->ctx, 1, o->deployed, o->weight_bytes, x->hw, &one);
    if (!rc) rc = model_at(x, pc, NULL, &full, NULL);
    if (!rc) rc = model_at(x, plast, NULL, &part, NULL);
    if (rc) return rc;
    x->head1 = one.t_head;
    /* With the MTP layer the producer runs its catch-up after every chunk (docs/speculative.md,
     * "Disaggregated prefill and decode"): priced as one more layer of the chunk's attention and
     * MLP, and the MTP head's row. */
    const double L = (double)x->cfg->num_hidden_layers, grow = o->mtp ? (L + 1) / L : 1;
    x->req->prefill_s = (psum + (double)(x->req->chunks - 1) * full + part) * grow + x->head1 * (o->mtp ? 2 : 1);
    return DSACP_OK;
}

/* The transfer of one request from a producer instance to a consumer instance of W ranks each,
 * chunk by chunk as the producer prefilled it: the busiest rank of either side on the link, and
 * what is left after the prefill when it streams in flight (chunks x layers equal pieces, each
 * sent when its layer is computed: the last piece after the prefill, or the link's backlog). */
static int pd_transfer(pd_ctx *x)
{
    const dsacp_plan_pd_options *o = x->o;
    const int64_t nc = x->req->chunks, W = o->W, pc = o->producer_chunk > 0 ? o->producer_chunk : o->chunk;
    dsacp_plan_chunk *ch = dsacp_calloc((size_t)nc, sizeof *ch);
    if (!ch) return dsacp_error_context(DSACP_ENOMEM, "plan: %lld chunks", (long long)nc);
    for (int64_t i = 0; i < nc; i++) ch[i] = (dsacp_plan_chunk){0, i * pc, i == nc - 1 ? o->prompt : (i + 1) * pc};
    const dsacp_kv_dtype kvd = o->deployed ? DSACP_KV_FP8 : DSACP_KV_F32;
    const dsacp_plan_relayout r = {.Wp = W, .Ip = x->cp->interleave, .Wd = W, .Id = x->cp->interleave,
                                   .kv_layout = x->cp->kv_layout, .index_layout = x->cp->index_layout,
                                   .index_group = x->cp->index_group, .latent_bytes = dsacp_mla_cache_bytes_per_token(x->cfg, kvd),
                                   .index_bytes = dsacp_index_cache_bytes_per_token(x->cfg, kvd),
                                   .layers = x->cfg->num_hidden_layers + (o->mtp ? 1 : 0)};
    dsacp_plan_pd *q = x->req;
    int rc = DSACP_OK;
    for (int side = 0; side < 2 && !rc; side++)
        for (int64_t k = 0; k < W && !rc; k++) {
            dsacp_comm_counter c;
            rc = dsacp_plan_kv_transfer(&r, ch, nc, side, k, &c);
            const double t = rc ? 0 : dsacp_plan_link_seconds(&c, side, q->link_bw, q->link_latency_s);
            dsacp_comm_counter *best = side ? &q->recv : &q->sent;
            if (!rc && (k == 0 || (side ? c.bytes_recv > best->bytes_recv : c.bytes_sent > best->bytes_sent))) *best = c;
            q->transfer_s = fmax(q->transfer_s, t);
        }
    dsacp_free(ch);
    if (rc) return rc;
    const double N = (double)nc * (double)r.layers;
    q->transfer_exposed_s = fmax(q->transfer_s / N, q->transfer_s - q->prefill_s * (N - 1) / N);
    return DSACP_OK;
}

/* ---- one deployment at one load (steady state) ---- */

/* An instance decoding a batch of B requests: the mean time per output token, and for PD-mixed
 * the prefill queue it shares its steps with. */
typedef struct pd_point {
    double t_d;    /* a decode step of the batch alone */
    double tpot, itl, held;
    double s;      /* PD-mixed: a prompt's service time (its chunk steps), 0 when disaggregated */
    double rho;    /* PD-mixed: the prefill queue's utilisation */
    bool ok;       /* the prefill queue keeps up */
    int64_t B;     /* the batch priced */
} pd_point;

/* PD-mixed: each of the prompt's chunk steps runs the batch's decode step plus the chunk (its
 * attention layers, the MLP / MoE of batch + chunk tokens in place of the batch's); the batch's
 * requests wait for those steps too, so per output token they wait t_d / (1 - rho_c), rho_c the
 * share of time the chunks add. */
static int mixed_at(pd_ctx *x, double lam, int64_t B, pd_point *p)
{
    const int64_t nc = x->nc;
    double mlp_b, mlp_c = 0, mlp_l;
    int rc = model_at(x, B, &p->t_d, &mlp_b, NULL);
    if (!rc) rc = model_at(x, B + 1, NULL, NULL, &p->held); /* the request being prefilled holds KV too */
    if (!rc && nc > 1) rc = model_at(x, B + x->o->chunk, NULL, &mlp_c, NULL);
    if (!rc) rc = model_at(x, B + x->last, NULL, &mlp_l, NULL);
    if (rc) return rc;
    const double extra = x->att_sum + (double)(nc - 1) * (mlp_c - mlp_b) + (mlp_l - mlp_b) + x->head1;
    p->s = (double)nc * p->t_d + extra;
    p->rho = lam * p->s;
    const double rho_c = lam * extra;
    p->ok = p->rho < 1;
    p->tpot = p->ok ? p->t_d / (1 - rho_c) : INFINITY;
    p->itl = p->t_d + x->att_max + fmax(mlp_c, mlp_l) - mlp_b;
    return DSACP_OK;
}

/* A consumer instance: decode steps only. */
static int disagg_at(pd_ctx *x, int64_t B, pd_point *p)
{
    memset(p, 0, sizeof *p);
    int rc = model_at(x, B, &p->t_d, NULL, &p->held);
    p->tpot = p->itl = p->t_d, p->ok = true;
    return rc;
}

static int point_at(pd_ctx *x, bool mixed, double lam, int64_t B, pd_point *p)
{
    int rc = mixed ? mixed_at(x, lam, B, p) : disagg_at(x, B, p);
    p->B = B;
    return rc;
}

/* Whether batch B runs (the prefill queue keeps up, the KV fits) and holds the requests that
 * decode at once (B >= lam x output x tpot(B): Little's law). */
static int batch_test(pd_ctx *x, bool mixed, double lam, int64_t B, pd_point *p, bool *runs, bool *holds)
{
    int rc = point_at(x, mixed, lam, B, p);
    *runs = !rc && p->ok && p->held <= 0.9 * x->hw->mem_bytes;
    *holds = *runs && (double)B >= lam * (double)x->o->output * p->tpot;
    return rc;
}

/* The smallest B in (lo, hi] that holds, given that hi does and lo does not. */
static int bisect_holds(pd_ctx *x, bool mixed, double lam, int64_t lo, int64_t hi, pd_point *out)
{
    pd_point p;
    bool runs, holds;
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        int rc = batch_test(x, mixed, lam, mid, &p, &runs, &holds);
        if (rc) return rc;
        if (holds) hi = mid;
        else lo = mid;
    }
    return point_at(x, mixed, lam, hi, out);
}

/* The decode batch of an instance receiving lam requests per second: the smallest B that holds,
 * by doubling and bisection (a larger batch only runs slower steps, so what runs at B runs below
 * it); *limit names what stops it when none does ("prefill", "memory", "decode"; *out is then
 * the first batch that does not run). */
static int find_batch_int(pd_ctx *x, bool mixed, double lam, pd_point *out, const char **limit)
{
    *limit = "";
    int64_t good = 0, hi = 1; /* good: the largest batch tried that runs but does not hold */
    pd_point p;
    bool runs, holds;
    for (;; good = hi, hi *= 2) {
        int rc = batch_test(x, mixed, lam, hi, &p, &runs, &holds);
        if (rc) return rc;
        if (holds) return bisect_holds(x, mixed, lam, good, hi, out);
        if (!runs) break;
        if (hi >= 65536) {
            *limit = "decode", *out = p;
            return DSACP_OK;
        }
    }
    const char *why = !p.ok ? "prefill" : "memory";
    *out = p; /* the first batch that does not run, should none hold */
    if (good == 0) {
        *limit = why;
        return DSACP_OK;
    }
    /* the largest batch that runs, between good and hi; does it hold? */
    int64_t lo = good, top = hi;
    while (top - lo > 1) {
        const int64_t mid = lo + (top - lo) / 2;
        int rc = batch_test(x, mixed, lam, mid, &p, &runs, &holds);
        if (rc) return rc;
        if (runs) lo = mid;
        else top = mid;
    }
    const pd_point fail = *out;
    int rc = batch_test(x, mixed, lam, lo, &p, &runs, &holds);
    if (rc || !holds) {
        *limit = why, *out = fail;
        return rc;
    }
    return bisect_holds(x, mixed, lam, good, lo, out);
}

/* find_batch_int's batch B (the smallest that holds) made the mean batch b in (B - 1, B]: the
 * instance then runs steps of B - 1 and of B requests, in the share that makes Little's law hold
 * (b = lam x output x tpot(b)), so every figure is interpolated between the two points. Batch 1
 * stays as it is (an instance decoding less than one request on average runs batch 1). */
static int find_batch(pd_ctx *x, bool mixed, double lam, pd_point *out, const char **limit)
{
    int rc = find_batch_int(x, mixed, lam, out, limit);
    if (rc || **limit || out->B == 1) return rc;
    pd_point p0;
    if ((rc = point_at(x, mixed, lam, out->B - 1, &p0))) return rc;
    const double LO = lam * (double)x->o->output, den = 1 - LO * (out->tpot - p0.tpot);
    const double w = den > 0 ? fmin(1, fmax(0, (LO * p0.tpot - (double)p0.B) / den)) : 1;
    double *f1[] = {&out->t_d, &out->tpot, &out->itl, &out->held, &out->s, &out->rho};
    const double f0[] = {p0.t_d, p0.tpot, p0.itl, p0.held, p0.s, p0.rho};
    for (size_t i = 0; i < sizeof f0 / sizeof f0[0]; i++) *f1[i] = f0[i] + w * (*f1[i] - f0[i]);
    return DSACP_OK;
}

/* M/D/1: the mean wait of a queue of utilisation rho < 1 and fixed service time s. */
static double md1_wait(double rho, double s) { return rho * s / (2 * (1 - rho)); }

/* PD-mixed: producers + consumers instances sharing the load, each prefilling in its steps. */
static int side_mixed(pd_ctx *x, double rate, dsacp_plan_pd_side *out)
{
    memset(out, 0, sizeof *out);
    const double lam = rate / (double)(x->o->producers + x->o->consumers);
    pd_point p = {0};
    int rc = find_batch(x, true, lam, &p, &out->limit);
    out->prefill_util = p.rho;
    if (rc || *out->limit) return rc;
    out->stable = true;
    out->ttft = md1_wait(p.rho, p.s) + p.s;
    out->tpot = p.tpot, out->itl_max = p.itl;
    out->batch = lam * (double)x->o->output * p.tpot, out->held_per_rank = p.held;
    return DSACP_OK;
}

/* Disaggregated: producers prefill (their queue and the link's), consumers decode. */
static int side_disagg(pd_ctx *x, double rate, dsacp_plan_pd_side *out)
{
    memset(out, 0, sizeof *out);
    const dsacp_plan_pd *q = x->req;
    const double lp = rate / (double)x->o->producers, ld = rate / (double)x->o->consumers;
    const double rho = lp * q->prefill_s;
    const double link = fmax(lp * dsacp_plan_link_seconds(&q->sent, 0, q->link_bw, q->link_latency_s),
                             ld * dsacp_plan_link_seconds(&q->recv, 1, q->link_bw, q->link_latency_s));
    double held1;
    int rc = model_at(x, 1, NULL, NULL, &held1); /* a producer holds the request it prefills */
    if (rc) return rc;
    out->prefill_util = fmax(rho, link);
    out->limit = held1 > 0.9 * x->hw->mem_bytes ? "memory" : rho >= 1 ? "prefill" : link >= 1 ? "link" : "";
    if (*out->limit) return DSACP_OK;
    pd_point p;
    if ((rc = find_batch(x, false, ld, &p, &out->limit)) || *out->limit) return rc;
    out->stable = true;
    out->ttft = md1_wait(rho, q->prefill_s) + q->prefill_s + q->transfer_exposed_s;
    out->tpot = p.tpot, out->itl_max = p.itl;
    out->batch = ld * (double)x->o->output * p.tpot, out->held_per_rank = p.held;
    return DSACP_OK;
}

static int pd_check(const dsacp_config *cfg, const dsacp_plan_pd_options *o, const double *rate, int64_t nrate)
{
    const int64_t big = (int64_t)1 << 32;
    const struct {
        const char *name;
        int64_t v, lo, hi;
    } f[] = {{"producers", o->producers, 1, 4096}, {"consumers", o->consumers, 1, 4096}, {"W", o->W, 1, 4096},
             {"ep", o->ep, 1, o->W},               {"prompt", o->prompt, 1, big},       {"output", o->output, 1, big},
             {"chunk", o->chunk, 1, (int64_t)1 << 20}, {"producer_chunk", o->producer_chunk, 0, (int64_t)1 << 20}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            return dsacp_error(DSACP_EINVAL, "plan: pd option '%s' = %lld: outside [%lld, %lld]", f[i].name, (long long)f[i].v,
                               (long long)f[i].lo, (long long)f[i].hi);
    if (cfg->num_hidden_layers < 1) return dsacp_error(DSACP_EINVAL, "plan: the model has no layers");
    if (!(o->link_bw == 0 || (o->link_bw >= 1e6 && o->link_bw <= 1e15)) ||
        !(o->link_latency_s == 0 || (o->link_latency_s >= 1e-9 && o->link_latency_s <= 1)))
        return dsacp_error(DSACP_EINVAL, "plan: pd option 'link_bw' / 'link_latency_s' = %g / %g: 0 (the profile's) or within "
                           "[1e6, 1e15] bytes/s / [1e-9, 1] s", o->link_bw, o->link_latency_s);
    if (nrate < 0 || (nrate > 0 && !rate)) return dsacp_error(DSACP_EINVAL, "plan: pd rates: %lld given", (long long)nrate);
    for (int64_t i = 0; i < nrate; i++)
        if (!(rate[i] > 0 && rate[i] <= 1e9))
            return dsacp_error(DSACP_EINVAL, "plan: pd rate %g: outside (0, 1e9] requests per second", rate[i]);
    return DSACP_OK;
}

int dsacp_plan_pd_price(const dsacp_config *cfg, const dsacp_cp_options *cp, const dsacp_hw *hw, const dsacp_plan_pd_options *o,
                        const double *rate, int64_t nrate, dsacp_plan_pd *req, dsacp_plan_pd_side *disagg,
                        dsacp_plan_pd_side *mixed)
{
    memset(req, 0, sizeof *req);
    int rc = pd_check(cfg, o, rate, nrate);
    if (rc) return rc;
    req->link_bw = o->link_bw > 0 ? o->link_bw : hw->net_bw;
    req->link_latency_s = o->link_latency_s > 0 ? o->link_latency_s : hw->net_latency_us * 1e-6;
    pd_ctx x = {.cfg = cfg, .cp = cp, .hw = hw, .o = o, .ctx = o->prompt + o->output / 2, .req = req};
    if ((rc = pd_prefill(&x)) || (rc = pd_transfer(&x))) return rc;
    for (int64_t i = 0; i < nrate && !rc; i++) {
        rc = side_disagg(&x, rate[i], &disagg[i]);
        if (!rc) rc = side_mixed(&x, rate[i], &mixed[i]);
    }
    return rc;
}

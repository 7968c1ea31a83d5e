/*
 * engine_plan -- the planner's bookkeeping of an engine: what the planner needs to know of it,
 * its prediction of every collective of the engine's steps (dsacp_plan_entries_comm) beside the
 * counters' growth during those steps (dsacp_engine_plan_comm), and the planned memory the report
 * compares. The only engine file that includes dsacp_plan.h.
 */
#include "engine/engine_internal.h"
#include "dsacp_plan.h"

#include <stdlib.h>
#include <string.h>

struct dsacp_engine_plan {
    dsacp_plan_step base;    /* the fixed fields of every step's plan */
    int64_t *pq, *po, *psh;  /* DSA-CP: q_b_proj / o_proj bytes per layer, o_proj shard bytes per rank */
    dsacp_comm_counter planned[DSACP_PHASE_COUNT];
    dsacp_comm_counter measured[DSACP_PHASE_COUNT]; /* the counters' growth during those calls */
    int64_t seen_fb_tokens, seen_fb_rounds, seen_winners;
    bool lost; /* a step failed after its first collectives: not predicted */
};

static int64_t weight_travel_bytes(const dsacp_weight *w)
{
    return w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype) +
           (w->dtype == DSACP_F8_E4M3 && w->scale ? w->scale_rows * w->scale_stride * (int64_t)sizeof(float) : 0);
}

/* DSA-CP: the bytes of q_b_proj and o_proj per layer and of each rank's o_proj columns. */
static int setup_weight_bytes(dsacp_engine *e, dsacp_engine_plan *p)
{
    const dsacp_config *cfg = e->cfg;
    const int W = e->cp.W;
    const int64_t L = e->cp.n_layers, H = cfg->num_attention_heads, dv = cfg->v_head_dim; /* the MTP layer's too */
    const dsacp_weight *o = e->attn[0].o;
    p->pq = dsacp_calloc((size_t)L, sizeof *p->pq), p->po = dsacp_calloc((size_t)L, sizeof *p->po);
    p->psh = dsacp_calloc((size_t)W, sizeof *p->psh);
    if (!p->pq || !p->po || !p->psh) return dsacp_error(DSACP_ENOMEM, "out of memory for the engine's plan");
    for (int64_t l = 0; l < L; l++) p->pq[l] = weight_travel_bytes(e->attn[l].q_b), p->po[l] = weight_travel_bytes(e->attn[l].o);
    for (int q = 0; q < W; q++) {
        const int64_t nc = (dsacp_split_begin(H, q + 1, W) - dsacp_split_begin(H, q, W)) * dv;
        p->psh[q] = o->rows * nc * (p->base.o_tp_f32 ? (int64_t)sizeof(float) : (int64_t)dsacp_dtype_size(o->dtype));
        if (!p->base.o_tp_f32 && o->dtype == DSACP_F8_E4M3)
            p->psh[q] += o->scale_rows * ((nc + o->block - 1) / o->block) * (int64_t)sizeof(float);
    }
    p->base.q_bytes = p->pq, p->base.o_bytes = p->po, p->base.o_shard_bytes = p->psh;
    return DSACP_OK;
}

int dsacp_engine_plan_setup(dsacp_engine *e)
{
    const dsacp_config *cfg = e->cfg;
    const dsacp_cp_options *cp = &e->cp.opt;
    dsacp_engine_plan *p = calloc(1, sizeof *p);
    if (!p) return dsacp_error(DSACP_ENOMEM, "out of memory for the engine's plan");
    e->plan = p;
    dsacp_plan_step *b = &p->base;
    b->W = e->cp.W, b->rank = e->cp.rank, b->hidden_bytes = cfg->hidden_size * (int64_t)sizeof(float);
    b->deployed = e->cp.deployed;
    b->latent_bytes = dsacp_mla_cache_bytes_per_token(cfg, e->opt.kv_dtype);
    b->index_bytes = dsacp_index_cache_bytes_per_token(cfg, b->deployed ? DSACP_KV_FP8 : DSACP_KV_F32);
    const dsacp_weight *o = e->attn[0].o;
    dsacp_plan_o_paths(cfg, cp, e->cp.W, o->dtype, o->block, &b->o_gather_v, &b->o_tp_f32);
    b->context_hw = e->cp.hw;
    if (dsacp_fault("plan")) return dsacp_fault_error("plan", "the engine's plan");
    if (cp->mode != DSACP_CP_DSA_CP) return DSACP_OK;
    return setup_weight_bytes(e, p);
}

void dsacp_engine_plan_free(dsacp_engine *e)
{
    if (!e->plan) return;
    dsacp_free(e->plan->pq), dsacp_free(e->plan->po), dsacp_free(e->plan->psh);
    free(e->plan);
    e->plan = NULL;
}

int dsacp_engine_plan_load_hw(dsacp_engine *e, const char *path)
{
    e->cp.hw = malloc(sizeof *e->cp.hw);
    if (!e->cp.hw) return dsacp_error(DSACP_ENOMEM, "out of memory");
    const int rc = dsacp_hw_load(path, e->cp.hw);
    /* The planner's time rule chooses --context-path auto's path on the profile: installed here,
     * so src/cp decides through a pointer and never calls the planner above it. */
    if (!rc) e->cp.choose_context = dsacp_plan_context_distributed;
    return rc;
}

const char *dsacp_engine_plan_hw_name(const dsacp_engine *e) { return e->cp.hw ? e->cp.hw->name : NULL; }

static void plan_add(dsacp_engine_plan *p, const dsacp_comm_counter *c)
{
    for (int q = 0; q < DSACP_PHASE_COUNT; q++)
        p->planned[q].calls += c[q].calls, p->planned[q].bytes_sent += c[q].bytes_sent, p->planned[q].bytes_recv += c[q].bytes_recv;
}

/* The counters before an engine call, and their growth added to `measured` after it: what the
 * engine itself moved, whatever else uses the communicator between its calls. */
void dsacp_engine_measure_begin(const dsacp_engine *e, dsacp_comm_counter before[DSACP_PHASE_COUNT])
{
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) before[p] = dsacp_comm_get_counter(e->comm, p);
}

void dsacp_engine_measure_end(dsacp_engine *e, const dsacp_comm_counter before[DSACP_PHASE_COUNT])
{
    dsacp_comm_counter *m = e->plan->measured;
    for (int p = 0; p < DSACP_PHASE_COUNT; p++) {
        const dsacp_comm_counter a = dsacp_comm_get_counter(e->comm, p);
        m[p].calls += a.calls - before[p].calls;
        m[p].bytes_sent += a.bytes_sent - before[p].bytes_sent;
        m[p].bytes_recv += a.bytes_recv - before[p].bytes_recv;
    }
}

/* One agreement of the group (a status, an int32, from and to every other rank). */
void dsacp_engine_plan_agreement(dsacp_engine *e)
{
    const int64_t bytes = (int64_t)sizeof(int32_t) * (e->cp.W - 1);
    dsacp_comm_counter c[DSACP_PHASE_COUNT] = {{0}};
    if (e->cp.W > 1) c[DSACP_PHASE_control] = (dsacp_comm_counter){1, bytes, bytes, 0};
    plan_add(e->plan, c);
}

size_t dsacp_engine_plan_workspace(const dsacp_engine *e, int64_t T, int64_t n)
{
    size_t bytes = 0;
    dsacp_arena_need(&bytes, n, 1, sizeof(dsacp_plan_entry));
    dsacp_arena_need(&bytes, n, 1, sizeof(dsacp_plan_entry_spec));
    if (e->cp.W > 1) { /* the planner's lists and per-rank counts of the step */
        const size_t lists = dsacp_plan_entries_bytes(e->cfg, &e->cp.opt, e->cp.W, T, n);
        if (lists == SIZE_MAX) return SIZE_MAX;
        dsacp_arena_need(&bytes, (int64_t)lists, 1, 1);
    }
    return bytes;
}

/* The planner's entries of a built step: lengths, verify flags and logits rows; an MTP step's
 * placement as given (decode rows, the target step's split -- a catch-up repeats it -- or the
 * one rank of a chain row under DSA-CP alone). */
static void step_entries(const dsacp_cp_step *st, const int64_t *n_logits, bool mtp, dsacp_plan_entry *pe,
                         dsacp_plan_entry_spec *sp, int64_t *T)
{
    *T = 0;
    for (int64_t i = 0, t = 0; i < st->n_ent; i++) {
        const int64_t nn = st->new_len[i] - st->old_len[i];
        pe[i] = (dsacp_plan_entry){st->old_len[i], nn};
        sp[i] = (dsacp_plan_entry_spec){st->flags ? st->flags[i] : 0, n_logits ? n_logits[i] : 0, DSACP_PLAN_PATH_AUTO, 0};
        if (mtp) {
            sp[i].path = st->decode[i] ? DSACP_PLAN_PATH_DECODE : DSACP_PLAN_PATH_SPLIT;
            if (!st->decode[i] && nn == 1 && st->place) sp[i].path = DSACP_PLAN_PATH_RANK, sp[i].rank = st->place[t];
        }
        t += nn, *T += nn;
    }
}

void dsacp_engine_plan_step(dsacp_engine *e, dsacp_arena *ws, const dsacp_cp_step *st, const int64_t *n_logits,
                            const uint8_t want[2], bool last, bool mtp)
{
    const int64_t n = st->n_ent;
    dsacp_engine_plan *p = e->plan;
    if (p->lost) return;
    const size_t mark = dsacp_arena_mark(ws);
    dsacp_plan_entry *pe = dsacp_arena_take(ws, n, 1, sizeof *pe, "the planner's entries");
    dsacp_plan_entry_spec *sp = pe ? dsacp_arena_take(ws, n, 1, sizeof *sp, "the planner's entries") : NULL;
    int64_t T = 0;
    if (sp) step_entries(st, n_logits, mtp, pe, sp, &T);
    const size_t bytes = e->cp.W > 1 ? dsacp_plan_entries_bytes(e->cfg, &e->cp.opt, e->cp.W, T, n) : 0;
    void *mem = bytes && bytes != SIZE_MAX ? dsacp_arena_take(ws, (int64_t)bytes, 1, 1, "the planner's lists") : NULL;
    if (!sp || bytes == SIZE_MAX || (bytes && !mem)) {
        p->lost = true;
        dsacp_arena_rewind(ws, mark);
        return;
    }
    dsacp_plan_step b = p->base;
    const dsacp_cp_stats *cs = &e->cp.stats;
    const int64_t ft = cs->lean_fallback_threshold + cs->lean_fallback_ties;
    b.lean_fallback_tokens = ft - p->seen_fb_tokens, b.lean_fallback_rounds = cs->lean_fallback_rounds - p->seen_fb_rounds;
    b.lean_owned_winners = cs->lean_owned_winners - p->seen_winners;
    p->seen_fb_tokens = ft, p->seen_fb_rounds = cs->lean_fallback_rounds, p->seen_winners = cs->lean_owned_winners;
    b.want_logits = want[0], b.want_topk = want[1], b.logits_last = last;
    b.entry_spec = sp;
    /* an MTP step runs the MTP layer alone: index num_hidden_layers of the engine's layers */
    if (mtp) b.layer0 = e->cfg->num_hidden_layers, b.layers = 1;
    dsacp_comm_counter c[DSACP_PHASE_COUNT];
    if (dsacp_plan_entries_comm_mem(e->cfg, &e->cp.opt, &b, pe, n, c, mem, bytes)) p->lost = true;
    else plan_add(p, c);
    dsacp_arena_rewind(ws, mark);
}

void dsacp_engine_plan_lost(dsacp_engine *e) { e->plan->lost = true; }

bool dsacp_engine_plan_tracked(const dsacp_engine *e) { return !e->plan->lost; }

void dsacp_engine_plan_stats_reset(dsacp_engine *e)
{
    e->plan->seen_fb_tokens = e->plan->seen_fb_rounds = e->plan->seen_winners = 0;
}

void dsacp_engine_plan_counters(const dsacp_engine *e, dsacp_comm_counter planned[DSACP_PHASE_COUNT],
                                dsacp_comm_counter measured[DSACP_PHASE_COUNT])
{
    memcpy(planned, e->plan->planned, sizeof e->plan->planned);
    if (measured) memcpy(measured, e->plan->measured, sizeof e->plan->measured);
}

int dsacp_engine_plan_comm(const dsacp_engine *e, dsacp_comm_counter planned[DSACP_PHASE_COUNT],
                           dsacp_comm_counter measured[DSACP_PHASE_COUNT])
{
    dsacp_engine_plan_counters(e, planned, measured);
    return e->plan->lost ? dsacp_error(DSACP_EUNSUPPORTED, "a step failed midway: its collectives are not predicted")
                         : DSACP_OK;
}

int dsacp_engine_plan_memory(const dsacp_engine *e, int64_t kv[2], int64_t weights[4])
{
    int64_t *lens = dsacp_calloc((size_t)(e->nreq > 0 ? e->nreq : 1), sizeof *lens), nlive = 0;
    if (!lens) return dsacp_error(DSACP_ENOMEM, "out of memory");
    for (int64_t i = 0; i < e->nreq; i++)
        if (e->req[i].live) lens[nlive++] = dsacp_engine_request_span(&e->req[i]);
    const int W = e->cp.W > 0 ? e->cp.W : 1;
    /* every layer the engine caches and binds: the MTP layer's too when it is on */
    dsacp_config cfg = *e->cfg;
    if (e->cp.n_layers > 0) cfg.num_hidden_layers = e->cp.n_layers;
    dsacp_plan_kv_bytes(&cfg, &e->cp.opt, W, e->cp.rank, lens, nlive, e->opt.block_size, e->plan->base.latent_bytes,
                        e->plan->base.index_bytes, &kv[0], &kv[1]);
    dsacp_free(lens);
    if (e->cp.wp) {
        dsacp_weight_usage pu;
        const dsacp_weight *ow = e->attn[0].o;
        dsacp_plan_weight_usage(&cfg, &e->cp.opt, W, e->cp.rank, ow->dtype, ow->block, &pu);
        weights[0] = pu.q_proj_resident, weights[1] = pu.o_proj_resident, weights[2] = pu.ring_bytes;
        weights[3] = pu.gather_bytes;
    }
    return DSACP_OK;
}

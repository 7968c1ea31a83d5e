/*
 * cp_formula.c -- the pieces of the decode path's byte and call formulas (docs/context-parallel.md
 * sections 3 and 7) that the strategy files build their own `comm` and `token_bytes` from: the
 * count, the indexer's holder groups, the sharded entry, the wire bytes, the all-reduce and the
 * query gather + LSE merge. Nothing here looks up the strategy table (cp_rules.c, above the
 * table, adds the layer's o_proj and the run-time rules). Logical bytes as comm.c counts.
 */
#include "cp/cp_strategy.h"

void dsacp_cp_count(dsacp_comm_counter *c, int64_t calls, int64_t sent, int64_t recv)
{
    c->calls += calls;
    c->bytes_sent += sent;
    c->bytes_recv += recv;
}

void dsacp_cp_index_groups(const dsacp_cp_options *opt, int64_t W, int64_t rank, int64_t *iW, int64_t *iI, int64_t *ir)
{
    *iW = 1, *iI = 1, *ir = 0;
    if (W > 1 && opt->index_layout == DSACP_LAYOUT_SHARDED) *iW = W, *iI = opt->interleave, *ir = rank;
    if (W > 1 && opt->index_layout == DSACP_LAYOUT_PARTIAL) {
        const int64_t G = opt->index_group;
        *iW = W / G, *iI = opt->interleave * G, *ir = rank / G;
    }
}

int64_t dsacp_cp_formula_sharded_entry(const dsacp_cp_formula *f)
{
    const bool lsh = f->opt->kv_layout == DSACP_LAYOUT_SHARDED, ish = f->iW > 1;
    return (lsh ? f->latent_bytes : 0) + (ish ? f->index_bytes : 0);
}

int64_t dsacp_cp_wire_bytes(const dsacp_cp_strategy *s, const dsacp_cp_options *opt, bool deployed)
{
    return s->wire_bytes ? s->wire_bytes(opt, deployed) : 4;
}

void dsacp_cp_formula_allreduce(dsacp_comm_counter *c, int64_t n, int64_t s, int64_t W, int64_t me, int64_t L)
{
    const int64_t mine = (dsacp_split_begin(n, me + 1, W) - dsacp_split_begin(n, me, W)) * s, b = mine * (W - 1) + (n * s - mine);
    dsacp_cp_count(c, L, L * b, L * b);
}

void dsacp_cp_formula_merge(const dsacp_cp_formula *f, dsacp_comm_counter out[DSACP_PHASE_COUNT])
{
    const dsacp_config *cfg = f->cfg;
    const int64_t L = dsacp_cp_formula_layers(f), H = cfg->num_attention_heads, dc = cfg->kv_lora_rank;
    const int64_t dk = dc + cfg->qk_rope_head_dim, W = f->W, nd = f->nd, Hs = dsacp_cp_heads(H, f->me, W);
    dsacp_cp_count(&out[DSACP_PHASE_query_gather], L, L * nd * Hs * dk * 4 * (W - 1), L * nd * (H - Hs) * dk * 4);
    if (f->opt->merge_backend == DSACP_MERGE_A2A)
        dsacp_cp_count(&out[DSACP_PHASE_attn_merge], L, L * nd * (H - Hs) * (dc + 1) * 4, L * nd * Hs * (dc + 1) * 4 * (W - 1));
    else
        dsacp_cp_count(&out[DSACP_PHASE_attn_merge], 2 * L, L * (nd * H * 4 * (W - 1) + nd * (H - Hs) * dc * 4),
                       L * (nd * H * 4 * (W - 1) + nd * Hs * dc * 4 * (W - 1)));
}

double dsacp_cp_merge_token_bytes(const dsacp_cp_formula *f, double candidates, double oproj_bytes)
{
    const double Wd = (double)f->W, H = (double)f->cfg->num_attention_heads, dc = (double)f->cfg->kv_lora_rank;
    const double dk = dc + (double)f->cfg->qk_rope_head_dim;
    return candidates + (H - H / Wd) * dk * 4 + (Wd - 1) * H * 4 + (Wd - 1) * (H / Wd) * dc * 4 + oproj_bytes;
}

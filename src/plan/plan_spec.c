/*
 * plan_spec.c -- speculative decoding priced (docs/planning.md "Speculative decoding"): per
 * decode strategy, a round's verify step of k + 1 decode rows per request (the communication
 * from the per-row formula: each verify row is a decode row with its own context), the MTP
 * layer's catch-up and chain steps (one layer of the same strategy, eh_proj and the shared head),
 * and the tokens a round emits in expectation. Above plan_cost.c, which prices each step.
 */
#include "plan/plan.h"
#include "core/core.h"

#include <math.h>
#include <string.h>

/* The MTP layer as a one-layer model: layer index num_hidden_layers, MoE by the model's rule. */
static dsacp_config mtp_config(const dsacp_config *cfg)
{
    dsacp_config m = *cfg;
    const int64_t M = cfg->num_hidden_layers;
    const bool moe = cfg->n_routed_experts > 0 && M >= cfg->first_k_dense_replace &&
                     (cfg->moe_layer_freq <= 1 || M % cfg->moe_layer_freq == 0);
    m.num_hidden_layers = 1;
    m.first_k_dense_replace = moe ? 0 : 1;
    m.moe_layer_freq = 1;
    return m;
}

/* An MTP step of batch x rows rows: the layer (attention, MLP / MoE, the shared head) plus
 * eh_proj ([D][2D], bf16 in DeepSeek's checkpoints) on every row. */
static int mtp_step(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                    int64_t batch, int64_t rows, bool deployed, double wbytes, const dsacp_hw *hw, dsacp_plan_model *m,
                    double *t)
{
    const dsacp_config mc = mtp_config(cfg);
    int rc = dsacp_plan_model_rows(&mc, cp, W, ep, context, batch, rows, deployed, wbytes, hw, m);
    if (rc) return rc;
    const double D = (double)cfg->hidden_size, R = (double)(batch * rows);
    const double peak = deployed ? hw->flops_fp8 : hw->flops_bf16;
    *t = m->tpot + fmax(2 * R * 2 * D * D / peak, 2 * D * D * 2 / hw->mem_bw);
    return DSACP_OK;
}

int dsacp_plan_spec_price(const dsacp_config *cfg, const dsacp_cp_options *cp, int64_t W, int64_t ep, int64_t context,
                          int64_t batch, bool deployed, double weight_bytes, const dsacp_hw *hw,
                          const dsacp_plan_spec *spec, dsacp_plan_spec_model *out)
{
    memset(out, 0, sizeof *out);
    if (spec->k < 1 || spec->k > 16) return dsacp_error(DSACP_EINVAL, "plan: spec k = %lld: 1 to 16 drafts", (long long)spec->k);
    if (!(spec->acceptance >= 0 && spec->acceptance <= 1))
        return dsacp_error(DSACP_EINVAL, "plan: spec acceptance = %g: a probability in [0, 1]", spec->acceptance);
    const int64_t k = spec->k;
    int rc = dsacp_plan_decode_model(cfg, cp, W, ep, context, batch, deployed, weight_bytes, hw, &out->plain);
    if (!rc) rc = dsacp_plan_model_rows(cfg, cp, W, ep, context, batch, k + 1, deployed, weight_bytes, hw, &out->verify);
    if (rc) return rc;
    out->t_verify = out->verify.tpot;
    if (spec->mtp) {
        dsacp_plan_model chain;
        double tc = 0;
        rc = mtp_step(cfg, cp, W, ep, context, batch, k + 1, deployed, weight_bytes, hw, &out->mtp_step, &out->t_catchup);
        if (!rc && k > 1) rc = mtp_step(cfg, cp, W, ep, context + 1, batch, 1, deployed, weight_bytes, hw, &chain, &tc);
        if (rc) return rc;
        out->t_chain = (double)(k - 1) * tc;
        out->mtp_kv_bytes_per_rank = out->mtp_step.layer.kv_bytes_per_rank;
    }
    const double A = spec->acceptance;
    out->tokens_per_step = A >= 1 ? (double)(k + 1) : (1 - pow(A, (double)(k + 1))) / (1 - A);
    out->tpot = (out->t_verify + out->t_catchup + out->t_chain) / out->tokens_per_step;
    if (!isfinite(out->tpot)) return dsacp_error(DSACP_ERANGE, "plan: speculative TPOT is not finite (%g)", out->tpot);
    return DSACP_OK;
}

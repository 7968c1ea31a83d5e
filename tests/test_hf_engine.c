/*
 * test_hf_engine.c -- the engine against Hugging Face transformers (DeepseekV32ForCausalLM,
 * exact fp32): golden logits and selected sets in tests/data/hf_tiny, made by
 * tools/hf_reference.py. Logits within 1e-4 relative; selected sets identical except where the
 * reference itself has a tie (tie.<layer> = 1), whose effects are excluded.
 */
#include "test.h"
#include "io/safetensors.h"
#include "ref/test_util.h"

#include <math.h>

int main(void)
{
    char dir[4096], exp_path[4200];
    snprintf(dir, sizeof dir, "%s/tests/data/hf_tiny", tu_source_dir());
    snprintf(exp_path, sizeof exp_path, "%s/expected.safetensors", dir);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    const dsacp_config *cfg = dsacp_model_config(m);
    dsacp_st_file *f;
    REQUIRE_OK(dsacp_st_open(exp_path, &f));
    const dsacp_st_tensor *ids_t = dsacp_st_find(f, "input_ids"), *lg_t = dsacp_st_find(f, "logits");
    REQUIRE_OK(ids_t && lg_t ? 0 : DSACP_ENOTFOUND);
    const int64_t R = ids_t->shape[0], Lmax = ids_t->shape[1], V = cfg->vocab_size, K = cfg->index_topk;
    const int64_t NL = cfg->num_hidden_layers;
    const int32_t *ids = ids_t->data;
    const float *exp_logits = lg_t->data;
    const int32_t *exp_topk[8];
    const uint8_t *tie[8];
    for (int64_t l = 0; l < NL; l++) {
        char n[32];
        snprintf(n, sizeof n, "topk.%lld", (long long)l);
        exp_topk[l] = dsacp_st_find(f, n)->data;
        snprintf(n, sizeof n, "tie.%lld", (long long)l);
        tie[l] = dsacp_st_find(f, n)->data;
    }
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: each sequence as one prefill; pass 1: token by token. */
        dsacp_engine_options eo;
        dsacp_engine_options_default(&eo);
        eo.block_size = pass ? 1 : 16;
        eo.num_blocks = 256;
        dsacp_engine *e;
        REQUIRE_OK(dsacp_engine_create(m, &eo, &e));
        double worst = 0;
        int64_t set_mismatch = 0, tie_rows = 0, compared = 0;
        for (int64_t r = 0; r < R; r++) {
            int64_t n = 0;
            while (n < Lmax && ids[r * Lmax + n] >= 0) n++;
            int64_t id;
            REQUIRE_OK(dsacp_engine_add_request(e, &id));
            float *lg = malloc((size_t)(n * V) * 4);
            int32_t *tk = malloc((size_t)(NL * n * K) * 4);
            if (!pass) {
                dsacp_step_entry en = {id, n, ids + r * Lmax};
                CHECK_OK(dsacp_engine_step(e, &en, 1, lg, tk));
            } else {
                int32_t *t1 = malloc((size_t)(NL * K) * 4);
                for (int64_t p = 0; p < n; p++) {
                    dsacp_step_entry en = {id, 1, ids + r * Lmax + p};
                    CHECK_OK(dsacp_engine_step(e, &en, 1, lg + p * V, t1));
                    for (int64_t l = 0; l < NL; l++) memcpy(tk + (l * n + p) * K, t1 + l * K, (size_t)K * 4);
                }
                free(t1);
            }
            /* A tie in layer l at position p may change everything after p in later layers. */
            int64_t first_affected = n;
            for (int64_t l = 0; l < NL; l++)
                for (int64_t p = 0; p < n; p++)
                    if (tie[l][r * Lmax + p]) {
                        tie_rows++;
                        if (p < first_affected) first_affected = p;
                    }
            for (int64_t l = 0; l < NL; l++)
                for (int64_t p = 0; p < first_affected; p++)
                    if (memcmp(tk + (l * n + p) * K, exp_topk[l] + (r * Lmax + p) * K, (size_t)K * 4)) set_mismatch++;
            double md = 0, mr = 0;
            for (int64_t p = 0; p < first_affected; p++)
                for (int64_t v = 0; v < V; v++) {
                    double a = lg[p * V + v], b = exp_logits[(r * Lmax + p) * V + v];
                    md = fmax(md, fabs(a - b));
                    mr = fmax(mr, fabs(b));
                }
            compared += first_affected;
            if (mr > 0) worst = fmax(worst, md / mr);
            free(lg);
            free(tk);
        }
        printf("vs transformers (%s): %lld positions compared, logits max rel %.3g, top-k sets differing %lld, "
               "tie rows excluded %lld\n", pass ? "token by token, block 1" : "prefill, block 16",
               (long long)compared, worst, (long long)set_mismatch, (long long)tie_rows);
        CHECKF(worst <= 1e-4, "logits max rel %.3g > 1e-4", worst);
        CHECK(set_mismatch == 0);
        dsacp_engine_free(e);
    }
    dsacp_st_close(f);
    dsacp_model_free(m);
    return test_finish("test_hf_engine");
}

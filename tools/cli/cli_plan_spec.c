/*
 * cli_plan_spec.c -- `dsacp plan --speculative-config JSON [--spec-acceptance-rate A]`: vLLM's
 * speculative config parsed here (method mtp | ngram, num_speculative_tokens, ngram's
 * prompt_lookup_min / prompt_lookup_max; the planner calls nothing of src/serve), and a section
 * pricing each strategy's TPOT with k drafts beside its plain TPOT (dsacp_plan_spec_price).
 */
#include "cli_plan_spec.h"
#include "cli.h"
#include "dsacp_util.h"

#include <math.h>
#include <string.h>

static bool spec_fail(const char *flag, const char *what)
{
    fprintf(stderr, "dsacp plan: option '--%s': %s\n", flag, what);
    return false;
}

/* The JSON's fields into out; false after the message. */
static bool parse_config(const char *text, cli_plan_spec *out)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    char msg[320];
    bool ok = j && json_is_object(j);
    if (!ok) {
        snprintf(msg, sizeof msg, "'%s' is not a JSON object (%s)", text, j ? "another JSON value" : err.text);
        json_decref(j);
        return spec_fail("speculative-config", msg);
    }
    const char *key;
    json_t *v;
    int64_t k = -1;
    json_object_foreach(j, key, v)
    {
        if (!strcmp(key, "method") && json_is_string(v)) {
            const char *m = json_string_value(v);
            out->method = !strcmp(m, "mtp") ? "mtp" : !strcmp(m, "ngram") ? "ngram" : NULL;
            if (!out->method) snprintf(msg, sizeof msg, "field 'method' = '%s': mtp or ngram", m), ok = false;
        } else if (!strcmp(key, "num_speculative_tokens") && json_is_integer(v)) {
            k = (int64_t)json_integer_value(v);
            if (k < 1 || k > 16) snprintf(msg, sizeof msg, "field 'num_speculative_tokens' = %lld: 1 to 16", (long long)k), ok = false;
        } else if ((!strcmp(key, "prompt_lookup_min") || !strcmp(key, "prompt_lookup_max")) && json_is_integer(v) &&
                   json_integer_value(v) >= 1) {
            /* ngram's lookup window: what it finds is the acceptance rate's business */
        } else {
            snprintf(msg, sizeof msg, "field '%s': not one of method (mtp | ngram), num_speculative_tokens (an integer), "
                     "prompt_lookup_min / prompt_lookup_max (positive integers)", key);
            ok = false;
        }
        if (!ok) break;
    }
    json_decref(j);
    if (ok && !out->method) snprintf(msg, sizeof msg, "field 'method' is missing (mtp or ngram)"), ok = false;
    if (ok && k < 0) snprintf(msg, sizeof msg, "field 'num_speculative_tokens' is missing"), ok = false;
    if (!ok) return spec_fail("speculative-config", msg);
    out->spec.k = k;
    out->spec.mtp = !strcmp(out->method, "mtp");
    return true;
}

bool cli_plan_spec_flags(const char *config, const char *rate, cli_plan_spec *out)
{
    memset(out, 0, sizeof *out);
    if (!config) return rate ? spec_fail("spec-acceptance-rate", "prices speculative decoding: it needs '--speculative-config'") : true;
    if (!parse_config(config, out)) return false;
    out->on = true;
    if (rate) return cli_double("plan", "spec-acceptance-rate", rate, 0, 1, &out->spec.acceptance);
    if (!out->spec.mtp)
        return spec_fail("speculative-config", "method ngram: its acceptance depends on the workload's repetitions, give "
                                               "'--spec-acceptance-rate A'");
    out->spec.acceptance = DSACP_PLAN_MTP_ACCEPTANCE;
    out->rate_default = true;
    return true;
}

static int jnum(json_t *o, const char *key, double v)
{
    if (!isfinite(v)) return dsacp_error(DSACP_ERANGE, "plan: speculative %s is not finite", key);
    return json_object_set_new(o, key, json_real(v)) ? dsacp_error(DSACP_ENOMEM, "out of memory") : DSACP_OK;
}

/* One strategy's row: the table's line and its JSON object. */
static int spec_row(FILE *txt, json_t *arr, const char *label, const dsacp_plan_spec_model *m)
{
    const double plain = m->plain.tpot, sp = m->tpot;
    fprintf(txt, "%-40s %9.3f %9.3f %9.3f %9.3f %7.2f %9.3f %7.2fx\n", label, plain * 1e3, m->t_verify * 1e3,
            m->t_catchup * 1e3, m->t_chain * 1e3, m->tokens_per_step, sp * 1e3, plain / sp);
    json_t *o = json_object();
    int rc = o && !json_array_append_new(arr, o) ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc) rc = json_object_set_new(o, "strategy", json_string(label)) ? dsacp_error(DSACP_ENOMEM, "out of memory") : DSACP_OK;
    const struct {
        const char *k;
        double v;
    } f[] = {{"tpot", plain}, {"t_verify", m->t_verify}, {"t_catchup", m->t_catchup}, {"t_chain", m->t_chain},
             {"tokens_per_step", m->tokens_per_step}, {"tpot_spec", sp}, {"speedup", plain / sp},
             {"mtp_kv_bytes_per_rank", m->mtp_kv_bytes_per_rank}};
    for (size_t i = 0; i < sizeof f / sizeof f[0] && !rc; i++) rc = jnum(o, f[i].k, f[i].v);
    return rc;
}

int cli_plan_spec_section(FILE *txt, json_t *root, const cli_plan_spec *s, const dsacp_config *cfg,
                          const cli_plan_spec_row *rows, int n, int64_t W, int64_t ep, int64_t context, int64_t batch,
                          bool deployed, double wbytes, const dsacp_hw *hw)
{
    if (!s->on) return DSACP_OK;
    json_t *o = json_object(), *arr = json_array();
    int rc = o && arr && !json_object_set_new(root, "speculative", o) && !json_object_set_new(o, "strategies", arr)
                 ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc && (json_object_set_new(o, "method", json_string(s->method)) ||
                json_object_set_new(o, "num_speculative_tokens", json_integer((json_int_t)s->spec.k)) ||
                json_object_set_new(o, "acceptance_default", json_boolean(s->rate_default))))
        rc = dsacp_error(DSACP_ENOMEM, "out of memory");
    if (!rc) rc = jnum(o, "acceptance", s->spec.acceptance);
    fprintf(txt, "\nspeculative decoding: %s, k = %lld drafts, acceptance %.3g%s; per round: the verify step of k + 1 "
                 "rows per request%s; TPOT = round / E[tokens per round]\n", s->method, (long long)s->spec.k,
            s->spec.acceptance, s->rate_default ? " (MTP's default, docs/planning.md)" : "",
            s->spec.mtp ? ", the MTP catch-up (k + 1 rows, 1 layer) and k - 1 chain steps (1 row)" : " (n-gram drafts: no draft step)");
    fprintf(txt, "%-40s %9s %9s %9s %9s %7s %9s %8s\n", "strategy", "TPOT ms", "verify", "catch-up", "chain", "E[tok]",
            "spec ms", "speedup");
    for (int v = 0; v < n && !rc; v++) {
        dsacp_plan_spec_model m;
        rc = dsacp_plan_spec_price(cfg, &rows[v].cp, W, ep, context, batch, deployed, wbytes, hw, &s->spec, &m);
        if (rc) rc = dsacp_error_context(rc, "strategy '%s'", rows[v].label);
        else rc = spec_row(txt, arr, rows[v].label, &m);
    }
    return rc;
}

/*
 * cli_run_pd.c -- `dsacp run` on separate prefill and decode groups (docs/serving.md,
 * "Disaggregated serving"): the role flags (--kv-role with vLLM's names, --pd P:D,
 * --kv-transfer-timeout), what the ranks check of each other before the world is split (every
 * verdict the same on every rank), the producer group's default plan, the capture that brings
 * another rank's one-line error to world rank 0, and the counters' report of both groups and the
 * link. cli_run.c runs the command; this file holds only what a disaggregated run adds.
 */
#include "cli_run.h"
#include "dsacp_util.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int run_pd_parse(const cli_opt *opts, int rank, int size, run_pd_args *p)
{
    *p = (run_pd_args){.role = DSACP_KV_BOTH, .timeout_s = 120};
    const char *role = cli_get(opts, "kv-role"), *pd = cli_get(opts, "pd"), *to = cli_get(opts, "kv-transfer-timeout");
    if (role && pd) {
        fprintf(stderr, "dsacp run: give at most one of '--kv-role' and '--pd P:D' (--pd gives the roles: world ranks "
                "[0, P) kv_producer, [P, P + D) kv_consumer)\n");
        return 2;
    }
    if (role && dsacp_kv_role_parse(role, &p->role)) {
        fprintf(stderr, "dsacp run: option '--kv-role': %s\n", dsacp_last_error());
        return 2;
    }
    p->role_flag = role != NULL;
    if (pd) {
        const char *colon = strchr(pd, ':');
        char left[32];
        const size_t n = colon ? (size_t)(colon - pd) : 0;
        bool ok = colon && n < sizeof left;
        if (ok) memcpy(left, pd, n), left[n] = 0;
        ok = ok && cli_parse_i64(left, &p->P) && cli_parse_i64(colon + 1, &p->D) && p->P >= 1 && p->D >= 1 &&
             p->P <= 1 << 20 && p->D <= 1 << 20;
        if (!ok) {
            fprintf(stderr, "dsacp run: option '--pd' = '%s': P:D, the producer and the consumer group's ranks "
                    "(each at least 1)\n", pd);
            return 2;
        }
        if (p->P + p->D != size) {
            fprintf(stderr, "dsacp run: option '--pd %s' needs P + D = %lld ranks, the run has %d (start it with "
                    "mpirun -np %lld)\n", pd, (long long)(p->P + p->D), size, (long long)(p->P + p->D));
            return 2;
        }
        p->pd_flag = true;
        p->role = rank < p->P ? DSACP_KV_PRODUCER : DSACP_KV_CONSUMER;
    }
    if (p->role != DSACP_KV_BOTH && size == 1) {
        fprintf(stderr, "dsacp run: option '--kv-role %s': a single process has no partner group (start both groups "
                "in one job: mpirun -np P dsacp run --kv-role kv_producer ... : -np D dsacp run --kv-role "
                "kv_consumer ...)\n", dsacp_kv_role_name(p->role));
        return 2;
    }
    if (to && p->role == DSACP_KV_BOTH) {
        fprintf(stderr, "dsacp run: option '--kv-transfer-timeout' applies to a disaggregated run only ('--kv-role "
                "kv_producer|kv_consumer' or '--pd P:D')\n");
        return 2;
    }
    if (to && !cli_double("run", "kv-transfer-timeout", to, 1e-3, 1e6, &p->timeout_s)) return 2;
    return CLI_RUN;
}

/* ---- the cards ---- */

/* The flags of the whole job: the workload, the scheduler and sampling, the outputs and --verify
 * are world rank 0's, the preset is made by world rank 0 for every rank: each group must give
 * them alike (--speculative-config too: the consumer speculates, and with mtp both engines carry the
 * MTP layer). The others (model directory, numerics, cache, block size, pool, CP plan, timeout)
 * are the group's own. */
static const char *const job_flags[RUN_PD_JOB_FLAGS] = {
    "preset", "requests", "prompt-len", "gen-len", "arrival-rate", "long-requests", "long-prompt-len", "prompts",
    "max-batch-tokens", "max-num-seqs", "verify", "json", "seed", "temperature", "top-p", "no-realtime",
    "comm-report", "speculative-config"};

/* FNV-1a of a string, never 0 (0: not given). */
static uint64_t fingerprint(uint64_t h, const char *s)
{
    if (!s) return h;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h = (h ^ 0xffu) * 1099511628211ull; /* the end of one argument */
    return h ? h : 1;
}

void run_pd_card_of(const cli_opt *opts, int argc, char **argv, const run_pd_args *p, int64_t block_size,
                    run_pd_card *card)
{
    memset(card, 0, sizeof *card);
    card->role = (int32_t)p->role;
    card->pd_flag = p->pd_flag;
    card->P = p->P, card->D = p->D, card->block_size = block_size;
    card->comm_report = cli_get(opts, "comm-report") != NULL;
    uint64_t h = 14695981039346656037ull;
    for (int i = 1; i < argc; i++) h = fingerprint(h, argv[i]);
    card->argv_hash = h;
    for (int k = 0; k < RUN_PD_JOB_FLAGS; k++) card->job[k] = fingerprint(14695981039346656037ull, cli_get(opts, job_flags[k]));
}

static int refuse(bool print, const char *what)
{
    if (print) fprintf(stderr, "dsacp run: %s\n", what);
    return 2;
}

/* The roles: all kv_both (today's run), or a producer and a consumer group and nothing else, given
 * one way. */
static int check_roles(const run_pd_card *c, int size, char *msg, size_t cap)
{
    int n[3] = {0}, first[3] = {-1, -1, -1}, pd = -1, role = -1;
    for (int q = 0; q < size; q++) {
        const int r = c[q].role >= 0 && c[q].role < 3 ? c[q].role : 0;
        if (first[r] < 0) first[r] = q;
        n[r]++;
        if (c[q].pd_flag && pd < 0) pd = q;
        if (!c[q].pd_flag && r != DSACP_KV_BOTH && role < 0) role = q;
    }
    if (n[DSACP_KV_BOTH] == size) return CLI_RUN;
    if (n[DSACP_KV_BOTH])
        snprintf(msg, cap, "world rank %d has no '--kv-role' (kv_both) beside %s ranks: give every group a role, or "
                 "none", first[DSACP_KV_BOTH], n[DSACP_KV_PRODUCER] ? "kv_producer" : "kv_consumer");
    else if (pd >= 0 && role >= 0)
        snprintf(msg, cap, "world rank %d has '--pd' and world rank %d '--kv-role': give the roles one way for the "
                 "whole job", pd, role);
    else if (!n[DSACP_KV_PRODUCER] || !n[DSACP_KV_CONSUMER]) {
        const char *has = n[DSACP_KV_PRODUCER] ? "kv_producer" : "kv_consumer";
        snprintf(msg, cap, "'--kv-role %s' on every rank: the %s group has no partner (mpirun -np P dsacp run --kv-role "
                 "kv_producer ... : -np D dsacp run --kv-role kv_consumer ...)", has, has);
    } else return CLI_RUN;
    return 2;
}

int run_pd_check_cards(const run_pd_card *c, int size, bool *pd)
{
    char msg[512];
    const bool root = cli_world && dsacp_comm_rank(cli_world) == 0;
    *pd = false;
    if (check_roles(c, size, msg, sizeof msg) != CLI_RUN) return refuse(root, msg);
    if (c[0].role == DSACP_KV_BOTH) return CLI_RUN;
    *pd = true;
    for (int q = 1; q < size; q++) {
        if (c[q].pd_flag && (c[q].P != c[0].P || c[q].D != c[0].D || c[q].argv_hash != c[0].argv_hash)) {
            snprintf(msg, sizeof msg, "world ranks 0 and %d were started with different flags: '--pd' runs one command "
                     "line on every rank", q);
            return refuse(root, msg);
        }
        for (int r = 0; r < q; r++)
            if (c[r].role == c[q].role && c[r].argv_hash != c[q].argv_hash) {
                snprintf(msg, sizeof msg, "world ranks %d and %d (%s) were started with different flags: the ranks of "
                         "a group share one command line", r, q, dsacp_kv_role_name((dsacp_kv_role)c[q].role));
                return refuse(root, msg);
            }
        for (int k = 0; k < RUN_PD_JOB_FLAGS; k++)
            if (c[q].job[k] != c[0].job[k]) {
                snprintf(msg, sizeof msg, "world ranks 0 and %d give '--%s' differently: the workload, the scheduler, "
                         "the model preset, --verify and the outputs are the job's (world rank 0's), give them to "
                         "every group alike", q, job_flags[k]);
                return refuse(root, msg);
            }
    }
    return CLI_RUN;
}

/* ---- the producer's plan ---- */

/* The flags of a CP plan (CLI_CP_OPTS without --comm-report, which is the job's). */
static const char *const cp_flags[] = {
    "decode-strategy", "kv-layout", "index-layout", "cp-interleave", "cp-kv-cache-interleave-size", "prefill-split",
    "decode-context-parallel-size", "dcp-comm-backend", "cp-mode", "q-proj", "o-proj", "prefetch",
    "lean-candidates", "lean-merge", "partials", "context-path", "context-hardware"};

/* The seed's pure-prefill nodes (vllm-ascend): DSA-CP's flat token split, q_proj and o_proj
 * sharded by layer and broadcast ahead, both caches whole on every rank -- every W_p >= 1 passes
 * dsacp_cp_options_check with it (no decode strategy reads a replicated DSA-CP cache). */
static const char *const producer_plan[][2] = {
    {"cp-mode", "dsa-cp"}, {"prefill-split", "contiguous"}, {"q-proj", "layer-shard"},
    {"o-proj", "layer-shard"}, {"kv-layout", "replicated"}, {"index-layout", "replicated"}};

static bool is_cp_flag(const char *name)
{
    for (size_t i = 0; i < sizeof cp_flags / sizeof cp_flags[0]; i++)
        if (strcmp(name, cp_flags[i]) == 0) return true;
    return false;
}

bool run_pd_cp_options(const cli_opt *opts, const run_pd_args *p, int W, dsacp_cp_options *cpo)
{
    if (p->role != DSACP_KV_PRODUCER) return cli_cp_options_group("run", opts, W, cpo);
    cli_opt own[128];
    size_t n = 0;
    for (; opts[n].name && n + 1 < sizeof own / sizeof own[0]; n++) {
        own[n] = opts[n];
        if (p->pd_flag && is_cp_flag(own[n].name)) own[n].value = NULL; /* --pd: the flags are the consumer's */
    }
    own[n] = (cli_opt){NULL, false, NULL};
    const char *mode = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(own[i].name, "cp-mode") == 0) mode = own[i].value;
    /* An explicit --cp-mode other than dsa-cp is a plan of the user's own: nothing is added to it. */
    if (!mode || strcmp(mode, "dsa-cp") == 0)
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < sizeof producer_plan / sizeof producer_plan[0]; k++)
                if (!own[i].value && strcmp(own[i].name, producer_plan[k][0]) == 0) own[i].value = producer_plan[k][1];
    return cli_cp_options_group("run", own, W, cpo);
}

void run_pd_plan_words(const dsacp_cp_options *cpo, int W, char *buf, size_t cap)
{
    if (cpo->mode == DSACP_CP_DSA_CP)
        snprintf(buf, cap, "dsa-cp, q_proj %s, o_proj %s, caches %s/%s", dsacp_weight_plan_name(cpo->q_proj),
                 dsacp_weight_plan_name(cpo->o_proj), dsacp_cp_layout_name(cpo->kv_layout),
                 dsacp_cp_layout_name(cpo->index_layout));
    else
        snprintf(buf, cap, "dcp, %s, interleave %lld, caches %s/%s", W > 1 ? dsacp_decode_strategy_name(cpo->decode) : "one rank",
                 (long long)cpo->interleave, dsacp_cp_layout_name(cpo->kv_layout), dsacp_cp_layout_name(cpo->index_layout));
}

int run_pd_transfer_phase(void)
{
    for (int ph = 0; ph < DSACP_PHASE_COUNT; ph++)
        if (strcmp(dsacp_comm_phase_name(ph), "kv_transfer") == 0) return ph;
    return -1;
}

/* ---- another rank's error ---- */

void run_capture_begin(run_capture *c, bool on)
{
    c->saved_fd = -1;
    c->tmp = NULL;
    if (!on) return;
    fflush(stderr);
    c->tmp = tmpfile();
    if (c->tmp && (c->saved_fd = dup(2)) >= 0 && dup2(fileno(c->tmp), 2) >= 0) return;
    if (c->saved_fd >= 0) close(c->saved_fd);
    if (c->tmp) fclose(c->tmp);
    c->saved_fd = -1;
    c->tmp = NULL; /* the line is lost, the verdict is not */
}

/* What the capture kept: its first line, without the "dsacp run: " every CLI error starts with. */
static void capture_end(run_capture *c, char *line, size_t cap)
{
    line[0] = 0;
    if (!c->tmp) return;
    fflush(stderr);
    dup2(c->saved_fd, 2);
    close(c->saved_fd);
    rewind(c->tmp);
    if (!fgets(line, (int)cap, c->tmp)) line[0] = 0;
    fclose(c->tmp);
    c->tmp = NULL;
    c->saved_fd = -1;
    line[strcspn(line, "\n")] = 0;
    static const char prefix[] = "dsacp run: ";
    if (strncmp(line, prefix, sizeof prefix - 1) == 0) memmove(line, line + sizeof prefix - 1, strlen(line) - (sizeof prefix - 2));
}

int run_capture_verdict(run_capture *c, dsacp_comm *world, int ret)
{
    char line[480];
    capture_end(c, line, sizeof line);
    int st = DSACP_OK;
    if (ret != CLI_RUN)
        st = dsacp_error(ret == 1 ? DSACP_EIO : DSACP_EINVAL, "%s", line[0] ? line : ret == 0 ? "asked for --help"
                                                                                      : "a bad invocation");
    const int agreed = dsacp_comm_agree_phase(world, st, -1);
    if (ret != CLI_RUN) return ret;
    if (agreed == DSACP_OK) return CLI_RUN;
    fprintf(stderr, "dsacp run: %s\n", dsacp_last_error());
    return agreed == DSACP_EINVAL ? 2 : 1;
}

/* ---- the counters' report ---- */

/* Every rank's text (NULL: none) into world rank 0's array [size] (uncounted): the lengths, then
 * the texts padded to the longest. */
static int gather_texts(dsacp_comm *world, const char *text, char **all)
{
    const int size = dsacp_comm_size(world);
    int64_t len = text ? (int64_t)strlen(text) + 1 : 0, *lens = calloc((size_t)size, sizeof *lens);
    if (!lens) return dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
    int rc = dsacp_comm_allgather(world, &len, sizeof len, lens, -1);
    int64_t most = 1;
    for (int q = 0; !rc && q < size; q++) most = lens[q] > most ? lens[q] : most;
    char *mine = rc ? NULL : calloc((size_t)most, 1), *every = rc ? NULL : calloc((size_t)most * (size_t)size, 1);
    if (!rc && (!mine || !every)) rc = dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
    if (!rc && text) memcpy(mine, text, (size_t)len);
    if (!rc) rc = dsacp_comm_allgather(world, mine, (size_t)most, every, -1);
    for (int q = 0; !rc && q < size; q++) all[q] = lens[q] ? strdup(every + (size_t)q * (size_t)most) : NULL;
    free(lens), free(mine), free(every);
    return rc;
}

/* {"producer": ..., "consumer": ..., "link": ...}: the group leaders' texts (each led by 'p' or 'c')
 * and the link's. */
static int combine(char **texts, int size, const char *link, char **out)
{
    json_t *root = json_object();
    int rc = root ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
    for (int pass = 0; !rc && pass < 3; pass++) /* producer, consumer, link: in that order */
        for (int q = 0; !rc && q < (pass < 2 ? size : 1); q++) {
            const char *t = pass < 2 ? texts[q] : link;
            if (!t || (pass < 2 && t[0] != "pc"[pass])) continue;
            json_error_t err;
            json_t *g = json_loads(pass < 2 ? t + 1 : t, 0, &err);
            if (!g) rc = dsacp_error(DSACP_EFORMAT, "--comm-report: a counters' report: %s", err.text);
            else json_object_set_new(root, pass == 0 ? "producer" : pass == 1 ? "consumer" : "link", g);
        }
    *out = rc ? NULL : json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (!rc && !*out) rc = dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
    json_decref(root);
    return rc;
}

/* The three reports, each collective over its communicator; world rank 0 commits them. */
static int write_reports(dsacp_comm *world, dsacp_comm *group, dsacp_kv_role role, const dsacp_engine *e,
                         dsacp_pd *link, cli_output *report)
{
    const int size = dsacp_comm_size(world);
    char *gj = NULL, *lj = NULL, *all = NULL, **texts = calloc((size_t)size, sizeof *texts);
    int rc = texts ? DSACP_OK : dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
    if (!rc && e) rc = dsacp_engine_report_notes(e);
    if (!rc) rc = dsacp_comm_report_json(group, &gj); /* agreed over the group */
    if (!rc && gj) { /* the group's leader: its role first */
        const size_t n = strlen(gj);
        char *t = realloc(gj, n + 2);
        if (!t) rc = dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
        else memmove(t + 1, t, n + 1), t[0] = role == DSACP_KV_PRODUCER ? 'p' : 'c', gj = t;
    }
    rc = dsacp_comm_agree(world, rc);
    if (!rc) rc = gather_texts(world, gj, texts);
    if (!rc) rc = dsacp_comm_report_json(dsacp_pd_link(link), &lj); /* agreed over the world */
    if (!rc && report->open) rc = combine(texts, size, lj, &all);
    if (!rc && all) {
        const size_t n = strlen(all);
        char *t = realloc(all, n + 2);
        if (!t) rc = dsacp_error(DSACP_ENOMEM, "--comm-report: out of memory");
        else all = t, all[n] = '\n', rc = cli_output_commit_bytes(report, all, n + 1);
    }
    for (int q = 0; texts && q < size; q++) free(texts[q]);
    free(texts), free(gj), free(lj), free(all);
    return dsacp_comm_agree(world, rc);
}

int run_pd_finish(int status, dsacp_comm *world, dsacp_comm *group, dsacp_kv_role role, const dsacp_engine *e,
                  dsacp_pd *link, bool want_report, cli_output *report)
{
    int rc = dsacp_comm_agree(world, status);
    if (rc) {
        if (!status) cli_fail("run", rc);
        cli_output_abort(report);
        return rc;
    }
    if (want_report && (rc = write_reports(world, group, role, e, link, report))) {
        cli_fail("run", rc);
        cli_output_abort(report);
    }
    return rc;
}

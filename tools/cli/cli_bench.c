/*
 * cli_bench.c -- `dsacp bench`: the flags, and the report of a benchmark case of the library
 * (include/dsacp_bench.h; the cases and their harness are src/bench) as a table or as one JSON
 * object (docs/performance.md explains every figure). --kernel cp runs an engine over the CP
 * group (cli_bench_cp.c).
 *
 * With --preset nothing touches the disk: the cases generate their operands in memory. With
 * --model DIR the layer's weights come from the checkpoint; the caches are still synthetic.
 * The reference dense product the kernels are set beside is OpenBLAS's sgemm, passed to the
 * library here (the library links no BLAS).
 */
#include "cli.h"
#include "dsacp_bench.h"
#include "dsacp_util.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reference product: OpenBLAS sgemm, row-major. */
static void openblas_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                          bool transb, float *C, int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                (int)lda, B, (int)ldb, 0.0f, C, (int)ldc);
}

/* ---- flags ---- */

/* Exit status 2 (printed) when a flag is given that case k does not read, naming the cases that do.
 * Silently ignoring it would report a measurement of something else than asked. */
static bool flags_fit_case(const cli_opt *opts, int k)
{
    dsacp_bench_case_info info, other;
    dsacp_bench_case_get(k, &info);
    for (int f = 0; f < DSACP_BENCH_OPT_COUNT; f++) {
        const char *flag = dsacp_bench_option_name(f);
        if (!cli_get(opts, flag) || (info.options >> f & 1)) continue;
        char users[160] = "";
        size_t n = 0;
        for (int j = 0; j < dsacp_bench_case_count() && n < sizeof users; j++)
            if (!dsacp_bench_case_get(j, &other) && (other.options >> f & 1))
                n += (size_t)snprintf(users + n, sizeof users - n, "%s%s", n ? ", " : "", other.name);
        fprintf(stderr, "dsacp bench: option '--%s' is not read by '--kernel %s' (only by --kernel %s)\n", flag,
                info.name, users);
        return false;
    }
    return true;
}

/* --kernel: the case's index, or -1 (printed, listing the cases). */
static int parse_case(const char *s)
{
    if (!s) return dsacp_bench_case_find("all");
    int k = dsacp_bench_case_find(s);
    if (k >= 0) return k;
    char names[160] = "";
    size_t n = 0;
    const int count = dsacp_bench_case_count();
    dsacp_bench_case_info info;
    for (int j = 0; j < count && n < sizeof names; j++)
        if (!dsacp_bench_case_get(j, &info))
            n += (size_t)snprintf(names + n, sizeof names - n, "%s%s", j == 0 ? "" : j == count - 1 ? " or " : ", ",
                                  info.name);
    fprintf(stderr, "dsacp bench: option '--kernel' must be %s, got '%s'\n", names, s);
    return -1;
}

/* The flags every case checks alike, before any work (--kernel cp included): --threads,
 * --block-size (a power of two), --isa (*isa: -1 when not given). */
static bool common_flags(const cli_opt *opts, int64_t *threads, int64_t *block_size, int *isa)
{
    const char *s;
    if ((s = cli_get(opts, "threads")) && !cli_int("bench", "threads", s, 1, 1024, threads)) return false;
    if ((s = cli_get(opts, "block-size"))) {
        if (!cli_int("bench", "block-size", s, 1, 1 << 20, block_size)) return false;
        if (*block_size & (*block_size - 1)) {
            fprintf(stderr, "dsacp bench: option '--block-size' = %s must be a power of two\n", s);
            return false;
        }
    }
    *isa = -1;
    if ((s = cli_get(opts, "isa")) && (*isa = dsacp_bench_isa_find(s)) < 0) {
        fprintf(stderr, "dsacp bench: option '--isa' must be scalar, avx2 or avx512, got '%s'\n", s);
        return false;
    }
    return true;
}

/* ---- the report ---- */

typedef struct report {
    const char *preset, *model_dir, *kernel;
    bool json;
    dsacp_bench_options opt;
    dsacp_bench_machine machine;
    dsacp_bench_report res;
} report;

/* The table's rows, printed as each figure is measured (unless --json). */
static void print_row(const dsacp_bench_result *r, void *user)
{
    if (((const report *)user)->json) return;
    if (isnan(r->value)) /* a figure this machine cannot give: its unit says why ("n/a: ...") */
        printf("%-32s %12s %s\n", r->name, "n/a", r->unit + (strncmp(r->unit, "n/a: ", 5) == 0 ? 5 : 0));
    else if (r->ceiling_name[0])
        printf("%-32s %12.4g %-7s %-24s %12.4g %8.3f\n", r->name, r->value, r->unit, r->ceiling_name, r->ceiling_value,
               r->ratio);
    else
        printf("%-32s %12.4g %-7s %-24s %12s %8s\n", r->name, r->value, r->unit, "-", "-", "-");
    fflush(stdout);
}

static void print_header(const report *rp)
{
    const dsacp_bench_options *o = &rp->opt;
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("dsacp bench: %s %s, context %lld, batch %lld, %lld threads, isa %s, %s numerics, min of %lld reps%s\n",
           rp->preset ? "preset" : "model", rp->preset ? rp->preset : rp->model_dir, (long long)o->context,
           (long long)o->batch, (long long)o->threads, rp->machine.isa, o->deployed ? "deployed" : "exact",
           (long long)o->reps, o->warm ? ", warm caches" : "");
    if (isfinite(rp->machine.loadavg))
        printf("cpu: %d cores, load average %.2f at start\n", rp->machine.cores, rp->machine.loadavg);
    printf("openblas: %s kernels%s%s\n", openblas_get_corename(),
           ct ? ", forced by OPENBLAS_CORETYPE=" : " (autodetected)", ct ? ct : "");
    printf("%-32s %12s %-7s %-24s %12s %8s\n", "name", "value", "unit", "ceiling", "ceiling_val", "ratio");
}

/* ---- --json ---- */

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* A JSON string of text that may not be UTF-8 (a directory name, /proc/cpuinfo, the environment):
 * when jansson refuses it, every byte >= 0x80 becomes '?' (as cli_plan.c's jstr). NULL only when
 * out of memory. */
static json_t *jtext(const char *text)
{
    json_t *v = json_string(text);
    if (v) return v;
    char *t = strdup(text);
    if (!t) return NULL;
    for (char *c = t; *c; c++)
        if ((unsigned char)*c >= 0x80) *c = '?';
    v = json_string(t);
    free(t);
    return v;
}

/* obj[key] = v; false (v released) when v is NULL or the insertion fails. */
static bool jset(json_t *obj, const char *key, json_t *v)
{
    if (!v) return false;
    if (!obj) {
        json_decref(v);
        return false;
    }
    return json_object_set_new(obj, key, v) == 0;
}

static json_t *machine_json(const report *rp)
{
    const dsacp_bench_machine *m = &rp->machine;
    const char *ct = getenv("OPENBLAS_CORETYPE");
    json_t *o = json_object();
    bool ok = jset(o, "cpu", jtext(m->cpu)) && jset(o, "cores", json_integer(m->cores)) &&
              jset(o, "isa", jtext(m->isa)) && jset(o, "isa_best", jtext(m->isa_best)) &&
              jset(o, "avx512_bf16", json_boolean(m->avx512_bf16)) &&
              jset(o, "avx512_vnni", json_boolean(m->avx512_vnni)) &&
              jset(o, "openblas", jtext(openblas_get_corename())) && jset(o, "loadavg_at_start", jnum(m->loadavg)) &&
              jset(o, "openblas_coretype_env", ct ? jtext(ct) : json_null());
    if (!ok) json_decref(o);
    return ok ? o : NULL;
}

static json_t *config_json(const report *rp)
{
    const dsacp_bench_options *b = &rp->opt;
    const dsacp_config *c = b->config;
    json_t *o = json_object(), *dims = json_object();
    bool ok = jset(o, "preset", rp->preset ? jtext(rp->preset) : json_null()) &&
              jset(o, "model", rp->model_dir ? jtext(rp->model_dir) : json_null()) &&
              jset(o, "context", json_integer((json_int_t)b->context)) &&
              jset(o, "batch", json_integer((json_int_t)b->batch)) &&
              jset(o, "threads", json_integer((json_int_t)b->threads)) && jset(o, "kernel", jtext(rp->kernel)) &&
              jset(o, "reps", json_integer((json_int_t)b->reps)) &&
              jset(o, "numerics", json_string(b->deployed ? "deployed" : "exact")) &&
              jset(o, "block_size", json_integer((json_int_t)b->block_size)) &&
              jset(o, "statistic", json_string("minimum over reps")) &&
              jset(o, "linear_caches", json_string(b->warm ? "warm" : "flushed"));
    const struct {
        const char *name;
        int64_t v;
    } dim[] = {{"hidden_size", c->hidden_size},
               {"num_attention_heads", c->num_attention_heads},
               {"q_lora_rank", c->q_lora_rank},
               {"kv_lora_rank", c->kv_lora_rank},
               {"qk_nope_head_dim", c->qk_nope_head_dim},
               {"qk_rope_head_dim", c->qk_rope_head_dim},
               {"v_head_dim", c->v_head_dim},
               {"index_n_heads", c->index_n_heads},
               {"index_head_dim", c->index_head_dim},
               {"index_topk", c->index_topk}};
    for (size_t i = 0; ok && i < sizeof dim / sizeof *dim; i++)
        ok = jset(dims, dim[i].name, json_integer((json_int_t)dim[i].v));
    if (!ok) json_decref(dims);
    else ok = jset(o, "dims", dims); /* o's from here, or released */
    if (!ok) json_decref(o);
    return ok ? o : NULL;
}

static json_t *results_json(const report *rp)
{
    json_t *a = json_array();
    bool ok = a != NULL;
    for (int i = 0; ok && i < rp->res.count; i++) {
        const dsacp_bench_result *r = &rp->res.results[i];
        const bool ceil = r->ceiling_name[0] != 0;
        json_t *o = json_object();
        ok = jset(o, "name", jtext(r->name)) && jset(o, "value", jnum(r->value)) && jset(o, "unit", jtext(r->unit)) &&
             jset(o, "ceiling_name", ceil ? jtext(r->ceiling_name) : json_null()) &&
             jset(o, "ceiling_value", ceil ? jnum(r->ceiling_value) : json_null()) &&
             jset(o, "ratio", ceil ? jnum(r->ratio) : json_null());
        if (!ok) json_decref(o);
        else ok = json_array_append_new(a, o) == 0;
    }
    if (!ok) json_decref(a);
    return ok ? a : NULL;
}

/* The report as one JSON object on stdout. A failure to build it (out of memory) is an error:
 * never a silent success with nothing printed. */
static int print_json(const report *rp)
{
    json_t *root = json_object();
    bool ok = jset(root, "machine", machine_json(rp)) && jset(root, "config", config_json(rp)) &&
              jset(root, "results", results_json(rp));
    char *s = ok ? json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!s) {
        fprintf(stderr, "dsacp bench: --json: out of memory building the report\n");
        return 1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

/* ---- the command ---- */

/* The preset's or the model's dimensions (exit status 2 printed for a bad name or directory). */
static int load_dims(report *rp, dsacp_config *cfg, dsacp_model **model)
{
    int rc = rp->preset ? dsacp_preset_config(rp->preset, cfg) : dsacp_model_load(rp->model_dir, model);
    if (rc) {
        cli_fail("bench", rc);
        return cli_setup_exit(rc); /* an unknown preset, a bad model directory: a bad invocation */
    }
    if (*model) *cfg = *dsacp_model_config(*model);
    return 0;
}

/* The flags of a plain (not cp) run into rp->opt; false (printed) when one is wrong. */
static bool plain_flags(const cli_opt *opts, report *rp)
{
    const char *s;
    dsacp_bench_options *o = &rp->opt;
    if (!rp->preset == !rp->model_dir) {
        fprintf(stderr, "dsacp bench: give exactly one of '--preset NAME' and '--model DIR'\n");
        return false;
    }
    if ((s = cli_get(opts, "context")) && !cli_int("bench", "context", s, 1, 1 << 24, &o->context)) return false;
    if ((s = cli_get(opts, "batch")) && !cli_int("bench", "batch", s, 1, 1024, &o->batch)) return false;
    if ((s = cli_get(opts, "reps")) && !cli_int("bench", "reps", s, 1, 1000, &o->reps)) return false;
    if ((s = cli_get(opts, "numerics"))) {
        if (!strcmp(s, "exact")) o->deployed = false;
        else if (strcmp(s, "deployed")) {
            fprintf(stderr, "dsacp bench: option '--numerics' must be exact or deployed, got '%s'\n", s);
            return false;
        }
    }
    return true;
}

/* Checks of the flags against the dimensions; false (printed) when they do not fit. */
static bool dims_fit(const report *rp, const dsacp_config *cfg, unsigned options)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.block_size = rp->opt.block_size;
    if (!cli_block_size_fits("bench", &eo, cfg, rp->preset ? rp->preset : rp->model_dir)) return false;
    const int64_t di = cfg->index_head_dim;
    if (rp->opt.deployed && (options >> DSACP_BENCH_OPT_NUMERICS & 1) && (di & (di - 1))) {
        fprintf(stderr,
                "dsacp bench: the deployed numerics need a power-of-two index_head_dim (use '--numerics exact')\n");
        return false;
    }
    return true;
}

static int bench_plain(const cli_opt *opts, report *rp, int kernel, int isa)
{
    dsacp_bench_case_info info;
    dsacp_bench_case_get(kernel, &info);
    rp->kernel = info.name;
    rp->preset = cli_get(opts, "preset");
    rp->model_dir = cli_get(opts, "model");
    rp->json = cli_get(opts, "json") != NULL;
    rp->opt.warm = cli_get(opts, "warm") != NULL;
    if (!plain_flags(opts, rp)) return 2;
    int rc = dsacp_bench_setup(isa, rp->opt.threads);
    if (rc) return cli_fail("bench", rc);
    dsacp_config cfg;
    dsacp_model *model = NULL;
    int ret = load_dims(rp, &cfg, &model);
    if (!ret && !dims_fit(rp, &cfg, info.options)) ret = 2;
    if (ret) {
        dsacp_model_free(model);
        return ret;
    }
    rp->opt.config = &cfg, rp->opt.model = model;
    rp->opt.reference_gemm = openblas_gemm, rp->opt.on_result = print_row, rp->opt.user = rp;
    dsacp_bench_machine_describe(&rp->machine);
    openblas_set_num_threads((int)rp->opt.threads);
    if (!rp->json) print_header(rp);
    rc = dsacp_bench_run(rp->kernel, &rp->opt, &rp->res);
    ret = rc ? cli_fail("bench", rc) : rp->json ? print_json(rp) : 0;
    dsacp_model_free(model);
    return ret;
}

int cli_bench(int argc, char **argv)
{
    cli_opt opts[] = {{"preset", true, NULL},  {"model", true, NULL},    {"context", true, NULL},
                      {"batch", true, NULL},   {"threads", true, NULL},  {"kernel", true, NULL},
                      {"reps", true, NULL},    {"json", false, NULL},    {"numerics", true, NULL},
                      {"isa", true, NULL},     {"block-size", true, NULL}, {"warm", false, NULL},
                      {"chunk", true, NULL},   CLI_CP_OPTS,
                      {NULL, false, NULL}};
    int parsed = cli_parse(argc, argv, opts);
    if (parsed != CLI_RUN) return parsed;
    const int kernel = parse_case(cli_get(opts, "kernel"));
    if (kernel < 0) return 2;
    dsacp_bench_case_info info;
    dsacp_bench_case_get(kernel, &info);
    if (info.engine && !cli_get(opts, "model")) {
        fprintf(stderr, "dsacp bench: '--kernel cp' needs '--model DIR' (the engine runs the model's layers)\n");
        return 2;
    }
    if (!flags_fit_case(opts, kernel)) return 2;
    /* The context-parallel flags (--comm-report included) belong to --kernel cp: elsewhere they
     * would be silently ignored. */
    static const cli_opt cp_flags[] = {CLI_CP_OPTS, {NULL, false, NULL}};
    for (const cli_opt *f = cp_flags; f->name && !info.engine; f++)
        if (cli_get(opts, f->name)) {
            fprintf(stderr, "dsacp bench: option '--%s' applies to '--kernel cp' only\n", f->name);
            return 2;
        }
    report *rp = dsacp_calloc(1, sizeof *rp);
    if (!rp) {
        fprintf(stderr, "dsacp bench: out of memory\n");
        return 1;
    }
    dsacp_bench_options_default(&rp->opt); /* threads: OMP_NUM_THREADS, else every core */
    int isa, ret;
    if (!common_flags(opts, &rp->opt.threads, &rp->opt.block_size, &isa)) ret = 2;
    else if (info.engine) {
        /* the same machine and flags on every rank: the same answer everywhere */
        int rc = dsacp_bench_setup(isa, rp->opt.threads);
        openblas_set_num_threads((int)rp->opt.threads);
        ret = rc ? cli_fail("bench", rc) : cli_bench_cp(opts);
    } else
        ret = bench_plain(opts, rp, kernel, isa);
    dsacp_free(rp);
    return ret;
}

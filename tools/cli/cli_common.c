/* cli_common.c -- the option parser and error printing shared by the subcommands. */
#include "cli.h"
#include "dsacp_util.h"
#include "dsacp_plan.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

/* The inputs of this command (cli_check_not_input): flag name and value, filled by cli_parse. */
static const char *const input_flags[] = {"model", "input", "prompts", "hardware", "context-hardware"};
#define N_INPUT_FLAGS (sizeof input_flags / sizeof input_flags[0])
static const char *inputs[N_INPUT_FLAGS];

static void record_inputs(const cli_opt *opts)
{
    for (size_t i = 0; i < N_INPUT_FLAGS; i++) inputs[i] = NULL;
    for (const cli_opt *p = opts; p->name; p++)
        for (size_t i = 0; i < N_INPUT_FLAGS; i++)
            if (p->has_value && p->value && strcmp(p->name, input_flags[i]) == 0) inputs[i] = p->value;
}

/* Whether the file (dev, ino) is `in` or, when `in` is a directory, a file directly inside it;
 * *hit gets the matching path (in `buf` for a directory entry). */
static bool names_input(const struct stat *o, const char *in, char *buf, size_t cap, const char **hit)
{
    struct stat s;
    if (stat(in, &s) != 0) return false;
    if (!S_ISDIR(s.st_mode)) {
        *hit = in;
        return s.st_dev == o->st_dev && s.st_ino == o->st_ino;
    }
    DIR *d = opendir(in);
    if (!d) return false;
    bool found = false;
    for (struct dirent *e; !found && (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat f;
        if (fstatat(dirfd(d), e->d_name, &f, 0) == 0 && S_ISREG(f.st_mode) && f.st_dev == o->st_dev &&
            f.st_ino == o->st_ino) {
            snprintf(buf, cap, "%s/%s", in, e->d_name);
            *hit = buf;
            found = true;
        }
    }
    closedir(d);
    return found;
}

int cli_check_not_input(const char *flag, const char *path)
{
    (void)flag; /* named by the caller's context (cli_output_open adds "--flag: ") */
    struct stat o;
    if (!path || stat(path, &o) != 0) return DSACP_OK; /* a new file replaces nothing */
    for (size_t i = 0; i < N_INPUT_FLAGS; i++) {
        char buf[4352];
        const char *hit = NULL;
        if (inputs[i] && names_input(&o, inputs[i], buf, sizeof buf, &hit))
            return dsacp_error(DSACP_EINVAL, "%s: is the input %s (--%s); refusing to replace an input", path, hit,
                               input_flags[i]);
    }
    return DSACP_OK;
}

int cli_output_exit(int status)
{
    return status == DSACP_EINVAL ? 2 : 1;
}

int cli_parse(int argc, char **argv, cli_opt *opts)
{
    const char *cmd = argv[0];
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cli_usage(cmd, stdout);
            return 0;
        }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "dsacp %s: unexpected argument '%s'\n", cmd, a);
            return 2;
        }
        cli_opt *o = NULL;
        for (cli_opt *p = opts; p->name; p++)
            if (strcmp(p->name, a + 2) == 0) o = p;
        if (!o) {
            fprintf(stderr, "dsacp %s: unknown option '%s'\n", cmd, a);
            return 2;
        }
        if (o->value) {
            fprintf(stderr, "dsacp %s: option '%s' given twice\n", cmd, a);
            return 2;
        }
        if (o->has_value) {
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
                fprintf(stderr, "dsacp %s: option '%s' needs a value\n", cmd, a);
                return 2;
            }
            o->value = argv[++i];
        } else {
            o->value = "1";
        }
    }
    record_inputs(opts);
    return CLI_RUN;
}

const char *cli_get(const cli_opt *opts, const char *name)
{
    for (const cli_opt *p = opts; p->name; p++)
        if (strcmp(p->name, name) == 0) return p->value;
    return NULL;
}

const char *cli_require(const cli_opt *opts, const char *cmd, const char *name)
{
    const char *v = cli_get(opts, name);
    if (!v) fprintf(stderr, "dsacp %s: missing required option '--%s'\n", cmd, name);
    return v;
}

/* The one number grammar of flags and fields: an optional '-', decimal digits, and (for reals)
 * an optional fraction and exponent. Rejected: whitespace, '+', hex ("0x10"), "nan", "inf",
 * trailing text ("4abc", "0.5x"), an empty string. */
static bool number_text_ok(const char *t, bool real)
{
    const char *p = t;
    if (*p == '-') p++;
    const char *d = p;
    while (*p >= '0' && *p <= '9') p++;
    bool digits = p > d;
    if (real && *p == '.') {
        const char *f = ++p;
        while (*p >= '0' && *p <= '9') p++;
        digits = digits || p > f;
    }
    if (!digits) return false;
    if (real && (*p == 'e' || *p == 'E')) {
        p++;
        if (*p == '-' || *p == '+') p++;
        const char *x = p;
        while (*p >= '0' && *p <= '9') p++;
        if (p == x) return false;
    }
    return *p == '\0';
}

bool cli_parse_i64(const char *text, int64_t *out)
{
    if (!text || !number_text_ok(text, false)) return false;
    char *end;
    errno = 0;
    const long long v = strtoll(text, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

bool cli_parse_f64(const char *text, double *out)
{
    if (!text || !number_text_ok(text, true)) return false;
    char *end;
    errno = 0;
    const double v = strtod(text, &end);
    /* ERANGE on underflow still gives a usable (tiny or zero) value; overflow is refused. */
    if (*end || !isfinite(v)) return false;
    *out = v;
    return true;
}

bool cli_double(const char *cmd, const char *flag, const char *text, double min, double max, double *out)
{
    double v;
    if (!cli_parse_f64(text, &v)) {
        fprintf(stderr, "dsacp %s: option '--%s' must be a finite decimal number, got '%s'\n", cmd, flag, text);
        return false;
    }
    if (!(v >= min && v <= max)) {
        fprintf(stderr, "dsacp %s: option '--%s' = %s is out of range [%g, %g]\n", cmd, flag, text, min, max);
        return false;
    }
    *out = v;
    return true;
}

bool cli_int(const char *cmd, const char *flag, const char *text, int64_t min, int64_t max,
             int64_t *out)
{
    int64_t v;
    if (!cli_parse_i64(text, &v)) {
        fprintf(stderr, "dsacp %s: option '--%s' must be an integer, got '%s'\n", cmd, flag, text);
        return false;
    }
    if (v < min || v > max) {
        fprintf(stderr, "dsacp %s: option '--%s' = %lld is out of range [%lld, %lld]\n", cmd, flag,
                (long long)v, (long long)min, (long long)max);
        return false;
    }
    *out = v;
    return true;
}

int cli_fail(const char *cmd, int status)
{
    const char *msg = dsacp_last_error();
    fprintf(stderr, "dsacp %s: %s\n", cmd, msg && *msg ? msg : dsacp_strerror(status));
    return 1;
}

int cli_setup_exit(int status)
{
    return status == DSACP_ENOMEM || status == DSACP_ECOMM ? 1 : 2;
}

int cli_load_model(const char *cmd, const char *dir, const dsacp_engine_options *eo, dsacp_model **out)
{
    *out = NULL;
    dsacp_model *m = NULL;
    int rc = dsacp_model_load(dir, &m);
    if (cli_world) rc = dsacp_comm_agree(cli_world, rc);
    if (rc) {
        dsacp_model_free(m);
        cli_fail(cmd, rc);
        return cli_setup_exit(rc);
    }
    if (!cli_block_size_fits(cmd, eo, dsacp_model_config(m), dir)) {
        dsacp_model_free(m);
        return 2;
    }
    *out = m;
    return CLI_RUN;
}

int cli_fail_invocation(const char *cmd, int status)
{
    cli_fail(cmd, status);
    return 2;
}

/* ---- files removed when a signal ends the process ---- */

#define CLI_CLEANUP_SLOTS 16
#define CLI_CLEANUP_PATH 4096
static char cleanup_path[CLI_CLEANUP_SLOTS][CLI_CLEANUP_PATH];
static volatile sig_atomic_t cleanup_used[CLI_CLEANUP_SLOTS]; /* 1: unlink, 2: the directory and its files */
static bool cleanup_installed;

/* Removes the files directly inside dir with async-signal-safe calls only (open, getdents64,
 * unlinkat, close): the directory's own temporaries (a model being written) included. */
static void remove_entries_on_signal(const char *dir)
{
#if defined(__linux__) && defined(SYS_getdents64)
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    for (int round = 0; round < 2; round++) { /* again from the start: removal may skip entries */
        lseek(fd, 0, SEEK_SET);
        union {
            char bytes[4096];
            uint64_t align;
        } buf;
        for (;;) {
            const long n = syscall(SYS_getdents64, fd, buf.bytes, sizeof buf.bytes);
            if (n <= 0) break;
            for (long off = 0; off < n;) {
                /* struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name */
                unsigned short reclen;
                memcpy(&reclen, buf.bytes + off + 16, sizeof reclen);
                const char *name = buf.bytes + off + 19;
                if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))) unlinkat(fd, name, 0);
                if (reclen == 0) break;
                off += reclen;
            }
        }
    }
    close(fd);
#else
    (void)dir;
#endif
}

/* Removes every registered path (files, then the directories with their files), then ends the
 * process by the signal's default action. */
static void cleanup_on_signal(int sig)
{
    for (int pass = 1; pass <= 2; pass++)
        for (int i = CLI_CLEANUP_SLOTS - 1; i >= 0; i--)
            if (cleanup_used[i] == pass) {
                if (pass == 1) {
                    unlink(cleanup_path[i]);
                } else {
                    remove_entries_on_signal(cleanup_path[i]);
                    rmdir(cleanup_path[i]);
                }
            }
    signal(sig, SIG_DFL);
    raise(sig);
}

int cli_remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return dsacp_error(DSACP_EIO, "%s: cannot open to remove: %s", dir, strerror(errno));
    int rc = DSACP_OK;
    const struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 && unlinkat(dirfd(d), e->d_name, 0) != 0 && !rc)
            rc = dsacp_error(DSACP_EIO, "%s/%s: cannot remove: %s", dir, e->d_name, strerror(errno));
    closedir(d);
    if (!rc && rmdir(dir) != 0) rc = dsacp_error(DSACP_EIO, "%s: cannot remove: %s", dir, strerror(errno));
    return rc;
}

int cli_cleanup_add(const char *path, bool is_dir)
{
    if (!path || strlen(path) >= CLI_CLEANUP_PATH) return -1;
    if (!cleanup_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = cleanup_on_signal;
        sigemptyset(&sa.sa_mask);
        const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
        for (size_t k = 0; k < sizeof sigs / sizeof sigs[0]; k++) {
            struct sigaction old;
            /* A signal the caller ignores (nohup) stays ignored. */
            if (sigaction(sigs[k], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
            sigaction(sigs[k], &sa, NULL);
        }
        cleanup_installed = true;
    }
    for (int i = 0; i < CLI_CLEANUP_SLOTS; i++)
        if (!cleanup_used[i]) {
            memcpy(cleanup_path[i], path, strlen(path) + 1);
            cleanup_used[i] = is_dir ? 2 : 1;
            return i;
        }
    return -1;
}

void cli_signals_hold(bool hold, sigset_t *saved)
{
    if (hold) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGHUP);
        sigprocmask(SIG_BLOCK, &set, saved);
    } else {
        sigprocmask(SIG_SETMASK, saved, NULL);
    }
}

void cli_cleanup_remove(int slot)
{
    if (slot >= 0 && slot < CLI_CLEANUP_SLOTS) cleanup_used[slot] = 0;
}

/* ---- outputs opened before any work ---- */

void cli_output_init(cli_output *o)
{
    o->out = NULL;
    o->cleanup = -1;
    o->open = false;
}

/* Releases the output's struct (its temporary already committed or removed). */
static void output_release(cli_output *o)
{
    dsacp_free(o->out);
    o->out = NULL;
}

int cli_output_open(const char *cmd, const char *flag, const char *path, cli_output *o)
{
    cli_output_init(o);
    int rc = DSACP_OK;
    const bool root = !cli_world || dsacp_comm_rank(cli_world) == 0;
    if (path && root) {
        sigset_t saved; /* the temporary exists only once a signal would remove it */
        cli_signals_hold(true, &saved);
        rc = cli_check_not_input(flag, path);
        if (!rc) {
            o->out = dsacp_calloc(1, sizeof *o->out);
            rc = o->out ? dsacp_out_open(o->out, path) : DSACP_ENOMEM;
        }
        if (rc) {
            dsacp_error_context(rc, "--%s", flag);
        } else {
            o->open = true;
            o->cleanup = cli_cleanup_add(o->out->tmp, false);
        }
        cli_signals_hold(false, &saved);
    }
    if (path && cli_world) rc = dsacp_comm_agree(cli_world, rc);
    if (rc) {
        cli_output_abort(o);
        cli_fail(cmd, rc);
    }
    return rc;
}

int cli_output_commit_bytes(cli_output *o, const void *data, size_t len)
{
    if (!o->open) return DSACP_OK;
    int rc = dsacp_out_write(o->out, data, len);
    cli_cleanup_remove(o->cleanup);
    o->cleanup = -1;
    o->open = false;
    if (rc) dsacp_out_abort(o->out);
    else rc = dsacp_out_commit(o->out);
    output_release(o);
    return rc;
}

void cli_output_abort(cli_output *o)
{
    cli_cleanup_remove(o->cleanup);
    o->cleanup = -1;
    if (o->out) dsacp_out_abort(o->out); /* a no-op when never opened (fd -1, no temporary) */
    output_release(o);
    o->open = false;
}

/* The directory part of `path` ("." when it has none) and its last component. */
static bool split_path(const char *path, char *dir, size_t cap, const char **base)
{
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    if (!slash) return snprintf(dir, cap, ".") < (int)cap;
    const size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= cap) return false;
    memcpy(dir, path, n);
    dir[n] = 0;
    return true;
}

bool cli_same_file(const char *a, const char *b)
{
    if (!a || !b) return false;
    if (strcmp(a, b) == 0) return true;
    struct stat sa, sb;
    const bool ea = stat(a, &sa) == 0, eb = stat(b, &sb) == 0;
    if (ea && eb) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    if (ea != eb) return false; /* one exists, the other does not: different files */
    /* Neither exists yet (two outputs): the same name in the same directory, however spelled
     * ("./x" and "x", "d/../x"): compare the directories by device and inode. */
    char da[4096], db[4096];
    const char *ba, *bb;
    if (!split_path(a, da, sizeof da, &ba) || !split_path(b, db, sizeof db, &bb)) return false;
    if (strcmp(ba, bb) != 0) return false;
    return stat(da, &sa) == 0 && stat(db, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int cli_print_buffer(const char *text, size_t len)
{
    if (len && fwrite(text, 1, len, stdout) != len) return dsacp_error(DSACP_EIO, "stdout: write failed");
    if (fflush(stdout) != 0) return dsacp_error(DSACP_EIO, "stdout: write failed");
    return DSACP_OK;
}

bool cli_engine_options(const char *cmd, const cli_opt *opts, dsacp_engine_options *eo)
{
    dsacp_engine_options_default(eo);
    const char *s;
    if ((s = cli_get(opts, "numerics"))) {
        if (strcmp(s, "exact") == 0) eo->numerics = DSACP_NUMERICS_EXACT;
        else if (strcmp(s, "deployed") == 0) eo->numerics = DSACP_NUMERICS_DEPLOYED;
        else {
            fprintf(stderr, "dsacp %s: option '--numerics' must be exact or deployed, got '%s'\n", cmd, s);
            return false;
        }
    }
    if ((s = cli_get(opts, "kv-dtype"))) {
        if (strcmp(s, "f32") == 0) eo->kv_dtype = DSACP_KV_F32;
        else if (strcmp(s, "bf16") == 0) eo->kv_dtype = DSACP_KV_BF16;
        else if (strcmp(s, "fp8") == 0) eo->kv_dtype = DSACP_KV_FP8;
        else {
            fprintf(stderr, "dsacp %s: option '--kv-dtype' must be f32, bf16 or fp8, got '%s'\n", cmd, s);
            return false;
        }
    }
    if (eo->kv_dtype == DSACP_KV_FP8 && eo->numerics != DSACP_NUMERICS_DEPLOYED) {
        fprintf(stderr, "dsacp %s: option '--kv-dtype fp8' needs '--numerics deployed'\n", cmd);
        return false;
    }
    if ((s = cli_get(opts, "block-size"))) {
        int64_t b;
        if (!cli_int(cmd, "block-size", s, 1, 1 << 20, &b)) return false;
        if (b & (b - 1)) {
            fprintf(stderr, "dsacp %s: option '--block-size' = %lld must be a power of two\n", cmd, (long long)b);
            return false;
        }
        eo->block_size = b;
    }
    return true;
}

bool cli_block_size_fits(const char *cmd, const dsacp_engine_options *eo, const dsacp_config *cfg, const char *model)
{
    /* The smallest power of two holding a whole request, and never below the default. */
    int64_t limit = 1;
    while (limit < cfg->max_position_embeddings) limit *= 2;
    dsacp_engine_options def;
    dsacp_engine_options_default(&def);
    if (limit < def.block_size) limit = def.block_size;
    if (eo->block_size <= limit) return true;
    fprintf(stderr, "dsacp %s: option '--block-size' = %lld is more than %lld, the smallest power of two holding the "
            "model's max_position_embeddings = %lld (%s): a block holds positions of one request\n", cmd,
            (long long)eo->block_size, (long long)limit, (long long)cfg->max_position_embeddings, model);
    return false;
}

dsacp_comm *cli_world = NULL;

/* The combinations dsacp_cp_options_check refuses that a flag alone does not show, checked here
 * in its order so the message names the flags (the library's names the option fields). */
static bool cp_conflicts(const char *cmd, const dsacp_cp_options *cp)
{
    const char *msg = NULL;
    char buf[512];
    if (cp->context_hardware && cp->context_path != DSACP_CONTEXT_AUTO) {
        snprintf(buf, sizeof buf, "--context-hardware %s: belongs to '--context-path auto' (the path is %s)",
                 cp->context_hardware, dsacp_context_path_name(cp->context_path));
        msg = buf;
    } else if (cp->index_layout == DSACP_LAYOUT_PARTIAL && cp->mode == DSACP_CP_DSA_CP) {
        msg = "--index-layout partial:G belongs to --cp-mode dcp";
    } else if (cp->mode == DSACP_CP_DCP && (cp->q_proj != DSACP_WEIGHTS_REPLICATED || cp->o_proj != DSACP_WEIGHTS_REPLICATED)) {
        msg = "--q-proj/--o-proj plans belong to --cp-mode dsa-cp (DCP splits the heads of q_b_proj and o_proj already)";
    } else if (cp->q_proj >= DSACP_WEIGHTS_TP) {
        snprintf(buf, sizeof buf, "--q-proj %s: q_b_proj is replicated or layer-shard (tp and auto are o_proj plans)",
                 dsacp_weight_plan_name(cp->q_proj));
        msg = buf;
    }
    if (!msg) return true;
    fprintf(stderr, "dsacp %s: %s\n", cmd, msg);
    return false;
}

/* A library parser's verdict on --flag's value: prints its message naming the flag. */
static bool parsed(const char *cmd, const char *flag, int status)
{
    if (!status) return true;
    fprintf(stderr, "dsacp %s: option '--%s': %s\n", cmd, flag, dsacp_last_error());
    return false;
}

bool cli_cp_options(const char *cmd, const cli_opt *opts, dsacp_cp_options *cp)
{
    return cli_cp_options_group(cmd, opts, cli_world ? dsacp_comm_size(cli_world) : 1, cp);
}

bool cli_cp_options_group(const char *cmd, const cli_opt *opts, int W, dsacp_cp_options *cp)
{
    dsacp_cp_options_default(cp);
    const char *s, *s2;
    if ((s = cli_get(opts, "decode-strategy")) &&
        !parsed(cmd, "decode-strategy", dsacp_decode_strategy_parse(s, &cp->decode))) return false;
    if ((s = cli_get(opts, "kv-layout")) &&
        !parsed(cmd, "kv-layout", dsacp_cp_layout_parse(s, &cp->kv_layout))) return false;
    /* replicated-index needs a replicated index cache: that is its default. */
    if (dsacp_decode_strategy_replicated_index(cp->decode)) cp->index_layout = DSACP_LAYOUT_REPLICATED;
    if ((s = cli_get(opts, "index-layout")) &&
        !parsed(cmd, "index-layout", dsacp_index_layout_parse(s, &cp->index_layout, &cp->index_group))) return false;
    s = cli_get(opts, "cp-interleave");
    s2 = cli_get(opts, "cp-kv-cache-interleave-size");
    if (s && s2 && strcmp(s, s2) != 0) {
        fprintf(stderr, "dsacp %s: options '--cp-interleave' and '--cp-kv-cache-interleave-size' disagree\n", cmd);
        return false;
    }
    if (!s) s = s2;
    if (s && !cli_int(cmd, s2 && !cli_get(opts, "cp-interleave") ? "cp-kv-cache-interleave-size" : "cp-interleave", s,
                      1, (int64_t)1 << 30, &cp->interleave))
        return false;
    if ((s = cli_get(opts, "cp-mode")) && !parsed(cmd, "cp-mode", dsacp_cp_mode_parse(s, &cp->mode))) return false;
    if (cp->mode == DSACP_CP_DSA_CP) cp->prefill_split = DSACP_PREFILL_CONTIGUOUS; /* the seed's flat split */
    if ((s = cli_get(opts, "prefill-split")) &&
        !parsed(cmd, "prefill-split", dsacp_prefill_split_parse(s, &cp->prefill_split))) return false;
    if ((s = cli_get(opts, "q-proj")) && !parsed(cmd, "q-proj", dsacp_weight_plan_parse(s, &cp->q_proj))) return false;
    if ((s = cli_get(opts, "o-proj")) && !parsed(cmd, "o-proj", dsacp_weight_plan_parse(s, &cp->o_proj))) return false;
    if ((s = cli_get(opts, "prefetch")) && !cli_int(cmd, "prefetch", s, 1, 64, &cp->prefetch)) return false;
    if ((s = cli_get(opts, "lean-candidates"))) {
        double v;
        if (!cli_parse_f64(s, &v) || !(v >= 1.0 && v <= 1024.0)) {
            fprintf(stderr, "dsacp %s: option '--lean-candidates' = '%s': a number in [1, 1024] (scores per rank "
                    "= ceil(F x index_topk / W))\n", cmd, s);
            return false;
        }
        cp->lean_factor = v;
    }
    if ((s = cli_get(opts, "lean-merge")) &&
        !parsed(cmd, "lean-merge", dsacp_lean_merge_parse(s, &cp->lean_merge))) return false;
    if ((s = cli_get(opts, "context-path")) &&
        !parsed(cmd, "context-path", dsacp_context_path_parse(s, &cp->context_path))) return false;
    cp->context_hardware = cli_get(opts, "context-hardware");
    if (cp->context_hardware) { /* a bad profile is the invocation's fault: found here, exit 2 */
        dsacp_hw hw;
        if (dsacp_hw_load(cp->context_hardware, &hw)) {
            fprintf(stderr, "dsacp %s: option '--context-hardware': %s\n", cmd, dsacp_last_error());
            return false;
        }
    }
    if ((s = cli_get(opts, "partials")) &&
        !parsed(cmd, "partials", dsacp_partials_dtype_parse(s, &cp->partials))) return false;
    if ((s = cli_get(opts, "dcp-comm-backend")) &&
        !parsed(cmd, "dcp-comm-backend", dsacp_merge_backend_parse(s, &cp->merge_backend))) return false;
    /* Flags that no part of the chosen configuration reads are refused, never silently ignored. */
    static const char *const lean_only[] = {"lean-candidates", "lean-merge", "partials"};
    dsacp_decode_strategy lean;
    const bool is_lean = dsacp_decode_strategy_parse("lean", &lean) == DSACP_OK && cp->decode == lean;
    for (size_t i = 0; i < sizeof lean_only / sizeof lean_only[0]; i++)
        if (cli_get(opts, lean_only[i]) && !is_lean) {
            fprintf(stderr, "dsacp %s: option '--%s' applies to '--decode-strategy lean' only (the strategy is %s)\n", cmd,
                    lean_only[i], dsacp_decode_strategy_name(cp->decode));
            return false;
        }
    if (cli_get(opts, "prefetch") && cp->q_proj != DSACP_WEIGHTS_LAYER_SHARD && cp->o_proj != DSACP_WEIGHTS_LAYER_SHARD) {
        fprintf(stderr, "dsacp %s: option '--prefetch' applies to a layer-shard weight plan only ('--q-proj layer-shard' "
                "or '--o-proj layer-shard' with '--cp-mode dsa-cp')\n", cmd);
        return false;
    }
    int64_t w;
    if ((s = cli_get(opts, "decode-context-parallel-size"))) {
        if (!cli_int(cmd, "decode-context-parallel-size", s, 1, 1 << 20, &w)) return false;
        if (w != W) {
            fprintf(stderr, "dsacp %s: option '--decode-context-parallel-size' = %lld but the run has %d rank%s "
                    "(start it with mpirun -np %lld)\n", cmd, (long long)w, W, W == 1 ? "" : "s", (long long)w);
            return false;
        }
    }
    /* The engine refuses the other conflicts (dsacp_engine_create_cp) with the same words. */
    const bool dcp_decode = cp->mode == DSACP_CP_DCP || cp->kv_layout == DSACP_LAYOUT_SHARDED ||
                            cp->index_layout == DSACP_LAYOUT_SHARDED;
    /* The strategy's own rule on the index layout (the table's check; the block size is the
     * engine's, checked when it is created): said here with the flags' names. */
    const char *name = dsacp_decode_strategy_name(cp->decode);
    if (W > 1 && dcp_decode && dsacp_decode_strategy_replicated_index(cp->decode) &&
        cp->index_layout != DSACP_LAYOUT_REPLICATED) {
        fprintf(stderr, "dsacp %s: '--decode-strategy %s' needs '--index-layout replicated'\n", cmd, name);
        return false;
    }
    if (cp->index_layout == DSACP_LAYOUT_REPLICATED && dsacp_decode_strategy_check(cp, W, cp->interleave)) {
        fprintf(stderr, "dsacp %s: '--decode-strategy %s' needs '--index-layout sharded' (or partial:G)\n", cmd, name);
        return false;
    }
    /* DSA-CP with both caches replicated computes every token on one rank with all heads: no
     * decode strategy, merge backend or context path takes part. Both caches replicated: no
     * sharded context for a chunk to reach. */
    static const char *const dcp_only[] = {"decode-strategy", "dcp-comm-backend", "context-path"};
    for (size_t i = 0; i < sizeof dcp_only / sizeof dcp_only[0]; i++) {
        const bool replicated = cp->kv_layout == DSACP_LAYOUT_REPLICATED && cp->index_layout == DSACP_LAYOUT_REPLICATED;
        if (cli_get(opts, dcp_only[i]) && replicated && (!dcp_decode || i == 2)) {
            fprintf(stderr, "dsacp %s: option '--%s' has no effect with %s (%s)\n", cmd, dcp_only[i],
                    !dcp_decode ? "'--cp-mode dsa-cp' and both caches replicated" : "both caches replicated",
                    !dcp_decode ? "every token runs on one rank with all heads" : "no context is sharded");
            return false;
        }
    }
    if (cp->index_layout == DSACP_LAYOUT_PARTIAL && W % cp->index_group) {
        fprintf(stderr, "dsacp %s: option '--index-layout' = 'partial:%lld': the group size must divide the %d ranks\n",
                cmd, (long long)cp->index_group, W);
        return false;
    }
    return cp_conflicts(cmd, cp);
}

int cli_cp_begin(const char *cmd, const cli_opt *opts, cli_output *report)
{
    return cli_output_open(cmd, "comm-report", cli_get(opts, "comm-report"), report);
}

int cli_cp_finish(const char *cmd, const cli_opt *opts, int status, const dsacp_engine *engine, cli_output *report)
{
    if (!cli_world) {
        if (status) cli_output_abort(report);
        return status;
    }
    int rc = dsacp_comm_agree(cli_world, status);
    if (rc) {
        if (!status) cli_fail(cmd, rc);
        cli_output_abort(report);
        return rc;
    }
    /* Every rank takes part in the gathering (each knows the flag); rank 0 writes. */
    if (cli_get(opts, "comm-report")) {
        if (engine) dsacp_engine_report_notes(engine);
        char *json = NULL;
        rc = dsacp_comm_report_json(cli_world, &json);
        if (!rc && report->open) {
            size_t n = strlen(json);
            json[n] = '\n'; /* the text's NUL becomes its final newline */
            rc = cli_output_commit_bytes(report, json, n + 1);
        }
        free(json);
        rc = dsacp_comm_agree(cli_world, rc);
    }
    if (rc) {
        cli_fail(cmd, rc);
        cli_output_abort(report);
    }
    return rc;
}

int64_t cli_parse_size(const char *s)
{
    char num[64];
    size_t n = strlen(s);
    double mult = 1;
    if (n && (s[n - 1] == 'B' || s[n - 1] == 'b')) n--;
    if (n) switch (s[n - 1]) {
        case 'k': case 'K': mult = 1024.0, n--; break;
        case 'm': case 'M': mult = 1048576.0, n--; break;
        case 'g': case 'G': mult = 1073741824.0, n--; break;
        default: break;
        }
    if (n == 0 || n >= sizeof num) return -1;
    memcpy(num, s, n);
    num[n] = 0;
    double v;
    if (!cli_parse_f64(num, &v)) return -1;
    v *= mult;
    return v >= 1 && v <= 1e15 ? (int64_t)v : -1;
}

int cli_tmp_model_create(cli_tmp_model *t, const char *cmd, const dsacp_config *pc, uint64_t seed)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    t->cleanup = -1;
    const int n = snprintf(t->dir, sizeof t->dir, "%s/dsacp-%s-XXXXXX", base, cmd);
    if (n < 0 || (size_t)n >= sizeof t->dir) {
        t->dir[0] = 0;
        return dsacp_error(DSACP_EINVAL, "TMPDIR = '%s': the path is too long", base);
    }
    sigset_t saved; /* the directory exists only once a signal would remove it */
    cli_signals_hold(true, &saved);
    if (!mkdtemp(t->dir)) {
        const int err = errno;
        cli_signals_hold(false, &saved);
        t->dir[0] = 0;
        return dsacp_error(DSACP_EIO, "cannot create a temporary model directory in %s (TMPDIR): %s", base, strerror(err));
    }
    t->cleanup = cli_cleanup_add(t->dir, true);
    cli_signals_hold(false, &saved);
    return dsacp_model_init(pc, t->dir, seed, DSACP_WEIGHTS_BF16);
}

void cli_tmp_model_remove(cli_tmp_model *t, const char *cmd)
{
    if (!t->dir[0]) return;
    if (cli_remove_dir(t->dir)) fprintf(stderr, "dsacp %s: warning: %s\n", cmd, dsacp_last_error());
    cli_cleanup_remove(t->cleanup);
    t->cleanup = -1;
    t->dir[0] = 0;
}

/* cli_model_tokenizer.c -- a model directory's tokenizer (cli_model_tokenizer.h; docs/text.md
 * section 3). */
#include "cli_model_tokenizer.h"

#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* tokenizer_config.json is a small JSON object (DeepSeek's: about 1 KB, a vision model's 170 KB). */
#define TOKENIZER_CONFIG_MAX_BYTES ((size_t)16 << 20)
/* config.json as init-model writes it. */
#define CONFIG_MAX_BYTES ((size_t)16 << 20)

int64_t cli_tokenizer_vocab(const dsacp_tokenizer *t, const char **why)
{
    const int64_t ids = dsacp_tokenizer_vocab_size(t);
    if (ids == CLI_DEEPSEEK_TOKENIZER_IDS && dsacp_tokenizer_token_id(t, CLI_BOS_TOKEN) == 0) {
        if (why) *why = "DeepSeek's tokenizer: the vocabulary its config.json declares";
        return CLI_DEEPSEEK_VOCAB;
    }
    if (why) *why = "the tokenizer's ids rounded up to a multiple of 128";
    return (ids + CLI_VOCAB_MULTIPLE - 1) / CLI_VOCAB_MULTIPLE * CLI_VOCAB_MULTIPLE;
}

static int load_checked(const char *cmd, const char *path, const dsacp_config *cfg, dsacp_tokenizer **out)
{
    dsacp_tokenizer *t = NULL;
    int st = dsacp_tokenizer_load(path, &t);
    if (st) return st == DSACP_ENOMEM ? cli_fail(cmd, st) : cli_fail_invocation(cmd, st);
    const int64_t ids = dsacp_tokenizer_vocab_size(t);
    if (cfg && ids > cfg->vocab_size) {
        fprintf(stderr, "dsacp %s: %s: the tokenizer has %lld ids but the model's vocabulary (config.json "
                "vocab_size) is %lld\n", cmd, path, (long long)ids, (long long)cfg->vocab_size);
        dsacp_tokenizer_free(t);
        return 2;
    }
    *out = t;
    return CLI_RUN;
}

int cli_model_tokenizer(const char *cmd, const char *file, const char *model_dir, const dsacp_config *cfg,
                        dsacp_tokenizer **out)
{
    *out = NULL;
    if (file) return load_checked(cmd, file, cfg, out);
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", model_dir) >= sizeof path) {
        fprintf(stderr, "dsacp %s: %s: directory name too long\n", cmd, model_dir);
        return 2;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) {
        fprintf(stderr, "dsacp %s: no tokenizer: give --tokenizer FILE, or put one at %s (dsacp init-model "
                "--tokenizer)\n", cmd, path);
        return 2;
    }
    return load_checked(cmd, path, cfg, out);
}

/* tokenizer_config.json in the directory of `file`: read into f->config when it exists. */
static int read_config_beside(const char *cmd, const char *file, cli_tokenizer_files *f)
{
    const char *slash = strrchr(file, '/');
    char path[4096];
    int n = slash ? snprintf(path, sizeof path, "%.*s/tokenizer_config.json", (int)(slash - file), file)
                  : snprintf(path, sizeof path, "tokenizer_config.json");
    if (n < 0 || (size_t)n >= sizeof path) {
        fprintf(stderr, "dsacp %s: --tokenizer %s: file name too long\n", cmd, file);
        return 2;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) return CLI_RUN;
    int st = dsacp_read_file(path, &f->config, &f->config_len, TOKENIZER_CONFIG_MAX_BYTES);
    if (st) return st == DSACP_ENOMEM ? cli_fail(cmd, st) : cli_fail_invocation(cmd, st);
    json_error_t jerr;
    json_t *root = json_loadb(f->config, f->config_len, 0, &jerr);
    const bool object = root && json_is_object(root);
    json_decref(root);
    if (!root) fprintf(stderr, "dsacp %s: %s: invalid JSON at line %d: %s\n", cmd, path, jerr.line, jerr.text);
    else if (!object) fprintf(stderr, "dsacp %s: %s: not a JSON object\n", cmd, path);
    return object ? CLI_RUN : 2;
}

int cli_tokenizer_files_read(const char *cmd, const char *file, cli_tokenizer_files *f)
{
    memset(f, 0, sizeof *f);
    f->json_out.fd = f->config_out.fd = -1;
    f->file = file;
    int rc = load_checked(cmd, file, NULL, &f->tok);
    if (rc != CLI_RUN) return rc;
    f->ids = dsacp_tokenizer_vocab_size(f->tok);
    f->bos = dsacp_tokenizer_token_id(f->tok, CLI_BOS_TOKEN);
    f->eos = dsacp_tokenizer_token_id(f->tok, CLI_EOS_TOKEN);
    /* The bytes copied are those of the file just loaded (read again: the loader keeps none). */
    int st = dsacp_read_file(file, &f->json, &f->json_len, (size_t)1 << 30);
    if (st) return st == DSACP_ENOMEM ? cli_fail(cmd, st) : cli_fail_invocation(cmd, st);
    return read_config_beside(cmd, file, f);
}

static int stage_one(dsacp_out *o, const char *dir, const char *name, const char *data, size_t len)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
        return dsacp_error(DSACP_EINVAL, "%s: directory name too long", dir);
    int st = dsacp_out_open(o, path);
    if (!st) st = dsacp_out_write(o, data, len);
    if (st) dsacp_out_abort(o);
    return st;
}

int cli_tokenizer_files_stage(cli_tokenizer_files *f, const char *dir)
{
    int st = stage_one(&f->json_out, dir, "tokenizer.json", f->json, f->json_len);
    if (!st && f->config) st = stage_one(&f->config_out, dir, "tokenizer_config.json", f->config, f->config_len);
    return st;
}

/* config.json gets bos_token_id and eos_token_id, written as dsacp_config_save writes it. */
static int add_token_ids(const cli_tokenizer_files *f, const char *dir)
{
    if (f->bos < 0 && f->eos < 0) return DSACP_OK;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
        return dsacp_error(DSACP_EINVAL, "%s: directory name too long", dir);
    char *text;
    size_t len;
    int st = dsacp_read_file(path, &text, &len, CONFIG_MAX_BYTES);
    if (st) return st;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    dsacp_free(text);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return dsacp_error(DSACP_EFORMAT, "%s: not the JSON object just written", path);
    }
    if (f->bos >= 0) json_object_set_new(root, "bos_token_id", json_integer(f->bos));
    if (f->eos >= 0) json_object_set_new(root, "eos_token_id", json_integer(f->eos));
    char *out = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!out) return dsacp_error(DSACP_ENOMEM, "%s: cannot serialize", path);
    dsacp_out o;
    st = dsacp_out_open(&o, path);
    if (!st) st = dsacp_out_write(&o, out, strlen(out));
    if (!st) st = dsacp_out_write(&o, "\n", 1);
    if (st) dsacp_out_abort(&o); /* also after a failed open: nothing to remove */
    else st = dsacp_out_commit(&o);
    free(out);
    return st;
}

int cli_tokenizer_files_commit(cli_tokenizer_files *f, const char *dir)
{
    int st = add_token_ids(f, dir);
    if (st) return st;
    char json_path[4096];
    snprintf(json_path, sizeof json_path, "%s/tokenizer.json", dir); /* staged: the name fits */
    st = dsacp_out_commit(&f->json_out);
    if (!st && f->config) {
        st = dsacp_out_commit(&f->config_out);
        if (st) unlink(json_path); /* no tokenizer.json without the config it came with */
    }
    return st;
}

void cli_tokenizer_files_free(cli_tokenizer_files *f)
{
    /* A temporary still staged (tmp set) is removed; committed or never opened: nothing to do. */
    if (f->json_out.tmp) dsacp_out_abort(&f->json_out);
    if (f->config_out.tmp) dsacp_out_abort(&f->config_out);
    dsacp_tokenizer_free(f->tok);
    dsacp_free(f->json);
    dsacp_free(f->config);
    memset(f, 0, sizeof *f);
    f->json_out.fd = f->config_out.fd = -1;
}

/* cli_text.c -- dsacp tokenize / detokenize (docs/text.md): a tokenizer.json's ids of a text and
 * the text of ids. */
#include "cli.h"
#include "dsacp_text.h"
#include "dsacp_util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLI_TEXT_MAX_BYTES ((size_t)1 << 30)

static int print_ids(const char *cmd, const int32_t *ids, int64_t n, bool as_json)
{
    if (as_json) {
        json_t *arr = json_array(), *o = json_object();
        for (int64_t i = 0; arr && i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
        json_object_set_new(o, "ids", arr);
        json_object_set_new(o, "count", json_integer(n));
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!s) return cli_fail(cmd, dsacp_error(DSACP_ENOMEM, "the JSON output"));
        printf("%s\n", s);
        free(s);
        return 0;
    }
    for (int64_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
    printf("\n");
    return 0;
}

int cli_tokenize(int argc, char **argv)
{
    cli_opt opts[] = {{"tokenizer", true, NULL}, {"text", true, NULL}, {"file", true, NULL},
                      {"json", false, NULL}, {"add-special", false, NULL}, {NULL, false, NULL}};
    const char *cmd = "tokenize";
    int st = cli_parse(argc, argv, opts);
    if (st != CLI_RUN) return st;
    const char *path = cli_require(opts, cmd, "tokenizer"), *text = cli_get(opts, "text"), *file = cli_get(opts, "file");
    if (!path) return 2;
    if (!text == !file) {
        fprintf(stderr, "dsacp %s: give one of --text and --file\n", cmd);
        return 2;
    }
    char *buf = NULL;
    size_t len = text ? strlen(text) : 0;
    if (file && (st = dsacp_read_file(file, &buf, &len, CLI_TEXT_MAX_BYTES))) return cli_fail_invocation(cmd, st);
    dsacp_tokenizer *t = NULL;
    if ((st = dsacp_tokenizer_load(path, &t))) {
        dsacp_free(buf);
        return cli_fail_invocation(cmd, st);
    }
    int64_t n = 0, cap = (int64_t)len + 16; /* at most one id per byte, and the special ones */
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    st = ids ? dsacp_tokenizer_encode(t, buf ? buf : text, len, cli_get(opts, "add-special") != NULL, ids, cap, &n)
             : dsacp_error(DSACP_ENOMEM, "%lld ids", (long long)cap);
    int rc = st == DSACP_EINVAL ? cli_fail_invocation(cmd, st) : st ? cli_fail(cmd, st)
                                                                     : print_ids(cmd, ids, n, cli_get(opts, "json") != NULL);
    free(ids);
    dsacp_free(buf);
    dsacp_tokenizer_free(t);
    return rc;
}

/* "1,2,3" into ids [n]; false after the error naming --ids. */
static bool parse_ids(const char *cmd, const char *s, int32_t **ids, int64_t *n)
{
    size_t count = 1;
    for (const char *p = s; *p; p++) count += *p == ',';
    *ids = malloc(count * sizeof **ids);
    char *copy = strdup(s);
    bool ok = *ids && copy;
    *n = 0;
    for (char *save = NULL, *tok = ok ? strtok_r(copy, ",", &save) : NULL; ok && tok; tok = strtok_r(NULL, ",", &save)) {
        int64_t v;
        ok = cli_int(cmd, "--ids", tok, 0, INT32_MAX, &v);
        if (ok) (*ids)[(*n)++] = (int32_t)v;
    }
    free(copy);
    return ok;
}

int cli_detokenize(int argc, char **argv)
{
    cli_opt opts[] = {{"tokenizer", true, NULL}, {"ids", true, NULL}, {"skip-special", false, NULL},
                      {NULL, false, NULL}};
    const char *cmd = "detokenize";
    int st = cli_parse(argc, argv, opts);
    if (st != CLI_RUN) return st;
    const char *path = cli_require(opts, cmd, "tokenizer"), *list = path ? cli_require(opts, cmd, "ids") : NULL;
    if (!path || !list) return 2;
    int32_t *ids = NULL;
    int64_t n = 0;
    if (!parse_ids(cmd, list, &ids, &n)) {
        free(ids);
        return 2;
    }
    dsacp_tokenizer *t = NULL;
    size_t len = 0;
    char *out = NULL;
    if (!(st = dsacp_tokenizer_load(path, &t))) {
        st = dsacp_tokenizer_decode(t, ids, n, cli_get(opts, "skip-special") != NULL, NULL, 0, &len);
        out = st == DSACP_ERANGE ? malloc(len + 1) : NULL;
        st = out ? dsacp_tokenizer_decode(t, ids, n, cli_get(opts, "skip-special") != NULL, out, len + 1, &len) : st;
    }
    int rc = st ? cli_fail_invocation(cmd, st) : 0;
    if (!st) {
        fwrite(out, 1, len, stdout);
        putchar('\n');
    }
    free(out);
    free(ids);
    dsacp_tokenizer_free(t);
    return rc;
}

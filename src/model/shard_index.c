/*
 * shard_index.c -- model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor: file}}.
 * Only the distinct file names matter to the loader (it reads each shard's own header for the
 * tensors); they must name plain files inside the model directory.
 */
#include "model/shard_index.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct name_ref {
    const char *s;
    int64_t first; /* position in weight_map */
} name_ref;

static int by_name_then_pos(const void *a, const void *b)
{
    const name_ref *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    if (c) return c;
    return (x->first > y->first) - (x->first < y->first);
}

static int by_pos(const void *a, const void *b)
{
    const name_ref *x = a, *y = b;
    return (x->first > y->first) - (x->first < y->first);
}

void dsacp_shard_index_free(dsacp_shard_index *idx)
{
    if (!idx) return;
    for (int64_t i = 0; i < idx->nfiles; i++) free(idx->files[i]);
    free(idx->files);
    memset(idx, 0, sizeof *idx);
}

int dsacp_shard_index_parse(const char *text, size_t len, const char *path, dsacp_shard_index *out)
{
    if (!out) return dsacp_error(DSACP_EINVAL, "dsacp_shard_index_parse: NULL argument");
    memset(out, 0, sizeof *out);
    if (!text) return dsacp_error(DSACP_EINVAL, "dsacp_shard_index_parse: NULL argument");
    if (!path) path = "model.safetensors.index.json";
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsacp_error(DSACP_EFORMAT, "%s: invalid JSON at line %d, column %d: %s", path, jerr.line,
                           jerr.column, jerr.text);
    int rc = DSACP_OK;
    name_ref *refs = NULL;
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        rc = dsacp_error(DSACP_EFORMAT, "%s: missing required field 'weight_map' (an object)", path);
        goto done;
    }
    size_t n = json_object_size(map);
    if (n == 0) {
        rc = dsacp_error(DSACP_EFORMAT, "%s: field 'weight_map' is empty", path);
        goto done;
    }
    refs = malloc(n * sizeof *refs);
    if (!refs) {
        rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory for %zu weight_map entries", path, n);
        goto done;
    }
    const char *key;
    json_t *val;
    int64_t k = 0;
    json_object_foreach(map, key, val) {
        if (!json_is_string(val)) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: field 'weight_map.%.200s' must be a file name", path, key);
            goto done;
        }
        const char *s = json_string_value(val);
        size_t slen = json_string_length(val);
        if (slen == 0 || slen > 255 || strlen(s) != slen || strchr(s, '/') || strcmp(s, "..") == 0 ||
            strcmp(s, ".") == 0) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: field 'weight_map.%.200s' = \"%.260s\" is not a plain file "
                             "name in the model directory", path, key, s);
            goto done;
        }
        refs[k] = (name_ref){s, k};
        k++;
    }
    /* Distinct names in first-seen order: sort by (name, position), keep each name's first,
     * restore the order. O(n log n) whatever the file holds. */
    qsort(refs, (size_t)k, sizeof *refs, by_name_then_pos);
    int64_t u = 0;
    for (int64_t i = 0; i < k; i++)
        if (i == 0 || strcmp(refs[i].s, refs[u - 1].s) != 0) refs[u++] = refs[i];
    qsort(refs, (size_t)u, sizeof *refs, by_pos);
    if (u > DSACP_SHARD_INDEX_MAX_FILES) {
        rc = dsacp_error(DSACP_EFORMAT, "%s: field 'weight_map' names %lld shard files (at most %d)", path,
                         (long long)u, DSACP_SHARD_INDEX_MAX_FILES);
        goto done;
    }
    out->files = calloc((size_t)u, sizeof *out->files);
    if (!out->files) {
        rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int64_t i = 0; i < u; i++) {
        out->files[i] = strdup(refs[i].s);
        if (!out->files[i]) {
            rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        out->nfiles++;
    }
    out->ntensors = k;
done:
    if (rc) dsacp_shard_index_free(out);
    free(refs);
    json_decref(root);
    return rc;
}

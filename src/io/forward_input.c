/* forward_input.c -- parsing and validation of the `dsacp forward` input file (forward_input.h). */
#include "io/forward_input.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool dsacp_size_product(size_t elem_size, int n, const int64_t *factors, size_t limit, size_t *out)
{
    size_t p = elem_size;
    for (int i = 0; i < n; i++) {
        if (factors[i] < 0 || (uint64_t)factors[i] > SIZE_MAX) return false;
        if (!dsacp_mul_ok(p, (size_t)factors[i], &p)) return false;
    }
    if (p > limit) return false;
    *out = p;
    return true;
}

/* Finds an I32 matrix tensor; the error names the file and the tensor. */
static int get_i32_2d(const dsacp_st_file *f, const char *path, const char *name, const dsacp_st_tensor **out)
{
    const dsacp_st_tensor *t = dsacp_st_find(f, name);
    if (!t) return dsacp_error(DSACP_EFORMAT, "%s: missing tensor '%s'", path, name);
    if (t->dtype != DSACP_I32 || t->ndim != 2)
        return dsacp_error(DSACP_ESHAPE, "%s: tensor '%s' must be I32 with 2 dimensions (got %s, %d dims)", path,
                           name, dsacp_dtype_name(t->dtype), t->ndim);
    *out = t;
    return DSACP_OK;
}

/* A copy of a tensor's data (the mapping need not be aligned, nor outlive the input). */
static int32_t *copy_i32(const dsacp_st_tensor *t, const char *path)
{
    int32_t *p = malloc(t->nbytes ? t->nbytes : 1);
    if (!p) {
        dsacp_error(DSACP_ENOMEM, "%s: out of memory for a copy of tensor '%s' (%zu bytes)", path, t->name,
                    t->nbytes);
        return NULL;
    }
    if (t->nbytes) memcpy(p, t->data, t->nbytes);
    return p;
}

int dsacp_forward_input_from_file(const dsacp_st_file *f, const dsacp_config *cfg, dsacp_forward_input *out)
{
    memset(out, 0, sizeof *out);
    const char *path = dsacp_st_path(f);
    if (!path) path = "(input)";
    if (cfg->vocab_size < 1 || cfg->num_hidden_layers < 1 || cfg->index_topk < 1 ||
        cfg->max_position_embeddings < 1)
        return dsacp_error(DSACP_EINVAL, "%s: the model config needs vocab_size, num_hidden_layers, index_topk "
                           "and max_position_embeddings >= 1", path);
    const dsacp_st_tensor *ti = NULL, *ts = NULL;
    int rc = get_i32_2d(f, path, "input_ids", &ti);
    if (rc) return rc;
    const int64_t R = ti->shape[0], Lmax = ti->shape[1];
    if (R < 1 || Lmax < 1)
        return dsacp_error(DSACP_ESHAPE, "%s: tensor 'input_ids' is empty ([%lld, %lld]); it needs at least one "
                           "request and one column", path, (long long)R, (long long)Lmax);
    rc = get_i32_2d(f, path, "schedule", &ts);
    if (rc) return rc;
    const int64_t S = ts->shape[0];
    if (ts->shape[1] != R)
        return dsacp_error(DSACP_ESHAPE, "%s: tensor 'schedule' is [%lld, %lld] but tensor 'input_ids' has %lld "
                           "requests (its shape must be [steps, %lld])", path, (long long)S,
                           (long long)ts->shape[1], (long long)R, (long long)R);
    out->requests = R;
    out->max_len = Lmax;
    out->steps = S;
    /* R x Lmax and S x R elements are already inside the file, so these copies are bounded by it. */
    out->input_ids = copy_i32(ti, path);
    out->schedule = out->input_ids ? copy_i32(ts, path) : NULL;
    out->length = out->schedule ? calloc((size_t)R, sizeof *out->length) : NULL;
    int64_t *fed = out->length ? calloc((size_t)R, sizeof *fed) : NULL;
    if (!fed) { /* copy_i32 recorded its own message */
        rc = out->schedule ? dsacp_error(DSACP_ENOMEM, "%s: out of memory", path) : DSACP_ENOMEM;
        goto done;
    }
    const int32_t *ids = out->input_ids, *sched = out->schedule;
    /* Request lengths, ids in the vocabulary, nothing after a request's end, lengths in range. */
    for (int64_t r = 0; r < R; r++) {
        int64_t j = 0;
        for (; j < Lmax && ids[r * Lmax + j] != -1; j++) {
            int32_t id = ids[r * Lmax + j];
            if (id < 0 || id >= cfg->vocab_size) {
                rc = dsacp_error(DSACP_ERANGE, "%s: tensor 'input_ids'[%lld][%lld] = %d is out of the vocabulary "
                                 "[0, %lld) (vocab_size)", path, (long long)r, (long long)j, id,
                                 (long long)cfg->vocab_size);
                goto done;
            }
        }
        out->length[r] = j;
        for (; j < Lmax; j++)
            if (ids[r * Lmax + j] != -1) {
                rc = dsacp_error(DSACP_EFORMAT, "%s: tensor 'input_ids'[%lld][%lld] follows the request's end (-1) "
                                 "but is not -1", path, (long long)r, (long long)j);
                goto done;
            }
        if (out->length[r] > cfg->max_position_embeddings) {
            rc = dsacp_error(DSACP_ERANGE, "%s: tensor 'input_ids': request %lld has %lld tokens, more than the "
                             "model's max_position_embeddings = %lld", path, (long long)r,
                             (long long)out->length[r], (long long)cfg->max_position_embeddings);
            goto done;
        }
        out->total_tokens += out->length[r]; /* <= R x Lmax: no overflow */
    }
    /* Schedule counts: non-negative, never past a request's end, summing to its length. */
    for (int64_t st = 0; st < S; st++) {
        int64_t T = 0;
        for (int64_t r = 0; r < R; r++) {
            int32_t c = sched[st * R + r];
            if (c < 0) {
                rc = dsacp_error(DSACP_EFORMAT, "%s: tensor 'schedule'[%lld][%lld] = %d is negative", path,
                                 (long long)st, (long long)r, c);
                goto done;
            }
            fed[r] += c;
            if (fed[r] > out->length[r]) {
                rc = dsacp_error(DSACP_EFORMAT, "%s: tensor 'schedule' overruns request %lld at step %lld (%lld "
                                 "tokens fed, the request has %lld)", path, (long long)r, (long long)st,
                                 (long long)fed[r], (long long)out->length[r]);
                goto done;
            }
            T += c; /* <= total_tokens */
        }
        if (T > out->max_step_tokens) out->max_step_tokens = T;
    }
    for (int64_t r = 0; r < R; r++)
        if (fed[r] != out->length[r]) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: tensor 'schedule' feeds request %lld %lld tokens, but it has %lld",
                             path, (long long)r, (long long)fed[r], (long long)out->length[r]);
            goto done;
        }
done:
    free(fed);
    if (rc) dsacp_forward_input_free(out);
    return rc;
}

int dsacp_forward_input_parse(const void *data, size_t len, const char *path, const dsacp_config *cfg,
                              dsacp_forward_input *out)
{
    memset(out, 0, sizeof *out);
    dsacp_st_file *f = NULL;
    int rc = dsacp_st_open_memory(data, len, path, &f);
    if (rc) return rc;
    rc = dsacp_forward_input_from_file(f, cfg, out);
    dsacp_st_close(f);
    return rc;
}

void dsacp_forward_input_free(dsacp_forward_input *in)
{
    if (!in) return;
    free(in->input_ids);
    free(in->schedule);
    free(in->length);
    memset(in, 0, sizeof *in);
}

/* One buffer's size; the error names the buffer, its shape in config fields and the limit. */
static int size_of(const char *path, const char *what, const char *shape, size_t elem, int n, const int64_t *f,
                   size_t *out)
{
    size_t bytes;
    if (!dsacp_size_product(elem, n, f, DSACP_FORWARD_MAX_BYTES, &bytes)) {
        char dims[160] = "";
        size_t used = 0;
        for (int i = 0; i < n && used < sizeof dims; i++)
            used += (size_t)snprintf(dims + used, sizeof dims - used, "%s%lld", i ? ", " : "", (long long)f[i]);
        return dsacp_error(DSACP_ERANGE, "%s: the %s buffer %s = [%s] x %zu bytes is larger than %zu bytes", path,
                           what, shape, dims, elem, (size_t)DSACP_FORWARD_MAX_BYTES);
    }
    *out = bytes / elem;
    return DSACP_OK;
}

int dsacp_forward_input_sizes(const dsacp_forward_input *in, const dsacp_config *cfg, bool dump_topk,
                              const char *path, dsacp_forward_sizes *out)
{
    memset(out, 0, sizeof *out);
    if (!path) path = "(input)";
    const int64_t R = in->requests, L = in->max_len, T = in->max_step_tokens;
    const int64_t V = cfg->vocab_size, K = cfg->index_topk, NL = cfg->num_hidden_layers;
    int rc = size_of(path, "logits", "[requests, Lmax, vocab_size]", sizeof(float), 3, (int64_t[]){R, L, V},
                     &out->logits);
    if (!rc)
        rc = size_of(path, "step logits", "[step tokens, vocab_size]", sizeof(float), 2, (int64_t[]){T, V},
                     &out->step_logits);
    if (!rc) rc = size_of(path, "step ids", "[step tokens]", sizeof(int32_t), 1, (int64_t[]){T}, &out->step_ids);
    if (!rc && dump_topk)
        rc = size_of(path, "top-k dump", "[num_hidden_layers, requests, Lmax, index_topk]", sizeof(int32_t), 4,
                     (int64_t[]){NL, R, L, K}, &out->topk);
    if (!rc && dump_topk)
        rc = size_of(path, "step top-k", "[num_hidden_layers, step tokens, index_topk]", sizeof(int32_t), 3,
                     (int64_t[]){NL, T, K}, &out->step_topk);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

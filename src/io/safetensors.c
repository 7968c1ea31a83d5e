/* safetensors.c -- validated mmap reader and atomic streaming writer of .safetensors files. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define META_KEY "__metadata__"

struct dsacp_st_file {
    char *path;
    void *map;       /* the mapping (dsacp_st_open) or NULL (memory) */
    size_t map_len;
    dsacp_st_tensor *tensors; /* sorted by name */
    int64_t n;
    char *names;     /* arena holding every tensor name */
    char **meta_keys, **meta_vals;
    int64_t nmeta;
};

static const char *path_or_default(const char *path) { return path ? path : "<memory>"; }

static char *dup_string(const char *s)
{
    size_t n = strlen(s);
    char *d = dsacp_alloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

void dsacp_st_close(dsacp_st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    for (int64_t i = 0; i < f->nmeta; i++) {
        dsacp_free(f->meta_keys[i]);
        dsacp_free(f->meta_vals[i]);
    }
    dsacp_free(f->meta_keys);
    dsacp_free(f->meta_vals);
    dsacp_free(f->tensors);
    dsacp_free(f->names);
    dsacp_free(f->path);
    dsacp_free(f);
}

const char *dsacp_st_path(const dsacp_st_file *f) { return f->path; }
int64_t dsacp_st_count(const dsacp_st_file *f) { return f->n; }

const dsacp_st_tensor *dsacp_st_tensor_at(const dsacp_st_file *f, int64_t i)
{
    if (i < 0 || i >= f->n) return NULL;
    return &f->tensors[i];
}

static int tensor_name_cmp(const void *a, const void *b)
{
    return strcmp(((const dsacp_st_tensor *)a)->name, ((const dsacp_st_tensor *)b)->name);
}

const dsacp_st_tensor *dsacp_st_find(const dsacp_st_file *f, const char *name)
{
    if (!f || !name || f->n == 0) return NULL;
    dsacp_st_tensor key;
    memset(&key, 0, sizeof key);
    key.name = (char *)name;
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof key, tensor_name_cmp);
}

const char *dsacp_st_metadata(const dsacp_st_file *f, const char *key)
{
    if (!f || !key) return NULL;
    for (int64_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* ---- validation ---- */

/* Byte range of one tensor, kept beside it while the overlap check sorts them. */
typedef struct range {
    size_t begin, end;
    int64_t idx;
} range;

static int range_cmp(const void *a, const void *b)
{
    const range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static int parse_metadata(dsacp_st_file *f, const char *path, json_t *meta)
{
    if (!json_is_object(meta))
        return dsacp_error(DSACP_EFORMAT, "%s: \"" META_KEY "\" must be an object of strings", path);
    size_t n = json_object_size(meta);
    if (n == 0) return DSACP_OK;
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val)
    {
        if (!json_is_string(val))
            return dsacp_error(DSACP_EFORMAT, "%s: \"" META_KEY "\" field '%s': value must be a string",
                               path, key);
    }
    f->meta_keys = dsacp_calloc(n, sizeof *f->meta_keys);
    f->meta_vals = dsacp_calloc(n, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return dsacp_error(DSACP_ENOMEM, "%s: out of memory reading the metadata", path);
    json_object_foreach(meta, key, val)
    {
        char *k = dup_string(key);
        char *v = dup_string(json_string_value(val));
        if (!k || !v) {
            dsacp_free(k);
            dsacp_free(v);
            return dsacp_error(DSACP_ENOMEM, "%s: out of memory reading the metadata", path);
        }
        f->meta_keys[f->nmeta] = k;
        f->meta_vals[f->nmeta] = v;
        f->nmeta++;
    }
    return DSACP_OK;
}

/* Reads a JSON integer >= 0 into *out; false when it is not one. */
static bool nonneg_int(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v)) return false;
    json_int_t x = json_integer_value(v);
    if (x < 0 || (unsigned long long)x > (unsigned long long)INT64_MAX) return false;
    *out = (int64_t)x;
    return true;
}

static void format_shape(char *buf, size_t cap, const dsacp_st_tensor *t)
{
    size_t k = 0;
    buf[k++] = '[';
    for (int d = 0; d < t->ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (k + 2 <= cap) {
        buf[k++] = ']';
        buf[k] = '\0';
    } else {
        buf[cap - 1] = '\0';
    }
}

/* Validates one tensor entry and fills *t (name and data set by the caller) and its range. */
static int parse_entry(const char *path, const char *name, json_t *e, size_t data_len,
                       dsacp_st_tensor *t, range *r)
{
    if (!json_is_object(e))
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': entry must be an object", path, name);
    const char *key;
    json_t *val;
    json_object_foreach(e, key, val)
    {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 && strcmp(key, "data_offsets") != 0)
            return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': unknown field '%s'", path, name, key);
    }

    /* dtype */
    json_t *jd = json_object_get(e, "dtype");
    if (!jd) return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!json_is_string(jd))
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': \"dtype\" must be a string", path, name);
    t->dtype = dsacp_dtype_from_name(json_string_value(jd));
    if (t->dtype == DSACP_DTYPE_INVALID)
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': unknown dtype \"%s\"", path, name,
                           json_string_value(jd));
    size_t esize = dsacp_dtype_size(t->dtype);

    /* shape */
    json_t *js = json_object_get(e, "shape");
    if (!js) return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!json_is_array(js))
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': \"shape\" must be an array", path, name);
    size_t nd = json_array_size(js);
    if (nd > DSACP_ST_MAX_DIMS)
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': shape has %zu dimensions, at most %d allowed",
                           path, name, nd, DSACP_ST_MAX_DIMS);
    t->ndim = (int)nd;
    int64_t numel = 1;
    bool overflow = false;
    for (size_t d = 0; d < nd; d++) {
        int64_t s;
        if (!nonneg_int(json_array_get(js, d), &s))
            return dsacp_error(DSACP_EFORMAT,
                               "%s: tensor '%s': shape entry %zu must be a non-negative integer", path,
                               name, d);
        t->shape[d] = s;
        if (!overflow && __builtin_mul_overflow(numel, s, &numel)) overflow = true;
    }
    /* A zero dimension makes the tensor empty even when other dimensions would overflow. */
    for (size_t d = 0; d < nd; d++)
        if (t->shape[d] == 0) {
            overflow = false;
            numel = 0;
        }
    if (overflow)
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': shape element count overflows", path, name);
    t->numel = numel;
    size_t nbytes;
    if ((uint64_t)numel > (uint64_t)SIZE_MAX || !dsacp_mul_ok((size_t)numel, esize, &nbytes))
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': byte size of %lld x %s elements overflows",
                           path, name, (long long)numel, dsacp_dtype_name(t->dtype));

    /* data_offsets */
    json_t *jo = json_object_get(e, "data_offsets");
    if (!jo) return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': missing \"data_offsets\"", path, name);
    int64_t b, en;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !nonneg_int(json_array_get(jo, 0), &b) ||
        !nonneg_int(json_array_get(jo, 1), &en))
        return dsacp_error(DSACP_EFORMAT,
                           "%s: tensor '%s': \"data_offsets\" must be [begin, end] of non-negative integers",
                           path, name);
    if (b > en)
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': data_offsets begin %lld > end %lld", path,
                           name, (long long)b, (long long)en);
    if ((uint64_t)en > (uint64_t)data_len)
        return dsacp_error(DSACP_EFORMAT,
                           "%s: tensor '%s': data_offsets [%lld, %lld] extend past the %zu-byte data region",
                           path, name, (long long)b, (long long)en, data_len);
    if ((uint64_t)(en - b) != (uint64_t)nbytes) {
        char shp[8 * 24 + 4];
        format_shape(shp, sizeof shp, t);
        return dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': shape %s x %s is %zu bytes but its range is %lld",
                           path, name, shp, dsacp_dtype_name(t->dtype), nbytes, (long long)(en - b));
    }
    t->nbytes = nbytes;
    r->begin = (size_t)b;
    r->end = (size_t)en;
    return DSACP_OK;
}

static int parse_header(dsacp_st_file *f, const uint8_t *buf, size_t len)
{
    const char *path = f->path;
    if (len < 8)
        return dsacp_error(DSACP_EFORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                           path, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > DSACP_ST_MAX_HEADER)
        return dsacp_error(DSACP_EFORMAT, "%s: header length %llu exceeds the %u-byte limit", path,
                           (unsigned long long)hlen, (unsigned)DSACP_ST_MAX_HEADER);
    if (hlen > len - 8)
        return dsacp_error(DSACP_EFORMAT,
                           "%s: header length %llu is larger than the %zu bytes after it (truncated file?)",
                           path, (unsigned long long)hlen, len - 8);
    const uint8_t *data = buf + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return dsacp_error(DSACP_EFORMAT, "%s: header has a duplicate tensor name or field: %s", path,
                               jerr.text);
        return dsacp_error(DSACP_EFORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", path,
                           jerr.text, jerr.line, jerr.column);
    }
    int rc = DSACP_OK;
    range *ranges = NULL;
    if (!json_is_object(root)) {
        rc = dsacp_error(DSACP_EFORMAT, "%s: header must be a JSON object", path);
        goto done;
    }
    json_t *meta = json_object_get(root, META_KEY);
    if (meta) {
        rc = parse_metadata(f, path, meta);
        if (rc) goto done;
    }
    size_t n = json_object_size(root) - (meta ? 1 : 0);
    size_t name_bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (val != meta) name_bytes += strlen(key) + 1;
    }
    f->tensors = dsacp_calloc(n ? n : 1, sizeof *f->tensors);
    f->names = dsacp_alloc(name_bytes ? name_bytes : 1);
    ranges = dsacp_calloc(n ? n : 1, sizeof *ranges);
    if (!f->tensors || !f->names || !ranges) {
        rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory reading the header", path);
        goto done;
    }
    size_t off = 0;
    int64_t i = 0;
    json_object_foreach(root, key, val)
    {
        if (val == meta) continue;
        dsacp_st_tensor *t = &f->tensors[i];
        rc = parse_entry(path, key, val, data_len, t, &ranges[i]);
        if (rc) goto done;
        size_t kl = strlen(key) + 1;
        memcpy(f->names + off, key, kl);
        t->name = f->names + off;
        off += kl;
        t->data = data + ranges[i].begin;
        ranges[i].idx = i;
        i++;
    }
    f->n = i;

    /* Overlaps: sorted by begin, every non-empty range must start at or after the furthest end
     * seen so far. Empty ranges may sit anywhere. */
    qsort(ranges, n, sizeof *ranges, range_cmp);
    int64_t last = -1;
    for (size_t k = 0; k < n; k++) {
        if (ranges[k].begin == ranges[k].end) continue;
        if (last >= 0 && ranges[k].begin < ranges[last].end) {
            const range *a = &ranges[last], *b = &ranges[k];
            rc = dsacp_error(DSACP_EFORMAT,
                             "%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s' [%zu, %zu]",
                             path, f->tensors[b->idx].name, b->begin, b->end, f->tensors[a->idx].name,
                             a->begin, a->end);
            goto done;
        }
        if (last < 0 || ranges[k].end > ranges[last].end) last = (int64_t)k;
    }

    /* Sorted by name for dsacp_st_find; JSON_REJECT_DUPLICATES already refused repeated names. */
    if (n > 1) qsort(f->tensors, n, sizeof *f->tensors, tensor_name_cmp);
    for (size_t k = 1; k < n; k++)
        if (strcmp(f->tensors[k - 1].name, f->tensors[k].name) == 0) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: tensor '%s': duplicate tensor name", path,
                             f->tensors[k].name);
            goto done;
        }
done:
    dsacp_free(ranges);
    json_decref(root);
    return rc;
}

static dsacp_st_file *new_file(const char *path)
{
    dsacp_st_file *f = dsacp_calloc(1, sizeof *f);
    if (!f) return NULL;
    f->path = dup_string(path_or_default(path));
    if (!f->path) {
        dsacp_free(f);
        return NULL;
    }
    return f;
}

int dsacp_st_open_memory(const void *data, size_t len, const char *path, dsacp_st_file **out)
{
    if (!out) return dsacp_error(DSACP_EINVAL, "%s: dsacp_st_open_memory: out is NULL", path_or_default(path));
    *out = NULL;
    if (!data && len)
        return dsacp_error(DSACP_EINVAL, "%s: dsacp_st_open_memory: data is NULL", path_or_default(path));
    dsacp_st_file *f = new_file(path);
    if (!f) return dsacp_error(DSACP_ENOMEM, "%s: out of memory", path_or_default(path));
    static const uint8_t empty[1] = {0};
    int rc = parse_header(f, data ? (const uint8_t *)data : empty, len);
    if (rc) {
        dsacp_st_close(f);
        return rc;
    }
    *out = f;
    return DSACP_OK;
}

int dsacp_st_open(const char *path, dsacp_st_file **out)
{
    if (!out || !path) return dsacp_error(DSACP_EINVAL, "dsacp_st_open: NULL argument");
    *out = NULL;
    int fd;
    uint64_t fsize;
    int rc0 = dsacp_open_regular(path, &fd, &fsize); /* never blocks; regular files only */
    if (rc0) return rc0;
    if (fsize < 8) {
        close(fd);
        return dsacp_error(DSACP_EFORMAT, "%s: file is %llu bytes, too short for the 8-byte header length",
                           path, (unsigned long long)fsize);
    }
    if (fsize > (uint64_t)SIZE_MAX) {
        close(fd);
        return dsacp_error(DSACP_EIO, "%s: file too large to map", path);
    }
    size_t len = (size_t)fsize;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) return dsacp_error(DSACP_EIO, "%s: cannot mmap: %s", path, strerror(map_errno));
    dsacp_st_file *f = new_file(path);
    if (!f) {
        munmap(map, len);
        return dsacp_error(DSACP_ENOMEM, "%s: out of memory", path);
    }
    f->map = map;
    f->map_len = len;
    int rc = parse_header(f, map, len);
    if (rc) {
        dsacp_st_close(f);
        return rc;
    }
    *out = f;
    return DSACP_OK;
}

/* ---- writer ---- */

typedef struct wtensor {
    char *name;
    dsacp_dtype dtype;
    int ndim;
    int64_t shape[DSACP_ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
} wtensor;

typedef struct wmeta {
    char *key, *value;
} wmeta;

struct dsacp_st_writer {
    wtensor *t;
    int64_t n, cap;
    wmeta *meta;
    int64_t nmeta, mcap;
};

int dsacp_st_writer_create(dsacp_st_writer **out)
{
    if (!out) return dsacp_error(DSACP_EINVAL, "dsacp_st_writer_create: out is NULL");
    *out = dsacp_calloc(1, sizeof **out);
    return *out ? DSACP_OK : DSACP_ENOMEM;
}

void dsacp_st_writer_free(dsacp_st_writer *w)
{
    if (!w) return;
    for (int64_t i = 0; i < w->n; i++) dsacp_free(w->t[i].name);
    for (int64_t i = 0; i < w->nmeta; i++) {
        dsacp_free(w->meta[i].key);
        dsacp_free(w->meta[i].value);
    }
    dsacp_free(w->t);
    dsacp_free(w->meta);
    dsacp_free(w);
}

/* Grows an array of `elem`-byte items to hold at least `need` (dsacp_alloc has no realloc). */
static bool grow(void **arr, int64_t *cap, int64_t n, int64_t need, size_t elem)
{
    if (need <= *cap) return true;
    int64_t nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *p = dsacp_calloc((size_t)nc, elem);
    if (!p) return false;
    if (n) memcpy(p, *arr, (size_t)n * elem);
    dsacp_free(*arr);
    *arr = p;
    *cap = nc;
    return true;
}

int dsacp_st_writer_add(dsacp_st_writer *w, const char *name, dsacp_dtype dtype, int ndim,
                        const int64_t *shape, const void *data)
{
    if (!w || !name) return dsacp_error(DSACP_EINVAL, "dsacp_st_writer_add: NULL argument");
    if (strcmp(name, META_KEY) == 0)
        return dsacp_error(DSACP_EINVAL, "safetensors writer: tensor '%s': reserved name", name);
    size_t esize = dsacp_dtype_size(dtype);
    if (esize == 0)
        return dsacp_error(DSACP_EINVAL, "safetensors writer: tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > DSACP_ST_MAX_DIMS || (ndim > 0 && !shape))
        return dsacp_error(DSACP_EINVAL, "safetensors writer: tensor '%s': %d dimensions (0..%d allowed)",
                           name, ndim, DSACP_ST_MAX_DIMS);
    size_t numel = 1;
    bool zero = false, overflow = false;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return dsacp_error(DSACP_EINVAL, "safetensors writer: tensor '%s': negative dimension %lld",
                               name, (long long)shape[d]);
        if (shape[d] == 0) zero = true;
        if (!dsacp_mul_ok(numel, (size_t)shape[d], &numel) || numel > (size_t)INT64_MAX) overflow = true;
    }
    size_t nbytes = 0;
    if (!zero && (overflow || !dsacp_mul_ok(numel, esize, &nbytes)))
        return dsacp_error(DSACP_EINVAL, "safetensors writer: tensor '%s': size overflows", name);
    if (zero) nbytes = 0;
    if (nbytes && !data)
        return dsacp_error(DSACP_EINVAL, "safetensors writer: tensor '%s': data is NULL", name);
    if (!grow((void **)&w->t, &w->cap, w->n, w->n + 1, sizeof *w->t)) return DSACP_ENOMEM;
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = dup_string(name);
    if (!t->name) return dsacp_error(DSACP_ENOMEM, "safetensors writer: out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    t->nbytes = nbytes;
    w->n++;
    return DSACP_OK;
}

int dsacp_st_writer_set_metadata(dsacp_st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value) return dsacp_error(DSACP_EINVAL, "dsacp_st_writer_set_metadata: NULL argument");
    char *v = dup_string(value);
    if (!v) return DSACP_ENOMEM;
    for (int64_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->meta[i].key, key) == 0) {
            dsacp_free(w->meta[i].value);
            w->meta[i].value = v;
            return DSACP_OK;
        }
    char *k = dup_string(key);
    if (!k || !grow((void **)&w->meta, &w->mcap, w->nmeta, w->nmeta + 1, sizeof *w->meta)) {
        dsacp_free(k);
        dsacp_free(v);
        return dsacp_error(DSACP_ENOMEM, "safetensors writer: out of memory");
    }
    w->meta[w->nmeta].key = k;
    w->meta[w->nmeta].value = v;
    w->nmeta++;
    return DSACP_OK;
}

static int wtensor_cmp(const void *a, const void *b)
{
    return strcmp(((const wtensor *)a)->name, ((const wtensor *)b)->name);
}

/* Builds the compact header JSON (a heap string to free()) for the tensors, sorted by name. */
static int build_header(dsacp_st_writer *w, const char *path, char **out)
{
    *out = NULL;
    json_t *root = json_object();
    if (!root) return dsacp_error(DSACP_ENOMEM, "%s: out of memory building the header", path);
    int rc = DSACP_OK;
    json_t *meta = json_object();
    if (!meta || json_object_set_new(root, META_KEY, meta) != 0) {
        rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory building the header", path);
        goto done;
    }
    bool has_format = false;
    for (int64_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->meta[i].key, "format") == 0) has_format = true;
    if (!has_format && json_object_set_new(meta, "format", json_string("pt")) != 0) {
        rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory building the header", path);
        goto done;
    }
    for (int64_t i = 0; i < w->nmeta; i++) {
        json_t *s = json_string(w->meta[i].value);
        if (!s || json_object_set_new(meta, w->meta[i].key, s) != 0) {
            rc = dsacp_error(DSACP_EINVAL, "%s: metadata '%s': key or value is not valid UTF-8", path,
                             w->meta[i].key);
            goto done;
        }
    }
    size_t off = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        size_t end;
        if (!dsacp_add_ok(off, t->nbytes, &end) || end > (size_t)INT64_MAX) {
            rc = dsacp_error(DSACP_EINVAL, "%s: tensor '%s': data region size overflows", path, t->name);
            goto done;
        }
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        bool ok = e && shape && offs;
        if (ok) ok = json_object_set_new(e, "dtype", json_string(dsacp_dtype_name(t->dtype))) == 0;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) == 0;
        if (ok) ok = json_array_append_new(offs, json_integer((json_int_t)off)) == 0;
        if (ok) ok = json_array_append_new(offs, json_integer((json_int_t)end)) == 0;
        if (ok) {
            ok = json_object_set_new(e, "shape", shape) == 0;
            shape = NULL;
        }
        if (ok) {
            ok = json_object_set_new(e, "data_offsets", offs) == 0;
            offs = NULL;
        }
        json_decref(shape);
        json_decref(offs);
        if (!ok) {
            json_decref(e);
            rc = dsacp_error(DSACP_ENOMEM, "%s: tensor '%s': out of memory building the header", path,
                             t->name);
            goto done;
        }
        if (json_object_set_new(root, t->name, e) != 0) {
            rc = dsacp_error(DSACP_EINVAL, "%s: tensor '%s': name is not valid UTF-8", path, t->name);
            goto done;
        }
        off = end;
    }
    /* jansson keeps insertion order: "__metadata__" first, then tensors by name. */
    *out = json_dumps(root, JSON_COMPACT);
    if (!*out) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory serializing the header", path);
done:
    json_decref(root);
    return rc;
}

/* Validates, builds the header and streams the file into `o` (opened here, not committed). */
static int stage(dsacp_st_writer *w, const char *path, dsacp_out *o)
{
    o->fd = -1;
    o->path = o->tmp = NULL;
    if (!w || !path) return dsacp_error(DSACP_EINVAL, "dsacp_st_writer_write: NULL argument");
    if (w->n > 1) qsort(w->t, (size_t)w->n, sizeof *w->t, wtensor_cmp);
    for (int64_t i = 1; i < w->n; i++)
        if (strcmp(w->t[i - 1].name, w->t[i].name) == 0)
            return dsacp_error(DSACP_EINVAL, "%s: tensor '%s': added twice", path, w->t[i].name);
    char *header;
    int rc = build_header(w, path, &header);
    if (rc) return rc;
    size_t hl = strlen(header);
    size_t padded = hl + (8 - (8 + hl) % 8) % 8;
    if (padded > DSACP_ST_MAX_HEADER) {
        free(header);
        return dsacp_error(DSACP_EINVAL, "%s: header of %zu bytes exceeds the %u-byte limit", path, padded,
                           (unsigned)DSACP_ST_MAX_HEADER);
    }
    rc = dsacp_out_open(o, path);
    if (rc) {
        free(header);
        return rc;
    }
    /* The 8-byte length, the header and its padding go out in one write. */
    size_t first = 8 + padded;
    uint8_t *head = dsacp_alloc(first);
    if (!head) {
        free(header);
        dsacp_out_abort(o);
        return dsacp_error(DSACP_ENOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < 8; i++) head[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(head + 8, header, hl);
    memset(head + 8 + hl, ' ', padded - hl);
    free(header);
    rc = dsacp_out_write(o, head, first);
    dsacp_free(head);
    for (int64_t i = 0; !rc && i < w->n; i++)
        if (w->t[i].nbytes) rc = dsacp_out_write(o, w->t[i].data, w->t[i].nbytes);
    if (rc) dsacp_out_abort(o);
    return rc;
}

int dsacp_st_writer_stage(dsacp_st_writer *w, const char *path, dsacp_out *o)
{
    return stage(w, path, o);
}

int dsacp_st_writer_write(dsacp_st_writer *w, const char *path)
{
    dsacp_out o;
    int rc = stage(w, path, &o);
    if (rc) return rc;
    return dsacp_out_commit(&o);
}

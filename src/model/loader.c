/*
 * loader.c -- the model directory: config.json plus model.safetensors or the shards of
 * model.safetensors.index.json, checked tensor by tensor against dsacp_model_tensor_specs().
 *
 * Design choice (documented in docs/architecture.md): weights are not converted on load. Each
 * canonical weight is a view into the mapped file in its stored dtype; FP8 weights carry their
 * weight_scale_inv block scales. Packed transformers-5 experts become per-expert views, a tied
 * lm_head a view of the embedding. Only a tensor whose data is not aligned to its element size
 * is copied (so kernels may read it as a typed array).
 */
#include "model/model.h"
#include "model/shard_index.h"
#include "io/safetensors.h"
#include "numerics/numerics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct dsacp_model {
    dsacp_config cfg;
    char *dir;
    dsacp_st_file **files;
    int64_t nfiles;
    dsacp_weight *weights; /* sorted by name */
    int64_t nweights;
    char **owned_names;
    void **owned_buffers;
    int64_t nowned_names, nowned_buffers;
    dsacp_model_problem *problems;
    int64_t nproblems, cap_problems;
    bool structure_only; /* DSACP_LOAD_STRUCTURE_ONLY: views are never copied (no data read) */
    bool has_mtp;        /* every required tensor of the MTP layer bound (dsacp_model_has_mtp) */
    struct {
        const char *name, *target;
    } aliases[4];        /* names the checkpoint may omit, resolved to another weight (not listed) */
    int naliases;
};

/* ---- tensor specs ---- */

typedef struct spec_list {
    dsacp_tensor_spec *v;
    int64_t n, cap;
    int rc;
} spec_list;

static void spec_add(spec_list *l, dsacp_tensor_kind kind, int64_t r, int64_t c, const char *fmt, ...)
    DSACP_PRINTF(5, 6);
static void spec_add(spec_list *l, dsacp_tensor_kind kind, int64_t r, int64_t c, const char *fmt, ...)
{
    if (l->rc) return;
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 256;
        dsacp_tensor_spec *v = dsacp_alloc((size_t)cap * sizeof *v);
        if (!v) {
            l->rc = DSACP_ENOMEM;
            return;
        }
        if (l->n) memcpy(v, l->v, (size_t)l->n * sizeof *v);
        dsacp_free(l->v);
        l->v = v;
        l->cap = cap;
    }
    dsacp_tensor_spec *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->kind = kind;
    if (r <= 0) {
        s->ndim = 1;
        s->shape[0] = c;
    } else {
        s->ndim = 2;
        s->shape[0] = r;
        s->shape[1] = c;
    }
}

/* Specs of one decoder layer L: attention with its indexer, the norms, the MLP (MoE or dense). */
static int64_t layer_spec_count(const dsacp_config *cfg, int64_t L)
{
    if (dsacp_config_layer_is_moe(cfg, L))
        return 14 + 2 + 3 * cfg->n_routed_experts + (cfg->n_shared_experts > 0 ? 3 : 0);
    return 14 + 3;
}

/* How many specs dsacp_model_tensor_specs lists for the target model (the MTP layer is optional
 * in a checkpoint), without listing them (cfg already checked: at most 512 layers x (3 x 4096
 * experts + 20), far inside int64). */
static int64_t spec_count(const dsacp_config *cfg)
{
    int64_t n = 2 + (cfg->tie_word_embeddings ? 0 : 1); /* embed, norm, lm_head */
    for (int64_t L = 0; L < cfg->num_hidden_layers; L++) n += layer_spec_count(cfg, L);
    return n;
}

static void add_layer_specs(spec_list *l, const dsacp_config *cfg, int64_t L)
{
    const int64_t D = cfg->hidden_size, H = cfg->num_attention_heads;
    const int64_t qk = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim;
    const char *p = "model.layers";
    const long long li = (long long)L;
    spec_add(l, DSACP_TK_NORM, 0, D, "%s.%lld.input_layernorm.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, cfg->q_lora_rank, D, "%s.%lld.self_attn.q_a_proj.weight", p, li);
    spec_add(l, DSACP_TK_NORM, 0, cfg->q_lora_rank, "%s.%lld.self_attn.q_a_layernorm.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, H * qk, cfg->q_lora_rank, "%s.%lld.self_attn.q_b_proj.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, cfg->kv_lora_rank + cfg->qk_rope_head_dim, D,
             "%s.%lld.self_attn.kv_a_proj_with_mqa.weight", p, li);
    spec_add(l, DSACP_TK_NORM, 0, cfg->kv_lora_rank, "%s.%lld.self_attn.kv_a_layernorm.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, H * (cfg->qk_nope_head_dim + cfg->v_head_dim), cfg->kv_lora_rank,
             "%s.%lld.self_attn.kv_b_proj.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, D, H * cfg->v_head_dim, "%s.%lld.self_attn.o_proj.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, cfg->index_n_heads * cfg->index_head_dim, cfg->q_lora_rank,
             "%s.%lld.self_attn.indexer.wq_b.weight", p, li);
    spec_add(l, DSACP_TK_LINEAR, cfg->index_head_dim, D, "%s.%lld.self_attn.indexer.wk.weight", p, li);
    spec_add(l, DSACP_TK_NORM, 0, cfg->index_head_dim, "%s.%lld.self_attn.indexer.k_norm.weight", p, li);
    spec_add(l, DSACP_TK_BIAS, 0, cfg->index_head_dim, "%s.%lld.self_attn.indexer.k_norm.bias", p, li);
    spec_add(l, DSACP_TK_LINEAR_F32, cfg->index_n_heads, D, "%s.%lld.self_attn.indexer.weights_proj.weight", p, li);
    spec_add(l, DSACP_TK_NORM, 0, D, "%s.%lld.post_attention_layernorm.weight", p, li);
    if (dsacp_config_layer_is_moe(cfg, L)) {
        const int64_t E = cfg->n_routed_experts, I = cfg->moe_intermediate_size;
        spec_add(l, DSACP_TK_LINEAR_F32, E, D, "%s.%lld.mlp.gate.weight", p, li);
        spec_add(l, DSACP_TK_BIAS, 0, E, "%s.%lld.mlp.gate.e_score_correction_bias", p, li);
        for (int64_t e = 0; e < E; e++) {
            long long ei = (long long)e;
            spec_add(l, DSACP_TK_LINEAR, I, D, "%s.%lld.mlp.experts.%lld.gate_proj.weight", p, li, ei);
            spec_add(l, DSACP_TK_LINEAR, I, D, "%s.%lld.mlp.experts.%lld.up_proj.weight", p, li, ei);
            spec_add(l, DSACP_TK_LINEAR, D, I, "%s.%lld.mlp.experts.%lld.down_proj.weight", p, li, ei);
        }
        if (cfg->n_shared_experts > 0) {
            const int64_t S = I * cfg->n_shared_experts;
            spec_add(l, DSACP_TK_LINEAR, S, D, "%s.%lld.mlp.shared_experts.gate_proj.weight", p, li);
            spec_add(l, DSACP_TK_LINEAR, S, D, "%s.%lld.mlp.shared_experts.up_proj.weight", p, li);
            spec_add(l, DSACP_TK_LINEAR, D, S, "%s.%lld.mlp.shared_experts.down_proj.weight", p, li);
        }
    } else {
        const int64_t I = cfg->intermediate_size;
        spec_add(l, DSACP_TK_LINEAR, I, D, "%s.%lld.mlp.gate_proj.weight", p, li);
        spec_add(l, DSACP_TK_LINEAR, I, D, "%s.%lld.mlp.up_proj.weight", p, li);
        spec_add(l, DSACP_TK_LINEAR, D, I, "%s.%lld.mlp.down_proj.weight", p, li);
    }
}

/* The MTP layer M = num_hidden_layers (docs/mtp.md): enorm, hnorm, eh_proj, its decoder layer, the
 * shared head's norm and head. Its embed_tokens is not listed: the loader binds it when stored
 * and otherwise resolves the name to model.embed_tokens.weight (dsacp_model_weight). */
static void add_mtp_specs(spec_list *l, const dsacp_config *cfg)
{
    const int64_t D = cfg->hidden_size;
    const long long M = (long long)cfg->num_hidden_layers;
    const int64_t first = l->n;
    spec_add(l, DSACP_TK_NORM, 0, D, "model.layers.%lld.enorm.weight", M);
    spec_add(l, DSACP_TK_NORM, 0, D, "model.layers.%lld.hnorm.weight", M);
    spec_add(l, DSACP_TK_LINEAR_BF16, D, 2 * D, "model.layers.%lld.eh_proj.weight", M);
    add_layer_specs(l, cfg, cfg->num_hidden_layers);
    spec_add(l, DSACP_TK_NORM, 0, D, "model.layers.%lld.shared_head.norm.weight", M);
    spec_add(l, DSACP_TK_HEAD, cfg->vocab_size, D, "model.layers.%lld.shared_head.head.weight", M);
    if (l->rc) return;
    for (int64_t i = first; i < l->n; i++) l->v[i].mtp = true;
    l->v[l->n - 1].fallback = "lm_head.weight";
}

int dsacp_model_tensor_specs(const dsacp_config *cfg, dsacp_tensor_spec **out, int64_t *count)
{
    if (!cfg || !out || !count) return dsacp_error(DSACP_EINVAL, "dsacp_model_tensor_specs: NULL argument");
    *out = NULL;
    *count = 0;
    /* A config built in code gets the parser's bounds too: no product below can overflow. */
    int crc = dsacp_config_check(cfg, "config");
    if (crc) return crc;
    spec_list l = {0};
    spec_add(&l, DSACP_TK_EMBED, cfg->vocab_size, cfg->hidden_size, "model.embed_tokens.weight");
    for (int64_t L = 0; L < cfg->num_hidden_layers; L++) add_layer_specs(&l, cfg, L);
    spec_add(&l, DSACP_TK_NORM, 0, cfg->hidden_size, "model.norm.weight");
    if (!cfg->tie_word_embeddings)
        spec_add(&l, DSACP_TK_HEAD, cfg->vocab_size, cfg->hidden_size, "lm_head.weight");
    if (cfg->num_nextn_predict_layers > 0) add_mtp_specs(&l, cfg);
    if (l.rc) {
        dsacp_free(l.v);
        return dsacp_error(l.rc, "out of memory listing tensors");
    }
    *out = l.v;
    *count = l.n;
    return DSACP_OK;
}

/* ---- model bookkeeping ---- */

static void add_problem(dsacp_model *m, bool error, const char *fmt, ...) DSACP_PRINTF(3, 4);
static void add_problem(dsacp_model *m, bool error, const char *fmt, ...)
{
    if (m->nproblems == m->cap_problems) {
        int64_t cap = m->cap_problems ? 2 * m->cap_problems : 16;
        dsacp_model_problem *v = realloc(m->problems, (size_t)cap * sizeof *v);
        if (!v) return;
        m->problems = v;
        m->cap_problems = cap;
    }
    dsacp_model_problem *p = &m->problems[m->nproblems++];
    p->error = error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->text, sizeof p->text, fmt, ap);
    va_end(ap);
}

static char *own_string(dsacp_model *m, const char *s)
{
    char **v = realloc(m->owned_names, (size_t)(m->nowned_names + 1) * sizeof *v);
    if (!v) return NULL;
    m->owned_names = v;
    char *c = strdup(s);
    if (c) m->owned_names[m->nowned_names++] = c;
    return c;
}

static void *own_buffer(dsacp_model *m, size_t bytes)
{
    void **v = realloc(m->owned_buffers, (size_t)(m->nowned_buffers + 1) * sizeof *v);
    if (!v) return NULL;
    m->owned_buffers = v;
    void *b = dsacp_alloc(bytes);
    if (b) m->owned_buffers[m->nowned_buffers++] = b;
    return b;
}

void dsacp_model_free(dsacp_model *m)
{
    if (!m) return;
    for (int64_t i = 0; i < m->nfiles; i++) dsacp_st_close(m->files[i]);
    free(m->files);
    for (int64_t i = 0; i < m->nowned_names; i++) free(m->owned_names[i]);
    free(m->owned_names);
    for (int64_t i = 0; i < m->nowned_buffers; i++) dsacp_free(m->owned_buffers[i]);
    free(m->owned_buffers);
    dsacp_free(m->weights);
    free(m->problems);
    free(m->dir);
    free(m);
}

const dsacp_config *dsacp_model_config(const dsacp_model *m) { return &m->cfg; }
int64_t dsacp_model_problem_count(const dsacp_model *m) { return m->nproblems; }
const dsacp_model_problem *dsacp_model_problem_at(const dsacp_model *m, int64_t i) { return &m->problems[i]; }
int64_t dsacp_model_file_count(const dsacp_model *m) { return m->nfiles; }
const char *dsacp_model_file_path(const dsacp_model *m, int64_t i) { return dsacp_st_path(m->files[i]); }
int64_t dsacp_model_weight_count(const dsacp_model *m) { return m->nweights; }
const dsacp_weight *dsacp_model_weight_at(const dsacp_model *m, int64_t i) { return &m->weights[i]; }

static int weight_cmp(const void *a, const void *b)
{
    return strcmp(((const dsacp_weight *)a)->name, ((const dsacp_weight *)b)->name);
}

const dsacp_weight *dsacp_model_weight(const dsacp_model *m, const char *name)
{
    dsacp_weight key = {.name = name};
    const dsacp_weight *w = bsearch(&key, m->weights, (size_t)m->nweights, sizeof key, weight_cmp);
    for (int i = 0; !w && i < m->naliases; i++)
        if (strcmp(name, m->aliases[i].name) == 0) {
            key.name = m->aliases[i].target;
            w = bsearch(&key, m->weights, (size_t)m->nweights, sizeof key, weight_cmp);
        }
    return w;
}

bool dsacp_model_has_mtp(const dsacp_model *m) { return m && m->has_mtp; }

const dsacp_weight *dsacp_model_weightf(const dsacp_model *m, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return dsacp_model_weight(m, name);
}

float *dsacp_model_vector_f32(const dsacp_model *m, const char *name, int64_t n, int *rc)
{
    const dsacp_weight *w = dsacp_model_weight(m, name);
    if (!w || w->rows * w->cols != n) {
        *rc = dsacp_error(DSACP_ENOTFOUND, "%s: no weight '%s' of %lld values", m->dir, name, (long long)n);
        return NULL;
    }
    float *v = dsacp_alloc((size_t)n * sizeof(float));
    if (!v) {
        *rc = DSACP_ENOMEM;
        return NULL;
    }
    dsacp_weight_to_f32(w, v);
    return v;
}

/* ---- loading ---- */

typedef struct stored {
    const dsacp_st_tensor *t;
    const dsacp_st_file *f;
    bool used;
} stored;

static int stored_cmp(const void *a, const void *b)
{
    return strcmp(((const stored *)a)->t->name, ((const stored *)b)->t->name);
}

static stored *find_stored(stored *v, int64_t n, const char *name)
{
    dsacp_st_tensor t = {.name = (char *)name};
    stored key = {.t = &t};
    return bsearch(&key, v, (size_t)n, sizeof key, stored_cmp);
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int open_files(dsacp_model *m)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", m->dir);
    if (!file_exists(path)) {
        snprintf(path, sizeof path, "%s/model.safetensors", m->dir);
        if (!file_exists(path))
            return dsacp_error(DSACP_ENOTFOUND, "%s: no model.safetensors or "
                               "model.safetensors.index.json", m->dir);
        m->files = calloc(1, sizeof *m->files);
        if (!m->files) return DSACP_ENOMEM;
        int rc = dsacp_st_open(path, &m->files[0]);
        if (rc) return rc;
        m->nfiles = 1;
        return DSACP_OK;
    }
    char *text;
    size_t len;
    int rc = dsacp_read_file(path, &text, &len, 64u << 20);
    if (rc) return rc;
    dsacp_shard_index idx;
    rc = dsacp_shard_index_parse(text, len, path, &idx);
    dsacp_free(text);
    if (rc) return rc;
    m->files = calloc((size_t)idx.nfiles, sizeof *m->files);
    if (!m->files) rc = dsacp_error(DSACP_ENOMEM, "%s: out of memory", path);
    for (int64_t i = 0; !rc && i < idx.nfiles; i++) {
        char shard[4096];
        if (snprintf(shard, sizeof shard, "%s/%s", m->dir, idx.files[i]) >= (int)sizeof shard) {
            rc = dsacp_error(DSACP_EFORMAT, "%s: shard path '%s/%s' is too long", path, m->dir, idx.files[i]);
            break;
        }
        rc = dsacp_st_open(shard, &m->files[i]);
        if (!rc) m->nfiles++;
    }
    dsacp_shard_index_free(&idx);
    return rc;
}

/* Makes `w` a view of stored tensor `s` (rows x cols from a sub-range of it when sliced). */
static int bind_view(dsacp_model *m, dsacp_weight *w, const dsacp_st_tensor *t, int64_t offset_elems,
                     int64_t rows, int64_t cols)
{
    size_t es = dsacp_dtype_size(t->dtype);
    const uint8_t *data = (const uint8_t *)t->data + (size_t)offset_elems * es;
    w->dtype = t->dtype;
    w->rows = rows;
    w->cols = cols;
    /* A structure-only load never copies: the copy would read the data (the whole checkpoint
     * when its header length is not a multiple of the element size). */
    if (((uintptr_t)data % es) != 0 && !m->structure_only) {
        size_t bytes = (size_t)(rows * cols) * es;
        void *copy = own_buffer(m, bytes);
        if (!copy) return DSACP_ENOMEM;
        memcpy(copy, data, bytes);
        data = copy;
    }
    w->data = data;
    return DSACP_OK;
}

static bool is_float_dtype(dsacp_dtype d)
{
    return d == DSACP_F32 || d == DSACP_BF16 || d == DSACP_F16 || d == DSACP_F8_E4M3;
}

/* Attaches the weight_scale_inv of an FP8 tensor `base` ("....weight" -> "....weight_scale_inv"),
 * starting at scale row `srow0` for a slice. */
static int bind_scale(dsacp_model *m, dsacp_weight *w, stored *all, int64_t nall, const char *stored_name,
                      const char *fname, int64_t block, int64_t expert, int64_t expert_rows,
                      int64_t row0)
{
    char sname[256];
    size_t len = strlen(stored_name);
    if (len >= 7 && strcmp(stored_name + len - 7, ".weight") == 0)
        snprintf(sname, sizeof sname, "%.*s.weight_scale_inv", (int)(len - 7), stored_name);
    else
        snprintf(sname, sizeof sname, "%s_scale_inv", stored_name);
    stored *s = find_stored(all, nall, sname);
    if (!s)
        return dsacp_error(DSACP_ENOTFOUND, "%s: tensor '%s' is F8_E4M3 but '%s' is missing", fname,
                           stored_name, sname);
    s->used = true;
    const dsacp_st_tensor *t = s->t;
    int64_t srows_full = (expert_rows + block - 1) / block, scols = (w->cols + block - 1) / block;
    int64_t nexp = expert >= 0 ? (t->ndim == 3 ? t->shape[0] : -1) : 0;
    bool ok = t->dtype == DSACP_F32 &&
              (expert >= 0 ? (t->ndim == 3 && nexp > expert && t->shape[1] == srows_full &&
                              t->shape[2] == scols)
                           : (t->ndim == 2 && t->shape[0] == srows_full && t->shape[1] == scols));
    if (!ok)
        return dsacp_error(DSACP_ESHAPE, "%s: tensor '%s' must be F32 [%s%lld, %lld] (block %lld)",
                           dsacp_st_path(s->f), sname, expert >= 0 ? "E, " : "",
                           (long long)srows_full, (long long)scols, (long long)block);
    if (row0 % block)
        return dsacp_error(DSACP_EUNSUPPORTED, "%s: tensor '%s': packed FP8 experts need the "
                           "intermediate size to be a multiple of %lld", fname, stored_name,
                           (long long)block);
    int64_t off = (expert >= 0 ? expert * srows_full * scols : 0) + (row0 / block) * scols;
    const float *sc = (const float *)(const void *)((const uint8_t *)t->data + (size_t)off * sizeof(float));
    if ((uintptr_t)sc % 4 && !m->structure_only) {
        int64_t nsr = (w->rows + block - 1) / block;
        float *copy = own_buffer(m, (size_t)(nsr * scols) * sizeof(float));
        if (!copy) return DSACP_ENOMEM;
        memcpy(copy, sc, (size_t)(nsr * scols) * sizeof(float));
        sc = copy;
    }
    w->scale = sc;
    w->scale_rows = (w->rows + block - 1) / block;
    w->scale_cols = scols;
    w->scale_stride = scols;
    w->block = block;
    return DSACP_OK;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* The packed transformers-5 tensor holding canonical expert `name`
 * ("model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight"), named in `pname`; NULL when the
 * name is no expert's or no packed tensor exists. */
static stored *find_packed(stored *all, int64_t nall, const char *name, long long *L, long long *E,
                           char which[16], char *pname, size_t pcap)
{
    if (sscanf(name, "model.layers.%lld.mlp.experts.%lld.%15[a-z]_proj.weight", L, E, which) != 3) return NULL;
    const bool down = strcmp(which, "down") == 0;
    const char *suffixes[2] = {"", ".weight"};
    for (int k = 0; k < 2; k++) {
        snprintf(pname, pcap, "model.layers.%lld.mlp.experts.%s%s", *L, down ? "down_proj" : "gate_up_proj",
                 suffixes[k]);
        stored *s = find_stored(all, nall, pname);
        if (s) return s;
    }
    return NULL;
}

/* Tries "....mlp.experts.E.{gate,up,down}_proj.weight" against packed transformers-5 tensors. */
static int bind_packed_expert(dsacp_model *m, dsacp_weight *w, const dsacp_tensor_spec *spec,
                              stored *all, int64_t nall, bool *found)
{
    long long L, E;
    char which[16], pname[200];
    stored *s = find_packed(all, nall, spec->name, &L, &E, which, pname, sizeof pname);
    *found = s != NULL;
    if (!s) return DSACP_OK;
    s->used = true;
    const dsacp_st_tensor *t = s->t;
    const char *fname = dsacp_st_path(s->f);
    const bool down = strcmp(which, "down") == 0;
    int64_t I = down ? spec->shape[1] : spec->shape[0];
    int64_t D = down ? spec->shape[0] : spec->shape[1];
    int64_t er = down ? D : 2 * I, ec = down ? I : D;
    if (t->ndim != 3 || t->shape[0] <= E || t->shape[1] != er || t->shape[2] != ec ||
        !is_float_dtype(t->dtype))
    {
        char have[80];
        shape_str(have, sizeof have, t->ndim, t->shape);
        return dsacp_error(DSACP_ESHAPE, "%s: tensor '%s' (%s %s) must be a float tensor "
                           "[E > %lld, %lld, %lld]", fname, pname, dsacp_dtype_name(t->dtype), have,
                           E, (long long)er, (long long)ec);
    }
    int64_t row0 = strcmp(which, "up") == 0 ? I : 0;
    int rc = bind_view(m, w, t, E * er * ec + row0 * ec, spec->shape[0], spec->shape[1]);
    if (rc) return rc;
    if (t->dtype == DSACP_F8_E4M3)
        rc = bind_scale(m, w, all, nall, pname, fname, m->cfg.weight_block_rows, E, er, row0);
    return rc;
}

/* One load: the model being filled, every stored tensor (sorted by name), the problems so far. */
typedef struct load_ctx {
    dsacp_model *m;
    stored *all;
    int64_t nall;
    bool keep_going;
    int first_error;  /* the first error problem's status: the load's result */
    int64_t nerrors;  /* error problems recorded */
} load_ctx;

/* Records an error problem (also dsacp_last_error's message). */
static void problem(load_ctx *c, int status, const char *fmt, ...) DSACP_PRINTF(3, 4);
static void problem(load_ctx *c, int status, const char *fmt, ...)
{
    char msg[sizeof c->m->problems[0].text];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dsacp_error(status, "%s", msg);
    add_problem(c->m, true, "%s", msg);
    if (!c->first_error) c->first_error = status;
    c->nerrors++;
}

/* `name` resolves to the weight `target` (a view the checkpoint does not store: not listed). */
static int add_alias(dsacp_model *m, const char *name, const char *target)
{
    if (m->naliases == (int)(sizeof m->aliases / sizeof m->aliases[0]))
        return dsacp_error(DSACP_ENOMEM, "%s: too many aliases", m->dir); /* a programmer error */
    m->aliases[m->naliases].name = name;
    m->aliases[m->naliases].target = target;
    m->naliases++;
    return DSACP_OK;
}

/* Binds one spec to its stored tensor (or an expert of a packed one, or, for an optional spec the
 * checkpoint lacks, an alias of its fallback). Returns only DSACP_ENOMEM; every other problem is
 * recorded and the load goes on. */
static int bind_spec(load_ctx *c, const dsacp_tensor_spec *spec)
{
    dsacp_model *m = c->m;
    dsacp_weight *w = &m->weights[m->nweights];
    memset(w, 0, sizeof *w);
    w->name = own_string(m, spec->name);
    if (!w->name) return DSACP_ENOMEM;
    w->ndim = spec->ndim;
    const int64_t rows = spec->ndim == 2 ? spec->shape[0] : 1;
    const int64_t cols = spec->ndim == 2 ? spec->shape[1] : spec->shape[0];
    char want[64], have[64];
    shape_str(want, sizeof want, spec->ndim, spec->shape);
    stored *s = find_stored(c->all, c->nall, spec->name);
    if (!s) {
        bool found = false;
        int rc = bind_packed_expert(m, w, spec, c->all, c->nall, &found);
        if (rc == DSACP_ENOMEM) return rc;
        if (rc) problem(c, rc, "%s", dsacp_last_error());
        else if (found) m->nweights++;
        else if (spec->fallback) return add_alias(m, w->name, spec->fallback);
        else if (strcmp(spec->name, "lm_head.weight") != 0) /* (lm_head: tied, bound below) */
            problem(c, DSACP_ENOTFOUND, "%s: required tensor '%s' %s is missing", m->dir, spec->name, want);
        return DSACP_OK;
    }
    s->used = true;
    const dsacp_st_tensor *t = s->t;
    const char *fname = dsacp_st_path(s->f);
    shape_str(have, sizeof have, t->ndim, t->shape);
    if (t->ndim != spec->ndim || t->shape[0] != spec->shape[0] || (spec->ndim == 2 && t->shape[1] != spec->shape[1])) {
        problem(c, DSACP_ESHAPE, "%s: tensor '%s' has shape %s, expected %s", fname, spec->name, have, want);
        return DSACP_OK;
    }
    if (!is_float_dtype(t->dtype) || (t->dtype == DSACP_F8_E4M3 && spec->ndim != 2)) {
        problem(c, DSACP_ESHAPE, "%s: tensor '%s' has dtype %s; expected F32, BF16, F16%s", fname, spec->name,
                dsacp_dtype_name(t->dtype), spec->ndim == 2 ? " or F8_E4M3" : "");
        return DSACP_OK;
    }
    int rc = bind_view(m, w, t, 0, rows, cols);
    if (!rc && t->dtype == DSACP_F8_E4M3)
        rc = bind_scale(m, w, c->all, c->nall, spec->name, fname, m->cfg.weight_block_rows, -1, rows, 0);
    if (rc == DSACP_ENOMEM) return rc;
    if (rc) problem(c, rc, "%s", dsacp_last_error());
    else m->nweights++;
    return DSACP_OK;
}

static int bind_specs(load_ctx *c, const dsacp_tensor_spec *specs, int64_t first, int64_t end)
{
    for (int64_t i = first; i < end && (c->keep_going || !c->first_error); i++) {
        int rc = bind_spec(c, &specs[i]);
        if (rc) return rc;
    }
    return DSACP_OK;
}

/* The stored tensor that supplies `spec` (itself or its packed experts), or NULL. */
static const stored *spec_source(load_ctx *c, const dsacp_tensor_spec *spec)
{
    stored *s = find_stored(c->all, c->nall, spec->name);
    long long L, E;
    char which[16], pname[200];
    return s ? s : find_packed(c->all, c->nall, spec->name, &L, &E, which, pname, sizeof pname);
}

/* The MTP layer, specs [first, end): loaded when the checkpoint holds every required tensor
 * (dsacp_model_has_mtp, unless one of them is refused), left out with a note when it holds none,
 * DSACP_EFORMAT naming the first missing tensor when it holds some. */
static int bind_mtp(load_ctx *c, const dsacp_tensor_spec *specs, int64_t first, int64_t end)
{
    dsacp_model *m = c->m;
    const long long M = (long long)m->cfg.num_hidden_layers;
    int64_t required = 0, present = 0, missing = -1;
    const char *where = NULL;
    for (int64_t i = first; i < end; i++) {
        if (specs[i].fallback) continue;
        required++;
        const stored *s = spec_source(c, &specs[i]);
        if (s && !where) where = dsacp_st_path(s->f);
        if (s) present++;
        else if (missing < 0) missing = i;
    }
    if (present == 0) {
        add_problem(m, false, "%s: config declares an MTP layer (num_nextn_predict_layers = %lld); the "
                    "checkpoint has none: speculative method mtp unavailable", m->dir,
                    (long long)m->cfg.num_nextn_predict_layers);
        return DSACP_OK;
    }
    if (missing >= 0) {
        char want[64];
        shape_str(want, sizeof want, specs[missing].ndim, specs[missing].shape);
        problem(c, DSACP_EFORMAT, "%s: MTP layer %lld is incomplete: tensor '%s' %s is missing (%lld of its "
                "%lld required tensors present)", where, M, specs[missing].name, want, (long long)present,
                (long long)required);
        return DSACP_OK;
    }
    const int64_t errors = c->nerrors;
    int rc = bind_specs(c, specs, first, end);
    /* Its own embedding when the checkpoint stores one (DeepSeek's does), else the target's. */
    dsacp_tensor_spec embed = {.ndim = 2, .shape = {m->cfg.vocab_size, m->cfg.hidden_size}, .kind = DSACP_TK_EMBED,
                               .mtp = true, .fallback = "model.embed_tokens.weight"};
    snprintf(embed.name, sizeof embed.name, "model.layers.%lld.embed_tokens.weight", M);
    if (!rc) rc = bind_spec(c, &embed);
    m->has_mtp = !rc && c->nerrors == errors;
    return rc;
}

/* Duplicates across shards are errors. */
static void check_duplicates(load_ctx *c)
{
    for (int64_t i = 1; i < c->nall; i++)
        if (strcmp(c->all[i - 1].t->name, c->all[i].t->name) == 0)
            problem(c, DSACP_EFORMAT, "%s: tensor '%s' is also stored in %s", dsacp_st_path(c->all[i].f),
                    c->all[i].t->name, dsacp_st_path(c->all[i - 1].f));
}

/* The tensors the config asks for against what the checkpoint can supply, before listing them:
 * each canonical tensor is a stored one, or an expert of a packed [E, ...] tensor (which covers at
 * most E of them), or the tied lm_head. A config whose layers x experts the files cannot hold is
 * refused here instead of allocating its whole tensor list; a few missing tensors are left to the
 * per-tensor report. The MTP layer is optional in a checkpoint: only the target's count. */
static int check_supply(load_ctx *c)
{
    const dsacp_config *cfg = &c->m->cfg;
    int64_t expected = spec_count(cfg), supply = c->nall + 1;
    for (int64_t i = 0; i < c->nall; i++) {
        const dsacp_st_tensor *t = c->all[i].t;
        if (t->ndim == 3 && t->shape[0] > 0 && strstr(t->name, ".mlp.experts.") &&
            (strstr(t->name, "gate_up_proj") || strstr(t->name, "down_proj")))
            supply += (strstr(t->name, "gate_up_proj") ? 2 : 1) *
                      (t->shape[0] < cfg->n_routed_experts ? t->shape[0] : cfg->n_routed_experts);
    }
    if (expected > supply + 4096)
        return dsacp_error(DSACP_ECONFIG, "%s/config.json: fields 'num_hidden_layers' (%lld) and "
                           "'n_routed_experts' (%lld) ask for %lld tensors, but the checkpoint holds "
                           "%lld", c->m->dir, (long long)cfg->num_hidden_layers,
                           (long long)cfg->n_routed_experts, (long long)expected, (long long)c->nall);
    return DSACP_OK;
}

/* A tied (or absent, with tie_word_embeddings) lm_head is a view of the embedding. */
static void bind_tied_head(load_ctx *c)
{
    dsacp_model *m = c->m;
    if (!m->cfg.tie_word_embeddings || find_stored(c->all, c->nall, "lm_head.weight")) return;
    for (int64_t i = 0; i < m->nweights; i++)
        if (strcmp(m->weights[i].name, "model.embed_tokens.weight") == 0) {
            dsacp_weight w = m->weights[i];
            w.name = "lm_head.weight";
            m->weights[m->nweights++] = w;
            return;
        }
}

/* Stored tensors nothing used: warnings, except the layers past the ones loaded (MTP layers not
 * loaded, or beyond the first), counted in one note. */
static void report_unused(load_ctx *c)
{
    dsacp_model *m = c->m;
    const int64_t skip_from = m->cfg.num_hidden_layers + (m->has_mtp ? 1 : 0);
    int64_t skipped = 0;
    for (int64_t i = 0; i < c->nall; i++) {
        if (c->all[i].used) continue;
        const char *name = c->all[i].t->name;
        long long L;
        if (sscanf(name, "model.layers.%lld.", &L) == 1 && L >= skip_from) {
            skipped++;
            continue;
        }
        if (strstr(name, "rotary_emb.inv_freq")) continue;
        if (strcmp(name, "lm_head.weight") == 0 && m->cfg.tie_word_embeddings) continue;
        add_problem(m, false, "%s: unexpected tensor '%s' (ignored)", dsacp_st_path(c->all[i].f), name);
    }
    if (skipped && m->has_mtp)
        add_problem(m, false, "%s: %lld tensors of layers > num_hidden_layers (MTP layers beyond the first) "
                    "skipped", m->dir, (long long)skipped);
    else if (skipped)
        add_problem(m, false, "%s: %lld tensors of layers >= num_hidden_layers (MTP) skipped", m->dir,
                    (long long)skipped);
}

/* Every stored tensor of the open files, sorted by name; NULL when out of memory. */
static stored *list_stored(const dsacp_model *m, int64_t *n)
{
    int64_t nall = 0;
    for (int64_t i = 0; i < m->nfiles; i++) nall += dsacp_st_count(m->files[i]);
    stored *all = calloc((size_t)nall + 1, sizeof *all);
    if (!all) return NULL;
    int64_t k = 0;
    for (int64_t i = 0; i < m->nfiles; i++)
        for (int64_t j = 0; j < dsacp_st_count(m->files[i]); j++)
            all[k++] = (stored){dsacp_st_tensor_at(m->files[i], j), m->files[i], false};
    qsort(all, (size_t)nall, sizeof *all, stored_cmp);
    *n = nall;
    return all;
}

/* Checks and binds every spec (the target's, then the MTP layer's). DSACP_ENOMEM or the supply
 * check's DSACP_ECONFIG end the load; everything else is a problem in c. */
static int bind_model(load_ctx *c)
{
    dsacp_model *m = c->m;
    check_duplicates(c);
    int rc = check_supply(c);
    if (rc) return rc;
    dsacp_tensor_spec *specs = NULL;
    int64_t nspecs = 0, mtp_first = 0;
    rc = dsacp_model_tensor_specs(&m->cfg, &specs, &nspecs);
    if (rc) return rc;
    m->weights = dsacp_calloc((size_t)nspecs + 2, sizeof *m->weights); /* + tied lm_head, MTP embed */
    if (!m->weights) rc = DSACP_ENOMEM;
    while (mtp_first < nspecs && !specs[mtp_first].mtp) mtp_first++;
    if (!rc) rc = bind_specs(c, specs, 0, mtp_first);
    if (!rc && mtp_first < nspecs && (c->keep_going || !c->first_error)) rc = bind_mtp(c, specs, mtp_first, nspecs);
    dsacp_free(specs);
    if (rc) return rc;
    bind_tied_head(c);
    report_unused(c);
    qsort(m->weights, (size_t)m->nweights, sizeof *m->weights, weight_cmp);
    return DSACP_OK;
}

int dsacp_model_load_ex(const char *dir, unsigned flags, dsacp_model **out)
{
    *out = NULL;
    dsacp_model *m = calloc(1, sizeof *m);
    if (!m) return dsacp_error(DSACP_ENOMEM, "out of memory");
    m->structure_only = (flags & DSACP_LOAD_STRUCTURE_ONLY) != 0;
    m->dir = strdup(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = m->dir ? dsacp_config_load(path, &m->cfg) : DSACP_ENOMEM;
    if (!rc) rc = open_files(m);
    load_ctx c = {.m = m, .keep_going = (flags & DSACP_LOAD_KEEP_GOING) != 0};
    if (!rc) {
        c.all = list_stored(m, &c.nall);
        rc = c.all ? bind_model(&c) : dsacp_error(DSACP_ENOMEM, "out of memory");
    }
    free(c.all);
    if (rc) {
        dsacp_model_free(m);
        return rc;
    }
    if (c.first_error) {
        /* Restore the first error's message for dsacp_last_error(). */
        for (int64_t i = 0; i < m->nproblems; i++)
            if (m->problems[i].error) {
                dsacp_error(c.first_error, "%s", m->problems[i].text);
                break;
            }
        if (!c.keep_going) {
            dsacp_model_free(m);
            return c.first_error;
        }
    }
    *out = m;
    return c.first_error;
}

int dsacp_model_load(const char *dir, dsacp_model **out) { return dsacp_model_load_ex(dir, 0, out); }

/* ---- non-finite scan ---- */

/* First index in [0, n) whose bits have every exponent bit set (NaN or infinity for the IEEE
 * formats; for e4m3, which has no infinity, NaN is S.1111.111), or -1. The data may be unaligned
 * (a structure-only load keeps unaligned views), so each element is loaded with memcpy, which
 * compilers turn into plain (vectorizable) unaligned loads. Chunks are checked branch-free and
 * searched only when one holds a hit. */
#define SCAN_CHUNK 4096
#define DEFINE_SCAN(fn, T, MASK)                                                  \
    static int64_t fn(const void *p, int64_t n)                                  \
    {                                                                             \
        const uint8_t *b = p;                                                     \
        for (int64_t c0 = 0; c0 < n; c0 += SCAN_CHUNK) {                          \
            int64_t c1 = n - c0 < SCAN_CHUNK ? n : c0 + SCAN_CHUNK;               \
            int hit = 0;                                                          \
            for (int64_t i = c0; i < c1; i++) {                                   \
                T v;                                                              \
                memcpy(&v, b + (size_t)i * sizeof v, sizeof v);                   \
                hit |= (v & (MASK)) == (MASK);                                    \
            }                                                                     \
            if (hit)                                                              \
                for (int64_t i = c0; i < c1; i++) {                               \
                    T v;                                                          \
                    memcpy(&v, b + (size_t)i * sizeof v, sizeof v);               \
                    if ((v & (MASK)) == (MASK)) return i;                         \
                }                                                                 \
        }                                                                         \
        return -1;                                                                \
    }
DEFINE_SCAN(scan_u32, uint32_t, 0x7f800000u)
DEFINE_SCAN(scan_u16_bf16, uint16_t, 0x7f80u)
DEFINE_SCAN(scan_u16_f16, uint16_t, 0x7c00u)
DEFINE_SCAN(scan_u8_e4m3, uint8_t, 0x7fu)
#undef DEFINE_SCAN

/* "nan", "inf" or "-inf" for the value at `i` (a hit of the scan above). */
static const char *nonfinite_kind(dsacp_dtype dtype, const void *data, int64_t i)
{
    switch (dtype) {
    case DSACP_F32: {
        uint32_t b;
        memcpy(&b, (const uint8_t *)data + (size_t)i * 4, 4);
        return (b & 0x007fffffu) ? "nan" : (b >> 31) ? "-inf" : "inf";
    }
    case DSACP_BF16: {
        uint16_t b;
        memcpy(&b, (const uint8_t *)data + (size_t)i * 2, 2);
        return (b & 0x007fu) ? "nan" : (b >> 15) ? "-inf" : "inf";
    }
    case DSACP_F16: {
        uint16_t b;
        memcpy(&b, (const uint8_t *)data + (size_t)i * 2, 2);
        return (b & 0x03ffu) ? "nan" : (b >> 15) ? "-inf" : "inf";
    }
    default: return "nan";
    }
}

/* Start of scale row r of an FP8 weight, as bytes (the scales may be unaligned). */
static const uint8_t *scale_row(const dsacp_weight *w, int64_t r)
{
    return (const uint8_t *)(const void *)w->scale + (size_t)(r * w->scale_stride) * sizeof(float);
}

/* The weight's data: first bad flat index or -1; its block scales: *scale_bad (flat index into
 * scale_rows x scale_cols) or -1. */
static int64_t scan_weight(const dsacp_weight *w, int64_t *scale_bad)
{
    const int64_t n = w->rows * w->cols;
    int64_t bad = -1;
    *scale_bad = -1;
    switch (w->dtype) {
    case DSACP_F32: bad = scan_u32(w->data, n); break;
    case DSACP_BF16: bad = scan_u16_bf16(w->data, n); break;
    case DSACP_F16: bad = scan_u16_f16(w->data, n); break;
    case DSACP_F8_E4M3: bad = scan_u8_e4m3(w->data, n); break;
    default: break;
    }
    if (w->dtype == DSACP_F8_E4M3 && w->scale) {
        for (int64_t r = 0; r < w->scale_rows && *scale_bad < 0; r++) {
            int64_t j = scan_u32(scale_row(w, r), w->scale_cols);
            if (j >= 0) *scale_bad = r * w->scale_cols + j;
        }
    }
    return bad;
}

/* A tied lm_head is a view of the embedding: scanned (and named) once, as the embedding. */
static bool scan_skips(const dsacp_model *m, const dsacp_weight *w)
{
    if (!m->cfg.tie_word_embeddings || strcmp(w->name, "lm_head.weight") != 0) return false;
    const dsacp_weight *e = dsacp_model_weight(m, "model.embed_tokens.weight");
    return e && e->data == w->data;
}

/* Bytes the scan reads for one weight: its data, plus the block scales of an FP8 weight. */
static int64_t scan_weight_bytes(const dsacp_model *m, const dsacp_weight *w)
{
    if (scan_skips(m, w)) return 0;
    int64_t b = w->rows * w->cols * (int64_t)dsacp_dtype_size(w->dtype);
    if (w->dtype == DSACP_F8_E4M3 && w->scale) b += w->scale_rows * w->scale_cols * (int64_t)sizeof(float);
    return b;
}

int64_t dsacp_model_scan_bytes(const dsacp_model *m)
{
    int64_t total = 0;
    for (int64_t i = 0; m && i < m->nweights; i++) total += scan_weight_bytes(m, &m->weights[i]);
    return total;
}

int dsacp_model_scan_finite(const dsacp_model *m, dsacp_scan_progress_fn progress, dsacp_scan_bad_fn on_bad,
                            void *ctx)
{
    if (!m) return dsacp_error(DSACP_EINVAL, "dsacp_model_scan_finite: NULL model");
    const int64_t n = m->nweights, total = dsacp_model_scan_bytes(m);
    int64_t *bad = malloc((size_t)(n > 0 ? n : 1) * 2 * sizeof *bad);
    if (!bad) return dsacp_error(DSACP_ENOMEM, "%s: out of memory for the non-finite scan", m->dir);
    int64_t done = 0;
    int reporting = 0; /* one caller of `progress` at a time */
    if (progress) progress(0, total, ctx);
    /* Weights are independent: scan them in parallel, report in name order. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; i++) {
        const dsacp_weight *w = &m->weights[i];
        if (scan_skips(m, w)) {
            bad[2 * i] = bad[2 * i + 1] = -1;
            continue;
        }
        bad[2 * i] = scan_weight(w, &bad[2 * i + 1]);
        int64_t now = __atomic_add_fetch(&done, scan_weight_bytes(m, w), __ATOMIC_RELAXED);
        if (progress && !__atomic_exchange_n(&reporting, 1, __ATOMIC_ACQUIRE)) {
            progress(now, total, ctx);
            __atomic_store_n(&reporting, 0, __ATOMIC_RELEASE);
        }
    }
    if (progress) progress(total, total, ctx);
    /* Every non-finite tensor in name order; the first one is the error. */
    char first[512] = "", msg[512];
    for (int64_t i = 0; i < n; i++) {
        const dsacp_weight *w = &m->weights[i];
        for (int part = 0; part < 2; part++) {
            int64_t k = bad[2 * i + part];
            if (k < 0) continue;
            if (part == 0) {
                snprintf(msg, sizeof msg, "%s: non-finite value (%s) at index %lld", w->name,
                         nonfinite_kind(w->dtype, w->data, k), (long long)k);
            } else {
                size_t len = strlen(w->name);
                int stem = (int)(len >= 7 && strcmp(w->name + len - 7, ".weight") == 0 ? len - 7 : len);
                snprintf(msg, sizeof msg, "%.*s.weight_scale_inv: non-finite value (%s) at index %lld", stem,
                         w->name, nonfinite_kind(DSACP_F32, scale_row(w, k / w->scale_cols), k % w->scale_cols),
                         (long long)k);
            }
            if (!first[0]) memcpy(first, msg, sizeof first);
            if (on_bad) on_bad(msg, ctx);
        }
    }
    free(bad);
    return first[0] ? dsacp_error(DSACP_ERANGE, "%s", first) : DSACP_OK;
}

int dsacp_model_check_finite(const dsacp_model *m)
{
    if (!m) return dsacp_error(DSACP_EINVAL, "dsacp_model_check_finite: NULL model");
    return dsacp_model_scan_finite(m, NULL, NULL, NULL);
}

/*
 * kernels.c -- the scalar ISA file: the reference kernels (the definition the SIMD variants are
 * tested against) and the scalar kernel table. Every loop keeps a reduction order that depends
 * only on its own row (see kernels.h). Calls kernels_linear.c (dsacp_dot_f32, the scalar
 * linear), numerics and core.
 */
#include "kernels/kernels_isa.h"
#include "numerics/numerics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dsacp_rmsnorm_scalar(float *y, const float *x, const float *weight, int64_t n, double eps)
{
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) y[i] = weight[i] * (x[i] * r);
}

void dsacp_layernorm(float *y, const float *x, const float *weight, const float *bias, int64_t n,
                     double eps)
{
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    var /= (double)n;
    double r = 1.0 / sqrt(var + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (float)(((double)x[i] - mean) * r) * weight[i] + bias[i];
}

/* ---- top-k ---- */

int dsacp_cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Quickselect: after it, keys[0..k) are the k largest (unordered). */
static void select_largest(uint64_t *keys, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        uint64_t pivot = keys[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (keys[i] > pivot) i++;
            while (keys[j] < pivot) j--;
            if (i <= j) {
                uint64_t t = keys[i];
                keys[i] = keys[j];
                keys[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* The allocation-free O(nk) scan: out[0..m) holds the best m positions seen so far; a new
 * position replaces the worst of them only when its key is strictly larger (an equal key at a
 * later position never wins, which keeps ties at the lower index). */
static int64_t topk_scan(const float *scores, int64_t n, int64_t k, int32_t *out)
{
    int64_t m = 0, worst = 0;
    uint32_t worst_key = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint32_t key = isnan(scores[i]) ? 0 : dsacp_float_key(scores[i]);
        if (m < k) {
            out[m++] = (int32_t)i;
        } else {
            if (key <= worst_key) continue;
            out[worst] = (int32_t)i;
        }
        if (m < k) continue;
        /* The worst: smallest key, and among equal keys the highest position. */
        worst = 0;
        worst_key = isnan(scores[out[0]]) ? 0 : dsacp_float_key(scores[out[0]]);
        for (int64_t j = 1; j < k; j++) {
            const uint32_t kj = isnan(scores[out[j]]) ? 0 : dsacp_float_key(scores[out[j]]);
            if (kj < worst_key || (kj == worst_key && out[j] > out[worst])) {
                worst = j;
                worst_key = kj;
            }
        }
    }
    qsort(out, (size_t)m, sizeof *out, dsacp_cmp_i32);
    return m;
}

int64_t dsacp_topk_select_ref_ws(const float *scores, int64_t n, int64_t k, int32_t *out, uint64_t *work)
{
    if (k > n) k = n;
    if (k <= 0) return 0;
    if (!work) return topk_scan(scores, n, k, out);
    uint64_t *keys = work;
    for (int64_t i = 0; i < n; i++) {
        uint32_t key = isnan(scores[i]) ? 0 : dsacp_float_key(scores[i]);
        /* Ties: the lower position has the larger ~pos, so it sorts first. */
        keys[i] = ((uint64_t)key << 32) | (uint32_t)~(uint32_t)i;
    }
    if (k < n) select_largest(keys, n, k);
    for (int64_t i = 0; i < k; i++) out[i] = (int32_t)~(uint32_t)(keys[i] & 0xffffffffu);
    qsort(out, (size_t)k, sizeof *out, dsacp_cmp_i32);
    return k;
}

int64_t dsacp_topk_select_ref(const float *scores, int64_t n, int64_t k, int32_t *out)
{
    if (k > n) k = n;
    if (k <= 0) return 0;
    /* Without memory for the keys, the same selection by the O(nk) scan. */
    uint64_t *keys = dsacp_alloc((size_t)n * sizeof *keys);
    int64_t m = dsacp_topk_select_ref_ws(scores, n, k, out, keys);
    dsacp_free(keys);
    return m;
}

/* Radix select: the k-th largest key is found digit by digit (11, 11, 10 bits) with one
 * histogram pass each over the elements whose higher digits equal the prefix found so far. */
/* dsacp_float_key without branches on the sign (random scores would mispredict half of them);
 * NaN maps to 0, below every number. */
static inline uint32_t topk_key(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    b = f == 0.0f ? 0u : b;
    uint32_t key = b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
    return f != f ? 0u : key;
}

/* Finds the k-th largest of keys[0..n) given the histogram of its first digit; returns it and
 * sets *need to how many keys equal to it belong to the top k. */
static uint32_t radix_kth(const uint32_t *keys, const int32_t *cand, int64_t nc, const uint32_t *hist0,
                          int64_t k, int64_t *need_out)
{
    static const int shift[3] = {21, 10, 0};
    static const uint32_t bins[3] = {2048, 2048, 1024};
    uint32_t hist[2048];
    uint32_t prefix = 0, pmask = 0;
    int64_t need = k;
    for (int d = 0; d < 3; d++) {
        const int sh = shift[d];
        const uint32_t dm = bins[d] - 1;
        const uint32_t *h = hist0;
        if (d > 0) {
            memset(hist, 0, sizeof hist);
            for (int64_t c = 0; c < nc; c++) {
                uint32_t key = keys[cand[c]];
                if ((key & pmask) == prefix) hist[(key >> sh) & dm]++;
            }
            h = hist;
        }
        int64_t b = (int64_t)bins[d] - 1;
        while (b > 0 && (int64_t)h[b] < need) need -= h[b--];
        prefix |= (uint32_t)b << sh;
        pmask |= dm << sh;
    }
    *need_out = need;
    return prefix;
}

size_t dsacp_topk_ws_bytes(int64_t n) { return 2 * (size_t)(n > 0 ? n : 1) * sizeof(uint32_t); }

int64_t dsacp_topk_select_ws(const float *scores, int64_t n, int64_t k, int32_t *restrict out, void *work)
{
    if (k > n) k = n;
    if (k <= 0) return 0;
    if (k == n) {
        for (int64_t i = 0; i < n; i++) out[i] = (int32_t)i;
        return n;
    }
    /* The workspace never overlaps out (restrict): what let the compiler keep the old malloc'd
     * keys apart from out. */
    uint32_t *restrict keys = work;
    /* Pass 1: keys and the histogram of their top 11 bits (4 interleaved copies so equal bins
     * in a row do not serialize on one counter). */
    uint32_t h4[4][2048], hist0[2048];
    memset(h4, 0, sizeof h4);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) {
            uint32_t key = topk_key(scores[i + l]);
            keys[i + l] = key;
            h4[l][key >> 21]++;
        }
    for (; i < n; i++) {
        keys[i] = topk_key(scores[i]);
        h4[0][keys[i] >> 21]++;
    }
    for (int b = 0; b < 2048; b++) hist0[b] = h4[0][b] + h4[1][b] + h4[2][b] + h4[3][b];
    /* The first digit's bin; its members are the candidates for the lower digits (in out when
     * they fit its k entries, else in the workspace's second half). */
    int64_t need0 = k, b0 = 2047;
    while (b0 > 0 && (int64_t)hist0[b0] < need0) need0 -= hist0[b0--];
    int32_t *cand = (int64_t)hist0[b0] > k ? (int32_t *)(keys + n) : out;
    int64_t nc = 0;
    for (int64_t j = 0; j < n; j++)
        if ((keys[j] >> 21) == (uint32_t)b0) cand[nc++] = (int32_t)j;
    int64_t need;
    uint32_t kth = radix_kth(keys, cand, nc, hist0, k, &need);
    /* Every larger key, and the first `need` equal ones, in position order. */
    int64_t m = 0;
    for (int64_t j = 0; j < n; j++) {
        uint32_t key = keys[j];
        if (key > kth || (key == kth && need-- > 0)) out[m++] = (int32_t)j;
    }
    return m;
}

int64_t dsacp_topk_select(const float *scores, int64_t n, int64_t k, int32_t *out)
{
    if (k >= n || k <= 0) return dsacp_topk_select_ws(scores, n, k, out, NULL);
    void *work = dsacp_alloc(dsacp_topk_ws_bytes(n));
    if (!work) return dsacp_topk_select_ref(scores, n, k, out);
    int64_t m = dsacp_topk_select_ws(scores, n, k, out, work);
    dsacp_free(work);
    return m;
}

/* ---- indexer ---- */

static void index_scores_scalar(const float *q, const float *w, int64_t Hi, int64_t di, const void *keys,
                                const float *kscales, int64_t n, float *out)
{
    const float *lut = dsacp_e4m3_table();
    float krow[1024];
    for (int64_t j = 0; j < n; j++) {
        const float *k;
        if (kscales) {
            const uint8_t *k8 = (const uint8_t *)keys + j * di;
            for (int64_t i = 0; i < di; i++) krow[i] = lut[k8[i]];
            k = krow;
        } else {
            k = (const float *)keys + j * di;
        }
        float s = 0;
        for (int64_t h = 0; h < Hi; h++) {
            float d = dsacp_dot_f32(q + h * di, k, di);
            s += w[h] * (d > 0 ? d : 0);
        }
        out[j] = kscales ? s * kscales[j] : s;
    }
}

/* ---- sparse MLA ---- */

static size_t mla_bytes_scalar(int64_t n, int64_t H, int64_t dc, int64_t dr)
{
    return (size_t)(n > 0 ? n : 1) * sizeof(float);
}

static void sparse_mla_scalar(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                              float scale, float *o, float *lse, float *work)
{
    const int64_t dk = dc + dr;
    for (int64_t h = 0; h < H; h++) {
        float *oh = o + h * dc;
        memset(oh, 0, (size_t)dc * sizeof(float));
        if (n == 0) {
            lse[h] = -INFINITY;
            continue;
        }
        const float *qh = q + h * dk;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            work[j] = dsacp_dot_f32(qh, kv + j * dk, dk) * scale;
            if (work[j] > mx) mx = work[j];
        }
        double sum = 0;
        for (int64_t j = 0; j < n; j++) {
            work[j] = expf(work[j] - mx);
            sum += work[j];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < n; j++) {
            float p = work[j] * inv;
            const float *c = kv + j * dk;
            for (int64_t i = 0; i < dc; i++) oh[i] += p * c[i];
        }
        lse[h] = mx + (float)log(sum);
    }
}

static void axpy_scalar(float *o, const float *src, float wgt, int64_t d)
{
    for (int64_t i = 0; i < d; i++) o[i] += wgt * src[i];
}

void dsacp_lse_merge_axpy(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d, float *o,
                          float *lse, void (*axpy)(float *o, const float *src, float wgt, int64_t d))
{
    for (int64_t h = 0; h < H; h++) {
        float mx = -INFINITY;
        for (int64_t r = 0; r < R; r++)
            if (lse_parts[r * H + h] > mx) mx = lse_parts[r * H + h];
        float *oh = o + h * d;
        memset(oh, 0, (size_t)d * sizeof(float));
        if (mx == -INFINITY) {
            lse[h] = -INFINITY;
            continue;
        }
        double sum = 0;
        for (int64_t r = 0; r < R; r++) sum += exp((double)lse_parts[r * H + h] - mx);
        const float total = mx + (float)log(sum);
        for (int64_t r = 0; r < R; r++) {
            const float l = lse_parts[r * H + h];
            if (l == -INFINITY) continue;
            axpy(oh, o_parts + (r * H + h) * d, expf(l - total), d);
        }
        lse[h] = total;
    }
}

void dsacp_lse_merge_scalar(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d,
                            float *o, float *lse)
{
    dsacp_lse_merge_axpy(o_parts, lse_parts, R, H, d, o, lse, axpy_scalar);
}

/* ---- gemv_t ---- */

static void gemv_t_scalar(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y)
{
    for (int64_t j = 0; j < n; j++) y[j] = 0;
    for (int64_t i = 0; i < m; i++) {
        const float a = x[i], *row = A + i * lda;
        for (int64_t j = 0; j < n; j++) y[j] += a * row[j];
    }
}

/* ---- cache row decoders ---- */

void dsacp_bf16_row_scalar(const uint8_t *src, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, src + 2 * i, 2);
        out[i] = dsacp_bf16_to_f32(v);
    }
}

void dsacp_e4m3_row_scalar(const uint8_t *src, const float *scales, int64_t group, int64_t n, float *out)
{
    const float *lut = dsacp_e4m3_table();
    for (int64_t i = 0; i < n; i++) out[i] = lut[src[i]] * scales[i / group];
}

const dsacp_kernel_table dsacp_kernels_scalar = {
    .isa = DSACP_ISA_SCALAR,
    .linear_ws_bytes = dsacp_linear_scalar_ws_bytes,
    .linear = dsacp_linear_scalar_ws,
    .rmsnorm = dsacp_rmsnorm_scalar,
    .gemv_t = gemv_t_scalar,
    .index_transposed = false,
    .index_scores = index_scores_scalar,
    .mla_bytes = mla_bytes_scalar,
    .sparse_mla = sparse_mla_scalar,
    .axpy = axpy_scalar,
    .decode_isa = DSACP_ISA_SCALAR,
    .bf16_row = dsacp_bf16_row_scalar,
    .e4m3_row = dsacp_e4m3_row_scalar,
};

/*
 * kernels -- leaf compute functions over plain buffers (pointers, strides, counts), with no
 * knowledge of requests, steps or ranks: the context-parallel strategies run the same kernels
 * on each rank's shard. Calls core and numerics; the weight view is kernels/weight.h (below
 * src/model, which fills it).
 *
 * Batch invariance: every kernel computes each output row with a reduction order that depends
 * only on that row's own inputs and lengths, never on how many other rows are in the call or on
 * the thread count. A token therefore gets bit-identical projections, index scores and top-k
 * sets whether it arrives in a prefill of 1000 tokens, a chunk of 7 or alone; schedule-invariance
 * of the selected sets rests on this.
 */
#ifndef DSACP_KERNELS_H
#define DSACP_KERNELS_H

#include "kernels/weight.h"

#include <stdint.h>

/* ---- ISA dispatch: one kernel table per ISA, chosen once ----
 * Every kernel with SIMD variants is a slot of dsacp_kernel_table; each ISA file fills its own
 * table (kernels.c: scalar, the reference twins; kernels_avx2.c; kernels_avx512.c, two: with
 * and without AVX512-VBMI's FP8 table decode) and dispatch.c keeps one pointer to the active
 * table, chosen at the first call from the CPU (cpuid through __builtin_cpu_supports),
 * overridable by DSACP_ISA=scalar|avx2|avx512 in the environment (a request above what the CPU
 * supports is lowered to the best it has) or by dsacp_isa_set. The public kernels below call
 * through that pointer; nothing else tests the ISA (but the allocating dsacp_sparse_mla, whose
 * `work` is the scalar twin's scratch). The ISA files never call back into the dispatcher (a SIMD variant that cannot handle an
 * input runs the scalar twin directly). The paged cache's row decoders are slots too, so they
 * follow the same choice. Within one ISA every kernel is deterministic and batch-invariant;
 * between ISAs results differ by summation order only (tolerance-tested in test_kernels_simd). */
typedef enum { DSACP_ISA_SCALAR = 0, DSACP_ISA_AVX2 = 1, DSACP_ISA_AVX512 = 2 } dsacp_isa;

typedef struct dsacp_kernel_table {
    dsacp_isa isa;
    /* dsacp_linear_ws's contract; ws_bytes: what that call needs (0 when nothing). */
    size_t (*linear_ws_bytes)(const dsacp_weight *w, int64_t T, bool act_quant);
    int (*linear)(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                  bool act_quant, void *ws, size_t ws_bytes);
    void (*rmsnorm)(float *y, const float *x, const float *weight, int64_t n, double eps);
    void (*gemv_t)(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y);
    /* Indexer scores of a packed query: index_transposed says the layout dsacp_index_query_pack
     * writes for this table (q [di][Hp] and w [Hp], Hp = Hi rounded up to 16, zero padded;
     * otherwise q [Hi][di] and w [Hi] as given); H is Hp or Hi accordingly. */
    bool index_transposed;
    void (*index_scores)(const float *q, const float *w, int64_t H, int64_t di, const void *keys,
                         const float *kscales, int64_t n, float *out);
    /* Sparse MLA on a 64-byte aligned scratch of mla_bytes(n, H, dc, dr) bytes. */
    size_t (*mla_bytes)(int64_t n, int64_t H, int64_t dc, int64_t dr);
    void (*sparse_mla)(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr, float scale,
                       float *o, float *lse, float *buf);
    /* o[i] += wgt * src[i], i < d: the LSE merge's weighted sum. */
    void (*axpy)(float *o, const float *src, float wgt, int64_t d);
    /* Cache row decoders (cache/kv_cache.c): n bf16 -> f32; n e4m3 bytes times the F32 scale of
     * their group of `group` (e4m3 * scale, one rounding). Every ISA gives the same floats;
     * decode_isa names the decoders this table runs (dsacp_kv_decode_isa). */
    dsacp_isa decode_isa;
    void (*bf16_row)(const uint8_t *src, int64_t n, float *out);
    void (*e4m3_row)(const uint8_t *src, const float *scales, int64_t group, int64_t n, float *out);
} dsacp_kernel_table;

/* The active table (chosen at the first call; see above). */
const dsacp_kernel_table *dsacp_kernels(void);
/* The best ISA this CPU runs (AVX-512 needs F, BW, VL, DQ and FMA; AVX2 needs AVX2, FMA, F16C). */
dsacp_isa dsacp_isa_best(void);
/* The ISA the kernels use now (dsacp_kernels()->isa). */
dsacp_isa dsacp_isa_active(void);
/* Selects the ISA for all later kernel calls (not while kernels run on other threads);
 * DSACP_EUNSUPPORTED when the CPU lacks it (nothing changes). */
int dsacp_isa_set(dsacp_isa isa);
/* "scalar", "avx2", "avx512". */
const char *dsacp_isa_name(dsacp_isa isa);

/* ---- threads: no allocation, no nested region ----
 * dsacp_kernel_threads: the threads a kernel may split over -- 1 inside any parallel region
 * (active or not), else omp_get_max_threads(). dsacp_parallel_for runs fn(ctx, i) for every
 * i < n: split statically over a top-level region when `split` (the caller's "large enough"),
 * n > 1 and dsacp_kernel_threads() > 1; otherwise in order on the calling thread, opening no
 * region (GCC's libgomp allocates a team for a region of one thread and for a nested one; it
 * reuses the full top-level team). The kernels use it for every split, so a step path that
 * takes its scratch from a workspace allocates nothing in them; callers above src/kernels may
 * use it for their own loops the same way. */
typedef void (*dsacp_index_fn)(void *ctx, int64_t i);
int dsacp_kernel_threads(void);
void dsacp_parallel_for(int64_t n, bool split, dsacp_index_fn fn, void *ctx);

/* Dot product of n floats with a fixed 16-lane summation order. */
float dsacp_dot_f32(const float *a, const float *b, int64_t n);

/* y[t][o] = sum_i W[o][i] * x[t][i] for t < T, o < W->rows, W in its stored dtype (F32, BF16,
 * F16, or F8_E4M3 with block scales). x: F32 [T][W->cols] row stride ldx; y: F32 [T][W->rows]
 * row stride ldy. With act_quant (the deployed mode's FP8 layers) each x row is first rounded
 * through e4m3 in groups of 128 (power-of-two scales), as DeepSeek's act_quant does; it is
 * applied only where dsacp_act_quant_applies(W, act_quant) (kernels/weight.h).
 *
 * dsacp_linear_ws takes its scratch from the caller: ws holds dsacp_linear_ws_bytes(W, T,
 * act_quant) bytes (any alignment; 0 bytes, ws may be NULL, for the row kernels of few tokens),
 * enough for every ISA this CPU runs and the thread count at the time of sizing; with more
 * threads than that, the extra threads sit out (same bits). It allocates nothing and fails only
 * on a short workspace (DSACP_EINVAL). dsacp_linear allocates what the active ISA needs per call
 * (DSACP_ENOMEM without it). */
size_t dsacp_linear_ws_bytes(const dsacp_weight *w, int64_t T, bool act_quant);
int dsacp_linear_ws(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                    bool act_quant, void *ws, size_t ws_bytes);
int dsacp_linear(const dsacp_weight *w, const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                 bool act_quant);
/* The variants. The scalar twin (the reference, dsacp_kernels_scalar.linear) decodes blocks of
 * 16 weight rows (dsacp_weight_row_f32) into a per-thread buffer of the workspace and sums each
 * output with dsacp_dot_f32. The AVX-512 variant reads the stored weight once, dequantizing 16
 * columns at a time in registers (BF16: shift; E4M3: bit manipulation times the block scale, the
 * same single rounding as dsacp_weight_row_f32), and sums y[t][o] in 16 lanes (lane l takes
 * columns i = l mod 16, FMA, masked tail) reduced by a fixed tree -- the same instruction
 * sequence for every t, whatever T is. With AVX512-VBMI and blocks of a multiple of 64, E4M3
 * instead decodes 64 bytes at a time through vpermi2b tables to exact bf16-valued floats, sums
 * each 128-block unscaled and applies the block scale once per block (kernels_avx512.c, "table
 * decode") -- again one chain per output whatever T is. The AVX2 variant keeps the 16-lane chains
 * in ymm pairs. From DSACP_GEMM_MIN_T tokens the SIMD variants run the blocked GEMM with the same
 * chains (gemm_avx2.c). Threads split the output rows (only when the call is large enough and
 * not already inside a parallel region: dsacp_parallel_for). */

/* Lightning-indexer scores of one query against n keys (docs/dsa-math.md 3.5):
 *   q:       F32 [Hi][di]  the query heads (deployed mode: the e4m3 values, scale folded into w)
 *   w:       F32 [Hi]      folded head weights
 *   keys:    kscales == NULL: F32 [n][di]; otherwise E4M3 bytes [n][di] with F32 scales kscales[n]
 *   out:     F32 [n]       out[j] = (kscales ? kscales[j] : 1) * sum_h w[h] * ReLU(q[h] . k[j])
 * Each out[j] depends only on q, w and key j (never on n, j or the thread count). Serial: the
 * caller splits the keys over threads. A kernel never changes its answer for want of memory:
 * the packed query (SIMD ISAs) sits on the stack for real shapes, else is allocated, and without
 * memory the call returns DSACP_ENOMEM (out untouched). The _ws forms take the packed query's
 * room from the caller (dsacp_index_query_bytes(Hi, di), 64-byte aligned) and allocate nothing. */
int dsacp_index_scores(const float *q, const float *w, int64_t Hi, int64_t di, const void *keys,
                       const float *kscales, int64_t n, float *out);
int dsacp_index_scores_ws(const float *q, const float *w, int64_t Hi, int64_t di, const void *keys,
                          const float *kscales, int64_t n, float *out, void *work);
/* Tq queries (q: F32 [Tq][Hi][di], w: F32 [Tq][Hi]) against the same n keys; out: F32 [Tq][ldo]
 * with out[t][j] bit-identical to dsacp_index_scores on query t alone. Allocates
 * dsacp_index_scores_multi_bytes(Tq, Hi, di) (DSACP_ENOMEM without it); the _ws form takes that
 * many bytes, 64-byte aligned, from the caller. */
int dsacp_index_scores_multi(const float *q, const float *w, int64_t Tq, int64_t Hi, int64_t di,
                             const void *keys, const float *kscales, int64_t n, float *out, int64_t ldo);
size_t dsacp_index_scores_multi_bytes(int64_t Tq, int64_t Hi, int64_t di);
int dsacp_index_scores_multi_ws(const float *q, const float *w, int64_t Tq, int64_t Hi, int64_t di,
                                const void *keys, const float *kscales, int64_t n, float *out, int64_t ldo,
                                void *work);
/* The same with the query packed once (a decode token scores its paged key blocks one call per
 * block): dsacp_index_query_pack lays q and w out for the active ISA (AVX-512: q transposed
 * to [di][Hp], Hp = Hi rounded up to 16, zero padded) into `packed`, which must hold
 * dsacp_index_query_bytes(Hi, di) bytes, 64-byte aligned; dsacp_index_scores_packed then gives
 * exactly dsacp_index_scores's results. di <= 1024. */
size_t dsacp_index_query_bytes(int64_t Hi, int64_t di);
void dsacp_index_query_pack(const float *q, const float *w, int64_t Hi, int64_t di, void *packed);
void dsacp_index_scores_packed(const void *packed, const void *keys, const float *kscales, int64_t n,
                               float *out);

/* y = x / sqrt(mean(x^2) + eps) * weight, n values (weight: dsacp_weight of n, any float dtype). */
void dsacp_rmsnorm(float *y, const float *x, const float *weight, int64_t n, double eps);
void dsacp_rmsnorm_scalar(float *y, const float *x, const float *weight, int64_t n, double eps);
/* LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias (biased variance). */
void dsacp_layernorm(float *y, const float *x, const float *weight, const float *bias, int64_t n,
                     double eps);

/* Top-k by descending score among scores[0..n), ties to the lower index; writes the min(k, n)
 * selected indices in ASCENDING order to out and returns their count. NaN scores never win.
 * A radix select over dsacp_float_key: three histogram passes (11, 11, 10 bits) find the k-th
 * largest key, one ordered pass writes the keys above it and the lowest positions equal to it.
 * dsacp_topk_select_ws takes its scratch from the caller: work holds dsacp_topk_ws_bytes(n)
 * bytes (4-byte aligned) and nothing is allocated. dsacp_topk_select allocates that scratch;
 * when that fails it gives the same selection through dsacp_topk_select_ref (a selection is
 * exact: every path gives the same positions). */
size_t dsacp_topk_ws_bytes(int64_t n);
int64_t dsacp_topk_select_ws(const float *scores, int64_t n, int64_t k, int32_t *restrict out, void *work);
int64_t dsacp_topk_select(const float *scores, int64_t n, int64_t k, int32_t *out);
/* The same selection by quickselect + sort (the previous implementation, kept as a test
 * reference) over n uint64 keys in `work`; with work == NULL by an allocation-free O(nk) scan.
 * dsacp_topk_select_ref allocates the keys and runs the scan when that fails. */
int64_t dsacp_topk_select_ref(const float *scores, int64_t n, int64_t k, int32_t *out);
int64_t dsacp_topk_select_ref_ws(const float *scores, int64_t n, int64_t k, int32_t *out, uint64_t *work);
/* Order-preserving map of a float to uint32 (larger float -> larger key); -0 and +0 map to
 * the same key, so they tie as floats do. */
static inline uint32_t dsacp_float_key(float f)
{
    uint32_t b;
    if (f == 0.0f) f = 0.0f;
    __builtin_memcpy(&b, &f, sizeof b);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Sparse MLA for one query token over n gathered latent rows (absorbed form, docs/dsa-math.md 3.6):
 *   q:    F32 [H][dc + dr]  rows [q_abs | q_pe]
 *   kv:   F32 [n][dc + dr]  rows [c | k_pe] of the selected positions
 *   o:    F32 [H][dc]       softmax-weighted sum of c
 *   lse:  F32 [H]           natural-log logsumexp of the scaled logits (-inf when n == 0, o = 0)
 *   work: F32 [n] scratch (enough for the scalar ISA; the SIMD ISAs allocate theirs)
 * logits = (q . kv) * scale. DSACP_ENOMEM (o and lse untouched) when a SIMD ISA's scratch
 * cannot be allocated; the step path uses dsacp_sparse_mla_ws, which allocates nothing. */
int dsacp_sparse_mla(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                      float scale, float *o, float *lse, float *work);
/* The same with all scratch from the caller, for every ISA: `work` holds
 * dsacp_sparse_mla_work_bytes(n, H, dc, dr) bytes (any alignment). It allocates nothing and
 * fails only on a short workspace (DSACP_EINVAL). The size covers every ISA this CPU runs. */
size_t dsacp_sparse_mla_work_bytes(int64_t n, int64_t H, int64_t dc, int64_t dr);
int dsacp_sparse_mla_ws(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr, float scale,
                        float *o, float *lse, void *work, size_t work_bytes);
/* The deployed-mode twin (docs/numerics.md, "The bf16-dot chain"; FlashMLA's arithmetic): the
 * same operands and results, computed as D = dc + dr:
 *   1. qb[h], kb[s]: q[h] and kv[s] rounded to bf16 (nearest even; an odd D padded with +0; the
 *      latents of a bf16 or fp8_ds_mla cache are bf16 values already);
 *   2. S[h][s] = fl(dsacp_bf16dot_scalar(qb[h], kb[s], ceil(D/2)) * scale);
 *   3. m_h = max over s of S[h][s] (NaN never wins);
 *   4. p[h][s] = dsacp_exp_model(S[h][s] - m_h) (kernels/mla_bf16.h: a fixed f32 sequence,
 *      within 2 ulp of expf, +0 below 2^-126);
 *   5. l_h = sum over s of p[h][s] in f32: 16 lanes (lane s mod 16, increasing s, from +0) and
 *      the tree l += l + 8, + 4, + 2, + 1;
 *   6. o[h][d] = an f32 fmaf chain over the key pairs j (an odd n padded with a +0 key), p kept
 *      f32 (not rounded: more accurate than FlashMLA's bf16 P, and the context-parallel merges
 *      of partial softmaxes stay within f32 reassociation of one process): 16 lanes (lane j mod
 *      16, increasing j, padded with zero pairs to a multiple of 16), each pair
 *      acc = fmaf(p[h][2j + 1], kb[2j + 1][d], acc) then acc = fmaf(p[h][2j], kb[2j][d], acc)
 *      (IEEE, no DAZ/FTZ), the lanes by the plain f32 tree of step 5, divided by l_h (IEEE);
 *   7. lse_h = m_h + logf(l_h); a head whose l_h is NaN gives o = lse = NaN (0x7FC00000); n == 0
 *      gives o = 0, lse = -inf.
 * Every ISA and thread count gives these bits: q.k runs as a small GEMM across heads in the zmm
 * FMA form where the operands are plain (dsacp_bf16dot_plain_ok), VDPBF16PS where
 * dsacp_bf16dot_hw_level allows, the ymm FMA form on AVX2, the model's kernels otherwise; p.v as
 * one in zmm FMAs (AVX-512), ymm FMAs (AVX2) or fmaf, the chain's bits by construction; head
 * groups split over threads (dsacp_parallel_for). `work` holds
 * dsacp_sparse_mla_bf16_work_bytes(n, H, dc, dr) bytes (any alignment; every ISA this CPU runs,
 * any thread count); nothing is allocated; DSACP_EINVAL on a short workspace. */
size_t dsacp_sparse_mla_bf16_work_bytes(int64_t n, int64_t H, int64_t dc, int64_t dr);
int dsacp_sparse_mla_bf16_ws(const float *q, const float *kv, int64_t n, int64_t H, int64_t dc, int64_t dr,
                             float scale, float *o, float *lse, void *work, size_t work_bytes);
/* The variants. The AVX-512 one vectorizes across heads: it transposes q once, runs
 * chunks of 64 keys through S^T = K Q^T (register tile 6 keys x 64 heads, sequential over the
 * dc + dr dims), an online softmax per head, and O^T += V^T P^T (tile 6 latent dims x 64 heads,
 * sequential over keys); each head's result depends only on its own q row, kv and n. It splits
 * head tiles over threads outside any parallel region (dsacp_parallel_for). */

/* qsort comparator of int32 in ascending order (the one copy; selections sort positions). */
int dsacp_cmp_i32(const void *a, const void *b);

/* y[j] = sum_i x[i] * A[i][j] for j < n (A: F32 [m][n] row stride lda), summed over i in
 * order for every j (so y[j] does not depend on n or on j's SIMD lane). */
void dsacp_gemv_t(const float *A, int64_t lda, const float *x, int64_t m, int64_t n, float *y);

/* Merge of partial attention results over R parts (context parallelism): per head
 * lse = log sum_r exp(lse_r), o = sum_r exp(lse_r - lse) o_r, in fixed part order; parts with
 * lse_r = -inf contribute nothing; all -inf gives o = 0, lse = -inf.
 *   o_parts: F32 [R][H][d], lse_parts: F32 [R][H] -> o: F32 [H][d], lse: F32 [H]. */
void dsacp_lse_merge(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d,
                     float *o, float *lse);
void dsacp_lse_merge_scalar(const float *o_parts, const float *lse_parts, int64_t R, int64_t H, int64_t d,
                     float *o, float *lse);

#endif

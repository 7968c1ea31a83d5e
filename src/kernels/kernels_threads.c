/*
 * kernels_threads.c -- how a kernel splits its work over OpenMP threads without allocating.
 * GCC's libgomp keeps the team of a top-level region with the full thread count and reuses it,
 * but allocates a new team for every region that runs with one thread (an if clause that is
 * false, num_threads(1), OMP_NUM_THREADS=1) and for every region opened inside another one. So
 * a kernel opens a region only at the top level and only with more than one thread to give it;
 * otherwise it runs the same loop on the calling thread (same bits: kernels are thread-count
 * invariant).
 */
#include "kernels/kernels.h"

#include <omp.h>

int dsacp_kernel_threads(void) { return omp_get_level() == 0 ? omp_get_max_threads() : 1; }

void dsacp_parallel_for(int64_t n, bool split, dsacp_index_fn fn, void *ctx)
{
    if (split && n > 1 && dsacp_kernel_threads() > 1) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    for (int64_t i = 0; i < n; i++) fn(ctx, i);
}

/*
 * isa.c -- the bottom of src/kernels' ISA dispatch (kernels.h, "ISA dispatch"): the best ISA
 * this CPU runs (cpuid), the active one -- chosen once, at the first call, from that and
 * DSACP_ISA, switched by dsacp_isa_set -- and the ISA names. Every file of src/kernels may ask
 * the active ISA here; dispatch.c maps it to its kernel table. Calls core only.
 */
#include "kernels/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

static int active = -1; /* a dsacp_isa; -1: not chosen yet */

dsacp_isa dsacp_isa_best(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
        return DSACP_ISA_AVX512;
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C); /* clang lacks "f16c" here */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return DSACP_ISA_AVX2;
#endif
    return DSACP_ISA_SCALAR;
}

/* The start-up choice: the best ISA, lowered to DSACP_ISA's when that names a lower one. */
static dsacp_isa choose(void)
{
    dsacp_isa best = dsacp_isa_best(), want = best;
    const char *env = getenv("DSACP_ISA");
    if (env && *env) {
        if (!strcmp(env, "scalar")) want = DSACP_ISA_SCALAR;
        else if (!strcmp(env, "avx2")) want = DSACP_ISA_AVX2;
        else if (!strcmp(env, "avx512")) want = DSACP_ISA_AVX512;
    }
    return want > best ? best : want;
}

dsacp_isa dsacp_isa_active(void)
{
    int a = __atomic_load_n(&active, __ATOMIC_ACQUIRE);
    if (a >= 0) return (dsacp_isa)a;
    a = (int)choose(); /* racing first calls choose the same ISA */
    __atomic_store_n(&active, a, __ATOMIC_RELEASE);
    return (dsacp_isa)a;
}

int dsacp_isa_set(dsacp_isa isa)
{
    if ((int)isa < DSACP_ISA_SCALAR || isa > DSACP_ISA_AVX512)
        return dsacp_error(DSACP_EINVAL, "unknown ISA %d", (int)isa);
    if (isa > dsacp_isa_best())
        return dsacp_error(DSACP_EUNSUPPORTED, "this CPU does not support %s", dsacp_isa_name(isa));
    __atomic_store_n(&active, (int)isa, __ATOMIC_RELEASE);
    return DSACP_OK;
}

const char *dsacp_isa_name(dsacp_isa isa)
{
    switch (isa) {
    case DSACP_ISA_SCALAR: return "scalar";
    case DSACP_ISA_AVX2: return "avx2";
    case DSACP_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

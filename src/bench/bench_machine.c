/*
 * bench_machine.c -- what a benchmark report says about the machine (CPU model and flags, cores,
 * the kernels' ISA, the load when it started) and the two process-wide settings a benchmark
 * makes: the kernels' ISA and the OpenMP thread count.
 */
#include "core/core.h"
#include "dsacp_bench.h"
#include "kernels/kernels.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

/* /proc/cpuinfo's first model name and flags. */
static void cpu_model(dsacp_bench_machine *m)
{
    snprintf(m->cpu, sizeof m->cpu, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[4096];
    bool got_model = false, got_flags = false;
    while (fgets(line, sizeof line, f) && !(got_model && got_flags)) {
        if (!got_model && !strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) {
                v += 1 + (v[1] == ' ');
                v[strcspn(v, "\n")] = 0;
                snprintf(m->cpu, sizeof m->cpu, "%s", v);
                got_model = true;
            }
        } else if (!got_flags && !strncmp(line, "flags", 5)) {
            m->avx512_bf16 = strstr(line, " avx512_bf16") != NULL;
            m->avx512_vnni = strstr(line, " avx512_vnni") != NULL;
            got_flags = true;
        }
    }
    fclose(f);
}

void dsacp_bench_machine_describe(dsacp_bench_machine *out)
{
    memset(out, 0, sizeof *out);
    cpu_model(out);
    out->cores = omp_get_num_procs();
    out->isa = dsacp_isa_name(dsacp_isa_active());
    out->isa_best = dsacp_isa_name(dsacp_isa_best());
    out->loadavg = NAN;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &out->loadavg) != 1) out->loadavg = NAN;
        fclose(la);
    }
}

int dsacp_bench_isa_find(const char *name)
{
    static const dsacp_isa isas[] = {DSACP_ISA_SCALAR, DSACP_ISA_AVX2, DSACP_ISA_AVX512};
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++)
        if (!strcmp(name, dsacp_isa_name(isas[i]))) return (int)isas[i];
    return -1;
}

int dsacp_bench_setup(int isa, int64_t threads)
{
    if (threads < 1 || threads > 1 << 20)
        return dsacp_error(DSACP_EINVAL, "bench threads %lld out of range", (long long)threads);
    if (isa >= 0) {
        int rc = dsacp_isa_set((dsacp_isa)isa);
        if (rc) return rc;
    }
    omp_set_num_threads((int)threads);
    return DSACP_OK;
}

/* test_util.c -- see test_util.h. */
#include "test_util.h"

#include "core/core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *tu_tempdir(void)
{
    char tmpl[] = "/tmp/dsacp-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    if (!d) {
        perror("mkdtemp");
        exit(1);
    }
    return strdup(d);
}

void tu_rmtree(const char *dir)
{
    char cmd[4200];
    if (!dir || strncmp(dir, "/tmp/dsacp-test-", 16) != 0) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

char *tu_make_model_cfg(const dsacp_config *cfg, uint64_t seed, dsacp_weight_format fmt)
{
    char *dir = tu_tempdir();
    if (dsacp_model_init(cfg, dir, seed, fmt) != 0) {
        fprintf(stderr, "init-model: %s\n", dsacp_last_error());
        exit(1);
    }
    return dir;
}

char *tu_make_model(const char *preset, uint64_t seed, dsacp_weight_format fmt)
{
    dsacp_config cfg;
    if (dsacp_preset_config(preset, &cfg) != 0) {
        fprintf(stderr, "preset %s: %s\n", preset, dsacp_last_error());
        exit(1);
    }
    return tu_make_model_cfg(&cfg, seed, fmt);
}

const char *tu_source_dir(void)
{
    const char *s = getenv("DSACP_SOURCE_DIR");
    return s && *s ? s : ".";
}

void tu_random_ids(int32_t *ids, int64_t n, int64_t vocab, uint64_t seed)
{
    dsacp_rng rng;
    dsacp_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(dsacp_rng_u64(&rng) % (uint64_t)vocab);
}

double tu_max_rel(const float *a, const double *r, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - r[i]));
        mr = fmax(mr, fabs(r[i]));
    }
    return mr > 0 ? md / mr : md;
}

double tu_max_rel_ff(const float *a, const float *r, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - r[i]));
        mr = fmax(mr, fabs((double)r[i]));
    }
    return mr > 0 ? md / mr : md;
}

double tu_cos_diff(const float *a, const double *r, int64_t n)
{
    double ar = 0, aa = 0;
    for (int64_t i = 0; i < n; i++) {
        ar += a[i] * r[i];
        aa += (double)a[i] * a[i] + r[i] * r[i];
    }
    return aa > 0 ? 1.0 - 2.0 * ar / aa : 0.0;
}

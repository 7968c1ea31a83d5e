/* test_util.h -- helpers shared by the tests: temporary model directories, engine runs of a
 * whole sequence, error measures (docs/dsa-math.md section 8). */
#ifndef DSACP_TEST_UTIL_H
#define DSACP_TEST_UTIL_H

#include "dsacp.h"

#include <stdint.h>

/* Creates a fresh temporary directory (/tmp/dsacp-test-XXXXXX); the caller removes it with
 * tu_rmtree. Exits the test on failure. */
char *tu_tempdir(void);
void tu_rmtree(const char *dir);
/* init-model of a preset into a new temporary directory; returns the directory. */
char *tu_make_model(const char *preset, uint64_t seed, dsacp_weight_format fmt);
/* The same for any configuration (derived fields are recomputed when the model is loaded). */
char *tu_make_model_cfg(const dsacp_config *cfg, uint64_t seed, dsacp_weight_format fmt);
/* The source tree (DSACP_SOURCE_DIR, or "."). */
const char *tu_source_dir(void);

/* Random token ids in [0, vocab). */
void tu_random_ids(int32_t *ids, int64_t n, int64_t vocab, uint64_t seed);

/* Error measures between a (test) and r (reference) over n values:
 *  max_rel: max |a - r| / max |r|;  cos_diff: 1 - 2 sum(ar) / sum(a^2 + r^2). */
double tu_max_rel(const float *a, const double *r, int64_t n);
double tu_max_rel_ff(const float *a, const float *r, int64_t n);
double tu_cos_diff(const float *a, const double *r, int64_t n);

#endif

/*
 * install_app.c -- the program tests/cli/install.sh builds against an installed libdsacp, with
 * nothing on its compile line but `pkg-config --cflags --libs dsacp` (or CMake's dsacp::dsacp).
 * It uses dsacp.h alone: writes the tiny preset's model into argv[1] (dsacp_model_init), loads
 * it, steps one engine over a 5-token prompt and one decode token, and checks every status, the
 * version and that every logit is finite. Prints "ok <version> <logit sum>" and exits 0.
 */
#include <dsacp.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                         \
    do {                                                                                    \
        int st_ = (call);                                                                   \
        if (st_ != DSACP_OK) {                                                              \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, dsacp_status_name(st_), dsacp_last_error()); \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)

static int finite_sum(const float *x, size_t n, double *sum)
{
    *sum = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) return 0;
        *sum += x[i];
    }
    return 1;
}

static int run(const char *dir, dsacp_model *model, float *logits)
{
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.num_blocks = 16;
    dsacp_engine *engine = NULL;
    CHECK(dsacp_engine_create(model, &eo, &engine));
    int64_t id = -1;
    CHECK(dsacp_engine_add_request(engine, &id));
    const int32_t prompt[5] = {1, 2, 3, 4, 5}, next = 6;
    dsacp_step_entry prefill = {id, 5, prompt}, decode = {id, 1, &next};
    CHECK(dsacp_engine_step_last(engine, &prefill, 1, logits, NULL));
    CHECK(dsacp_engine_step_last(engine, &decode, 1, logits, NULL));
    if (dsacp_engine_request_length(engine, id) != 6) {
        fprintf(stderr, "%s: request length %lld, expected 6\n", dir, (long long)dsacp_engine_request_length(engine, id));
        return 1;
    }
    CHECK(dsacp_engine_end_request(engine, id));
    dsacp_engine_free(engine);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: install_app MODEL_DIR\n");
        return 2;
    }
    if (strcmp(dsacp_version(), DSACP_VERSION) != 0) {
        fprintf(stderr, "library %s, headers %s\n", dsacp_version(), DSACP_VERSION);
        return 1;
    }
    dsacp_config cfg;
    CHECK(dsacp_preset_config("tiny", &cfg));
    CHECK(dsacp_model_init(&cfg, argv[1], 1, DSACP_WEIGHTS_F32));
    dsacp_model *model = NULL;
    CHECK(dsacp_model_load(argv[1], &model));
    const size_t vocab = (size_t)dsacp_model_config(model)->vocab_size;
    float *logits = malloc(vocab * sizeof(float));
    if (!logits) return 1;
    int rc = run(argv[1], model, logits);
    double sum = 0;
    if (rc == 0 && !finite_sum(logits, vocab, &sum)) {
        fprintf(stderr, "non-finite logit\n");
        rc = 1;
    }
    free(logits);
    dsacp_model_free(model);
    if (rc == 0) printf("ok %s %.6g\n", dsacp_version(), sum);
    return rc;
}

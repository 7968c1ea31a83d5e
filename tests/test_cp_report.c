/*
 * test_cp_report.c -- the communicator's report (dsacp_comm_report_json, dsacp_comm_set_notes):
 * rank 0 gets one valid JSON text with every rank's counters and the notes' members merged in,
 * the other ranks NULL; notes whose strings hold quotes, backslashes and control characters
 * round-trip exactly; text that is not valid JSON members is refused and leaves the notes as
 * they were. Runs alone and under mpirun at W = 2, 3, 4.
 */
#include "comm/comm.h"
#include "test.h"

#include <jansson.h>

int main(int argc, char **argv)
{
    dsacp_comm *c = NULL;
    REQUIRE_OK(dsacp_comm_create_world(&argc, &argv, &c));
    const int me = dsacp_comm_rank(c), W = dsacp_comm_size(c);

    /* Some traffic, so the counters are not all zero. */
    int v = me;
    CHECK_OK(dsacp_comm_bcast(c, &v, sizeof v, DSACP_PHASE_input));
    CHECK(v == 0);

    /* A model path with a quote, a backslash, a newline and a non-ASCII character, escaped as
     * JSON requires. */
    const char *path = "/m/a\"b\\c\nd\xc3\xa9";
    json_t *note = json_pack("{s:{s:s, s:I}}", "cp", "model", path, "world", (json_int_t)W);
    char *members = json_dumps(note, JSON_COMPACT);
    json_decref(note);
    REQUIRE_OK(members ? 0 : DSACP_ENOMEM);
    /* The members without the object's braces, as dsacp_comm_set_notes takes them. */
    size_t n = strlen(members);
    members[n - 1] = 0;
    CHECK_OK(dsacp_comm_set_notes(c, members + 1));
    free(members);

    /* Invalid members are refused and keep the previous notes. */
    const char *bad[] = {"\"model\": \"/m/a\"b\"", "\"model\": \"/m/a\\q\"", "\"x\": 1,", "\"x\": 1, \"x\": 2",
                         "\"x\": nan", "\"x\": 1} {\"y\": 2"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECKF(dsacp_comm_set_notes(c, bad[i]) == DSACP_EINVAL, "notes '%s' accepted", bad[i]);

    char *text = (char *)"unset";
    const dsacp_comm_counter ctl = dsacp_comm_get_counter(c, DSACP_PHASE_control);
    CHECK_OK(dsacp_comm_report_json(c, &text));
    /* Building the report moves nothing the report would have to count. */
    const dsacp_comm_counter ctl2 = dsacp_comm_get_counter(c, DSACP_PHASE_control);
    CHECK(ctl2.calls == ctl.calls && ctl2.bytes_recv == ctl.bytes_recv && ctl2.bytes_sent == ctl.bytes_sent);
    if (me != 0) {
        CHECK(text == NULL);
    } else {
        json_error_t err;
        json_t *r = text ? json_loads(text, 0, &err) : NULL;
        CHECKF(r != NULL, "report is not JSON: %s", text ? err.text : "(null)");
        if (r) {
            CHECK(json_integer_value(json_object_get(r, "world")) == W);
            json_t *ranks = json_object_get(r, "ranks");
            CHECK(json_is_array(ranks) && (int)json_array_size(ranks) == W);
            for (int q = 0; q < W && json_is_array(ranks); q++) {
                json_t *k = json_object_get(json_object_get(json_array_get(ranks, (size_t)q), "phases"), "input");
                CHECK(json_integer_value(json_object_get(json_array_get(ranks, (size_t)q), "rank")) == q);
                CHECK(json_integer_value(json_object_get(k, "calls")) == (W > 1 ? 1 : 0));
                CHECK(json_integer_value(json_object_get(k, "bytes_recv")) == (W > 1 && q ? (json_int_t)sizeof v : 0));
            }
            json_t *c0 = json_object_get(json_object_get(json_array_get(ranks, 0), "phases"), "control");
            CHECK(json_integer_value(json_object_get(c0, "calls")) == ctl.calls);
            const char *got = json_string_value(json_object_get(json_object_get(r, "cp"), "model"));
            CHECKF(got && strcmp(got, path) == 0, "model path came back as '%s'", got ? got : "(null)");
            CHECK(json_integer_value(json_object_get(json_object_get(r, "cp"), "world")) == W);
            json_decref(r);
        }
        free(text);
    }

    /* Cleared notes: only the counters. */
    CHECK_OK(dsacp_comm_set_notes(c, NULL));
    CHECK_OK(dsacp_comm_report_json(c, &text));
    if (me == 0) {
        json_t *r = text ? json_loads(text, 0, NULL) : NULL;
        CHECK(r && !json_object_get(r, "cp") && json_object_get(r, "ranks"));
        json_decref(r);
    }
    free(text);

    int failed = test_failures_;
    int rc = dsacp_comm_agree(c, failed ? DSACP_EINVAL : DSACP_OK);
    dsacp_comm_free(c);
    if (rc && !failed) {
        fprintf(stderr, "FAIL test_cp_report: another rank failed\n");
        return 1;
    }
    return test_finish("test_cp_report");
}

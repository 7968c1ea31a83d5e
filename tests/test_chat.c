/*
 * test_chat.c -- DeepSeek-V3.2's chat encoding (src/text/chat.c) against expected prompt texts
 * written from DeepSeek's encoding/encoding_dsv32.py (docs/text.md section 2): single and
 * multi-turn, system prompts, thinking and non-thinking, earlier reasoning dropped, the output
 * buffer's sizes, every refusal; and the reader of OpenAI "messages" arrays. With DeepSeek-V3.2's
 * tokenizer.json (DSACP_V32_TOKENIZER, or the copy tests/cli/tokenizer.sh caches in the build
 * tree), the encoded text also tokenizes to the special tokens' ids.
 */
#include "dsacp_text.h"
#include "dsacp_util.h"
#include "test.h"

#include <stdbool.h>

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define USER "<｜User｜>"
#define ASSISTANT "<｜Assistant｜>"
#define THINK "<think>"
#define END_THINK "</think>"

static char text_[4096];

/* The encoded text (NULL on failure, the error printed). */
static const char *encode(const dsacp_chat_message *m, int64_t n, bool thinking, bool gen)
{
    size_t len = 0;
    int rc = dsacp_chat_encode(m, n, thinking, gen, text_, sizeof(text_), &len);
    if (rc) {
        fprintf(stderr, "encode: %s: %s\n", dsacp_status_name(rc), dsacp_last_error());
        return NULL;
    }
    return len == strlen(text_) ? text_ : NULL;
}

#define CHECK_TEXT(got, want)                                                        \
    do {                                                                             \
        const char *g_ = (got);                                                      \
        CHECKF(g_ && strcmp(g_, want) == 0, "got '%s'\nwant '%s'", g_ ? g_ : "(null)", want); \
    } while (0)

/* The call fails with `status` and a message containing `needle`. */
static void check_refused(const dsacp_chat_message *m, int64_t n, bool thinking, bool gen, int status, const char *needle)
{
    size_t len;
    int rc = dsacp_chat_encode(m, n, thinking, gen, text_, sizeof(text_), &len);
    CHECKF(rc == status && strstr(dsacp_last_error(), needle), "rc %s, message '%s', want %s with '%s'",
           dsacp_status_name(rc), dsacp_last_error(), dsacp_status_name(status), needle);
}

static void test_single_turn(void)
{
    dsacp_chat_message one[] = {{"user", "Hi", NULL}};
    CHECK_TEXT(encode(one, 1, false, true), BOS USER "Hi" ASSISTANT END_THINK);
    CHECK_TEXT(encode(one, 1, true, true), BOS USER "Hi" ASSISTANT THINK);
    /* Without the generation prompt the last user turn ends with its text. */
    CHECK_TEXT(encode(one, 1, true, false), BOS USER "Hi");
    dsacp_chat_message sys[] = {{"system", "You are terse.", NULL}, {"user", "2+2?", NULL}};
    CHECK_TEXT(encode(sys, 2, false, true), BOS "You are terse." USER "2+2?" ASSISTANT END_THINK);
    CHECK_TEXT(encode(sys, 2, true, true), BOS "You are terse." USER "2+2?" ASSISTANT THINK);
    dsacp_chat_message empty[] = {{"system", NULL, NULL}, {"user", "", NULL}};
    CHECK_TEXT(encode(empty, 2, false, true), BOS USER ASSISTANT END_THINK);
}

/* Earlier assistant turns never show their reasoning: the user turn before them closed the
 * thinking block (</think>), and only the last user turn opens one. */
static void test_multi_turn(void)
{
    dsacp_chat_message m[] = {
        {"system", "S", NULL},
        {"user", "q1", NULL},
        {"assistant", "a1", "r1"},
        {"user", "q2", NULL},
    };
    CHECK_TEXT(encode(m, 4, true, true), BOS "S" USER "q1" ASSISTANT END_THINK "a1" EOS USER "q2" ASSISTANT THINK);
    CHECK_TEXT(encode(m, 4, false, true), BOS "S" USER "q1" ASSISTANT END_THINK "a1" EOS USER "q2" ASSISTANT END_THINK);
    /* A system message between turns goes where it stands, without markers. */
    dsacp_chat_message mid[] = {
        {"user", "q1", NULL},
        {"assistant", "a1", NULL},
        {"system", "Now in French.", NULL},
        {"user", "q2", NULL},
    };
    CHECK_TEXT(encode(mid, 4, false, true),
               BOS USER "q1" ASSISTANT END_THINK "a1" EOS "Now in French." USER "q2" ASSISTANT END_THINK);
    /* An assistant message left null (content NULL) is empty. */
    dsacp_chat_message null_content[] = {{"user", "q", NULL}, {"assistant", NULL, NULL}, {"user", "q2", NULL}};
    CHECK_TEXT(encode(null_content, 3, false, true), BOS USER "q" ASSISTANT END_THINK EOS USER "q2" ASSISTANT END_THINK);
}

/* A whole transcript (no generation prompt): the answer after the last user message keeps its
 * reasoning in thinking mode, and the prompt plus the answer is the transcript. */
static void test_transcript(void)
{
    dsacp_chat_message m[] = {
        {"user", "q1", NULL},
        {"assistant", "a1", "r1"},
        {"user", "q2", NULL},
        {"assistant", "a2", "r2"},
    };
    const char *want = BOS USER "q1" ASSISTANT END_THINK "a1" EOS USER "q2" ASSISTANT THINK "r2" END_THINK "a2" EOS;
    CHECK_TEXT(encode(m, 4, true, false), want);
    char prompt[4096];
    snprintf(prompt, sizeof(prompt), "%s", encode(m, 3, true, true) ? text_ : "");
    CHECK(strlen(prompt) < strlen(want) && strncmp(prompt, want, strlen(prompt)) == 0);
    CHECK(strcmp(want + strlen(prompt), "r2" END_THINK "a2" EOS) == 0);
    /* The same without a generation prompt is a prefix too. */
    CHECK_TEXT(encode(m, 3, true, false), BOS USER "q1" ASSISTANT END_THINK "a1" EOS USER "q2");
    /* Non-thinking: every reasoning is dropped. */
    CHECK_TEXT(encode(m, 4, false, false),
               BOS USER "q1" ASSISTANT END_THINK "a1" EOS USER "q2" ASSISTANT END_THINK "a2" EOS);
}

static void test_buffer(void)
{
    dsacp_chat_message one[] = {{"user", "Hi", NULL}};
    const size_t want = strlen(BOS USER "Hi" ASSISTANT END_THINK);
    size_t len = 0;
    CHECK(dsacp_chat_encode(one, 1, false, true, NULL, 0, &len) == DSACP_ERANGE && len == want);
    char buf[128];
    memset(buf, 'x', sizeof(buf));
    CHECK(dsacp_chat_encode(one, 1, false, true, buf, want, &len) == DSACP_ERANGE && len == want);
    CHECK(strstr(dsacp_last_error(), "out: "));
    CHECK(buf[want] == 'x'); /* nothing written at or past cap */
    CHECK_OK(dsacp_chat_encode(one, 1, false, true, buf, want + 1, &len));
    CHECK(len == want && buf[want] == '\0' && strcmp(buf, BOS USER "Hi" ASSISTANT END_THINK) == 0);
    CHECK(dsacp_chat_encode(one, 1, false, true, NULL, 4, &len) == DSACP_EINVAL);
}

static void test_refusals(void)
{
    dsacp_chat_message ok[] = {{"user", "q", NULL}};
    check_refused(ok, 0, false, true, DSACP_EINVAL, "at least one message");
    check_refused(NULL, 1, false, true, DSACP_EINVAL, "at least one message");
    dsacp_chat_message bad_role[] = {{"user", "q", NULL}, {"bot", "a", NULL}};
    check_refused(bad_role, 2, false, false, DSACP_EINVAL, "messages[1].role: 'bot' is not a role");
    dsacp_chat_message no_role[] = {{NULL, "q", NULL}};
    check_refused(no_role, 1, false, true, DSACP_EINVAL, "messages[0].role: missing");
    dsacp_chat_message tool[] = {{"user", "q", NULL}, {"assistant", "a", NULL}, {"tool", "42", NULL}};
    check_refused(tool, 3, false, false, DSACP_EUNSUPPORTED, "messages[2].role: 'tool' messages are not supported");
    dsacp_chat_message developer[] = {{"developer", "d", NULL}};
    check_refused(developer, 1, false, true, DSACP_EUNSUPPORTED, "messages[0].role: 'developer'");
    dsacp_chat_message two_users[] = {{"user", "q1", NULL}, {"system", "s", NULL}, {"user", "q2", NULL}};
    check_refused(two_users, 3, false, true, DSACP_EINVAL, "messages[2].role: 'user' follows 'user' at messages[0]");
    dsacp_chat_message two_answers[] = {{"user", "q", NULL}, {"assistant", "a", NULL}, {"assistant", "b", NULL}};
    check_refused(two_answers, 3, false, false, DSACP_EINVAL, "messages[2].role: 'assistant' follows 'assistant'");
    dsacp_chat_message first_answer[] = {{"system", "s", NULL}, {"assistant", "a", NULL}, {"user", "q", NULL}};
    check_refused(first_answer, 3, false, true, DSACP_EINVAL, "messages[1].role: the first turn must be 'user'");
    dsacp_chat_message ends_answer[] = {{"user", "q", NULL}, {"assistant", "a", "r"}};
    check_refused(ends_answer, 2, false, true, DSACP_EINVAL, "messages[1].role: the last message is 'assistant'; a generation prompt");
    dsacp_chat_message ends_system[] = {{"user", "q", NULL}, {"system", "s", NULL}};
    check_refused(ends_system, 2, false, true, DSACP_EINVAL, "messages[1].role: the last message is 'system'");
    dsacp_chat_message no_reasoning[] = {{"user", "q", NULL}, {"assistant", "a", ""}};
    check_refused(no_reasoning, 2, true, false, DSACP_EINVAL, "messages[1].reasoning: missing; in thinking mode");
    CHECK_TEXT(encode(no_reasoning, 2, false, false), BOS USER "q" ASSISTANT END_THINK "a" EOS);
    dsacp_chat_message user_reasoning[] = {{"user", "q", "r"}};
    check_refused(user_reasoning, 1, false, true, DSACP_EINVAL, "messages[0].reasoning: only an assistant");
    dsacp_chat_message user_null[] = {{"user", NULL, NULL}};
    check_refused(user_null, 1, false, true, DSACP_EINVAL, "messages[0].content: missing");
}

/* Parses json; checks the status and, on failure, that the message holds needle. */
static dsacp_chat_messages *parse(const char *json, int status, const char *needle)
{
    dsacp_chat_messages *m = NULL;
    int rc = dsacp_chat_messages_parse(json, strlen(json), &m);
    CHECKF(rc == status && (rc == 0 || strstr(dsacp_last_error(), needle)), "%s: rc %s, message '%s', want %s with '%s'",
           json, dsacp_status_name(rc), rc ? dsacp_last_error() : "", dsacp_status_name(status), needle);
    CHECK((rc == 0) == (m != NULL));
    return m;
}

static void test_parse(void)
{
    dsacp_chat_messages *m = parse("[{\"role\": \"system\", \"content\": \"S\"},"
                                   " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"},"
                                   "                                  {\"text\": \"\\u4f60\\u597d\", \"type\": \"text\"}]},"
                                   " {\"role\": \"assistant\", \"content\": \"x\", \"reasoning_content\": \"r\"},"
                                   " {\"role\": \"user\", \"content\": []},"
                                   " {\"role\": \"assistant\", \"content\": null, \"reasoning\": null},"
                                   " {\"role\": \"user\", \"content\": \"q\"}]",
                                   0, "");
    if (m) {
        CHECK(m->count == 6);
        CHECK(strcmp(m->items[0].role, "system") == 0 && strcmp(m->items[0].content, "S") == 0 && !m->items[0].reasoning);
        CHECK(strcmp(m->items[1].content, "a\n你好") == 0); /* text parts joined with "\n" */
        CHECK(strcmp(m->items[2].content, "x") == 0 && strcmp(m->items[2].reasoning, "r") == 0);
        CHECK(strcmp(m->items[3].content, "") == 0);
        CHECK(strcmp(m->items[4].content, "") == 0 && !m->items[4].reasoning);
        CHECK_TEXT(encode(m->items, m->count, true, true),
                   BOS "S" USER "a\n你好" ASSISTANT END_THINK "x" EOS USER ASSISTANT END_THINK EOS USER "q" ASSISTANT THINK);
    }
    dsacp_chat_messages_free(m);
    m = parse("[]", 0, "");
    CHECK(m && m->count == 0);
    dsacp_chat_messages_free(m);
    dsacp_chat_messages_free(NULL);

    parse("[{\"role\": \"user\", \"content\": \"q\"", DSACP_EINVAL, "messages: malformed JSON at line 1");
    parse("{\"role\": \"user\"}", DSACP_EINVAL, "messages: not an array");
    parse("[\"hi\"]", DSACP_EINVAL, "messages[0]: not an object");
    parse("[{\"role\": \"user\", \"content\": \"q\", \"foo\": 1}]", DSACP_EINVAL, "messages[0].foo: unknown field");
    parse("[{\"role\": \"user\", \"role\": \"user\", \"content\": \"q\"}]", DSACP_EINVAL, "malformed JSON");
    parse("[{\"role\": \"user\", \"content\": \"q\\u0000\"}]", DSACP_EINVAL, "malformed JSON");
    parse("[{\"content\": \"q\"}]", DSACP_EINVAL, "messages[0].role: missing");
    parse("[{\"role\": 1, \"content\": \"q\"}]", DSACP_EINVAL, "messages[0].role: not a string");
    parse("[{\"role\": \"tool\", \"content\": \"q\"}]", DSACP_EUNSUPPORTED, "messages[0].role: 'tool'");
    parse("[{\"role\": \"user\", \"content\": \"q\", \"name\": \"bob\"}]", DSACP_EUNSUPPORTED, "messages[0].name: not supported yet");
    parse("[{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"tool_calls\": []}]", DSACP_EUNSUPPORTED,
          "messages[1].tool_calls: not supported yet");
    parse("[{\"role\": \"user\"}]", DSACP_EINVAL, "messages[0].content: missing");
    parse("[{\"role\": \"system\", \"content\": null}]", DSACP_EINVAL, "messages[0].content: null");
    parse("[{\"role\": \"user\", \"content\": 5}]", DSACP_EINVAL, "messages[0].content: not a string or an array of text parts");
    parse("[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"image_url\", \"image_url\": {}}]}]",
          DSACP_EINVAL, "messages[0].content[1].image_url: unknown field");
    parse("[{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]", DSACP_EUNSUPPORTED,
          "messages[0].content[0].type: 'image_url' parts are not supported");
    parse("[{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]", DSACP_EINVAL, "messages[0].content[0].text: missing");
    parse("[{\"role\": \"user\", \"content\": [\"a\"]}]", DSACP_EINVAL, "messages[0].content[0]: not an object");
    parse("[{\"role\": \"user\", \"content\": \"q\", \"reasoning_content\": \"r\"}]", DSACP_EINVAL,
          "messages[0].reasoning_content: only an assistant");
    parse("[{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\", \"reasoning\": \"r\","
          " \"reasoning_content\": \"r\"}]",
          DSACP_EINVAL, "messages[1].reasoning_content: given beside reasoning");
    parse("[{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"reasoning\": 3}]", DSACP_EINVAL,
          "messages[1].reasoning: not a string");
    dsacp_chat_messages *out = (dsacp_chat_messages *)1;
    CHECK(dsacp_chat_messages_parse(NULL, 0, &out) == DSACP_EINVAL && out == NULL);
    CHECK(dsacp_chat_messages_parse("[1]\xff", 4, &out) == DSACP_EINVAL && out == NULL);
}

/* With the real V3.2 tokenizer.json: the special tokens of the text are single added tokens. */
static void test_tokenized(void)
{
    const char *path = getenv("DSACP_V32_TOKENIZER"), *build = getenv("DSACP_BUILD_DIR");
    char cached[1024];
    FILE *f;
    if ((!path || !*path) && build) { /* where tests/cli/tokenizer.sh leaves the file */
        snprintf(cached, sizeof(cached), "%s/tokenizer-cache/deepseek-v3.2/tokenizer.json", build);
        if ((f = fopen(cached, "rb")) != NULL) {
            fclose(f);
            path = cached;
        }
    }
    if (!path || !*path) {
        printf("skip: no DeepSeek-V3.2 tokenizer.json (DSACP_V32_TOKENIZER, or the cache of tests/cli/tokenizer.sh)\n");
        return;
    }
    printf("special tokens' ids with %s\n", path);
    dsacp_tokenizer *t = NULL;
    REQUIRE_OK(dsacp_tokenizer_load(path, &t));
    dsacp_chat_message m[] = {{"system", "S", NULL}, {"user", "q1", NULL}, {"assistant", "a1", NULL}, {"user", "q2", NULL}};
    const char *text = encode(m, 4, true, true);
    int32_t ids[64];
    int64_t n = 0;
    CHECK_OK(dsacp_tokenizer_encode(t, text ? text : "", text ? strlen(text) : 0, false, ids, 64, &n));
    /* The special tokens' ids, in order, among the ids of the words: BOS, <User>, <Assistant>,
     * </think>, EOS, <User>, <Assistant>, <think>. */
    const int32_t want[] = {0, 128803, 128804, 128799, 1, 128803, 128804, 128798};
    int k = 0;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 2 || ids[i] >= 128798) {
            CHECKF(k < 8 && ids[i] == want[k], "ids[%lld] = %d, want %d", (long long)i, ids[i], k < 8 ? want[k] : -1);
            k++;
        }
    CHECKF(k == 8 && ids[n - 1] == 128798, "%d special tokens, the last id %d", k, n > 0 ? ids[n - 1] : -1);
    CHECK(dsacp_tokenizer_token_id(t, "<｜User｜>") == 128803 && dsacp_tokenizer_token_id(t, "</think>") == 128799);
    dsacp_tokenizer_free(t);
}

int main(void)
{
    test_single_turn();
    test_multi_turn();
    test_transcript();
    test_buffer();
    test_refusals();
    test_parse();
    test_tokenized();
    return test_finish("test_chat");
}

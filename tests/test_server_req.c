/*
 * test_server_req.c -- the server's pieces below HTTP (src/server/server.h): OpenAI request bodies
 * (every field, every refusal naming its field), response bodies and stream chunks parsed back
 * with jansson, the streaming stop-string matcher (random splits release what matching the whole
 * text does) and the Prometheus text (a line-by-line checker; histogram counts add up). The
 * tokenizer is tests/data/tok_chat (DeepSeek-V3.2's shape: BOS 0, EOS 1).
 */
#include "dsacp_text.h"
#include "server/server.h"
#include "test.h"
#include "ref/test_util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

static dsacp_tokenizer *tok_;
static dsacp_config cfg_;

#define BOS "<｜begin▁of▁sentence｜>"

static int parse(oai_kind kind, const char *body, oai_request *r, oai_error *e)
{
    return oai_request_parse(kind, body, strlen(body), tok_, &cfg_, 16, r, e);
}

/* The body parses; the request is left in *r (free it). */
static bool parses(oai_kind kind, const char *body, oai_request *r)
{
    oai_error e;
    int rc = parse(kind, body, r, &e);
    if (rc)
        fprintf(stderr, "refused %s: %d %s (param '%s')\n", body, rc, e.message, e.param);
    return rc == 0;
}

/* The body is a 400 naming `param`, with `needle` in its message. */
static void check_refused(oai_kind kind, const char *body, const char *param, const char *needle)
{
    oai_request r;
    oai_error e;
    int rc = parse(kind, body, &r, &e);
    CHECKF(rc == 400 && e.http == 400 && strcmp(e.param, param) == 0 && strstr(e.message, needle) &&
               strcmp(e.type, "invalid_request_error") == 0,
           "%s: rc %d param '%s' message '%s', want param '%s' with '%s'", body, rc, e.param, e.message, param,
           needle);
    CHECK(r.prompt == NULL && r.stop == NULL && r.model == NULL);
}

static void test_completion_fields(void)
{
    oai_request r;
    CHECK(parses(OAI_COMPLETION, "{\"prompt\": [5, 6, 7]}", &r));
    CHECK(r.prompt_len == 3 && r.prompt[0] == 5 && r.prompt[2] == 7);
    CHECK(r.max_tokens == 16 && r.temperature == 1.0 && r.top_p == 1.0 && !r.has_seed && !r.stream);
    CHECK(r.skip_special_tokens && !r.echo && r.model == NULL && r.n_stop == 0);
    CHECK(r.n_stop_ids == 1 && r.stop_ids[0] == 1); /* EOS */
    oai_request_free(&r);

    const char *all = "{\"model\": \"m\", \"prompt\": \"Hello world\", \"max_tokens\": 7, \"temperature\": 0,"
                      " \"top_p\": 0.5, \"seed\": 42, \"stop\": [\"a\", \"\\n\\n\"], \"stream\": true,"
                      " \"stream_options\": {\"include_usage\": true}, \"n\": 1, \"ignore_eos\": true,"
                      " \"stop_token_ids\": [3, 4], \"skip_special_tokens\": false, \"return_token_ids\": true,"
                      " \"user\": \"u\", \"logprobs\": null, \"best_of\": 1, \"suffix\": null,"
                      " \"logit_bias\": {}, \"presence_penalty\": 0, \"frequency_penalty\": 0.0, \"echo\": false}";
    CHECK(parses(OAI_COMPLETION, all, &r));
    CHECK(strcmp(r.model, "m") == 0 && r.max_tokens == 7 && r.temperature == 0 && r.top_p == 0.5);
    CHECK(r.has_seed && r.seed == 42 && r.n_stop == 2 && strcmp(r.stop[1], "\n\n") == 0);
    CHECK(r.stream && r.include_usage && r.ignore_eos && !r.skip_special_tokens && r.return_token_ids);
    CHECK(r.n_stop_ids == 2 && r.stop_ids[0] == 3 && r.stop_ids[1] == 4); /* no EOS: ignore_eos */
    CHECK(r.prompt_len > 0);
    /* The text tokenizes as the tokenizer does it (add_special: V3.2's post-processor adds none). */
    int32_t ids[64];
    int64_t n = 0;
    CHECK_OK(dsacp_tokenizer_encode(tok_, "Hello world", 11, true, ids, 64, &n));
    CHECK(n == r.prompt_len && memcmp(ids, r.prompt, (size_t)n * sizeof(int32_t)) == 0);
    oai_request_free(&r);

    CHECK(parses(OAI_COMPLETION, "{\"prompt\": \"x\", \"stop\": \"end\", \"seed\": null, \"echo\": true}", &r));
    CHECK(r.n_stop == 1 && strcmp(r.stop[0], "end") == 0 && !r.has_seed && r.echo);
    oai_request_free(&r);
    /* The default is capped by what the positions leave. */
    CHECK(parses(OAI_COMPLETION, "{\"prompt\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,"
                                 " 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]}", &r));
    CHECK(r.max_tokens == 2);
    oai_request_free(&r);
}

static void test_chat_fields(void)
{
    oai_request r;
    const char *body = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be terse.\"},"
                       " {\"role\": \"user\", \"content\": \"Hi\"}], \"max_completion_tokens\": 3}";
    CHECK(parses(OAI_CHAT, body, &r));
    CHECK(r.kind == OAI_CHAT && r.max_tokens == 3 && !r.thinking);
    char text[256];
    size_t len;
    dsacp_chat_message m[] = {{"system", "Be terse.", NULL}, {"user", "Hi", NULL}};
    CHECK_OK(dsacp_chat_encode(m, 2, false, true, text, sizeof text, &len));
    int32_t ids[256];
    int64_t n = 0;
    CHECK_OK(dsacp_tokenizer_encode(tok_, text, len, false, ids, 256, &n));
    CHECK(n == r.prompt_len && memcmp(ids, r.prompt, (size_t)n * sizeof(int32_t)) == 0);
    CHECK(r.prompt[0] == 0); /* BOS from the text */
    oai_request_free(&r);

    /* Thinking: the prompt ends with <think>; chat's default max_tokens is what is left. */
    CHECK(parses(OAI_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}],"
                           " \"chat_template_kwargs\": {\"thinking\": true}}", &r));
    CHECK(r.thinking && r.prompt[r.prompt_len - 1] == dsacp_tokenizer_token_id(tok_, "<think>"));
    CHECK(r.max_tokens == cfg_.max_position_embeddings - r.prompt_len);
    oai_request_free(&r);
    CHECK(parses(OAI_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 2,"
                           " \"chat_template_kwargs\": {\"enable_thinking\": false}, \"logprobs\": false,"
                           " \"tools\": []}", &r));
    CHECK(!r.thinking && r.max_tokens == 2 && r.prompt[r.prompt_len - 1] == dsacp_tokenizer_token_id(tok_, "</think>"));
    oai_request_free(&r);
}

static void test_refusals(void)
{
    const oai_kind C = OAI_COMPLETION, H = OAI_CHAT;
    check_refused(C, "{\"prompt\": \"x\",", "", "malformed JSON");
    check_refused(C, "", "", "malformed JSON");
    check_refused(C, "[1, 2]", "", "JSON object");
    check_refused(C, "{\"prompt\": \"x\", \"prompt\": \"y\"}", "prompt", "duplicate");
    check_refused(C, "{\"prompt\": \"a\xff\"}", "prompt", "invalid UTF-8");
    check_refused(C, "{\"max_tokens\": 99999999999999999999999, \"prompt\": \"x\"}", "max_tokens", "malformed");
    check_refused(C, "{\"prompt\": \"x\", \"bogus\": 1}", "bogus", "unknown field");
    check_refused(C, "{\"prompt\": \"x\", \"messages\": []}", "messages", "unknown field");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"prompt\": \"x\"}", "prompt",
                  "unknown field");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": -5}", "max_tokens", "max_tokens must be an integer >= 1, got -5");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens", "got 0");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": 1.5}", "max_tokens", "integer >= 1, got 1.5");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": 5.0}", "max_tokens", "integer >= 1, got 5.0");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": \"5\"}", "max_tokens", "got a string");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": true}", "max_tokens", "got true");
    check_refused(C, "{\"prompt\": \"x\", \"max_tokens\": 1000000000}", "max_tokens", "maximum context length is 32");
    check_refused(C, "{\"prompt\": \"x\", \"temperature\": 2.5}", "temperature", "[0, 2], got 2.5");
    check_refused(C, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", "temperature", "got a string");
    check_refused(C, "{\"prompt\": \"x\", \"top_p\": 0}", "top_p", "(0, 1], got 0");
    check_refused(C, "{\"prompt\": \"x\", \"top_p\": 1.5}", "top_p", "got 1.5");
    check_refused(C, "{\"prompt\": \"x\", \"seed\": -1}", "seed", ">= 0, got -1");
    check_refused(C, "{\"prompt\": \"x\", \"n\": 2}", "n", "got 2");
    check_refused(C, "{\"prompt\": \"x\", \"best_of\": 3}", "best_of", "got 3");
    check_refused(C, "{\"prompt\": \"x\", \"logprobs\": 2}", "logprobs", "not supported");
    check_refused(C, "{\"prompt\": \"x\", \"presence_penalty\": 0.5}", "presence_penalty", "not supported");
    check_refused(C, "{\"prompt\": \"x\", \"logit_bias\": {\"5\": 1}}", "logit_bias", "not supported");
    check_refused(C, "{\"prompt\": \"x\", \"suffix\": \"s\"}", "suffix", "not supported");
    check_refused(C, "{\"prompt\": \"x\", \"stream\": 1}", "stream", "boolean");
    check_refused(C, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", "stream_options",
                  "stream: true");
    check_refused(C, "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"x\": 1}}", "stream_options.x",
                  "unknown field");
    check_refused(C, "{\"prompt\": \"x\", \"stream\": true, \"echo\": true}", "echo", "stream");
    check_refused(C, "{\"prompt\": \"x\", \"stop\": 5}", "stop", "string");
    check_refused(C, "{\"prompt\": \"x\", \"stop\": [\"a\", 5]}", "stop[1]", "string");
    check_refused(C, "{\"prompt\": \"x\", \"stop\": [\"a\", \"\"]}", "stop[1]", "1 to 1024 bytes");
    check_refused(C, "{\"prompt\": \"x\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
                     "\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}", "stop", "at most 16");
    check_refused(C, "{\"prompt\": \"x\", \"stop_token_ids\": [1, 600]}", "stop_token_ids[1]", "[0, 514)");
    check_refused(C, "{\"prompt\": \"x\", \"stop_token_ids\": 3}", "stop_token_ids", "array");
    check_refused(C, "{\"prompt\": \"x\", \"model\": 5}", "model", "string");
    check_refused(C, "{\"prompt\": \"x\", \"user\": 5}", "user", "string");
    /* Prompts */
    check_refused(C, "{}", "prompt", "missing");
    check_refused(C, "{\"prompt\": null}", "prompt", "missing");
    check_refused(C, "{\"prompt\": \"\"}", "prompt", "empty");
    check_refused(C, "{\"prompt\": []}", "prompt", "empty");
    check_refused(C, "{\"prompt\": 5}", "prompt", "string or an array");
    check_refused(C, "{\"prompt\": [\"a\", \"b\"]}", "prompt", "not supported");
    check_refused(C, "{\"prompt\": [[1], [2]]}", "prompt", "not supported");
    check_refused(C, "{\"prompt\": [1, -2]}", "prompt[1]", "got -2");
    /* The tokenizer's 514 ids, though the model has 516: an id the text could not show is refused. */
    check_refused(C, "{\"prompt\": [1, 514]}", "prompt[1]", "[0, 514)");
    check_refused(C, "{\"prompt\": [1, \"a\"]}", "prompt[1]", "got a string");
    check_refused(C, "{\"prompt\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,"
                     " 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33]}", "prompt", "maximum context length is 32");
    check_refused(C, "{\"prompt\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,"
                     " 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]}", "prompt", "no room");
    /* Chat */
    check_refused(H, "{}", "messages", "missing");
    check_refused(H, "{\"messages\": 3}", "messages", "must be an array of messages, got an integer");
    check_refused(H, "{\"messages\": []}", "messages", "at least one");
    check_refused(H, "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content", "missing");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"name\": \"n\"}]}",
                  "messages[0].name", "not supported");
    check_refused(H, "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "messages[0].role", "robot");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 2,"
                     " \"max_completion_tokens\": 2}", "max_completion_tokens", "beside max_tokens");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"echo\": true}", "echo",
                  "unknown field");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": {\"t\": 1}}",
                  "chat_template_kwargs.t", "unknown field");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": \"function\"}]}",
                  "tools", "not supported");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true}", "logprobs",
                  "not supported");
    check_refused(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"a b c d e f g h i j k l m n o p q r s t u"
                     " v w x y z a b c d e f g h i j k l m n o p q r s t u v w x y z\"}]}", "messages",
                  "maximum context length");
}

/* ---- responses ---- */

/* A response body -> its object (the string freed). */
static json_t *load(char *s)
{
    json_error_t je;
    json_t *o = s ? json_loads(s, 0, &je) : NULL;
    CHECKF(o != NULL, "not JSON: %s", s ? s : "(null)");
    free(s);
    return o;
}

/* An SSE event "data: {...}\n\n" -> its object. */
static json_t *load_sse(char *s)
{
    size_t n = s ? strlen(s) : 0;
    CHECKF(n > 8 && strncmp(s, "data: ", 6) == 0 && strcmp(s + n - 2, "\n\n") == 0, "not an event: %s", s);
    json_t *o = NULL;
    if (n > 8) {
        memmove(s, s + 6, n - 5);
        o = load(s);
    } else {
        free(s);
    }
    return o;
}

static const char *str_at(json_t *o, const char *path)
{
    json_t *v = o;
    char key[64];
    for (const char *p = path; v && *p;) {
        size_t k = strcspn(p, ".");
        snprintf(key, sizeof key, "%.*s", (int)k, p);
        v = key[0] >= '0' && key[0] <= '9' ? json_array_get(v, (size_t)atoi(key)) : json_object_get(v, key);
        p += k + (p[k] == '.');
    }
    return json_is_string(v) ? json_string_value(v) : json_is_null(v) ? "(null)" : v ? "(other)" : "(absent)";
}

static json_t *at(json_t *o, const char *a, size_t i, const char *b)
{
    return json_object_get(json_array_get(json_object_get(o, a), i), b);
}

static void test_responses(void)
{
    int32_t ids[] = {5, 6, 7};
    json_t *o = load(oai_response_json(OAI_COMPLETION, "cmpl-1", "m", 1700000000, "hi \"there\"", NULL, "length", 4, 3,
                                       NULL, 0));
    CHECK(strcmp(str_at(o, "object"), "text_completion") == 0 && strcmp(str_at(o, "id"), "cmpl-1") == 0);
    CHECK(json_integer_value(json_object_get(o, "created")) == 1700000000 && strcmp(str_at(o, "model"), "m") == 0);
    CHECK(strcmp(str_at(o, "choices.0.text"), "hi \"there\"") == 0);
    CHECK(strcmp(str_at(o, "choices.0.finish_reason"), "length") == 0);
    CHECK(json_is_null(at(o, "choices", 0, "logprobs")) && json_integer_value(at(o, "choices", 0, "index")) == 0);
    CHECK(!at(o, "choices", 0, "token_ids"));
    json_t *u = json_object_get(o, "usage");
    CHECK(json_integer_value(json_object_get(u, "prompt_tokens")) == 4);
    CHECK(json_integer_value(json_object_get(u, "completion_tokens")) == 3);
    CHECK(json_integer_value(json_object_get(u, "total_tokens")) == 7);
    json_decref(o);

    o = load(oai_response_json(OAI_CHAT, "chatcmpl-2", "m", 1, "answer", "thought", "stop", 2, 3, ids, 3));
    CHECK(strcmp(str_at(o, "object"), "chat.completion") == 0);
    CHECK(strcmp(str_at(o, "choices.0.message.role"), "assistant") == 0);
    CHECK(strcmp(str_at(o, "choices.0.message.content"), "answer") == 0);
    CHECK(strcmp(str_at(o, "choices.0.message.reasoning_content"), "thought") == 0);
    json_t *t = at(o, "choices", 0, "token_ids");
    CHECK(json_array_size(t) == 3 && json_integer_value(json_array_get(t, 2)) == 7);
    json_decref(o);
    /* Bytes that are not UTF-8 become U+FFFD: the body stays JSON. */
    o = load(oai_response_json(OAI_CHAT, "chatcmpl-3", "m", 1, "a\xff" "b", NULL, "stop", 2, 3, NULL, 0));
    CHECK(strcmp(str_at(o, "choices.0.message.content"), "a\xEF\xBF\xBD" "b") == 0);
    CHECK(strcmp(str_at(o, "choices.0.message.reasoning_content"), "(absent)") == 0);
    json_decref(o);

    /* Chunks: the first chat chunk has the role; reasoning goes to reasoning_content. */
    o = load_sse(oai_chunk_sse(OAI_CHAT, "c", "m", 1, "", NULL, true, NULL, NULL, 0));
    CHECK(strcmp(str_at(o, "object"), "chat.completion.chunk") == 0);
    CHECK(strcmp(str_at(o, "choices.0.delta.role"), "assistant") == 0);
    CHECK(strcmp(str_at(o, "choices.0.delta.content"), "") == 0);
    CHECK(strcmp(str_at(o, "choices.0.finish_reason"), "(null)") == 0);
    json_decref(o);
    o = load_sse(oai_chunk_sse(OAI_CHAT, "c", "m", 1, NULL, "hmm", false, NULL, ids, 1));
    CHECK(strcmp(str_at(o, "choices.0.delta.reasoning_content"), "hmm") == 0);
    CHECK(strcmp(str_at(o, "choices.0.delta.role"), "(absent)") == 0);
    CHECK(strcmp(str_at(o, "choices.0.delta.content"), "(absent)") == 0);
    CHECK(json_array_size(at(o, "choices", 0, "token_ids")) == 1);
    json_decref(o);
    o = load_sse(oai_chunk_sse(OAI_CHAT, "c", "m", 1, NULL, NULL, false, "stop", NULL, 0));
    CHECK(json_object_size(at(o, "choices", 0, "delta")) == 0 && strcmp(str_at(o, "choices.0.finish_reason"), "stop") == 0);
    json_decref(o);
    o = load_sse(oai_chunk_sse(OAI_COMPLETION, "c", "m", 1, "tok", NULL, true, NULL, NULL, 0));
    CHECK(strcmp(str_at(o, "object"), "text_completion") == 0 && strcmp(str_at(o, "choices.0.text"), "tok") == 0);
    json_decref(o);
    o = load_sse(oai_usage_sse(OAI_CHAT, "c", "m", 1, 5, 6));
    CHECK(json_array_size(json_object_get(o, "choices")) == 0 && json_is_array(json_object_get(o, "choices")));
    CHECK(json_integer_value(json_object_get(json_object_get(o, "usage"), "total_tokens")) == 11);
    json_decref(o);

    oai_error e;
    oai_error_set(&e, 400, "invalid_request_error", "max_tokens", "max_tokens must be %s", "positive");
    o = load(oai_error_json(&e));
    CHECK(strcmp(str_at(o, "error.message"), "max_tokens must be positive") == 0);
    CHECK(strcmp(str_at(o, "error.type"), "invalid_request_error") == 0 && strcmp(str_at(o, "error.param"), "max_tokens") == 0);
    CHECK(strcmp(str_at(o, "error.code"), "(null)") == 0);
    json_decref(o);
    oai_error_set(&e, 404, "not_found_error", "", "no such route");
    o = load(oai_error_json(&e));
    CHECK(strcmp(str_at(o, "error.param"), "(null)") == 0);
    CHECK(strcmp(str_at(o, "error.code"), "(null)") == 0);
    json_decref(o);
    oai_error_set(&e, 404, "model_not_found", "model", "The model 'x' does not exist.");
    o = load(oai_error_json(&e));
    CHECK(strcmp(str_at(o, "error.code"), "model_not_found") == 0);
    json_decref(o);
    o = load(oai_models_json("dsacp-tiny", 5, 4096));
    CHECK(strcmp(str_at(o, "object"), "list") == 0 && strcmp(str_at(o, "data.0.id"), "dsacp-tiny") == 0);
    CHECK(strcmp(str_at(o, "data.0.object"), "model") == 0 && strcmp(str_at(o, "data.0.owned_by"), "dsacp") == 0);
    CHECK(json_integer_value(at(o, "data", 0, "max_model_len")) == 4096);
    json_decref(o);
}

/* ---- stop strings ---- */

/* What the whole text gives: the stop string completing first (at the same byte, the longest) cuts it. */
static size_t reference_cut(const char *text, size_t len, char *const *stop, int n)
{
    size_t best_end = SIZE_MAX, best_len = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(stop[i]);
        for (size_t p = 0; p + l <= len; p++)
            if (memcmp(text + p, stop[i], l) == 0) {
                if (p + l < best_end || (p + l == best_end && l > best_len))
                    best_end = p + l, best_len = l;
                break;
            }
    }
    return best_end == SIZE_MAX ? len : best_end - best_len;
}

static bool valid_utf8(const char *p, size_t n)
{
    json_t *v = json_stringn(p, n);
    json_decref(v);
    return v != NULL;
}

/* Pushes text in pieces cut at `cuts` (sorted, n_cuts) and returns what came out; whole_chars:
 * the cuts fall between characters, and so must every released piece. */
static size_t run_stop(oai_stop *s, const char *text, size_t len, const size_t *cuts, int n_cuts, bool whole_chars,
                       char *out, bool *matched)
{
    size_t o = 0, from = 0;
    const char *r;
    size_t rl;
    *matched = false;
    for (int c = 0; c <= n_cuts; c++) {
        size_t to = c < n_cuts ? cuts[c] : len;
        bool m;
        CHECK_OK(oai_stop_push(s, text + from, to - from, &r, &rl, &m));
        CHECK(!whole_chars || valid_utf8(r, rl));
        memcpy(out + o, r, rl);
        o += rl;
        CHECK(!*matched || (m && rl == 0)); /* nothing after a match */
        *matched = *matched || m;
        from = to;
    }
    CHECK_OK(oai_stop_flush(s, &r, &rl));
    CHECK(!*matched || rl == 0);
    memcpy(out + o, r, rl);
    return o + rl;
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void test_stop_examples(void)
{
    char *stops[] = {"abcd", "bc", "\n\n", "世界"};
    const char *cases[][2] = {
        {"xxabcdyy", "xxa"},         /* "bc" completes before "abcd" */
        {"hello\n\nworld", "hello"}, /* across pushes below */
        {"你好世界!", "你好"},
        {"no match here", "no match here"},
        {"ab", "ab"},                /* a held prefix released by the flush */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        oai_stop *s;
        REQUIRE_OK(oai_stop_create(stops, 4, &s));
        const char *t = cases[k][0];
        size_t cuts[64], n = strlen(t);
        for (size_t i = 1; i < n; i++)
            cuts[i - 1] = i; /* one byte at a time */
        char out[64];
        bool m;
        size_t o = run_stop(s, t, n, cuts, (int)n - 1, false, out, &m);
        CHECKF(o == strlen(cases[k][1]) && memcmp(out, cases[k][1], o) == 0, "'%s' gave '%.*s'", t, (int)o, out);
        CHECK(m == (strcmp(cases[k][0], cases[k][1]) != 0));
        oai_stop_free(s);
    }
    oai_stop *s;
    REQUIRE_OK(oai_stop_create(NULL, 0, &s)); /* no stop strings: everything passes at once */
    const char *r;
    size_t rl;
    bool m;
    CHECK_OK(oai_stop_push(s, "abc", 3, &r, &rl, &m));
    CHECK(rl == 3 && memcmp(r, "abc", 3) == 0 && !m);
    oai_stop_free(s);
    char *empty[] = {""};
    CHECK(oai_stop_create(empty, 1, &s) == DSACP_EINVAL && s == NULL);
}

/* Random texts over a small alphabet (multibyte characters included), random stop sets, random
 * splits: the streamed result equals the whole-text one, and never splits a character. */
static void test_stop_property(void)
{
    static const char *const alphabet[] = {"a", "b", "c", "é", "世", "😀", "\n"};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int cut = 0;
    for (int iter = 0; iter < 3000; iter++) {
        char text[512], stop_buf[4][32], out[512];
        char *stops[4];
        size_t len = 0, starts[64];
        int n_chars = (int)(rng_next(&x) % 40);
        for (int i = 0; i < n_chars; i++) {
            starts[i] = len;
            len += (size_t)sprintf(text + len, "%s", alphabet[rng_next(&x) % 7]);
        }
        int n_stop = 1 + (int)(rng_next(&x) % 4);
        for (int k = 0; k < n_stop; k++) {
            size_t l = 0;
            int nc = 1 + (int)(rng_next(&x) % 4);
            for (int i = 0; i < nc; i++)
                l += (size_t)sprintf(stop_buf[k] + l, "%s", alphabet[rng_next(&x) % 4 + (rng_next(&x) % 2) * 3]);
            stops[k] = stop_buf[k];
        }
        size_t want = reference_cut(text, len, stops, n_stop);
        size_t cuts[512];
        int n_cuts = 0;
        bool whole_chars = iter % 2; /* odd iterations: pieces of whole characters, as the detokenizer gives */
        for (size_t i = 1; !whole_chars && i < len; i++)
            if (rng_next(&x) % 3 == 0)
                cuts[n_cuts++] = i;
        for (int i = 1; whole_chars && i < n_chars; i++)
            if (rng_next(&x) % 2 == 0)
                cuts[n_cuts++] = starts[i];
        oai_stop *s;
        REQUIRE_OK(oai_stop_create(stops, n_stop, &s));
        bool m;
        size_t got = run_stop(s, text, len, cuts, n_cuts, whole_chars, out, &m);
        CHECKF(got == want && memcmp(out, text, got) == 0, "iteration %d: got %zu bytes, want %zu", iter, got, want);
        CHECK(m == (want < len));
        cut += m;
        oai_stop_free(s);
    }
    CHECKF(cut > 300 && cut < 2700, "%d of 3000 texts cut", cut); /* both cases well covered */
}

/* ---- metrics ---- */

/* Checks the exposition text line by line: HELP and TYPE before each family, every sample of the
 * family typed last, label syntax, numeric values, histogram buckets cumulative with +Inf equal
 * to _count. Returns the value of the sample named `want` (-1 if absent). */
static double check_exposition(const char *text, const char *want)
{
    char family[128] = "", type[32] = "", line[1024];
    double found = -1, prev_bucket = 0, inf_bucket = -1;
    int lines = 0;
    for (const char *p = text; *p; lines++) {
        size_t n = strcspn(p, "\n");
        CHECK(p[n] == '\n' && n < sizeof line);
        snprintf(line, sizeof line, "%.*s", (int)n, p);
        p += n + (p[n] == '\n');
        char name[128], rest[896];
        if (sscanf(line, "# HELP %127s %895[^\n]", name, rest) == 2) {
            snprintf(family, sizeof family, "%s", name);
            type[0] = '\0';
            prev_bucket = 0;
            continue;
        }
        if (sscanf(line, "# TYPE %127s %31s", name, type) == 2) {
            CHECKF(strcmp(name, family) == 0, "TYPE %s after HELP %s", name, family);
            CHECK(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 || strcmp(type, "histogram") == 0);
            continue;
        }
        size_t nl = strspn(line, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:");
        CHECKF(nl > 0 && line[nl] == '{', "line '%s'", line);
        snprintf(name, sizeof name, "%.*s", (int)nl, line);
        const char *close = strstr(line, "} ");
        CHECKF(close && strncmp(line + nl + 1, "model_name=\"", 12) == 0, "labels of '%s'", line);
        if (!close)
            continue;
        char *end;
        double v = strtod(close + 2, &end);
        CHECKF(*end == '\0' && end != close + 2, "value of '%s'", line);
        bool hist = strcmp(type, "histogram") == 0;
        size_t fl = strlen(family);
        CHECKF(strcmp(name, family) == 0 ||
                   (hist && strncmp(name, family, fl) == 0 &&
                    (!strcmp(name + fl, "_bucket") || !strcmp(name + fl, "_sum") || !strcmp(name + fl, "_count"))),
               "sample %s in family %s (%s)", name, family, type);
        if (hist && !strcmp(name + fl, "_bucket")) {
            CHECKF(v >= prev_bucket, "bucket not cumulative: %s", line);
            prev_bucket = v;
            if (strstr(line, "le=\"+Inf\""))
                inf_bucket = v;
        }
        if (hist && !strcmp(name + fl, "_count"))
            CHECKF(v == inf_bucket, "%s: _count %g, +Inf bucket %g", family, v, inf_bucket);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(close + 1 - line), line);
        if (strcmp(key, want) == 0)
            found = v;
    }
    CHECK(lines > 50);
    return found;
}

typedef struct metrics_arg {
    oai_metrics *m;
    int n;
} metrics_arg;

static void *observe_many(void *p)
{
    metrics_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        oai_metrics_itl(a->m, 0.001 * (i % 200));
        if (i % 10 == 0)
            oai_metrics_finished(a->m, 1.0, 3, 2, i % 20 ? "stop" : "length");
    }
    return NULL;
}

static void test_metrics(void)
{
    oai_metrics *m;
    REQUIRE_OK(oai_metrics_create(&m));
    oai_metrics_ttft(m, 0.003);
    oai_metrics_ttft(m, 0.005); /* le is inclusive */
    oai_metrics_ttft(m, 5000);
    oai_metrics_finished(m, 0.4, 10, 5, "abort");
    oai_metrics_finished(m, 0.4, 10, 5, "weird");
    pthread_t th[4];
    metrics_arg arg = {m, 1000};
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&th[i], NULL, observe_many, &arg) == 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    dsacp_live_stats st = {.running = 3, .waiting = 2, .kv_use = 0.25, .preemptions = 7, .prompt_tokens = 100,
                           .generation_tokens = 50};
    char *t = oai_metrics_render(m, "my \"model\"", &st);
    CHECK(t != NULL);
    if (!t)
        return;
#define L "{model_name=\"my \\\"model\\\"\""
    CHECK(check_exposition(t, "vllm:num_requests_running" L "}") == 3);
    CHECK(check_exposition(t, "vllm:num_requests_waiting" L "}") == 2);
    CHECK(check_exposition(t, "vllm:kv_cache_usage_perc" L "}") == 0.25);
    CHECK(check_exposition(t, "vllm:num_preemptions_total" L "}") == 7);
    CHECK(check_exposition(t, "vllm:prompt_tokens_total" L "}") == 100);
    CHECK(check_exposition(t, "vllm:generation_tokens_total" L "}") == 50);
    CHECK(check_exposition(t, "vllm:time_to_first_token_seconds_bucket" L ",le=\"0.001\"}") == 0);
    CHECK(check_exposition(t, "vllm:time_to_first_token_seconds_bucket" L ",le=\"0.005\"}") == 2);
    CHECK(check_exposition(t, "vllm:time_to_first_token_seconds_bucket" L ",le=\"2560.0\"}") == 2);
    CHECK(check_exposition(t, "vllm:time_to_first_token_seconds_bucket" L ",le=\"+Inf\"}") == 3);
    CHECK(check_exposition(t, "vllm:time_to_first_token_seconds_count" L "}") == 3);
    CHECK(fabs(check_exposition(t, "vllm:time_to_first_token_seconds_sum" L "}") - 5000.008) < 1e-9);
    CHECK(check_exposition(t, "vllm:inter_token_latency_seconds_count" L "}") == 4000);
    CHECK(check_exposition(t, "vllm:time_per_output_token_seconds_count" L "}") == 4000);
    /* i % 200 * 1 ms <= 10 ms: i % 200 in 0..10, 11 of every 200, 5 cycles per thread. */
    CHECK(check_exposition(t, "vllm:inter_token_latency_seconds_bucket" L ",le=\"0.01\"}") == 4 * 5 * 11);
    CHECK(check_exposition(t, "vllm:e2e_request_latency_seconds_bucket" L ",le=\"0.5\"}") == 2);
    CHECK(check_exposition(t, "vllm:e2e_request_latency_seconds_count" L "}") == 402);
    CHECK(check_exposition(t, "vllm:request_success_total" L ",finished_reason=\"stop\"}") == 4 * 50);
    CHECK(check_exposition(t, "vllm:request_success_total" L ",finished_reason=\"length\"}") == 4 * 50);
    CHECK(check_exposition(t, "vllm:request_success_total" L ",finished_reason=\"abort\"}") == 1);
    CHECK(check_exposition(t, "vllm:request_success_total" L ",finished_reason=\"error\"}") == 1);
    free(t);
    /* Without the live loop's stats: gauges 0, token counters from the finished requests. */
    t = oai_metrics_render(m, "m", NULL);
    CHECK(check_exposition(t, "vllm:num_requests_running{model_name=\"m\"}") == 0);
    CHECK(check_exposition(t, "vllm:prompt_tokens_total{model_name=\"m\"}") == 20 + 400 * 3);
    free(t);
#undef L
    oai_metrics_free(m);
    oai_metrics_free(NULL);
}

int main(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/data/tok_chat/tokenizer.json", tu_source_dir());
    REQUIRE_OK(dsacp_tokenizer_load(path, &tok_));
    cfg_.vocab_size = 516;
    cfg_.max_position_embeddings = 32;
    test_completion_fields();
    test_chat_fields();
    test_refusals();
    test_responses();
    test_stop_examples();
    test_stop_property();
    test_metrics();
    dsacp_tokenizer_free(tok_);
    return test_finish("test_server_req");
}

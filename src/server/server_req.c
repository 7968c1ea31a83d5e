/*
 * server_req.c -- OpenAI request bodies (POST /v1/completions, /v1/chat/completions) into token ids
 * and sampling parameters, or a 400 naming the field at fault (server.h; docs/server.md).
 *
 * Fields: OpenAI's and vLLM's names. A field the table below does not know is refused by name; a
 * field OpenAI defines and dsacp does not implement (log probabilities, penalties, logit bias,
 * best_of, suffix, tools) is accepted only with its neutral value (null, false, 0, 1 for best_of,
 * "" / [] / {}), anything else refused by name. null means "absent" for every optional field.
 */
#include "server/server.h"

#include "dsacp_text.h"

#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OAI_MAX_STOP 16           /* stop strings per request (OpenAI allows 4, vLLM more) */
#define OAI_MAX_STOP_BYTES 1024   /* one stop string's length */
#define OAI_EOS "<｜end▁of▁sentence｜>"

int oai_error_set(oai_error *e, int http, const char *type, const char *param, const char *fmt, ...)
{
    e->http = http;
    snprintf(e->type, sizeof e->type, "%s", type ? type : "");
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return http;
}

/* What is parsed so far; the prompt is tokenized once every field is known. */
typedef struct parse_ctx {
    oai_kind kind;
    const dsacp_tokenizer *tok;
    const dsacp_config *cfg;
    oai_request *r;
    oai_error *err;
    json_t *prompt;          /* completions: "prompt"; chat: "messages" (borrowed) */
    json_t *stop_token_ids;  /* borrowed */
    json_t *stream_options;  /* borrowed */
    int64_t max_tokens;      /* the body's; 0 when absent */
    const char *max_tokens_name;
} parse_ctx;

static int bad(parse_ctx *c, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(parse_ctx *c, const char *param, const char *fmt, ...)
{
    char msg[sizeof c->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return oai_error_set(c->err, 400, "invalid_request_error", param, "%s", msg);
}

static int no_memory(oai_error *e, const char *param)
{
    return oai_error_set(e, 500, "server_error", param, "out of memory while reading %s", param);
}

/* How a value reads in a message: "got -5", "got a string". */
static const char *kind_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction or an exponent";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    default: return "null";
    }
}

static void got_text(const json_t *v, char *buf, size_t cap)
{
    if (json_is_integer(v)) {
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        snprintf(buf, cap, "%.15g", json_real_value(v));
        if (!strpbrk(buf, ".en"))
            strncat(buf, ".0", cap - strlen(buf) - 1); /* 5.0 reads "5.0", not "5" */
    } else {
        snprintf(buf, cap, "%s", kind_name(v));
    }
}

/* An integer in [lo, hi]; `what` says the range in the message ("an integer >= 1"). */
static int get_int(parse_ctx *c, const char *key, const json_t *v, long long lo, long long hi, const char *what,
                   long long *out)
{
    *out = 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        char got[64];
        got_text(v, got, sizeof got);
        return bad(c, key, "%s must be %s, got %s", key, what, got);
    }
    *out = json_integer_value(v);
    return 0;
}

/* ---- the fields ---- */

typedef struct field field;
typedef int (*field_fn)(parse_ctx *c, const field *f, json_t *v);
struct field {
    const char *name;
    unsigned kinds;  /* 1 << OAI_COMPLETION | 1 << OAI_CHAT */
    field_fn fn;
    size_t bool_at;  /* f_bool: offsetof the member */
};

static int f_bool(parse_ctx *c, const field *f, json_t *v)
{
    if (!json_is_boolean(v))
        return bad(c, f->name, "%s must be a boolean, got %s", f->name, kind_name(v));
    *(bool *)((char *)c->r + f->bool_at) = json_is_true(v);
    return 0;
}

static int f_model(parse_ctx *c, const field *f, json_t *v)
{
    if (!json_is_string(v))
        return bad(c, f->name, "model must be a string, got %s", kind_name(v));
    c->r->model = strdup(json_string_value(v));
    return c->r->model ? 0 : no_memory(c->err, f->name);
}

static int f_user(parse_ctx *c, const field *f, json_t *v)
{
    return json_is_string(v) ? 0 : bad(c, f->name, "user must be a string, got %s", kind_name(v));
}

static int f_keep(parse_ctx *c, const field *f, json_t *v)
{
    if (strcmp(f->name, "stop_token_ids") == 0)
        c->stop_token_ids = v;
    else if (strcmp(f->name, "stream_options") == 0)
        c->stream_options = v;
    else
        c->prompt = v;
    return 0;
}

static int f_max_tokens(parse_ctx *c, const field *f, json_t *v)
{
    if (c->max_tokens_name)
        return bad(c, f->name, "%s: given beside %s (send one of the two)", f->name, c->max_tokens_name);
    long long n;
    int rc = get_int(c, f->name, v, 1, INT64_MAX, "an integer >= 1", &n);
    c->max_tokens = n;
    c->max_tokens_name = f->name;
    return rc;
}

static int f_number(parse_ctx *c, const field *f, json_t *v)
{
    bool top_p = strcmp(f->name, "top_p") == 0;
    double x = json_number_value(v);
    if (!json_is_number(v) || (top_p ? !(x > 0 && x <= 1) : !(x >= 0 && x <= 2))) {
        char got[64];
        got_text(v, got, sizeof got);
        return bad(c, f->name, "%s must be a number in %s, got %s", f->name, top_p ? "(0, 1]" : "[0, 2]", got);
    }
    *(top_p ? &c->r->top_p : &c->r->temperature) = x;
    return 0;
}

static int f_seed(parse_ctx *c, const field *f, json_t *v)
{
    long long s;
    int rc = get_int(c, f->name, v, 0, INT64_MAX, "an integer >= 0", &s);
    c->r->has_seed = rc == 0;
    c->r->seed = (uint64_t)s;
    return rc;
}

/* n and best_of: one choice per request. */
static int f_one(parse_ctx *c, const field *f, json_t *v)
{
    long long n;
    return get_int(c, f->name, v, 1, 1, "1 (one choice per request)", &n);
}

/* A feature dsacp does not implement: only its neutral value passes. */
static int f_neutral(parse_ctx *c, const field *f, json_t *v)
{
    bool neutral = json_is_false(v) || (json_is_number(v) && json_number_value(v) == 0) ||
                   (json_is_string(v) && json_string_length(v) == 0) ||
                   (json_is_array(v) && json_array_size(v) == 0) || (json_is_object(v) && json_object_size(v) == 0);
    if (neutral)
        return 0;
    return bad(c, f->name, "%s is not supported (dsacp implements no %s yet): leave it out or send null", f->name,
               f->name);
}

static int add_stop(parse_ctx *c, const char *param, json_t *v)
{
    if (!json_is_string(v))
        return bad(c, param, "%s must be a string, got %s", param, kind_name(v));
    size_t len = json_string_length(v);
    if (len == 0 || len > OAI_MAX_STOP_BYTES)
        return bad(c, param, "%s must hold 1 to %d bytes, got %zu", param, OAI_MAX_STOP_BYTES, len);
    char *s = strdup(json_string_value(v));
    if (!s)
        return no_memory(c->err, param);
    c->r->stop[c->r->n_stop++] = s;
    return 0;
}

static int f_stop(parse_ctx *c, const field *f, json_t *v)
{
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (json_is_array(v) && n > OAI_MAX_STOP)
        return bad(c, f->name, "stop holds at most %d strings, got %zu", OAI_MAX_STOP, n);
    if (n == 0)
        return 0;
    c->r->stop = calloc(n, sizeof(char *));
    if (!c->r->stop)
        return no_memory(c->err, f->name);
    if (!json_is_array(v))
        return add_stop(c, f->name, v);
    for (size_t i = 0; i < n; i++) {
        char param[32];
        snprintf(param, sizeof param, "stop[%zu]", i);
        int rc = add_stop(c, param, json_array_get(v, i));
        if (rc)
            return rc;
    }
    return 0;
}

/* chat_template_kwargs: the chat encoding's switches (DeepSeek's "thinking", Qwen's "enable_thinking"). */
static int f_kwargs(parse_ctx *c, const field *f, json_t *v)
{
    if (!json_is_object(v))
        return bad(c, f->name, "chat_template_kwargs must be an object, got %s", kind_name(v));
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x) {
        char param[64];
        snprintf(param, sizeof param, "chat_template_kwargs.%.40s", key);
        if (strcmp(key, "thinking") != 0 && strcmp(key, "enable_thinking") != 0)
            return bad(c, param, "%s: unknown field (dsacp's chat encoding takes thinking)", param);
        if (!json_is_boolean(x) && !json_is_null(x))
            return bad(c, param, "%s must be a boolean, got %s", param, kind_name(x));
        c->r->thinking = json_is_true(x);
    }
    return 0;
}

#define COMPL (1u << OAI_COMPLETION)
#define CHAT (1u << OAI_CHAT)
#define BOTH (COMPL | CHAT)
#define BOOL_FIELD(name, kinds, member) {name, kinds, f_bool, offsetof(oai_request, member)}

static const field fields[] = {
    {"model", BOTH, f_model, 0},
    {"prompt", COMPL, f_keep, 0},
    {"messages", CHAT, f_keep, 0},
    {"max_tokens", BOTH, f_max_tokens, 0},
    {"max_completion_tokens", CHAT, f_max_tokens, 0},
    {"temperature", BOTH, f_number, 0},
    {"top_p", BOTH, f_number, 0},
    {"seed", BOTH, f_seed, 0},
    {"stop", BOTH, f_stop, 0},
    {"stop_token_ids", BOTH, f_keep, 0},
    {"stream_options", BOTH, f_keep, 0},
    {"n", BOTH, f_one, 0},
    {"best_of", COMPL, f_one, 0},
    {"user", BOTH, f_user, 0},
    {"chat_template_kwargs", CHAT, f_kwargs, 0},
    BOOL_FIELD("stream", BOTH, stream),
    BOOL_FIELD("echo", COMPL, echo),
    BOOL_FIELD("ignore_eos", BOTH, ignore_eos),
    BOOL_FIELD("skip_special_tokens", BOTH, skip_special_tokens),
    BOOL_FIELD("return_token_ids", BOTH, return_token_ids),
    /* Not implemented: log probabilities (completions: an integer, chat: a boolean and
     * top_logprobs), penalties, logit_bias, suffix, tools. Neutral values only. */
    {"logprobs", BOTH, f_neutral, 0},
    {"top_logprobs", CHAT, f_neutral, 0},
    {"presence_penalty", BOTH, f_neutral, 0},
    {"frequency_penalty", BOTH, f_neutral, 0},
    {"logit_bias", BOTH, f_neutral, 0},
    {"suffix", COMPL, f_neutral, 0},
    {"tools", CHAT, f_neutral, 0},
    {"tool_choice", CHAT, f_neutral, 0},
    {"parallel_tool_calls", CHAT, f_neutral, 0},
    {"response_format", CHAT, f_neutral, 0},
};

static int walk_fields(parse_ctx *c, json_t *body)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        const field *f = NULL;
        for (size_t i = 0; i < sizeof fields / sizeof fields[0] && !f; i++)
            if ((fields[i].kinds & (1u << c->kind)) && strcmp(fields[i].name, key) == 0)
                f = &fields[i];
        if (!f) {
            char param[sizeof c->err->param];
            snprintf(param, sizeof param, "%s", key);
            return bad(c, param, "%.60s: unknown field", key);
        }
        int rc = json_is_null(v) ? 0 : f->fn(c, f, v);
        if (rc)
            return rc;
    }
    return 0;
}

static int read_stream_options(parse_ctx *c)
{
    json_t *o = c->stream_options;
    if (!o)
        return 0;
    if (!json_is_object(o))
        return bad(c, "stream_options", "stream_options must be an object, got %s", kind_name(o));
    if (!c->r->stream)
        return bad(c, "stream_options", "stream_options is only allowed with stream: true");
    const char *key;
    json_t *x;
    json_object_foreach(o, key, x) {
        char param[64];
        snprintf(param, sizeof param, "stream_options.%.40s", key);
        bool usage = strcmp(key, "include_usage") == 0;
        if (!usage && strcmp(key, "continuous_usage_stats") != 0)
            return bad(c, param, "%s: unknown field", param);
        if (!json_is_boolean(x) && !json_is_null(x))
            return bad(c, param, "%s must be a boolean, got %s", param, kind_name(x));
        if (usage)
            c->r->include_usage = json_is_true(x);
        else if (json_is_true(x))
            return bad(c, param, "%s is not supported (usage comes once, at the end)", param);
    }
    return 0;
}

/* ---- the prompt ---- */

static int64_t id_limit(const parse_ctx *c)
{
    int64_t v = c->cfg->vocab_size;
    if (c->tok && dsacp_tokenizer_vocab_size(c->tok) < v)
        v = dsacp_tokenizer_vocab_size(c->tok);
    return v;
}

/* A token id at `param`, in [0, id_limit). */
static int read_id(parse_ctx *c, const char *param, const json_t *v, int32_t *out)
{
    long long id;
    char what[64];
    snprintf(what, sizeof what, "a token id (an integer in [0, %lld))", (long long)id_limit(c));
    int rc = get_int(c, param, v, 0, id_limit(c) - 1, what, &id);
    *out = (int32_t)id;
    return rc;
}

static int alloc_prompt(parse_ctx *c, size_t n, const char *param)
{
    size_t bytes;
    if (!dsacp_mul_ok(n ? n : 1, sizeof(int32_t), &bytes) || !(c->r->prompt = dsacp_alloc(bytes)))
        return no_memory(c->err, param);
    return 0;
}

static int prompt_ids(parse_ctx *c, const json_t *a)
{
    size_t n = json_array_size(a);
    if (n == 0)
        return bad(c, "prompt", "prompt must not be empty");
    const json_t *first = json_array_get(a, 0);
    if (json_is_string(first) || json_is_array(first))
        return bad(c, "prompt", "prompt: a batch of prompts (an array of strings or of arrays) is not supported; "
                                "send one prompt per request");
    int rc = alloc_prompt(c, n, "prompt");
    for (size_t i = 0; i < n && !rc; i++) {
        char param[32];
        snprintf(param, sizeof param, "prompt[%zu]", i);
        rc = read_id(c, param, json_array_get(a, i), &c->r->prompt[i]);
    }
    c->r->prompt_len = (int64_t)n;
    return rc;
}

/* Text to ids (add_special: the post-processor's tokens, as tokenizers' encode does). */
static int tokenize(parse_ctx *c, const char *text, size_t len, bool add_special, const char *param)
{
    if (!c->tok)
        return bad(c, param, "%s: text needs a tokenizer and the server has none", param);
    int64_t cap = (int64_t)len + 8, n = 0;
    int rc = alloc_prompt(c, (size_t)cap, param);
    if (rc)
        return rc;
    rc = dsacp_tokenizer_encode(c->tok, text, len, add_special, c->r->prompt, cap, &n);
    if (rc == DSACP_ERANGE) {
        dsacp_free(c->r->prompt);
        c->r->prompt = NULL;
        if ((rc = alloc_prompt(c, (size_t)n, param)))
            return rc;
        cap = n;
        rc = dsacp_tokenizer_encode(c->tok, text, len, add_special, c->r->prompt, cap, &n);
    }
    if (rc)
        return bad(c, param, "%s: %s", param, dsacp_last_error());
    c->r->prompt_len = n;
    return 0;
}

static int completion_prompt(parse_ctx *c)
{
    const json_t *p = c->prompt;
    if (!p)
        return bad(c, "prompt", "prompt: missing (a string or an array of token ids)");
    if (json_is_array(p))
        return prompt_ids(c, p);
    if (!json_is_string(p))
        return bad(c, "prompt", "prompt must be a string or an array of token ids, got %s", kind_name(p));
    if (json_string_length(p) == 0)
        return bad(c, "prompt", "prompt must not be empty");
    return tokenize(c, json_string_value(p), json_string_length(p), true, "prompt");
}

/* "messages[2].content: ..." -> param "messages[2].content". */
static int chat_error(parse_ctx *c, const char *msg)
{
    char param[sizeof c->err->param] = "messages";
    const char *colon = strstr(msg, ": ");
    if (strncmp(msg, "messages", 8) == 0 && colon && (size_t)(colon - msg) < sizeof param)
        snprintf(param, sizeof param, "%.*s", (int)(colon - msg), msg);
    return bad(c, param, "%s", msg);
}

static int chat_prompt(parse_ctx *c)
{
    if (!c->prompt)
        return bad(c, "messages", "messages: missing (an array of messages)");
    if (!json_is_array(c->prompt))
        return bad(c, "messages", "messages must be an array of messages, got %s", kind_name(c->prompt));
    char *json = json_dumps(c->prompt, JSON_COMPACT);
    if (!json)
        return no_memory(c->err, "messages");
    dsacp_chat_messages *m = NULL;
    int rc = dsacp_chat_messages_parse(json, strlen(json), &m);
    free(json);
    if (rc)
        return chat_error(c, dsacp_last_error());
    size_t len = 0;
    char *text = NULL;
    rc = dsacp_chat_encode(m->items, m->count, c->r->thinking, true, NULL, 0, &len);
    if (rc == DSACP_ERANGE) {
        text = dsacp_alloc(len + 1);
        rc = text ? dsacp_chat_encode(m->items, m->count, c->r->thinking, true, text, len + 1, &len) : DSACP_ENOMEM;
    }
    dsacp_chat_messages_free(m);
    if (rc == DSACP_ENOMEM)
        rc = no_memory(c->err, "messages");
    else if (rc)
        rc = chat_error(c, dsacp_last_error());
    else
        rc = tokenize(c, text, len, false, "messages");
    dsacp_free(text);
    return rc;
}

/* ---- limits and stop ids ---- */

static int resolve_max_tokens(parse_ctx *c, int64_t default_max_tokens)
{
    int64_t limit = c->cfg->max_position_embeddings, len = c->r->prompt_len;
    const char *what = c->kind == OAI_CHAT ? "messages" : "prompt";
    if (len >= limit)
        return bad(c, what, "%s: this model's maximum context length is %lld tokens and the prompt has %lld, "
                            "leaving no room for a completion", what, (long long)limit, (long long)len);
    if (c->max_tokens_name) {
        if (c->max_tokens > limit - len)
            return bad(c, c->max_tokens_name,
                       "%s: this model's maximum context length is %lld tokens; the prompt has %lld and %s is "
                       "%lld (at most %lld)", c->max_tokens_name, (long long)limit, (long long)len,
                       c->max_tokens_name, (long long)c->max_tokens, (long long)(limit - len));
        c->r->max_tokens = c->max_tokens;
    } else {
        int64_t left = limit - len;
        c->r->max_tokens = c->kind == OAI_COMPLETION && default_max_tokens > 0 && default_max_tokens < left
                               ? default_max_tokens : left;
    }
    return 0;
}

static int stop_ids(parse_ctx *c)
{
    const json_t *a = c->stop_token_ids;
    if (a && !json_is_array(a))
        return bad(c, "stop_token_ids", "stop_token_ids must be an array of token ids, got %s", kind_name(a));
    size_t n = a ? json_array_size(a) : 0, bytes;
    if (!dsacp_mul_ok(n + 1, sizeof(int32_t), &bytes) || !(c->r->stop_ids = dsacp_alloc(bytes)))
        return no_memory(c->err, "stop_token_ids");
    int32_t eos = c->tok ? dsacp_tokenizer_token_id(c->tok, OAI_EOS) : -1;
    if (eos >= 0 && !c->r->ignore_eos)
        c->r->stop_ids[c->r->n_stop_ids++] = eos;
    for (size_t i = 0; i < n; i++) {
        char param[40];
        snprintf(param, sizeof param, "stop_token_ids[%zu]", i);
        int32_t id;
        int rc = read_id(c, param, json_array_get(a, i), &id);
        if (rc)
            return rc;
        c->r->stop_ids[c->r->n_stop_ids++] = id;
    }
    return 0;
}

/* ---- the body ---- */

/* The top-level key whose value holds byte `at` of a body jansson refused (invalid UTF-8, an
 * integer past 64 bits): a scan of the valid prefix, tracking strings and nesting. "" if none. */
static void key_at(const char *body, size_t len, size_t at, char *out, size_t cap)
{
    int depth = 0;
    bool in_str = false, esc = false, want_key = false;
    size_t start = 0;
    out[0] = '\0';
    for (size_t i = 0; i < len && i < at; i++) {
        char ch = body[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (ch == '\\')
                esc = true;
            else if (ch == '"') {
                in_str = false;
                if (depth == 1 && want_key) {
                    snprintf(out, cap, "%.*s", (int)(i - start), body + start);
                    want_key = false;
                }
            }
        } else if (ch == '"') {
            in_str = true;
            start = i + 1;
        } else if (ch == '{' || ch == '[') {
            want_key = ++depth == 1 && ch == '{';
        } else if (ch == '}' || ch == ']') {
            depth--;
        } else if (ch == ',' && depth == 1) {
            want_key = true;
        }
    }
}

static int load_body(const char *body, size_t len, json_t **out, oai_error *err)
{
    json_error_t je;
    *out = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!*out) {
        char param[sizeof err->param] = "";
        enum json_error_code code = json_error_code(&je);
        if (code == json_error_invalid_utf8 || code == json_error_numeric_overflow ||
            code == json_error_duplicate_key)
            key_at(body, len, (size_t)je.position, param, sizeof param);
        const char *what = code == json_error_invalid_utf8 ? "invalid UTF-8" : "malformed JSON";
        return oai_error_set(err, 400, "invalid_request_error", param, "%s%s%s at line %d, column %d: %s", what,
                             param[0] ? " in " : " in the body", param, je.line, je.column, je.text);
    }
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return oai_error_set(err, 400, "invalid_request_error", "", "the body must be a JSON object");
    }
    return 0;
}

static int parse_body(parse_ctx *c, json_t *body, int64_t default_max_tokens)
{
    int rc = walk_fields(c, body);
    if (!rc)
        rc = read_stream_options(c);
    if (!rc && c->r->echo && c->r->stream)
        rc = bad(c, "echo", "echo is not supported with stream: true");
    if (!rc)
        rc = c->kind == OAI_CHAT ? chat_prompt(c) : completion_prompt(c);
    if (!rc)
        rc = resolve_max_tokens(c, default_max_tokens);
    if (!rc)
        rc = stop_ids(c);
    return rc;
}

int oai_request_parse(oai_kind kind, const char *body, size_t len, const dsacp_tokenizer *tok,
                      const dsacp_config *cfg, int64_t default_max_tokens, oai_request *out, oai_error *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->kind = kind;
    out->temperature = 1.0;
    out->top_p = 1.0;
    out->skip_special_tokens = true;
    json_t *root = NULL;
    int rc = load_body(body ? body : "", body ? len : 0, &root, err);
    if (rc)
        return rc;
    parse_ctx c = {.kind = kind, .tok = tok, .cfg = cfg, .r = out, .err = err};
    rc = parse_body(&c, root, default_max_tokens);
    json_decref(root);
    if (rc)
        oai_request_free(out);
    return rc;
}

void oai_request_free(oai_request *r)
{
    if (!r)
        return;
    free(r->model);
    dsacp_free(r->prompt);
    for (int64_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    dsacp_free(r->stop_ids);
    oai_kind kind = r->kind;
    memset(r, 0, sizeof *r);
    r->kind = kind;
}

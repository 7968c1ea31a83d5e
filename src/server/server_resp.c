/*
 * server_resp.c -- response bodies in OpenAI's shapes (server.h): text_completion and
 * chat.completion objects, their stream chunks as server-sent events, the usage chunk, error
 * objects and the model list. Built with jansson; every string returned is malloc'd.
 */
#include "server/server.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The length of the UTF-8 character at s[0..n) (1 to 4), or 0 when it is not one: a stray
 * continuation byte, a truncated or overlong sequence, a surrogate, past U+10FFFF. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xC2 && s[0] <= 0xDF ? 2 : s[0] >= 0xE0 && s[0] <= 0xEF ? 3
               : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) || (s[0] == 0xF0 && s[1] < 0x90) ||
        (s[0] == 0xF4 && s[1] > 0x8F))
        return 0;
    return len;
}

/* A JSON string of text; bytes that are not UTF-8 become U+FFFD (the detokenizer never produces
 * them, but a response must stay valid JSON whatever it is given). */
static json_t *text_value(const char *text)
{
    json_t *v = json_string(text);
    if (v)
        return v;
    size_t len = strlen(text), cap;
    if (!dsacp_mul_ok(len, 3, &cap) || !dsacp_add_ok(cap, 1, &cap))
        return NULL;
    char *clean = malloc(cap);
    if (!clean)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_char((const unsigned char *)text + i, len - i);
        memcpy(clean + o, n ? text + i : "\xEF\xBF\xBD", n ? n : 3);
        o += n ? n : 3;
        i += n ? n : 1;
    }
    v = json_stringn(clean, o);
    free(clean);
    return v;
}

/* Sets obj[key] to a new value (NULL: out of memory, remembered in *ok). */
static void put(json_t *obj, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(obj, key, v) != 0)
        *ok = false;
}

static json_t *ids_value(const int32_t *ids, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_integer(ids[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *usage_value(int64_t prompt_tokens, int64_t completion_tokens)
{
    return json_pack("{sI sI sI}", "prompt_tokens", (json_int_t)prompt_tokens, "completion_tokens",
                     (json_int_t)completion_tokens, "total_tokens", (json_int_t)(prompt_tokens + completion_tokens));
}

/* {"id", "object", "created", "model", "choices": [choice]} (choice NULL: []). */
static json_t *envelope(const char *object, const char *id, const char *model, int64_t created, json_t *choice,
                        bool *ok)
{
    json_t *o = json_object(), *choices = json_array();
    if (!o || !choices) {
        json_decref(o);
        json_decref(choices);
        json_decref(choice);
        *ok = false;
        return NULL;
    }
    put(o, "id", json_string(id), ok);
    put(o, "object", json_string(object), ok);
    put(o, "created", json_integer(created), ok);
    put(o, "model", json_string(model), ok);
    if (choice && json_array_append_new(choices, choice) != 0)
        *ok = false;
    put(o, "choices", choices, ok);
    return o;
}

/* choices[0]: index, the chat's message / delta (inner, under key) or the completion's text,
 * logprobs null, finish_reason, token_ids when asked. */
static json_t *choice(oai_kind kind, const char *key, json_t *inner, const char *text, const char *finish_reason,
                      const int32_t *ids, int64_t n_ids, bool *ok)
{
    json_t *c = json_object();
    if (!c) {
        json_decref(inner);
        *ok = false;
        return NULL;
    }
    put(c, "index", json_integer(0), ok);
    if (kind == OAI_CHAT)
        put(c, key, inner, ok);
    else
        put(c, "text", text_value(text ? text : ""), ok);
    put(c, "logprobs", json_null(), ok);
    put(c, "finish_reason", finish_reason ? json_string(finish_reason) : json_null(), ok);
    if (ids)
        put(c, "token_ids", ids_value(ids, n_ids), ok);
    return c;
}

static char *dump(json_t *o, bool ok, bool sse)
{
    char *s = ok && o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s || !sse)
        return s;
    size_t len = strlen(s);
    char *e = malloc(len + sizeof "data: \n\n");
    if (e)
        snprintf(e, len + sizeof "data: \n\n", "data: %s\n\n", s);
    free(s);
    return e;
}

static json_t *message_value(const char *text, const char *reasoning, bool *ok)
{
    json_t *m = json_object();
    if (m) {
        put(m, "role", json_string("assistant"), ok);
        put(m, "content", text ? text_value(text) : json_null(), ok);
        if (reasoning)
            put(m, "reasoning_content", text_value(reasoning), ok);
    }
    return m;
}

/* A chunk's delta: the role on the first one, then reasoning_content or content. */
static json_t *delta_value(const char *text, const char *reasoning, bool first, bool *ok)
{
    json_t *d = json_object();
    if (d && first)
        put(d, "role", json_string("assistant"), ok);
    if (d && reasoning)
        put(d, "reasoning_content", text_value(reasoning), ok);
    else if (d && (text || first))
        put(d, "content", text_value(text ? text : ""), ok);
    return d;
}

char *oai_response_json(oai_kind kind, const char *id, const char *model, int64_t created, const char *text,
                        const char *reasoning, const char *finish_reason, int64_t prompt_tokens,
                        int64_t completion_tokens, const int32_t *token_ids, int64_t n_token_ids)
{
    bool ok = true;
    json_t *m = kind == OAI_CHAT ? message_value(text, reasoning, &ok) : NULL;
    json_t *c = choice(kind, "message", m, text, finish_reason, token_ids, n_token_ids, &ok);
    json_t *o = envelope(kind == OAI_CHAT ? "chat.completion" : "text_completion", id, model, created, c, &ok);
    if (o)
        put(o, "usage", usage_value(prompt_tokens, completion_tokens), &ok);
    return dump(o, ok, false);
}

char *oai_chunk_sse(oai_kind kind, const char *id, const char *model, int64_t created, const char *text,
                    const char *reasoning, bool first, const char *finish_reason, const int32_t *token_ids,
                    int64_t n_token_ids)
{
    bool ok = true;
    json_t *d = kind == OAI_CHAT ? delta_value(text, reasoning, first, &ok) : NULL;
    json_t *c = choice(kind, "delta", d, text, finish_reason, token_ids, n_token_ids, &ok);
    json_t *o = envelope(kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion", id, model, created, c, &ok);
    return dump(o, ok, true);
}

char *oai_usage_sse(oai_kind kind, const char *id, const char *model, int64_t created, int64_t prompt_tokens,
                    int64_t completion_tokens)
{
    bool ok = true;
    json_t *o = envelope(kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion", id, model, created, NULL, &ok);
    if (o)
        put(o, "usage", usage_value(prompt_tokens, completion_tokens), &ok);
    return dump(o, ok, true);
}

char *oai_error_json(const oai_error *e)
{
    bool ok = true;
    json_t *o = json_object(), *x = json_object();
    if (!o || !x) {
        json_decref(o);
        json_decref(x);
        return NULL;
    }
    put(x, "message", text_value(e->message), &ok);
    put(x, "type", json_string(e->type), &ok);
    put(x, "param", e->param[0] ? text_value(e->param) : json_null(), &ok);
    /* code: OpenAI's string when the error's type is one ("model_not_found"), else null as
     * OpenAI writes it (the HTTP status says the rest). */
    size_t tl = strlen(e->type);
    bool is_code = tl > 0 && (tl < 6 || strcmp(e->type + tl - 6, "_error") != 0);
    put(x, "code", is_code ? json_string(e->type) : json_null(), &ok);
    put(o, "error", x, &ok);
    return dump(o, ok, false);
}

char *oai_models_json(const char *name, int64_t created, int64_t max_model_len)
{
    json_t *o = json_pack("{ss s[{ss ss sI ss ss sI}]}", "object", "list", "data", "id", name, "object", "model",
                          "created", (json_int_t)created, "owned_by", "dsacp", "root", name, "max_model_len",
                          (json_int_t)max_model_len);
    return dump(o, o != NULL, false);
}

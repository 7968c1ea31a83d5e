/*
 * chat.c -- DeepSeek-V3.2's message encoding (docs/text.md section 2): a conversation
 * becomes the prompt text, special tokens written as their text; and the reader of OpenAI
 * "messages" arrays that feeds it. The rules are DeepSeek's encoding/encoding_dsv32.py
 * (DeepSeek-V3.2 release), restated in the docs; the code here is dsacp's own.
 */
#include "text/chat.h"

#include <stdlib.h>
#include <string.h>

/* The special tokens, as the tokenizer's added tokens spell them (U+FF5C and U+2581 inside). */
#define CHAT_BOS "<｜begin▁of▁sentence｜>"
#define CHAT_EOS "<｜end▁of▁sentence｜>"
#define CHAT_USER "<｜User｜>"
#define CHAT_ASSISTANT "<｜Assistant｜>"
#define CHAT_THINK_START "<think>"
#define CHAT_THINK_END "</think>"

typedef enum chat_role { ROLE_NONE, ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } chat_role;

static chat_role role_kind(const char *role)
{
    if (!role)
        return ROLE_NONE;
    if (strcmp(role, "system") == 0)
        return ROLE_SYSTEM;
    if (strcmp(role, "user") == 0)
        return ROLE_USER;
    if (strcmp(role, "assistant") == 0)
        return ROLE_ASSISTANT;
    return ROLE_NONE;
}

/* The role of message i, or the error naming it. */
static int role_of(int64_t i, const char *role, chat_role *out)
{
    *out = role_kind(role);
    if (*out != ROLE_NONE)
        return DSACP_OK;
    if (!role)
        return dsacp_error(DSACP_EINVAL, "messages[%lld].role: missing", (long long)i);
    if (strcmp(role, "tool") == 0 || strcmp(role, "function") == 0)
        return dsacp_error(DSACP_EUNSUPPORTED,
                           "messages[%lld].role: '%s' messages are not supported (dsacp does not support tool calls yet)",
                           (long long)i, role);
    if (strcmp(role, "developer") == 0)
        return dsacp_error(DSACP_EUNSUPPORTED,
                           "messages[%lld].role: 'developer' is not supported (system, user and assistant are)",
                           (long long)i);
    return dsacp_error(DSACP_EINVAL, "messages[%lld].role: '%.40s' is not a role (system, user and assistant are)",
                       (long long)i, role);
}

static const char *role_name(chat_role r)
{
    return r == ROLE_USER ? "user" : r == ROLE_ASSISTANT ? "assistant" : "system";
}

/* One message on its own: its role, a user's content, reasoning on assistants only. */
static int check_message(int64_t i, const dsacp_chat_message *m, chat_role *role)
{
    int rc = role_of(i, m->role, role);
    if (rc)
        return rc;
    if (*role == ROLE_USER && !m->content)
        return dsacp_error(DSACP_EINVAL, "messages[%lld].content: missing (a user message needs its text)", (long long)i);
    if (*role != ROLE_ASSISTANT && m->reasoning)
        return dsacp_error(DSACP_EINVAL, "messages[%lld].reasoning: only an assistant message has reasoning (this one is '%s')",
                           (long long)i, role_name(*role));
    return DSACP_OK;
}

/* The conversation's order (system messages anywhere; user and assistant turns alternating from
 * a user turn) and what the two flags need. *last_user: the index of the last user message. */
static int check_conversation(const dsacp_chat_message *msgs, int64_t n, bool thinking, bool add_generation_prompt,
                              int64_t *last_user)
{
    if (!msgs || n < 1)
        return dsacp_error(DSACP_EINVAL, "messages: at least one message is needed (n = %lld)", (long long)n);
    chat_role turn = ROLE_NONE, last = ROLE_NONE;
    int64_t turn_at = -1;
    *last_user = -1;
    for (int64_t i = 0; i < n; i++) {
        int rc = check_message(i, &msgs[i], &last);
        if (rc)
            return rc;
        if (last == ROLE_SYSTEM)
            continue;
        if (turn == ROLE_NONE && last == ROLE_ASSISTANT)
            return dsacp_error(DSACP_EINVAL, "messages[%lld].role: the first turn must be 'user', not 'assistant'", (long long)i);
        if (turn == last)
            return dsacp_error(DSACP_EINVAL,
                               "messages[%lld].role: '%s' follows '%s' at messages[%lld]; user and assistant turns alternate",
                               (long long)i, role_name(last), role_name(turn), (long long)turn_at);
        turn = last;
        turn_at = i;
        if (last == ROLE_USER)
            *last_user = i;
    }
    if (add_generation_prompt && last != ROLE_USER)
        return dsacp_error(DSACP_EINVAL,
                           "messages[%lld].role: the last message is '%s'; a generation prompt needs a user message last",
                           (long long)(n - 1), role_name(last));
    if (thinking && turn == ROLE_ASSISTANT && turn_at > *last_user &&
        (!msgs[turn_at].reasoning || !msgs[turn_at].reasoning[0]))
        return dsacp_error(DSACP_EINVAL,
                           "messages[%lld].reasoning: missing; in thinking mode an assistant message after the last user "
                           "message carries its reasoning (DeepSeek-V3.2's encoding refuses it too)",
                           (long long)turn_at);
    return DSACP_OK;
}

/* The text being written: bytes past cap are counted, not written. */
typedef struct text_out {
    char *out;
    size_t cap;
    size_t len;
    bool overflow;
} text_out;

static void put(text_out *t, const char *s)
{
    size_t k = s ? strlen(s) : 0;
    if (k && t->len <= t->cap && k <= t->cap - t->len)
        memcpy(t->out + t->len, s, k);
    if (!dsacp_add_ok(t->len, k, &t->len))
        t->overflow = true;
}

/* V3.2's rendering, message by message (docs/text.md section 2.2). */
static void render(const dsacp_chat_message *msgs, int64_t n, bool thinking, bool add_generation_prompt,
                   int64_t last_user, text_out *t)
{
    put(t, CHAT_BOS);
    for (int64_t i = 0; i < n; i++) {
        const dsacp_chat_message *m = &msgs[i];
        switch (role_kind(m->role)) {
        case ROLE_USER:
            put(t, CHAT_USER);
            put(t, m->content);
            if (i < n - 1 || add_generation_prompt) {
                put(t, CHAT_ASSISTANT);
                put(t, thinking && i == last_user ? CHAT_THINK_START : CHAT_THINK_END);
            }
            break;
        case ROLE_ASSISTANT:
            if (thinking && i > last_user) {
                put(t, m->reasoning);
                put(t, CHAT_THINK_END);
            }
            put(t, m->content);
            put(t, CHAT_EOS);
            break;
        default: /* system: its text where it stands */
            put(t, m->content);
            break;
        }
    }
}

int dsacp_chat_encode(const dsacp_chat_message *msgs, int64_t n, bool thinking, bool add_generation_prompt,
                      char *out, size_t cap, size_t *len)
{
    if (!len || (!out && cap))
        return dsacp_error(DSACP_EINVAL, "dsacp_chat_encode: len is NULL, or out is NULL with cap %zu", cap);
    *len = 0;
    int64_t last_user = -1;
    int rc = check_conversation(msgs, n, thinking, add_generation_prompt, &last_user);
    if (rc)
        return rc;
    text_out t = {out, cap, 0, false};
    render(msgs, n, thinking, add_generation_prompt, last_user, &t);
    if (t.overflow)
        return dsacp_error(DSACP_ERANGE, "messages: the prompt's length overflows size_t");
    *len = t.len;
    if (t.len >= cap)
        return dsacp_error(DSACP_ERANGE, "out: the prompt needs %zu bytes and its NUL, cap is %zu", t.len, cap);
    out[t.len] = '\0';
    return DSACP_OK;
}

/* ---- the reader of OpenAI "messages" ---- */

/* The members of one message object. */
typedef struct message_json {
    const json_t *role, *content, *reasoning;
    const char *reasoning_key;
} message_json;

/* Fields OpenAI defines for a message that dsacp does not implement yet. */
static bool openai_unsupported(const char *key)
{
    static const char *const names[] = {"name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        if (strcmp(key, names[k]) == 0)
            return true;
    return false;
}

/* A JSON string's bytes; false when it holds a NUL (a C string would end there). */
static bool plain_string(const json_t *s, size_t *len)
{
    *len = json_string_length(s);
    return strlen(json_string_value(s)) == *len;
}

/* Bytes of a text part array joined with "\n" (vLLM's join), after checking every part. */
static int parts_size(int64_t i, const json_t *parts, size_t *bytes)
{
    size_t j, total = 0;
    const json_t *part;
    json_array_foreach(parts, j, part) {
        const char *key;
        const json_t *value, *type = NULL, *text = NULL;
        if (!json_is_object(part))
            return dsacp_error(DSACP_EINVAL, "messages[%lld].content[%zu]: not an object", (long long)i, j);
        json_object_foreach((json_t *)part, key, value) {
            if (strcmp(key, "type") == 0)
                type = value;
            else if (strcmp(key, "text") == 0)
                text = value;
            else
                return dsacp_error(DSACP_EINVAL, "messages[%lld].content[%zu].%.64s: unknown field", (long long)i, j, key);
        }
        if (!json_is_string(type))
            return dsacp_error(DSACP_EINVAL, "messages[%lld].content[%zu].type: missing or not a string", (long long)i, j);
        if (strcmp(json_string_value(type), "text") != 0)
            return dsacp_error(DSACP_EUNSUPPORTED, "messages[%lld].content[%zu].type: '%.40s' parts are not supported (text parts only)",
                               (long long)i, j, json_string_value(type));
        size_t k;
        if (!json_is_string(text) || !plain_string(text, &k))
            return dsacp_error(DSACP_EINVAL, "messages[%lld].content[%zu].text: missing, not a string, or holding a NUL",
                               (long long)i, j);
        if (!dsacp_add_ok(total, k + (j > 0), &total))
            return dsacp_error(DSACP_ERANGE, "messages[%lld].content: too long", (long long)i);
    }
    *bytes = total;
    return DSACP_OK;
}

/* The bytes of a content or reasoning value (string, part array, null), NUL excluded. */
static int text_size(int64_t i, const char *field, const json_t *v, size_t *bytes)
{
    *bytes = 0;
    if (!v || json_is_null(v))
        return DSACP_OK;
    if (json_is_string(v)) {
        if (!plain_string(v, bytes))
            return dsacp_error(DSACP_EINVAL, "messages[%lld].%s: holds a NUL character", (long long)i, field);
        return DSACP_OK;
    }
    if (json_is_array(v) && strcmp(field, "content") == 0)
        return parts_size(i, v, bytes);
    return dsacp_error(DSACP_EINVAL, "messages[%lld].%s: not a string%s", (long long)i, field,
                       strcmp(field, "content") == 0 ? " or an array of text parts" : "");
}

/* Sorts one message object's members, refusing unknown and unsupported ones. */
static int message_members(int64_t i, const json_t *obj, message_json *m)
{
    const char *key;
    const json_t *value;
    memset(m, 0, sizeof(*m));
    if (!json_is_object(obj))
        return dsacp_error(DSACP_EINVAL, "messages[%lld]: not an object", (long long)i);
    json_object_foreach((json_t *)obj, key, value) {
        if (strcmp(key, "role") == 0) {
            m->role = value;
        } else if (strcmp(key, "content") == 0) {
            m->content = value;
        } else if (strcmp(key, "reasoning_content") == 0 || strcmp(key, "reasoning") == 0) {
            if (m->reasoning)
                return dsacp_error(DSACP_EINVAL, "messages[%lld].%s: given beside %s (one of the two)", (long long)i, key,
                                   m->reasoning_key);
            m->reasoning = value;
            m->reasoning_key = key;
        } else if (openai_unsupported(key)) {
            return dsacp_error(DSACP_EUNSUPPORTED, "messages[%lld].%s: not supported yet (dsacp reads role, content and reasoning)",
                               (long long)i, key);
        } else {
            return dsacp_error(DSACP_EINVAL, "messages[%lld].%.64s: unknown field", (long long)i, key);
        }
    }
    return DSACP_OK;
}

/* One message object checked; *bytes = what its strings take with their NULs. */
static int message_check(int64_t i, const json_t *obj, message_json *m, size_t *bytes)
{
    int rc = message_members(i, obj, m);
    if (rc)
        return rc;
    if (!json_is_string(m->role))
        return dsacp_error(DSACP_EINVAL, "messages[%lld].role: %s", (long long)i, m->role ? "not a string" : "missing");
    chat_role role;
    if ((rc = role_of(i, json_string_value(m->role), &role)))
        return rc;
    if (role != ROLE_ASSISTANT && (!m->content || json_is_null(m->content)))
        return dsacp_error(DSACP_EINVAL, "messages[%lld].content: %s (only an assistant's content may be left out)",
                           (long long)i, m->content ? "null" : "missing");
    if (role != ROLE_ASSISTANT && m->reasoning)
        return dsacp_error(DSACP_EINVAL, "messages[%lld].%s: only an assistant message has reasoning", (long long)i,
                           m->reasoning_key);
    size_t content, reasoning;
    if ((rc = text_size(i, "content", m->content, &content)) ||
        (rc = text_size(i, m->reasoning_key ? m->reasoning_key : "reasoning", m->reasoning, &reasoning)))
        return rc;
    size_t role_len = json_string_length(m->role); /* one of the three names */
    if (!dsacp_add_ok(content, reasoning, bytes) || !dsacp_add_ok(*bytes, role_len + 3, bytes))
        return dsacp_error(DSACP_ERANGE, "messages[%lld]: too long", (long long)i);
    return DSACP_OK;
}

/* Copies a checked content or reasoning value into *dst; returns the C string (NULL for a
 * missing or null reasoning). */
static const char *copy_text(const json_t *v, bool keep_null, char **dst)
{
    if ((!v || json_is_null(v)) && keep_null)
        return NULL;
    char *start = *dst, *p = *dst;
    if (v && json_is_string(v)) {
        memcpy(p, json_string_value(v), json_string_length(v));
        p += json_string_length(v);
    } else if (v && json_is_array(v)) {
        size_t j;
        const json_t *part;
        json_array_foreach(v, j, part) {
            const json_t *text = json_object_get(part, "text");
            if (j > 0)
                *p++ = '\n';
            memcpy(p, json_string_value(text), json_string_length(text));
            p += json_string_length(text);
        }
    }
    *p++ = '\0';
    *dst = p;
    return start;
}

int dsacp_chat_messages_from_json(const json_t *array, dsacp_chat_messages **out)
{
    *out = NULL;
    if (!json_is_array(array))
        return dsacp_error(DSACP_EINVAL, "messages: not an array");
    size_t count = json_array_size(array), bytes = 0, total;
    message_json m;
    for (size_t i = 0; i < count; i++) {
        size_t one = 0;
        int rc = message_check((int64_t)i, json_array_get(array, i), &m, &one);
        if (rc)
            return rc;
        if (!dsacp_add_ok(bytes, one, &bytes))
            return dsacp_error(DSACP_ERANGE, "messages: too long");
    }
    size_t head;
    if (!dsacp_mul_ok(count, sizeof(dsacp_chat_message), &head) ||
        !dsacp_add_ok(head, sizeof(dsacp_chat_messages), &head) || !dsacp_add_ok(head, bytes, &total))
        return dsacp_error(DSACP_ERANGE, "messages: too long");
    dsacp_chat_messages *msgs = malloc(total);
    if (!msgs)
        return dsacp_error(DSACP_ENOMEM, "messages: %zu bytes", total);
    dsacp_chat_message *items = (dsacp_chat_message *)(msgs + 1);
    char *chars = (char *)(items + count);
    for (size_t i = 0; i < count; i++) {
        size_t one = 0;
        (void)message_check((int64_t)i, json_array_get(array, i), &m, &one); /* checked above */
        items[i].role = copy_text(m.role, false, &chars);
        items[i].content = copy_text(m.content, false, &chars);
        items[i].reasoning = copy_text(m.reasoning, true, &chars);
    }
    msgs->items = items;
    msgs->count = (int64_t)count;
    *out = msgs;
    return DSACP_OK;
}

int dsacp_chat_messages_parse(const char *json, size_t len, dsacp_chat_messages **out)
{
    if (!out || (!json && len))
        return dsacp_error(DSACP_EINVAL, "dsacp_chat_messages_parse: out is NULL, or json is NULL with len %zu", len);
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return dsacp_error(DSACP_EINVAL, "messages: malformed JSON at line %d, column %d: %s", err.line, err.column, err.text);
    int rc = dsacp_chat_messages_from_json(root, out);
    json_decref(root);
    return rc;
}

void dsacp_chat_messages_free(dsacp_chat_messages *m)
{
    free(m);
}

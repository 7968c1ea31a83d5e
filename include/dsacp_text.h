/*
 * dsacp_text.h -- text in, text out: a byte-level BPE tokenizer read from a Hugging Face
 * tokenizer.json (exact against the `tokenizers` package on DeepSeek-V3.2's file, docs/text.md),
 * streaming detokenization, and DeepSeek-V3.2's chat encoding.
 *
 * Thread safety: a dsacp_tokenizer is immutable once loaded (encode and decode from any threads);
 * a dsacp_detok is used by one thread at a time.
 * Ownership: handles are freed with their free (NULL accepted); a dsacp_detok borrows its
 * tokenizer, which must outlive it. Output buffers are the caller's.
 */
#ifndef DSACP_TEXT_H
#define DSACP_TEXT_H

#include "dsacp.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Tokenizer (src/text/tokenizer*.c)                                                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct dsacp_tokenizer dsacp_tokenizer;

/* Reads a tokenizer.json: a BPE model (byte-level), its normalizer, pre-tokenizer, added tokens,
 * post-processor and decoder. A component or option dsacp does not implement is DSACP_EUNSUPPORTED
 * naming the field; a malformed file DSACP_EFORMAT naming the field. */
int dsacp_tokenizer_load(const char *path, dsacp_tokenizer **out);
void dsacp_tokenizer_free(dsacp_tokenizer *t);
/* Ids in [0, vocab_size): the model's vocabulary and the added tokens. */
int64_t dsacp_tokenizer_vocab_size(const dsacp_tokenizer *t);
/* Encodes text[0..len) (UTF-8; NUL bytes allowed) into ids I32 [cap]; *n = tokens written. When
 * cap is short: DSACP_ERANGE with *n = the count needed (ids untouched past cap). add_special
 * applies the post-processor's special tokens, as tokenizers' encode(text, add_special_tokens=True)
 * does (a TemplateProcessing's BOS/EOS; V3.2's ByteLevel post-processor adds none, so its BOS comes
 * from the text). Text that is not valid UTF-8 is DSACP_EINVAL naming the byte offset of the first
 * bad byte (tokenizers takes only valid strings). At most len + the post-processor's ids. */
int dsacp_tokenizer_encode(const dsacp_tokenizer *t, const char *text, size_t len, bool add_special,
                           int32_t *ids, int64_t cap, int64_t *n);
/* Decodes ids into out[cap] (UTF-8, NUL-terminated when it fits; *len excludes the NUL). When cap
 * is short (it needs *len + 1): DSACP_ERANGE with *len = the length needed. skip_special leaves
 * out the special added tokens. An id outside [0, vocab_size) or with no token (a gap in the
 * file's ids) is DSACP_EINVAL naming its index.
 * Byte sequences that are not UTF-8 decode to U+FFFD, as tokenizers does. */
int dsacp_tokenizer_decode(const dsacp_tokenizer *t, const int32_t *ids, int64_t n, bool skip_special,
                           char *out, size_t cap, size_t *len);
/* The id of a token's string (a vocabulary entry or an added token); -1 if none. */
int32_t dsacp_tokenizer_token_id(const dsacp_tokenizer *t, const char *token);

/* Streaming: feed ids one at a time and get the text that is complete -- never half a UTF-8
 * character (bytes of an unfinished character wait for the next id). Concatenating every push's
 * output and the flush's equals dsacp_tokenizer_decode of the same ids. */
typedef struct dsacp_detok dsacp_detok;
int dsacp_detok_create(const dsacp_tokenizer *t, bool skip_special, dsacp_detok **out);
/* out[cap] gets the newly complete text (NUL-terminated when it fits; *len excludes the NUL);
 * DSACP_ERANGE with *len = the length needed (the id is not consumed: push it again). */
int dsacp_detok_push(dsacp_detok *d, int32_t id, char *out, size_t cap, size_t *len);
/* The bytes still held (an unfinished character at the end of the stream, as U+FFFD). */
int dsacp_detok_flush(dsacp_detok *d, char *out, size_t cap, size_t *len);
void dsacp_detok_free(dsacp_detok *d);

/* ---- chat encoding (chat.c) ----
 * DeepSeek-V3.2's message encoding (docs/text.md section 2): a conversation becomes the
 * prompt TEXT, special tokens written as their text (<｜begin▁of▁sentence｜>, <｜User｜>,
 * <｜Assistant｜>, <think>, </think>, <｜end▁of▁sentence｜>), which dsacp_tokenizer_encode matches
 * as added tokens. The text starts with the BOS token: encode it with add_special = false. */

/* One message. role: "system", "user" or "assistant"; content: UTF-8 text (NULL: empty, for
 * system and assistant only); reasoning: an assistant's thinking, NULL when none. Strings are
 * NUL-terminated and borrowed for the call. */
typedef struct dsacp_chat_message {
    const char *role;
    const char *content;
    const char *reasoning;
} dsacp_chat_message;

/* The prompt text of msgs [n] into out [cap] bytes, NUL-terminated; *len = its length without
 * the NUL. DSACP_ERANGE with *len = the length when cap < *len + 1 (out may be NULL with cap 0 to
 * ask for the size). Accepted: system messages anywhere (their text goes where they stand);
 * user and assistant turns alternating, the first one a user turn; reasoning only on assistant
 * messages. thinking: the last user turn opens <think> (thinking mode) instead of closing it
 * (</think>); an assistant message after the last user message then needs its reasoning.
 * add_generation_prompt: the last message must be a user message, and the text ends where the
 * model's answer starts (<｜Assistant｜> then <think> or </think>); without it a final user
 * turn ends with its content. A bad message is DSACP_EINVAL (DSACP_EUNSUPPORTED for the tool and
 * developer roles) naming it: "messages[3].role: ...". */
int dsacp_chat_encode(const dsacp_chat_message *msgs, int64_t n, bool thinking, bool add_generation_prompt,
                      char *out, size_t cap, size_t *len);

/* A conversation read from JSON: items [count], strings owned by the handle. */
typedef struct dsacp_chat_messages {
    const dsacp_chat_message *items;
    int64_t count;
} dsacp_chat_messages;

/* Reads an OpenAI "messages" array (json [len] bytes, UTF-8): each element an object with
 * "role" ("system", "user", "assistant") and "content" (a string, null for an assistant, or an
 * array of {"type": "text", "text": ...} parts, joined with "\n" as vLLM does), and for an
 * assistant "reasoning_content" (DeepSeek's name) or "reasoning" (vLLM's). Anything else is
 * refused naming the field ("messages[1].content[0].type: ..."): DSACP_EINVAL for malformed
 * JSON, wrong types and unknown fields, DSACP_EUNSUPPORTED for what OpenAI defines and dsacp
 * does not implement yet (tool calls, tool and developer messages, names, non-text parts). */
int dsacp_chat_messages_parse(const char *json, size_t len, dsacp_chat_messages **out);
void dsacp_chat_messages_free(dsacp_chat_messages *m);

#ifdef __cplusplus
}
#endif

#endif /* DSACP_TEXT_H */

/*
 * chat -- DeepSeek-V3.2's message encoding and the reader of OpenAI "messages" arrays. The
 * public half (dsacp_chat_message, dsacp_chat_encode, dsacp_chat_messages_parse/free) is in
 * include/dsacp_text.h, section "chat encoding"; this header adds the reader over an array the
 * caller already holds as jansson values (the server parses the whole request body once).
 * Calls only core and jansson.
 */
#ifndef DSACP_TEXT_CHAT_H
#define DSACP_TEXT_CHAT_H

#include "core/core.h"
#include "dsacp_text.h"

#include <jansson.h>

/* dsacp_chat_messages_parse's checks over a parsed array (`array` is borrowed: the result copies
 * every string). */
int dsacp_chat_messages_from_json(const json_t *array, dsacp_chat_messages **out);

#endif

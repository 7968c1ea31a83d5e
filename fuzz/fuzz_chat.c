/* fuzz_chat.c -- the OpenAI messages reader and the chat encoding on arbitrary bytes. */
#include "dsacp_text.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dsacp_chat_messages *m = NULL;
    if (dsacp_chat_messages_parse((const char *)data, size, &m) == 0) {
        char out[256];
        size_t len;
        for (int mode = 0; mode < 4; mode++)
            (void)dsacp_chat_encode(m->items, m->count, mode & 1, mode & 2, out, sizeof(out), &len);
        dsacp_chat_messages_free(m);
    }
    return 0;
}

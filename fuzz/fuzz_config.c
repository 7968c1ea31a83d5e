/* fuzz_config.c -- libFuzzer entry: the config.json parser must accept or reject any bytes
 * without crashing. */
#include "dsacp.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    text[size] = '\0';
    dsacp_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = dsacp_config_parse(text, size, "fuzz/config.json", &cfg);
    if (rc == DSACP_OK) {
        for (int64_t l = 0; l < cfg.num_hidden_layers && l < DSACP_MAX_LAYERS; l++)
            (void)dsacp_config_layer_is_moe(&cfg, l);
    } else if (dsacp_last_error()[0] == '\0') {
        abort();
    }
    free(text);
    return 0;
}

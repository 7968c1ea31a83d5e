/* fuzz_config.c -- libFuzzer entry: the config.json parser must accept or reject any bytes
 * without crashing. An accepted config passes dsacp_config_check (every field within the bounds
 * of model.h), and a rejected one leaves the output zeroed with a message. */
#include "dsacp.h"
#include "model/model.h"

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
    memset(&cfg, 0xa5, sizeof cfg);
    int rc = dsacp_config_parse(text, size, "fuzz/config.json", &cfg);
    if (rc == DSACP_OK) {
        if (dsacp_config_check(&cfg, "fuzz/config.json") != DSACP_OK) abort();
        for (int64_t l = 0; l < cfg.num_hidden_layers; l++) (void)dsacp_config_layer_is_moe(&cfg, l);
        if (!(cfg.softmax_scale > 0) || !(cfg.rope_attention_factor >= 0)) abort();
    } else {
        static const dsacp_config zero;
        if (dsacp_last_error()[0] == '\0' || memcmp(&cfg, &zero, sizeof cfg) != 0) abort();
    }
    free(text);
    return 0;
}

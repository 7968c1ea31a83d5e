/* test_tokenizer.c -- the tokenizer (docs/text.md): a tiny hand-written tokenizer.json (BPE
 * merge order, added tokens, invalid UTF-8, buffers, streaming), and, when DSACP_TOKENIZER_CASES
 * names "TOKENIZER_JSON:CASES" pairs (comma-separated; tests/cli/tokenizer.sh makes them with
 * Hugging Face tokenizers, tests/tokenizer/make_cases.py), every case's ids and decoded text
 * identical to tokenizers', decode(encode(s)) == s and the streamed text equal to the decode. */
#include "test.h"

#include "dsacp_text.h"
#include "dsacp_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char TINY[] =
    "{\"version\":\"1.0\",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior\":\"Isolated\",\"invert\":false},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},"
    "\"post_processor\":{\"type\":\"ByteLevel\"},\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"added_tokens\":[{\"id\":300,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,"
    "\"rstrip\":false,\"normalized\":false,\"special\":true}],"
    "\"model\":{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a b\",\"ab c\",\"b c\"]}}";

/* The 256 byte characters as ids 0..255, then ab, abc, bc. */
static char *tiny_json(void)
{
    char *vocab = malloc(8192), *json = malloc(16384);
    size_t n = 0;
    n += (size_t)sprintf(vocab + n, "{");
    for (int b = 0; b < 256; b++) {
        unsigned c = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae ? (unsigned)b : 0;
        if (!c) {
            unsigned k = 0;
            for (int i = 0; i < b; i++) k += !((i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || i >= 0xae);
            c = 0x100 + k;
        }
        if (c == '"' || c == '\\')
            n += (size_t)sprintf(vocab + n, "\"\\%c\":%d,", (char)c, b);
        else
            n += (size_t)sprintf(vocab + n, "\"\\u%04x\":%d,", c, b);
    }
    sprintf(vocab + n, "\"ab\":256,\"abc\":257,\"bc\":258}");
    sprintf(json, TINY, vocab);
    free(vocab);
    return json;
}

static int64_t enc(const dsacp_tokenizer *t, const char *s, int32_t *ids, int64_t cap)
{
    int64_t n = -1;
    CHECK_OK(dsacp_tokenizer_encode(t, s, strlen(s), false, ids, cap, &n));
    return n;
}

static void test_tiny(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    char *json = tiny_json();
    REQUIRE_OK(dsacp_write_file_atomic(path, json, strlen(json)));
    free(json);
    dsacp_tokenizer *t = NULL;
    REQUIRE_OK(dsacp_tokenizer_load(path, &t));
    CHECK(dsacp_tokenizer_vocab_size(t) == 301);
    CHECK(dsacp_tokenizer_token_id(t, "<s>") == 300 && dsacp_tokenizer_token_id(t, "abc") == 257);
    CHECK(dsacp_tokenizer_token_id(t, "zz") == -1);
    int32_t ids[64];
    /* "abc": a b -> ab (rank 0), then ab c -> abc (rank 1), never b c */
    CHECK(enc(t, "abc", ids, 64) == 1 && ids[0] == 257);
    /* "12345": the split takes "123" and "45", single bytes without merges */
    CHECK(enc(t, "xbc<s>12345", ids, 64) == 8 && ids[0] == 'x' && ids[1] == 258 && ids[2] == 300);
    CHECK(ids[3] == '1' && ids[7] == '5');
    int64_t n = 0;
    CHECK(dsacp_tokenizer_encode(t, "abcabc", 6, false, ids, 1, &n) == DSACP_ERANGE && n == 2);
    CHECK(dsacp_tokenizer_encode(t, "a\xff", 2, false, ids, 64, &n) == DSACP_EINVAL);
    CHECK(strstr(dsacp_last_error(), "byte 1") != NULL);
    char out[64];
    size_t len;
    int32_t half[] = {0xe4, 0xbd}; /* the first two bytes of a three-byte character */
    CHECK_OK(dsacp_tokenizer_decode(t, half, 2, false, out, sizeof out, &len));
    CHECK(len == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0);
    int32_t bad = 999;
    CHECK(dsacp_tokenizer_decode(t, &bad, 1, false, out, sizeof out, &len) == DSACP_EINVAL);
    int32_t s_ab[] = {300, 256};
    CHECK_OK(dsacp_tokenizer_decode(t, s_ab, 2, true, out, sizeof out, &len));
    CHECK(len == 2 && strcmp(out, "ab") == 0);
    CHECK(dsacp_tokenizer_decode(t, s_ab, 2, false, out, 3, &len) == DSACP_ERANGE && len == 5);
    dsacp_tokenizer_free(t);
}

/* What the loader refuses: an unimplemented part (DSACP_EUNSUPPORTED) and a broken merge
 * (DSACP_EFORMAT), each naming the field; streaming holds half a character back. */
static void test_refusals_and_stream(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    static const char seq[] = "{\"type\":\"Sequence\",\"normalizers\":[]}", nfc[] = "{\"type\":\"NFC\"}";
    char *json = tiny_json(), *at = strstr(json, seq);
    REQUIRE_OK(at ? DSACP_OK : DSACP_EINVAL);
    memset(at, ' ', sizeof seq - 1);
    memcpy(at, nfc, sizeof nfc - 1);
    REQUIRE_OK(dsacp_write_file_atomic(path, json, strlen(json)));
    dsacp_tokenizer *t = NULL;
    CHECK(dsacp_tokenizer_load(path, &t) == DSACP_EUNSUPPORTED && t == NULL);
    CHECK(strstr(dsacp_last_error(), "normalizer 'NFC'") != NULL);
    free(json);
    json = tiny_json();
    at = strstr(json, "\"b c\"");
    at[1] = 'q';
    REQUIRE_OK(dsacp_write_file_atomic(path, json, strlen(json)));
    CHECK(dsacp_tokenizer_load(path, &t) == DSACP_EFORMAT && strstr(dsacp_last_error(), "model.merges[2]") != NULL);
    free(json);
    json = tiny_json();
    REQUIRE_OK(dsacp_write_file_atomic(path, json, strlen(json)));
    free(json);
    REQUIRE_OK(dsacp_tokenizer_load(path, &t));
    dsacp_detok *d = NULL;
    REQUIRE_OK(dsacp_detok_create(t, true, &d));
    char out[16];
    size_t len = 99;
    CHECK_OK(dsacp_detok_push(d, 0xe4, out, sizeof out, &len)); /* 你 = e4 bd a0 */
    CHECK(len == 0);
    CHECK_OK(dsacp_detok_push(d, 300, out, sizeof out, &len)); /* special, skipped */
    CHECK(len == 0);
    CHECK(dsacp_detok_push(d, 0xbd, out, 0, &len) == DSACP_ERANGE);
    CHECK_OK(dsacp_detok_push(d, 0xbd, out, sizeof out, &len));
    CHECK(dsacp_detok_push(d, 0xa0, out, 3, &len) == DSACP_ERANGE && len == 3); /* not consumed */
    CHECK_OK(dsacp_detok_push(d, 0xa0, out, sizeof out, &len));
    CHECK(len == 3 && strcmp(out, "\xe4\xbd\xa0") == 0);
    CHECK_OK(dsacp_detok_push(d, 0xe4, out, sizeof out, &len));
    CHECK_OK(dsacp_detok_flush(d, out, sizeof out, &len));
    CHECK(len == 3 && strcmp(out, "\xef\xbf\xbd") == 0);
    dsacp_detok_free(d);
    dsacp_tokenizer_free(t);
}

static size_t hex_decode(const char *h, size_t n, char *out)
{
    for (size_t i = 0; i + 1 < n + 1 && i < n; i += 2) {
        unsigned v;
        sscanf(h + i, "%2x", &v);
        out[i / 2] = (char)v;
    }
    return n / 2;
}

/* Streams ids through a dsacp_detok; the concatenation must equal want[0..want_len). */
static bool streamed_equal(const dsacp_tokenizer *t, const int32_t *ids, int64_t n, const char *want, size_t want_len)
{
    dsacp_detok *d = NULL;
    if (dsacp_detok_create(t, false, &d) != DSACP_OK) return false;
    char *got = malloc(want_len + 64), piece[1024];
    size_t at = 0, len;
    bool ok = true;
    for (int64_t i = 0; ok && i <= n; i++) {
        int st = i < n ? dsacp_detok_push(d, ids[i], piece, sizeof piece, &len) : dsacp_detok_flush(d, piece, sizeof piece, &len);
        ok = st == DSACP_OK && at + len <= want_len && memcmp(want + at, piece, len) == 0;
        at += len;
    }
    free(got);
    dsacp_detok_free(d);
    return ok && at == want_len;
}

/* One case line: hex(text) TAB ids TAB hex(decoded): the ids and the decoded text identical to
 * tokenizers', the streamed text equal to the decode; *round_trip: decode(encode(text)) == text. */
static bool check_case(const dsacp_tokenizer *t, char *line, int32_t *ids, int32_t *want, char *text, char *buf, size_t cap,
                       bool *round_trip)
{
    char *tab1 = strchr(line, '\t'), *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
    if (!tab2) return false;
    size_t tlen = hex_decode(line, (size_t)(tab1 - line), text);
    int64_t nw = 0;
    for (char *p = tab1 + 1; p < tab2; p++) {
        want[nw++] = (int32_t)strtol(p, &p, 10);
        if (*p != ',') break;
    }
    size_t dlen = hex_decode(tab2 + 1, strcspn(tab2 + 1, "\n"), buf + cap / 2);
    int64_t n = 0;
    if (dsacp_tokenizer_encode(t, text, tlen, true, ids, (int64_t)cap, &n) != DSACP_OK || n != nw) return false;
    if (memcmp(ids, want, (size_t)n * sizeof *ids) != 0) return false;
    size_t len;
    if (dsacp_tokenizer_decode(t, ids, n, false, buf, cap / 2, &len) != DSACP_OK) return false;
    if (len != dlen || memcmp(buf, buf + cap / 2, len) != 0) return false;
    *round_trip = len == tlen && memcmp(buf, text, len) == 0;
    return streamed_equal(t, ids, n, buf, len);
}

static void test_cases(const char *json, const char *cases)
{
    dsacp_tokenizer *t = NULL;
    REQUIRE_OK(dsacp_tokenizer_load(json, &t));
    FILE *f = fopen(cases, "r");
    CHECKF(f != NULL, "%s: cannot open", cases);
    if (!f) return;
    size_t cap = 1 << 20, lines = 0, same = 0, trips = 0;
    char *line = malloc(cap), *text = malloc(cap), *buf = malloc(cap);
    int32_t *ids = malloc(cap * sizeof *ids), *want = malloc(cap * sizeof *want);
    double t0 = dsacp_now();
    while (fgets(line, (int)cap, f)) {
        lines++;
        bool trip = false, ok = check_case(t, line, ids, want, text, buf, cap, &trip);
        same += ok;
        trips += ok && trip;
        CHECKF(ok, "%s line %zu: differs from tokenizers", cases, lines);
    }
    printf("%s: %zu of %zu cases identical to tokenizers, %zu decode to their text (%.2f s)\n", cases, same, lines,
           trips, dsacp_now() - t0);
    fclose(f);
    free(line), free(text), free(buf), free(ids), free(want);
    dsacp_tokenizer_free(t);
}

int main(void)
{
    char dir[] = "/tmp/dsacp_tok_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    test_tiny(dir);
    test_refusals_and_stream(dir);
    char path[600];
    snprintf(path, sizeof path, "%s/tiny.json", dir);
    remove(path);
    remove(dir);
    const char *env = getenv("DSACP_TOKENIZER_CASES");
    if (env && *env) {
        char *list = strdup(env), *save = NULL;
        for (char *pair = strtok_r(list, ",", &save); pair; pair = strtok_r(NULL, ",", &save)) {
            char *colon = strrchr(pair, ':');
            CHECKF(colon != NULL, "DSACP_TOKENIZER_CASES: '%s' is not JSON:CASES", pair);
            if (!colon) continue;
            *colon = '\0';
            test_cases(pair, colon + 1);
        }
        free(list);
    }
    return test_finish("test_tokenizer");
}

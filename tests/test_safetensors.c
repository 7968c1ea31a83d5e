/* test_safetensors.c -- writer/reader round trip and every malformed-file rejection. */
#include "io/safetensors.h"
#include "test.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];

static void path_in_dir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

/* Writes [u64 LE header length][header][data_len bytes of 0xAB] (or a claimed length). */
static void write_raw_claim(const char *path, const char *header, uint64_t claimed, size_t data_len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        perror(path);
        exit(1);
    }
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(claimed >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    for (size_t i = 0; i < data_len; i++) fputc(0xAB, fp);
    fclose(fp);
}

static void write_raw(const char *path, const char *header, size_t data_len)
{
    write_raw_claim(path, header, strlen(header), data_len);
}

/* Opens a crafted file and expects `status` with a message naming the file and `needle`. */
static void expect_bad_file(const char *fname, const char *header, size_t data_len, int status,
                            const char *needle, int line)
{
    char path[256];
    path_in_dir(path, sizeof path, fname);
    write_raw(path, header, data_len);
    dsacp_st_file *f = (dsacp_st_file *)1;
    dsacp_error_clear();
    int rc = dsacp_st_open(path, &f);
    const char *msg = dsacp_last_error();
    if (getenv("DSACP_TEST_VERBOSE")) printf("%s\n", msg);
    CHECKF(rc == status, "line %d: %s: got %s (%s)", line, fname, dsacp_status_name(rc), msg);
    CHECKF(f == NULL, "line %d: handle not NULL on failure", line);
    CHECKF(strstr(msg, path) != NULL, "line %d: message lacks the path: %s", line, msg);
    if (needle) CHECKF(strstr(msg, needle) != NULL, "line %d: message lacks '%s': %s", line, needle, msg);
    if (rc == 0) dsacp_st_close(f);

    /* The same bytes in memory fail the same way. */
    FILE *fp = fopen(path, "rb");
    if (fp) {
        fseek(fp, 0, SEEK_END);
        long n = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        uint8_t *buf = malloc((size_t)n + 1);
        size_t got = fread(buf, 1, (size_t)n, fp);
        fclose(fp);
        dsacp_st_file *g = NULL;
        rc = dsacp_st_open_memory(buf, got, fname, &g);
        CHECKF(rc == status, "line %d: memory %s: got %s (%s)", line, fname, dsacp_status_name(rc),
               dsacp_last_error());
        CHECKF(strstr(dsacp_last_error(), fname) != NULL, "line %d: memory message lacks name", line);
        if (needle)
            CHECKF(strstr(dsacp_last_error(), needle) != NULL, "line %d: memory message lacks '%s': %s",
                   line, needle, dsacp_last_error());
        if (rc == 0) dsacp_st_close(g);
        free(buf);
    }
    unlink(path);
}

#define BAD(fname, header, data_len, needle) \
    expect_bad_file(fname, header, data_len, DSACP_EFORMAT, needle, __LINE__)

static void fill_bytes(void *p, size_t n, unsigned seed)
{
    uint8_t *b = p;
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        b[i] = (uint8_t)(x >> 24);
    }
}

static void read_file_bytes(const char *path, uint8_t **out, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        perror(path);
        exit(1);
    }
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    *len = fread(*out, 1, (size_t)n, fp);
    fclose(fp);
}

static int count_dir_entries(void)
{
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void check_round_trip(const dsacp_st_file *f, int64_t expect_n)
{
    CHECK(dsacp_st_count(f) == expect_n);
    for (int64_t i = 1; i < dsacp_st_count(f); i++)
        CHECK(strcmp(dsacp_st_tensor_at(f, i - 1)->name, dsacp_st_tensor_at(f, i)->name) < 0);
    CHECK(dsacp_st_tensor_at(f, -1) == NULL);
    CHECK(dsacp_st_tensor_at(f, expect_n) == NULL);
    CHECK(dsacp_st_find(f, "absent") == NULL);
    CHECK(dsacp_st_find(f, "") == NULL);
}

static void test_round_trip(void)
{
    float w[3][4];
    uint16_t bf[5];
    uint8_t e4[2][3][2];
    int64_t i64[2];
    double scalar = 3.25;
    uint8_t flags[7];
    int32_t i32[6];
    fill_bytes(w, sizeof w, 1);
    fill_bytes(bf, sizeof bf, 2);
    fill_bytes(e4, sizeof e4, 3);
    fill_bytes(i64, sizeof i64, 4);
    fill_bytes(flags, sizeof flags, 5);
    fill_bytes(i32, sizeof i32, 6);

    dsacp_st_writer *wr = NULL;
    REQUIRE_OK(dsacp_st_writer_create(&wr));
    /* Added out of order on purpose: the file is sorted by name. */
    CHECK_OK(dsacp_st_writer_add(wr, "z.weight", DSACP_F32, 2, (int64_t[]){3, 4}, w));
    CHECK_OK(dsacp_st_writer_add(wr, "a.bias", DSACP_BF16, 1, (int64_t[]){5}, bf));
    CHECK_OK(dsacp_st_writer_add(wr, "m.fp8", DSACP_F8_E4M3, 3, (int64_t[]){2, 3, 2}, e4));
    CHECK_OK(dsacp_st_writer_add(wr, "scalar", DSACP_F64, 0, NULL, &scalar));
    CHECK_OK(dsacp_st_writer_add(wr, "empty", DSACP_F32, 2, (int64_t[]){0, 16}, NULL));
    CHECK_OK(dsacp_st_writer_add(wr, "empty2", DSACP_I16, 1, (int64_t[]){0}, NULL));
    CHECK_OK(dsacp_st_writer_add(wr, "ids", DSACP_I64, 1, (int64_t[]){2}, i64));
    CHECK_OK(dsacp_st_writer_add(wr, "mask", DSACP_BOOL, 1, (int64_t[]){7}, flags));
    CHECK_OK(dsacp_st_writer_add(wr, "grid", DSACP_I32, 3, (int64_t[]){1, 2, 3}, i32));
    CHECK_OK(dsacp_st_writer_set_metadata(wr, "note", "hello \"world\" \xc3\xa9"));
    CHECK_OK(dsacp_st_writer_set_metadata(wr, "note", "replaced"));
    CHECK_OK(dsacp_st_writer_set_metadata(wr, "author", "test"));
    /* Invalid additions are refused. */
    CHECK(dsacp_st_writer_add(wr, "bad", DSACP_DTYPE_INVALID, 1, (int64_t[]){1}, w) == DSACP_EINVAL);
    CHECK(dsacp_st_writer_add(wr, "bad", DSACP_F32, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}, w) ==
          DSACP_EINVAL);
    CHECK(dsacp_st_writer_add(wr, "bad", DSACP_F32, 1, (int64_t[]){-1}, w) == DSACP_EINVAL);
    CHECK(dsacp_st_writer_add(wr, "bad", DSACP_F32, 1, (int64_t[]){4}, NULL) == DSACP_EINVAL);
    CHECK(dsacp_st_writer_add(wr, "__metadata__", DSACP_F32, 1, (int64_t[]){1}, w) == DSACP_EINVAL);
    CHECK(dsacp_st_writer_add(wr, "bad", DSACP_F32, 3, (int64_t[]){INT64_MAX / 2, 4, 4}, w) ==
          DSACP_EINVAL);

    char path[256];
    path_in_dir(path, sizeof path, "round.safetensors");
    CHECK_OK(dsacp_st_writer_write(wr, path));
    dsacp_st_writer_free(wr);
    CHECKF(count_dir_entries() == 1, "temporary file left behind");

    /* Layout: 8 + N is a multiple of 8, header padded with spaces, __metadata__ with format pt. */
    uint8_t *bytes;
    size_t len;
    read_file_bytes(path, &bytes, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | bytes[i];
    CHECK((8 + n) % 8 == 0);
    CHECK(8 + n <= len);
    CHECK(bytes[8] == '{');
    char *hdr = malloc(n + 1);
    memcpy(hdr, bytes + 8, n);
    hdr[n] = '\0';
    CHECKF(strstr(hdr, "\"__metadata__\":{") != NULL, "%s", hdr);
    CHECKF(strstr(hdr, "\"format\":\"pt\"") != NULL, "%s", hdr);
    CHECKF(strstr(hdr, "\"scalar\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[") != NULL, "%s", hdr);
    CHECKF(strstr(hdr, ", ") == NULL, "header not compact: %s", hdr);
    /* Contiguous, sorted: the data region is exactly the sum of the sizes. */
    size_t total = sizeof w + sizeof bf + sizeof e4 + sizeof scalar + sizeof i64 + sizeof flags + sizeof i32;
    CHECK(len == 8 + n + total);
    /* a.bias is the first tensor: it starts the data region. */
    CHECK(memcmp(bytes + 8 + n, bf, sizeof bf) == 0);
    free(hdr);

    dsacp_st_file *f = NULL;
    REQUIRE_OK(dsacp_st_open(path, &f));
    CHECK(strcmp(dsacp_st_path(f), path) == 0);
    check_round_trip(f, 9);
    CHECK(strcmp(dsacp_st_metadata(f, "format"), "pt") == 0);
    CHECK(strcmp(dsacp_st_metadata(f, "note"), "replaced") == 0);
    CHECK(strcmp(dsacp_st_metadata(f, "author"), "test") == 0);
    CHECK(dsacp_st_metadata(f, "nope") == NULL);
    static const char *order[] = {"a.bias", "empty", "empty2", "grid", "ids", "m.fp8", "mask", "scalar",
                                  "z.weight"};
    for (int i = 0; i < 9; i++) CHECK(strcmp(dsacp_st_tensor_at(f, i)->name, order[i]) == 0);

    const dsacp_st_tensor *t = dsacp_st_find(f, "z.weight");
    CHECK(t && t->dtype == DSACP_F32 && t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 4 &&
          t->numel == 12 && t->nbytes == sizeof w && memcmp(t->data, w, sizeof w) == 0);
    t = dsacp_st_find(f, "a.bias");
    CHECK(t && t->dtype == DSACP_BF16 && t->ndim == 1 && t->shape[0] == 5 && t->nbytes == sizeof bf &&
          memcmp(t->data, bf, sizeof bf) == 0);
    t = dsacp_st_find(f, "m.fp8");
    CHECK(t && t->dtype == DSACP_F8_E4M3 && t->ndim == 3 && t->shape[2] == 2 && t->numel == 12 &&
          memcmp(t->data, e4, sizeof e4) == 0);
    t = dsacp_st_find(f, "scalar");
    double sv = 0;
    CHECK(t && t->dtype == DSACP_F64 && t->ndim == 0 && t->numel == 1 && t->nbytes == 8);
    if (t) memcpy(&sv, t->data, 8);
    CHECK(sv == 3.25);
    t = dsacp_st_find(f, "empty");
    CHECK(t && t->ndim == 2 && t->shape[0] == 0 && t->shape[1] == 16 && t->numel == 0 && t->nbytes == 0);
    t = dsacp_st_find(f, "empty2");
    CHECK(t && t->dtype == DSACP_I16 && t->numel == 0 && t->nbytes == 0);
    t = dsacp_st_find(f, "ids");
    CHECK(t && t->dtype == DSACP_I64 && memcmp(t->data, i64, sizeof i64) == 0);
    t = dsacp_st_find(f, "mask");
    CHECK(t && t->dtype == DSACP_BOOL && memcmp(t->data, flags, sizeof flags) == 0);
    t = dsacp_st_find(f, "grid");
    CHECK(t && t->dtype == DSACP_I32 && t->ndim == 3 && memcmp(t->data, i32, sizeof i32) == 0);
    dsacp_st_close(f);

    /* The same bytes through dsacp_st_open_memory. */
    dsacp_st_file *g = NULL;
    REQUIRE_OK(dsacp_st_open_memory(bytes, len, "in-memory.safetensors", &g));
    CHECK(strcmp(dsacp_st_path(g), "in-memory.safetensors") == 0);
    check_round_trip(g, 9);
    t = dsacp_st_find(g, "z.weight");
    CHECK(t && (const uint8_t *)t->data >= bytes && (const uint8_t *)t->data + t->nbytes <= bytes + len &&
          memcmp(t->data, w, sizeof w) == 0);
    CHECK(strcmp(dsacp_st_metadata(g, "format"), "pt") == 0);
    dsacp_st_close(g);
    free(bytes);

    /* Truncated file: cut into the data region. */
    CHECK(truncate(path, (off_t)(len - 3)) == 0);
    dsacp_error_clear();
    f = (dsacp_st_file *)1;
    CHECK(dsacp_st_open(path, &f) == DSACP_EFORMAT);
    CHECK(f == NULL);
    CHECKF(strstr(dsacp_last_error(), path) && strstr(dsacp_last_error(), "z.weight"), "%s",
           dsacp_last_error());
    unlink(path);
}

static void test_writer_options(void)
{
    char path[256];
    path_in_dir(path, sizeof path, "opts.safetensors");
    /* A user-set format replaces "pt"; an empty file (no tensors) is valid. */
    dsacp_st_writer *wr = NULL;
    REQUIRE_OK(dsacp_st_writer_create(&wr));
    CHECK_OK(dsacp_st_writer_set_metadata(wr, "format", "np"));
    CHECK_OK(dsacp_st_writer_write(wr, path));
    dsacp_st_writer_free(wr);
    dsacp_st_file *f = NULL;
    REQUIRE_OK(dsacp_st_open(path, &f));
    CHECK(dsacp_st_count(f) == 0);
    CHECK(strcmp(dsacp_st_metadata(f, "format"), "np") == 0);
    CHECK(dsacp_st_find(f, "x") == NULL);
    dsacp_st_close(f);
    unlink(path);

    /* Duplicate names are refused at write time, and nothing is left on disk. */
    float v[2] = {1, 2};
    REQUIRE_OK(dsacp_st_writer_create(&wr));
    CHECK_OK(dsacp_st_writer_add(wr, "x", DSACP_F32, 1, (int64_t[]){2}, v));
    CHECK_OK(dsacp_st_writer_add(wr, "x", DSACP_F32, 1, (int64_t[]){2}, v));
    CHECK(dsacp_st_writer_write(wr, path) == DSACP_EINVAL);
    CHECK(strstr(dsacp_last_error(), "'x'") != NULL);
    CHECK(access(path, F_OK) != 0);
    dsacp_st_writer_free(wr);

    /* Unwritable destination: an EIO and no partial output anywhere. */
    REQUIRE_OK(dsacp_st_writer_create(&wr));
    CHECK_OK(dsacp_st_writer_add(wr, "x", DSACP_F32, 1, (int64_t[]){2}, v));
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", g_dir);
    CHECK(dsacp_st_writer_write(wr, bad) == DSACP_EIO);
    CHECK(strstr(dsacp_last_error(), bad) != NULL);
    dsacp_st_writer_free(wr);
    CHECK(count_dir_entries() == 0);
    dsacp_st_writer_free(NULL);
    dsacp_st_close(NULL);
}

static void test_valid_handwritten(void)
{
    char path[256];
    path_in_dir(path, sizeof path, "hand.safetensors");
    /* Unsorted in the header, zero-size tensors sharing offsets with others, a gap-free layout,
     * empty metadata. */
    write_raw(path,
              "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
              "\"__metadata__\":{},"
              "\"a\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[0,4]},"
              "\"e1\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
              "\"e2\":{\"dtype\":\"F64\",\"shape\":[5,0],\"data_offsets\":[4,4]},"
              "\"e3\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[6,6]},"
              "\"big0\":{\"dtype\":\"U64\",\"shape\":[0,4611686018427387904,4611686018427387904],"
              "\"data_offsets\":[0,0]}}   ",
              6);
    dsacp_st_file *f = NULL;
    CHECK_OK(dsacp_st_open(path, &f));
    if (f) {
        CHECK(dsacp_st_count(f) == 6);
        CHECK(strcmp(dsacp_st_tensor_at(f, 0)->name, "a") == 0);
        CHECK(strcmp(dsacp_st_tensor_at(f, 5)->name, "e3") == 0);
        const dsacp_st_tensor *t = dsacp_st_find(f, "b");
        CHECK(t && t->nbytes == 2 && ((const uint8_t *)t->data)[0] == 0xAB);
        CHECK(dsacp_st_find(f, "big0") && dsacp_st_find(f, "big0")->numel == 0);
        CHECK(dsacp_st_metadata(f, "format") == NULL);
        dsacp_st_close(f);
    }
    /* Zero-length data region: only empty tensors; and an empty header object. */
    write_raw(path, "{\"z\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0);
    CHECK_OK(dsacp_st_open(path, &f));
    if (f) {
        CHECK(dsacp_st_count(f) == 1 && dsacp_st_find(f, "z")->nbytes == 0);
        dsacp_st_close(f);
    }
    write_raw(path, "{}", 0);
    CHECK_OK(dsacp_st_open(path, &f));
    if (f) {
        CHECK(dsacp_st_count(f) == 0);
        dsacp_st_close(f);
    }
    /* Every listed dtype is known. */
    static const char *names[] = {"BOOL", "U8",  "I8",  "F8_E4M3", "F8_E5M2", "I16", "U16", "F16",
                                  "BF16", "I32", "U32", "F32",     "F64",     "I64", "U64"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char hdr[200];
        size_t es = dsacp_dtype_size(dsacp_dtype_from_name(names[i]));
        snprintf(hdr, sizeof hdr, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 names[i], 3 * es);
        write_raw(path, hdr, 3 * es);
        CHECK_OK(dsacp_st_open(path, &f));
        if (f) {
            CHECK(dsacp_st_find(f, "t")->dtype == dsacp_dtype_from_name(names[i]));
            dsacp_st_close(f);
        }
    }
    unlink(path);

    /* Empty buffer in memory; missing file. */
    CHECK(dsacp_st_open_memory(NULL, 0, "nothing", &f) == DSACP_EFORMAT && f == NULL);
    path_in_dir(path, sizeof path, "missing.safetensors");
    CHECK(dsacp_st_open(path, &f) == DSACP_EIO && f == NULL);
    CHECK(strstr(dsacp_last_error(), path) != NULL);
    /* A directory is not a regular file. */
    CHECK(dsacp_st_open(g_dir, &f) == DSACP_EIO && f == NULL);
}

static void test_malformed(void)
{
    char path[256];
    /* Shorter than 8 bytes. */
    path_in_dir(path, sizeof path, "short.safetensors");
    FILE *fp = fopen(path, "wb");
    fwrite("\x02\0\0", 1, 3, fp);
    fclose(fp);
    dsacp_st_file *f = NULL;
    CHECK(dsacp_st_open(path, &f) == DSACP_EFORMAT && f == NULL);
    CHECK(strstr(dsacp_last_error(), path) != NULL);
    unlink(path);

    /* Header length larger than the file. */
    path_in_dir(path, sizeof path, "hlen.safetensors");
    write_raw_claim(path, "{}", 1000, 0);
    CHECK(dsacp_st_open(path, &f) == DSACP_EFORMAT && f == NULL);
    CHECKF(strstr(dsacp_last_error(), path) && strstr(dsacp_last_error(), "1000"), "%s", dsacp_last_error());
    /* Header larger than 100 MB claimed (and a length whose 8 + N would overflow). */
    write_raw_claim(path, "{}", 200000000ull, 0);
    CHECK(dsacp_st_open(path, &f) == DSACP_EFORMAT && f == NULL);
    CHECKF(strstr(dsacp_last_error(), path) && strstr(dsacp_last_error(), "limit"), "%s", dsacp_last_error());
    write_raw_claim(path, "{}", UINT64_MAX, 0);
    CHECK(dsacp_st_open(path, &f) == DSACP_EFORMAT && f == NULL);
    unlink(path);

    BAD("json.safetensors", "{\"w\":{\"dtype\":\"F32\",", 0, "JSON");
    BAD("json2.safetensors", "{\"w\":1} trailing", 0, "JSON");
    BAD("notobj.safetensors", "[1,2,3]", 0, "object");
    BAD("entry.safetensors", "{\"w.entry\":[1]}", 0, "'w.entry'");
    BAD("dtype.safetensors", "{\"w.dt\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
        "'w.dt'");
    BAD("dtype2.safetensors", "{\"w.dt2\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w.dt2'");
    BAD("nodtype.safetensors", "{\"w.nd\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "'w.nd'");
    BAD("noshape.safetensors", "{\"w.ns\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "'w.ns'");
    BAD("nooffs.safetensors", "{\"w.no\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "'w.no'");
    BAD("extra.safetensors",
        "{\"w.extra\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"stride\":[1]}}", 4,
        "'w.extra'");
    BAD("mismatch.safetensors", "{\"w.mm\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}",
        16, "'w.mm'");
    BAD("beyond.safetensors", "{\"w.far\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}", 16,
        "'w.far'");
    BAD("overlap.safetensors",
        "{\"w.first\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"w.second\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
        16, "'w.second'");
    BAD("overlap2.safetensors",
        "{\"w.outer\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
        "\"w.inner\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
        16, "'w.inner'");
    BAD("overlap3.safetensors",
        "{\"w.same\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
        "\"w.twin\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
        16, "overlap");
    BAD("order.safetensors", "{\"w.rev\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16,
        "'w.rev'");
    BAD("neg.safetensors", "{\"w.neg\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
        "'w.neg'");
    BAD("float.safetensors", "{\"w.flt\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
        "'w.flt'");
    BAD("strshape.safetensors", "{\"w.ss\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4,
        "'w.ss'");
    BAD("dims.safetensors",
        "{\"w.dims\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 4,
        "'w.dims'");
    BAD("negoff.safetensors", "{\"w.noff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 4,
        "'w.noff'");
    BAD("offs3.safetensors", "{\"w.o3\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 4,
        "'w.o3'");
    BAD("offsf.safetensors", "{\"w.of\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.5]}}", 4,
        "'w.of'");
    BAD("dup.safetensors",
        "{\"w.dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"w.dup\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
        4, "w.dup");
    /* Dimensions that fit int64 but whose product does not, and ones whose byte size does not. */
    BAD("huge.safetensors",
        "{\"w.huge\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,0]}}", 4,
        "'w.huge'");
    BAD("huge2.safetensors",
        "{\"w.huge2\":{\"dtype\":\"F64\",\"shape\":[9223372036854775807],\"data_offsets\":[0,8]}}", 8,
        "'w.huge2'");
    BAD("huge3.safetensors",
        "{\"w.huge3\":{\"dtype\":\"F32\",\"shape\":[1152921504606846976,4],"
        "\"data_offsets\":[0,9223372036854775807]}}",
        8, "'w.huge3'");
    BAD("toobig.safetensors",
        "{\"w.big\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", 8, "JSON");
    BAD("meta.safetensors", "{\"__metadata__\":{\"format\":\"pt\",\"epoch\":3}}", 0, "'epoch'");
    BAD("meta2.safetensors", "{\"__metadata__\":[\"pt\"]}", 0, "__metadata__");
    BAD("meta3.safetensors", "{\"__metadata__\":{\"k\":null}}", 0, "'k'");
    /* A bad tensor after good ones is still found; the message names the bad one. */
    BAD("late.safetensors",
        "{\"a.ok\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
        "\"b.bad\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,2]}}",
        4, "'b.bad'");
    CHECK(count_dir_entries() == 0);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/dsacp_st_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_writer_options();
    test_valid_handwritten();
    test_malformed();
    if (rmdir(g_dir) != 0) {
        fprintf(stderr, "temporary directory %s not empty\n", g_dir);
        test_failures_++;
    }
    return test_finish("test_safetensors");
}

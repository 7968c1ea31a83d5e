/*
 * test_server.c -- the OpenAI-compatible server (dsacp_server.h) end to end: a server on port 0
 * over a tiny model whose vocabulary is tests/data/tok_chat's, driven by a plain socket client:
 * health, models, a completion (greedy twice: the same ids), a stream (one chunk per token, the
 * usage chunk, [DONE]), a chat completion, a stop string, errors as OpenAI error objects (400
 * naming the field, 401, 404, 405, 413), a client that leaves mid-stream (its KV back to 0 in
 * /metrics), then the stop (dsacp_server_run returns 0).
 */
#include "dsacp_server.h"
#include "ref/test_util.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int g_port;
static const char *g_key = "sk-test";

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "cannot connect to port %d\n", g_port);
        exit(1);
    }
    return fd;
}

/* Sends one request (Connection: close); with auth the API key. */
static int send_request(const char *method, const char *path, const char *body, bool auth)
{
    int fd = connect_server();
    const size_t blen = body ? strlen(body) : 0;
    char *req = malloc(blen + 512);
    const int n = snprintf(req, blen + 512, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s%s%s"
                           "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", method, path,
                           auth ? "Authorization: Bearer " : "", auth ? g_key : "", auth ? "\r\n" : "", blen, body ? body : "");
    CHECK(write(fd, req, (size_t)n) == n);
    free(req);
    return fd;
}

/* The whole response (headers and body) until the server closes; *status from the status line. */
static char *read_all(int fd, int *status)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t k;
    while ((k = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)k;
        if (cap - len < 1024) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    close(fd);
    *status = 0;
    sscanf(buf, "HTTP/1.1 %d", status);
    return buf;
}

static char *http(const char *method, const char *path, const char *body, int *status)
{
    return read_all(send_request(method, path, body, true), status);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* The value of a Prometheus sample line starting with `name{`. */
static double metric(const char *text, const char *name)
{
    const char *p = text;
    const size_t n = strlen(name);
    while ((p = strstr(p, name))) {
        if ((p == text || p[-1] == '\n') && p[n] == '{') {
            const char *v = strchr(p, ' ');
            return v ? atof(v + 1) : -1;
        }
        p += n;
    }
    return -1;
}

/* The text of "token_ids":[...] in a body (or "" when absent), for comparing two responses. */
static void token_ids(const char *body, char *out, size_t cap)
{
    const char *p = strstr(body, "\"token_ids\":[");
    const char *e = p ? strchr(p, ']') : NULL;
    snprintf(out, cap, "%.*s", p && e ? (int)(e - p) : 0, p ? p : "");
}

static void test_basic_routes(void)
{
    int st;
    char *b = read_all(send_request("GET", "/health", NULL, false), &st);
    CHECKF(st == 200, "/health: %d", st);
    free(b);
    b = http("GET", "/v1/models", NULL, &st);
    CHECKF(st == 200 && strstr(b, "\"id\":\"tiny-chat\""), "/v1/models: %d %s", st, b);
    free(b);
    b = read_all(send_request("GET", "/v1/models", NULL, false), &st);
    CHECKF(st == 401 && strstr(b, "\"error\""), "no key: %d %s", st, b);
    free(b);
    b = http("GET", "/nope", NULL, &st);
    CHECKF(st == 404 && strstr(b, "\"error\""), "404: %d %s", st, b);
    free(b);
    b = http("GET", "/v1/completions", NULL, &st);
    CHECKF(st == 405 && strstr(b, "\"error\""), "405: %d %s", st, b);
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": \"hi\", \"max_tokens\": \"x\"}", &st);
    CHECKF(st == 400 && strstr(b, "\"param\":\"max_tokens\""), "400: %d %s", st, b);
    free(b);
    char big[6000];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memcpy(big, "{\"prompt\": \"", 12);
    b = http("POST", "/v1/completions", big, &st);
    CHECKF(st == 413 && strstr(b, "\"error\""), "413: %d %s", st, b);
    free(b);
}

static void test_completions(void)
{
    int st;
    const char *body = "{\"prompt\": \"hello world\", \"max_tokens\": 6, \"temperature\": 0, \"return_token_ids\": true}";
    char *a = http("POST", "/v1/completions", body, &st);
    CHECKF(st == 200 && strstr(a, "\"completion_tokens\":6") && strstr(a, "\"object\":\"text_completion\""), "completion: %d %s", st, a);
    char *b = http("POST", "/v1/completions", body, &st);
    char ia[256], ib[256];
    token_ids(a, ia, sizeof ia), token_ids(b, ib, sizeof ib);
    CHECKF(ia[0] && strcmp(ia, ib) == 0, "greedy twice: %s vs %s", ia, ib);
    free(a), free(b);

    a = http("POST", "/v1/completions", "{\"prompt\": \"hello\", \"max_tokens\": 5, \"temperature\": 0, \"stream\": true, "
             "\"stream_options\": {\"include_usage\": true}}", &st);
    CHECKF(st == 200 && strstr(a, "text/event-stream"), "stream: %d %s", st, a);
    CHECKF(count(a, "data: ") == 7 && count(a, "\"finish_reason\":\"length\"") == 1, "stream chunks: %s", a);
    CHECKF(strstr(a, "\"completion_tokens\":5") && strstr(a, "data: [DONE]\n\n"), "stream end: %s", a);
    free(a);

    a = http("POST", "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 3}", &st);
    CHECKF(st == 200 && strstr(a, "\"object\":\"chat.completion\"") && strstr(a, "\"completion_tokens\":3"), "chat: %d %s", st, a);
    free(a);
}

/* A stop string taken from a greedy answer's text ends the same request early with "stop". */
static void test_stop_string(void)
{
    int st;
    char *a = http("POST", "/v1/completions", "{\"prompt\": \"abc\", \"max_tokens\": 12, \"temperature\": 0}", &st);
    const char *t = strstr(a, "\"text\":\"");
    char text[256] = "";
    if (t) sscanf(t + 8, "%255[^\"\\]", text);
    free(a);
    if (strlen(text) < 4) {
        fprintf(stderr, "test_server: the greedy text '%s' is too short for a stop string: skipped\n", text);
        return;
    }
    char body[512], want[300];
    snprintf(body, sizeof body, "{\"prompt\": \"abc\", \"max_tokens\": 12, \"temperature\": 0, \"stop\": [\"%.2s\"]}", text + 2);
    a = http("POST", "/v1/completions", body, &st);
    const char *cut = strstr(text, (char[3]){text[2], text[3], 0});
    snprintf(want, sizeof want, "\"text\":\"%.*s\"", (int)(cut - text), text);
    CHECKF(st == 200 && strstr(a, want) && strstr(a, "\"finish_reason\":\"stop\""), "stop: want %s in %s", want, a);
    free(a);
}

/* A client that leaves mid-stream: its request is aborted and its KV freed. */
static void test_disconnect(void)
{
    int fd = send_request("POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 3000, \"stream\": true, \"ignore_eos\": true}", true);
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1 && count(buf, "data: ") < 3) {
        ssize_t k = read(fd, buf + got, sizeof buf - 1 - got);
        if (k <= 0) break;
        got += (size_t)k;
        buf[got] = 0;
    }
    CHECKF(count(buf, "data: ") >= 3, "disconnect: no tokens before leaving: %s", buf);
    close(fd);
    const double t0 = dsacp_live_now();
    double kv = -1, running = -1;
    while (dsacp_live_now() - t0 < 5) {
        int st;
        char *m = http("GET", "/metrics", NULL, &st);
        kv = metric(m, "vllm:kv_cache_usage_perc");
        running = metric(m, "vllm:num_requests_running");
        free(m);
        if (kv == 0 && running == 0) break;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    CHECKF(kv == 0 && running == 0, "after the disconnect: KV %g, running %g", kv, running);
    printf("test_server: KV back to 0 %.3f s after the client left\n", dsacp_live_now() - t0);
}

typedef struct run_args {
    dsacp_server *s;
    int rc;
} run_args;

static void *run_thread(void *arg)
{
    run_args *ra = arg;
    ra->rc = dsacp_server_run(ra->s, 5);
    return NULL;
}

int main(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/tok_chat/tokenizer.json", tu_source_dir());
    dsacp_tokenizer *tok;
    REQUIRE_OK(dsacp_tokenizer_load(path, &tok));
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("tiny", &cfg));
    cfg.vocab_size = dsacp_tokenizer_vocab_size(tok);
    char *dir = tu_make_model_cfg(&cfg, 7, DSACP_WEIGHTS_F32);
    dsacp_model *m;
    REQUIRE_OK(dsacp_model_load(dir, &m));
    dsacp_engine_options eo;
    dsacp_engine_options_default(&eo);
    eo.num_blocks = 1024;
    dsacp_engine *e;
    REQUIRE_OK(dsacp_engine_create(m, &eo, &e));

    dsacp_server_options so;
    dsacp_server_options_default(&so);
    so.port = 0;
    so.served_model_name = "tiny-chat";
    so.api_key = g_key;
    so.max_body_bytes = 4096;
    so.timeout_s = 5;
    so.live.serve.max_num_seqs = 8;
    dsacp_server *s;
    const int rc = dsacp_server_create(e, tok, &so, &s);
    if (rc == DSACP_EUNSUPPORTED) { /* the online loop is not in this build */
        printf("SKIP test_server: %s\n", dsacp_last_error());
        return 77;
    }
    REQUIRE_OK(rc);
    g_port = dsacp_server_port(s);
    CHECK(g_port > 0);
    run_args ra = {s, -1};
    pthread_t th;
    REQUIRE_OK(pthread_create(&th, NULL, run_thread, &ra));

    test_basic_routes();
    test_completions();
    test_stop_string();
    test_disconnect();

    dsacp_server_stop(s);
    pthread_join(th, NULL);
    CHECKF(ra.rc == 0, "dsacp_server_run: %d", ra.rc);
    dsacp_server_free(s);
    dsacp_engine_free(e);
    dsacp_model_free(m);
    dsacp_tokenizer_free(tok);
    tu_rmtree(dir);
    free(dir);
    return test_finish("test_server");
}

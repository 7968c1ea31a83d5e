/*
 * server_metrics.c -- GET /metrics: Prometheus text exposition format 0.0.4 with vLLM's metric
 * names, help texts and histogram buckets (vllm/v1/metrics/loggers.py), every series labelled
 * model_name. Histograms and the finish-reason counters are kept here under a mutex; the
 * gauges (running, waiting, KV usage as a fraction 0..1) and the token and preemption counters
 * come from the live loop's stats at render time.
 */
#include "server/server.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* vLLM's boundaries (seconds). */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                     1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double token_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_bounds[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
#define MAX_BOUNDS 22

typedef struct histogram {
    const double *bounds;
    int n;
    uint64_t counts[MAX_BOUNDS + 1]; /* per bucket, the last one +Inf (not cumulative) */
    double sum;
} histogram;

/* The finish reasons vLLM counts in vllm:request_success_total. */
static const char *const reasons[] = {"stop", "length", "abort", "error"};
#define N_REASONS 4

typedef struct counts {
    histogram ttft, itl, tpot, e2e;
    uint64_t finished[N_REASONS];
    int64_t prompt_tokens, generation_tokens; /* of finished requests (render without live stats) */
} counts;

struct oai_metrics {
    pthread_mutex_t mu;
    counts c;
};

static void histogram_init(histogram *h, const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n = n;
}

static void observe(histogram *h, double x)
{
    if (!(x >= 0) || isinf(x))
        x = x > 0 ? x : 0; /* a clock going backwards or a NaN counts as 0; +inf lands in +Inf */
    int b = 0;
    while (b < h->n && x > h->bounds[b])
        b++;
    h->counts[b]++;
    if (!isinf(x))
        h->sum += x;
}

int oai_metrics_create(oai_metrics **out)
{
    oai_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        *out = NULL;
        return dsacp_error(DSACP_ENOMEM, "oai_metrics_create: %zu bytes", sizeof *m);
    }
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        *out = NULL;
        return dsacp_error(DSACP_EIO, "oai_metrics_create: pthread_mutex_init failed");
    }
    histogram_init(&m->c.ttft, ttft_bounds, (int)(sizeof ttft_bounds / sizeof ttft_bounds[0]));
    histogram_init(&m->c.itl, token_bounds, (int)(sizeof token_bounds / sizeof token_bounds[0]));
    histogram_init(&m->c.tpot, token_bounds, (int)(sizeof token_bounds / sizeof token_bounds[0]));
    histogram_init(&m->c.e2e, e2e_bounds, (int)(sizeof e2e_bounds / sizeof e2e_bounds[0]));
    *out = m;
    return 0;
}

void oai_metrics_free(oai_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void oai_metrics_ttft(oai_metrics *m, double s)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->c.ttft, s);
    pthread_mutex_unlock(&m->mu);
}

void oai_metrics_itl(oai_metrics *m, double s)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->c.itl, s);
    observe(&m->c.tpot, s);
    pthread_mutex_unlock(&m->mu);
}

void oai_metrics_finished(oai_metrics *m, double e2e_s, int64_t prompt_tokens, int64_t generation_tokens,
                          const char *reason)
{
    int r = 0;
    while (r < N_REASONS && (!reason || strcmp(reason, reasons[r]) != 0))
        r++;
    pthread_mutex_lock(&m->mu);
    observe(&m->c.e2e, e2e_s);
    if (r < N_REASONS)
        m->c.finished[r]++;
    else
        m->c.finished[3]++; /* an unknown reason is an error */
    m->c.prompt_tokens += prompt_tokens;
    m->c.generation_tokens += generation_tokens;
    pthread_mutex_unlock(&m->mu);
}

/* ---- the text ---- */

typedef struct text {
    char *s;
    size_t len, cap;
    bool failed;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !t->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
        } else if (t->s && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        } else {
            size_t cap = (t->cap ? t->cap : 4096) * 2 + (size_t)n;
            char *p = realloc(t->s, cap);
            t->failed = !p;
            t->s = p ? p : t->s;
            t->cap = p ? cap : t->cap;
        }
    }
}

/* A number as Prometheus and prometheus_client write it: the shortest form that reads back, with
 * ".0" on integers ("1.0", "0.025"). */
static void fmt_double(double x, char *buf, size_t cap)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    if (!strpbrk(buf, ".eEn"))
        strncat(buf, ".0", cap - strlen(buf) - 1);
}

static void family(text *t, const char *name, const char *type, const char *help)
{
    add(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(text *t, const char *name, const char *labels, double v)
{
    char num[40];
    fmt_double(v, num, sizeof num);
    add(t, "%s{%s} %s\n", name, labels, num);
}

static void render_histogram(text *t, const char *name, const char *help, const histogram *h, const char *labels)
{
    char full[128], le[40];
    family(t, name, "histogram", help);
    uint64_t cum = 0;
    for (int b = 0; b <= h->n; b++) {
        cum += h->counts[b];
        if (b < h->n)
            fmt_double(h->bounds[b], le, sizeof le);
        add(t, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels, b < h->n ? le : "+Inf", (unsigned long long)cum);
    }
    snprintf(full, sizeof full, "%s_sum", name);
    sample(t, full, labels, h->sum);
    add(t, "%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
}

/* model_name="..." with the label value escaped (backslash, quote, newline). */
static void label(const char *name, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "model_name=\"");
    for (const char *p = name ? name : ""; *p && o + 3 < cap; p++) {
        if (*p == '\\' || *p == '"' || *p == '\n')
            out[o++] = '\\';
        out[o++] = *p == '\n' ? 'n' : *p;
    }
    snprintf(out + o, cap - o, "\"");
}

static void render_live(text *t, const char *labels, const dsacp_live_stats *st, const counts *m)
{
    family(t, "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.");
    sample(t, "vllm:num_requests_running", labels, st ? (double)st->running : 0);
    family(t, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
    sample(t, "vllm:num_requests_waiting", labels, st ? (double)st->waiting : 0);
    family(t, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
    sample(t, "vllm:kv_cache_usage_perc", labels, st ? st->kv_use : 0);
    family(t, "vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.");
    sample(t, "vllm:num_preemptions_total", labels, st ? (double)st->preemptions : 0);
    family(t, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.");
    sample(t, "vllm:prompt_tokens_total", labels, (double)(st ? st->prompt_tokens : m->prompt_tokens));
    family(t, "vllm:generation_tokens_total", "counter", "Number of generation tokens processed.");
    sample(t, "vllm:generation_tokens_total", labels, (double)(st ? st->generation_tokens : m->generation_tokens));
}

char *oai_metrics_render(oai_metrics *m, const char *model_name, const dsacp_live_stats *st)
{
    pthread_mutex_lock(&m->mu);
    counts snap = m->c;
    pthread_mutex_unlock(&m->mu);
    char labels[384], with_reason[448];
    label(model_name, labels, sizeof labels);
    text t = {0};
    render_live(&t, labels, st, &snap);
    family(&t, "vllm:request_success_total", "counter", "Count of successfully processed requests.");
    for (int r = 0; r < N_REASONS; r++) {
        snprintf(with_reason, sizeof with_reason, "%s,finished_reason=\"%s\"", labels, reasons[r]);
        sample(&t, "vllm:request_success_total", with_reason, (double)snap.finished[r]);
    }
    render_histogram(&t, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                     &snap.ttft, labels);
    render_histogram(&t, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                     &snap.itl, labels);
    render_histogram(&t, "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                     &snap.tpot, labels);
    render_histogram(&t, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                     &snap.e2e, labels);
    if (t.failed) {
        free(t.s);
        return NULL;
    }
    return t.s;
}

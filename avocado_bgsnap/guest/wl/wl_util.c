/* bgsnap-wl helpers: string buffer, JSON, number parsing, clocks. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "wl_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void sb_init(struct sbuf *b)
{
    b->cap = 1024;
    b->len = 0;
    b->s = malloc(b->cap);
    if (!b->s)
        abort();
    b->s[0] = 0;
}

void sb_free(struct sbuf *b)
{
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        int n;
        va_start(ap, fmt);
        n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            abort();
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = 2 * b->cap + (size_t)n;
        b->s = realloc(b->s, b->cap);
        if (!b->s)
            abort();
    }
}

void sb_json_str(struct sbuf *b, const char *s)
{
    sb_printf(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sb_printf(b, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            sb_printf(b, "\\u%04x", c);
        else
            sb_printf(b, "%c", c);
    }
    sb_printf(b, "\"");
}

void wl_result_json(struct sbuf *b, const struct wl_vresult *R)
{
    wl_result_json_clean(b, R, wl_clean(R));
}

void wl_result_json_clean(struct sbuf *b, const struct wl_vresult *R, int clean)
{
    unsigned W = R->writers;
    sb_printf(b, "\"clean\":%s,\"npages\":%llu,\"pages_found\":%llu,\"bad_pages\":%llu,"
                 "\"steps_total\":%llu,\"committed\":[",
              clean ? "true" : "false", (unsigned long long)R->npages,
              (unsigned long long)R->pages_found, (unsigned long long)R->bad_pages,
              (unsigned long long)R->steps_total);
    for (unsigned w = 0; w < W; w++)
        sb_printf(b, "%s%llu", w ? "," : "", (unsigned long long)R->committed[w]);
    sb_printf(b, "],\"kinds\":{");
    for (int k = 1, first = 1; k < WL_NKIND; k++) {
        if (!R->kind_count[k])
            continue;
        sb_printf(b, "%s\"%s\":%llu", first ? "" : ",", wl_kind_name(k),
                  (unsigned long long)R->kind_count[k]);
        first = 0;
    }
    sb_printf(b, "},\"bad_first\":[");
    for (unsigned i = 0; i < R->nbad_first; i++) {
        const struct wl_bad *x = &R->bad_first[i];
        sb_printf(b, "%s{\"page\":%llu,\"kind\":\"%s\",\"found_step\":%llu,\"expected_step\":%llu}",
                  i ? "," : "", (unsigned long long)x->page, wl_kind_name(x->kind),
                  (unsigned long long)x->found_step, (unsigned long long)x->expected_step);
    }
    sb_printf(b, "],\"inflight\":[");
    for (unsigned w = 0; w < W; w++) {
        const struct wl_inflight *x = &R->inflight[w];
        sb_printf(b, "%s{\"writer\":%u,\"page\":%llu,\"state\":\"%s\",\"old_step\":%llu,\"new_step\":%llu}",
                  w ? "," : "", w, (unsigned long long)x->page, wl_ifstate_name(x->state),
                  (unsigned long long)x->old_step, (unsigned long long)x->new_step);
    }
    sb_printf(b, "],\"checksum\":\"%016llx\",\"expected_checksum\":\"%016llx\","
                 "\"expected_checksum_next\":\"%016llx\"",
              (unsigned long long)R->checksum, (unsigned long long)R->expected_checksum,
              (unsigned long long)R->expected_checksum_next);
}

int wl_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    int base = 10;
    if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        if (!*s)
            return -1;
    }
    errno = 0;
    v = strtoull(s, &end, base);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int wl_parse_double(const char *s, double *out)
{
    char *end;
    double v;
    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || v != v)
        return -1;
    *out = v;
    return 0;
}

uint64_t wl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int use_tsc;
static double ns_per_tick = 1.0;

static uint64_t rdtsc_raw(void)
{
#if defined(__x86_64__) || defined(__i386__)
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
#else
    return 0;
#endif
}

/* The kernel trusts the TSC only if it made it the clocksource. */
static int kernel_uses_tsc(void)
{
    char name[32] = "";
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (!f)
        return 0;
    if (!fgets(name, sizeof(name), f))
        name[0] = 0;
    fclose(f);
    return strncmp(name, "tsc", 3) == 0 && (name[3] == '\n' || name[3] == 0);
}

void wl_ticks_calibrate(void)
{
    struct timespec pause = {0, 20 * 1000000L};
    uint64_t n0, t0, n1, t1;
    if (!rdtsc_raw() || !kernel_uses_tsc()) {
        use_tsc = 0;
        return;
    }
    n0 = wl_now_ns();
    t0 = rdtsc_raw();
    nanosleep(&pause, NULL);
    n1 = wl_now_ns();
    t1 = rdtsc_raw();
    use_tsc = t1 > t0 && n1 > n0;
    ns_per_tick = use_tsc ? (double)(n1 - n0) / (double)(t1 - t0) : 1.0;
}

uint64_t wl_ticks(void)
{
    return use_tsc ? rdtsc_raw() : wl_now_ns();
}

uint64_t wl_ticks_ns(uint64_t from, uint64_t to)
{
    return to > from ? (uint64_t)((double)(to - from) * ns_per_tick) : 0;
}

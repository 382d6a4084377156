/* bgsnap-uffd-check: command line, the case loop, JSON on stdout, text on
 * stderr, and a watchdog for a write that blocks forever.
 *
 *   bgsnap-uffd-check [--no-protect] [--case NAME[,NAME..]] [--memory TYPE[,..]]
 *                     [--mib N] [--hugetlb-mib N] [--writers N]
 *                     [--skip-hugetlb REASON] [--case-timeout S]
 *                     [--ksm-wait S] [--ksm-pages N] [--skip-ksm REASON]
 *
 * Exit: 0 no case failed, 1 a case failed, 2 usage, 3 watchdog.
 */
#define _GNU_SOURCE
#include "uc.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

struct options g_opts = {.writers = 2, .mib = 16, .hugetlb_mib = 8, .ksm_wait = 20,
                         .ksm_pages = 2048};
uint64_t g_features;

static const char *const result_names[] = {"pass", "FAIL", "unsupported"};
static const char *const feature_names[] = {
    "PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE", "MISSING_HUGETLBFS",
    "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS", "THREAD_ID", "MINOR_HUGETLBFS", "MINOR_SHMEM",
    "EXACT_ADDRESS", "WP_HUGETLBFS_SHMEM", "WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
};
#define NFEATURES (sizeof feature_names / sizeof feature_names[0])

/* -- results -------------------------------------------------------------- */
static void vappend(char *buf, size_t size, const char *fmt, va_list ap)
{
    size_t used = strlen(buf);
    if (used && used + 2 < size) {
        strcpy(buf + used, "; ");
        used += 2;
    }
    if (used < size)
        vsnprintf(buf + used, size - used, fmt, ap);
}

void res_fail(struct result *r, const char *fmt, ...)
{
    va_list ap;
    if (r->result != RES_FAIL) {  /* a failure's reason comes first */
        r->result = RES_FAIL;
        r->reason[0] = 0;
    }
    va_start(ap, fmt);
    vappend(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

void res_note(struct result *r, const char *fmt, ...)
{
    va_list ap;
    if (r->result != RES_PASS)
        return;
    va_start(ap, fmt);
    vappend(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

void res_unsupported(struct result *r, const char *fmt, ...)
{
    va_list ap;
    r->result = RES_UNSUPPORTED;
    r->reason[0] = 0;
    va_start(ap, fmt);
    vappend(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

static struct figure *new_fig(struct result *r, const char *key, int kind)
{
    if (r->nfig >= (int)(sizeof r->fig / sizeof r->fig[0]))
        return NULL;
    struct figure *f = &r->fig[r->nfig++];
    memset(f, 0, sizeof *f);
    snprintf(f->key, sizeof f->key, "%s", key);
    f->kind = kind;
    return f;
}

void fig_num(struct result *r, const char *key, double value)
{
    struct figure *f = new_fig(r, key, FIG_NUM);
    if (f)
        f->num = value;
}

void fig_bool(struct result *r, const char *key, bool value)
{
    struct figure *f = new_fig(r, key, FIG_BOOL);
    if (f)
        f->num = value;
}

void fig_text(struct result *r, const char *key, const char *fmt, ...)
{
    struct figure *f = new_fig(r, key, FIG_TEXT);
    va_list ap;
    if (!f)
        return;
    va_start(ap, fmt);
    vsnprintf(f->text, sizeof f->text, fmt, ap);
    va_end(ap);
}

/* -- JSON ------------------------------------------------------------------ */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int ncases_printed, counts[3];

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (v == (double)(long long)v)
        fprintf(f, "%lld", (long long)v);
    else
        fprintf(f, "%.6g", v);
}

static void print_case(const struct result *r)
{
    FILE *o = stdout;
    fputs(ncases_printed++ ? ",\n  {" : "\n  {", o);
    fputs("\"name\": ", o);
    json_str(o, r->name);
    fputs(", \"memory_type\": ", o);
    json_str(o, mem_type_names[r->mt]);
    fputs(", \"result\": ", o);
    json_str(o, result_names[r->result]);
    fputs(", \"reason\": ", o);
    json_str(o, r->reason);
    fputs(", \"figures\": {", o);
    for (int i = 0; i < r->nfig; i++) {
        const struct figure *fg = &r->fig[i];
        if (i)
            fputs(", ", o);
        json_str(o, fg->key);
        fputs(": ", o);
        if (fg->kind == FIG_TEXT)
            json_str(o, fg->text);
        else if (fg->kind == FIG_BOOL)
            fputs(fg->num ? "true" : "false", o);
        else
            json_num(o, fg->num);
    }
    fputs("}}", o);
    fflush(o);
    counts[r->result]++;
    fprintf(stderr, "%-16s %-16s %-11s %s\n", r->name, mem_type_names[r->mt],
            result_names[r->result], r->reason);
}

static void print_end(const char *aborted)
{
    printf("\n ],\n \"summary\": {\"pass\": %d, \"fail\": %d, \"unsupported\": %d", counts[0],
           counts[1], counts[2]);
    if (aborted) {
        fputs(", \"aborted\": ", stdout);
        json_str(stdout, aborted);
    }
    puts("}\n}");
    fflush(stdout);
}

/* -- watchdog -------------------------------------------------------------- */
static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static struct result *wd_case;
static double wd_timeout = 30;
static const char *_Atomic cur_step = "-";
static _Atomic pid_t cur_child;

void set_step(const char *step) { atomic_store(&cur_step, step); }
void set_child(pid_t pid) { atomic_store(&cur_child, pid); }

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wd_lock);
    for (;;) {
        while (!wd_case)
            pthread_cond_wait(&wd_cond, &wd_lock);
        struct result *armed = wd_case;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)wd_timeout;
        until.tv_nsec += (long)((wd_timeout - (double)(time_t)wd_timeout) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int rc = 0;
        while (wd_case == armed && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&wd_cond, &wd_lock, &until);
        if (wd_case != armed)
            continue;
        pid_t child = atomic_load(&cur_child);
        if (child > 0)
            kill(child, SIGKILL);
        pthread_mutex_lock(&out_lock);
        res_fail(armed, "timed out after %g s in step '%s': a write blocked on a fault that "
                 "was never served?", wd_timeout, atomic_load(&cur_step));
        print_case(armed);
        print_end("watchdog: a case hung");
        _exit(3);
    }
    return NULL;
}

static void watch(struct result *r)
{
    pthread_mutex_lock(&wd_lock);
    wd_case = r;
    pthread_cond_broadcast(&wd_cond);
    pthread_mutex_unlock(&wd_lock);
}

/* -- main ------------------------------------------------------------------ */
static bool listed(const char *list, const char *name)
{
    if (!list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, name, n))
            return true;
        p += len + (end != NULL);
    }
    return false;
}

static void usage(void)
{
    fprintf(stderr, "usage: bgsnap-uffd-check [--no-protect] [--case NAME,..] [--memory TYPE,..] "
            "[--mib N] [--hugetlb-mib N] [--writers N] [--skip-hugetlb REASON] "
            "[--case-timeout S] [--ksm-wait S] [--ksm-pages N] [--skip-ksm REASON]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *only_cases = NULL, *only_types = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-protect")) {
            g_opts.no_protect = true;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--case"))
            only_cases = v;
        else if (!strcmp(a, "--memory"))
            only_types = v;
        else if (!strcmp(a, "--mib"))
            g_opts.mib = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--hugetlb-mib"))
            g_opts.hugetlb_mib = strtoul(v, NULL, 10) & ~1ul;
        else if (!strcmp(a, "--writers"))
            g_opts.writers = atoi(v);
        else if (!strcmp(a, "--skip-hugetlb"))
            g_opts.hugetlb_skip = v;
        else if (!strcmp(a, "--case-timeout"))
            wd_timeout = atof(v);
        else if (!strcmp(a, "--ksm-wait"))
            g_opts.ksm_wait = atof(v);
        else if (!strcmp(a, "--ksm-pages"))
            g_opts.ksm_pages = strtoul(v, NULL, 10) & ~7ul;
        else if (!strcmp(a, "--skip-ksm"))
            g_opts.ksm_skip = v;
        else
            usage();
    }
    if (g_opts.mib < 4 || g_opts.hugetlb_mib < 2 || g_opts.writers < 1 || wd_timeout <= 0 ||
        g_opts.ksm_wait < 0 || g_opts.ksm_pages < 8)
        usage();

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wd_cond, &ca);
    pthread_t wd;
    pthread_create(&wd, NULL, watchdog_main, NULL);

    char how[48] = "", uerr[256] = "";
    bool uffd_ok = uffd_probe(&g_features, how, sizeof how, uerr, sizeof uerr) == 0;
    struct utsname un;
    uname(&un);
    char thp[32] = "", defrag[32] = "";
    sysfs_choice("/sys/kernel/mm/transparent_hugepage/enabled", thp, sizeof thp);
    sysfs_choice("/sys/kernel/mm/transparent_hugepage/defrag", defrag, sizeof defrag);

    printf("{\n \"tool\": \"bgsnap-uffd-check\", \"format\": 1, \"kernel\": ");
    json_str(stdout, un.release);
    printf(", \"machine\": ");
    json_str(stdout, un.machine);
    printf(",\n \"uffd_open\": ");
    json_str(stdout, uffd_ok ? how : uerr);
    printf(", \"features\": \"0x%llx\", \"feature_names\": [", (unsigned long long)g_features);
    for (size_t b = 0, n = 0; b < 64; b++)
        if (g_features >> b & 1) {
            char name[16];
            snprintf(name, sizeof name, "BIT%zu", b);
            fputs(n++ ? ", " : "", stdout);
            json_str(stdout, b < NFEATURES ? feature_names[b] : name);
        }
    printf("],\n \"no_protect\": %s, \"writers\": %d, \"mib\": %zu, \"hugetlb_mib\": %zu, "
           "\"swap_total_kib\": %ld, \"thp_enabled\": ", g_opts.no_protect ? "true" : "false",
           g_opts.writers, g_opts.mib, g_opts.hugetlb_mib, meminfo_kib("SwapTotal"));
    json_str(stdout, thp);
    printf(", \"thp_defrag\": ");
    json_str(stdout, defrag);
    printf(", \"hugetlb_skip\": ");
    if (g_opts.hugetlb_skip)
        json_str(stdout, g_opts.hugetlb_skip);
    else
        fputs("null", stdout);
    printf(", \"ksm_run\": %ld, \"ksm_skip\": ",
           sysfs_long("/sys/kernel/mm/ksm/run"));
    if (g_opts.ksm_skip)
        json_str(stdout, g_opts.ksm_skip);
    else
        fputs("null", stdout);
    printf(",\n \"cases\": [");
    fflush(stdout);
    fprintf(stderr, "bgsnap-uffd-check: kernel %s, features 0x%llx (%s)%s\n", un.release,
            (unsigned long long)g_features, uffd_ok ? how : uerr,
            g_opts.no_protect ? ", NEGATIVE CONTROL: no write-protection" : "");

    for (size_t i = 0; i < g_ncases; i++) {
        const struct case_def *d = &g_cases[i];
        if (!listed(only_cases, d->name))
            continue;
        for (int t = 0; t < MT_COUNT; t++) {
            if (!(d->types & MT_BIT(t)) || !listed(only_types, mem_type_names[t]))
                continue;
            static struct result res;
            memset(&res, 0, sizeof res);
            res.name = d->name;
            res.mt = (enum mem_type)t;
            char why[256];
            uint64_t missing = (type_features(res.mt) | d->needs) & ~g_features;
            if (!uffd_ok) {
                res_unsupported(&res, "%s", uerr);
            } else if (!type_supported(res.mt, why, sizeof why)) {
                res_unsupported(&res, "%s", why);
            } else if (missing) {
                int bit = __builtin_ctzll(missing);
                res_unsupported(&res, "kernel lacks UFFD_FEATURE_%s (bit %d)",
                                bit < (int)NFEATURES ? feature_names[bit] : "?", bit);
            } else {
                double t0 = now_s();
                watch(&res);
                d->fn(&res, res.mt, d);
                watch(NULL);
                fig_num(&res, "seconds", (double)(long)((now_s() - t0) * 1000) / 1000);
            }
            pthread_mutex_lock(&out_lock);
            print_case(&res);
            pthread_mutex_unlock(&out_lock);
        }
    }
    pthread_mutex_lock(&out_lock);
    print_end(NULL);
    fprintf(stderr, "bgsnap-uffd-check: %d pass, %d FAIL, %d unsupported\n", counts[0],
            counts[1], counts[2]);
    return counts[RES_FAIL] ? 1 : 0;
}

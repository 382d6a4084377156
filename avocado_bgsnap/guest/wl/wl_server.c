/* bgsnap-wl guest side: the region, the writer threads, latency windows,
 * the control socket (`run`), its client (`ctl`) and `selfcheck`. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "wl_cli.h"
#include "wl_journal.h"
#include "wl_util.h"

#define NWIN 4
#define NBUCKET 512 /* 64 powers of two x 8 sub-buckets */
#define MIB 1048576.0

struct server;

/* the guest settings `run` saw (and set with --tune): a JSON object */
static char guest_json[512] = "{}";
static int read_setting(const char *path, char *buf, size_t n);

struct writer {
    pthread_t th;
    unsigned w;
    struct server *S;
    _Atomic uint64_t filled;
    _Atomic uint64_t count[NWIN], maxns[NWIN];
    _Atomic uint64_t hist[NWIN][NBUCKET];
} __attribute__((aligned(64)));

struct server {
    struct wl_params P;
    int latency;
    double rate_mib_s;
    uint8_t *map, *meta, *region;
    size_t maplen;
    int mlock_errno; /* 0 = locked */
    /* the duplicate region (--dup-mib): every page D0, after dupwrite D1;
     * a mapping of its own, NOT locked (the host's KSM may merge it) */
    uint8_t *dup;
    size_t duplen;
    uint64_t dup_pages, dup_mib;
    atomic_int dup_state;
    struct writer *wr;
    unsigned started;
    atomic_int freeze_req, stop_req, window;
    pthread_mutex_t mu;
    pthread_cond_t cv, cv_srv;
    /* under mu */
    unsigned filled_writers, parked;
    int phase;
    uint64_t t_fill_start, t_fill_end, run_since, run_ns, win_since, win_ns[NWIN];
};

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) { got_signal = sig; }

static inline void inc(_Atomic uint64_t *x, uint64_t by)
{ /* single writer: no locked instruction needed */
    atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

static inline _Atomic uint64_t *committed_p(struct server *S, unsigned w)
{
    return (_Atomic uint64_t *)(S->meta + 8u * WL_M_COMMITTED(w));
}

static uint64_t committed(struct server *S, unsigned w)
{
    return WL_LE(atomic_load_explicit(committed_p(S, w), memory_order_acquire));
}

static void set_phase(struct server *S, int phase)
{ /* caller holds mu (or is alone) */
    S->phase = phase;
    __atomic_store_n((uint64_t *)(S->meta + 8u * WL_M_PHASE), WL_LE((uint64_t)phase),
                     __ATOMIC_RELEASE);
}

static unsigned bucket_of(uint64_t v)
{
    unsigned e;
    if (v < 8)
        return (unsigned)v;
    e = 63u - (unsigned)__builtin_clzll(v);
    return e * 8u + (unsigned)((v >> (e - 3)) & 7u);
}

static uint64_t bucket_upper(unsigned b)
{
    unsigned e = b / 8, sub = b % 8;
    if (b < 8)
        return b;
    if (e >= 60)
        return UINT64_MAX;
    return ((uint64_t)(9 + sub) << (e - 3)) - 1;
}

static void pace(struct server *S, uint64_t *t0, uint64_t *n, double ns_per_page)
{
    uint64_t now = wl_now_ns(), target = *t0 + (uint64_t)((double)++*n * ns_per_page);
    if (now > target + 1000000000ull) { /* far behind (descheduled): no burst */
        *t0 = now;
        *n = 0;
        return;
    }
    while (now < target && !atomic_load_explicit(&S->freeze_req, memory_order_relaxed) &&
           !atomic_load_explicit(&S->stop_req, memory_order_relaxed)) {
        uint64_t d = target - now;
        struct timespec ts;
        if (d > 10000000)
            d = 10000000;
        ts.tv_sec = 0;
        ts.tv_nsec = (long)d;
        nanosleep(&ts, NULL);
        now = wl_now_ns();
    }
}

static void *writer_main(void *arg)
{
    struct writer *me = arg;
    struct server *S = me->S;
    const struct wl_params *P = &S->P;
    unsigned W = P->writers, w = me->w;
    struct wl_cursor cur;
    uint64_t C = 0, pace_t0, pace_n = 0;
    /* Latency: ONE timestamp per page (wl_ticks), at its commit; a page's
     * latency is the time since the previous commit (or restart, or pacing
     * sleep): the write plus the loop's few stores.  Two clock_gettime()
     * around each write cost the writers 14-26 % under TCG. */
    uint64_t t_prev = 0;
    double ns_per_page = 0;

    wl_cursor_init(&cur, P, w);
    for (uint64_t j = 0; j < cur.n; j++) { /* step 0: the fill */
        uint64_t p = j * W + w;
        wl_fill_page(P, S->region + p * WL_PAGE, p, 0);
        atomic_store_explicit(&me->filled, j + 1, memory_order_relaxed);
        if ((j & 1023) == 0 && atomic_load_explicit(&S->stop_req, memory_order_relaxed))
            return NULL;
    }
    pthread_mutex_lock(&S->mu);
    if (++S->filled_writers == W) {
        uint64_t now = wl_now_ns();
        S->t_fill_end = S->run_since = S->win_since = now;
        set_phase(S, WL_PHASE_RUNNING);
        pthread_cond_broadcast(&S->cv);
    }
    while (S->phase == WL_PHASE_FILLING && !atomic_load(&S->stop_req))
        pthread_cond_wait(&S->cv, &S->mu);
    pthread_mutex_unlock(&S->mu);

    if (S->rate_mib_s > 0)
        ns_per_page = WL_PAGE / (S->rate_mib_s * MIB / W) * 1e9;
    pace_t0 = wl_now_ns();
    for (;;) {
        uint64_t s, p;
        unsigned win;
        if (atomic_load_explicit(&S->freeze_req, memory_order_relaxed) ||
            atomic_load_explicit(&S->stop_req, memory_order_relaxed)) {
            pthread_mutex_lock(&S->mu);
            S->parked++;
            pthread_cond_broadcast(&S->cv_srv);
            while (atomic_load(&S->freeze_req) && !atomic_load(&S->stop_req))
                pthread_cond_wait(&S->cv, &S->mu);
            S->parked--;
            pthread_mutex_unlock(&S->mu);
            if (atomic_load(&S->stop_req))
                return NULL;
            pace_t0 = wl_now_ns();
            t_prev = wl_ticks();
            pace_n = 0;
            continue;
        }
        s = C + 1;
        p = wl_cursor_j(&cur, s) * W + w;
        win = (unsigned)atomic_load_explicit(&S->window, memory_order_relaxed);
        if (S->latency && t_prev == 0)
            t_prev = wl_ticks();
        wl_write_step(P, (uint64_t *)(S->region + p * WL_PAGE), p, s);
        if (S->latency) {
            uint64_t now = wl_ticks(), dt = wl_ticks_ns(t_prev, now);
            t_prev = now;
            inc(&me->hist[win][bucket_of(dt)], 1);
            if (dt > atomic_load_explicit(&me->maxns[win], memory_order_relaxed))
                atomic_store_explicit(&me->maxns[win], dt, memory_order_relaxed);
        }
        inc(&me->count[win], 1);
        /* the page is complete: publish it */
        atomic_store_explicit(committed_p(S, w), WL_LE(s), memory_order_release);
        C = s;
        if (ns_per_page > 0) {
            pace(S, &pace_t0, &pace_n, ns_per_page);
            if (S->latency)  /* a pacing sleep is not write latency */
                t_prev = wl_ticks();
        }
    }
}

/* ---- setup / teardown ---- */

static int server_init(struct server *S, const struct wl_opts *o)
{
    memset(S, 0, sizeof(*S));
    S->P = o->P;
    S->latency = o->latency;
    if (S->latency)
        wl_ticks_calibrate();
    S->rate_mib_s = o->rate_mib_s;
    S->maplen = (size_t)(S->P.npages + 1) * WL_PAGE;
    if ((uint64_t)S->maplen / WL_PAGE != S->P.npages + 1) {
        fprintf(stderr, "bgsnap-wl: region too large\n");
        return -1;
    }
    S->map = mmap(NULL, S->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (S->map == MAP_FAILED) {
        int e = errno;
        char oc[16] = "?";
        read_setting("/proc/sys/vm/overcommit_memory", oc, sizeof(oc));
        fprintf(stderr, "bgsnap-wl: ERROR: out of guest memory: mmap %zu bytes: %s "
                "(vm.overcommit_memory %s)\n", S->maplen, strerror(e), oc);
        return -1;
    }
#ifdef MADV_NOHUGEPAGE
    madvise(S->map, S->maplen, MADV_NOHUGEPAGE);
#endif
    S->mlock_errno = mlock(S->map, S->maplen) == 0 ? 0 : errno;
    S->meta = S->map;
    S->region = S->map + WL_PAGE;
    S->dup_mib = o->dup_mib;
    if (o->dup_mib) {
        uint8_t d0[WL_PAGE];
        S->dup_pages = o->dup_mib * (1024 * 1024 / WL_PAGE);
        S->duplen = (size_t)S->dup_pages * WL_PAGE;
        S->dup = mmap(NULL, S->duplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (S->dup == MAP_FAILED) {
            fprintf(stderr, "bgsnap-wl: mmap dup region %zu bytes: %s\n", S->duplen,
                    strerror(errno));
            return -1;
        }
#ifdef MADV_NOHUGEPAGE
        madvise(S->dup, S->duplen, MADV_NOHUGEPAGE);
#endif
        wl_fill_dup(&S->P, d0, 0);
        for (uint64_t i = 0; i < S->dup_pages; i++)
            memcpy(S->dup + i * WL_PAGE, d0, WL_PAGE);
        atomic_store(&S->dup_state, 0);
    }
    wl_meta_init(S->meta, &S->P);
    S->wr = aligned_alloc(64, sizeof(struct writer) * S->P.writers);
    if (!S->wr) {
        fprintf(stderr, "bgsnap-wl: out of memory\n");
        return -1;
    }
    memset(S->wr, 0, sizeof(struct writer) * S->P.writers);
    pthread_mutex_init(&S->mu, NULL);
    pthread_cond_init(&S->cv, NULL);
    pthread_cond_init(&S->cv_srv, NULL);
    S->phase = WL_PHASE_FILLING;
    return 0;
}

static int server_start(struct server *S)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    S->t_fill_start = wl_now_ns();
    for (unsigned w = 0; w < S->P.writers; w++) {
        S->wr[w].w = w;
        S->wr[w].S = S;
        if (pthread_create(&S->wr[w].th, &attr, writer_main, &S->wr[w]) != 0) {
            fprintf(stderr, "bgsnap-wl: cannot start writer %u\n", w);
            pthread_attr_destroy(&attr);
            return -1;
        }
        S->started++;
    }
    pthread_attr_destroy(&attr);
    return 0;
}

static void server_stop(struct server *S)
{
    atomic_store(&S->stop_req, 1);
    pthread_mutex_lock(&S->mu);
    pthread_cond_broadcast(&S->cv);
    pthread_mutex_unlock(&S->mu);
    for (unsigned w = 0; w < S->started; w++)
        pthread_join(S->wr[w].th, NULL);
    S->started = 0;
    set_phase(S, WL_PHASE_STOPPED);
    free(S->wr);
    munmap(S->map, S->maplen);
    if (S->dup)
        munmap(S->dup, S->duplen);
}

/* accrue running/window time up to now (caller holds mu) */
static void accrue(struct server *S, uint64_t now)
{
    int win = atomic_load(&S->window);
    if (S->run_since) {
        S->run_ns += now - S->run_since;
        S->run_since = now;
    }
    if (S->win_since) {
        S->win_ns[win] += now - S->win_since;
        S->win_since = now;
    }
}

/* ---- replies ---- */

static void json_committed(struct server *S, struct sbuf *b)
{
    uint64_t total = 0;
    sb_printf(b, "\"committed\":[");
    for (unsigned w = 0; w < S->P.writers; w++) {
        uint64_t c = committed(S, w);
        total += c;
        sb_printf(b, "%s%llu", w ? "," : "", (unsigned long long)c);
    }
    sb_printf(b, "],\"steps_total\":%llu", (unsigned long long)total);
}

static void json_window(struct server *S, struct sbuf *b, int k, double secs)
{
    static uint64_t h[NBUCKET];
    uint64_t count = 0, hn = 0, mx = 0, p50 = 0, p99 = 0, acc = 0;
    memset(h, 0, sizeof(h));
    for (unsigned w = 0; w < S->P.writers; w++) {
        struct writer *x = &S->wr[w];
        uint64_t m = atomic_load_explicit(&x->maxns[k], memory_order_relaxed);
        count += atomic_load_explicit(&x->count[k], memory_order_relaxed);
        if (m > mx)
            mx = m;
        for (unsigned i = 0; i < NBUCKET; i++)
            h[i] += atomic_load_explicit(&x->hist[k][i], memory_order_relaxed);
    }
    for (unsigned i = 0; i < NBUCKET; i++)
        hn += h[i];
    for (unsigned i = 0; i < NBUCKET && hn; i++) {
        uint64_t before = acc;
        acc += h[i];
        if (before < (hn + 1) / 2 && acc >= (hn + 1) / 2)
            p50 = bucket_upper(i);
        if (before < hn - hn / 100 && acc >= hn - hn / 100)
            p99 = bucket_upper(i);
    }
    if (p50 > mx)
        p50 = mx;
    if (p99 > mx)
        p99 = mx;
    sb_printf(b, "{\"window\":%d,\"count\":%llu,\"seconds\":%.3f,\"mib_per_s\":%.1f", k,
              (unsigned long long)count, secs, secs > 0 ? (double)count * WL_PAGE / MIB / secs : 0.0);
    if (S->latency && hn)
        sb_printf(b, ",\"p50_ns\":%llu,\"p99_ns\":%llu,\"max_ns\":%llu}", (unsigned long long)p50,
                  (unsigned long long)p99, (unsigned long long)mx);
    else
        sb_printf(b, ",\"p50_ns\":null,\"p99_ns\":null,\"max_ns\":null}");
}

static const char *phase_str(int ph)
{
    static const char *const n[] = {"filling", "running", "frozen", "stopped"};
    return ph >= 0 && ph < 4 ? n[ph] : "?";
}

/* each latency window's seconds so far; the caller holds S->mu and has accrued */
static void window_seconds(struct server *S, double winsec[NWIN])
{
    for (int k = 0; k < NWIN; k++)
        winsec[k] = (double)S->win_ns[k] / 1e9;
}

/* "windows":[...]: every latency window, ``winsec`` its seconds */
static void json_windows(struct server *S, struct sbuf *b, const double winsec[NWIN])
{
    sb_printf(b, "\"windows\":[");
    for (int k = 0; k < NWIN; k++) {
        if (k)
            sb_printf(b, ",");
        json_window(S, b, k, winsec[k]);
    }
    sb_printf(b, "]");
}

static void cmd_status(struct server *S, struct sbuf *b)
{
    uint64_t filled = 0, now = wl_now_ns(), steps = 0;
    double fill_s, run_s, winsec[NWIN];
    int phase, cur = atomic_load(&S->window);
    for (unsigned w = 0; w < S->P.writers; w++) {
        filled += atomic_load_explicit(&S->wr[w].filled, memory_order_relaxed);
        steps += committed(S, w);
    }
    pthread_mutex_lock(&S->mu);
    accrue(S, now);
    phase = S->phase;
    fill_s = (double)((S->t_fill_end ? S->t_fill_end : now) - S->t_fill_start) / 1e9;
    run_s = (double)S->run_ns / 1e9;
    window_seconds(S, winsec);
    pthread_mutex_unlock(&S->mu);

    sb_printf(b, "{\"ok\":true,\"cmd\":\"status\",\"phase\":\"%s\",\"npages\":%llu,"
                 "\"filled_pages\":%llu,\"fill_pct\":%.1f,\"fill_seconds\":%.3f,"
                 "\"fill_mib_per_s\":%.1f,\"writers\":%u,\"pattern\":\"%s\",\"hot_pct\":%u,"
                 "\"rate_mib_s\":%g,\"seed\":%llu,\"nonce\":%llu,\"latency\":%s,\"mlock\":%s,",
              phase_str(phase), (unsigned long long)S->P.npages, (unsigned long long)filled,
              100.0 * (double)filled / (double)S->P.npages, fill_s,
              fill_s > 0 ? (double)filled * WL_PAGE / MIB / fill_s : 0.0, S->P.writers,
              wl_pattern_name(S->P.pattern), S->P.hot_pct, S->rate_mib_s,
              (unsigned long long)S->P.seed, (unsigned long long)S->P.nonce,
              S->latency ? "true" : "false", S->mlock_errno ? "false" : "true");
    if (S->mlock_errno) {
        sb_printf(b, "\"mlock_error\":");
        sb_json_str(b, strerror(S->mlock_errno));
        sb_printf(b, ",");
    }
    sb_printf(b, "\"guest\":%s,", guest_json);
    sb_printf(b, "\"dup_mib\":%llu,\"dup_state\":%d,", (unsigned long long)S->dup_mib,
              atomic_load(&S->dup_state));
    wl_journal_json(b);
    json_committed(S, b);
    sb_printf(b, ",\"elapsed_s\":%.3f,\"mib_per_s\":%.1f,\"window\":%d,", run_s,
              run_s > 0 ? (double)steps * WL_PAGE / MIB / run_s : 0.0, cur);
    json_windows(S, b, winsec);
    sb_printf(b, "}");
}

/* "windows":[...] of the latency windows as they stand now (freeze's reply) */
static void json_windows_now(struct server *S, struct sbuf *b)
{
    double winsec[NWIN];
    pthread_mutex_lock(&S->mu);
    accrue(S, wl_now_ns());
    window_seconds(S, winsec);
    pthread_mutex_unlock(&S->mu);
    json_windows(S, b, winsec);
}

static int do_freeze(struct server *S, const char **err)
{
    pthread_mutex_lock(&S->mu);
    if (S->phase == WL_PHASE_FILLING) {
        pthread_mutex_unlock(&S->mu);
        *err = "still filling: freeze once status says running";
        return -1;
    }
    if (S->phase == WL_PHASE_RUNNING) {
        atomic_store(&S->freeze_req, 1);
        while (S->parked < S->P.writers)
            pthread_cond_wait(&S->cv_srv, &S->mu);
        accrue(S, wl_now_ns());
        S->run_since = S->win_since = 0;
        set_phase(S, WL_PHASE_FROZEN);
    }
    pthread_mutex_unlock(&S->mu);
    return 0;
}

static void do_thaw(struct server *S)
{
    pthread_mutex_lock(&S->mu);
    if (S->phase == WL_PHASE_FROZEN) {
        S->run_since = S->win_since = wl_now_ns();
        set_phase(S, WL_PHASE_RUNNING);
        atomic_store(&S->freeze_req, 0);
        pthread_cond_broadcast(&S->cv);
    }
    pthread_mutex_unlock(&S->mu);
}

/* verify the live region (writers parked); returns 0 clean, 1 bad, -1 oom */
static int live_verify(struct server *S, struct sbuf *b, const char *cmd)
{
    uint64_t C[WL_MAX_WRITERS], t0 = wl_now_ns();
    const uint8_t **pages = malloc(S->P.npages * sizeof(*pages));
    struct wl_vresult *R = malloc(sizeof(*R));
    double secs;
    int rc;
    if (!pages || !R) {
        free(pages);
        free(R);
        return -1;
    }
    for (unsigned w = 0; w < S->P.writers; w++)
        C[w] = committed(S, w);
    for (uint64_t p = 0; p < S->P.npages; p++)
        pages[p] = S->region + p * WL_PAGE;
    if (wl_verify(&S->P, C, pages, NULL, R)) {
        free(pages);
        free(R);
        return -1;
    }
    secs = (double)(wl_now_ns() - t0) / 1e9;
    if (secs <= 0)
        secs = 1e-9;
    sb_printf(b, "{\"ok\":true,\"cmd\":\"%s\",", cmd);
    wl_result_json(b, R);
    sb_printf(b, ",\"verify_seconds\":%.6f,\"mib_per_s\":%.1f}", secs,
              (double)S->P.npages * WL_PAGE / MIB / secs);
    rc = wl_clean(R) ? 0 : 1;
    free(pages);
    free(R);
    return rc;
}

static void reply_error(struct sbuf *b, const char *cmd, const char *err)
{
    sb_printf(b, "{\"ok\":false,\"cmd\":");
    sb_json_str(b, cmd);
    sb_printf(b, ",\"error\":");
    sb_json_str(b, err);
    sb_printf(b, "}");
}

/* handle one request line; returns 1 if the server must quit */
static int handle(struct server *S, char *line, struct sbuf *b)
{
    char *save = NULL, *cmd = strtok_r(line, " \t\r\n", &save);
    char *arg = strtok_r(NULL, " \t\r\n", &save);
    const char *err = NULL;
    uint64_t n;
    if (!cmd) {
        reply_error(b, "", "empty command");
    } else if (strcmp(cmd, "status") == 0) {
        cmd_status(S, b);
    } else if (strcmp(cmd, "mark") == 0) {
        if (!arg || wl_parse_u64(arg, &n) || n >= NWIN) {
            reply_error(b, cmd, "mark needs a window number 0..3");
        } else {
            pthread_mutex_lock(&S->mu);
            accrue(S, wl_now_ns());
            atomic_store(&S->window, (int)n);
            pthread_mutex_unlock(&S->mu);
            sb_printf(b, "{\"ok\":true,\"cmd\":\"mark\",\"window\":%d,", (int)n);
            json_committed(S, b);
            sb_printf(b, "}");
        }
    } else if (strcmp(cmd, "freeze") == 0) {
        if (do_freeze(S, &err))
            reply_error(b, cmd, err);
        else {
            sb_printf(b, "{\"ok\":true,\"cmd\":\"freeze\",\"phase\":\"frozen\",");
            json_committed(S, b);
            sb_printf(b, ",");
            json_windows_now(S, b);   /* what status would have said: one round trip less */
            sb_printf(b, "}");
        }
    } else if (strcmp(cmd, "thaw") == 0) {
        pthread_mutex_lock(&S->mu);
        err = S->phase == WL_PHASE_FROZEN || S->phase == WL_PHASE_RUNNING ? NULL : "not running";
        pthread_mutex_unlock(&S->mu);
        if (err)
            reply_error(b, cmd, err);
        else {
            do_thaw(S);
            sb_printf(b, "{\"ok\":true,\"cmd\":\"thaw\",\"phase\":\"running\"}");
        }
    } else if (strcmp(cmd, "verify") == 0) {
        pthread_mutex_lock(&S->mu);
        err = S->phase == WL_PHASE_FROZEN ? NULL : "verify needs the writers frozen: send freeze first";
        pthread_mutex_unlock(&S->mu);
        if (!err && arg && strcmp(arg, "thaw") != 0)
            err = "verify takes no argument but thaw";
        if (err)
            reply_error(b, cmd, err);
        else if (live_verify(S, b, "verify") < 0)
            reply_error(b, cmd, "out of memory");
        if (!err && arg)   /* verify thaw: the writers resume once it is done */
            do_thaw(S);
    } else if (strcmp(cmd, "dupwrite") == 0) {
        if (!S->dup) {
            reply_error(b, cmd, "no duplicate region (run --dup-mib N)");
        } else {
            /* every page of the dup region := D1, in ascending order */
            uint8_t d1[WL_PAGE];
            uint64_t t0 = wl_now_ns();
            wl_fill_dup(&S->P, d1, 1);
            for (uint64_t i = 0; i < S->dup_pages; i++)
                memcpy(S->dup + i * WL_PAGE, d1, WL_PAGE);
            atomic_store(&S->dup_state, 1);
            sb_printf(b, "{\"ok\":true,\"cmd\":\"dupwrite\",\"pages\":%llu,\"dup_state\":1,"
                         "\"seconds\":%.6f}",
                      (unsigned long long)S->dup_pages, (double)(wl_now_ns() - t0) / 1e9);
        }
    } else if (strcmp(cmd, "quit") == 0) {
        sb_printf(b, "{\"ok\":true,\"cmd\":\"quit\",");
        json_committed(S, b);
        sb_printf(b, "}");
        return 1;
    } else {
        reply_error(b, cmd, "unknown command (status|mark N|freeze|thaw|verify [thaw]|dupwrite|quit)");
    }
    return 0;
}

static int serve_one(struct server *S, int lfd)
{
    char line[256];
    size_t len = 0;
    struct sbuf b;
    struct timeval tv = {5, 0};
    int quit, fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    while (len < sizeof(line) - 1) {
        ssize_t r = read(fd, line + len, sizeof(line) - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        if (memchr(line, '\n', len))
            break;
    }
    line[len] = 0;
    sb_init(&b);
    sb_printf(&b, WL_PREFIX);
    quit = handle(S, line, &b);
    sb_printf(&b, "\n");
    for (size_t off = 0; off < b.len;) {
        ssize_t r = write(fd, b.s + off, b.len - off);
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    sb_free(&b);
    close(fd);
    return quit;
}

/* ---- what the guest needs, the socket's place ---- */

/* The first word of a sysctl/sysfs file ("[always] madvise never" gives the
 * bracketed one); -1 when it cannot be read (then buf is "absent"). */
static int read_setting(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    char line[256], *p, *q;
    snprintf(buf, n, "absent");
    if (!f)
        return -1;
    p = fgets(line, sizeof(line), f);
    fclose(f);
    if (!p)
        return -1;
    if ((q = strchr(line, '[')) != NULL && strchr(q, ']'))
        p = q + 1, *strchr(q, ']') = 0;
    p[strcspn(p, " \n")] = 0;
    snprintf(buf, n, "%s", p);
    return 0;
}

/* One setting into the JSON object: its value, and with `want` (--tune) the
 * value set ("0 (was 1)") or why it could not be ("1 (cannot set: ...)"). */
static void guest_setting(struct sbuf *b, const char *name, const char *path, const char *want)
{
    char cur[64], val[160];
    FILE *f;
    if (read_setting(path, cur, sizeof(cur)) != 0 || !want || strcmp(cur, want) == 0) {
        snprintf(val, sizeof(val), "%s", cur);
    } else if ((f = fopen(path, "w")) != NULL && fputs(want, f) >= 0 && fclose(f) == 0) {
        snprintf(val, sizeof(val), "%s (was %s)", want, cur);
    } else {
        snprintf(val, sizeof(val), "%s (cannot set: %s)", cur, strerror(errno));
        if (f)
            fclose(f);
    }
    sb_printf(b, "%s\"%s\":", b->len > 1 ? "," : "", name);
    sb_json_str(b, val);
}

/* What keeps the region's pages on their guest-physical frames: the memlock
 * limit (Debian 13 gives root 8 MiB), no compaction of mlocked pages, no NUMA
 * balancing; the THP mode is reported (the region is MADV_NOHUGEPAGE).
 * Without --tune nothing is changed (the unit tests run `run` on the host). */
static void guest_settings(int tune)
{
    struct sbuf b;
    struct rlimit rl;
    char lim[96] = "?";
    sb_init(&b);
    sb_printf(&b, "{");
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
        int raised = 0;
        if (tune && rl.rlim_cur != RLIM_INFINITY) {
            struct rlimit inf = {RLIM_INFINITY, RLIM_INFINITY};
            raised = setrlimit(RLIMIT_MEMLOCK, &inf) == 0 ? 1 : -errno;
        }
        if (rl.rlim_cur == RLIM_INFINITY)
            snprintf(lim, sizeof(lim), "unlimited");
        else if (raised == 1)
            snprintf(lim, sizeof(lim), "unlimited (was %llu)", (unsigned long long)rl.rlim_cur);
        else if (raised < 0)
            snprintf(lim, sizeof(lim), "%llu (cannot raise: %s)", (unsigned long long)rl.rlim_cur,
                     strerror(-raised));
        else
            snprintf(lim, sizeof(lim), "%llu", (unsigned long long)rl.rlim_cur);
    }
    sb_printf(&b, "\"memlock_limit\":");
    sb_json_str(&b, lim);
    guest_setting(&b, "compact_unevictable_allowed", "/proc/sys/vm/compact_unevictable_allowed",
                  tune ? "0" : NULL);
    guest_setting(&b, "numa_balancing", "/proc/sys/kernel/numa_balancing", tune ? "0" : NULL);
    guest_setting(&b, "thp", "/sys/kernel/mm/transparent_hugepage/enabled", NULL);
    guest_setting(&b, "overcommit_memory", "/proc/sys/vm/overcommit_memory", NULL);
    sb_printf(&b, "}");
    snprintf(guest_json, sizeof(guest_json), "%s", b.s);
    sb_free(&b);
}

/* --socket unset: the first directory of WL_SOCKET_DIRS that exists and is
 * writable; NULL (and the reason on stderr) when there is none. */
static const char *socket_for_run(char *buf, size_t n)
{
    static const char *const dirs[] = WL_SOCKET_DIRS;
    char tried[256] = "";
    for (int i = 0; dirs[i]; i++) {
        struct stat st;
        if (stat(dirs[i], &st) == 0 && S_ISDIR(st.st_mode) && access(dirs[i], W_OK | X_OK) == 0) {
            snprintf(buf, n, "%s/%s", dirs[i], WL_SOCKET_NAME);
            return buf;
        }
        snprintf(tried + strlen(tried), sizeof(tried) - strlen(tried), "%s%s", i ? ", " : "",
                 dirs[i]);
    }
    fprintf(stderr, "bgsnap-wl run: ERROR: no writable directory for the control socket "
            "(tried %s): pass --socket PATH\n", tried);
    return NULL;
}

static int make_socket(const char *path)
{
    struct sockaddr_un sa;
    int fd;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "bgsnap-wl run: socket path too long (max %zu bytes): %s\n",
                sizeof(sa.sun_path) - 1, path);
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        fprintf(stderr, "bgsnap-wl run: another server is listening on %s\n", path);
        close(fd);
        return -1;
    }
    close(fd);
    unlink(path); /* stale socket of a dead server */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0) {
        fprintf(stderr, "bgsnap-wl run: cannot listen on %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int wl_cmd_run(const struct wl_opts *o)
{
    static struct server S;
    struct sigaction sa;
    int lfd;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    char sockbuf[128];
    const char *sock = o->socket ? o->socket : socket_for_run(sockbuf, sizeof(sockbuf));
    if (!sock)
        return 2;
    /* listen first: early clients queue in the backlog during mlock */
    if ((lfd = make_socket(sock)) < 0)
        return 2;
    guest_settings(o->tune); /* before server_init: the memlock limit */
    if (server_init(&S, o) != 0 || server_start(&S) != 0) {
        close(lfd);
        unlink(sock);
        return 2;
    }
    if (o->journal && wl_journal_start(o->journal, (unsigned)o->journal_ms, S.P.nonce, S.meta,
                                       S.P.writers) != 0) {
        close(lfd);
        unlink(sock);
        server_stop(&S);
        return 2;
    }
    fprintf(stderr, "bgsnap-wl: listening on %s: %llu pages, %u writers, %s, mlock %s, guest %s\n",
            sock, (unsigned long long)S.P.npages, S.P.writers, wl_pattern_name(S.P.pattern),
            S.mlock_errno ? strerror(S.mlock_errno) : "ok", guest_json);
    while (!got_signal) {
        struct pollfd pfd = {lfd, POLLIN, 0};
        int r = poll(&pfd, 1, 200);
        if (r > 0 && (pfd.revents & POLLIN) && serve_one(&S, lfd))
            break;
    }
    close(lfd);
    unlink(sock);
    wl_journal_stop();
    server_stop(&S);
    return 0;
}

/* A connected socket to `path`, or -1 with errno. */
static int ctl_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd, e;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return fd;
    e = errno;
    close(fd);
    errno = e;
    return -1;
}

int wl_cmd_ctl(const struct wl_opts *o)
{
    static const char *const dirs[] = WL_SOCKET_DIRS;
    char req[256], buf[65536], where[256];
    size_t len = 0;
    int fd = -1;

    if (o->socket && strlen(o->socket) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, WL_PREFIX "{\"ok\":false,\"error\":\"socket path too long\"}\n");
        return 3;
    }
    if (snprintf(req, sizeof(req), "%s%s%s\n", o->cmd, o->arg ? " " : "", o->arg ? o->arg : "") >=
            (int)sizeof(req) || strpbrk(o->cmd, "\n\r") || (o->arg && strpbrk(o->arg, "\n\r"))) {
        fprintf(stderr, WL_PREFIX "{\"ok\":false,\"error\":\"bad command\"}\n");
        return 2;
    }
    if (o->socket) {
        fd = ctl_connect(o->socket);
        snprintf(where, sizeof(where), "%s: %s", o->socket, strerror(errno));
    } else {
        /* the socket run chose: the first directory where a server answers */
        where[0] = 0;
        for (int i = 0; dirs[i] && fd < 0; i++) {
            char path[128];
            snprintf(path, sizeof(path), "%s/%s", dirs[i], WL_SOCKET_NAME);
            fd = ctl_connect(path);
            snprintf(where + strlen(where), sizeof(where) - strlen(where), "%s%s", i ? ", " : "",
                     path);
        }
        snprintf(where + strlen(where), sizeof(where) - strlen(where), ": no server");
    }
    if (fd < 0) {
        struct sbuf b;
        char msg[512];
        snprintf(msg, sizeof(msg), "cannot connect to %s (is bgsnap-wl run up?)", where);
        sb_init(&b);
        sb_printf(&b, WL_PREFIX "{\"ok\":false,\"cmd\":");
        sb_json_str(&b, o->cmd);
        sb_printf(&b, ",\"error\":");
        sb_json_str(&b, msg);
        sb_printf(&b, "}\n");
        fputs(b.s, stderr);
        sb_free(&b);
        return 3;
    }
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        fprintf(stderr, WL_PREFIX "{\"ok\":false,\"error\":\"cannot send the command\"}\n");
        close(fd);
        return 3;
    }
    while (len < sizeof(buf) - 1) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (memchr(buf, '\n', len))
            break;
    }
    close(fd);
    buf[len] = 0;
    if (len == 0 || !memchr(buf, '\n', len)) {
        fprintf(stderr, WL_PREFIX "{\"ok\":false,\"error\":\"no reply from the server\"}\n");
        return 3;
    }
    fputs(buf, stdout);
    return 0;
}

int wl_cmd_selfcheck(const struct wl_opts *o)
{
    static struct server S;
    struct sbuf b;
    int rc;
    double fill_s, run_s;
    uint64_t steps = 0;

    if (server_init(&S, o) != 0 || server_start(&S) != 0)
        return 2;
    for (;;) { /* wait for the fill */
        struct timespec ts = {0, 1000000};
        int ph;
        pthread_mutex_lock(&S.mu);
        ph = S.phase;
        pthread_mutex_unlock(&S.mu);
        if (ph != WL_PHASE_FILLING)
            break;
        nanosleep(&ts, NULL);
    }
    if (o->seconds > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)o->seconds;
        ts.tv_nsec = (long)((o->seconds - (double)ts.tv_sec) * 1e9);
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    {
        const char *err;
        if (do_freeze(&S, &err) != 0) {
            fprintf(stderr, "bgsnap-wl selfcheck: %s\n", err);
            return 2;
        }
    }
    fill_s = (double)(S.t_fill_end - S.t_fill_start) / 1e9;
    run_s = (double)S.run_ns / 1e9;
    for (unsigned w = 0; w < S.P.writers; w++)
        steps += committed(&S, w);
    sb_init(&b);
    sb_printf(&b, WL_PREFIX "{\"ok\":true,\"cmd\":\"selfcheck\",\"writers\":%u,\"pattern\":\"%s\","
                            "\"fill_seconds\":%.4f,\"fill_mib_per_s\":%.1f,\"run_seconds\":%.3f,"
                            "\"steps_total\":%llu,\"write_mib_per_s\":%.1f,\"latency\":%s,"
                            "\"mlock\":%s,\"window0\":",
              S.P.writers, wl_pattern_name(S.P.pattern), fill_s,
              (double)S.P.npages * WL_PAGE / MIB / (fill_s > 0 ? fill_s : 1e-9), run_s,
              (unsigned long long)steps, run_s > 0 ? (double)steps * WL_PAGE / MIB / run_s : 0.0,
              S.latency ? "true" : "false", S.mlock_errno ? "false" : "true");
    json_window(&S, &b, 0, run_s);
    sb_printf(&b, ",\"verify\":");
    rc = live_verify(&S, &b, "selfcheck-verify");
    sb_printf(&b, "}\n");
    fputs(b.s, stdout);
    sb_free(&b);
    server_stop(&S);
    return rc < 0 ? 2 : rc;
}

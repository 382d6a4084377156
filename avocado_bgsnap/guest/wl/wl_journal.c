/* bgsnap-wl journal (docs/disk.md): a thread appends fixed-size records to
 * a file, each followed by fsync, as an application that must not lose an
 * acknowledged record would.  A record carries the writers' committed steps
 * (their sum) read just before it is built, so a record can never name a
 * step the RAM had not reached when it was written.  What the thread has
 * done is published in a state page of its own: pending_seq before a
 * record's write (from then on it may be on the disk), durable_seq after its
 * fsync returned (from then on it must be). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "wl_journal.h"

static struct {
    pthread_t th;
    int on, fd;
    atomic_int stop;
    char path[256];
    const uint8_t *meta;
    unsigned writers, interval_ms;
    uint64_t nonce;
    _Atomic uint64_t *state; /* the state page */
    char error[400];
    pthread_mutex_t mu;      /* guards error */
} J = {.mu = PTHREAD_MUTEX_INITIALIZER};

static uint64_t js_get(unsigned i)
{
    return WL_LE(atomic_load_explicit(&J.state[i], memory_order_acquire));
}
static void js_set(unsigned i, uint64_t v)
{
    atomic_store_explicit(&J.state[i], WL_LE(v), memory_order_release);
}

static uint64_t steps_now(void)
{
    uint64_t total = 0;
    for (unsigned w = 0; w < J.writers; w++) {
        const _Atomic uint64_t *c =
            (const _Atomic uint64_t *)(J.meta + 8u * WL_M_COMMITTED(w));
        total += WL_LE(atomic_load_explicit(c, memory_order_acquire));
    }
    return total;
}

static void fail(const char *what, int err)
{
    pthread_mutex_lock(&J.mu);
    snprintf(J.error, sizeof(J.error), "%s %s: %s", what, J.path, strerror(err));
    pthread_mutex_unlock(&J.mu);
    js_set(WL_JS_ERRORS, js_get(WL_JS_ERRORS) + 1);
}

static void *journal_main(void *arg)
{
    uint64_t seq = 0, prev_fsync_ns = 0;
    (void)arg;
    while (!atomic_load(&J.stop)) {
        uint64_t rec[8], t0, took;
        uint8_t buf[WL_JREC_BYTES];
        seq++;
        rec[WL_JR_MAGIC] = WL_MAGIC_JREC;
        rec[WL_JR_NONCE] = J.nonce;
        rec[WL_JR_SEQ] = seq;
        rec[WL_JR_STEP] = steps_now();
        rec[WL_JR_TIME_NS] = wl_now_ns();
        rec[WL_JR_PREV_FSYNC_NS] = prev_fsync_ns;
        rec[WL_JR_RESERVED] = 0;
        rec[WL_JR_CHECK] = wl_jrec_check(rec);
        for (unsigned i = 0; i < 8; i++)
            wl_st(buf, i, rec[i]);
        js_set(WL_JS_PENDING_SEQ, seq);
        if (pwrite(J.fd, buf, sizeof(buf), (off_t)((seq - 1) * WL_JREC_BYTES)) !=
            (ssize_t)sizeof(buf)) {
            fail("write", errno ? errno : EIO);
            break;
        }
        t0 = wl_now_ns();
        if (fsync(J.fd) != 0) {
            fail("fsync", errno);
            break;
        }
        took = wl_now_ns() - t0;
        prev_fsync_ns = took;
        if (took > js_get(WL_JS_FSYNC_MAX_NS))
            js_set(WL_JS_FSYNC_MAX_NS, took);
        js_set(WL_JS_FSYNC_TOTAL_NS, js_get(WL_JS_FSYNC_TOTAL_NS) + took);
        js_set(WL_JS_DURABLE_STEP, rec[WL_JR_STEP]);
        js_set(WL_JS_DURABLE_SEQ, seq);
        if (J.interval_ms) {
            struct timespec ts = {J.interval_ms / 1000, (long)(J.interval_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* the directory entry of a new file is durable only once its directory is */
static int fsync_parent(const char *path)
{
    char copy[256];
    int fd, rc;
    snprintf(copy, sizeof(copy), "%s", path);
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

int wl_journal_start(const char *path, unsigned interval_ms, uint64_t nonce,
                     const uint8_t *meta, unsigned writers)
{
    void *page;
    if (strlen(path) >= sizeof(J.path)) {
        fprintf(stderr, "bgsnap-wl: --journal path too long: %s\n", path);
        return -1;
    }
    snprintf(J.path, sizeof(J.path), "%s", path);
    page = mmap(NULL, WL_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        fprintf(stderr, "bgsnap-wl: journal state page: %s\n", strerror(errno));
        return -1;
    }
    mlock(page, WL_PAGE); /* best effort, as the region */
    J.state = page;
    js_set(WL_JS_NONCE, nonce);
    js_set(WL_JS_CHECK, wl_jstate_check(nonce));
    js_set(WL_JS_RECORD_BYTES, WL_JREC_BYTES);
    js_set(WL_JS_INTERVAL_MS, interval_ms);
    js_set(WL_JS_MAGIC, WL_MAGIC_JSTATE);
    J.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (J.fd < 0 || fsync(J.fd) != 0 || fsync_parent(path) != 0) {
        fprintf(stderr, "bgsnap-wl: --journal %s: %s\n", path, strerror(errno));
        if (J.fd >= 0)
            close(J.fd);
        munmap(page, WL_PAGE);
        return -1;
    }
    J.meta = meta;
    J.writers = writers;
    J.nonce = nonce;
    J.interval_ms = interval_ms;
    atomic_store(&J.stop, 0);
    if (pthread_create(&J.th, NULL, journal_main, NULL) != 0) {
        fprintf(stderr, "bgsnap-wl: cannot start the journal thread\n");
        close(J.fd);
        munmap(page, WL_PAGE);
        return -1;
    }
    J.on = 1;
    return 0;
}

void wl_journal_stop(void)
{
    if (!J.on)
        return;
    atomic_store(&J.stop, 1);
    pthread_join(J.th, NULL);
    close(J.fd);
    munmap((void *)J.state, WL_PAGE);
    J.on = 0;
}

void wl_journal_json(struct sbuf *b)
{
    uint64_t durable, total;
    if (!J.on) {
        sb_printf(b, "\"journal\":null,");
        return;
    }
    durable = js_get(WL_JS_DURABLE_SEQ);
    total = js_get(WL_JS_FSYNC_TOTAL_NS);
    sb_printf(b, "\"journal\":{\"path\":");
    sb_json_str(b, J.path);
    sb_printf(b, ",\"interval_ms\":%u,\"record_bytes\":%u,\"pending_seq\":%llu,"
                 "\"durable_seq\":%llu,\"durable_step\":%llu,\"fsync_max_ms\":%.3f,"
                 "\"fsync_mean_ms\":%.3f,\"errors\":%llu,\"error\":",
              J.interval_ms, WL_JREC_BYTES, (unsigned long long)js_get(WL_JS_PENDING_SEQ),
              (unsigned long long)durable, (unsigned long long)js_get(WL_JS_DURABLE_STEP),
              (double)js_get(WL_JS_FSYNC_MAX_NS) / 1e6,
              durable ? (double)total / 1e6 / (double)durable : 0.0,
              (unsigned long long)js_get(WL_JS_ERRORS));
    pthread_mutex_lock(&J.mu);
    if (J.error[0])
        sb_json_str(b, J.error);
    else
        sb_printf(b, "null");
    pthread_mutex_unlock(&J.mu);
    sb_printf(b, "},");
}

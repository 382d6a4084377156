/* The memory under test: the six types, the writer threads, the verdict. */
#define _GNU_SOURCE
#include "uc.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

const char *const mem_type_names[MT_COUNT] = {
    "anon", "anon-thp", "shmem", "shmem-private", "hugetlb", "hugetlb-private",
};

uint64_t type_features(enum mem_type mt)
{
    return UC_FEATURE_WP | (mt_is_file(mt) ? UC_FEATURE_WP_HUGETLBFS_SHMEM : 0);
}

bool type_supported(enum mem_type mt, char *why, size_t whylen)
{
    char mode[32];
    if (mt == MT_ANON_THP) {
        if (sysfs_choice("/sys/kernel/mm/transparent_hugepage/enabled", mode, sizeof mode)) {
            snprintf(why, whylen, "no transparent hugepages on this kernel");
            return false;
        }
        if (!strcmp(mode, "never")) {
            snprintf(why, whylen, "transparent hugepages disabled (enabled=[never])");
            return false;
        }
    }
    if (mt_is_file(mt) && !(g_features & UC_FEATURE_WP_HUGETLBFS_SHMEM)) {
        snprintf(why, whylen, "kernel lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM (bit 12): no "
                 "write-protect on shmem/hugetlbfs");
        return false;
    }
    if (mt_is_hugetlb(mt) && g_opts.hugetlb_skip) {
        snprintf(why, whylen, "%s", g_opts.hugetlb_skip);
        return false;
    }
    return true;
}

static char *map_or_null(size_t len, int prot, int flags, int fd)
{
    void *p = mmap(NULL, len, prot, flags, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int region_alloc(struct region *r, enum mem_type mt, size_t len, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->mt = mt;
    r->memfd = -1;
    r->len = len;
    r->unit = mt_is_hugetlb(mt) ? HPAGE : CELL;
    r->ncells = len / CELL;
    r->nunits = len / r->unit;
    const int rw = PROT_READ | PROT_WRITE;
    char *base = NULL;
    if (mt == MT_ANON) {
        base = map_or_null(len, rw, MAP_PRIVATE | MAP_ANONYMOUS, -1);
        if (base)
            madvise(base, len, MADV_NOHUGEPAGE);  /* 4 KiB pages whatever the THP mode */
    } else if (mt == MT_ANON_THP) {
        char *raw = map_or_null(len + HPAGE, rw, MAP_PRIVATE | MAP_ANONYMOUS, -1);
        if (raw) {
            base = (char *)(((uintptr_t)raw + HPAGE - 1) & ~(uintptr_t)(HPAGE - 1));
            if (base > raw)
                munmap(raw, (size_t)(base - raw));
            munmap(base + len, (size_t)(raw + HPAGE - base));
            if (madvise(base, len, MADV_HUGEPAGE)) {
                snprintf(err, errlen, "madvise(MADV_HUGEPAGE): %s", strerror(errno));
                munmap(base, len);
                return -1;
            }
        }
    } else {
        unsigned flags = MFD_CLOEXEC | (mt_is_hugetlb(mt) ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
        r->memfd = memfd_create("bgsnap-uffd-check", flags);
        if (r->memfd < 0) {
            snprintf(err, errlen, "memfd_create(%s): %s",
                     mt_is_hugetlb(mt) ? "MFD_HUGETLB" : "0", strerror(errno));
            return -1;
        }
        if (ftruncate(r->memfd, (off_t)len)) {
            snprintf(err, errlen, "ftruncate(memfd): %s", strerror(errno));
            close(r->memfd);
            return -1;
        }
        if (mt_is_private_file(mt)) {
            r->file_view = map_or_null(len, rw, MAP_SHARED, r->memfd);
            base = r->file_view ? map_or_null(len, rw, MAP_PRIVATE, r->memfd) : NULL;
        } else {
            base = map_or_null(len, rw, MAP_SHARED, r->memfd);
        }
    }
    if (!base) {
        int e = errno;
        if (mt_is_hugetlb(mt) && e == ENOMEM)
            snprintf(err, errlen, "no free 2048 kB hugepages for %zu MiB (mmap: %s; "
                     "free_hugepages %ld)", len >> 20, strerror(e), meminfo_kib("HugePages_Free"));
        else
            snprintf(err, errlen, "mmap(%s, %zu MiB): %s", mem_type_names[mt], len >> 20,
                     strerror(e));
        if (r->file_view)
            munmap(r->file_view, len);
        if (r->memfd >= 0)
            close(r->memfd);
        return -1;
    }
    atomic_store(&r->base, (uintptr_t)base);
    r->copy = map_or_null(len, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1);
    r->state = calloc(r->nunits, 1);
    r->lat_ns = calloc(r->nunits, sizeof *r->lat_ns);
    if (!r->copy || !r->state || !r->lat_ns) {
        snprintf(err, errlen, "out of memory for the side buffer");
        region_free(r);
        return -1;
    }
    return 0;
}

void write_cell(char *p, unsigned tag, size_t cell, uint32_t gen)
{
    uint64_t *w = (uint64_t *)p, v = stamp(tag, cell, gen);
    for (size_t i = 0; i < WORDS_PER_CELL; i++)
        w[i] = v;
}

/* The old content: pre stamps everywhere.  A private file mapping has half
 * its units as CoW copies (written through it) and half still the page-cache
 * pages (read-mapped), so both kinds are protected. */
void region_fill(struct region *r)
{
    char *base = (char *)atomic_load(&r->base);
    size_t per_unit = r->unit / CELL;
    if (r->file_view) {
        for (size_t c = 0; c < r->ncells; c++)
            write_cell(r->file_view + c * CELL, TAG_PRE, c, 0);
        for (size_t c = 0; c < r->ncells; c++) {
            if ((c / per_unit) % 2)
                (void)*(volatile uint64_t *)(base + c * CELL);
            else
                write_cell(base + c * CELL, TAG_PRE, c, 1);
        }
        return;
    }
    for (size_t c = 0; c < r->ncells; c++)
        write_cell(base + c * CELL, TAG_PRE, c, 0);
}

void region_free(struct region *r)
{
    uintptr_t base = atomic_load(&r->base);
    if (base)
        munmap((void *)base, r->len);
    if (r->file_view)
        munmap(r->file_view, r->len);
    if (r->memfd >= 0)
        close(r->memfd);
    if (r->copy)
        munmap(r->copy, r->len);
    free((void *)r->state);
    free(r->lat_ns);
    memset(r, 0, sizeof *r);
    r->memfd = -1;
}

/* -- writers ------------------------------------------------------------ */
struct writers_ctl {
    _Atomic int protected_, first_pass_done;
};

struct writer {
    pthread_t thread;
    struct region *r;
    struct writers_ctl *ctl;
    size_t first_unit, end_unit;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct region *r = w->r;
    char *base = (char *)atomic_load(&r->base);
    size_t per_unit = r->unit / CELL;
    size_t c0 = w->first_unit * per_unit, c1 = w->end_unit * per_unit;
    bool counted = false;
    for (uint32_t gen = 1; !atomic_load(&w->ctl->protected_); gen++) {
        for (size_t c = c0; c < c1; c++) {
            if (atomic_load_explicit(&w->ctl->protected_, memory_order_acquire))
                goto post;
            write_cell(base + c * CELL, TAG_PRE, c, gen);
        }
        if (!counted) {
            atomic_fetch_add(&w->ctl->first_pass_done, 1);
            counted = true;
        }
    }
post:
    for (size_t c = c0; c < c1; c++) {
        volatile uint64_t *p = (volatile uint64_t *)(base + c * CELL);
        /* a unit a pre-protect write already got copied does not fault again */
        if (c % per_unit == 0 && atomic_load(&r->state[c / per_unit]) == 0) {
            uint64_t t0 = now_ns();
            p[0] = stamp(TAG_POST, c, 0);  /* faults if the unit is protected */
            uint64_t dt = now_ns() - t0;
            r->lat_ns[c / per_unit] = dt > UINT32_MAX ? UINT32_MAX : (dt ? (uint32_t)dt : 1);
        }
        write_cell(base + c * CELL, TAG_POST, c, 0);
    }
    return NULL;
}

int run_writers(struct region *r, int nwriters, protect_fn protect, void *ctx,
                char *err, size_t errlen)
{
    struct writers_ctl ctl = {.protected_ = protect == NULL};
    struct writer w[16];
    if (nwriters < 1)
        nwriters = 1;
    if (nwriters > 16)
        nwriters = 16;
    if ((size_t)nwriters > r->nunits)
        nwriters = (int)r->nunits;
    int started = 0, rc = 0;
    for (int i = 0; i < nwriters; i++) {
        w[i] = (struct writer){.r = r, .ctl = &ctl,
                               .first_unit = r->nunits * (size_t)i / (size_t)nwriters,
                               .end_unit = r->nunits * (size_t)(i + 1) / (size_t)nwriters};
        if ((rc = pthread_create(&w[i].thread, NULL, writer_main, &w[i]))) {
            snprintf(err, errlen, "pthread_create: %s", strerror(rc));
            atomic_store(&ctl.protected_, 1);
            break;
        }
        started++;
    }
    if (!rc && protect) {
        while (atomic_load(&ctl.first_pass_done) < started)
            sched_yield();
        rc = protect(ctx);
        if (rc)
            snprintf(err, errlen, "UFFDIO_WRITEPROTECT while writing: %s", strerror(-rc));
        atomic_store_explicit(&ctl.protected_, 1, memory_order_release);
    }
    for (int i = 0; i < started; i++)
        pthread_join(w[i].thread, NULL);
    return rc ? -1 : 0;
}

/* -- verdict ------------------------------------------------------------ */
enum { BAD_NONE, BAD_ZERO, BAD_POST, BAD_CHILD, BAD_OTHER };

static int check_old(const char *p, size_t cell, bool old_is_zero, size_t group)
{
    const uint64_t *w = (const uint64_t *)p;
    if (group > 1)
        cell -= cell % group;
    for (size_t i = 0; i < WORDS_PER_CELL; i++) {
        uint64_t v = w[i];
        unsigned tag = (unsigned)(v >> 56);
        if (old_is_zero ? v == 0 : (tag == TAG_PRE && ((v >> 24) & 0xffffffffu) == cell))
            continue;
        return v == 0 ? BAD_ZERO : tag == TAG_POST ? BAD_POST : tag == TAG_CHILD ? BAD_CHILD
                                                                                  : BAD_OTHER;
    }
    return BAD_NONE;
}

static bool check_new(const char *p, size_t cell)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t want = stamp(TAG_POST, cell, 0);
    for (size_t i = 0; i < WORDS_PER_CELL; i++)
        if (w[i] != want)
            return false;
    return true;
}

void verify_region(struct region *r, const struct verify_opts *vo, struct result *res)
{
    const char *base = (const char *)atomic_load(&r->base);
    size_t per_unit = r->unit / CELL, missing = 0, bad[5] = {0}, mem_bad = 0;
    size_t first_missing = NO_CELL, first_bad = NO_CELL, first_mem_bad = NO_CELL;
    for (size_t u = 0; u < r->nunits; u++) {
        bool skip_unit = vo->skip_cell != NO_CELL && vo->skip_cell / per_unit == u;
        bool copied = atomic_load(&r->state[u]) == 2;
        if (!copied && !skip_unit && !vo->copies_optional) {
            missing++;
            if (first_missing == NO_CELL)
                first_missing = u;
        }
        for (size_t c = u * per_unit; c < (u + 1) * per_unit; c++) {
            if (c == vo->skip_cell)
                continue;
            if (copied) {
                int k = check_old(r->copy + c * CELL, c, vo->old_is_zero, vo->old_group);
                bad[k]++;
                if (k != BAD_NONE && first_bad == NO_CELL)
                    first_bad = c;
            }
            if (!check_new(base + c * CELL, c)) {
                mem_bad++;
                if (first_mem_bad == NO_CELL)
                    first_mem_bad = c;
            }
        }
    }
    if (missing)
        res_fail(res, "%zu of %zu pages were written after protection without a fault (no "
                 "copy of their old content; first at +0x%zx)", missing, r->nunits,
                 first_missing * r->unit);
    if (bad[BAD_POST])
        res_fail(res, "%zu copied 4 KiB cells hold data written after protection (first at "
                 "+0x%zx)", bad[BAD_POST], first_bad * CELL);
    if (bad[BAD_CHILD])
        res_fail(res, "%zu copied cells hold the fork child's data: the child's writes reached "
                 "the parent's memory (first at +0x%zx)", bad[BAD_CHILD], first_bad * CELL);
    if (bad[BAD_ZERO] || bad[BAD_OTHER])
        res_fail(res, "%zu copied cells hold neither the old content nor a known write (%zu "
                 "zero; first at +0x%zx)", bad[BAD_ZERO] + bad[BAD_OTHER], bad[BAD_ZERO],
                 first_bad * CELL);
    if (mem_bad)
        res_fail(res, "%zu cells of memory do not hold the new content after the writes (first "
                 "at +0x%zx)", mem_bad, first_mem_bad * CELL);
    fig_num(res, "pages", (double)r->nunits);
    fig_num(res, "page_bytes", (double)r->unit);
    fig_num(res, "pages_without_fault", (double)missing);
    fig_num(res, "copies_bad", (double)(bad[BAD_POST] + bad[BAD_CHILD] + bad[BAD_ZERO] +
                                        bad[BAD_OTHER]));
    fig_num(res, "memory_cells_bad", (double)mem_bad);
}

/* Private file mappings: nothing written through them may reach the file. */
void verify_file_view(struct region *r, struct result *res)
{
    if (!r->file_view)
        return;
    size_t bad = 0;
    for (size_t c = 0; c < r->ncells; c++)
        if (check_old(r->file_view + c * CELL, c, false, 1) != BAD_NONE)
            bad++;
    if (bad)
        res_fail(res, "%zu cells of the memfd changed through its MAP_PRIVATE mapping", bad);
    fig_num(res, "file_cells_changed", (double)bad);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The first post-protect store of each page: write -> fault -> handler copies
 * and un-protects -> the store returns. */
void latency_figures(struct region *r, struct result *res, const char *prefix)
{
    uint32_t *v = malloc(r->nunits * sizeof *v);
    size_t n = 0;
    if (!v)
        return;
    for (size_t u = 0; u < r->nunits; u++)
        if (r->lat_ns[u] && atomic_load(&r->state[u]) == 2)
            v[n++] = r->lat_ns[u];
    char key[40];
    snprintf(key, sizeof key, "%s_n", prefix);
    fig_num(res, key, (double)n);
    if (n) {
        qsort(v, n, sizeof *v, cmp_u32);
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += v[i];
        struct { const char *name; double value; } q[] = {
            {"p50_us", v[(n - 1) / 2] / 1e3}, {"p99_us", v[(n - 1) * 99 / 100] / 1e3},
            {"max_us", v[n - 1] / 1e3}, {"mean_us", sum / (double)n / 1e3}};
        for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
            snprintf(key, sizeof key, "%s_%s", prefix, q[i].name);
            fig_num(res, key, (double)(long)(q[i].value * 100 + 0.5) / 100);
        }
    }
    free(v);
}

void handler_figures(struct handler *h, struct result *res)
{
    fig_num(res, "wp_faults", (double)atomic_load(&h->wp_faults));
    fig_num(res, "copies", (double)atomic_load(&h->copies));
    fig_num(res, "repeat_faults", (double)atomic_load(&h->dup_faults));
    if (atomic_load(&h->stray_faults))
        fig_num(res, "stray_faults", (double)atomic_load(&h->stray_faults));
    if (atomic_load(&h->missing_faults))
        res_fail(res, "%llu MISSING faults on a range registered for WP only",
                 (unsigned long long)atomic_load(&h->missing_faults));
    if (atomic_load(&h->errors))
        res_fail(res, "%llu handler errors (last: %s)", (unsigned long long)atomic_load(&h->errors),
                 strerror(atomic_load(&h->last_errno)));
}

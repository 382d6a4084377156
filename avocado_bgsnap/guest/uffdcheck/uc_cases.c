/* The cases: QEMU's flow on each memory type, and where kernels broke. */
#define _GNU_SOURCE
#include "uc.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

struct setup {
    struct region r;
    struct uffd u;
    struct handler h;
    bool have_region, have_uffd, have_handler;
    char err[512];
};

static size_t case_bytes(enum mem_type mt)
{
    return (mt_is_hugetlb(mt) ? g_opts.hugetlb_mib : g_opts.mib) << 20;
}

static uintptr_t base_of(struct setup *s) { return atomic_load(&s->r.base); }

/* Memory of the type (filled unless `fill` is false), a uffd with the
 * type's features plus `extra`, the range registered for WP, the handler
 * running.  Returns false with the result set. */
static bool setup(struct setup *s, struct result *res, enum mem_type mt, size_t len,
                  uint64_t extra, bool fill)
{
    memset(s, 0, sizeof *s);
    s->u.fd = -1;
    set_step("allocate");
    if (region_alloc(&s->r, mt, len, s->err, sizeof s->err)) {
        res_unsupported(res, "%s", s->err);
        return false;
    }
    s->have_region = true;
    if (fill) {
        set_step("fill");
        region_fill(&s->r);
    }
    set_step("open userfaultfd");
    int opened = uffd_open(&s->u, type_features(mt) | extra, s->err, sizeof s->err);
    if (opened == UFFD_OPEN_NOT_PERMITTED) {
        res_unsupported(res, "%s: not permitted to this process (UFFD_FEATURE_EVENT_FORK "
                        "needs CAP_SYS_PTRACE)", s->err);
        return false;
    }
    if (opened) {
        res_fail(res, "%s", s->err);
        return false;
    }
    s->have_uffd = true;
    set_step("register");
    if (uffd_register_wp(&s->u, base_of(s), len, s->err, sizeof s->err)) {
        res_fail(res, "%s", s->err);
        return false;
    }
    int rc = handler_start(&s->h, &s->u, &s->r);
    if (rc) {
        res_fail(res, "handler thread: %s", strerror(-rc));
        return false;
    }
    s->have_handler = true;
    return true;
}

static void stop_handler(struct setup *s)
{
    if (s->have_handler)
        handler_stop(&s->h);
    s->have_handler = false;
}

static void teardown(struct setup *s)
{
    stop_handler(s);
    if (s->have_uffd)
        uffd_close(&s->u);
    if (s->have_region)
        region_free(&s->r);
    set_step("-");
}

/* UFFDIO_WRITEPROTECT over the whole range (skipped by --no-protect). */
static int protect_all(void *ctx)
{
    struct setup *s = ctx;
    if (g_opts.no_protect)
        return 0;
    set_step("write-protect");
    return uffd_wp(s->u.fd, base_of(s), s->r.len, true);
}

static bool protect_or_fail(struct setup *s, struct result *res)
{
    int rc = protect_all(s);
    if (rc)
        res_fail(res, "UFFDIO_WRITEPROTECT: %s", strerror(-rc));
    return rc == 0;
}

static bool write_all(struct setup *s, struct result *res, int writers, bool race)
{
    set_step("write");
    if (run_writers(&s->r, writers, race ? protect_all : NULL, s, s->err, sizeof s->err)) {
        res_fail(res, "%s", s->err);
        return false;
    }
    return true;
}

/* The usual end of a case: the writers write every page, the handler stops,
 * the region is verified against ``vo`` (NULL: the case checks it itself),
 * its file view too when ``file_view``, and the fault figures are recorded.
 * False when the writers could not run (the result says why). */
static bool write_and_check(struct setup *s, struct result *res, int writers, bool race,
                            const struct verify_opts *vo, bool file_view)
{
    if (!write_all(s, res, writers, race))
        return false;
    stop_handler(s);
    if (vo)
        verify_region(&s->r, vo, res);
    if (file_view)
        verify_file_view(&s->r, res);
    handler_figures(&s->h, res);
    latency_figures(&s->r, res, "fault");
    return true;
}

static void pagemap_figures(struct setup *s, struct result *res, const char *when,
                            struct pmstat *out)
{
    struct pmstat pm;
    char key[40];
    if (pagemap_stat(base_of(s), s->r.len, &pm))
        return;
    snprintf(key, sizeof key, "ptes_present_%s", when);
    fig_num(res, key, (double)pm.present);
    snprintf(key, sizeof key, "ptes_uffd_wp_%s", when);
    fig_num(res, key, (double)pm.uffd_wp);
    if (out)
        *out = pm;
}

static long thp_kib(struct setup *s)
{
    struct smapstat sm;
    return smaps_stat(base_of(s), s->r.len, &sm) ? -1 : sm.anon_huge_kib;
}

/* wp-basic / fault-latency: register, protect while (or before) other
 * threads write, copy the old content of each faulting page, un-protect. */
static void case_basic(struct result *res, enum mem_type mt, const struct case_def *def)
{
    bool latency = def->flag == 1;
    struct setup s;
    if (!setup(&s, res, mt, case_bytes(mt), 0, true))
        goto out;
    if (mt == MT_ANON_THP) {
        long kib = thp_kib(&s);
        fig_num(res, "thp_kib", (double)kib);
        if (kib <= 0)
            res_note(res, "no THP obtained (AnonHugePages 0 kB): ran on 4 KiB pages");
        else
            res_note(res, "THPs used: AnonHugePages %ld kB of %zu", kib, s.r.len >> 10);
    }
    /* Private file mappings: the read-mapped page-cache pages must stay
     * unwritten until protected, so protect before the writers start. */
    bool race = !latency && !mt_is_private_file(mt);
    if (!race) {
        if (!protect_or_fail(&s, res))
            goto out;
        pagemap_figures(&s, res, "protected", NULL);
        res_note(res, latency ? "protected, then 1 writer timed each page's first write"
                              : "protected before the writers started: half the pages CoW "
                                "copies, half read-mapped page-cache pages");
    } else {
        res_note(res, "protected while %d writers were writing", g_opts.writers);
    }
    if (!write_and_check(&s, res, latency ? 1 : g_opts.writers, race,
                         &(struct verify_opts){.skip_cell = NO_CELL}, true))
        goto out;
out:
    teardown(&s);
}

static bool private_type(enum mem_type mt)
{
    return mt == MT_ANON || mt == MT_ANON_THP || mt_is_private_file(mt);
}

/* The child: private memory is its own copy to write; shared memory is the
 * parent's, read only. */
static void fork_child(uintptr_t base, size_t ncells, bool write)
{
    for (size_t c = 0; c < ncells; c++) {
        char *p = (char *)base + c * CELL;
        if (write)
            write_cell(p, TAG_CHILD, c, 0);
        else if ((*(volatile uint64_t *)p >> 56) != TAG_PRE)
            _exit(3);
    }
    if (write)
        for (size_t c = 0; c < ncells; c++)
            if (*(volatile uint64_t *)((char *)base + c * CELL) != stamp(TAG_CHILD, c, 0))
                _exit(2);
    _exit(0);
}

/* wp-fork / wp-fork-event (8f34f1eac382, 49d6d7fb6313, 5a2f8d22ace4). */
static void case_fork(struct result *res, enum mem_type mt, const struct case_def *def)
{
    bool with_event = def->flag;
    bool child_writes = private_type(mt);
    struct setup s;
    if (!setup(&s, res, mt, case_bytes(mt), with_event ? UC_FEATURE_EVENT_FORK : 0, true))
        goto out;
    if (!protect_or_fail(&s, res))
        goto out;
    struct pmstat before = {0}, after = {0};
    pagemap_figures(&s, res, "before_fork", &before);
    set_step("fork");
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        res_fail(res, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0)
        fork_child(base_of(&s), s.r.ncells, child_writes);
    set_child(pid);
    set_step(child_writes ? "wait for the child writing its copy" : "wait for the child");
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    set_child(0);
    if (WIFSIGNALED(status))
        res_fail(res, "the child was killed by signal %d (%s) %s the protected memory it "
                 "inherited", WTERMSIG(status), strsignal(WTERMSIG(status)),
                 child_writes ? "writing" : "reading");
    else if (WEXITSTATUS(status) == 2)
        res_fail(res, "the child's writes to its copy did not read back");
    else if (WEXITSTATUS(status) == 3)
        res_fail(res, "the child read memory that is not the parent's old content");
    else if (WEXITSTATUS(status))
        res_fail(res, "the child exited with %d", WEXITSTATUS(status));
    fig_text(res, "child", child_writes ? "wrote all its pages" : "read all pages (shared "
             "memory: its writes would be the parent's)");
    pagemap_figures(&s, res, "after_child", &after);
    if (after.uffd_wp < before.uffd_wp)
        res_note(res, "parent's uffd-wp PTE bits %zu -> %zu over the fork", before.uffd_wp,
                 after.uffd_wp);
    if (!write_and_check(&s, res, g_opts.writers, false,
                         &(struct verify_opts){.skip_cell = NO_CELL}, true))
        goto out;
    uint64_t events = atomic_load(&s.h.fork_events), child_faults = atomic_load(&s.h.child_faults);
    fig_num(res, "fork_events", (double)events);
    fig_num(res, "child_faults", (double)child_faults);
    if (with_event && events != 1)
        res_fail(res, "%llu UFFD_EVENT_FORK messages for one fork", (unsigned long long)events);
    if (!with_event && events)
        res_fail(res, "UFFD_EVENT_FORK without UFFD_FEATURE_EVENT_FORK");
    if (with_event && child_writes && child_faults < s.r.nunits)
        res_fail(res, "only %llu of the child's %zu page writes faulted on its uffd although "
                 "EVENT_FORK keeps the child's copy protected", (unsigned long long)child_faults,
                 s.r.nunits);
    if (!with_event && child_faults)
        res_fail(res, "the child faulted without EVENT_FORK");
    res_note(res, with_event ? "child registered (EVENT_FORK): its writes faulted on its own uffd"
                             : "child not registered (no EVENT_FORK): its writes go through");
out:
    teardown(&s);
}

/* wp-pageout: protected pages reclaimed with MADV_PAGEOUT and faulted back
 * ("Uffd-wp should persist even swapped out", uffd-unit-tests wp-fork). */
static void case_pageout(struct result *res, enum mem_type mt, const struct case_def *def)
{
    (void)def;
    struct setup s;
    if (!setup(&s, res, mt, case_bytes(mt), 0, true))
        goto out;
    if (!protect_or_fail(&s, res))
        goto out;
    struct pmstat b, a;
    struct smapstat sb, sa;
    pagemap_stat(base_of(&s), s.r.len, &b);
    smaps_stat(base_of(&s), s.r.len, &sb);
    long res_b = mincore_resident(base_of(&s), s.r.len);
    set_step("MADV_PAGEOUT");
    int rc = madvise((void *)base_of(&s), s.r.len, MADV_PAGEOUT);
    int e = errno;
    pagemap_stat(base_of(&s), s.r.len, &a);
    smaps_stat(base_of(&s), s.r.len, &sa);
    long res_a = mincore_resident(base_of(&s), s.r.len);
    long swap = meminfo_kib("SwapTotal");
    if (rc) {
        res_fail(res, "madvise(MADV_PAGEOUT): %s", strerror(e));
        goto out;
    }
    fig_num(res, "swap_total_kib", (double)swap);
    fig_num(res, "ptes_present_before", (double)b.present);
    fig_num(res, "ptes_present_after", (double)a.present);
    fig_num(res, "ptes_swap_or_marker_after", (double)a.swapped);
    fig_num(res, "ptes_uffd_wp_before", (double)b.uffd_wp);
    fig_num(res, "ptes_uffd_wp_after", (double)a.uffd_wp);
    fig_num(res, "resident_before", (double)res_b);
    fig_num(res, "resident_after", (double)res_a);
    fig_num(res, "rss_kib_before", (double)sb.rss_kib);
    fig_num(res, "rss_kib_after", (double)sa.rss_kib);
    res_note(res, "%sMADV_PAGEOUT measured: PTEs present %zu -> %zu (swap entries or uffd-wp "
             "markers %zu), resident (mincore) "
             "%ld -> %ld, uffd-wp PTEs/markers %zu -> %zu of %zu",
             swap == 0 ? "no swap: MADV_PAGEOUT only drops clean file/shmem pages, anon "
             "pages stay. " : "", b.present, a.present,
             a.swapped, res_b, res_a, b.uffd_wp, a.uffd_wp, s.r.ncells);
    if (!g_opts.no_protect && a.uffd_wp < b.uffd_wp)
        res_fail(res, "%zu uffd-wp bits lost by MADV_PAGEOUT", b.uffd_wp - a.uffd_wp);
    if (!write_and_check(&s, res, g_opts.writers, false,
                         &(struct verify_opts){.skip_cell = NO_CELL}, true))
        goto out;
out:
    teardown(&s);
}

/* wp-unpopulated: protect memory never touched; writes to it must fault
 * (anon: UFFD_FEATURE_WP_UNPOPULATED; shmem: pte markers). */
static void case_unpopulated(struct result *res, enum mem_type mt, const struct case_def *def)
{
    struct setup s;
    if (!setup(&s, res, mt, case_bytes(mt), def->needs, false))
        goto out;
    if (!protect_or_fail(&s, res))
        goto out;
    pagemap_figures(&s, res, "protected", NULL);
    if (!write_and_check(&s, res, g_opts.writers, false,
                         &(struct verify_opts){.old_is_zero = true, .skip_cell = NO_CELL},
                         false))
        goto out;
    res_note(res, "never-populated pages protected%s; every copy must be zeros",
             def->needs ? " with UFFD_FEATURE_WP_UNPOPULATED" : "");
out:
    teardown(&s);
}

/* wp-thp-split: THPs protected, then split by mprotect of a 4 KiB subrange
 * (THP 0) and MADV_DONTNEED of one subpage (THP 1); writes everywhere. */
static void case_thp_split(struct result *res, enum mem_type mt, const struct case_def *def)
{
    (void)def;
    size_t len = case_bytes(mt) < 4 * HPAGE ? 4 * HPAGE : case_bytes(mt);
    struct setup s;
    if (!setup(&s, res, mt, len, 0, true))
        goto out;
    long before = thp_kib(&s);
    if (before <= 0) {
        madvise((void *)base_of(&s), len, MADV_COLLAPSE);
        before = thp_kib(&s);
    }
    fig_num(res, "thp_kib_before", (double)before);
    if (before < (long)(2 * HPAGE >> 10)) {
        char mode[32] = "?", defrag[32] = "?";
        sysfs_choice("/sys/kernel/mm/transparent_hugepage/enabled", mode, sizeof mode);
        sysfs_choice("/sys/kernel/mm/transparent_hugepage/defrag", defrag, sizeof defrag);
        res_unsupported(res, "no THP to split: AnonHugePages %ld kB after MADV_HUGEPAGE and "
                        "MADV_COLLAPSE (enabled=%s, defrag=%s)", before, mode, defrag);
        goto out;
    }
    if (!protect_or_fail(&s, res))
        goto out;
    pagemap_figures(&s, res, "protected", NULL);
    set_step("split THPs");
    char *base = (char *)base_of(&s);
    if (mprotect(base + 3 * CELL, CELL, PROT_READ) ||
        mprotect(base + 3 * CELL, CELL, PROT_READ | PROT_WRITE)) {
        res_fail(res, "mprotect of a 4 KiB subrange: %s", strerror(errno));
        goto out;
    }
    size_t zapped = HPAGE / CELL + 5;
    if (madvise(base + zapped * CELL, CELL, MADV_DONTNEED)) {
        res_fail(res, "MADV_DONTNEED of a subpage: %s", strerror(errno));
        goto out;
    }
    long after = thp_kib(&s);
    fig_num(res, "thp_kib_after_split", (double)after);
    pagemap_figures(&s, res, "after_split", NULL);
    if (!write_and_check(&s, res, g_opts.writers, false,
                         &(struct verify_opts){.skip_cell = zapped}, false))
        goto out;
    bool zapped_faulted = atomic_load(&s.r.state[zapped]) == 2;
    fig_bool(res, "dropped_subpage_faulted", zapped_faulted);
    const uint64_t *zp = (const uint64_t *)(base + zapped * CELL);
    if (zp[0] != stamp(TAG_POST, zapped, 0))
        res_fail(res, "the write to the MADV_DONTNEED subpage did not land");
    res_note(res, "AnonHugePages %ld -> %ld kB after mprotect(4 KiB) of THP 0 and "
             "MADV_DONTNEED(4 KiB) of THP 1; the dropped subpage (zeros now, not checked) %s",
             before, after, zapped_faulted ? "faulted" : "did not fault");
out:
    teardown(&s);
}

/* wp-mremap / wp-mremap-event: move a protected range (0cef0bb836e3,
 * CVE-2025-21696: the uffd-wp state is cleared unless EVENT_REMAP). */
static void case_mremap(struct result *res, enum mem_type mt, const struct case_def *def)
{
    bool with_event = def->flag;
    struct setup s;
    char *raw = NULL;
    size_t len = case_bytes(mt);
    if (!setup(&s, res, mt, len, with_event ? UC_FEATURE_EVENT_REMAP : 0, true))
        goto out;
    if (!protect_or_fail(&s, res))
        goto out;
    struct pmstat b, a;
    struct smapstat sb, sa;
    pagemap_stat(base_of(&s), len, &b);
    smaps_stat(base_of(&s), len, &sb);
    set_step("mremap");
    raw = mmap(NULL, len + HPAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
        raw = NULL;
        res_fail(res, "mmap of the destination: %s", strerror(errno));
        goto out;
    }
    char *dest = (char *)(((uintptr_t)raw + HPAGE - 1) & ~(uintptr_t)(HPAGE - 1));
    uintptr_t old = base_of(&s);
    void *moved = mremap((void *)old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
    if (moved == MAP_FAILED) {
        res_fail(res, "mremap: %s", strerror(errno));
        goto out;
    }
    /* what is left of the reservation around the moved range */
    if (dest > raw)
        munmap(raw, (size_t)(dest - raw));
    munmap(dest + len, (size_t)(raw + len + HPAGE - (dest + len)));
    raw = NULL;
    if (with_event) {
        while (atomic_load(&s.h.remap_events) == 0)
            sched_yield();  /* mremap returned after the handler read the event */
        if (atomic_load(&s.h.remap_to) != (uintptr_t)moved)
            res_fail(res, "UFFD_EVENT_REMAP names 0x%lx, mremap moved to %p",
                     (unsigned long)atomic_load(&s.h.remap_to), moved);
    }
    atomic_store(&s.r.base, (uintptr_t)moved);
    pagemap_stat((uintptr_t)moved, len, &a);
    smaps_stat((uintptr_t)moved, len, &sa);
    bool registered = sa.vmas_uffd_wp > 0;
    fig_num(res, "ptes_uffd_wp_before", (double)b.uffd_wp);
    fig_num(res, "ptes_uffd_wp_after", (double)a.uffd_wp);
    fig_bool(res, "registered_before", sb.vmas_uffd_wp > 0);
    fig_bool(res, "registered_after", registered);
    fig_num(res, "remap_events", (double)atomic_load(&s.h.remap_events));
    if (mt == MT_ANON_THP)
        fig_num(res, "thp_kib_after", (double)sa.anon_huge_kib);
    if (!write_and_check(&s, res, g_opts.writers, false, NULL, false))
        goto out;
    uint64_t faults = atomic_load(&s.h.wp_faults);
    const char *semantics = registered && a.uffd_wp ? "kept" : (!registered && !a.uffd_wp)
                            ? "cleared" : "inconsistent";
    fig_text(res, "protection_after_mremap", "%s", semantics);
    if (with_event) {
        if (!registered)
            res_fail(res, "the moved range is no longer registered although EVENT_REMAP was "
                     "requested");
        if (a.uffd_wp < b.uffd_wp)
            res_fail(res, "uffd-wp bits %zu -> %zu over mremap with EVENT_REMAP", b.uffd_wp,
                     a.uffd_wp);
        verify_region(&s.r, &(struct verify_opts){.skip_cell = NO_CELL}, res);
        res_note(res, "EVENT_REMAP: protection kept (%zu uffd-wp PTEs at the new address, "
                 "registered), %llu writes faulted", a.uffd_wp, (unsigned long long)faults);
    } else if (!registered && a.uffd_wp) {
        res_fail(res, "uffd-wp bit left on %zu PTEs of the moved range, which is no longer "
                 "registered: 0cef0bb836e3 (CVE-2025-21696, 'mm: clear uffd-wp PTE/PMD state on "
                 "mremap()') missing", a.uffd_wp);
    } else if (!registered) {
        verify_region(&s.r, &(struct verify_opts){.skip_cell = NO_CELL, .copies_optional = true},
                      res);
        res_note(res, "without EVENT_REMAP: protection cleared (range unregistered, uffd-wp PTEs "
                 "%zu -> %zu), %llu writes faulted", b.uffd_wp, a.uffd_wp,
                 (unsigned long long)faults);
        if (faults)
            res_fail(res, "%llu faults on a range that is no longer registered",
                     (unsigned long long)faults);
    } else {
        verify_region(&s.r, &(struct verify_opts){.skip_cell = NO_CELL}, res);
        res_note(res, "without EVENT_REMAP: protection kept (still registered, %zu uffd-wp PTEs)",
                 a.uffd_wp);
    }
out:
    if (raw)
        munmap(raw, len + HPAGE);
    teardown(&s);
}

/* -- KSM ------------------------------------------------------------------- */
#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#endif
#define KSM_GROUP 4          /* pages of identical content per group */
#define KSM_RUN "/sys/kernel/mm/ksm/run"

/* ksmd must already run (the Python side starts it when root). */
static bool ksm_usable(struct result *res)
{
    if (g_opts.ksm_skip) {
        res_unsupported(res, "%s", g_opts.ksm_skip);
        return false;
    }
    long run = sysfs_long(KSM_RUN);
    if (run < 0) {
        res_unsupported(res, "no KSM on this kernel (%s unreadable)", KSM_RUN);
        return false;
    }
    if (run != 1) {
        res_unsupported(res, "ksmd is not running (%s = %ld): needs root to run ksmd (echo 1 > "
                        "%s; the Python side does it and puts it back)", KSM_RUN, run, KSM_RUN);
        return false;
    }
    return true;
}

/* Until ksmd merged 90% of the pages, or stopped merging for 3 s, or the
 * wait ran out.  Returns the seconds waited; *st and flags as last sampled. */
static double wait_merged(struct setup *s, unsigned char *flags, struct ksmstat *st)
{
    double t0 = now_s(), changed = t0;
    size_t last = 0, target = s->r.nunits * 9 / 10;
    set_step("wait for ksmd to merge");
    for (;;) {
        pagemap_ksm(base_of(s), s->r.len, flags, st);
        double t = now_s();
        if (st->merged >= target || t - t0 >= g_opts.ksm_wait ||
            (st->merged && t - changed >= 3.0))
            return t - t0;
        if (st->merged != last) {
            last = st->merged;
            changed = t;
        }
        usleep(50000);
    }
}

/* wp-ksm: write-protect, let ksmd merge, write.  wp-ksm-premerged: let
 * ksmd merge, write-protect, write.  Pages come in groups of KSM_GROUP with
 * the same content; KSM keeps one page per group and maps it read-only at
 * every address of the group.  The writes must all fault (copy old,
 * un-protect, as QEMU does): a merge that dropped the uffd-wp bit makes a
 * write to the merged page an ordinary CoW, silently. */
static void case_ksm(struct result *res, enum mem_type mt, const struct case_def *def)
{
    bool premerged = def->flag == 1;
    unsigned char *flags = NULL;
    struct setup s;
    memset(&s, 0, sizeof s);
    if (!ksm_usable(res))
        return;
    if (!setup(&s, res, mt, g_opts.ksm_pages * CELL, 0, false))
        goto out;
    char *base = (char *)base_of(&s);
    set_step("fill groups of identical pages");
    for (size_t c = 0; c < s.r.ncells; c++)
        write_cell(base + c * CELL, TAG_PRE, c - c % KSM_GROUP, 0);
    flags = calloc(s.r.nunits, 1);
    if (!flags) {
        res_fail(res, "out of memory");
        goto out;
    }
    set_step("MADV_MERGEABLE");
    if (madvise(base, s.r.len, MADV_MERGEABLE)) {
        res_unsupported(res, "madvise(MADV_MERGEABLE): %s", strerror(errno));
        goto out;
    }
    long full0 = sysfs_long("/sys/kernel/mm/ksm/full_scans");
    struct ksmstat st;
    if (!premerged) {
        if (!protect_or_fail(&s, res))
            goto out;
        pagemap_ksm(base_of(&s), s.r.len, NULL, &st);
        fig_num(res, "uffd_wp_after_protect", (double)st.uffd_wp);
    }
    double waited = wait_merged(&s, flags, &st);
    long full1 = sysfs_long("/sys/kernel/mm/ksm/full_scans");
    fig_num(res, "ksm_group", KSM_GROUP);
    fig_num(res, "ksm_wait_s", (double)(long)(waited * 100) / 100);
    fig_num(res, "ksm_full_scans", full0 >= 0 && full1 >= 0 ? (double)(full1 - full0) : -1);
    fig_num(res, "ksm_merging_pages", (double)ksm_stat_value("ksm_merging_pages"));
    fig_text(res, "merged_detected_by", st.by_kpageflags ? "kpageflags KPF_KSM"
                                                         : "pagemap: present, not exclusive");
    fig_num(res, "pages_merged", (double)st.merged);
    if (st.merged == 0) {
        res_unsupported(res, "KSM merged nothing within %g s (ksm_merging_pages %ld, "
                        "full_scans +%ld)", g_opts.ksm_wait, ksm_stat_value("ksm_merging_pages"),
                        full0 >= 0 && full1 >= 0 ? full1 - full0 : -1);
        goto out;
    }
    if (premerged) {
        fig_num(res, "merged_uffd_wp_before_protect", (double)st.merged_uffd_wp);
        if (!protect_or_fail(&s, res))
            goto out;
        pagemap_ksm(base_of(&s), s.r.len, flags, &st);  /* what the writes meet */
    }
    fig_num(res, "merged_uffd_wp_before_writes", (double)st.merged_uffd_wp);
    fig_num(res, "unmerged_uffd_wp_before_writes", (double)(st.uffd_wp - st.merged_uffd_wp));
    fig_num(res, "pages_merged_before_writes", (double)st.merged);
    /* which PTEs kept the bit: KSM keeps one page per group (its PTE only
     * write-protected) and replaces the others' PTEs */
    size_t groups_one = 0, groups_none = 0;
    for (size_t g = 0; g + KSM_GROUP <= s.r.nunits; g += KSM_GROUP) {
        int merged_in = 0, wp_in = 0;
        for (size_t u = g; u < g + KSM_GROUP; u++) {
            merged_in += !!(flags[u] & PG_MERGED);
            wp_in += (flags[u] & (PG_MERGED | PG_UFFD_WP)) == (PG_MERGED | PG_UFFD_WP);
        }
        if (merged_in == KSM_GROUP) {
            groups_one += wp_in == 1;
            groups_none += wp_in == 0;
        }
    }
    fig_num(res, "merged_groups_one_uffd_wp", (double)groups_one);
    fig_num(res, "merged_groups_no_uffd_wp", (double)groups_none);
    if (!write_all(&s, res, g_opts.writers, false))
        goto out;
    stop_handler(&s);
    size_t merged = 0, merged_lost = 0, other_lost = 0, first_lost = NO_CELL;
    for (size_t u = 0; u < s.r.nunits; u++) {
        bool copied = atomic_load(&s.r.state[u]) == 2;
        if (flags[u] & PG_MERGED) {
            merged++;
            if (!copied) {
                merged_lost++;
                if (first_lost == NO_CELL)
                    first_lost = u;
            }
        } else if (!copied) {
            other_lost++;
        }
    }
    fig_num(res, "merged_writes_without_fault", (double)merged_lost);
    fig_num(res, "unmerged_writes_without_fault", (double)other_lost);
    if (merged_lost)
        res_fail(res, "%zu of %zu KSM-merged pages lost write protection: their writes reached "
                 "memory without a fault (pagemap: %zu of %zu merged pages still uffd-wp before "
                 "the writes; first at +0x%zx)", merged_lost, merged, st.merged_uffd_wp, merged,
                 first_lost * CELL);
    verify_region(&s.r, &(struct verify_opts){.skip_cell = NO_CELL, .old_group = KSM_GROUP},
                  res);
    handler_figures(&s.h, res);
    latency_figures(&s.r, res, "fault");
    res_note(res, "%s: KSM merged %zu of %zu pages (groups of %d) in %.1f s; %zu of them still "
             "uffd-wp in pagemap; every write faulted, every copy the old content",
             premerged ? "merged, then protected" : "protected, then merged", merged,
             s.r.nunits, KSM_GROUP, waited, st.merged_uffd_wp);
    if (st.merged_uffd_wp < merged)
        res_note(res, "%zu merged pages without the uffd-wp bit in pagemap faulted anyway",
                 merged - st.merged_uffd_wp);
out:
    free(flags);
    teardown(&s);
}

const struct case_def g_cases[] = {
    {"wp-basic", case_basic, MT_ALL, 0, 0},
    {"fault-latency", case_basic, MT_BIT(MT_ANON), 0, 1},
    {"wp-fork", case_fork, MT_ALL, 0, 0},
    {"wp-fork-event", case_fork, MT_ALL, UC_FEATURE_EVENT_FORK, 1},
    {"wp-pageout", case_pageout, MT_BIT(MT_ANON) | MT_BIT(MT_SHMEM) | MT_BIT(MT_SHMEM_PRIVATE),
     0, 0},
    {"wp-unpopulated", case_unpopulated, MT_BIT(MT_ANON), UC_FEATURE_WP_UNPOPULATED, 0},
    {"wp-unpopulated", case_unpopulated, MT_BIT(MT_SHMEM), 0, 0},
    {"wp-thp-split", case_thp_split, MT_BIT(MT_ANON_THP), 0, 0},
    {"wp-mremap", case_mremap, MT_BIT(MT_ANON) | MT_BIT(MT_ANON_THP), 0, 0},
    {"wp-mremap-event", case_mremap, MT_BIT(MT_ANON) | MT_BIT(MT_ANON_THP),
     UC_FEATURE_EVENT_REMAP, 1},
    /* last: ksmd, started by the Python side for the whole run, has pages to
     * scan only from here on */
    {"wp-ksm", case_ksm, MT_BIT(MT_ANON), 0, 0},
    {"wp-ksm-premerged", case_ksm, MT_BIT(MT_ANON), 0, 1},
};
const size_t g_ncases = sizeof g_cases / sizeof g_cases[0];

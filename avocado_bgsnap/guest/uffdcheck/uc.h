/* bgsnap-uffd-check: a guest-less self-check of userfaultfd write-protect.
 *
 * Does to a memory range what QEMU's background snapshot does to guest RAM
 * (register for WP, write-protect, let other threads write, copy each
 * faulting page's OLD content on a handler thread, then un-protect it) and
 * checks every copy and the memory afterwards.  Cases and output: uc_main.c;
 * docs/uffd-check.md.
 */
#ifndef UC_H
#define UC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CELL 4096u              /* stamps are written per 4 KiB cell */
#define HPAGE (2u << 20)        /* THP and the hugetlb pages used here */
#define WORDS_PER_CELL (CELL / 8)
#define NO_CELL ((size_t)-1)
#define MAX_CHILD_FDS 8

/* linux/userfaultfd.h of Debian 12 (6.1) stops at bit 12 */
#define UC_FEATURE_WP (1ULL << 0)
#define UC_FEATURE_EVENT_FORK (1ULL << 1)
#define UC_FEATURE_EVENT_REMAP (1ULL << 2)
#define UC_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#define UC_FEATURE_WP_UNPOPULATED (1ULL << 13)

enum mem_type {
    MT_ANON, MT_ANON_THP, MT_SHMEM, MT_SHMEM_PRIVATE, MT_HUGETLB, MT_HUGETLB_PRIVATE, MT_COUNT
};
extern const char *const mem_type_names[MT_COUNT];
#define MT_BIT(t) (1u << (t))
#define MT_ALL ((1u << MT_COUNT) - 1)

static inline bool mt_is_file(enum mem_type t) { return t >= MT_SHMEM; }
static inline bool mt_is_private_file(enum mem_type t)
{
    return t == MT_SHMEM_PRIVATE || t == MT_HUGETLB_PRIVATE;
}
static inline bool mt_is_hugetlb(enum mem_type t)
{
    return t == MT_HUGETLB || t == MT_HUGETLB_PRIVATE;
}

/* -- results (uc_main.c) ------------------------------------------------- */
enum { RES_PASS, RES_FAIL, RES_UNSUPPORTED };
enum { FIG_NUM, FIG_TEXT, FIG_BOOL };

struct figure {
    char key[40];
    int kind;
    double num;
    char text[200];
};

struct result {
    const char *name;
    enum mem_type mt;
    int result;
    char reason[2048];
    struct figure fig[64];
    int nfig;
};

void res_fail(struct result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void res_note(struct result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void res_unsupported(struct result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void fig_num(struct result *r, const char *key, double value);
void fig_bool(struct result *r, const char *key, bool value);
void fig_text(struct result *r, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void set_step(const char *step);   /* for the watchdog's message */
void set_child(pid_t pid);         /* killed by the watchdog */

struct options {
    bool no_protect;     /* negative control: register, never write-protect */
    int writers;
    size_t mib;          /* per case, 4 KiB and THP types */
    size_t hugetlb_mib;  /* per case, hugetlb types */
    const char *hugetlb_skip;
    const char *ksm_skip;  /* why ksmd cannot run for the KSM cases (not root) */
    double ksm_wait;       /* seconds the KSM cases wait for ksmd to merge */
    size_t ksm_pages;      /* pages of the KSM cases' region */
};
extern struct options g_opts;
extern uint64_t g_features;   /* what the kernel offers */

/* -- userfaultfd (uc_uffd.c) ---------------------------------------------- */
struct uffd {
    int fd;
    uint64_t features;
};

int uffd_probe(uint64_t *features, char *how, size_t howlen, char *err, size_t errlen);
/* 0, -1 (failed), or UFFD_OPEN_NOT_PERMITTED (EPERM: a privilege, not a defect) */
#define UFFD_OPEN_NOT_PERMITTED (-2)
int uffd_open(struct uffd *u, uint64_t features, char *err, size_t errlen);
void uffd_close(struct uffd *u);
int uffd_register_wp(struct uffd *u, uintptr_t addr, size_t len, char *err, size_t errlen);
int uffd_wp(int fd, uintptr_t addr, size_t len, bool protect);  /* 0 or -errno */

/* The memory under test.  base moves on mremap (the handler follows a
 * UFFD_EVENT_REMAP); unit is the protection granularity (4 KiB, or 2 MiB
 * for hugetlb). */
struct region {
    enum mem_type mt;
    _Atomic uintptr_t base;
    size_t len, unit, ncells, nunits;
    int memfd;
    char *file_view;              /* MAP_SHARED view of a private file mapping */
    char *copy;                   /* the side buffer: old content per unit */
    _Atomic unsigned char *state; /* per unit: 0 not copied, 1 copying, 2 copied */
    uint32_t *lat_ns;             /* per unit: the first post-protect store, ns */
};

struct handler {
    struct uffd *u;
    struct region *r;
    pthread_t thread;
    int stopfd;
    int child_fds[MAX_CHILD_FDS];
    int nchild;
    _Atomic uint64_t wp_faults, copies, dup_faults, stray_faults, missing_faults;
    _Atomic uint64_t child_faults, fork_events, remap_events, other_events, errors;
    _Atomic uintptr_t remap_to;
    _Atomic int last_errno;
};

int handler_start(struct handler *h, struct uffd *u, struct region *r);
void handler_stop(struct handler *h);

/* -- memory, writers, verification (uc_region.c) ------------------------- */
#define TAG_PRE 0xA5u
#define TAG_POST 0x5Bu
#define TAG_CHILD 0xC4u

static inline uint64_t stamp(unsigned tag, size_t cell, uint32_t gen)
{
    return (uint64_t)tag << 56 | ((uint64_t)cell & 0xffffffffu) << 24 | (gen & 0xffffffu);
}

void write_cell(char *p, unsigned tag, size_t cell, uint32_t gen);
int region_alloc(struct region *r, enum mem_type mt, size_t len, char *err, size_t errlen);
void region_fill(struct region *r);
void region_free(struct region *r);
bool type_supported(enum mem_type mt, char *why, size_t whylen);
uint64_t type_features(enum mem_type mt);

typedef int (*protect_fn)(void *ctx);
/* Writers write a post-protect stamp into every cell once.  With `protect`
 * they first write pre-protect stamps in a loop and `protect` runs while
 * they do (the TLB-flush race of 6ce64428d620). */
int run_writers(struct region *r, int nwriters, protect_fn protect, void *ctx,
                char *err, size_t errlen);

struct verify_opts {
    bool old_is_zero;      /* never-populated memory: the old content is zeros */
    size_t skip_cell;      /* a cell the case discarded (MADV_DONTNEED) */
    bool copies_optional;  /* protection legitimately gone (mremap without event) */
    size_t old_group;      /* old stamps name the first cell of groups this large (KSM) */
};
void verify_region(struct region *r, const struct verify_opts *vo, struct result *res);
void verify_file_view(struct region *r, struct result *res);
void latency_figures(struct region *r, struct result *res, const char *prefix);
void handler_figures(struct handler *h, struct result *res);

/* -- measurements (uc_probe.c) -------------------------------------------- */
struct pmstat {
    size_t pages, present, swapped, uffd_wp, file_shared;
};
struct smapstat {
    int vmas, vmas_uffd_wp;
    long rss_kib, anon_huge_kib, swap_kib;
};
int pagemap_stat(uintptr_t addr, size_t len, struct pmstat *s);
/* Per page of [addr, addr+len): PG_* flags; merged = a KSM page
 * (/proc/kpageflags KPF_KSM when PFNs are visible, i.e. root; else a present
 * page not exclusively mapped, pagemap bit 56 clear). */
#define PG_PRESENT 1u
#define PG_UFFD_WP 2u
#define PG_MERGED 4u
struct ksmstat {
    size_t present, uffd_wp, merged, merged_uffd_wp;
    bool by_kpageflags;
};
int pagemap_ksm(uintptr_t addr, size_t len, unsigned char *flags, struct ksmstat *s);
long ksm_stat_value(const char *key);   /* /proc/self/ksm_stat, -1 unreadable */
long sysfs_long(const char *path);      /* first number of a sysfs file, -1 */
int smaps_stat(uintptr_t addr, size_t len, struct smapstat *s);
long mincore_resident(uintptr_t addr, size_t len);
int sysfs_choice(const char *path, char *out, size_t outlen);
long meminfo_kib(const char *key);
double now_s(void);
uint64_t now_ns(void);

/* -- the cases (uc_cases.c) ----------------------------------------------- */
struct case_def {
    const char *name;
    void (*fn)(struct result *res, enum mem_type mt, const struct case_def *def);
    unsigned types;
    uint64_t needs;        /* feature bits beyond WP and the memory type's */
    int flag;              /* case-specific variant */
};
extern const struct case_def g_cases[];
extern const size_t g_ncases;

#endif

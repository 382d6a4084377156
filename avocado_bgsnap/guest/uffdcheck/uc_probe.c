/* Measurements from /proc and /sys: pagemap bits, smaps, mincore, clocks. */
#define _GNU_SOURCE
#include "uc.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Documentation/admin-guide/mm/pagemap.rst */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_EXCLUSIVE (1ULL << 56)
#define PM_UFFD_WP (1ULL << 57)
#define PM_PFN_MASK ((1ULL << 55) - 1)
/* Documentation/admin-guide/mm/pagemap.rst, /proc/kpageflags */
#define KPF_KSM (1ULL << 21)

int pagemap_stat(uintptr_t addr, size_t len, struct pmstat *s)
{
    memset(s, 0, sizeof *s);
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    uint64_t buf[512];
    size_t pages = len / CELL, done = 0;
    while (done < pages) {
        size_t n = pages - done < 512 ? pages - done : 512;
        off_t off = (off_t)((addr / CELL + done) * sizeof(uint64_t));
        ssize_t got = pread(fd, buf, n * sizeof(uint64_t), off);
        if (got <= 0)
            break;
        n = (size_t)got / sizeof(uint64_t);
        for (size_t i = 0; i < n; i++) {
            s->present += !!(buf[i] & PM_PRESENT);
            s->swapped += !!(buf[i] & PM_SWAP);
            s->file_shared += !!(buf[i] & PM_FILE);
            s->uffd_wp += !!(buf[i] & PM_UFFD_WP);
        }
        done += n;
    }
    s->pages = done;
    close(fd);
    return done == pages ? 0 : -1;
}

int pagemap_ksm(uintptr_t addr, size_t len, unsigned char *flags, struct ksmstat *s)
{
    memset(s, 0, sizeof *s);
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int kfd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);  /* root only */
    uint64_t buf[512];
    size_t pages = len / CELL, done = 0;
    while (done < pages) {
        size_t n = pages - done < 512 ? pages - done : 512;
        off_t off = (off_t)((addr / CELL + done) * sizeof(uint64_t));
        ssize_t got = pread(fd, buf, n * sizeof(uint64_t), off);
        if (got <= 0)
            break;
        n = (size_t)got / sizeof(uint64_t);
        for (size_t i = 0; i < n; i++) {
            uint64_t e = buf[i], pfn = e & PM_PFN_MASK, kf = 0;
            unsigned char f = 0;
            if (e & PM_PRESENT) {
                f |= PG_PRESENT;
                if (kfd >= 0 && pfn &&
                    pread(kfd, &kf, sizeof kf, (off_t)(pfn * sizeof kf)) == sizeof kf) {
                    s->by_kpageflags = true;
                    if (kf & KPF_KSM)
                        f |= PG_MERGED;
                } else if (!(e & PM_EXCLUSIVE)) {
                    f |= PG_MERGED;
                }
            }
            if (e & PM_UFFD_WP)
                f |= PG_UFFD_WP;
            s->present += !!(f & PG_PRESENT);
            s->uffd_wp += !!(f & PG_UFFD_WP);
            s->merged += !!(f & PG_MERGED);
            s->merged_uffd_wp += (f & (PG_MERGED | PG_UFFD_WP)) == (PG_MERGED | PG_UFFD_WP);
            if (flags)
                flags[done + i] = f;
        }
        done += n;
    }
    if (kfd >= 0)
        close(kfd);
    close(fd);
    return done == pages ? 0 : -1;
}

long ksm_stat_value(const char *key)
{
    FILE *f = fopen("/proc/self/ksm_stat", "re");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, k) && line[k] == ' ') {
            v = strtol(line + k + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

long sysfs_long(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    long v = -1;
    if (fscanf(f, "%ld", &v) != 1)
        v = -1;
    fclose(f);
    return v;
}

static long field_kib(const char *line, const char *key)
{
    size_t k = strlen(key);
    if (strncmp(line, key, k) || line[k] != ':')
        return -1;
    return strtol(line + k + 1, NULL, 10);
}

/* Sums over the VMAs that overlap [addr, addr+len). */
int smaps_stat(uintptr_t addr, size_t len, struct smapstat *s)
{
    memset(s, 0, sizeof *s);
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        return -1;
    char line[512];
    bool in = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end;
        if ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f')) {
            in = sscanf(line, "%lx-%lx", &start, &end) == 2 && start < addr + len && end > addr;
            s->vmas += in;
            continue;
        }
        if (!in)
            continue;
        long v;
        if ((v = field_kib(line, "Rss")) >= 0)
            s->rss_kib += v;
        else if ((v = field_kib(line, "AnonHugePages")) >= 0)
            s->anon_huge_kib += v;
        else if ((v = field_kib(line, "Swap")) >= 0)
            s->swap_kib += v;
        else if (!strncmp(line, "VmFlags:", 8) && strstr(line, " uw"))
            s->vmas_uffd_wp++;
    }
    fclose(f);
    return 0;
}

long mincore_resident(uintptr_t addr, size_t len)
{
    size_t pages = len / CELL;
    unsigned char *vec = malloc(pages);
    if (!vec)
        return -1;
    long n = -1;
    if (mincore((void *)addr, len, vec) == 0) {
        n = 0;
        for (size_t i = 0; i < pages; i++)
            n += vec[i] & 1;
    }
    free(vec);
    return n;
}

/* The selected word of a sysfs choice file ("always [madvise] never"). */
int sysfs_choice(const char *path, char *out, size_t outlen)
{
    char buf[256] = "";
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = 0;
    char *open_b = strchr(buf, '['), *close_b = open_b ? strchr(open_b, ']') : NULL;
    if (!close_b)
        return -1;
    snprintf(out, outlen, "%.*s", (int)(close_b - open_b - 1), open_b + 1);
    return 0;
}

long meminfo_kib(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if ((v = field_kib(line, key)) >= 0)
            break;
    fclose(f);
    return v;
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double now_s(void) { return (double)now_ns() / 1e9; }

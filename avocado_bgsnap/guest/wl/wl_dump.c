/* bgsnap-wl host side: scan a RAM dump (ELF64 core from QEMU's
 * dump-guest-memory, or a raw image), verify it; and `gen`, which writes
 * synthetic raw dumps for the unit tests. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wl_cli.h"
#include "wl_util.h"

#define PT_LOAD_TYPE 1u
#define PN_XNUM_VAL 0xFFFFu
#define TORN_SPLIT 200u /* gen: a torn page has words 2..199 new, 200..511 old */

struct seg {
    uint64_t off, filesz, paddr;
};
struct cand {
    uint64_t page;
    const uint8_t *f;
};

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t ld32(const uint8_t *p) { return (uint32_t)ld16(p) | (uint32_t)ld16(p + 2) << 16; }
static uint64_t ld64b(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }

static int fail(const char *msg, const char *detail)
{
    struct sbuf b;
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s%s%s", msg, detail ? ": " : "", detail ? detail : "");
    sb_init(&b);
    sb_printf(&b, WL_PREFIX "{\"ok\":false,\"cmd\":\"verify-dump\",\"error\":");
    sb_json_str(&b, buf);
    sb_printf(&b, "}\n");
    fputs(b.s, stdout);
    fprintf(stderr, "bgsnap-wl verify-dump: %s\n", buf);
    sb_free(&b);
    return 2;
}

/* PT_LOAD segments of an ELF64 LE core; returns count or -1 (msg set) */
static int elf_segments(const uint8_t *m, uint64_t size, struct seg **out, const char **msg)
{
    uint64_t phoff = ld64b(m + 32), shoff = ld64b(m + 40), phnum = ld16(m + 56);
    uint16_t phentsize = ld16(m + 54);
    struct seg *s;
    int n = 0;
    if (m[4] != 2 || m[5] != 1) {
        *msg = "unsupported ELF file: need ELF64 little-endian";
        return -1;
    }
    if (phnum == PN_XNUM_VAL) { /* real count in section header 0's sh_info */
        if (shoff == 0 || shoff > size || size - shoff < 64) {
            *msg = "ELF: PN_XNUM without a section header";
            return -1;
        }
        phnum = ld32(m + shoff + 44);
    }
    if (phentsize < 56 || phoff > size || phnum > (size - phoff) / phentsize) {
        *msg = "ELF: program headers outside the file";
        return -1;
    }
    s = calloc(phnum ? phnum : 1, sizeof(*s));
    if (!s) {
        *msg = "out of memory";
        return -1;
    }
    for (uint64_t i = 0; i < phnum; i++) {
        const uint8_t *ph = m + phoff + i * phentsize;
        if (ld32(ph) != PT_LOAD_TYPE)
            continue;
        s[n].off = ld64b(ph + 8);
        s[n].paddr = ld64b(ph + 24);
        s[n].filesz = ld64b(ph + 32);
        if (s[n].off > size || s[n].filesz > size - s[n].off) {
            free(s);
            *msg = "ELF: a PT_LOAD segment extends past the end of the file (truncated dump?)";
            return -1;
        }
        n++;
    }
    *out = s;
    return n;
}

static int cand_push(struct cand **v, size_t *n, size_t *cap, uint64_t page, const uint8_t *f)
{
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 4096;
        struct cand *nv = realloc(*v, nc * sizeof(**v));
        if (!nv)
            return -1;
        *v = nv;
        *cap = nc;
    }
    (*v)[*n].page = page;
    (*v)[*n].f = f;
    (*n)++;
    return 0;
}

static int cross_check(const struct wl_opts *o, const struct wl_params *P, char *err, size_t n)
{
    if (P->seed != o->P.seed)
        snprintf(err, n, "metadata seed %llu differs from --seed %llu",
                 (unsigned long long)P->seed, (unsigned long long)o->P.seed);
    else if (o->have_mib && P->npages != o->P.npages)
        snprintf(err, n, "metadata has %llu pages, --mib says %llu",
                 (unsigned long long)P->npages, (unsigned long long)o->P.npages);
    else if (o->have_writers && P->writers != o->P.writers)
        snprintf(err, n, "metadata has %u writers, --writers says %u", P->writers, o->P.writers);
    else if (o->have_pattern && P->pattern != o->P.pattern)
        snprintf(err, n, "metadata pattern %s, --pattern says %s", wl_pattern_name(P->pattern),
                 wl_pattern_name(o->P.pattern));
    else if (o->have_hot && P->hot_pct != o->P.hot_pct)
        snprintf(err, n, "metadata hot-pct %u, --hot-pct says %u", P->hot_pct, o->P.hot_pct);
    else
        return 0;
    return -1;
}

/* the duplicate region (--dup-mib): frames equal to D0 / D1, and frames
 * that begin like one of them but are neither (a torn dup write) */
struct dupscan {
    uint64_t pages, d0, d1, mixed, paddr_min, paddr_max;
    uint8_t c[2][WL_PAGE];
};

static void dup_check(struct dupscan *D, const uint8_t *f, uint64_t paddr)
{
    int k = memcmp(f, D->c[0], 8) == 0 ? 0 : memcmp(f, D->c[1], 8) == 0 ? 1 : -1;
    if (k < 0)
        return;
    if (memcmp(f, D->c[k], WL_PAGE) != 0)
        D->mixed++;
    else if (k == 0)
        D->d0++;
    else
        D->d1++;
    if (D->d0 + D->d1 + D->mixed == 1 || paddr < D->paddr_min)
        D->paddr_min = paddr;
    if (paddr > D->paddr_max)
        D->paddr_max = paddr;
}

/* bad dup pages: every one must be D0 (the image is older than any dupwrite);
 * D1 or torn frames, or fewer D0 frames than dup pages */
static uint64_t dup_missing(const struct dupscan *D)
{ /* dup pages neither D0, D1 nor torn */
    uint64_t seen = D->d0 + D->d1 + D->mixed;
    return seen < D->pages ? D->pages - seen : 0;
}

static uint64_t dup_bad(const struct dupscan *D)
{
    uint64_t not_d0 = D->d0 < D->pages ? D->pages - D->d0 : 0;
    return D->d1 + D->mixed > not_d0 ? D->d1 + D->mixed : not_d0;
}

static const char *phase_name(uint64_t ph)
{
    static const char *const names[] = {"filling", "running", "frozen", "stopped"};
    return ph < 4 ? names[ph] : "?";
}

int wl_cmd_verify_dump(const struct wl_opts *o)
{
    uint64_t t0 = wl_now_ns(), size, frames = 0, stray = 0, dup_same = 0, meta_count = 0;
    const uint8_t *m, *meta = NULL;
    struct seg *segs = NULL, one;
    struct cand *cands = NULL;
    size_t ncand = 0, capcand = 0;
    int nseg, is_elf, rc;
    struct stat st;
    struct wl_params P;
    uint64_t C[WL_MAX_WRITERS];
    const uint8_t **pages;
    uint8_t *amb;
    struct wl_vresult *R;
    const char *msg = NULL;
    char err[256];
    static struct dupscan D;
    int fd = open(o->dump, O_RDONLY);

    memset(&D, 0, sizeof(D));
    D.pages = o->dup_mib * (1024 * 1024 / WL_PAGE);
    if (D.pages) {
        wl_fill_dup(&o->P, D.c[0], 0);
        wl_fill_dup(&o->P, D.c[1], 1);
    }

    if (fd < 0)
        return fail(o->dump, strerror(errno));
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)WL_PAGE) {
        close(fd);
        return fail("dump file is empty or unreadable", o->dump);
    }
    size = (uint64_t)st.st_size;
    m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return fail("cannot map the dump file", strerror(errno));
    madvise((void *)m, size, MADV_SEQUENTIAL);
    is_elf = memcmp(m, "\177ELF", 4) == 0;
    if (is_elf) {
        nseg = elf_segments(m, size, &segs, &msg);
        if (nseg < 0)
            return fail(msg, o->dump);
    } else {
        one.off = 0;
        one.filesz = size;
        one.paddr = 0;
        segs = &one;
        nseg = 1;
    }
    /* one pass over every guest-physical frame */
    for (int i = 0; i < nseg; i++) {
        uint64_t skip = (WL_PAGE - segs[i].paddr % WL_PAGE) % WL_PAGE;
        for (uint64_t off = skip; off + WL_PAGE <= segs[i].filesz; off += WL_PAGE) {
            const uint8_t *f = m + segs[i].off + off;
            uint64_t w0 = wl_ld(f, 0);
            frames++;
            if (D.pages)
                dup_check(&D, f, segs[i].paddr + off);
            if (w0 == WL_MAGIC_PAGE) {
                uint64_t q = wl_ld(f, 1) ^ o->P.nonce;
                if (q < WL_MAX_PAGE && cand_push(&cands, &ncand, &capcand, q, f))
                    return fail("out of memory", NULL);
            } else if (w0 == WL_MAGIC_META && wl_ld(f, WL_M_NONCE) == o->P.nonce) {
                if (meta_count++ == 0)
                    meta = f;
            }
        }
    }
    if (segs != &one)
        free(segs);
    if (meta_count == 0)
        return fail("metadata page for this nonce not found in the dump", o->dump);
    if (meta_count > 1) {
        snprintf(err, sizeof(err), "%llu metadata pages for this nonce (expected exactly one)",
                 (unsigned long long)meta_count);
        return fail(err, o->dump);
    }
    if ((msg = wl_meta_parse(meta, &P, C)) != NULL)
        return fail(msg, NULL);
    if (cross_check(o, &P, err, sizeof(err)))
        return fail(err, NULL);
    pages = calloc(P.npages, sizeof(*pages));
    amb = calloc(P.npages, 1);
    R = malloc(sizeof(*R));
    if (!pages || !amb || !R)
        return fail("out of memory", NULL);
    for (size_t i = 0; i < ncand; i++) {
        uint64_t q = cands[i].page;
        if (q >= P.npages)
            stray++;
        else if (!pages[q])
            pages[q] = cands[i].f;
        else if (memcmp(pages[q], cands[i].f, WL_PAGE) != 0)
            amb[q] = 1;
        else
            dup_same++;
    }
    free(cands);
    if (wl_verify(&P, C, pages, amb, R))
        return fail("out of memory", NULL);
    {
        double secs = (double)(wl_now_ns() - t0) / 1e9;
        double region_mib = (double)P.npages * WL_PAGE / 1048576.0;
        struct sbuf b;
        if (secs <= 0)
            secs = 1e-9;
        sb_init(&b);
        sb_printf(&b, WL_PREFIX "{\"ok\":true,\"cmd\":\"verify-dump\",");
        wl_result_json_clean(&b, R, wl_clean(R) && dup_bad(&D) == 0);
        if (D.pages)
            sb_printf(&b, ",\"dup\":{\"mib\":%llu,\"pages\":%llu,\"d0\":%llu,\"d1\":%llu,"
                          "\"mixed\":%llu,\"missing\":%llu,\"paddr_min\":%llu,\"paddr_max\":%llu}",
                      (unsigned long long)o->dup_mib, (unsigned long long)D.pages,
                      (unsigned long long)D.d0, (unsigned long long)D.d1,
                      (unsigned long long)D.mixed,
                      (unsigned long long)dup_missing(&D),
                      (unsigned long long)D.paddr_min, (unsigned long long)D.paddr_max);
        sb_printf(&b, ",\"dup_bad_pages\":%llu", (unsigned long long)dup_bad(&D));
        sb_printf(&b, ",\"format\":\"%s\",\"segments\":%d,\"dump_bytes\":%llu,\"frames_scanned\":%llu,"
                      "\"stray_frames\":%llu,\"duplicate_identical\":%llu,\"phase\":\"%s\","
                      "\"writers\":%u,\"pattern\":\"%s\",\"hot_pct\":%u,"
                      "\"verify_seconds\":%.6f,\"mib_per_s\":%.1f,\"scan_mib_per_s\":%.1f}\n",
                  is_elf ? "elf" : "raw", nseg, (unsigned long long)size,
                  (unsigned long long)frames, (unsigned long long)stray,
                  (unsigned long long)dup_same, phase_name(wl_ld(meta, WL_M_PHASE)), P.writers,
                  wl_pattern_name(P.pattern), P.hot_pct, secs, region_mib / secs,
                  (double)size / 1048576.0 / secs);
        fputs(b.s, stdout);
        sb_free(&b);
    }
    rc = wl_clean(R) && dup_bad(&D) == 0 ? 0 : 1;
    free(pages);
    free(amb);
    free(R);
    munmap((void *)m, size);
    return rc;
}

/* ---------------- gen ---------------- */

static void gen_garbage(const struct wl_params *P, uint8_t *buf, uint64_t k, uint64_t seed)
{
    struct wl_params other = *P;
    other.nonce = P->nonce ^ wl_mix(seed ^ k ^ 0xA5A5u); /* "another run" */
    switch (k % 4) {
    case 0: /* random bytes */
        for (unsigned i = 0; i < WL_WORDS; i++)
            wl_st(buf, i, wl_mix(seed ^ (k << 12) ^ i));
        break;
    case 1:
        memset(buf, 0, WL_PAGE);
        break;
    case 2: /* a page of another run (other nonce) */
        wl_fill_page(&other, buf, k % P->npages, 0);
        break;
    default: /* the metadata page of another run */
        wl_meta_init(buf, &other);
        break;
    }
}

int wl_cmd_gen(const struct wl_opts *o)
{
    const struct wl_params *P = &o->P;
    unsigned W = P->writers;
    uint64_t C[WL_MAX_WRITERS], ip[WL_MAX_WRITERS], *last, *order, total, idx = 0, g = 0;
    uint8_t *buf, *tmp;
    FILE *out;
    struct sbuf b;

    for (unsigned w = 0; w < W; w++)
        C[w] = o->nsteps == 1 ? o->steps[0] : o->steps[w];
    total = 1 + P->npages + o->garbage + o->dup_gen[0] + o->dup_gen[1];
    last = malloc(P->npages * sizeof(*last));
    order = malloc(total * sizeof(*order));
    buf = aligned_alloc(WL_PAGE, WL_PAGE);
    tmp = aligned_alloc(WL_PAGE, WL_PAGE);
    if (!last || !order || !buf || !tmp) {
        fprintf(stderr, "bgsnap-wl gen: out of memory\n");
        return 2;
    }
    wl_replay(P, C, last);
    for (unsigned w = 0; w < W; w++)
        ip[w] = wl_step_page(P, w, C[w] + 1);
    /* frame ids: 0 = meta, 1..npages = page id-1, then garbage frames,
     * spread evenly between the pages */
    order[idx++] = 0;
    for (uint64_t p = 0; p < P->npages; p++) {
        order[idx++] = 1 + p;
        while (g < o->garbage && (g + 1) * P->npages <= (p + 1) * (o->garbage + 1))
            order[idx++] = 1 + P->npages + g++;
    }
    while (g < o->garbage)
        order[idx++] = 1 + P->npages + g++;
    /* then the duplicate-region frames: dup_gen[0] of D0, dup_gen[1] of D1 */
    for (; idx < total; idx++)
        order[idx] = idx;
    if (o->have_shuffle)
        for (uint64_t i = total - 1; i > 0; i--) {
            uint64_t j = wl_mix(o->shuffle ^ wl_mix(i)) % (i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    out = fopen(o->out, "wb");
    if (!out) {
        fprintf(stderr, "bgsnap-wl gen: %s: %s\n", o->out, strerror(errno));
        return 2;
    }
    for (uint64_t i = 0; i < total; i++) {
        uint64_t id = order[i];
        if (id == 0) {
            wl_meta_init(buf, P);
            wl_st(buf, WL_M_PHASE, WL_PHASE_RUNNING);
            for (unsigned w = 0; w < W; w++)
                wl_st(buf, WL_M_COMMITTED(w), C[w]);
        } else if (id <= P->npages) {
            uint64_t p = id - 1;
            unsigned w = (unsigned)(p % W);
            int st = p == ip[w] ? o->inflight[w] : WL_IF_NONE;
            wl_fill_page(P, buf, p, st == WL_IF_NEW ? C[w] + 1 : last[p]);
            if (st == WL_IF_TORN) {
                wl_fill_page(P, tmp, p, C[w] + 1);
                memcpy(buf + 16, tmp + 16, 8 * (TORN_SPLIT - 2));
            }
        } else if (id <= P->npages + o->garbage) {
            gen_garbage(P, buf, id - 1 - P->npages, o->shuffle);
        } else {
            wl_fill_dup(P, buf, id - 1 - P->npages - o->garbage < o->dup_gen[0] ? 0 : 1);
        }
        if (fwrite(buf, WL_PAGE, 1, out) != 1) {
            fprintf(stderr, "bgsnap-wl gen: write %s: %s\n", o->out, strerror(errno));
            fclose(out);
            return 2;
        }
    }
    if (fclose(out) != 0) {
        fprintf(stderr, "bgsnap-wl gen: close %s: %s\n", o->out, strerror(errno));
        return 2;
    }
    sb_init(&b);
    sb_printf(&b, WL_PREFIX "{\"ok\":true,\"cmd\":\"gen\",\"frames\":%llu,\"npages\":%llu,\"committed\":[",
              (unsigned long long)total, (unsigned long long)P->npages);
    for (unsigned w = 0; w < W; w++)
        sb_printf(&b, "%s%llu", w ? "," : "", (unsigned long long)C[w]);
    sb_printf(&b, "],\"inflight\":[");
    for (unsigned w = 0; w < W; w++)
        sb_printf(&b, "%s{\"writer\":%u,\"page\":%llu,\"old_step\":%llu,\"new_step\":%llu}",
                  w ? "," : "", w, (unsigned long long)ip[w], (unsigned long long)last[ip[w]],
                  (unsigned long long)C[w] + 1);
    sb_printf(&b, "]}\n");
    fputs(b.s, stdout);
    sb_free(&b);
    free(last);
    free(order);
    free(buf);
    free(tmp);
    return 0;
}

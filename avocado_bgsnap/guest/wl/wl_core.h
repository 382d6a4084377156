/* bgsnap-wl core: the data model (pure logic, no I/O, no threads).
 *
 * See docs/workload.md for the full description.  Everything here is
 * deterministic: the content of page p written by step s of its writer is
 * a function of (seed, nonce, p, s) only.
 */
#ifndef WL_CORE_H
#define WL_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WL_PAGE 4096u
#define WL_WORDS 512u
#define WL_MAX_WRITERS 64u
#define WL_MAX_STEP (1ull << 40) /* sanity bound on committed steps */
#define WL_MAX_PAGE (1ull << 40) /* a header with nonce^p >= this is not ours */

/* "BGSWLPG1" / "BGSWLMT1" read as little-endian words */
#define WL_MAGIC_PAGE 0x3147504C57534742ull
#define WL_MAGIC_META 0x31544D4C57534742ull
#define WL_META_FORMAT 1u

#define WL_GOLDEN 0x9E3779B97F4A7C15ull
#define WL_K_PAT 0x7061747465726E21ull
#define WL_K_BODY 0x626F64795F6B6579ull
#define WL_K_CHECK 0x636865636B5F6B65ull
#define WL_K_META 0x6D6574615F636B21ull
/* "dupregn!": the duplicate region (--dup-mib), every page one content */
#define WL_K_DUP 0x216E676572707564ull

enum wl_pattern { WL_PAT_RANDOM = 0, WL_PAT_SEQUENTIAL, WL_PAT_HOT, WL_PAT_MIXED, WL_NPAT };

/* meta page word indices */
enum {
    WL_M_MAGIC = 0, WL_M_NONCE = 1, WL_M_SEED = 2, WL_M_NPAGES = 3,
    WL_M_CONFIG = 4, /* writers | pattern << 8 | hot_pct << 16 | format << 32 */
    WL_M_CHECK = 5,  /* wl_meta_check() over words 1..4 */
    WL_M_PHASE = 6,  /* enum wl_phase, informational */
};
/* committed[w] lives alone in its own cache line: word 8*w + 7 */
#define WL_M_COMMITTED(w) (8u * (unsigned)(w) + 7u)

enum wl_phase { WL_PHASE_FILLING = 0, WL_PHASE_RUNNING, WL_PHASE_FROZEN, WL_PHASE_STOPPED };

struct wl_params {
    uint64_t seed, nonce, npages;
    unsigned writers;
    int pattern;
    unsigned hot_pct;
};

enum wl_kind {
    WL_OK = 0, WL_WRONG_VERSION, WL_LATER_STEP, WL_EARLIER_STEP,
    WL_TORN_NONINFLIGHT, WL_GARBAGE, WL_MISSING, WL_AMBIGUOUS, WL_NKIND
};
enum wl_ifstate { WL_IF_OLD = 0, WL_IF_NEW, WL_IF_TORN, WL_IF_BAD };

#define WL_BAD_FIRST 8

struct wl_bad {
    uint64_t page;
    int kind;
    uint64_t found_step, expected_step;
};

struct wl_inflight {
    uint64_t page, old_step, new_step;
    int state;
};

struct wl_vresult {
    uint64_t npages, pages_found, bad_pages, steps_total;
    uint64_t kind_count[WL_NKIND];
    struct wl_bad bad_first[WL_BAD_FIRST];
    unsigned nbad_first;
    unsigned writers;
    uint64_t committed[WL_MAX_WRITERS];
    struct wl_inflight inflight[WL_MAX_WRITERS];
    uint64_t checksum, expected_checksum, expected_checksum_next;
};

/* ---- mixing ---- */
static inline uint64_t wl_mix(uint64_t x)
{ /* splitmix64 output for state x */
    uint64_t z = x + WL_GOLDEN;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t wl_h3(uint64_t a, uint64_t b, uint64_t c)
{
    return wl_mix(wl_mix(wl_mix(a) ^ b) ^ c);
}

/* little-endian, alignment-free word access (dump frames may be unaligned) */
static inline uint64_t wl_ld(const uint8_t *p, unsigned i)
{
    uint64_t v;
    memcpy(&v, p + 8u * i, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline void wl_st(uint8_t *p, unsigned i, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p + 8u * i, &v, 8);
}

/* native <-> little-endian for aligned in-memory words */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define WL_LE(v) __builtin_bswap64(v)
#else
#define WL_LE(v) (v)
#endif

/* ---- parameters ---- */
const char *wl_pattern_name(int pattern);
int wl_pattern_parse(const char *name); /* -1 if unknown */
const char *wl_kind_name(int kind);
const char *wl_ifstate_name(int st);
/* NULL if valid, else a static message */
const char *wl_params_check(const struct wl_params *P);
uint64_t wl_writer_pages(const struct wl_params *P, unsigned w); /* n_w */

/* ---- pattern: local page index written by step s >= 1 of writer w ---- */
struct wl_cursor {
    uint64_t key, n, hot_n;
    int pattern;
};
void wl_cursor_init(struct wl_cursor *c, const struct wl_params *P, unsigned w);
static inline uint64_t wl_cursor_j(const struct wl_cursor *c, uint64_t s)
{
    uint64_t h;
    if (c->pattern == WL_PAT_SEQUENTIAL)
        return (s - 1) % c->n;
    h = wl_mix(c->key ^ s);
    switch (c->pattern) {
    case WL_PAT_RANDOM: return h % c->n;
    case WL_PAT_HOT: return h % c->hot_n;
    default: /* mixed: top bit set -> random, clear -> hot */
        return (h >> 63) ? (h & 0x7FFFFFFFFFFFFFFFull) % c->n
                         : (h & 0x7FFFFFFFFFFFFFFFull) % c->hot_n;
    }
}
uint64_t wl_step_page(const struct wl_params *P, unsigned w, uint64_t s);

/* ---- page content ---- */
static inline uint64_t wl_body_base(const struct wl_params *P, uint64_t p, uint64_t s)
{
    return wl_h3(P->seed ^ WL_K_BODY, P->nonce ^ p, s);
}
static inline uint64_t wl_check_word(const struct wl_params *P, uint64_t p, uint64_t s)
{
    return wl_h3(P->seed ^ WL_K_CHECK, P->nonce ^ p, s);
}
/* word i (0..511) of the content of page p at step s */
uint64_t wl_word(const struct wl_params *P, uint64_t p, uint64_t s, unsigned i);
/* whole page into buf (aligned or not) */
void wl_fill_page(const struct wl_params *P, uint8_t *buf, uint64_t p, uint64_t s);
/* a writer's step: word 2 (step), word 3 (check), release fence, words
 * 4..511 ascending.  Words 0 and 1 are the same for every version of p
 * and are written by the fill only.  buf must be 8-byte aligned. */
void wl_write_step(const struct wl_params *P, uint64_t *page, uint64_t p, uint64_t s);

/* ---- duplicate region: every page holds the same content D_k ----
 * word i of D_k = h3(seed ^ K_DUP, nonce, k) ^ i*G (k = 0 at start, 1 after
 * dupwrite); a function of seed and nonce, so no stale frame matches */
static inline uint64_t wl_dup_word(const struct wl_params *P, unsigned k, unsigned i)
{
    return wl_h3(P->seed ^ WL_K_DUP, P->nonce, k) ^ ((uint64_t)i * WL_GOLDEN);
}
void wl_fill_dup(const struct wl_params *P, uint8_t *buf, unsigned k);

/* ---- checksum ---- */
uint64_t wl_page_hash(const uint8_t *page);
#define WL_CSUM_INIT WL_GOLDEN
static inline uint64_t wl_csum_add(uint64_t cs, uint64_t page_hash)
{
    return wl_mix(cs ^ page_hash);
}

/* ---- meta page ---- */
uint64_t wl_meta_check(const uint8_t *meta);
void wl_meta_init(uint8_t *meta, const struct wl_params *P);
/* parse a meta page; NULL on success, else a static message */
const char *wl_meta_parse(const uint8_t *meta, struct wl_params *P, uint64_t *committed);

/* ---- replay / verify ---- */
/* last_step[p] = version of page p at committed steps C (npages entries) */
void wl_replay(const struct wl_params *P, const uint64_t *C, uint64_t *last_step);
/* Verify.  pages[p] points at the observed 4096 bytes of page p, NULL if
 * missing; ambiguous may be NULL.  Returns 0, or -1 if out of memory. */
int wl_verify(const struct wl_params *P, const uint64_t *C, const uint8_t *const *pages,
              const uint8_t *ambiguous, struct wl_vresult *R);
static inline int wl_clean(const struct wl_vresult *R) { return R->bad_pages == 0; }

#endif

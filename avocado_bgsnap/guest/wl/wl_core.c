/* bgsnap-wl core: data model, replay, verification, checksum.  No I/O. */
#include "wl_core.h"

#include <stdlib.h>

static const char *const pattern_names[WL_NPAT] = {"random", "sequential", "hot", "mixed"};
static const char *const kind_names[WL_NKIND] = {
    "ok", "wrong_version", "later_step", "earlier_step",
    "torn_noninflight", "garbage", "missing", "ambiguous"};
static const char *const ifstate_names[] = {"old", "new", "torn", "bad"};

const char *wl_pattern_name(int pattern)
{
    return (pattern >= 0 && pattern < WL_NPAT) ? pattern_names[pattern] : "?";
}

int wl_pattern_parse(const char *name)
{
    for (int i = 0; i < WL_NPAT; i++)
        if (strcmp(name, pattern_names[i]) == 0)
            return i;
    return -1;
}

const char *wl_kind_name(int kind)
{
    return (kind >= 0 && kind < WL_NKIND) ? kind_names[kind] : "?";
}

const char *wl_ifstate_name(int st)
{
    return (st >= 0 && st <= WL_IF_BAD) ? ifstate_names[st] : "?";
}

const char *wl_params_check(const struct wl_params *P)
{
    if (P->writers < 1 || P->writers > WL_MAX_WRITERS)
        return "writers must be 1..64";
    if (P->pattern < 0 || P->pattern >= WL_NPAT)
        return "unknown pattern";
    if (P->hot_pct < 1 || P->hot_pct > 100)
        return "hot-pct must be 1..100";
    if (P->npages < P->writers)
        return "region has fewer pages than writers";
    if (P->npages > WL_MAX_PAGE)
        return "region too large";
    return NULL;
}

uint64_t wl_writer_pages(const struct wl_params *P, unsigned w)
{
    if (w >= P->npages)
        return 0;
    return (P->npages - w + P->writers - 1) / P->writers;
}

void wl_cursor_init(struct wl_cursor *c, const struct wl_params *P, unsigned w)
{
    c->key = wl_mix(wl_mix(P->seed ^ WL_K_PAT) ^ w);
    c->n = wl_writer_pages(P, w);
    c->hot_n = c->n * P->hot_pct / 100;
    if (c->hot_n < 1)
        c->hot_n = 1;
    c->pattern = P->pattern;
}

uint64_t wl_step_page(const struct wl_params *P, unsigned w, uint64_t s)
{
    struct wl_cursor c;
    wl_cursor_init(&c, P, w);
    return wl_cursor_j(&c, s) * P->writers + w;
}

uint64_t wl_word(const struct wl_params *P, uint64_t p, uint64_t s, unsigned i)
{
    switch (i) {
    case 0: return WL_MAGIC_PAGE;
    case 1: return P->nonce ^ p;
    case 2: return s;
    case 3: return wl_check_word(P, p, s);
    default: return wl_body_base(P, p, s) ^ ((uint64_t)i * WL_GOLDEN);
    }
}

void wl_fill_page(const struct wl_params *P, uint8_t *buf, uint64_t p, uint64_t s)
{
    uint64_t base = wl_body_base(P, p, s);
    wl_st(buf, 0, WL_MAGIC_PAGE);
    wl_st(buf, 1, P->nonce ^ p);
    wl_st(buf, 2, s);
    wl_st(buf, 3, wl_check_word(P, p, s));
    for (unsigned i = 4; i < WL_WORDS; i++)
        wl_st(buf, i, base ^ ((uint64_t)i * WL_GOLDEN));
}

void wl_fill_dup(const struct wl_params *P, uint8_t *buf, unsigned k)
{
    for (unsigned i = 0; i < WL_WORDS; i++)
        wl_st(buf, i, wl_dup_word(P, k, i));
}

void wl_write_step(const struct wl_params *P, uint64_t *page, uint64_t p, uint64_t s)
{
    uint64_t base = wl_body_base(P, p, s);
    /* header first: a torn page always names the step it was being
     * overwritten with, so both of its versions are known */
    __atomic_store_n(&page[2], WL_LE(s), __ATOMIC_RELAXED);
    __atomic_store_n(&page[3], WL_LE(wl_check_word(P, p, s)), __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (unsigned i = 4; i < WL_WORDS; i++)
        page[i] = WL_LE(base ^ ((uint64_t)i * WL_GOLDEN));
}

/* ---- checksum ---- */
#define XP1 0x9E3779B185EBCA87ull
#define XP2 0xC2B2AE3D27D4EB4Full
static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t xround(uint64_t v, uint64_t x) { return rotl(v + x * XP2, 31) * XP1; }

uint64_t wl_page_hash(const uint8_t *pg)
{
    uint64_t v0 = WL_GOLDEN, v1 = 2 * WL_GOLDEN, v2 = 3 * WL_GOLDEN, v3 = 4 * WL_GOLDEN;
    for (unsigned i = 0; i < WL_WORDS; i += 4) {
        v0 = xround(v0, wl_ld(pg, i));
        v1 = xround(v1, wl_ld(pg, i + 1));
        v2 = xround(v2, wl_ld(pg, i + 2));
        v3 = xround(v3, wl_ld(pg, i + 3));
    }
    return wl_mix(rotl(v0, 1) + rotl(v1, 7) + rotl(v2, 12) + rotl(v3, 18));
}

static uint64_t version_hash(const struct wl_params *P, uint64_t p, uint64_t s)
{
    uint64_t buf[WL_WORDS];
    wl_fill_page(P, (uint8_t *)buf, p, s);
    return wl_page_hash((const uint8_t *)buf);
}

/* ---- meta page ---- */
uint64_t wl_meta_check(const uint8_t *m)
{
    return wl_h3(WL_K_META ^ wl_ld(m, WL_M_SEED), wl_ld(m, WL_M_NONCE) ^ wl_ld(m, WL_M_NPAGES),
                 wl_ld(m, WL_M_CONFIG));
}

void wl_meta_init(uint8_t *m, const struct wl_params *P)
{
    memset(m, 0, WL_PAGE);
    wl_st(m, WL_M_MAGIC, WL_MAGIC_META);
    wl_st(m, WL_M_NONCE, P->nonce);
    wl_st(m, WL_M_SEED, P->seed);
    wl_st(m, WL_M_NPAGES, P->npages);
    wl_st(m, WL_M_CONFIG, (uint64_t)P->writers | (uint64_t)P->pattern << 8 |
                              (uint64_t)P->hot_pct << 16 | (uint64_t)WL_META_FORMAT << 32);
    wl_st(m, WL_M_CHECK, wl_meta_check(m));
    wl_st(m, WL_M_PHASE, WL_PHASE_FILLING);
}

const char *wl_meta_parse(const uint8_t *m, struct wl_params *P, uint64_t *committed)
{
    const char *err;
    uint64_t cfg = wl_ld(m, WL_M_CONFIG);
    if (wl_ld(m, WL_M_MAGIC) != WL_MAGIC_META)
        return "metadata page: bad magic";
    if (wl_ld(m, WL_M_CHECK) != wl_meta_check(m))
        return "metadata page: check word mismatch (corrupt metadata)";
    if ((cfg >> 32) != WL_META_FORMAT)
        return "metadata page: unknown format version";
    P->nonce = wl_ld(m, WL_M_NONCE);
    P->seed = wl_ld(m, WL_M_SEED);
    P->npages = wl_ld(m, WL_M_NPAGES);
    P->writers = (unsigned)(cfg & 0xFF);
    P->pattern = (int)((cfg >> 8) & 0xFF);
    P->hot_pct = (unsigned)((cfg >> 16) & 0xFFFF);
    if ((err = wl_params_check(P)) != NULL)
        return err;
    for (unsigned w = 0; w < P->writers; w++) {
        committed[w] = wl_ld(m, WL_M_COMMITTED(w));
        if (committed[w] > WL_MAX_STEP)
            return "metadata page: implausible committed step";
    }
    return NULL;
}

/* ---- replay ---- */
void wl_replay(const struct wl_params *P, const uint64_t *C, uint64_t *last)
{
    unsigned W = P->writers;
    memset(last, 0, P->npages * sizeof(uint64_t));
    for (unsigned w = 0; w < W; w++) {
        struct wl_cursor c;
        wl_cursor_init(&c, P, w);
        if (c.pattern == WL_PAT_SEQUENTIAL) {
            /* closed form of the loop below: step s writes j = (s-1) % n */
            for (uint64_t j = 0; j < c.n; j++) {
                uint64_t s = 0;
                if (C[w] >= c.n)
                    s = C[w] - ((C[w] - 1 - j) % c.n);
                else if (j < C[w])
                    s = j + 1;
                last[j * W + w] = s;
            }
            continue;
        }
        for (uint64_t s = 1; s <= C[w]; s++)
            last[wl_cursor_j(&c, s) * W + w] = s;
    }
}

/* ---- verify ---- */
static int page_equals(const struct wl_params *P, const uint8_t *f, uint64_t p, uint64_t s)
{
    uint64_t base = wl_body_base(P, p, s), diff = 0;
    if (wl_ld(f, 0) != WL_MAGIC_PAGE || wl_ld(f, 1) != (P->nonce ^ p) || wl_ld(f, 2) != s ||
        wl_ld(f, 3) != wl_check_word(P, p, s))
        return 0;
    for (unsigned i = 4; i < WL_WORDS; i++)
        diff |= wl_ld(f, i) ^ base ^ ((uint64_t)i * WL_GOLDEN);
    return diff == 0;
}

/* word-wise comparison with two versions: counts of words equal to only
 * the old one, only the new one, and to neither */
struct mixcount { unsigned old_only, new_only, neither; };

static struct mixcount mix_count(const struct wl_params *P, const uint8_t *f, uint64_t p,
                                 uint64_t so, uint64_t sn)
{
    struct mixcount mc = {0, 0, 0};
    uint64_t bo = wl_body_base(P, p, so), bn = wl_body_base(P, p, sn);
    uint64_t co = wl_check_word(P, p, so), cn = wl_check_word(P, p, sn);
    for (unsigned i = 0; i < WL_WORDS; i++) {
        uint64_t a = wl_ld(f, i), o, n;
        switch (i) {
        case 0: o = n = WL_MAGIC_PAGE; break;
        case 1: o = n = P->nonce ^ p; break;
        case 2: o = so; n = sn; break;
        case 3: o = co; n = cn; break;
        default: o = bo ^ ((uint64_t)i * WL_GOLDEN); n = bn ^ ((uint64_t)i * WL_GOLDEN);
        }
        if (a == o && a == n)
            continue;
        if (a == o)
            mc.old_only++;
        else if (a == n)
            mc.new_only++;
        else
            mc.neither++;
    }
    return mc;
}

/* why does page p (expected version e, writer committed Cw) not match? */
static int classify(const struct wl_params *P, const struct wl_cursor *c, const uint8_t *f,
                    uint64_t p, uint64_t e, uint64_t Cw)
{
    uint64_t s = wl_ld(f, 2), j = p / P->writers;
    struct mixcount mc;
    if (s == e || s > WL_MAX_STEP)
        return WL_GARBAGE;
    if (page_equals(P, f, p, s)) {
        if (s > Cw)
            return WL_LATER_STEP;
        if (s < e && (s == 0 || wl_cursor_j(c, s) == j))
            return WL_EARLIER_STEP;
        return WL_WRONG_VERSION;
    }
    /* header names another step: a mix of that version and the expected
     * one with at least one body/check word of each is a torn write */
    mc = mix_count(P, f, p, e, s);
    if (mc.neither == 0 && mc.old_only > 0 && mc.new_only > 1)
        return WL_TORN_NONINFLIGHT;
    return WL_GARBAGE;
}

static void add_bad(struct wl_vresult *R, uint64_t p, int kind, uint64_t found, uint64_t exp)
{
    R->bad_pages++;
    R->kind_count[kind]++;
    if (R->nbad_first < WL_BAD_FIRST) {
        struct wl_bad *b = &R->bad_first[R->nbad_first++];
        b->page = p;
        b->kind = kind;
        b->found_step = found;
        b->expected_step = exp;
    }
}

int wl_verify(const struct wl_params *P, const uint64_t *C, const uint8_t *const *pages,
              const uint8_t *ambiguous, struct wl_vresult *R)
{
    unsigned W = P->writers;
    uint64_t *last, ip[WL_MAX_WRITERS];
    struct wl_cursor cur[WL_MAX_WRITERS];
    uint64_t cs = WL_CSUM_INIT, ecs = WL_CSUM_INIT, ncs = WL_CSUM_INIT;

    memset(R, 0, sizeof(*R));
    R->npages = P->npages;
    R->writers = W;
    last = malloc(P->npages * sizeof(uint64_t));
    if (!last)
        return -1;
    wl_replay(P, C, last);
    for (unsigned w = 0; w < W; w++) {
        R->committed[w] = C[w];
        R->steps_total += C[w];
        wl_cursor_init(&cur[w], P, w);
        ip[w] = wl_cursor_j(&cur[w], C[w] + 1) * W + w;
        R->inflight[w].page = ip[w];
        R->inflight[w].old_step = last[ip[w]];
        R->inflight[w].new_step = C[w] + 1;
        R->inflight[w].state = WL_IF_BAD;
    }
    for (uint64_t p = 0; p < P->npages; p++) {
        unsigned w = (unsigned)(p % W);
        uint64_t e = last[p], ph, eh, nh;
        const uint8_t *f = pages[p];
        int kind = WL_OK, inflight = (p == ip[w]);
        if (!f) {
            kind = WL_MISSING;
            ph = 0;
            eh = version_hash(P, p, e);
            nh = inflight ? version_hash(P, p, C[w] + 1) : eh;
        } else {
            R->pages_found++;
            ph = wl_page_hash(f);
            if (inflight) {
                struct mixcount mc = mix_count(P, f, p, e, C[w] + 1);
                int st = mc.neither ? WL_IF_BAD
                         : mc.new_only == 0 ? WL_IF_OLD
                         : mc.old_only == 0 ? WL_IF_NEW : WL_IF_TORN;
                R->inflight[w].state = st;
                eh = st == WL_IF_OLD ? ph : version_hash(P, p, e);
                nh = st == WL_IF_NEW ? ph : version_hash(P, p, C[w] + 1);
                if (st == WL_IF_BAD)
                    kind = classify(P, &cur[w], f, p, e, C[w]);
            } else if (page_equals(P, f, p, e)) {
                eh = nh = ph;
            } else {
                kind = classify(P, &cur[w], f, p, e, C[w]);
                eh = nh = version_hash(P, p, e);
            }
            if (ambiguous && ambiguous[p])
                kind = WL_AMBIGUOUS;
        }
        if (kind != WL_OK)
            add_bad(R, p, kind, f ? wl_ld(f, 2) : 0, e);
        cs = wl_csum_add(cs, ph);
        ecs = wl_csum_add(ecs, eh);
        ncs = wl_csum_add(ncs, nh);
    }
    R->checksum = cs;
    R->expected_checksum = ecs;
    R->expected_checksum_next = ncs;
    free(last);
    return 0;
}

/* bgsnap-wl journal: fixed-size records appended to a file and fsynced one
 * by one, each tied to the writers' committed steps (docs/disk.md).  The
 * whole-VM snapshot test restores a disk and the RAM taken at one instant
 * and checks that the journal on the disk agrees with the RAM. */
#ifndef WL_JOURNAL_H
#define WL_JOURNAL_H

#include <stdint.h>

#include "wl_util.h"

/* "BGSWLJR1" / "BGSWLJS1" read as little-endian words */
#define WL_MAGIC_JREC 0x31524A4C57534742ull
#define WL_MAGIC_JSTATE 0x31534A4C57534742ull
/* "jrnl_rec": the record's check word */
#define WL_K_JREC 0x6365725F6C6E726Aull
#define WL_JREC_BYTES 64u
#define WL_JOURNAL_MS_DEFAULT 10u

/* record words (one record = 8 little-endian u64 at (seq - 1) * 64) */
enum {
    WL_JR_MAGIC = 0, WL_JR_NONCE = 1, WL_JR_SEQ = 2, WL_JR_STEP = 3, WL_JR_TIME_NS = 4,
    WL_JR_PREV_FSYNC_NS = 5, WL_JR_RESERVED = 6, WL_JR_CHECK = 7,
};
/* state page words (one page of its own, mlocked; found in a RAM dump by
 * magic + nonce) */
enum {
    WL_JS_MAGIC = 0, WL_JS_NONCE = 1, WL_JS_CHECK = 2, WL_JS_RECORD_BYTES = 3,
    WL_JS_PENDING_SEQ = 4, /* stored before the record's write: it may be on disk */
    WL_JS_DURABLE_SEQ = 5, /* stored after its fsync returned: it must be on disk */
    WL_JS_DURABLE_STEP = 6, WL_JS_ERRORS = 7, WL_JS_FSYNC_MAX_NS = 8,
    WL_JS_FSYNC_TOTAL_NS = 9, WL_JS_INTERVAL_MS = 10,
};

static inline uint64_t wl_jrec_check(const uint64_t *w)
{
    return wl_h3(WL_K_JREC ^ w[WL_JR_NONCE], w[WL_JR_SEQ] ^ w[WL_JR_STEP],
                 w[WL_JR_TIME_NS] ^ w[WL_JR_PREV_FSYNC_NS] ^ w[WL_JR_RESERVED]);
}
static inline uint64_t wl_jstate_check(uint64_t nonce)
{
    return wl_h3(WL_K_JREC ^ nonce, WL_MAGIC_JSTATE, WL_JREC_BYTES);
}

/* Start the journal thread: create (truncate) ``path``, then every
 * ``interval_ms`` append one record whose step is the sum of the committed
 * steps in ``meta`` and fsync it.  0 on success, else -1 with a message
 * on stderr. */
int wl_journal_start(const char *path, unsigned interval_ms, uint64_t nonce,
                     const uint8_t *meta, unsigned writers);
void wl_journal_stop(void);
/* appends "\"journal\":{...}," or "\"journal\":null," to b */
void wl_journal_json(struct sbuf *b);

#endif

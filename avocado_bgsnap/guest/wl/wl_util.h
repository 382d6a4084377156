/* bgsnap-wl helpers shared by the subcommands: string buffer, JSON of a
 * verify result, number parsing, clocks. */
#ifndef WL_UTIL_H
#define WL_UTIL_H

#include <stdint.h>

#include "wl_core.h"

#define WL_PREFIX "#WL# "

struct sbuf {
    char *s;
    size_t len, cap;
};
void sb_init(struct sbuf *b);
void sb_free(struct sbuf *b);
void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_json_str(struct sbuf *b, const char *s); /* quoted, escaped */

/* appends the verify fields (no braces) to b */
void wl_result_json(struct sbuf *b, const struct wl_vresult *R);
/* the same with the verdict given (verify-dump: the duplicate region too) */
void wl_result_json_clean(struct sbuf *b, const struct wl_vresult *R, int clean);

/* decimal or 0x-hex u64; 0 on success, -1 if malformed/out of range */
int wl_parse_u64(const char *s, uint64_t *out);
int wl_parse_double(const char *s, double *out);

uint64_t wl_now_ns(void); /* CLOCK_MONOTONIC */

/* Cheap timestamps for the per-write latency: the time-stamp counter
 * (rdtsc) once wl_ticks_calibrate() has scaled it against CLOCK_MONOTONIC
 * and found it sane, else CLOCK_MONOTONIC itself.  Under TCG a rdtsc costs
 * the writers far less than clock_gettime's vDSO path. */
void wl_ticks_calibrate(void);
uint64_t wl_ticks(void);
uint64_t wl_ticks_ns(uint64_t from, uint64_t to); /* 0 if to < from */

#endif

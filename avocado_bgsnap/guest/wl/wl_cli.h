/* bgsnap-wl: parsed command line and the subcommand entry points. */
#ifndef WL_CLI_H
#define WL_CLI_H

#include "wl_core.h"

/* --socket unset: the first of these directories that exists and is
 * writable holds the control socket (`run`); `ctl` asks each in turn.  No
 * guest layout is assumed: /run may be missing, /tmp read-only. */
#define WL_SOCKET_NAME "bgsnap-wl.sock"
#define WL_SOCKET_DIRS {"/run", "/tmp", "/dev/shm", "/var/tmp", NULL}
#define WL_IF_NONE (-1)

struct wl_opts {
    struct wl_params P;      /* npages = mib * 256 */
    uint64_t mib;
    uint64_t dup_mib;        /* --dup-mib: the duplicate region (0 = none) */
    int have_mib, have_seed, have_nonce, have_writers, have_pattern, have_hot;
    double rate_mib_s;       /* 0 = unlimited */
    int latency;             /* 0 with --no-latency */
    int tune;                /* --tune: set what the guest needs (run; guests only) */
    const char *socket, *dump, *out; /* socket NULL: WL_SOCKET_DIRS */
    uint64_t steps[WL_MAX_WRITERS];
    unsigned nsteps;
    uint64_t shuffle, garbage;
    uint64_t dup_gen[2];     /* gen --dup-pages: frames of D0 and of D1 to add */
    int have_shuffle;
    int inflight[WL_MAX_WRITERS]; /* WL_IF_NONE or WL_IF_OLD/NEW/TORN */
    double seconds;          /* selfcheck writer benchmark */
    const char *journal;     /* run --journal FILE: fsynced records (docs/disk.md) */
    uint64_t journal_ms;     /* run --journal-ms: one record every N ms */
    const char *cmd, *arg;   /* ctl */
};

int wl_cmd_run(const struct wl_opts *o);
int wl_cmd_ctl(const struct wl_opts *o);
int wl_cmd_selfcheck(const struct wl_opts *o);
int wl_cmd_verify_dump(const struct wl_opts *o);
int wl_cmd_gen(const struct wl_opts *o);

#endif

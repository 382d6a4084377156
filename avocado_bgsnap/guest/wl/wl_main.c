/* bgsnap-wl: argument parsing and dispatch. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wl_cli.h"
#include "wl_journal.h"
#include "wl_util.h"

static const char usage[] =
    "usage:\n"
    "  bgsnap-wl run --mib N --seed S --nonce X [--writers W] [--pattern P]\n"
    "                [--hot-pct H] [--rate MIBS] [--no-latency] [--socket PATH]\n"
    "                [--dup-mib N] [--tune] [--journal FILE [--journal-ms N]]\n"
    "  bgsnap-wl ctl [--socket PATH] status|mark N|freeze|thaw|verify [thaw]|dupwrite|quit\n"
    "  bgsnap-wl verify-dump --dump FILE --seed S --nonce X [--mib N] [--writers W]\n"
    "                [--pattern P] [--hot-pct H] [--dup-mib N]\n"
    "  bgsnap-wl gen --out FILE --mib N --seed S --nonce X --writers W --pattern P\n"
    "                [--hot-pct H] --steps C1[,C2,...] [--shuffle SEED] [--garbage N]\n"
    "                [--inflight W:old|new|torn ...] [--dup-pages D0,D1]\n"
    "  bgsnap-wl selfcheck --mib N [--seed S] [--writers W] [--pattern P]\n"
    "                [--seconds T] [--no-latency] [--rate MIBS]\n"
    "patterns: random sequential hot mixed\n";

static int die_usage(const char *cmd, const char *msg, const char *val)
{
    if (cmd && strcmp(cmd, "verify-dump") == 0) {
        /* the verify-dump contract: one reply line on stdout, exit 2 */
        char buf[512];
        struct sbuf b;
        snprintf(buf, sizeof(buf), "%s%s%s", msg, val ? ": " : "", val ? val : "");
        sb_init(&b);
        sb_printf(&b, WL_PREFIX "{\"ok\":false,\"cmd\":\"verify-dump\",\"error\":");
        sb_json_str(&b, buf);
        sb_printf(&b, "}\n");
        fputs(b.s, stdout);
        sb_free(&b);
    }
    fprintf(stderr, "bgsnap-wl %s: %s%s%s\n%s", cmd ? cmd : "", msg, val ? ": " : "",
            val ? val : "", usage);
    return 2;
}

static int parse_steps(struct wl_opts *o, const char *v)
{
    char *copy = strdup(v), *save = NULL;
    o->nsteps = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->nsteps >= WL_MAX_WRITERS || wl_parse_u64(t, &o->steps[o->nsteps]) ||
            o->steps[o->nsteps] > WL_MAX_STEP) {
            free(copy);
            return -1;
        }
        o->nsteps++;
    }
    free(copy);
    return o->nsteps ? 0 : -1;
}

static int parse_inflight(struct wl_opts *o, const char *v)
{
    uint64_t w;
    char num[32];
    const char *colon = strchr(v, ':');
    size_t n = colon ? (size_t)(colon - v) : 0;
    if (!colon || n == 0 || n >= sizeof(num))
        return -1;
    memcpy(num, v, n);
    num[n] = 0;
    if (wl_parse_u64(num, &w) || w >= WL_MAX_WRITERS)
        return -1;
    if (strcmp(colon + 1, "old") == 0)
        o->inflight[w] = WL_IF_OLD;
    else if (strcmp(colon + 1, "new") == 0)
        o->inflight[w] = WL_IF_NEW;
    else if (strcmp(colon + 1, "torn") == 0)
        o->inflight[w] = WL_IF_TORN;
    else
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    struct wl_opts o;
    const char *cmd;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;

    memset(&o, 0, sizeof(o));
    o.P.writers = 1;
    o.P.pattern = WL_PAT_RANDOM;
    o.P.hot_pct = 10;
    o.latency = 1;
    o.socket = NULL; /* the first usable of WL_SOCKET_DIRS */
    o.seconds = 0;
    o.journal_ms = WL_JOURNAL_MS_DEFAULT;
    for (unsigned w = 0; w < WL_MAX_WRITERS; w++)
        o.inflight[w] = WL_IF_NONE;
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        char name[32];
        const char *a = argv[i], *v = NULL, *eq;
        uint64_t u;
        if (strncmp(a, "--", 2) != 0 || (strcmp(cmd, "ctl") == 0 && npos > 0)) {
            if (npos >= 2)
                return die_usage(cmd, "too many arguments", a);
            pos[npos++] = a;
            continue;
        }
        eq = strchr(a, '=');
        if (eq) {
            size_t n = (size_t)(eq - a);
            if (n >= sizeof(name))
                return die_usage(cmd, "unknown option", a);
            memcpy(name, a, n);
            name[n] = 0;
            v = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", a);
        }
        if (strcmp(name, "--no-latency") == 0) {
            o.latency = 0;
            continue;
        }
        if (strcmp(name, "--tune") == 0) {
            o.tune = 1;
            continue;
        }
        if (!v) {
            if (i + 1 >= argc)
                return die_usage(cmd, "option needs a value", a);
            v = argv[++i];
        }
        if (strcmp(name, "--mib") == 0) {
            if (wl_parse_u64(v, &o.mib) || o.mib < 1 || o.mib > (1u << 20))
                return die_usage(cmd, "--mib must be 1..1048576", v);
            o.have_mib = 1;
        } else if (strcmp(name, "--dup-mib") == 0) {
            if (wl_parse_u64(v, &o.dup_mib) || o.dup_mib > (1u << 20))
                return die_usage(cmd, "--dup-mib must be 0..1048576", v);
        } else if (strcmp(name, "--dup-pages") == 0) {
            char *comma = strchr(v, ',');
            char num[32];
            size_t n = comma ? (size_t)(comma - v) : 0;
            if (!comma || n == 0 || n >= sizeof(num))
                return die_usage(cmd, "--dup-pages must be N0,N1", v);
            memcpy(num, v, n);
            num[n] = 0;
            if (wl_parse_u64(num, &o.dup_gen[0]) || wl_parse_u64(comma + 1, &o.dup_gen[1]) ||
                o.dup_gen[0] > (1u << 24) || o.dup_gen[1] > (1u << 24))
                return die_usage(cmd, "--dup-pages must be N0,N1", v);
        } else if (strcmp(name, "--seed") == 0) {
            if (wl_parse_u64(v, &o.P.seed))
                return die_usage(cmd, "bad --seed", v);
            o.have_seed = 1;
        } else if (strcmp(name, "--nonce") == 0) {
            if (wl_parse_u64(v, &o.P.nonce))
                return die_usage(cmd, "bad --nonce", v);
            o.have_nonce = 1;
        } else if (strcmp(name, "--writers") == 0) {
            if (wl_parse_u64(v, &u) || u < 1 || u > WL_MAX_WRITERS)
                return die_usage(cmd, "--writers must be 1..64", v);
            o.P.writers = (unsigned)u;
            o.have_writers = 1;
        } else if (strcmp(name, "--pattern") == 0) {
            if ((o.P.pattern = wl_pattern_parse(v)) < 0)
                return die_usage(cmd, "--pattern must be random|sequential|hot|mixed", v);
            o.have_pattern = 1;
        } else if (strcmp(name, "--hot-pct") == 0) {
            if (wl_parse_u64(v, &u) || u < 1 || u > 100)
                return die_usage(cmd, "--hot-pct must be 1..100", v);
            o.P.hot_pct = (unsigned)u;
            o.have_hot = 1;
        } else if (strcmp(name, "--rate") == 0) {
            if (wl_parse_double(v, &o.rate_mib_s) || o.rate_mib_s < 0)
                return die_usage(cmd, "--rate must be >= 0 (MiB/s, 0 = unlimited)", v);
        } else if (strcmp(name, "--socket") == 0) {
            o.socket = v;
        } else if (strcmp(name, "--journal") == 0) {
            o.journal = v;
        } else if (strcmp(name, "--journal-ms") == 0) {
            if (wl_parse_u64(v, &o.journal_ms) || o.journal_ms > 60000)
                return die_usage(cmd, "--journal-ms must be 0..60000", v);
        } else if (strcmp(name, "--dump") == 0) {
            o.dump = v;
        } else if (strcmp(name, "--out") == 0) {
            o.out = v;
        } else if (strcmp(name, "--steps") == 0) {
            if (parse_steps(&o, v))
                return die_usage(cmd, "--steps must be C or C1,C2,... (one per writer)", v);
        } else if (strcmp(name, "--shuffle") == 0) {
            if (wl_parse_u64(v, &o.shuffle))
                return die_usage(cmd, "bad --shuffle", v);
            o.have_shuffle = 1;
        } else if (strcmp(name, "--garbage") == 0) {
            if (wl_parse_u64(v, &o.garbage) || o.garbage > (1u << 24))
                return die_usage(cmd, "bad --garbage", v);
        } else if (strcmp(name, "--inflight") == 0) {
            if (parse_inflight(&o, v))
                return die_usage(cmd, "--inflight must be W:old|new|torn", v);
        } else if (strcmp(name, "--seconds") == 0) {
            if (wl_parse_double(v, &o.seconds) || o.seconds < 0 || o.seconds > 3600)
                return die_usage(cmd, "--seconds must be 0..3600", v);
        } else {
            return die_usage(cmd, "unknown option", a);
        }
    }
    o.P.npages = o.mib * (1024 * 1024 / WL_PAGE);

    if (strcmp(cmd, "ctl") == 0) {
        if (npos < 1)
            return die_usage(cmd, "missing command", NULL);
        o.cmd = pos[0];
        o.arg = pos[1];
        return wl_cmd_ctl(&o);
    }
    if (npos)
        return die_usage(cmd, "unexpected argument", pos[0]);
    if (strcmp(cmd, "run") == 0 || strcmp(cmd, "gen") == 0) {
        const char *err;
        if (!o.have_mib || !o.have_seed || !o.have_nonce)
            return die_usage(cmd, "--mib, --seed and --nonce are required", NULL);
        if ((err = wl_params_check(&o.P)) != NULL)
            return die_usage(cmd, err, NULL);
        if (strcmp(cmd, "run") == 0)
            return wl_cmd_run(&o);
        if (!o.out || !o.nsteps)
            return die_usage(cmd, "--out and --steps are required", NULL);
        if (o.nsteps != 1 && o.nsteps != o.P.writers)
            return die_usage(cmd, "--steps needs one value or one per writer", NULL);
        for (unsigned w = 0; w < WL_MAX_WRITERS; w++)
            if (o.inflight[w] != WL_IF_NONE && w >= o.P.writers)
                return die_usage(cmd, "--inflight names a writer that does not exist", NULL);
        return wl_cmd_gen(&o);
    }
    if (strcmp(cmd, "verify-dump") == 0) {
        if (!o.dump || !o.have_seed || !o.have_nonce)
            return die_usage(cmd, "--dump, --seed and --nonce are required", NULL);
        return wl_cmd_verify_dump(&o);
    }
    if (strcmp(cmd, "selfcheck") == 0) {
        const char *err;
        if (!o.have_mib)
            return die_usage(cmd, "--mib is required", NULL);
        if (!o.have_nonce)
            o.P.nonce = 0x5E1FC4EC4ull;
        if ((err = wl_params_check(&o.P)) != NULL)
            return die_usage(cmd, err, NULL);
        return wl_cmd_selfcheck(&o);
    }
    return die_usage(cmd, "unknown subcommand", cmd);
}

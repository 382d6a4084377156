/* userfaultfd: open, register, write-protect, and the fault handler thread. */
#define _GNU_SOURCE
#include "uc.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* What QEMU does (util/userfaultfd.c): the syscall, then /dev/userfaultfd;
 * user-mode-only last, which is enough for faults from user space. */
static int open_raw(char *how, size_t howlen)
{
    const int flags = O_CLOEXEC | O_NONBLOCK;
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd >= 0) {
        snprintf(how, howlen, "syscall");
        return fd;
    }
    int first = errno;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        close(dev);
        if (fd >= 0) {
            snprintf(how, howlen, "/dev/userfaultfd");
            return fd;
        }
    }
    fd = (int)syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
    if (fd >= 0) {
        snprintf(how, howlen, "syscall, user-mode-only");
        return fd;
    }
    errno = first;
    return -1;
}

int uffd_probe(uint64_t *features, char *how, size_t howlen, char *err, size_t errlen)
{
    int fd = open_raw(how, howlen);
    if (fd < 0) {
        snprintf(err, errlen, "userfaultfd cannot be opened: %s", strerror(errno));
        return -1;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    int rc = ioctl(fd, UFFDIO_API, &api);
    int e = errno;
    close(fd);
    if (rc) {
        snprintf(err, errlen, "UFFDIO_API: %s", strerror(e));
        return -1;
    }
    *features = api.features;
    return 0;
}

int uffd_open(struct uffd *u, uint64_t features, char *err, size_t errlen)
{
    char how[48];
    u->fd = open_raw(how, sizeof how);
    if (u->fd < 0) {
        snprintf(err, errlen, "userfaultfd cannot be opened: %s", strerror(errno));
        return -1;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(u->fd, UFFDIO_API, &api)) {
        int e = errno;
        snprintf(err, errlen, "UFFDIO_API(features 0x%llx): %s", (unsigned long long)features,
                 strerror(e));
        close(u->fd);
        u->fd = -1;
        /* EPERM: a feature this process may not ask for (EVENT_FORK needs
         * CAP_SYS_PTRACE), not a kernel defect */
        return e == EPERM ? UFFD_OPEN_NOT_PERMITTED : -1;
    }
    u->features = api.features;
    return 0;
}

void uffd_close(struct uffd *u)
{
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
}

int uffd_register_wp(struct uffd *u, uintptr_t addr, size_t len, char *err, size_t errlen)
{
    struct uffdio_register reg = {.range = {.start = addr, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(u->fd, UFFDIO_REGISTER, &reg)) {
        snprintf(err, errlen, "UFFDIO_REGISTER(MODE_WP): %s", strerror(errno));
        return -1;
    }
    if (!(reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT))) {
        snprintf(err, errlen, "the registered range offers no UFFDIO_WRITEPROTECT "
                 "(ioctls 0x%llx)", (unsigned long long)reg.ioctls);
        return -1;
    }
    return 0;
}

int uffd_wp(int fd, uintptr_t addr, size_t len, bool protect)
{
    struct uffdio_writeprotect wp = {.range = {.start = addr, .len = len},
                                     .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
    for (;;) {
        if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) == 0)
            return 0;
        if (errno != EAGAIN)  /* EAGAIN: the mm is changing (fork, mremap) */
            return -errno;
    }
}

/* QEMU's ram_write_tracking: save the page as it was, then let the write go. */
static void serve_fault(struct handler *h, uintptr_t addr)
{
    struct region *r = h->r;
    uintptr_t base = atomic_load(&r->base);
    uintptr_t page = addr & ~(uintptr_t)(r->unit - 1);
    if (page < base || page >= base + r->len) {
        atomic_fetch_add(&h->stray_faults, 1);
    } else {
        size_t idx = (page - base) / r->unit;
        unsigned char expect = 0;
        if (atomic_compare_exchange_strong(&r->state[idx], &expect, 1)) {
            memcpy(r->copy + idx * r->unit, (const void *)page, r->unit);
            atomic_store(&r->state[idx], 2);
            atomic_fetch_add(&h->copies, 1);
        } else {
            atomic_fetch_add(&h->dup_faults, 1);
        }
    }
    atomic_fetch_add(&h->wp_faults, 1);
    int rc = uffd_wp(h->u->fd, page, r->unit, false);
    if (rc) {
        atomic_fetch_add(&h->errors, 1);
        atomic_store(&h->last_errno, -rc);
    }
}

/* A forked child's uffd (UFFD_EVENT_FORK): let its writes go, count them. */
static void serve_child_fault(struct handler *h, int fd, uintptr_t addr)
{
    uintptr_t page = addr & ~(uintptr_t)(h->r->unit - 1);
    atomic_fetch_add(&h->child_faults, 1);
    int rc = uffd_wp(fd, page, h->r->unit, false);
    if (rc) {
        atomic_fetch_add(&h->errors, 1);
        atomic_store(&h->last_errno, -rc);
    }
}

static void drop_child(struct handler *h, int fd)
{
    for (int i = 0; i < h->nchild; i++)
        if (h->child_fds[i] == fd) {
            close(fd);
            h->child_fds[i] = h->child_fds[--h->nchild];
            return;
        }
}

static void drain(struct handler *h, int fd, bool child)
{
    struct uffd_msg msgs[16];
    for (;;) {
        ssize_t got = read(fd, msgs, sizeof msgs);
        if (got < 0 && errno == EAGAIN)
            return;
        if (got <= 0) {
            if (got < 0 && errno == EINTR)
                continue;
            if (child) {
                drop_child(h, fd);
            } else {
                atomic_fetch_add(&h->errors, 1);
                atomic_store(&h->last_errno, got < 0 ? errno : 0);
            }
            return;
        }
        for (size_t i = 0; i < (size_t)got / sizeof msgs[0]; i++) {
            struct uffd_msg *m = &msgs[i];
            switch (m->event) {
            case UFFD_EVENT_PAGEFAULT:
                if (!(m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP))
                    atomic_fetch_add(&h->missing_faults, 1);
                else if (child)
                    serve_child_fault(h, fd, m->arg.pagefault.address);
                else
                    serve_fault(h, m->arg.pagefault.address);
                break;
            case UFFD_EVENT_FORK:
                atomic_fetch_add(&h->fork_events, 1);
                if (h->nchild < MAX_CHILD_FDS)
                    h->child_fds[h->nchild++] = (int)m->arg.fork.ufd;
                else
                    close((int)m->arg.fork.ufd);
                break;
            case UFFD_EVENT_REMAP:
                atomic_fetch_add(&h->remap_events, 1);
                atomic_store(&h->remap_to, (uintptr_t)m->arg.remap.to);
                if ((uintptr_t)m->arg.remap.from == atomic_load(&h->r->base))
                    atomic_store(&h->r->base, (uintptr_t)m->arg.remap.to);
                break;
            default:
                atomic_fetch_add(&h->other_events, 1);
            }
        }
    }
}

static void *handler_main(void *arg)
{
    struct handler *h = arg;
    for (;;) {
        struct pollfd pfd[2 + MAX_CHILD_FDS];
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = h->stopfd, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = h->u->fd, .events = POLLIN};
        for (int i = 0; i < h->nchild; i++)
            pfd[n++] = (struct pollfd){.fd = h->child_fds[i], .events = POLLIN};
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            atomic_fetch_add(&h->errors, 1);
            atomic_store(&h->last_errno, errno);
            return NULL;
        }
        if (pfd[0].revents)
            return NULL;
        if (pfd[1].revents)
            drain(h, h->u->fd, false);
        for (int i = 2; i < n; i++) {
            if (pfd[i].revents & POLLIN)
                drain(h, pfd[i].fd, true);
            else if (pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL))
                drop_child(h, pfd[i].fd);
        }
    }
}

int handler_start(struct handler *h, struct uffd *u, struct region *r)
{
    memset(h, 0, sizeof *h);
    h->u = u;
    h->r = r;
    h->stopfd = eventfd(0, EFD_CLOEXEC);
    if (h->stopfd < 0)
        return -errno;
    int rc = pthread_create(&h->thread, NULL, handler_main, h);
    if (rc) {
        close(h->stopfd);
        return -rc;
    }
    return 0;
}

void handler_stop(struct handler *h)
{
    uint64_t one = 1;
    if (write(h->stopfd, &one, sizeof one) != sizeof one)
        atomic_fetch_add(&h->errors, 1);
    pthread_join(h->thread, NULL);
    close(h->stopfd);
    while (h->nchild)
        drop_child(h, h->child_fds[0]);
}

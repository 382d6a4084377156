"""userfaultfd: the features the host kernel offers this process.

:func:`probe_uffd` opens a userfaultfd the ways QEMU can
(``UFFD_FEATURE_PAGEFAULT_FLAG_WP`` is what background-snapshot needs).
No work at import time.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import _errno_text

# util/userfaultfd.c: QEMU opens /dev/userfaultfd (when it may) since 8.0;
# before that, and as fallback, the userfaultfd syscall -- never with
# UFFD_USER_MODE_ONLY.
UFFD_DEV_SINCE = (8, 0, 0)
UFFD_DEVICE = "/dev/userfaultfd"

# include/uapi/linux/userfaultfd.h, by bit number; Debian 12's header stops
# at 12, newer bits are defined by value here.
UFFD_FEATURE_BITS: dict[str, int] = {
    "PAGEFAULT_FLAG_WP": 0,
    "EVENT_FORK": 1,
    "EVENT_REMAP": 2,
    "EVENT_REMOVE": 3,
    "MISSING_HUGETLBFS": 4,
    "MISSING_SHMEM": 5,
    "EVENT_UNMAP": 6,
    "SIGBUS": 7,
    "THREAD_ID": 8,
    "MINOR_HUGETLBFS": 9,
    "MINOR_SHMEM": 10,
    "EXACT_ADDRESS": 11,
    "WP_HUGETLBFS_SHMEM": 12,
    "WP_UNPOPULATED": 13,
    "POISON": 14,
    "WP_ASYNC": 15,
    "MOVE": 16,
}
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << UFFD_FEATURE_BITS["PAGEFAULT_FLAG_WP"]
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << UFFD_FEATURE_BITS["WP_HUGETLBFS_SHMEM"]
UFFD_FEATURE_WP_UNPOPULATED = 1 << UFFD_FEATURE_BITS["WP_UNPOPULATED"]
UFFD_FEATURE_WP_ASYNC = 1 << UFFD_FEATURE_BITS["WP_ASYNC"]

UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1
UFFDIO_API = 0xC018AA3F            # _IOWR(0xAA, 0x3F, struct uffdio_api)
USERFAULTFD_IOC_NEW = 0xAA00       # _IO(0xAA, 0x00), on /dev/userfaultfd
USERFAULTFD_SYSCALL = {"x86_64": 323, "aarch64": 282}

# How the probe obtained its descriptor (QEMU never passes UFFD_USER_MODE_ONLY).
UFFD_MODE_SYSCALL = "syscall"
UFFD_MODE_DEVICE = "dev"
UFFD_MODE_USER_ONLY = "user-mode-only"


def uffd_feature_names(features: int) -> list[str]:
    """Names of the bits set in ``features`` (unknown bits as ``BIT<n>``)."""
    by_bit = {bit: name for name, bit in UFFD_FEATURE_BITS.items()}
    return [by_bit.get(bit, f"BIT{bit}") for bit in range(max(features.bit_length(), 0))
            if features >> bit & 1]


@dataclass(frozen=True)
class UffdInfo:
    """userfaultfd as the host kernel offers it to this process."""

    available: bool
    features: int = 0
    reason: str = ""
    # UFFD_MODE_*: "syscall" is what every QEMU can use.
    open_mode: str = ""

    @property
    def wp(self) -> bool:
        return bool(self.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)

    @property
    def wp_hugetlbfs_shmem(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

    @property
    def wp_unpopulated(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_UNPOPULATED)

    @property
    def wp_async(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_ASYNC)

    def feature_names(self) -> list[str]:
        return uffd_feature_names(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "features": hex(self.features),
            "feature_names": self.feature_names(),
            "wp": self.wp,
            "wp_hugetlbfs_shmem": self.wp_hugetlbfs_shmem,
            "reason": self.reason,
            "open_mode": self.open_mode,
        }


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


def _unprivileged_uffd_setting() -> str:
    try:
        return Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip()
    except OSError:
        return "?"


def probe_uffd() -> UffdInfo:
    """Open a userfaultfd, read the features the kernel reports, close it.

    Tries what QEMU can use first (the syscall, then ``/dev/userfaultfd``),
    then ``UFFD_USER_MODE_ONLY`` only to report the kernel's features.
    Never raises: a failure is ``available=False`` with the reason.
    """
    if os.uname().sysname != "Linux":
        return UffdInfo(False, reason=f"userfaultfd is Linux-only (host: {os.uname().sysname})")
    machine = os.uname().machine
    nr = USERFAULTFD_SYSCALL.get(machine)
    if nr is None:
        return UffdInfo(False, reason=f"userfaultfd syscall number unknown for {machine}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        return UffdInfo(False, reason=f"cannot load libc: {exc}")
    flags = os.O_CLOEXEC | os.O_NONBLOCK

    def via_syscall(extra: int) -> tuple[int, int]:
        fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(flags | extra))
        return fd, (ctypes.get_errno() if fd < 0 else 0)

    def via_device() -> tuple[int, int]:
        try:
            dev = os.open(UFFD_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return -1, exc.errno or errno.EIO
        try:
            fd = libc.ioctl(ctypes.c_int(dev), ctypes.c_ulong(USERFAULTFD_IOC_NEW),
                            ctypes.c_ulong(flags))
            return fd, (ctypes.get_errno() if fd < 0 else 0)
        finally:
            os.close(dev)

    failures = []
    fd, mode = -1, ""
    for mode, opener in ((UFFD_MODE_SYSCALL, lambda: via_syscall(0)),
                         (UFFD_MODE_DEVICE, via_device),
                         (UFFD_MODE_USER_ONLY, lambda: via_syscall(UFFD_USER_MODE_ONLY))):
        fd, err = opener()
        if fd >= 0:
            break
        failures.append((mode, err))
        if mode == UFFD_MODE_SYSCALL and err != errno.EPERM:
            break  # ENOSYS etc.: other ways will not help
    if fd < 0:
        mode_text = "; ".join(f"{m}: {_errno_text(e)}" for m, e in failures)
        reason = f"userfaultfd cannot be opened ({mode_text})"
        if failures and failures[0][1] == errno.ENOSYS:
            reason += ": kernel built without CONFIG_USERFAULTFD"
        elif any(e == errno.EPERM for _, e in failures):
            reason += (f": vm.unprivileged_userfaultfd={_unprivileged_uffd_setting()}; run as "
                       "root (CAP_SYS_PTRACE), set sysctl vm.unprivileged_userfaultfd=1, or "
                       f"grant access to {UFFD_DEVICE}")
        return UffdInfo(False, reason=reason)
    try:
        api = _UffdioApi(api=UFFD_API, features=0, ioctls=0)
        if libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(UFFDIO_API), ctypes.byref(api)) != 0:
            err = ctypes.get_errno()
            return UffdInfo(False, reason=f"UFFDIO_API failed: {_errno_text(err)}",
                            open_mode=mode)
        reason = ""
        if failures:
            reason = "opened via " + mode + " after " + "; ".join(
                f"{m}: {_errno_text(e)}" for m, e in failures)
        return UffdInfo(True, features=int(api.features), reason=reason, open_mode=mode)
    finally:
        os.close(fd)


# migration/options.c: QEMU's answer to background-snapshot=on when it cannot
# open a userfaultfd with write-protect (7.2 and 10.0 alike).
QEMU_NO_UFFD_WP = "Background-snapshot is not supported by host kernel"


@dataclass(frozen=True)
class UnprivilegedUffd:
    """What a QEMU run by an unprivileged user answers to background-snapshot=on."""

    accepted: bool
    via: str        # UFFD_MODE_SYSCALL / UFFD_MODE_DEVICE, "" when refused
    reason: str

    @property
    def refusal(self) -> str | None:
        """QEMU's error message when refused, else None."""
        return None if self.accepted else QEMU_NO_UFFD_WP


def predict_unprivileged_uffd(sysctl_value: str, dev_userfaultfd_mode: int | None,
                              qemu_version: tuple[int, ...]) -> UnprivilegedUffd:
    """Whether QEMU run by a user without CAP_SYS_PTRACE, neither owner of
    ``/dev/userfaultfd`` nor in its group, can turn background-snapshot on.

    ``sysctl_value``: ``vm.unprivileged_userfaultfd``; ``dev_userfaultfd_mode``:
    the device's ``st_mode`` (None: no device).  QEMU never passes
    ``UFFD_USER_MODE_ONLY`` (it needs kernel-mode faults too), so the open
    that works for any user here is not one QEMU makes: the syscall works
    with the sysctl at 1, and from 8.0 (:data:`UFFD_DEV_SINCE`) QEMU opens
    ``/dev/userfaultfd`` first, which works when others may read and write it.
    """
    if (dev_userfaultfd_mode is not None and tuple(qemu_version) >= UFFD_DEV_SINCE
            and dev_userfaultfd_mode & 0o006 == 0o006):
        return UnprivilegedUffd(True, UFFD_MODE_DEVICE,
                                f"QEMU {_version_text(qemu_version)} opens {UFFD_DEVICE}, "
                                f"mode {dev_userfaultfd_mode & 0o777:04o}")
    if sysctl_value.strip() == "1":
        return UnprivilegedUffd(True, UFFD_MODE_SYSCALL,
                                "vm.unprivileged_userfaultfd = 1: the syscall works for any user")
    device = ("no " + UFFD_DEVICE if dev_userfaultfd_mode is None
              else f"{UFFD_DEVICE} mode {dev_userfaultfd_mode & 0o777:04o}")
    if tuple(qemu_version) < UFFD_DEV_SINCE:
        device += f" (QEMU {_version_text(qemu_version)} does not use it)"
    return UnprivilegedUffd(False, "", f"vm.unprivileged_userfaultfd = {sysctl_value.strip()} "
                                       f"and {device}: the syscall gives EPERM")


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))

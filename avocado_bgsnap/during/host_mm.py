"""The host's memory management acting on QEMU's write-protected guest RAM
while a background snapshot streams it (docs/host-mm.md).

Each action is a :class:`~avocado_bgsnap.during.DuringSave` on the SOURCE
QEMU's guest RAM, found in ``/proc/PID/maps`` (:func:`guest_ram_ranges`):

* ``pageout``: ``process_madvise(MADV_PAGEOUT)`` reclaims it to swap (a
  swap file :func:`prepared` adds for the test);
* ``compact``: ``/proc/sys/vm/compact_memory`` migrates pages;
* ``thp_collapse``: ``process_madvise(MADV_COLLAPSE)`` per 2 MiB, in rounds
  until the save ends;
* ``ksm``: ksmd runs fast until the save ends (QEMU marks anonymous guest
  RAM mergeable, ``mem-merge`` on by default);
* ``numa_migrate``: ``migrate_pages`` between two host nodes (cancelled
  before any VM on a host with fewer).

Each records how much really happened: /proc/vmstat deltas, QEMU's swap,
RSS and THPs, KSM's counters, and from ``/proc/PID/pagemap`` how many guest
pages are present, swapped, still carry the uffd-wp bit, and changed
physical frame.  An action that changed nothing is "nothing happened"
(:meth:`nothing_happened`: the variant is an ERROR, not tested); a defect of
QEMU or the kernel shows as BAD pages of the exact verifier.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..host import ksm as host_ksm
from ..host import swap as host_swap
from ..host.errors import _errno_text, _read_text
from ..host.memory import HostMemoryUnavailable, parse_meminfo
from . import STREAMING, DuringSave, SaveContext

MIB = 2**20
PAGE = 4096
HUGE = 2 * MIB
# x86_64 syscall numbers and madvise advice values
SYS_MIGRATE_PAGES = 256
SYS_PIDFD_OPEN = 434
SYS_PROCESS_MADVISE = 440
MADV_PAGEOUT = 21
MADV_COLLAPSE = 25
# /proc/PID/pagemap bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_SWAPPED = 1 << 62
PM_PRESENT = 1 << 63
KPF_KSM = 1 << 21      # /proc/kpageflags
HOST_MM_ACTIONS = ("pageout", "compact", "thp_collapse", "ksm", "numa_migrate")

_root = Path("/")      # unit tests point this at a fake tree


class HostMMUnavailable(HostMemoryUnavailable):
    """The host cannot give an action what it needs (root, swap, KSM,
    NUMA nodes): a CANCEL before any VM."""


# -- settings -----------------------------------------------------------------

@dataclass(frozen=True)
class PageoutSettings:
    guest_mem_mib: int
    swap_mib: int            # the swap file the test adds
    swap_dir: Path           # on a filesystem that takes swap files


@dataclass(frozen=True)
class CompactSettings:
    guest_mem_mib: int
    timeout_s: float         # rounds for at most this long during the save
    interval_s: float        # between rounds


@dataclass(frozen=True)
class ThpCollapseSettings:
    guest_mem_mib: int
    timeout_s: float         # rounds for at most this long during the save
    interval_s: float        # between rounds


@dataclass(frozen=True)
class KsmSettings:
    guest_mem_mib: int
    pages_to_scan: int       # ksmd's knobs while the save streams
    sleep_millisecs: int
    timeout_s: float         # ksmd runs at most this long during the save
    # bgsnap_ksm_dupwrite: once this % of the workload's duplicate region is
    # KSM-merged, the guest overwrites the region (ctl dupwrite) while the
    # save still streams (docs/host-mm.md, hostmm.ksm_dup)
    dupwrite: bool = False
    dup_merged_pct: int = 50


@dataclass(frozen=True)
class NumaMigrateSettings:
    guest_mem_mib: int
    from_node: int
    to_node: int


@dataclass(frozen=True)
class HostMMSettings:
    """The host memory-management actions of one test (``bgsnap_during``)."""
    pageout: PageoutSettings | None = None
    compact: CompactSettings | None = None
    thp_collapse: ThpCollapseSettings | None = None
    ksm: KsmSettings | None = None
    numa_migrate: NumaMigrateSettings | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in HOST_MM_ACTIONS if getattr(self, n) is not None)


# -- pure parts: maps, smaps, vmstat, pagemap ---------------------------------

@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    inode: int
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def anonymous(self) -> bool:
        return self.inode == 0 and not self.path


def parse_maps(text: str) -> list[Mapping]:
    """/proc/PID/maps (or the header lines of smaps) as :class:`Mapping` s."""
    found = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or "-" not in parts[0]:
            continue
        try:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            inode = int(parts[4])
        except ValueError:
            continue
        found.append(Mapping(start, end, parts[1], inode, parts[5].strip() if len(parts) > 5
                             else ""))
    return found


def guest_ram_ranges(maps_text: str, size_bytes: int) -> list[tuple[int, int]]:
    """The guest RAM: anonymous read-write mappings of exactly ``size_bytes``;
    failing those, adjacent anonymous read-write VMAs that together are
    (the kernel may split one RAMBlock into several VMAs, and may place
    other anonymous mappings right beside it)."""
    runs: list[list[Mapping]] = []
    for m in parse_maps(maps_text):
        if not (m.anonymous and m.perms.startswith("rw")):
            continue
        if runs and runs[-1][-1].end == m.start:
            runs[-1].append(m)
        else:
            runs.append([m])
    single = [(m.start, m.end) for run in runs for m in run if m.size == size_bytes]
    if single:
        return single
    found = []
    for run in runs:
        for i in range(len(run)):
            for j in range(i + 1, len(run)):
                if run[j].end - run[i].start == size_bytes:
                    found.append((run[i].start, run[j].end))
    return found


def smaps_of(smaps_text: str, ranges: Sequence[tuple[int, int]]) -> dict:
    """Rss, Swap, AnonHugePages (KiB) summed over the VMAs inside ``ranges``,
    and their VmFlags (``mg``: KSM-mergeable, ``hg``: MADV_HUGEPAGE)."""
    totals = {"Rss": 0, "Swap": 0, "AnonHugePages": 0}
    flags: set[str] = set()
    inside = False
    for line in smaps_text.splitlines():
        head = parse_maps(line)
        if head:
            inside = any(s <= head[0].start and head[0].end <= e for s, e in ranges)
            continue
        if not inside:
            continue
        if line.startswith("VmFlags:"):
            flags.update(line.split()[1:])
            continue
        key, _, rest = line.partition(":")
        if key in totals and rest.split():
            totals[key] += int(rest.split()[0])
    return {"rss_kib": totals["Rss"], "swap_kib": totals["Swap"],
            "anon_huge_kib": totals["AnonHugePages"], "vmflags": sorted(flags)}


def parse_vmstat(text: str) -> dict[str, int]:
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            found[parts[0]] = int(parts[1])
    return found


def vmstat_delta(before: dict[str, int], after: dict[str, int],
                 prefixes: tuple[str, ...]) -> dict[str, int]:
    """after - before for every counter starting with one of ``prefixes``."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if k.startswith(prefixes)}


def page_counts(entries: Sequence[int]) -> dict[str, int]:
    """What the pagemap says about a range, page by page."""
    counts = {"pages": len(entries), "present": 0, "swapped": 0, "uffd_wp": 0,
              "swapped_uffd_wp": 0, "exclusive": 0}
    for e in entries:
        counts["present"] += bool(e & PM_PRESENT)
        counts["swapped"] += bool(e & PM_SWAPPED)
        counts["uffd_wp"] += bool(e & PM_UFFD_WP)
        counts["swapped_uffd_wp"] += bool(e & PM_SWAPPED and e & PM_UFFD_WP)
        counts["exclusive"] += bool(e & PM_EXCLUSIVE)
    return counts


def pages_moved(before: Sequence[int], after: Sequence[int]) -> int:
    """Pages that were present and mapped only here before, and are present
    in another physical frame after (migrated, or swapped out and back in,
    or copied into a collapsed THP)."""
    moved = 0
    for b, a in zip(before, after):
        if b & PM_PRESENT and b & PM_EXCLUSIVE and a & PM_PRESENT \
                and (a & PM_PFN_MASK) != (b & PM_PFN_MASK):
            moved += 1
    return moved


def huge_chunks(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The 2 MiB-aligned 2 MiB pieces of ``ranges`` (what MADV_COLLAPSE takes)."""
    chunks = []
    for start, end in ranges:
        s = (start + HUGE - 1) // HUGE * HUGE
        chunks += [(a, a + HUGE) for a in range(s, end - HUGE + 1, HUGE)]
    return chunks


def numa_nodes() -> int:
    """Host NUMA nodes (``/sys/devices/system/node/node*``)."""
    try:
        entries = (_root / "sys/devices/system/node").iterdir()
        return sum(1 for e in entries if e.name[4:].isdigit() and e.name.startswith("node"))
    except OSError:
        return 1


# -- the host side: syscalls and /proc reads ---------------------------------

class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _syscall(number: int, *args: int) -> int:
    """The syscall's result, or -errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return -ctypes.get_errno() if ret == -1 else ret


def madvise_ranges(pid: int, ranges: Sequence[tuple[int, int]], advice: int
                   ) -> list[int | str]:
    """``process_madvise(advice)`` on each range of process ``pid``: the bytes
    advised, or the errno's name."""
    pidfd = _syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        return [f"pidfd_open: {_errno_text(-pidfd)}"] * len(ranges)
    try:
        results: list[int | str] = []
        for start, end in ranges:
            iov = _Iovec(start, end - start)
            ret = _syscall(SYS_PROCESS_MADVISE, pidfd, ctypes.addressof(iov), 1, advice, 0)
            results.append(ret if ret >= 0 else _errno_text(-ret).split()[0])
        return results
    finally:
        os.close(pidfd)


def pagemap(pid: int, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """The raw 64-bit pagemap entry of every page of ``ranges`` (root sees PFNs)."""
    entries: list[int] = []
    try:
        with open(_root / "proc" / str(pid) / "pagemap", "rb") as handle:
            for start, end in ranges:
                handle.seek(start // PAGE * 8)
                data = handle.read((end - start) // PAGE * 8)
                entries += struct.unpack(f"{len(data) // 8}Q", data)
    except OSError:
        pass
    return entries


def ksm_flagged(entries: Sequence[int]) -> list[bool]:
    """Per entry: whether its present page is a KSM page (/proc/kpageflags)."""
    flagged = [False] * len(entries)
    try:
        fd = os.open(_root / "proc/kpageflags", os.O_RDONLY)
    except OSError:
        return flagged
    try:
        for i, e in enumerate(entries):
            if e & PM_PRESENT and e & PM_PFN_MASK:
                data = os.pread(fd, 8, (e & PM_PFN_MASK) * 8)
                flagged[i] = len(data) == 8 and bool(struct.unpack("Q", data)[0] & KPF_KSM)
    finally:
        os.close(fd)
    return flagged


def find_pages(pid: int, ranges: Sequence[tuple[int, int]], content: bytes,
               chunk: int = 4 * MIB) -> list[int]:
    """The page-aligned addresses of ``ranges`` in process ``pid`` whose 4 KiB
    hold exactly ``content`` (read from /proc/PID/mem: reading changes no
    protection and takes no fault of the owner)."""
    found = []
    with open(_root / "proc" / str(pid) / "mem", "rb", buffering=0) as handle:
        for start, end in ranges:
            for base in range(start, end, chunk):
                handle.seek(base)
                data = handle.read(min(chunk, end - base))
                pos = data.find(content)
                while pos >= 0:
                    if pos % PAGE == 0:
                        found.append(base + pos)
                    pos = data.find(content, pos + 1)
    return found


def dup_counts(entries: Sequence[int], merged: Sequence[bool]) -> dict[str, int]:
    """The duplicate region's pages by state: KSM-merged with and without
    the uffd-wp bit, protected and not merged, and neither (saved by QEMU
    and un-protected, or never protected)."""
    counts = {"pages": len(entries), "merged": 0, "merged_uffd_wp": 0,
              "merged_no_uffd_wp": 0, "uffd_wp": 0, "unprotected": 0}
    for e, m in zip(entries, merged):
        wp = bool(e & PM_UFFD_WP)
        counts["merged"] += m
        counts["merged_uffd_wp"] += m and wp
        counts["merged_no_uffd_wp"] += m and not wp
        counts["uffd_wp"] += wp
        counts["unprotected"] += not m and not wp
    return counts


def vmstat() -> dict[str, int]:
    return parse_vmstat(_read_text(_root / "proc/vmstat"))


def _status(pid: int) -> dict[str, int]:
    status = parse_meminfo(_read_text(_root / "proc" / str(pid) / "status"))
    return {"rss_kib": status.get("VmRSS"), "swap_kib": status.get("VmSwap")}


def cgroup_memory(pid: int) -> dict[str, int]:
    """QEMU's memory cgroup (v1 or v2): its rss/anon, swap and pgmajfault."""
    for line in _read_text(_root / "proc" / str(pid) / "cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = _root / "sys/fs/cgroup/memory" / path.lstrip("/")
        elif controllers == "" and not (_root / "sys/fs/cgroup/memory").is_dir():
            directory = _root / "sys/fs/cgroup" / path.lstrip("/")
        else:
            continue
        stat = parse_vmstat(_read_text(directory / "memory.stat"))
        return {k: stat[k] for k in ("rss", "anon", "swap", "pgmajfault") if k in stat}
    return {}


# -- the actions --------------------------------------------------------------

class _GuestRamAction(DuringSave):
    """Finds the source QEMU's guest RAM before the trigger."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.pid = 0
        self.ranges: list[tuple[int, int]] = []

    def before_trigger(self, ctx: SaveContext) -> None:
        self.pid = ctx.vm.get_pid()
        maps = _read_text(_root / "proc" / str(self.pid) / "maps")
        self.ranges = guest_ram_ranges(maps, self.cfg.guest_mem_mib * MIB)

    def _where(self) -> dict:
        return {"ram_ranges": [f"{s:#x}-{e:#x}" for s, e in self.ranges]}

    def _no_ram(self) -> dict:
        return {"error": f"no anonymous mapping of {self.cfg.guest_mem_mib} MiB in "
                         f"/proc/{self.pid}/maps (guest RAM not anonymous?)"}

    def _smaps(self) -> dict:
        return smaps_of(_read_text(_root / "proc" / str(self.pid) / "smaps"), self.ranges)

    def nothing_happened(self, record: dict) -> str | None:
        return record.get("error")


class PageOut(_GuestRamAction):
    """MADV_PAGEOUT of the whole guest RAM right after RESUME."""

    name = "pageout"
    # pswpin counts swap-ins with I/O; a page faulted back from the swap
    # cache (written out, not yet freed) is a minor fault, no pswpin
    PREFIXES = ("pswp", "pgmajfault", "swap_ra")

    def act(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return self._no_ram()
        self.vm0 = vm0 = vmstat()
        before, st0, cg0 = pagemap(self.pid, self.ranges), _status(self.pid), cgroup_memory(self.pid)
        result = madvise_ranges(self.pid, self.ranges, MADV_PAGEOUT)
        after, st1 = pagemap(self.pid, self.ranges), _status(self.pid)
        return {**self._where(), "madvise": result, "vmstat": vmstat_delta(vm0, vmstat(), self.PREFIXES),
                "qemu_before": st0, "qemu_after": st1, "pages_before": page_counts(before),
                "pages_after": page_counts(after), "cgroup_before": cg0,
                "cgroup_after": cgroup_memory(self.pid)}

    def settle(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return {}
        return {"vmstat_since_act": vmstat_delta(self.vm0, vmstat(), self.PREFIXES),
                "qemu": _status(self.pid), "pages": page_counts(pagemap(self.pid, self.ranges))}

    def nothing_happened(self, record: dict) -> str | None:
        if "error" in record:
            return record["error"]
        out = record["vmstat"].get("pswpout", 0)
        if record["pages_after"]["swapped"] == 0 and out == 0:
            return (f"no guest page went to swap (pswpout +{out}, "
                    f"process_madvise: {record['madvise']})")
        return None


class Compact(_GuestRamAction):
    """``compact_memory``: the kernel migrates movable pages, QEMU's among them."""

    name = "compact"
    PREFIXES = ("compact_", "pgmigrate_")

    def act(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return self._no_ram()
        vm0, before = vmstat(), pagemap(self.pid, self.ranges)
        rounds, started = [], time.monotonic()
        while True:
            vm_round, t0 = vmstat(), time.monotonic()
            with open(_root / "proc/sys/vm/compact_memory", "w") as handle:
                handle.write("1")
            after = pagemap(self.pid, self.ranges)
            status = ctx.migration_status()
            rounds.append({"s": round(time.monotonic() - t0, 3), "save": status,
                           "pgmigrate_success": vmstat_delta(vm_round, vmstat(), (
                               "pgmigrate_success",)).get("pgmigrate_success", 0),
                           "guest_pages_moved": pages_moved(before, after)})
            if status not in STREAMING or time.monotonic() - started > self.cfg.timeout_s:
                break
            time.sleep(self.cfg.interval_s)
        return {**self._where(), "rounds": rounds,
                "vmstat": vmstat_delta(vm0, vmstat(), self.PREFIXES),
                "guest_pages_moved": pages_moved(before, after),
                "moved_while_streaming": max([r["guest_pages_moved"] for r in rounds
                                              if r["save"] in STREAMING] or [0]),
                "pages_before": page_counts(before), "pages_after": page_counts(after)}

    def nothing_happened(self, record: dict) -> str | None:
        if "error" in record:
            return record["error"]
        if record["moved_while_streaming"] == 0:
            v = record["vmstat"]
            return (f"compaction moved none of QEMU's guest pages (host-wide pgmigrate_success "
                    f"+{v.get('pgmigrate_success', 0)}, compact_isolated "
                    f"+{v.get('compact_isolated', 0)})")
        return None


class ThpCollapse(_GuestRamAction):
    """MADV_COLLAPSE of every 2 MiB of the guest RAM, in rounds until the save ends."""

    name = "thp_collapse"
    PREFIXES = ("thp_collapse", "thp_split")

    def act(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return self._no_ram()
        chunks = huge_chunks(self.ranges)
        self.vm0 = vm0 = vmstat()
        smaps0, before = self._smaps(), pagemap(self.pid, self.ranges)
        rounds, started = [], time.monotonic()
        while True:
            vm_round, status_before = vmstat(), ctx.migration_status()
            results = madvise_ranges(self.pid, chunks, MADV_COLLAPSE)
            errors: dict[str, int] = {}
            for r in results:
                if isinstance(r, str):
                    errors[r] = errors.get(r, 0) + 1
            status = ctx.migration_status()
            collapsed = vmstat_delta(vm_round, vmstat(), ("thp_collapse_alloc",))
            rounds.append({"ok": len(results) - sum(errors.values()), "errors": errors,
                           "collapsed": collapsed.get("thp_collapse_alloc", 0),
                           "save": status if status_before in STREAMING else status_before})
            if status not in STREAMING or time.monotonic() - started > self.cfg.timeout_s:
                break
            time.sleep(self.cfg.interval_s)
        after = pagemap(self.pid, self.ranges)
        return {**self._where(), "chunks": len(chunks), "rounds": rounds,
                "collapsed_while_streaming": sum(r["collapsed"] for r in rounds
                                                 if r["save"] in STREAMING),
                "vmstat": vmstat_delta(vm0, vmstat(), self.PREFIXES),
                "smaps_before": smaps0, "smaps_after": self._smaps(),
                "guest_pages_moved": pages_moved(before, after)}

    def settle(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return {}
        return {"smaps": self._smaps(),
                "vmstat_since_act": vmstat_delta(self.vm0, vmstat(), self.PREFIXES)}

    def nothing_happened(self, record: dict) -> str | None:
        if "error" in record:
            return record["error"]
        if record["collapsed_while_streaming"] == 0:
            return (f"no THP was collapsed while the save streamed, in "
                    f"{len(record['rounds'])} rounds over "
                    f"{record['chunks']} chunks (last round: {record['rounds'][-1]})")
        return None


class KsmMerge(_GuestRamAction):
    """ksmd runs fast until the save ends; what it merged of the guest RAM.

    With ``dupwrite`` (hostmm.ksm_dup): before the trigger the workload's
    duplicate region is located in QEMU's guest RAM (every page D0, found in
    /proc/PID/mem); while the save streams, once ``dup_merged_pct`` % of
    those pages are KSM pages, the guest overwrites the region with D1
    (``ctl dupwrite``).  A merged page that lost its uffd-wp bit is then
    written without a WP fault, and the image holds D1 there: the exact
    verifier counts D1 frames in the restored image."""

    name = "ksm"
    SAMPLE_S = 0.5
    DUP_SAMPLE_S = 0.2      # while waiting for the dup region to merge

    def __init__(self, cfg: KsmSettings, control: host_ksm.KsmControl):
        super().__init__(cfg)
        self.control = control
        self.dup_addrs: list[int] = []
        self.dup_found: dict = {}

    def before_trigger(self, ctx: SaveContext) -> None:
        super().before_trigger(ctx)
        if not self.cfg.dupwrite or not self.ranges:
            return
        spec = getattr(ctx.workload, "spec", None)
        if spec is None or not getattr(spec, "dup_mib", 0):
            self.dup_found = {"error": "dupwrite needs the workload's duplicate region "
                                       "(bgsnap_dup_mib) and the workload in the save context"}
            return
        from ..wlproto import dup_page
        t0 = time.monotonic()
        self.dup_addrs = find_pages(self.pid, self.ranges, dup_page(spec.seed, spec.nonce, 0))
        entries = self._dup_pagemap()
        offsets = [a - self.ranges[0][0] for a in self.dup_addrs]
        self.dup_found = {"dup_pages": spec.dup_pages, "found_d0": len(self.dup_addrs),
                          "scan_s": round(time.monotonic() - t0, 3),
                          "ram_offset_min": min(offsets, default=None),
                          "ram_offset_max": max(offsets, default=None),
                          "before_trigger": dup_counts(entries, ksm_flagged(entries))}
        ctx.log(f"ksm: duplicate region: {len(self.dup_addrs)} of {spec.dup_pages} D0 pages "
                f"found in QEMU's guest RAM in {self.dup_found['scan_s']} s")

    def _dup_pagemap(self) -> list[int]:
        return pagemap(self.pid, [(a, a + PAGE) for a in self.dup_addrs])

    def _dup_state(self) -> dict:
        entries = self._dup_pagemap()
        return dup_counts(entries, ksm_flagged(entries))

    def _dupwrite(self, ctx: SaveContext, started: float, trigger: dict) -> dict:
        """The guest overwrites its duplicate region now; what it met."""
        t = round(time.monotonic() - started, 2)
        status, remaining = ctx.migration_status(), _ram_remaining(ctx)
        before = self._dup_state()
        t0 = time.monotonic()
        try:
            reply = ctx.workload.dupwrite(timeout=60)
            result = {"pages_written": reply.get("pages"), "guest_seconds": reply.get("seconds")}
        except Exception as exc:  # noqa: BLE001 - recorded, judged by nothing_happened
            result = {"error": f"ctl dupwrite: {exc}"}
        took = round(time.monotonic() - t0, 3)
        done = {"t": t, "trigger": trigger, "save_before": status,
                "ram_remaining_before": remaining, "dup_before": before, **result,
                "took_s": took, "save_after": ctx.migration_status(),
                "ram_remaining_after": _ram_remaining(ctx), "dup_after": self._dup_state()}
        ctx.log(f"ksm: dupwrite at {t}s (save {status}, {remaining} bytes left): "
                f"dup before {before}; {result}; took {took}s")
        return done

    def act(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return self._no_ram()
        k0, before = host_ksm.counters(), pagemap(self.pid, self.ranges)
        merging0 = host_ksm.process_ksm(self.pid).get("ksm_merging_pages") or 0
        want_dup = self.cfg.dupwrite and "error" not in self.dup_found
        dup_pages = self.dup_found.get("dup_pages", 0)
        need = max(1, (len(self.dup_addrs) or dup_pages) * self.cfg.dup_merged_pct // 100)
        dup_at_start = self._dup_state() if self.dup_addrs else None
        dupwrite: dict | None = None
        self.control.start(self.cfg.pages_to_scan, self.cfg.sleep_millisecs)
        started, samples, last_sample = time.monotonic(), [], 0.0
        try:
            while time.monotonic() - started < self.cfg.timeout_s:
                waiting = want_dup and dupwrite is None
                time.sleep(self.DUP_SAMPLE_S if waiting else self.SAMPLE_S)
                merging = host_ksm.process_ksm(self.pid).get("ksm_merging_pages")
                status = ctx.migration_status()
                dup_now = self._dup_state() if waiting and self.dup_addrs else None
                if time.monotonic() - last_sample >= self.SAMPLE_S - 0.05 or \
                        status not in STREAMING:
                    last_sample = time.monotonic()
                    now = pagemap(self.pid, self.ranges)
                    merged_now = ksm_flagged(now)
                    # while the save streams: are merged pages still write-protected?
                    sample = {"t": round(time.monotonic() - started, 1), "save": status,
                              "merging": merging, "merged": sum(merged_now),
                              "merged_uffd_wp": sum(m and bool(e & PM_UFFD_WP)
                                                    for m, e in zip(merged_now, now)),
                              "uffd_wp": sum(bool(e & PM_UFFD_WP) for e in now)}
                    if dup_now is not None:
                        sample["dup"] = dup_now
                    samples.append(sample)
                if status not in STREAMING:
                    break
                if waiting:
                    # the dup region merged? (its pages, else QEMU's merging count)
                    got = dup_now["merged"] if dup_now is not None else (merging or 0) - merging0
                    if got >= need:
                        dupwrite = self._dupwrite(ctx, started, {
                            "merged": got, "needed": need,
                            "measure": "dup pages KSM-merged" if dup_now is not None
                            else "ksm_merging_pages growth", "merging": merging})
            after = pagemap(self.pid, self.ranges)
        finally:
            self.control.stop()
        k1 = host_ksm.counters()
        merged = ksm_flagged(after)
        wp_before = [bool(e & PM_UFFD_WP) for e in before]
        wp_after = [bool(e & PM_UFFD_WP) for e in after]
        done = {**self._where(), "ran_s": round(time.monotonic() - started, 1),
                "ksm": {k: (k1[k] or 0) - (k0[k] or 0) for k in k1},
                "qemu_ksm": host_ksm.process_ksm(self.pid), "merging_before": merging0,
                "merging_samples": samples,
                "vmflags": self._smaps()["vmflags"],
                "merged_guest_pages": sum(merged),
                "merged_uffd_wp": sum(m and w for m, w in zip(merged, wp_after)),
                "merged_was_uffd_wp": sum(m and w for m, w in zip(merged, wp_before)),
                "pages_before": page_counts(before), "pages_after": page_counts(after)}
        if self.cfg.dupwrite:
            done["dup_region"] = {**self.dup_found, "at_resume": dup_at_start,
                                  "merged_needed": need, "dupwrite": dupwrite,
                                  "at_end": self._dup_state() if self.dup_addrs else None}
        return done

    def settle(self, ctx: SaveContext) -> dict:
        return {"qemu_ksm": host_ksm.process_ksm(self.pid)} if self.ranges else {}

    def nothing_happened(self, record: dict) -> str | None:
        if "error" in record:
            return record["error"]
        if self.cfg.dupwrite:
            dup = record.get("dup_region") or {}
            if "error" in dup:
                return dup["error"]
            write = dup.get("dupwrite")
            if write is None:
                last = next((x for x in reversed(record["merging_samples"]) if "dup" in x), {})
                return (f"the duplicate region was not merged enough (needed "
                        f"{dup.get('merged_needed')} KSM pages of {dup.get('found_d0')} found) "
                        f"before the save ended after {record['ran_s']}s: dupwrite did not run "
                        f"(last dup sample: {last.get('dup')}; QEMU merging "
                        f"{record['merging_before']} -> {record['qemu_ksm']})")
            if "error" in write:
                return write["error"]
            if write["save_before"] not in STREAMING:
                return f"dupwrite ran when the save was already '{write['save_before']}'"
            left, dup_bytes = write.get("ram_remaining_before"), dup.get("dup_pages", 0) * PAGE
            if write["dup_before"]["uffd_wp"] == 0 and left is not None and left < dup_bytes:
                # no dup page protected any more and less than the dup region
                # left to save: the save had (very likely) passed the region
                return (f"dupwrite came too late: no duplicate-region page was still "
                        f"write-protected and only {left} bytes were left to save at "
                        f"{write['t']}s (dup region {dup_bytes} bytes): its pages were "
                        f"probably saved already")
        top = max((x["merging"] or 0 for x in record["merging_samples"]
                   if x["save"] in STREAMING), default=0)
        if top == 0 and record["merged_guest_pages"] == 0:
            return (f"KSM merged none of QEMU's guest pages in {record['ran_s']}s "
                    f"(host-wide: full_scans +{record['ksm'].get('full_scans')}, "
                    f"pages_sharing +{record['ksm'].get('pages_sharing')}; QEMU's "
                    f"ksm_stat {record['qemu_ksm']}; VmFlags {' '.join(record['vmflags'])})")
        return None


def _ram_remaining(ctx: SaveContext) -> int | None:
    try:
        return ctx.qmp.query_migrate().get("ram", {}).get("remaining")
    except Exception:  # noqa: BLE001 - a figure for the record only
        return None


class NumaMigrate(_GuestRamAction):
    """``migrate_pages`` of QEMU from one host node to another (needs 2 nodes)."""

    name = "numa_migrate"

    def act(self, ctx: SaveContext) -> dict:
        if not self.ranges:
            return self._no_ram()
        before = pagemap(self.pid, self.ranges)
        words = max(self.cfg.from_node, self.cfg.to_node) // 64 + 1
        old = (ctypes.c_ulong * words)()
        new = (ctypes.c_ulong * words)()
        old[self.cfg.from_node // 64] |= 1 << (self.cfg.from_node % 64)
        new[self.cfg.to_node // 64] |= 1 << (self.cfg.to_node % 64)
        left = _syscall(SYS_MIGRATE_PAGES, self.pid, words * 64, ctypes.addressof(old),
                        ctypes.addressof(new))
        after = pagemap(self.pid, self.ranges)
        return {**self._where(), "not_migrated": left if left >= 0 else _errno_text(-left),
                "guest_pages_moved": pages_moved(before, after)}

    def nothing_happened(self, record: dict) -> str | None:
        if "error" in record:
            return record["error"]
        if record["guest_pages_moved"] == 0:
            return f"no guest page changed node (migrate_pages: {record['not_migrated']})"
        return None


# -- around the whole test ----------------------------------------------------

@dataclass
class PreparedHostMM:
    actions: list[DuringSave] = field(default_factory=list)
    host: dict = field(default_factory=dict)     # what the host had and was given


def _need_root(names: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise HostMMUnavailable(f"{' '.join(names)} need root (process_madvise of another "
                                "process, pagemap PFNs, swapon, /sys/kernel/mm/ksm, "
                                "/proc/sys/vm/compact_memory)")


@contextlib.contextmanager
def prepared(cfg: HostMMSettings | None, log: Callable[[str], None] = lambda m: None
             ) -> Iterator[PreparedHostMM]:
    """What the actions need from the host, given for the whole test and
    taken back on leaving (the swap file off and deleted, KSM's knobs as
    they were), also when the test fails.

    :raises HostMMUnavailable: not root, fewer than 2 NUMA nodes for
        numa_migrate, no swap file or no KSM (before any VM starts).
    """
    if cfg is None or not cfg.names:
        yield PreparedHostMM()
        return
    _need_root(cfg.names)
    done = PreparedHostMM(host={"numa_nodes": numa_nodes()})
    if cfg.numa_migrate is not None and done.host["numa_nodes"] < 2:
        raise HostMMUnavailable(f"numa_migrate needs 2 host NUMA nodes, this host has "
                                f"{done.host['numa_nodes']}")
    with contextlib.ExitStack() as stack:
        try:
            if cfg.pageout is not None:
                dev = stack.enter_context(host_swap.swap_file(cfg.pageout.swap_dir,
                                                              cfg.pageout.swap_mib))
                log(f"swap file {dev.path} ({dev.size_mib} MiB) on for the test")
                done.host["swap"] = dev.to_dict()
            control = None
            if cfg.ksm is not None:
                control = stack.enter_context(host_ksm.ksm_control())
                done.host["ksm_before"] = dict(control.original)
        except HostMMUnavailable:
            raise
        except HostMemoryUnavailable as exc:
            raise HostMMUnavailable(str(exc)) from exc
        for name in cfg.names:
            settings = getattr(cfg, name)
            done.actions.append(KsmMerge(settings, control) if name == "ksm" else
                                _ACTIONS[name](settings))
        yield done


_ACTIONS = {"pageout": PageOut, "compact": Compact, "thp_collapse": ThpCollapse,
            "numa_migrate": NumaMigrate}


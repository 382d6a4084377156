"""Host memory settings a test reads and changes, each change undone on exit.

* hugetlb pools: :class:`HugepagePool`, :func:`hugepage_pools`,
  :func:`default_hugepage_kib`, and :func:`reserved_hugepages`, which makes
  sure enough free pages exist and puts ``nr_hugepages`` back afterwards;
* hugetlbfs: :func:`hugetlbfs_mount` (an existing mount, or one of its own
  that it unmounts again), :func:`hugetlbfs_mounts`, :func:`hugepage_kib_for`;
* transparent hugepages: :func:`thp_mode`, :func:`thp_defrag`, :func:`thp_settings` and
  :func:`thp_mode_set`;
* a process's memory: :func:`process_memory` -> :class:`ProcessMemory`,
  :func:`rss_kib` for VmRSS alone;
* :class:`HostSettingsGuard`: snapshots all of the above at the start and
  names what differs at the end, so a suite can check that a test left the
  host as it found it.

Every change is undone in a ``finally``, also when the block raises; what
cannot be undone (pages still in use, a mount still busy) is logged and
raised as :class:`HostMemoryNotRestored` -- or, when the block already
raised, added as a note to that exception so the original error is kept.

Every /sys and /proc path is read below the module-level ``_root`` so unit
tests can point it at a fake tree.  No work at import time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import LOG, HostCheckError, _errno_text, _is_root, _read_text, _undoing

# Tests point this at a fake tree holding sys/... and proc/...
_root = Path("/")

HUGEPAGES_DIR = "sys/kernel/mm/hugepages"
THP_DIR = "sys/kernel/mm/transparent_hugepage"
MEMINFO = "proc/meminfo"
MOUNTS = "proc/mounts"
COMPACT_MEMORY = "proc/sys/vm/compact_memory"
THP_MODES = ("always", "madvise", "never")

_POOL_DIR_RE = re.compile(r"^hugepages-(\d+)kB$")


class HostMemoryError(HostCheckError):
    """A host memory setting could not be read, changed or put back."""


class HostMemoryUnavailable(HostMemoryError):
    """The host cannot give what a test asked for (root, pages, a pool, a mount).

    A test turns this into ``test.cancel(str(exc))``: a missing host
    capability, not a failure.
    """


class HostMemoryNotRestored(HostMemoryError):
    """A setting changed for a test could not be put back as it was."""


# -- small helpers ----------------------------------------------------------

def _path(rel: str) -> Path:
    return _root / rel


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_sysfs(path: Path, value: str) -> None:
    """Write ``value`` to a sysfs/procfs file; errors surface as OSError."""
    with open(path, "w") as handle:
        handle.write(value)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a command with its output captured (tests replace this)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _not_restored(message: str, failure: BaseException | None) -> None:
    """Report ``message``: a note on ``failure`` if one is in flight, else raise."""
    LOG.error("%s", message)
    if failure is not None:
        failure.add_note(message)
        return
    raise HostMemoryNotRestored(message)


def _kib_text(size_kib: int) -> str:
    """2048 -> '2M', 1048576 -> '1G', 64 -> '64K' (the kernel's pagesize= form)."""
    for unit, scale in (("G", 1 << 20), ("M", 1 << 10)):
        if size_kib % scale == 0:
            return f"{size_kib // scale}{unit}"
    return f"{size_kib}K"


def parse_size_kib(text: str) -> int | None:
    """A size with an optional K/M/G suffix (bytes without one) in KiB."""
    m = re.fullmatch(r"\s*(\d+)\s*([KkMmGgTt]?)\s*", text or "")
    if not m:
        return None
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    return (int(m.group(1)) << shift) // 1024


# -- hugetlb pools ------------------------------------------------------------

@dataclass(frozen=True)
class HugepagePool:
    """One ``/sys/kernel/mm/hugepages/hugepages-<size>kB`` pool."""

    size_kib: int
    nr_hugepages: int
    free_hugepages: int
    resv_hugepages: int
    # Pages beyond the persistent pool (overcommit, or in use when the pool
    # was shrunk); nr_hugepages counts them.
    surplus_hugepages: int = 0

    @property
    def name(self) -> str:
        return f"hugepages-{self.size_kib}kB"

    @property
    def available(self) -> int:
        """Free pages no mapping has reserved yet: what a new QEMU can get."""
        return max(self.free_hugepages - self.resv_hugepages, 0)

    @property
    def persistent(self) -> int:
        """The pool size to write back to ``nr_hugepages`` to restore it."""
        return max(self.nr_hugepages - self.surplus_hugepages, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool_dir(size_kib: int) -> Path:
    return _path(HUGEPAGES_DIR) / f"hugepages-{size_kib}kB"


def _read_pool(directory: Path, size_kib: int) -> HugepagePool:
    def value(name: str) -> int:
        return _read_int(directory / name) or 0
    return HugepagePool(size_kib=size_kib, nr_hugepages=value("nr_hugepages"),
                        free_hugepages=value("free_hugepages"),
                        resv_hugepages=value("resv_hugepages"),
                        surplus_hugepages=value("surplus_hugepages"))


def hugepage_pools() -> dict[int, HugepagePool]:
    """Every hugetlb pool of the host, by page size in KiB (empty without hugetlb)."""
    try:
        entries = sorted(_path(HUGEPAGES_DIR).iterdir())
    except OSError:
        return {}
    pools = {}
    for entry in entries:
        m = _POOL_DIR_RE.match(entry.name)
        if m:
            size = int(m.group(1))
            pools[size] = _read_pool(entry, size)
    return dict(sorted(pools.items()))


def hugepage_pool(size_kib: int) -> HugepagePool:
    """The pool of ``size_kib`` pages; :class:`HostMemoryUnavailable` if the host has none."""
    directory = _pool_dir(size_kib)
    if not directory.is_dir():
        have = ", ".join(f"hugepages-{s}kB" for s in hugepage_pools()) or "none"
        raise HostMemoryUnavailable(f"no hugepages-{size_kib}kB pool (this host has: {have})")
    return _read_pool(directory, size_kib)


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo (or /proc/PID/status) text: the numeric fields, ``kB`` dropped."""
    found = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and parts:
            try:
                found[key.strip()] = int(parts[0])
            except ValueError:
                pass
    return found


def default_hugepage_kib() -> int | None:
    """The default hugepage size (``Hugepagesize`` of /proc/meminfo) in KiB."""
    return parse_meminfo(_read_text(_path(MEMINFO))).get("Hugepagesize")


@contextmanager
def reserved_hugepages(pages: int, size_kib: int = 2048, *,
                       compact: bool = True) -> Iterator[HugepagePool]:
    """Make sure ``pages`` free hugepages of ``size_kib`` exist inside the block.

    Raises ``nr_hugepages`` by what is missing (free pages a mapping already
    reserved do not count), checks the kernel really gave them -- it may
    give fewer when memory is fragmented; one ``compact_memory`` and retry
    when ``compact`` -- and yields the pool as it then is.  On exit, also on
    an exception, writes the original pool size back and checks it took.

    :raises HostMemoryUnavailable: no such pool, not root, or the kernel
        gave fewer pages (the pool is put back first).
    :raises HostMemoryNotRestored: the pool could not shrink back (pages
        still in use); when the block raised, this is a note on that error.
    """
    pool = hugepage_pool(size_kib)
    if pages <= pool.available:
        yield pool
        return
    nr_file = _pool_dir(size_kib) / "nr_hugepages"
    if not _is_root():
        raise HostMemoryUnavailable(
            f"needs root to reserve hugepages ({pages} x {size_kib} kB asked, "
            f"{pool.available} free; cannot write {nr_file})")
    target = pool.persistent + (pages - pool.available)
    with _undoing(lambda failure: _restore_pool(nr_file, pool, failure)):
        got = _grow_pool(nr_file, target, size_kib, pages, compact)
        LOG.info("%s: nr_hugepages %d -> %d for %d free pages", pool.name,
                 pool.nr_hugepages, got.nr_hugepages, pages)
        yield got


def _grow_pool(nr_file: Path, target: int, size_kib: int, pages: int,
               compact: bool) -> HugepagePool:
    def write(count: int) -> HugepagePool:
        try:
            _write_sysfs(nr_file, str(count))
        except OSError as exc:
            raise HostMemoryUnavailable(
                f"cannot set {nr_file} to {count}: {_errno_text(exc.errno or 0)}") from exc
        return hugepage_pool(size_kib)

    got = write(target)
    if got.available < pages and compact:
        try:
            _write_sysfs(_path(COMPACT_MEMORY), "1")
        except OSError:
            pass
        got = write(target)
    if got.available < pages:
        raise HostMemoryUnavailable(
            f"asked {pages} free {size_kib} kB hugepages, the kernel gave {got.available} "
            f"(nr_hugepages {got.nr_hugepages} of {target} asked: memory too fragmented "
            f"or too little free; reserve them at boot with hugepages= on the kernel "
            f"command line)")
    return got


def _restore_pool(nr_file: Path, original: HugepagePool,
                  failure: BaseException | None) -> None:
    """Write ``original``'s pool size back; report it if the pool did not follow."""
    name, count = original.name, original.persistent
    try:
        _write_sysfs(nr_file, str(count))
    except OSError as exc:
        _not_restored(f"{name}: cannot put nr_hugepages back to {count}: "
                      f"{_errno_text(exc.errno or 0)}", failure)
        return
    now = hugepage_pool(original.size_kib)
    # Pages still mapped when the pool shrinks stay, counted as surplus.
    if now.persistent != count or now.surplus_hugepages > original.surplus_hugepages:
        in_use = now.nr_hugepages - now.free_hugepages
        _not_restored(
            f"{name}: nr_hugepages put back to {original.nr_hugepages} but reads "
            f"{now.nr_hugepages} ({in_use} in use, {now.surplus_hugepages} surplus): pages "
            f"still mapped (a QEMU still running, a file left in hugetlbfs?); the kernel "
            f"frees the surplus pages when their last user lets go", failure)
    else:
        LOG.info("%s: nr_hugepages back to %d", name, now.nr_hugepages)


# -- hugetlbfs ------------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    """One line of /proc/mounts."""

    source: str
    target: str
    fstype: str
    options: tuple[str, ...] = ()

    def option(self, name: str) -> str | None:
        for opt in self.options:
            key, _, value = opt.partition("=")
            if key == name:
                return value
        return None

    @property
    def pagesize_kib(self) -> int | None:
        """A hugetlbfs mount's page size (``pagesize=``; else the default size)."""
        if self.fstype != "hugetlbfs":
            return None
        text = self.option("pagesize")
        return parse_size_kib(text) if text else default_hugepage_kib()


def _unescape_mount_field(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mounts(text: str) -> list[Mount]:
    """/proc/mounts text as :class:`Mount` rows, in mount order."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append(Mount(source=_unescape_mount_field(parts[0]),
                                target=_unescape_mount_field(parts[1]), fstype=parts[2],
                                options=tuple(parts[3].split(","))))
    return mounts


def _mounts() -> list[Mount]:
    return parse_mounts(_read_text(_path(MOUNTS)))


def hugetlbfs_mounts() -> list[Mount]:
    """The host's hugetlbfs mounts."""
    return [m for m in _mounts() if m.fstype == "hugetlbfs"]


def _mount_of(path: str | os.PathLike) -> Mount | None:
    """The mount ``path`` lives on (the last-mounted, longest matching target)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in _mounts():
        target = mount.target.rstrip("/") or "/"
        if (real == target or target == "/" or real.startswith(target + "/")) and (
                best is None or len(target) >= len(best.target.rstrip("/") or "/")):
            best = mount
    return best


def hugepage_kib_for(path: str | os.PathLike) -> int | None:
    """The page size in KiB of the hugetlbfs ``path`` lives on; None if not on one."""
    mount = _mount_of(path)
    return mount.pagesize_kib if mount is not None else None


def _remove_new_entries(directory: Path, keep: set[str]) -> list[str]:
    """Remove what appeared in ``directory`` besides ``keep``; the names that stayed."""
    stayed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return stayed
    for entry in entries:
        if entry.name in keep:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            LOG.error("cannot remove %s: %s", entry, exc)
            stayed.append(entry.name)
    return stayed


@contextmanager
def hugetlbfs_mount(size_kib: int = 2048) -> Iterator[Path]:
    """A directory on hugetlbfs with ``size_kib`` pages, for QEMU's ``mem-path``.

    An existing writable mount of that page size if the host has one (files
    created in it during the block are removed on exit, what was there
    stays); otherwise a mount of its own on a fresh temp dir, emptied,
    unmounted and removed on exit.

    :raises HostMemoryUnavailable: no such pool, or no mount and not root
        (or ``mount`` failed).
    :raises HostMemoryNotRestored: the own mount could not be unmounted
        (still busy); when the block raised, a note on that error.
    """
    hugepage_pool(size_kib)  # no pool, no mount
    existing = [m for m in hugetlbfs_mounts()
                if m.pagesize_kib == size_kib and "ro" not in m.options
                and os.access(m.target, os.W_OK | os.X_OK)]
    if existing:
        directory = Path(existing[0].target)
        before = {e.name for e in directory.iterdir()}

        def remove_new(failure: BaseException | None) -> None:
            stayed = _remove_new_entries(directory, before)
            if stayed:
                _not_restored(f"cannot remove {', '.join(stayed)} from hugetlbfs "
                              f"{directory}", failure)

        with _undoing(remove_new):
            yield directory
        return
    if not _is_root():
        raise HostMemoryUnavailable(f"needs root to mount hugetlbfs (no writable "
                                    f"pagesize={_kib_text(size_kib)} mount on this host)")
    directory = Path(tempfile.mkdtemp(prefix="bgsnap-hugetlbfs-"))
    cmd = ["mount", "-t", "hugetlbfs", "-o", f"pagesize={_kib_text(size_kib)}", "none",
           str(directory)]
    try:
        done = _run(cmd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        directory.rmdir()
        raise HostMemoryUnavailable(f"cannot run {' '.join(cmd)}: {exc}", cmd) from exc
    if done.returncode != 0:
        directory.rmdir()
        raise HostMemoryUnavailable(f"cannot mount hugetlbfs on {directory}", cmd,
                                    done.returncode, done.stderr)
    LOG.info("mounted hugetlbfs pagesize=%s on %s", _kib_text(size_kib), directory)
    with _undoing(lambda failure: _unmount(directory, failure)):
        yield directory


def _unmount(directory: Path, failure: BaseException | None) -> None:
    _remove_new_entries(directory, set())
    cmd = ["umount", str(directory)]
    try:
        done = _run(cmd)
        returncode, stderr = done.returncode, done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        returncode, stderr = -1, str(exc)
    if returncode != 0:
        _not_restored(f"cannot unmount hugetlbfs {directory} (still in use? a QEMU "
                      f"still running?): {' '.join(stderr.split())}", failure)
        return
    try:
        directory.rmdir()
    except OSError as exc:
        LOG.warning("cannot remove mount point %s: %s", directory, exc)


# -- transparent hugepages ----------------------------------------------------

def parse_bracketed(text: str) -> str | None:
    """The selected word of a sysfs choice file: ``always [madvise] never`` -> madvise."""
    m = re.search(r"\[([^\]]+)\]", text or "")
    return m.group(1) if m else None


def _thp_file(name: str) -> Path:
    return _path(THP_DIR) / name


def thp_mode() -> str | None:
    """'always', 'madvise' or 'never' (None when the kernel has no THP)."""
    return parse_bracketed(_read_text(_thp_file("enabled")))


def thp_defrag() -> str | None:
    """THP ``defrag`` (always, defer, defer+madvise, madvise, never), for the record."""
    return parse_bracketed(_read_text(_thp_file("defrag")))


@dataclass(frozen=True)
class ThpSettings:
    """Transparent hugepage settings, for the record (None: unreadable)."""

    enabled: str | None
    defrag: str | None
    shmem_enabled: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def thp_settings() -> ThpSettings:
    """THP ``enabled``, ``defrag`` and ``shmem_enabled`` as set now."""
    return ThpSettings(enabled=thp_mode(), defrag=thp_defrag(),
                       shmem_enabled=parse_bracketed(_read_text(_thp_file("shmem_enabled"))))


@contextmanager
def thp_mode_set(mode: str) -> Iterator[str]:
    """Set THP ``enabled`` to ``mode`` inside the block; yields the previous mode.

    The previous mode is written back on exit, also on an exception.

    :raises ValueError: ``mode`` is not one of :data:`THP_MODES`.
    :raises HostMemoryUnavailable: no THP on this kernel, not root, or the
        write failed.
    """
    if mode not in THP_MODES:
        raise ValueError(f"THP mode {mode!r} is not one of {', '.join(THP_MODES)}")
    enabled = _thp_file("enabled")
    previous = thp_mode()
    if previous is None:
        raise HostMemoryUnavailable(f"no transparent hugepages on this kernel ({enabled} "
                                    "unreadable)")
    if previous == mode:
        yield previous
        return
    if not _is_root():
        raise HostMemoryUnavailable(f"needs root to set THP mode to {mode} (is {previous})")
    def put_back(failure: BaseException | None) -> None:
        try:
            _set_choice(enabled, previous, HostMemoryNotRestored)
        except HostMemoryNotRestored as exc:
            _not_restored(str(exc), failure)

    with _undoing(put_back):
        _set_choice(enabled, mode, HostMemoryUnavailable)
        LOG.info("THP enabled: %s -> %s", previous, mode)
        yield previous


def _set_choice(path: Path, value: str, error: type[HostMemoryError]) -> None:
    try:
        _write_sysfs(path, value)
    except OSError as exc:
        raise error(f"cannot write {value} to {path}: {_errno_text(exc.errno or 0)}") from exc
    now = parse_bracketed(_read_text(path))
    if now != value:
        raise error(f"wrote {value} to {path}, it reads {now}")


# -- a process's memory -------------------------------------------------------

@dataclass(frozen=True)
class ProcessMemory:
    """A process's resident memory in KiB (None: unreadable, e.g. it exited).

    From /proc/PID/status: ``VmRSS``, ``RssAnon``, ``RssFile``, ``RssShmem``
    and ``HugetlbPages`` (hugetlbfs memory, which RSS does not count); from
    /proc/PID/smaps_rollup: ``AnonHugePages``, ``ShmemPmdMapped``,
    ``FilePmdMapped`` (THP-mapped memory).
    """

    pid: int
    vm_rss_kib: int | None = None
    rss_anon_kib: int | None = None
    rss_file_kib: int | None = None
    rss_shmem_kib: int | None = None
    hugetlb_kib: int | None = None
    anon_huge_kib: int | None = None
    shmem_pmd_kib: int | None = None
    file_pmd_kib: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_memory(pid: int) -> ProcessMemory:
    """Resident memory of process ``pid``; never raises for a gone process."""
    proc = _path("proc") / str(pid)
    status = parse_meminfo(_read_text(proc / "status"))
    rollup = parse_meminfo(_read_text(proc / "smaps_rollup"))
    return ProcessMemory(
        pid=pid,
        vm_rss_kib=status.get("VmRSS"), rss_anon_kib=status.get("RssAnon"),
        rss_file_kib=status.get("RssFile"), rss_shmem_kib=status.get("RssShmem"),
        hugetlb_kib=status.get("HugetlbPages"),
        anon_huge_kib=rollup.get("AnonHugePages"),
        shmem_pmd_kib=rollup.get("ShmemPmdMapped"),
        file_pmd_kib=rollup.get("FilePmdMapped"),
    )


def rss_kib(pid: int) -> int | None:
    """A process's ``VmRSS`` in KiB (None: unreadable or gone)."""
    return parse_meminfo(_read_text(_path("proc") / str(pid) / "status")).get("VmRSS")


def peak_rss_kib(pid: int) -> int | None:
    """A process's peak resident set, ``VmHWM``, in KiB (None: unreadable or gone)."""
    return parse_meminfo(_read_text(_path("proc") / str(pid) / "status")).get("VmHWM")


# -- the guard ----------------------------------------------------------------

@dataclass(frozen=True)
class HostMemorySettings:
    """The host memory settings a test may change, at one moment."""

    nr_hugepages: dict[int, int] = field(default_factory=dict)
    thp: ThpSettings = ThpSettings(None, None, None)
    hugetlbfs_mounts: tuple[str, ...] = ()

    def differences(self, after: HostMemorySettings) -> list[str]:
        """What differs in ``after``, one ``setting: before X, after Y`` each."""
        found = []
        for size in sorted(set(self.nr_hugepages) | set(after.nr_hugepages)):
            b, a = self.nr_hugepages.get(size), after.nr_hugepages.get(size)
            if b != a:
                found.append(f"nr_hugepages hugepages-{size}kB: before {b}, after {a}")
        for name in ("enabled", "defrag", "shmem_enabled"):
            b, a = getattr(self.thp, name), getattr(after.thp, name)
            if b != a:
                found.append(f"transparent_hugepage/{name}: before {b}, after {a}")
        if self.hugetlbfs_mounts != after.hugetlbfs_mounts:
            found.append(f"hugetlbfs mounts: before {list(self.hugetlbfs_mounts)}, "
                         f"after {list(after.hugetlbfs_mounts)}")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"nr_hugepages": {str(k): v for k, v in self.nr_hugepages.items()},
                "thp": self.thp.to_dict(), "hugetlbfs_mounts": list(self.hugetlbfs_mounts)}


def host_memory_settings() -> HostMemorySettings:
    """The settings :class:`HostSettingsGuard` watches, as they are now."""
    return HostMemorySettings(
        nr_hugepages={size: pool.nr_hugepages for size, pool in hugepage_pools().items()},
        thp=thp_settings(),
        hugetlbfs_mounts=tuple(f"{m.target} (pagesize {m.pagesize_kib} kB)"
                               for m in hugetlbfs_mounts()))


class HostSettingsGuard:
    """Notices host memory settings a test or job left changed.

    ``guard = HostSettingsGuard()`` snapshots the settings; ``guard.changes()``
    names what differs now.  As a context manager it checks on exit and
    logs what changed (it never raises: the caller decides whether a change
    fails the test); ``guard.changed`` keeps the list.
    """

    def __init__(self) -> None:
        self.before = host_memory_settings()
        self.changed: list[str] = []

    def changes(self) -> list[str]:
        """``setting: before X, after Y`` for each setting that differs now."""
        self.changed = self.before.differences(host_memory_settings())
        return self.changed

    def __enter__(self) -> HostSettingsGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for line in self.changes():
            LOG.error("host memory setting left changed: %s", line)

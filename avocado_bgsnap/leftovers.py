"""What a job left behind: processes, sockets, snapshot files, mounts, host settings.

At job start :func:`take_baseline` notes the time, the processes, the mounts
and the host settings the suite changes (hugepage pools and THP as
:class:`~avocado_bgsnap.host.memory.HostSettingsGuard` sees them, KSM's
knobs, the swap devices in use).  At job end :func:`leftovers` names what
the job left, one :class:`Leftover` each:

* ``qemu`` / ``process``: a process still running whose environment holds
  the job's marker (``BGSNAP_JOB_ID=<job id>``, set in avocado's own
  environment at job start, so every test and every QEMU inherits it);
  QEMUs of other jobs or of the user do not carry it;
* ``socket``: a socket avocado-vt made for this job's QEMUs (monitor,
  serial, ...: the paths under ``.../avocado_XXXX/`` named in the job's
  logs and in a left QEMU's command line) that still exists;
* ``file``: a snapshot, late image, RAM dump or ``.partial`` of one: every
  such file in the job dir, and in a ``bgsnap_snapshot_dir`` outside it
  only the ones written since the job started (older ones are not the
  job's).  A snapshot a test kept (``bgsnap_keep_snapshot``, recorded in
  its ``bgsnap-metrics.json``) is not a leftover;
* ``mount``: a mount that was not there at job start;
* ``host-setting``: a watched host setting that differs from job start.

Pure logic over paths given as arguments (``proc_root``, the job dir), unit
tested; :class:`BgsnapLeftovers` is the thin avocado ``job.prepost`` plugin
over it (entry point ``bgsnap-leftovers``), which writes
``<job>/bgsnap-leftovers.json`` (docs/leftovers.md).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

from avocado.core.output import LOG_JOB, LOG_UI
from avocado.core.plugin_interfaces import JobPost, JobPre

from .host import ksm, swap
from .host.memory import HostMemorySettings, host_memory_settings, parse_mounts
from . import vt_compat
from .metrics import METRICS_FILE

JOB_ENV = "BGSNAP_JOB_ID"
LEFTOVERS_FILE = "bgsnap-leftovers.json"
PROC = Path("/proc")
# avocado-vt's per-process tmp dir (/var/tmp/avocado_XXXX) and a file in it
VT_TMP_PATH = re.compile(r"/[^\s,'\"=]*/avocado_[a-z0-9_]{8}/[^\s,'\"]+")
# a process of the job that is quitting as the job ends gets this long
SETTLE_S = 10.0


@dataclass(frozen=True)
class Leftover:
    kind: str   # qemu, process, socket, file, mount, host-setting
    what: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class HostState:
    """The host settings the suite changes and must give back."""

    memory: HostMemorySettings   # hugetlbfs mounts left out: mounts are their own kind
    ksm: dict[str, int | None]
    swaps: tuple[str, ...]

    def differences(self, after: HostState) -> list[str]:
        found = self.memory.differences(after.memory)
        for knob in sorted(set(self.ksm) | set(after.ksm)):
            if self.ksm.get(knob) != after.ksm.get(knob):
                found.append(f"ksm/{knob}: before {self.ksm.get(knob)}, "
                             f"after {after.ksm.get(knob)}")
        if self.swaps != after.swaps:
            found.append(f"swaps: before {list(self.swaps)}, after {list(after.swaps)}")
        return found


def host_state() -> HostState:
    return HostState(memory=replace(host_memory_settings(), hugetlbfs_mounts=()),
                     ksm={knob: ksm._read(knob) for knob in ksm.KNOBS},
                     swaps=tuple(swap.active_swaps()))


@dataclass(frozen=True)
class JobBaseline:
    started: float               # time.time() at job start
    host: HostState
    pids: frozenset[int]         # processes running then are never the job's
    mounts: frozenset[str]


def job_marker(job_id: str) -> str:
    """The environment entry every process of the job inherits."""
    return f"{JOB_ENV}={job_id}"


def _pids(proc_root: Path) -> set[int]:
    return {int(p.name) for p in proc_root.iterdir() if p.name.isdigit()}


def _mounts(proc_root: Path) -> frozenset[str]:
    try:
        text = (proc_root / "mounts").read_text()
    except OSError:
        return frozenset()
    return frozenset(f"{m.target} ({m.fstype})" for m in parse_mounts(text))


def take_baseline(proc_root: Path = PROC, host: HostState | None = None) -> JobBaseline:
    return JobBaseline(started=time.time(), host=host or host_state(),
                       pids=frozenset(_pids(proc_root)), mounts=_mounts(proc_root))


def job_processes(proc_root: Path, marker: str, exclude: Iterable[int] = ()) -> dict[int, list[str]]:
    """pid -> argv of the processes whose environment holds ``marker``."""
    found = {}
    skip = set(exclude)
    for pid in _pids(proc_root) - skip:
        try:
            environ = (proc_root / str(pid) / "environ").read_bytes().split(b"\0")
            argv = (proc_root / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:   # gone, or not ours to read
            continue
        if marker.encode() in environ:
            found[pid] = [a.decode(errors="replace") for a in argv if a]
    return found


def _names() -> tuple[str, str, str, str]:
    """The suite's file names (snapshot, late image, RAM dump, the whole-VM
    snapshot's disk images and overlays); ``.partial`` ones start the same."""
    from . import cycle, disk_snapshot  # bring virttest: imported when a job ends

    return (cycle.SNAPSHOT_STEM, cycle.LATE_IMAGE_STEM, cycle.DUMP_NAME,
            disk_snapshot.DISK_STEM)


def kept_snapshots(job_dir: Path) -> set[Path]:
    """The snapshot files tests kept on purpose (``bgsnap_keep_snapshot``)."""
    snapshot_stem, late_stem = _names()[:2]
    kept = set()
    for record in job_dir.glob(f"test-results/*/data/{METRICS_FILE}"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if data.get("keep_snapshot") and data.get("snapshot_file"):
            path = Path(data["snapshot_file"])
            suffix = path.name[len(snapshot_stem):]
            kept |= {path, path.with_name(late_stem + suffix)}
            # a whole-VM snapshot keeps its disk images too (docs/disk.md)
            kept |= {Path(p) for p in data.get("kept_files", [])}
    return {p.resolve() for p in kept}


def snapshot_files(job_dir: Path, snapshot_dirs: Iterable[Path], since: float) -> list[Path]:
    """The suite's snapshot, dump and ``.partial`` files: all in the job dir,
    the ones written since ``since`` in the other snapshot dirs; kept ones left out."""
    prefixes = _names()
    found = {p.resolve() for p in job_dir.rglob("*")
             if p.name.startswith(prefixes) and p.is_file()}
    for directory in snapshot_dirs:
        if not Path(directory).is_dir():
            continue
        for path in Path(directory).iterdir():
            try:
                new = path.is_file() and path.stat().st_mtime >= since
            except OSError:
                continue
            if new and path.name.startswith(prefixes):
                found.add(path.resolve())
    return sorted(found - kept_snapshots(job_dir))


def vt_sockets(job_dir: Path, argvs: Iterable[list[str]] = ()) -> list[str]:
    """Sockets under avocado-vt's tmp dir named in the job's logs or in the
    given command lines, that still exist."""
    texts = [" ".join(argv) for argv in argvs]
    for log in job_dir.glob("test-results/*/debug.log"):
        try:
            texts.append(log.read_text(errors="replace"))
        except OSError:
            pass
    return sockets_named_in(texts)


def sockets_named_in(texts: Iterable[str]) -> list[str]:
    """avocado-vt's sockets (paths under its ``avocado_XXXX`` tmp dir)
    named in ``texts`` that still exist."""
    named = {m.group(0) for text in texts for m in VT_TMP_PATH.finditer(text)}
    sockets = []
    for path in sorted(named):
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                sockets.append(path)
        except OSError:
            pass
    return sockets


def leftovers(baseline: JobBaseline, job_dir: Path, snapshot_dirs: Iterable[Path],
              job_marker: str, proc_root: Path = PROC,
              host_now: HostState | None = None) -> list[Leftover]:
    """What the job left, in a fixed order (processes, sockets, files, mounts, settings)."""
    found = []
    processes = job_processes(proc_root, job_marker, exclude=baseline.pids | {os.getpid()})
    for pid, argv in sorted(processes.items()):
        kind = "qemu" if argv and "qemu-system" in Path(argv[0]).name else "process"
        found.append(Leftover(kind, f"pid {pid}: {' '.join(argv)[:200]}"))
    found += [Leftover("socket", s) for s in vt_sockets(job_dir, processes.values())]
    found += [Leftover("file", str(f))
              for f in snapshot_files(job_dir, snapshot_dirs, baseline.started)]
    found += [Leftover("mount", m) for m in sorted(_mounts(proc_root) - baseline.mounts)]
    after = host_now if host_now is not None else host_state()
    found += [Leftover("host-setting", d) for d in baseline.host.differences(after)]
    return found


def write_report(job_dir: Path, found: list[Leftover]) -> Path:
    path = job_dir / LEFTOVERS_FILE
    path.write_text(json.dumps([f.to_dict() for f in found], indent=2) + "\n")
    return path


def summary_line(found: list[Leftover], report: Path) -> str:
    names = "; ".join(f"{f.kind} {f.what}" for f in found)
    return f"bgsnap leftovers: {len(found)} left by this job ({names}): see {report}"


def _snapshot_dirs(job) -> set[Path]:
    """The ``bgsnap_snapshot_dir`` of the job's tests (their params)."""
    dirs = set()
    for suite in getattr(job, "test_suites", None) or []:
        for runnable in getattr(suite, "tests", None) or []:
            value = (getattr(runnable, "kwargs", None) or {}).get("bgsnap_snapshot_dir")
            if value:
                dirs.add(Path(value))
    return dirs


class BgsnapLeftovers(JobPre, JobPost):
    name = "bgsnap-leftovers"
    description = "avocado-bgsnap: report what a job left (processes, files, mounts, host settings)"

    def __init__(self):  # pylint: disable=W0231
        self.baseline: JobBaseline | None = None
        self.marker = ""

    def pre(self, job):
        try:
            self.marker = job_marker(str(job.unique_id))
            os.environ[JOB_ENV] = str(job.unique_id)
            self.baseline = take_baseline()
        except Exception as exc:  # pylint: disable=W0703
            LOG_JOB.warning("bgsnap leftovers: no baseline taken: %s", exc)

    def post(self, job):
        if self.baseline is None or not job.logdir:
            return
        try:
            vt_compat.close_remote_sessions()       # workaround 11
            job_dir = Path(job.logdir)
            found = self._settled(job_dir, _snapshot_dirs(job))
            report = write_report(job_dir, found)
        except Exception as exc:  # pylint: disable=W0703
            LOG_JOB.warning("bgsnap leftovers: not checked: %s", exc)
            return
        for item in found:
            LOG_JOB.warning("bgsnap leftover %s: %s", item.kind, item.what)
        if found:
            LOG_UI.warning(summary_line(found, report))

    def _settled(self, job_dir: Path, snapshot_dirs: set[Path]) -> list[Leftover]:
        """:func:`leftovers`, giving a process that is quitting up to SETTLE_S."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            found = leftovers(self.baseline, job_dir, snapshot_dirs, self.marker)
            if (not any(f.kind in ("qemu", "process") for f in found)
                    or time.monotonic() >= deadline):
                return found
            time.sleep(0.5)

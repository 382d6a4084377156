"""Find the metrics records of avocado jobs and turn them into typed points.

A *point* is one test's ``bgsnap-metrics.json`` joined with its status from
the job's ``results.json``.  Records are read with ``.get``: fields that a
record of an older or newer suite lacks are None (``mode`` absent =
background, ``qemu_build`` absent = system).  A *series* is the points of one
(qemu_build, mode, guest_mem_mib): the repetitions of one measured point.

Only ``kind == "snapshot"`` points go into series: negative controls damage
the snapshot on purpose (their figures are not the feature's), and the
workload benchmark takes no snapshot, and a CANCELled test (a predicted
refusal of background-snapshot) took none.  All points go into
points.csv/json.

The memory family (``avocado list memory``) adds what backs the guest RAM
(``memory``, ``restore_memory``, ``host_memory``), the prediction and QEMU's
answer (``expected``, ``qemu_refusal``, ``prediction_check``), what happened
during the save (``during_save``, ``suspended_save``, ``pause_note``): the
Point keeps the few facts report/memconfig.py tabulates, None when absent.

No avocado imports.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

METRICS_FILE = "bgsnap-metrics.json"   # == metrics.METRICS_FILE (no avocado import here)
RESULTS_JSON = "results.json"
DEFAULT_MODE = "background"
DEFAULT_BUILD = "system"
DEFAULT_TRANSPORT = "file"
MODE_ORDER = ("background", "stop_save", "snapshot_save", "precopy")
# latency_windows[i]["window"]: the workload's marks (workload.py)
WINDOW_BEFORE, WINDOW_DURING, WINDOW_AFTER = 0, 1, 2

KIND_SNAPSHOT, KIND_NEGATIVE, KIND_BENCH = "snapshot", "negative", "bench"
STATUS_CANCEL = "CANCEL"
PREDICTED_CANCEL = "cancel"     # prediction_check: QEMU refused as predicted


class ReportError(Exception):
    """No job, no records, or an unreadable record; the message says which."""


# --------------------------------------------------------------------------
# Finding records
# --------------------------------------------------------------------------

def _is_job_dir(path: Path) -> bool:
    return (path / "test-results").is_dir() or (path / RESULTS_JSON).is_file()


def unpack_archive(archive: Path) -> Path:
    """A job's result archive (``avocado run --archive``: ``<job dir>.zip``),
    unpacked into a temporary dir named like the job; removed at exit."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            top = Path(tempfile.mkdtemp(prefix="bgsnap-archive-"))
            atexit.register(shutil.rmtree, top, True)
            job = top / archive.name.removesuffix(".zip")
            zipped.extractall(job)   # zipfile drops leading '/' and '..' parts
    except (OSError, zipfile.BadZipFile) as exc:
        raise ReportError(f"{archive}: not a readable job archive: {exc}") from exc
    if not _is_job_dir(job):
        raise ReportError(f"{archive}: no avocado job in this archive (no test-results/, "
                          f"results.json)")
    return job


def job_dirs(paths: Iterable[Path | str]) -> list[Path]:
    """Each path is a job dir, a results dir holding ``job-*`` dirs, or a
    job's result archive (``job-*.zip``, from hosts that sent theirs).

    Resolved and de-duplicated (``latest`` is a symlink to a job dir).
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ReportError(f"{path}: no such job or results directory")
        path = path.resolve()
        if path.is_file() and path.suffix == ".zip":
            path = unpack_archive(path)
        if _is_job_dir(path):
            candidates = [path]
        else:
            candidates = sorted(p.resolve() for p in path.glob("job-*") if _is_job_dir(p))
            candidates += [unpack_archive(p) for p in sorted(path.glob("job-*.zip"))
                           if not _is_job_dir(p.with_suffix(""))]
            if not candidates:
                raise ReportError(f"{path}: neither an avocado job dir (test-results/, "
                                  f"results.json) nor a dir of job-* dirs")
        for job in candidates:
            if job not in found:
                found.append(job)
    return found


def record_files(job: Path) -> list[Path]:
    """The metrics records of one job, in test order."""
    return sorted(job.glob(f"test-results/*/**/{METRICS_FILE}"))


def job_statuses(job: Path) -> dict[str, dict]:
    """Test result dir name -> {status, name, fail_reason} from results.json.

    Empty when the job has no results.json (yet): the result plugin passes
    avocado's in-memory statuses instead.
    """
    path = job / RESULTS_JSON
    if not path.is_file():
        return {}
    try:
        tests = json.loads(path.read_text()).get("tests") or []
    except (OSError, ValueError):
        return {}
    out = {}
    for test in tests:
        logdir = test.get("logdir")
        if logdir:
            out[Path(logdir).name] = {"status": test.get("status"), "name": test.get("name"),
                                      "fail_reason": test.get("fail_reason")}
    return out


# --------------------------------------------------------------------------
# One point
# --------------------------------------------------------------------------

def _num(value) -> float | None:
    """A finite float, or None for absent/garbage values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(value) -> int | None:
    value = _num(value)
    return None if value is None else int(value)


def _windows(raw) -> list[tuple[float | None, float | None]]:
    """pause_windows as (stop_s, resume_s) pairs; a missing RESUME is None."""
    out = []
    for item in raw or []:
        if isinstance(item, (list, tuple)):
            stop = _num(item[0]) if len(item) > 0 else None
            resume = _num(item[1]) if len(item) > 1 else None
        elif isinstance(item, Mapping):
            stop, resume = _num(item.get("stop_s")), _num(item.get("resume_s"))
        else:
            continue
        out.append((stop, resume))
    return out


def _latency(raw) -> dict[int, dict]:
    out = {}
    for item in raw or []:
        if isinstance(item, Mapping) and _int(item.get("window")) is not None:
            out[_int(item.get("window"))] = dict(item)
    return out


@dataclass
class Point:
    """One test's figures and outcome (see the module doc for None)."""

    job: str                        # job dir name
    test: str                       # test result dir name, e.g. 1-bgsnap.basic.small
    name: str                       # test name
    status: str | None              # avocado status: PASS, FAIL, ERROR, ... (None = unknown)
    fail_reason: str | None
    record_path: str
    kind: str                       # snapshot | negative | bench
    qemu_build: str
    qemu_version: str | None
    accel: str | None
    mode: str
    transport: str
    negative_control: str | None
    guest_mem_mib: int | None
    workload_mib: int | None
    workload: str | None            # pattern/writers/rate, e.g. "random x1 unlimited"
    repetition: int | None
    pause_ms: float | None          # true pause (None: unknown, e.g. no RESUME)
    pause_windows: list[tuple[float | None, float | None]] = field(default_factory=list)
    downtime_ms: float | None = None
    snapshot_total_s: float | None = None
    snapshot_bytes: int | None = None
    ram_transferred_bytes: int | None = None
    boot_s: float | None = None
    phase_s: dict[str, float] = field(default_factory=dict)
    latency_windows: dict[int, dict] = field(default_factory=dict)
    rss_before_kib: int | None = None
    rss_after_kib: int | None = None
    source_peak_rss_kib: int | None = None    # VmHWM of the source QEMU, at the restore
    restored_peak_rss_kib: int | None = None  # VmHWM of the restoring QEMU, once loaded
    disk_bytes_peak: int | None = None        # image (+ RAM dump) on disk at once
    verdict: str | None = None
    host_verify: str | None = None
    # -- the memory family (None / empty in records without these keys) ---
    memory_label: str | None = None          # memory.label, e.g. "memfd/shared, 1 vCPU"
    restore_memory_label: str | None = None  # restore_memory.label
    memory_types: list[str] = field(default_factory=list)   # anon|shmem|hugetlb|file, per block
    memory_fs: list[str] = field(default_factory=list)      # the filesystems of file blocks
    thp_mode: str | None = None              # host_memory.thp_mode during the test
    during_actions: list[str] = field(default_factory=list)  # during_save[*].action
    guest_state: str | None = None           # "S3", or "suspended" (a suspended_save)
    expected_supported: bool | None = None
    expected_reason: str | None = None
    expected_refusal: str | None = None
    qemu_refusal: str | None = None
    prediction_check: str | None = None      # proceed | cancel | fail
    pause_note: str | None = None            # why a save has no pause window
    # -- the host that ran it (a fleet report groups by these) -------------
    hostname: str | None = None              # host.hostname (os.uname().nodename)
    kernel_release: str | None = None        # host.kernel_release
    cpu_model: str | None = None             # host.cpu_model
    # -- a whole-VM snapshot (disk.*, docs/disk.md) ---------------------------
    disk_form: str | None = None             # disk.form: background | internal

    # -- derived figures (figures.py names them) --------------------------
    @property
    def missing_resume(self) -> bool:
        return any(stop is not None and resume is None for stop, resume in self.pause_windows)

    @property
    def ok(self) -> bool:
        """The test passed: avocado says PASS (or nothing) and the suite's verdict is pass."""
        return self.status in (None, "PASS") and self.verdict == "pass"

    @property
    def cancelled(self) -> bool:
        """No snapshot was taken: avocado CANCELled the test (e.g. QEMU refused
        background-snapshot as predicted), or the record says so."""
        if self.status is not None:
            return self.status == STATUS_CANCEL
        return self.prediction_check == PREDICTED_CANCEL

    @property
    def outcome(self) -> str:
        if self.ok:
            return "pass"
        if self.verdict and self.verdict != "pass":
            return self.verdict
        if self.status and self.status != "PASS":
            return f"{self.status}: {self.fail_reason}" if self.fail_reason else self.status
        return "not reached"

    @property
    def mode_label(self) -> str:
        """The mode, plus ``+disk`` for a whole-VM snapshot (its pause holds
        the disk step) and the transport when it is not a plain file."""
        mode = f"{self.mode}+disk" if self.disk_form else self.mode
        if self.transport in (DEFAULT_TRANSPORT, "", None):
            return mode
        return f"{mode}+{self.transport}"

    @property
    def stop_s(self) -> float | None:
        return self.pause_windows[0][0] if self.pause_windows else None

    @property
    def resume_s(self) -> float | None:
        return self.pause_windows[0][1] if self.pause_windows else None

    @property
    def source_peak_rss_mib(self) -> float | None:
        return None if self.source_peak_rss_kib is None else self.source_peak_rss_kib / 1024

    @property
    def restored_peak_rss_mib(self) -> float | None:
        return None if self.restored_peak_rss_kib is None else self.restored_peak_rss_kib / 1024

    @property
    def disk_mib(self) -> float | None:
        return None if self.disk_bytes_peak is None else self.disk_bytes_peak / 2**20

    @property
    def snapshot_mib(self) -> float | None:
        return None if self.snapshot_bytes is None else self.snapshot_bytes / 2**20

    def phase(self, name: str) -> float | None:
        return _num(self.phase_s.get(name))

    @property
    def fill_s(self) -> float | None:
        return self.phase("fill")

    @property
    def restore_s(self) -> float | None:
        return self.phase("restore")

    @property
    def dump_s(self) -> float | None:
        return self.phase("dump")

    @property
    def verify_s(self) -> float | None:
        return self.phase("host_verify")

    def throughput(self, window: int) -> float | None:
        item = self.latency_windows.get(window)
        return None if item is None else _num(item.get("mib_per_s"))

    @property
    def mib_s_before(self) -> float | None:
        return self.throughput(WINDOW_BEFORE)

    @property
    def mib_s_during(self) -> float | None:
        return self.throughput(WINDOW_DURING)

    @property
    def mib_s_after(self) -> float | None:
        return self.throughput(WINDOW_AFTER)

    @property
    def dip_pct(self) -> float | None:
        """How much slower the guest wrote during the snapshot than before, in %."""
        before, during = self.mib_s_before, self.mib_s_during
        if before is None or during is None or before <= 0:
            return None
        return (before - during) / before * 100.0

    def _during(self, key: str) -> float | None:
        item = self.latency_windows.get(WINDOW_DURING)
        if item is None or not _num(item.get("count")):
            return None
        return _num(item.get(key))

    @property
    def stall_max_ms(self) -> float | None:
        """Longest single guest write during the snapshot, ms."""
        value = self._during("max_ns")
        return None if value is None else value / 1e6

    @property
    def stall_p99_us(self) -> float | None:
        value = self._during("p99_ns")
        return None if value is None else value / 1e3

    def figure(self, key: str) -> float | None:
        return _num(getattr(self, key))

    def to_dict(self) -> dict:
        """Every raw and derived value (points.json)."""
        data = asdict(self)
        data["pause_windows"] = [list(w) for w in self.pause_windows]
        data["latency_windows"] = [self.latency_windows[k] for k in sorted(self.latency_windows)]
        for name in ("ok", "cancelled", "outcome", "missing_resume", "mode_label", "stop_s",
                     "resume_s", "snapshot_mib", "dip_pct", "stall_max_ms", "stall_p99_us",
                     "mib_s_before", "mib_s_during", "mib_s_after"):
            data[name] = getattr(self, name)
        return data


def _kind(data: Mapping, name: str) -> str:
    if "bench_seconds" in data or name.startswith("bench.") or ".bench." in name:
        return KIND_BENCH
    if data.get("negative_control") not in (None, "", "none"):
        return KIND_NEGATIVE
    if ".negative." in f".{name}" or ".damaged_" in f".{name}":
        return KIND_NEGATIVE  # records written before negative_control was recorded
    return KIND_SNAPSHOT


def _workload_label(data: Mapping) -> str | None:
    spec = data.get("workload")
    if not isinstance(spec, Mapping):
        return None
    rate = _num(spec.get("rate_mib_s"))
    return "%s x%s %s" % (spec.get("pattern", "?"), spec.get("writers", "?"),
                          f"{rate:g} MiB/s" if rate else "unlimited")


def _pause_ms(data: Mapping, windows) -> float | None:
    if windows and any(stop is None or resume is None for stop, resume in windows):
        return None  # a STOP without RESUME: the pause is unknown, not short
    value = _num(data.get("pause_ms"))
    if value is None and windows:
        value = sum(resume - stop for stop, resume in windows) * 1000.0
    return value


def _mapping(value) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _text(value) -> str | None:
    return None if value is None or isinstance(value, (Mapping, list)) else str(value)


def _unique(values: Iterable) -> list[str]:
    out: list[str] = []
    for value in values:
        if value not in (None, "") and str(value) not in out:
            out.append(str(value))
    return out


def _memory_facts(data: Mapping) -> dict:
    """The memory family's keys as Point fields (see the module doc)."""
    memory, host_memory = _mapping(data.get("memory")), _mapping(data.get("host_memory"))
    blocks = [b for b in memory.get("blocks") or [] if isinstance(b, Mapping)]
    expected = _mapping(data.get("expected"))
    during = [d for d in data.get("during_save") or [] if isinstance(d, Mapping)]
    guest_state = _text(data.get("guest_state"))
    if guest_state is None and isinstance(data.get("suspended_save"), Mapping):
        guest_state = "suspended"
    supported = expected.get("supported")
    return {
        "memory_label": _text(memory.get("label")),
        "restore_memory_label": _text(_mapping(data.get("restore_memory")).get("label")),
        "memory_types": _unique(b.get("memory_type") for b in blocks),
        "memory_fs": _unique(b.get("path_fs") for b in blocks if b.get("memory_type") == "file"),
        "thp_mode": _text(host_memory.get("thp_mode")),
        "during_actions": _unique(d.get("action") for d in during),
        "guest_state": guest_state,
        "expected_supported": supported if isinstance(supported, bool) else None,
        "expected_reason": _text(expected.get("reason")),
        "expected_refusal": _text(expected.get("refusal")),
        "qemu_refusal": _text(data.get("qemu_refusal")),
        "prediction_check": _text(data.get("prediction_check")),
        "pause_note": _text(data.get("pause_note")),
    }


def point_from_record(data: Mapping, *, job: str, test: str, record_path: str,
                      status: Mapping | None = None) -> Point:
    """One record (a parsed bgsnap-metrics.json) as a Point."""
    status = status or {}
    name = status.get("name") or test.split("-", 1)[-1]
    host = data.get("host") if isinstance(data.get("host"), Mapping) else {}
    qemu = host.get("qemu") if isinstance(host.get("qemu"), Mapping) else {}
    transport = data.get("transport")
    if isinstance(transport, Mapping):
        transport = transport.get("name")
    windows = _windows(data.get("pause_windows"))
    phase = data.get("phase_s") if isinstance(data.get("phase_s"), Mapping) else {}
    host_verify = data.get("host_verify")
    return Point(
        job=job, test=test, name=str(name), status=status.get("status"),
        fail_reason=status.get("fail_reason") or None, record_path=record_path,
        kind=_kind(data, str(name)),
        qemu_build=str(data.get("qemu_build") or DEFAULT_BUILD),
        qemu_version=qemu.get("version_text"),
        accel=data.get("accel"),
        mode=str(data.get("mode") or DEFAULT_MODE),
        transport=str(transport or DEFAULT_TRANSPORT),
        negative_control=data.get("negative_control"),
        guest_mem_mib=_int(data.get("guest_mem_mib")),
        workload_mib=_int(data.get("workload_mib")),
        workload=_workload_label(data),
        repetition=_int(data.get("repetition")),
        pause_ms=_pause_ms(data, windows),
        pause_windows=windows,
        downtime_ms=_num(data.get("downtime_ms")),
        snapshot_total_s=_num(data.get("snapshot_total_s")),
        snapshot_bytes=_int(data.get("snapshot_bytes")),
        ram_transferred_bytes=_int(data.get("ram_transferred_bytes")),
        boot_s=_num(data.get("boot_s")),
        phase_s={k: v for k, v in phase.items() if _num(v) is not None},
        latency_windows=_latency(data.get("latency_windows")),
        rss_before_kib=_int(data.get("rss_before_kib")),
        rss_after_kib=_int(data.get("rss_after_kib")),
        source_peak_rss_kib=_int(data.get("source_peak_rss_kib")),
        restored_peak_rss_kib=_int(data.get("restored_peak_rss_kib")),
        disk_bytes_peak=_int(data.get("disk_bytes_peak")),
        verdict=data.get("verdict"),
        host_verify=str(host_verify) if host_verify is not None else None,
        hostname=_text(host.get("hostname")) or None,
        kernel_release=_text(host.get("kernel_release")) or None,
        cpu_model=_text(host.get("cpu_model")) or None,
        disk_form=_text(_mapping(data.get("disk")).get("form")) or None,
        **_memory_facts(data),
    )


def load_points(paths: Iterable[Path | str],
                statuses: Mapping[str, Mapping] | None = None) -> list[Point]:
    """Every record under the given job/results dirs, as points.

    ``statuses`` (test result dir name -> {status, name, fail_reason})
    overrides results.json; the result plugin passes avocado's own.
    """
    points = []
    for job in job_dirs(paths):
        known = dict(job_statuses(job))
        known.update(statuses or {})
        for path in record_files(job):
            test = path.relative_to(job / "test-results").parts[0]
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ReportError(f"{path}: unreadable record: {exc}") from exc
            if not isinstance(data, Mapping):
                raise ReportError(f"{path}: not a JSON object")
            points.append(point_from_record(data, job=job.name, test=test,
                                            record_path=str(path), status=known.get(test)))
    return points


# --------------------------------------------------------------------------
# Series
# --------------------------------------------------------------------------

def mode_sort_key(mode: str) -> tuple:
    base = mode.split("+", 1)[0]
    rank = MODE_ORDER.index(base) if base in MODE_ORDER else len(MODE_ORDER)
    return (rank, mode)


@dataclass
class Series:
    """The runs of one (qemu_build, mode, guest_mem_mib)."""

    qemu_build: str
    mode: str                       # Point.mode_label
    guest_mem_mib: int
    points: list[Point] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.qemu_build, self.mode, self.guest_mem_mib)

    def values(self, key: str) -> list[float]:
        return [v for v in (p.figure(key) for p in self.points) if v is not None]

    @property
    def n(self) -> int:
        return len(self.points)

    @property
    def n_failed(self) -> int:
        return sum(not p.ok for p in self.points)

    @property
    def n_missing_resume(self) -> int:
        return sum(p.missing_resume for p in self.points)

    @property
    def qemu_versions(self) -> list[str]:
        return sorted({p.qemu_version for p in self.points if p.qemu_version})

    @property
    def workloads(self) -> list[str]:
        return sorted({p.workload for p in self.points if p.workload})


def group_series(points: Iterable[Point]) -> list[Series]:
    """Snapshot points by (qemu_build, mode label, guest RAM), sorted.

    A cancelled test took no snapshot: it is no sample (and no failure).
    """
    groups: dict[tuple, Series] = {}
    for point in points:
        if point.kind != KIND_SNAPSHOT or point.guest_mem_mib is None or point.cancelled:
            continue
        key = (point.qemu_build, point.mode_label, point.guest_mem_mib)
        if key not in groups:
            groups[key] = Series(*key)
        groups[key].points.append(point)
    return sorted(groups.values(),
                  key=lambda s: (s.qemu_build, mode_sort_key(s.mode), s.guest_mem_mib))


def build_sort_key(build: str) -> tuple:
    """The system QEMU first, then the other builds by name."""
    return (build != DEFAULT_BUILD, build)


def builds(series: Iterable[Series]) -> list[str]:
    """Build names, the system QEMU first."""
    return sorted({s.qemu_build for s in series}, key=build_sort_key)


def modes(series: Iterable[Series]) -> list[str]:
    return sorted({s.mode for s in series}, key=mode_sort_key)

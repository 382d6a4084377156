"""The host kernel's UFFD-WP, checked without a guest: ``bgsnap-uffd-check``.

The C program (``guest/uffdcheck/``, docs/uffd-check.md) does to memory of
each type what QEMU's background snapshot does to guest RAM and reports one
result per case as JSON.  Here:

* :func:`run_check` builds (or reuses) the binary and runs it, with a few
  2 MiB hugepages reserved around the run (:func:`host.memory.reserved_hugepages`,
  which puts ``nr_hugepages`` back) -- without them (not root, no pages) the
  hugetlb cases are ``unsupported`` with the reason -- and, for the KSM
  cases (``wp-ksm``, ``wp-ksm-premerged``), ksmd running fast
  (:func:`host.ksm.ksm_control`, which puts ``run``, ``pages_to_scan`` and
  ``sleep_millisecs`` back and unmerges) -- not root: ``unsupported: needs
  root to run ksmd``;
* :func:`parse_report` turns its JSON into a :class:`CheckReport` of
  :class:`CaseResult`;
* :func:`render_table` for people, :func:`write_json` for files;
* :func:`verdict` (any FAIL fails, nothing supported cancels) and
  :func:`negative_verdict` (the negative control passes only when the check
  failed every case it could run).

No work at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import paths
from .guest import wl_build
from .host import ksm as host_ksm
from .host import memory
from .host.errors import _is_root

PASS, FAIL, UNSUPPORTED = "pass", "FAIL", "unsupported"
RESULTS = (PASS, FAIL, UNSUPPORTED)
HUGEPAGE_KIB = 2048
# The hugetlb cases map 8 MiB (4 pages); a private mapping forked with its
# child writing needs file pages + the parent's copies + the child's: 12.
HUGEPAGES = 16
# Need ksmd running: started around the run when root.
KSM_CASES = ("wp-ksm", "wp-ksm-premerged")
# The negative control: QEMU's flow on every memory type, and the KSM cases,
# never protected.
NEGATIVE_CASES = ("wp-basic", *KSM_CASES)
FAULT_LATENCY_CASE = "fault-latency"
KSM_NEEDS_ROOT = "needs root to run ksmd"
# bgsnap-uffd-check: 0 no FAIL, 1 a FAIL, 3 its watchdog stopped a hung case
# (the JSON is complete in all three).
_REPORTED_EXITS = (0, 1, 3)


class UffdCheckError(Exception):
    """The check could not be built, run or read; ``command``/``stderr`` say how."""

    def __init__(self, message: str, command: list[str] | None = None, stderr: str = ""):
        self.command = command
        self.stderr = stderr
        tail = " | ".join(line for line in stderr.strip().splitlines()[-5:])
        super().__init__(f"{message}; stderr: {tail}" if tail else message)


@dataclass(frozen=True)
class CaseResult:
    """One case on one memory type."""

    name: str
    memory_type: str
    result: str
    reason: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}[{self.memory_type}]"

    @property
    def supported(self) -> bool:
        return self.result != UNSUPPORTED

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "figures": dict(self.figures)}


@dataclass(frozen=True)
class CheckReport:
    """What one run of ``bgsnap-uffd-check`` reported."""

    kernel: str
    features: int
    feature_names: tuple[str, ...]
    no_protect: bool
    cases: tuple[CaseResult, ...]
    host: Mapping[str, Any] = field(default_factory=dict)  # the rest of the header
    aborted: str | None = None

    def with_result(self, result: str) -> list[CaseResult]:
        return [c for c in self.cases if c.result == result]

    @property
    def failed(self) -> list[CaseResult]:
        return self.with_result(FAIL)

    @property
    def supported(self) -> list[CaseResult]:
        return [c for c in self.cases if c.supported]

    def case(self, name: str, memory_type: str) -> CaseResult | None:
        return next((c for c in self.cases if (c.name, c.memory_type) == (name, memory_type)),
                    None)

    def fault_round_trip(self) -> dict[str, float]:
        """p50/p99/max/mean (µs) and n of the ``fault-latency`` case, {} if it did not run."""
        case = self.case(FAULT_LATENCY_CASE, "anon")
        if case is None or case.result != PASS:
            return {}
        return {key.removeprefix("fault_"): value for key, value in case.figures.items()
                if key.startswith("fault_")}

    def ksm_merges(self) -> dict[str, dict[str, Any]]:
        """Per KSM case that ran: what ksmd merged and what the writes met.

        ``merged`` pages, ``merged_uffd_wp`` (of them still uffd-wp in pagemap
        before the writes), ``writes_without_fault`` (writes to merged pages that
        reached memory without a fault), ``wait_s``, ``result``.
        """
        found = {}
        for name in KSM_CASES:
            case = self.case(name, "anon")
            if case is None or "pages_merged" not in case.figures:
                continue
            fig = case.figures
            found[name] = {"result": case.result, "pages": fig.get("pages"),
                           "merged": fig.get("pages_merged_before_writes",
                                             fig.get("pages_merged")),
                           "merged_uffd_wp": fig.get("merged_uffd_wp_before_writes"),
                           "writes_without_fault": fig.get("merged_writes_without_fault"),
                           "wait_s": fig.get("ksm_wait_s")}
        return found

    def counts(self) -> dict[str, int]:
        return {result: len(self.with_result(result)) for result in RESULTS}

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "features": hex(self.features),
                "feature_names": list(self.feature_names), "no_protect": self.no_protect,
                **dict(self.host), "aborted": self.aborted, "summary": self.counts(),
                "fault_round_trip_us": self.fault_round_trip(),
                "ksm_merges": self.ksm_merges(),
                "cases": [c.to_dict() for c in self.cases]}


@dataclass(frozen=True)
class Verdict:
    """PASS, FAIL or CANCEL, and the sentence that says why."""

    status: str
    message: str


@dataclass(frozen=True)
class CheckOptions:
    """How to run the check (from cfg params or the command line)."""

    negative: bool = False
    hugepages: int = HUGEPAGES
    cases: tuple[str, ...] = ()
    memory_types: tuple[str, ...] = ()
    mib: int = 16
    writers: int = 2
    case_timeout_s: float = 30.0
    timeout_s: float = 300.0
    # the KSM cases: how long they wait for ksmd to merge, ksmd's knobs meanwhile
    ksm_wait_s: float = 20.0
    ksm_pages_to_scan: int = 8192
    ksm_sleep_ms: int = 10

    @property
    def selected_cases(self) -> tuple[str, ...]:
        """The ``--case`` list (empty: every case)."""
        return NEGATIVE_CASES if self.negative and not self.cases else self.cases

    def arguments(self, hugetlb_skip: str | None, ksm_skip: str | None = None) -> list[str]:
        cases = self.selected_cases
        args = ["--mib", str(self.mib), "--writers", str(self.writers),
                "--case-timeout", str(self.case_timeout_s), "--ksm-wait", f"{self.ksm_wait_s:g}"]
        args += ["--no-protect"] if self.negative else []
        args += ["--case", ",".join(cases)] if cases else []
        args += ["--memory", ",".join(self.memory_types)] if self.memory_types else []
        args += ["--skip-hugetlb", hugetlb_skip] if hugetlb_skip else []
        args += ["--skip-ksm", ksm_skip] if ksm_skip else []
        return args

    @property
    def wants_ksm(self) -> bool:
        """A KSM case (anon) is selected: ksmd must run."""
        cases = self.selected_cases
        return ((not cases or any(c in KSM_CASES for c in cases))
                and (not self.memory_types or "anon" in self.memory_types))

    @property
    def wants_hugetlb(self) -> bool:
        return not self.memory_types or any(t.startswith("hugetlb") for t in self.memory_types)


# -- parsing and rendering -------------------------------------------------------

def parse_report(text: str) -> CheckReport:
    """The JSON document of ``bgsnap-uffd-check`` as a :class:`CheckReport`.

    :raises ValueError: not that document (bad JSON, a case without its
        fields, an unknown result).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("tool") != "bgsnap-uffd-check":
        raise ValueError("not a bgsnap-uffd-check report")
    cases = []
    for raw in data.get("cases", []):
        try:
            case = CaseResult(name=str(raw["name"]), memory_type=str(raw["memory_type"]),
                              result=str(raw["result"]), reason=str(raw.get("reason", "")),
                              figures=dict(raw.get("figures", {})))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a case without name/memory_type/result: {raw!r}") from exc
        if case.result not in RESULTS:
            raise ValueError(f"{case.label}: unknown result {case.result!r}")
        cases.append(case)
    summary = data.get("summary", {})
    header = {k: v for k, v in data.items()
              if k not in ("tool", "format", "kernel", "features", "feature_names",
                           "no_protect", "cases", "summary")}
    return CheckReport(kernel=str(data.get("kernel", "?")),
                       features=int(str(data.get("features", "0")), 0),
                       feature_names=tuple(data.get("feature_names", ())),
                       no_protect=bool(data.get("no_protect", False)), cases=tuple(cases),
                       host=header, aborted=summary.get("aborted"))


def _fig(case: CaseResult, key: str) -> str:
    value = case.figures.get(key)
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def render_table(report: CheckReport) -> str:
    """The report as a text table, with the fault round trip and the counts."""
    head = f"UFFD-WP self-check: kernel {report.kernel}, features {hex(report.features)}"
    if report.no_protect:
        head += " -- NEGATIVE CONTROL (no write-protection: cases must FAIL)"
    rows = [("CASE", "MEMORY", "RESULT", "FAULTS", "P50_US", "P99_US", "REASON")]
    for case in report.cases:
        rows.append((case.name, case.memory_type, case.result, _fig(case, "wp_faults"),
                     _fig(case, "fault_p50_us"), _fig(case, "fault_p99_us"), case.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [head]
    for row in rows:
        cells = [cell.rjust(w) if 3 <= i <= 5 else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    trip = report.fault_round_trip()
    if trip:
        lines.append(f"fault round trip (write -> handler copies 4 KiB + un-protects -> write "
                     f"returns; 1 writer, anon): p50 {trip.get('p50_us')} µs, p99 "
                     f"{trip.get('p99_us')} µs, max {trip.get('max_us')} µs "
                     f"(n={trip.get('n')})")
    for name, ksm in report.ksm_merges().items():
        lines.append(f"KSM ({name}): {ksm['merged']} of {ksm['pages']} pages merged in "
                     f"{ksm['wait_s']} s, {ksm['merged_uffd_wp']} of them still uffd-wp, "
                     f"{ksm['writes_without_fault']} writes to merged pages without a fault")
    counts = report.counts()
    lines.append(f"{counts[PASS]} pass, {counts[FAIL]} FAIL, {counts[UNSUPPORTED]} unsupported"
                 + (f"; aborted: {report.aborted}" if report.aborted else ""))
    return "\n".join(lines)


def write_json(report: CheckReport, path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


# -- verdicts ------------------------------------------------------------------

def _reasons(cases: list[CaseResult], limit: int = 6) -> str:
    text = "; ".join(f"{c.label}: {c.reason}" if c.reason else c.label for c in cases[:limit])
    return text + (f"; and {len(cases) - limit} more" if len(cases) > limit else "")


def verdict(report: CheckReport) -> Verdict:
    """FAIL naming each failed case; CANCEL if no case could run; else PASS."""
    failed = report.failed
    if failed:
        return Verdict("FAIL", f"UFFD-WP self-check: {len(failed)} case(s) FAILED: "
                               f"{_reasons(failed)}")
    if report.aborted:
        return Verdict("FAIL", f"UFFD-WP self-check aborted: {report.aborted}")
    supported = report.supported
    if not supported:
        why = sorted({c.reason for c in report.cases}) or ["no cases ran"]
        return Verdict("CANCEL", f"UFFD-WP self-check: nothing supported on this host: "
                                 f"{'; '.join(why)}")
    unsupported = report.with_result(UNSUPPORTED)
    return Verdict("PASS", f"UFFD-WP self-check: {len(supported)} case(s) pass"
                           + (f", {len(unsupported)} unsupported" if unsupported else ""))


def negative_verdict(report: CheckReport) -> Verdict:
    """The negative control (no write-protection): PASS only if every case it ran FAILed."""
    if not report.no_protect:
        return Verdict("FAIL", "not a negative-control run (the report says no_protect=false)")
    supported = report.supported
    if not supported:
        return Verdict("CANCEL", "negative control: nothing supported on this host: "
                                 + "; ".join(sorted({c.reason for c in report.cases})))
    passed = [c for c in supported if c.result == PASS]
    if passed:
        return Verdict("FAIL", f"negative control: {len(passed)} case(s) passed without "
                               f"write-protection, so the check cannot fail there: "
                               f"{', '.join(c.label for c in passed)}")
    return Verdict("PASS", f"negative control: all {len(supported)} case(s) FAILED without "
                           f"write-protection, as they must ({_reasons(supported, 1)})")


# -- building and running --------------------------------------------------------

def build_dir() -> Path:
    """Where the binary is cached (``BGSNAP_HOME/uffd-check``)."""
    return paths.bgsnap_home() / "uffd-check"


def build_check(dest_dir: Path | None = None, static: bool = True) -> Path:
    """The ``bgsnap-uffd-check`` binary, compiled only when its sources changed."""
    try:
        return wl_build.build_uffd_check(dest_dir or build_dir(), static=static)
    except wl_build.UffdCheckBuildError as exc:
        raise UffdCheckError(str(exc)) from exc


def _execute(binary: Path, args: list[str], timeout_s: float) -> CheckReport:
    cmd = [str(binary), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise UffdCheckError(f"{' '.join(cmd)} took more than {timeout_s:g} s", cmd,
                             (exc.stderr or b"").decode(errors="replace")
                             if isinstance(exc.stderr, bytes) else exc.stderr or "") from exc
    except OSError as exc:
        raise UffdCheckError(f"cannot run {binary}: {exc}", cmd) from exc
    if proc.returncode not in _REPORTED_EXITS:
        raise UffdCheckError(f"{' '.join(cmd)} exited with {proc.returncode}", cmd, proc.stderr)
    try:
        return parse_report(proc.stdout)
    except ValueError as exc:
        raise UffdCheckError(f"{' '.join(cmd)}: unreadable report ({exc})", cmd,
                             proc.stderr) from exc


def _run_ksmd(stack: contextlib.ExitStack, options: CheckOptions,
              log: Callable[[str], None]) -> str | None:
    """ksmd running fast until ``stack`` closes (knobs put back); else why not."""
    if not _is_root():
        return KSM_NEEDS_ROOT
    try:
        control = stack.enter_context(host_ksm.ksm_control())
        control.start(options.ksm_pages_to_scan, options.ksm_sleep_ms)
    except memory.HostMemoryUnavailable as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot start ksmd: {exc}"
    log(f"ksmd running for the KSM cases (pages_to_scan {options.ksm_pages_to_scan}, "
        f"sleep_millisecs {options.ksm_sleep_ms}); its knobs go back to {control.original}")
    return None


def run_check(options: CheckOptions = CheckOptions(), binary: Path | None = None,
              log: Callable[[str], None] = memory.LOG.info) -> CheckReport:
    """Build (unless ``binary`` is given) and run the check; hugepages reserved around
    it, and ksmd running fast when a KSM case is selected.

    :raises UffdCheckError: the binary could not be built, run or read.
    :raises memory.HostMemoryNotRestored: ``nr_hugepages`` or KSM's knobs could not
        be put back.
    """
    binary = binary or build_check()
    with contextlib.ExitStack() as stack:
        skip = None
        if options.wants_hugetlb and options.hugepages > 0:
            try:
                pool = stack.enter_context(memory.reserved_hugepages(options.hugepages,
                                                                     HUGEPAGE_KIB))
                log(f"{pool.available} free {HUGEPAGE_KIB} kB hugepages for the hugetlb cases")
            except memory.HostMemoryUnavailable as exc:
                skip = str(exc)
                log(f"hugetlb cases unsupported: {skip}")
        ksm_skip = _run_ksmd(stack, options, log) if options.wants_ksm else None
        if ksm_skip:
            log(f"KSM cases unsupported: {ksm_skip}")
        report = _execute(binary, options.arguments(skip, ksm_skip), options.timeout_s)
    if not (options.negative or options.cases or options.memory_types):
        _remember(report)   # only a full check stands for the kernel
    return report


# -- the last check of this kernel, in every job's results ------------------------
# Every full run is kept per kernel release (state dir); the job-end report
# plugin copies it into each job as JOB_FILE, so every job says what the
# kernel's UFFD-WP did, as each test's record says what the host is.
JOB_FILE = "bgsnap-uffd-check.json"


def _cache_path(kernel: str) -> Path:
    return paths.state_dir() / f"uffd-check-{kernel}.json"


def _remember(report: CheckReport) -> None:
    path = _cache_path(report.kernel)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text(render_table(report) + "\n")
        write_json(report, path)
    except OSError as exc:
        memory.LOG.warning("uffd-check result not kept: %s", exc)


def store_in_job(job_dir: Path) -> Path | None:
    """Copy the last self-check of the running kernel into ``job_dir`` (JSON
    + the text table beside it); None when this kernel was never checked."""
    cached = _cache_path(os.uname().release)
    if not cached.is_file():
        return None
    dest = Path(job_dir) / JOB_FILE
    for src, dst in ((cached.with_suffix(".txt"), dest.with_suffix(".txt")), (cached, dest)):
        if src.is_file():
            shutil.copyfile(src, dst)
    return dest

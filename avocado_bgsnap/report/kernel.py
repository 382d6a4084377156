"""One verdict table per host kernel: does its UFFD-WP keep background
snapshots exact?

From a job's (or many jobs') results: the guest-less self-check
(``uffd-check.json`` of ``uffd.selfcheck``), the memory backends and the
host memory-management events (``bgsnap-metrics.json`` records of the
``memory.backend`` and ``hostmm`` families).  Rows are grouped by the kernel
the records name, so two kernels' results sit side by side like two QEMU
builds.  Pure: files in, typed rows and text out; no avocado imports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from . import collect

UFFD_RESULT = "uffd-check.json"
VERDICT_FILE = "kernel-verdict.json"
FAMILIES = ("uffd", "memory", "hostmm")
OUTCOME_ORDER = {"FAIL": 0, "ERROR": 1, "CANCEL": 2, "unsupported": 2, "PASS": 3, "pass": 3,
                 "measured": 3}


@dataclass(frozen=True)
class KernelRow:
    family: str        # uffd | memory | hostmm
    case: str          # the check or test
    outcome: str       # PASS / FAIL / ERROR / CANCEL (uffd: pass / FAIL / unsupported)
    evidence: str      # what it measured or why


@dataclass
class KernelVerdict:
    kernel: str
    features: str = "?"
    rows: list[KernelRow] = field(default_factory=list)

    @property
    def failed(self) -> list[KernelRow]:
        return [r for r in self.rows if r.outcome in ("FAIL", "ERROR")]

    def answer(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.outcome.upper()] = counts.get(row.outcome.upper(), 0) + 1
        text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        if self.failed:
            return (f"kernel {self.kernel}: NO ({text}): "
                    + "; ".join(f"{r.family} {r.case}" for r in self.failed[:6]))
        return f"kernel {self.kernel}: yes ({text})"

    def to_dict(self) -> dict:
        return {"kernel": self.kernel, "features": self.features, "answer": self.answer(),
                "rows": [asdict(r) for r in self.rows]}


def _uffd_rows(report: dict) -> list[KernelRow]:
    """One row per check, its memory types folded into the evidence."""
    by_case: dict[str, list[dict]] = {}
    for case in report.get("cases", []):
        by_case.setdefault(case.get("name", "?"), []).append(case)
    rows = []
    for name, cases in by_case.items():
        outcome = min((c.get("result", "?") for c in cases),
                      key=lambda r: OUTCOME_ORDER.get(r, 1))
        parts = [f"{c.get('memory_type', '?')}: {c.get('result')}" for c in cases]
        odd = [c.get("reason", "") for c in cases if c.get("result") != "pass"]
        rows.append(KernelRow("uffd", name, outcome,
                              ", ".join(parts) + (f" ({odd[0]})" if odd else "")))
    latency = report.get("fault_round_trip_us") or {}
    if latency:
        rows.append(KernelRow("uffd", "fault round trip", "measured",
                              "p50 {p50} µs, p99 {p99} µs, max {max} µs (n={n})".format(
                                  p50=latency.get("p50_us", "?"), p99=latency.get("p99_us", "?"),
                                  max=latency.get("max_us", "?"), n=latency.get("n", "?"))))
    return rows


def _evidence(record: dict) -> str:
    """What a memory/hostmm run measured: the pause, and per action during
    the save its non-zero kernel counters."""
    bits = []
    if record.get("pause_ms") is not None:
        bits.append(f"pause {record['pause_ms']:.2f} ms")
    for action in record.get("during_save") or []:
        counters = dict(action.get("vmstat") or {})
        if action.get("merged_guest_pages") is not None:   # ksm
            counters["merged_guest_pages"] = action["merged_guest_pages"]
        shown = [f"{k} {v}" for k, v in counters.items() if isinstance(v, (int, float)) and v][:4]
        bits.append(f"{action.get('action')}: " + (", ".join(shown) or "no counter moved"))
    if record.get("qemu_refusal"):
        bits.append(f"QEMU: {record['qemu_refusal']}")
    return "; ".join(bits)


def _family(name: str) -> str | None:
    for part in name.split("."):
        if part in FAMILIES:
            return part
    return None


def _record_row(name: str, record: dict, status: str | None, reason: str | None) -> KernelRow:
    family = _family(name) or "?"
    verdict = record.get("verdict")
    outcome = status or ("PASS" if verdict == "pass" else "FAIL" if verdict else "ERROR")
    evidence = _evidence(record)
    if outcome != "PASS":
        why = (verdict if verdict not in (None, "pass") else reason) or ""
        evidence = (why[:120] + ("; " if evidence else "")) + evidence
    return KernelRow(family, name.split(f"{family}.", 1)[-1], outcome, evidence)


def kernel_verdicts(job_dirs: Iterable[Path], statuses: dict[str, dict] | None = None
                    ) -> list[KernelVerdict]:
    """The kernel verdicts of the jobs (``statuses``: avocado's per test
    result dir, as collect.load_points takes them; read from results.json
    when None)."""
    verdicts: dict[str, KernelVerdict] = {}

    def verdict_for(kernel: str) -> KernelVerdict:
        return verdicts.setdefault(kernel, KernelVerdict(kernel))

    for job in map(Path, job_dirs):
        job_statuses = statuses if statuses is not None else collect.job_statuses(job)
        for path in sorted(job.glob("test-results/*/data/" + UFFD_RESULT)):
            report = json.loads(path.read_text())
            if report.get("no_protect"):
                continue  # the negative control: its FAILs are the point
            kernel = verdict_for(str(report.get("kernel", "?")))
            if any(r.family == "uffd" for r in kernel.rows):
                continue  # the same kernel checked again (e.g. once per QEMU build)
            kernel.features = str(report.get("features", kernel.features))
            kernel.rows += _uffd_rows(report)
        for path in collect.record_files(job):
            record = json.loads(path.read_text())
            test_dir = path.relative_to(job / "test-results").parts[0]
            name = test_dir.split("-", 1)[-1]
            if _family(name) not in ("memory", "hostmm") or ".negative." in f".{name}.":
                continue
            if _family(name) == "memory" and ".backend." not in name:
                continue
            host = record.get("host") or {}
            kernel = verdict_for(str(host.get("kernel_release", "?")))
            uffd = host.get("uffd") or {}
            if uffd.get("features"):
                kernel.features = str(uffd["features"])
            status = job_statuses.get(test_dir, {})
            kernel.rows.append(_record_row(name, record, status.get("status"),
                                           status.get("fail_reason")))
    return list(verdicts.values())


def has_kernel_data(job_dirs: Iterable[Path]) -> bool:
    """The jobs ran the self-check or the host memory-management family."""
    return any(any(j.glob("test-results/*/data/" + UFFD_RESULT))
               or any(".hostmm." in f".{p.parts[-3]}." for p in collect.record_files(j))
               for j in map(Path, job_dirs))


def render(verdicts: list[KernelVerdict]) -> str:
    """A text table per kernel, its answer line under it."""
    lines = []
    for verdict in verdicts:
        lines.append(f"kernel {verdict.kernel}, UFFD features {verdict.features}")
        width = max((len(f"{r.family} {r.case}") for r in verdict.rows), default=10)
        for row in verdict.rows:
            lines.append(f"  {(row.family + ' ' + row.case).ljust(width)}  "
                         f"{row.outcome:<11} {row.evidence}")
        lines.append(verdict.answer())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

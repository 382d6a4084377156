"""Suite / raw per phase: the figures of ``avocado bgsnap baseline``.

Pure functions over the runs' phase seconds; ``baseline/raw.py`` measures the
raw side, the suite's side is its ``avocado run`` wall time and the test's
record (``phase_s``, ``boot_s``, ``login_s``).
"""

import statistics
from dataclasses import dataclass

# the rows, in the cycle's order; "avocado" is the job and test frame: what
# the wall time of 'avocado run' holds beyond the test's phases
PHASES = ("avocado", "boot", "fill", "snapshot", "source_check", "restore",
          "host_verify", "guest_verify", "cleanup", "other")
# checks the raw cycle does not do: the suite pays them, the ratio counts them
SUITE_ONLY = ("source_check", "host_verify")
TARGET_RATIO = 1.5


class BaselineError(Exception):
    """The runs do not give a comparison."""


def suite_phases(record: dict, test_s: float, wall_s: float) -> dict[str, float]:
    """One suite run's phases: the record's, ``other`` (the test's time not
    in a phase: avocado-vt's VM set-up, the restored QEMU's stop) and
    ``avocado`` (the run's wall time beyond the test)."""
    phase_s = record.get("phase_s") or {}
    out = {"boot": float(record.get("boot_s") or 0) + float(record.get("login_s") or 0)}
    for name in ("fill", "snapshot", "source_check", "restore", "guest_verify", "cleanup"):
        out[name] = float(phase_s.get(name, 0.0))
    out["cleanup"] += float(phase_s.get("retire_source", 0.0))  # the source's quit
    out["host_verify"] = float(phase_s.get("host_verify", 0.0)) + float(phase_s.get("dump", 0.0))
    out["other"] = max(0.0, test_s - sum(out.values()))
    out["avocado"] = max(0.0, wall_s - test_s)
    out["total"] = wall_s
    return {k: round(v, 3) for k, v in out.items()}


@dataclass(frozen=True)
class Row:
    phase: str
    suite_s: float
    raw_s: float

    @property
    def ratio(self) -> float | None:
        return self.suite_s / self.raw_s if self.raw_s > 0 else None


def compare(suite_runs: list[dict], raw_runs: list[dict]) -> list[Row]:
    """Median seconds per phase, each side, and the total."""
    if not suite_runs or not raw_runs:
        raise BaselineError(f"need runs of both: {len(suite_runs)} suite, {len(raw_runs)} raw")

    def median(runs, name):
        return round(statistics.median(r.get(name, 0.0) for r in runs), 3)

    rows = [Row(p, median(suite_runs, p), median(raw_runs, p)) for p in PHASES]
    return rows + [Row("total", median(suite_runs, "total"), median(raw_runs, "total"))]


def total_ratio(rows: list[Row]) -> float:
    return next(r for r in rows if r.phase == "total").ratio


def render(rows: list[Row], n_suite: int, n_raw: int) -> str:
    lines = [f"{'phase':<14} {'suite s':>8} {'raw s':>7} {'suite/raw':>10}",
             "-" * 42]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        note = "  (suite only)" if row.phase in SUITE_ONLY else ""
        lines.append(f"{row.phase:<14} {row.suite_s:>8.2f} {row.raw_s:>7.2f} {ratio:>10}{note}")
    ratio = total_ratio(rows)
    met = "met" if ratio <= TARGET_RATIO else "NOT met"
    lines += ["-" * 42,
              f"medians of {n_suite} suite and {n_raw} raw runs; the whole test is "
              f"{ratio:.2f}x raw (target <= {TARGET_RATIO}x: {met})"]
    return "\n".join(lines)

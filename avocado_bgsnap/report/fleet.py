"""Many hosts in one report: which host ran what, and A/B between hosts.

Every record names the host that ran it (``host``: hostname, kernel
release, CPU model, with the QEMU version and the accelerator), so the job
dirs (or result archives) of a fleet can be reported together.  Points are
grouped by a *side*: the host itself, or one of its facts (``kernel``,
``qemu``, ``cpu``, ``accel``) -- two hosts, or two kernels across a fleet,
are then compared the way two QEMU builds are (compare.compare_job_sets:
QEMU builds are never mixed within one comparison).

Pure: points in, rows and comparisons out; no avocado imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

from . import collect, compare, stats

UNKNOWN = "unknown"
SIDES: dict[str, Callable[[collect.Point], str | None]] = {
    "host": lambda p: p.hostname,
    "kernel": lambda p: p.kernel_release,
    "qemu": lambda p: p.qemu_version,
    "cpu": lambda p: p.cpu_model,
    "accel": lambda p: p.accel,
}
DEFAULT_SIDE = "host"


def side_of(point: collect.Point, by: str = DEFAULT_SIDE) -> str:
    """The point's value of host fact ``by`` (UNKNOWN for records without it)."""
    try:
        value = SIDES[by](point)
    except KeyError:
        raise collect.ReportError(f"cannot group by {by!r}: choose one of "
                                  f"{', '.join(SIDES)}") from None
    return str(value) if value not in (None, "") else UNKNOWN


def sides(points: Iterable[collect.Point], by: str = DEFAULT_SIDE) -> list[str]:
    return sorted({side_of(p, by) for p in points})


def is_fleet(points: Sequence[collect.Point]) -> bool:
    """More than one known host in these points."""
    return len([s for s in sides(points) if s != UNKNOWN]) > 1


@dataclass
class HostRow:
    """What one host ran, and on what."""

    hostname: str
    points: list[collect.Point] = field(default_factory=list)

    def _facts(self, by: str) -> str:
        return ", ".join(sorted({side_of(p, by) for p in self.points}))

    @property
    def kernels(self) -> str:
        return self._facts("kernel")

    @property
    def qemus(self) -> str:
        return self._facts("qemu")

    @property
    def cpus(self) -> str:
        return self._facts("cpu")

    @property
    def accels(self) -> str:
        return self._facts("accel")

    @property
    def jobs(self) -> list[str]:
        return sorted({p.job for p in self.points})

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for point in self.points:
            key = point.status or "?"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    def median_pause_ms(self, mode: str = "background") -> float | None:
        values = [p.pause_ms for p in self.points
                  if p.kind == collect.KIND_SNAPSHOT and p.mode_label == mode
                  and p.pause_ms is not None and p.ok]
        summary = stats.summarize(values)
        return summary.median if summary else None


def per_host(points: Iterable[collect.Point]) -> list[collect.Point]:
    """The points with ``qemu_build`` read as ``<build>@<host>``, so the
    tables and plots made per QEMU build keep the hosts of a fleet apart."""
    return [replace(p, qemu_build=f"{p.qemu_build}@{side_of(p, 'host')}") for p in points]


def host_rows(points: Iterable[collect.Point]) -> list[HostRow]:
    rows: dict[str, HostRow] = {}
    for point in points:
        name = side_of(point, "host")
        rows.setdefault(name, HostRow(name)).points.append(point)
    return [rows[name] for name in sorted(rows)]


def compare_sides(points: Sequence[collect.Point], by: str = DEFAULT_SIDE,
                  a: str | None = None, b: str | None = None,
                  **kwargs) -> list[compare.ABComparison]:
    """Side ``b`` (default: every other side) against ``a`` (default: the first).

    A side is a value of host fact ``by``: ``compare_sides(points, "kernel",
    "6.1.0-27-amd64", "6.12.9-amd64")`` compares two kernels over every host
    that ran them.  Within each comparison QEMU builds are kept apart.
    """
    known = [s for s in sides(points, by) if s != UNKNOWN]
    for wanted in (a, b):
        if wanted is not None and wanted not in known:
            raise collect.ReportError(f"no {by} {wanted!r} in these jobs; they hold "
                                      f"{', '.join(known) or 'none'}")
    if len(known) < 2 and not (a and b):
        return []
    baseline = a or known[0]
    candidates = [b] if b else [s for s in known if s != baseline]
    out: list[compare.ABComparison] = []
    for candidate in candidates:
        out += compare.compare_job_sets(
            [p for p in points if side_of(p, by) == baseline],
            [p for p in points if side_of(p, by) == candidate],
            a_label=f"{by} {baseline}", b_label=f"{by} {candidate}", **kwargs)
    return out


def answer_line(rows: Sequence[HostRow]) -> str:
    tests = sum(len(r.points) for r in rows)
    return (f"Fleet: {len(rows)} hosts, {tests} tests: "
            + "; ".join(f"{r.hostname} ({r.kernels}, QEMU {r.qemus}, {r.accels}): "
                        f"{len(r.points)}" for r in rows))

"""A/B: did B make the pause or the stalls worse than A?

Side A is the baseline, side B the candidate (the patched QEMU).  Runs are
paired by (mode, guest RAM); every figure in ``figures.COMPARED`` of every
pair gets a :class:`stats.Verdict`.  The answer is "yes" when any of them is
a regression, "no" when none is and at least one pair had enough runs, and
"cannot tell" when no pair had enough.

Two ways in: two sets of job dirs (:func:`compare_dirs`), or several QEMU
builds within the same jobs, each against a baseline build
(:func:`compare_builds`, the system QEMU by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from . import collect, stats
from .figures import COMPARED, Figure

YES, NO, CANNOT_TELL = "yes", "no", "cannot tell"
UNCONFIRMED = "unconfirmed"     # flagged, not yet re-run (report/confirm.py)


@dataclass(frozen=True)
class ABRow:
    mode: str
    guest_mem_mib: int
    figure: Figure
    verdict: stats.Verdict
    failed_a: int               # runs on each side whose test failed
    failed_b: int
    # a flag re-run by report/confirm.py: True = flagged again, False = not;
    # None = not re-run (yet)
    confirmed: bool | None = None


@dataclass
class ABComparison:
    a_label: str                # baseline
    b_label: str                # candidate
    rows: list[ABRow] = field(default_factory=list)
    a_points: list[collect.Point] = field(default_factory=list)
    b_points: list[collect.Point] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[ABRow]:
        return [r for r in self.rows if r.verdict.verdict == stats.REGRESSION]

    @property
    def improvements(self) -> list[ABRow]:
        return [r for r in self.rows if r.verdict.verdict == stats.IMPROVEMENT]

    @property
    def decided(self) -> list[ABRow]:
        return [r for r in self.rows if r.verdict.verdict != stats.NOT_ENOUGH]

    @property
    def answer(self) -> str:
        """Did B make the pause or the stalls worse?  Only a regression its
        re-run flagged again is a yes (report/confirm.py)."""
        if any(r.confirmed for r in self.regressions):
            return YES
        if any(r.confirmed is None for r in self.regressions):
            return UNCONFIRMED
        return NO if self.decided else CANNOT_TELL

    def answer_line(self) -> str:
        text = {YES: "YES", NO: "no", CANNOT_TELL: "cannot tell",
                UNCONFIRMED: "not yet known"}[self.answer]
        flagged = len(self.regressions)
        confirmed = sum(bool(r.confirmed) for r in self.regressions)
        pending = sum(r.confirmed is None for r in self.regressions)
        detail = ""
        if flagged:
            detail = (f" ({confirmed} confirmed, {pending} awaiting a re-run, "
                      f"{flagged - confirmed - pending} not confirmed by it)")
        line = (f"Is {self.b_label} worse than {self.a_label} (pause or stalls)? {text}: "
                f"{flagged} regression(s) flagged{detail}, {len(self.improvements)} "
                f"improvement(s), {len(self.decided) - len(self.regressions) - len(self.improvements)}"
                f" unchanged of {len(self.rows)} comparisons")
        if pending:
            line += "; confirm with: avocado bgsnap ab-confirm --job JOB"
        lacking = len(self.rows) - len(self.decided)
        if lacking:
            line += f"; {lacking} without enough runs"
        failed_b = sum(not p.ok for p in self.b_points)
        failed_a = sum(not p.ok for p in self.a_points)
        if failed_a or failed_b:
            line += f"; failed tests: {failed_a} in {self.a_label}, {failed_b} in {self.b_label}"
        return line


def _by_pair(points: Iterable[collect.Point]) -> dict[tuple[str, int], list[collect.Point]]:
    out: dict[tuple[str, int], list[collect.Point]] = {}
    for point in points:
        if point.kind == collect.KIND_SNAPSHOT and point.guest_mem_mib is not None:
            out.setdefault((point.mode_label, point.guest_mem_mib), []).append(point)
    return out


def compare_points(a_points: Sequence[collect.Point], b_points: Sequence[collect.Point],
                   a_label: str = "A", b_label: str = "B",
                   figures: Sequence[Figure] = COMPARED,
                   min_effect: float = stats.DEFAULT_MIN_EFFECT,
                   alpha: float = stats.DEFAULT_ALPHA) -> ABComparison:
    """Compare every (mode, RAM) that both sides ran, figure by figure."""
    result = ABComparison(a_label, b_label, a_points=list(a_points), b_points=list(b_points))
    a_pairs, b_pairs = _by_pair(a_points), _by_pair(b_points)
    for side, pairs in ((a_label, a_pairs), (b_label, b_pairs)):
        mixed = {p.qemu_build for pts in pairs.values() for p in pts}
        if len(mixed) > 1:
            result.warnings.append(f"{side} mixes QEMU builds {', '.join(sorted(mixed))}")
    only = sorted(set(a_pairs) ^ set(b_pairs), key=lambda k: (collect.mode_sort_key(k[0]), k[1]))
    if only:
        result.warnings.append("run on one side only (not compared): " + ", ".join(
            f"{mode} {mem} MiB" for mode, mem in only))
    for key in sorted(set(a_pairs) & set(b_pairs),
                      key=lambda k: (collect.mode_sort_key(k[0]), k[1])):
        a, b = a_pairs[key], b_pairs[key]
        for figure in figures:
            if not figure.applies_to(key[0]):
                continue
            verdict = stats.compare([p.figure(figure.key) for p in a],
                                    [p.figure(figure.key) for p in b],
                                    min_effect=min_effect, alpha=alpha,
                                    higher_is_worse=figure.higher_is_worse)
            if verdict.n_a == 0 and verdict.n_b == 0:
                continue  # figure not measured in this mode (e.g. no latency windows)
            result.rows.append(ABRow(key[0], key[1], figure, verdict,
                                     failed_a=sum(not p.ok for p in a),
                                     failed_b=sum(not p.ok for p in b)))
    return result


def jobs_label(dirs: Sequence[Path]) -> str:
    names = [Path(d).resolve().name for d in dirs]
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def compare_dirs(a_dirs: Sequence[Path | str], b_dirs: Sequence[Path | str],
                 **kwargs) -> ABComparison:
    """A = the baseline jobs, B = the candidate jobs."""
    a_jobs, b_jobs = collect.job_dirs(a_dirs), collect.job_dirs(b_dirs)
    kwargs.setdefault("a_label", jobs_label(a_jobs))
    kwargs.setdefault("b_label", jobs_label(b_jobs))
    return compare_points(collect.load_points(a_jobs), collect.load_points(b_jobs), **kwargs)


def _builds(points: Iterable[collect.Point]) -> set[str]:
    return {p.qemu_build for p in points if p.kind == collect.KIND_SNAPSHOT}


def compare_job_sets(a_points: Sequence[collect.Point], b_points: Sequence[collect.Point],
                     a_label: str, b_label: str, **kwargs) -> list[ABComparison]:
    """Baseline jobs (A) against candidate jobs (B).

    When both sides hold one QEMU build each, all of A is compared with all
    of B (typically: the same suite before and after a patch, or two hosts).
    When either side holds several builds (a side-by-side job run twice,
    e.g. for an A/A), each build both sides ran is compared with itself, so
    builds are never mixed; a build on one side only is named in a warning.
    """
    a_builds, b_builds = _builds(a_points), _builds(b_points)
    if len(a_builds) <= 1 and len(b_builds) <= 1:
        return [compare_points(a_points, b_points, a_label=a_label, b_label=b_label, **kwargs)]
    result = [compare_points([p for p in a_points if p.qemu_build == build],
                             [p for p in b_points if p.qemu_build == build],
                             a_label=f"{a_label} [{build}]", b_label=f"{b_label} [{build}]",
                             **kwargs)
              for build in sorted(a_builds & b_builds, key=collect.build_sort_key)]
    one_sided = sorted(a_builds ^ b_builds, key=collect.build_sort_key)
    if result and one_sided:
        result[0].warnings.append("QEMU build(s) on one side only (not compared): "
                                  + ", ".join(one_sided))
    return result


def compare_builds(points: Sequence[collect.Point], baseline: str | None = None,
                   **kwargs) -> list[ABComparison]:
    """Each QEMU build against the baseline build (default: system, else the first)."""
    names = sorted(_builds(points), key=collect.build_sort_key)
    if len(names) < 2:
        return []
    baseline = baseline or names[0]
    base = [p for p in points if p.qemu_build == baseline]
    return [compare_points(base, [p for p in points if p.qemu_build == name],
                           a_label=baseline, b_label=name, **kwargs)
            for name in names if name != baseline]


def control_report(comparisons: Sequence[ABComparison],
                   q: float = stats.DEFAULT_ALPHA) -> int:
    """Hold the false discovery rate of the whole report at ``q``.

    Each row was flagged on its own (p < alpha and the effect floor); over
    every row of every comparison in one report, a flag stays only when its
    p-value is a Benjamini-Hochberg discovery at ``q``.  The others become
    "no change" with the reason.  Returns how many flags were withdrawn.
    """
    rows = [(c, i) for c in comparisons for i in range(len(c.rows))]
    held = stats.held_to_fdr([c.rows[i].verdict for c, i in rows], q, scope="the report's ")
    withdrawn = 0
    for (comparison, i), verdict in zip(rows, held):
        row = comparison.rows[i]
        if verdict is not row.verdict:
            comparison.rows[i] = replace(row, verdict=verdict)
            withdrawn += 1
    return withdrawn

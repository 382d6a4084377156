"""Make one report: collect -> series -> A/B -> plots -> files.

Used by ``avocado bgsnap report`` (commands.py) and by the result plugin at
the end of every job (result_plugin.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import json

from . import (collect, compare, confirm, fleet, kernel, memconfig, plots, render, shapes, stats,
               tables)
from .figures import PAUSE, fmt, fmt_mib

REPORT_DIR = "bgsnap-report"

Log = Callable[[str], None]


@dataclass
class ReportFiles:
    outdir: Path
    files: dict[str, Path] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    shape_checks: list[shapes.ShapeCheck] = field(default_factory=list)

    @property
    def shape_failures(self) -> list[shapes.ShapeCheck]:
        return shapes.failed(self.shape_checks)


def _pause_answers(series: Sequence[collect.Series]) -> list[str]:
    """One line per build x mode: the pause at the smallest and largest RAM."""
    lines = []
    for build in collect.builds(series):
        for mode in collect.modes(s for s in series if s.qemu_build == build):
            mine = sorted((s for s in series if s.qemu_build == build and s.mode == mode
                           and s.values(PAUSE.key)), key=lambda s: s.guest_mem_mib)
            if not mine:
                continue
            meds = [stats.median(s.values(PAUSE.key)) for s in mine]
            first, last = mine[0], mine[-1]
            text = (f"{build}, {mode}: true pause {fmt(meds[0])} ms at "
                    f"{fmt_mib(first.guest_mem_mib)}")
            if len(mine) > 1:
                slope = stats.loglog_slope([s.guest_mem_mib for s in mine], meds)
                text += f", {fmt(meds[-1])} ms at {fmt_mib(last.guest_mem_mib)}"
                if slope is not None:
                    text += f" (grows ~RAM^{slope:.2f})"
            runs = sum(s.n for s in mine)
            failed = sum(s.n_failed for s in mine)
            text += f"; medians of {runs} runs" + (f", {failed} failed" if failed else "")
            lines.append(text)
    return lines


def shape_answer(checks: Sequence[shapes.ShapeCheck]) -> str:
    counts = {o: sum(c.outcome == o for c in checks)
              for o in (shapes.PASS, shapes.FAIL, shapes.NOT_CHECKED)}
    text = (f"Expected shapes: {counts[shapes.PASS]} passed, {counts[shapes.FAIL]} failed, "
            f"{counts[shapes.NOT_CHECKED]} not checked")
    bad = shapes.failed(checks)
    return text + ("; FAILED: " + "; ".join(c.line for c in bad) if bad else "")


def default_outdir(first_path: Path | str) -> Path:
    """``<job>/bgsnap-report`` (``latest`` resolved), or ``<results dir>/bgsnap-report``."""
    return Path(first_path).expanduser().resolve() / REPORT_DIR


def make_report(job_paths: Sequence[Path | str], compare_paths: Sequence[Path | str] = (),
                output: Path | str | None = None,
                statuses: Mapping[str, Mapping] | None = None,
                min_effect: float = stats.DEFAULT_MIN_EFFECT,
                alpha: float = stats.DEFAULT_ALPHA,
                by: str | None = None, sides: Sequence[str] = ()) -> ReportFiles:
    """Write the report of ``job_paths``; with ``compare_paths``, A/B against them.

    ``compare_paths`` are the baseline (A), ``job_paths`` the candidate (B).
    Without them, several QEMU builds in the jobs are compared against the
    system build (or the first).  ``by`` (a host fact, fleet.SIDES) compares
    sides of the fleet instead: ``sides`` = (A, B), (A,) against every other,
    or none (the first against every other); the default when the records
    name more than one host is ``by="host"``.  Raises collect.ReportError
    when there is nothing to report.
    """
    jobs = collect.job_dirs(job_paths)
    points = collect.load_points(jobs, statuses)
    if not points:
        raise collect.ReportError("no %s under %s" % (
            collect.METRICS_FILE, ", ".join(str(j) for j in jobs)))
    host_rows = fleet.host_rows(points) if fleet.is_fleet(points) else []
    # a fleet's series, tables and plots are per (QEMU build, host)
    series = collect.group_series(fleet.per_host(points) if host_rows else points)
    comparisons: list[compare.ABComparison] = []
    sources = [str(j) for j in jobs]
    if compare_paths:
        base_jobs = collect.job_dirs(compare_paths)
        comparisons = compare.compare_job_sets(
            collect.load_points(base_jobs), points,
            a_label=compare.jobs_label(base_jobs), b_label=compare.jobs_label(jobs),
            min_effect=min_effect, alpha=alpha)
        sources += [f"{j} (baseline A)" for j in base_jobs]
    elif by or host_rows:
        pair = (list(sides) + [None, None])[:2]
        comparisons = fleet.compare_sides(points, by or fleet.DEFAULT_SIDE, *pair,
                                          min_effect=min_effect, alpha=alpha)
    else:
        comparisons = compare.compare_builds(points, min_effect=min_effect, alpha=alpha)
    # one false discovery rate for the whole report, not one alpha per row
    withdrawn = compare.control_report(comparisons, q=alpha)
    confirm.apply(comparisons, confirm.load(jobs))     # flags re-run by ab-confirm

    outdir = Path(output) if output else default_outdir(job_paths[0])
    outdir.mkdir(parents=True, exist_ok=True)
    for pattern in plots.OWN_PNGS:  # a plot the new data no longer allows must not linger
        for old in outdir.glob(pattern):
            old.unlink()

    report = render.Report(title="QEMU snapshot report: true pause and its cost",
                           sources=sources)
    checks = shapes.check_shapes(series)
    memory_rows = memconfig.config_rows(points) if memconfig.has_memory_records(points) else []
    report.answers = ([memconfig.answer_line(memory_rows)] if memory_rows else [])
    report.answers += [fleet.answer_line(host_rows)] if host_rows else []
    report.answers += [c.answer_line() for c in comparisons] + _pause_answers(series)
    if checks:
        report.answers.append(shape_answer(checks))
    for comparison in comparisons:
        report.warnings += [f"A/B {comparison.b_label} vs {comparison.a_label}: {w}"
                            for w in comparison.warnings]
    if withdrawn:
        report.warnings.append(
            f"{withdrawn} A/B flag(s) withdrawn: significant on their own row, but not over "
            f"all {sum(len(c.rows) for c in comparisons)} comparisons of this report "
            f"(Benjamini-Hochberg, q {alpha}); see the rows' notes")
    excluded = [p for p in points if p.kind != collect.KIND_SNAPSHOT]
    if excluded:
        kinds = sorted({p.kind for p in excluded})
        report.warnings.append(f"{len(excluded)} run(s) not in the statistics ("
                               f"{', '.join(kinds)}: negative controls damage the snapshot "
                               f"on purpose, the workload benchmark takes none); they are "
                               f"listed under 'Every run' and in points.csv")
    cancelled = [p for p in points if p.kind == collect.KIND_SNAPSHOT and p.cancelled]
    if cancelled:
        report.warnings.append(f"{len(cancelled)} cancelled run(s) took no snapshot (e.g. QEMU "
                               f"refused background-snapshot as predicted): not in the pause "
                               f"statistics")
    if not series and not memory_rows:
        report.warnings.append("no snapshot runs: nothing to plot or tabulate")
    if host_rows:
        report.tables.append(tables.hosts_table(host_rows))
    if memory_rows:
        report.tables.append(tables.memory_table(memory_rows))
    if series:
        report.tables.append(tables.headline(series))
        report.tables += tables.mode_tables(series)
    if checks:
        report.tables.append(tables.shapes_table(checks))
    report.tables += [tables.ab_table(c) for c in comparisons]
    if kernel.has_kernel_data(jobs):
        verdicts = kernel.kernel_verdicts(jobs, statuses)
        report.answers += [v.answer() for v in verdicts]
        report.tables += [tables.kernel_table(v) for v in verdicts]
        (outdir / kernel.VERDICT_FILE).write_text(
            json.dumps([v.to_dict() for v in verdicts], indent=2) + "\n")
    report.plots = plots.plot_all(series, comparisons, outdir)
    report.points_table = tables.points_table(fleet.per_host(points) if host_rows else points)
    files = render.write_all(report, points, outdir)
    return ReportFiles(outdir, files, [outdir / p.filename for p in report.plots],
                       report.answers, checks)

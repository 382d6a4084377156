"""The report's tables as plain rows of text, rendered by render.py to Markdown and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from . import collect, fleet, memconfig, stats
from .compare import ABComparison
from .shapes import ShapeCheck
from .figures import (DIP, DISK, DOWNTIME, PAUSE, RESTORED_RSS, SNAPSHOT_MIB, SOURCE_RSS,
                      TIME_SPLIT, TIME_SPLIT_NAMES, TOTAL, Figure, fmt, fmt_mib, fmt_pct)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""                  # shown above the rows
    footer: str = ""                # shown below the rows (e.g. the table's answer)


def _median(series: collect.Series, figure: Figure) -> str:
    summary = stats.summarize(series.values(figure.key))
    return fmt(summary.median) if summary else "n/a"


def _spread(series: collect.Series, figure: Figure) -> str:
    summary = stats.summarize(series.values(figure.key))
    if summary is None:
        return "n/a"
    if summary.n == 1:
        return fmt(summary.median)
    return f"{fmt(summary.median)} [{fmt(summary.p10)}-{fmt(summary.p90)}]"


def _runs(series: collect.Series) -> str:
    text = str(series.n)
    extra = []
    if series.n_failed:
        extra.append(f"{series.n_failed} failed")
    if series.n_missing_resume:
        extra.append(f"{series.n_missing_resume} no RESUME")
    return f"{text} ({', '.join(extra)})" if extra else text


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def split_text(values: Sequence[float | None]) -> str:
    return " / ".join(fmt(v, 2) if v is not None else "-" for v in values)


SPLIT_HEADER = "time split s: " + " / ".join(TIME_SPLIT_NAMES[f.key] for f in TIME_SPLIT)


def headline(series: Sequence[collect.Series]) -> Table:
    """The one answer: median true pause per build x mode x RAM, and how it grows."""
    sizes = sorted({s.guest_mem_mib for s in series})
    table = Table("True guest pause, median ms [p10-p90]",
                  ["QEMU build", "mode"] + [fmt_mib(m) for m in sizes] + ["growth"],
                  note="growth: exponent k of pause ~ RAM^k over the measured sizes "
                       "(1 = linear in RAM, 0 = flat).")
    for build in collect.builds(series):
        for mode in collect.modes(s for s in series if s.qemu_build == build):
            mine = {s.guest_mem_mib: s for s in series
                    if s.qemu_build == build and s.mode == mode}
            cells = [_spread(mine[m], PAUSE) if m in mine else "" for m in sizes]
            xs, ys = [], []
            for mem, s in mine.items():
                summary = stats.summarize(s.values(PAUSE.key))
                if summary:
                    xs.append(mem)
                    ys.append(summary.median)
            slope = stats.loglog_slope(xs, ys)
            table.rows.append([build, mode] + cells + [f"k = {slope:.2f}" if slope is not None
                                                      else "n/a"])
    return table


def mode_tables(series: Sequence[collect.Series]) -> list[Table]:
    """One table per mode: every build x RAM size with its figures and time split."""
    tables = []
    multi_build = len(collect.builds(series)) > 1
    for mode in collect.modes(series):
        header = (["QEMU build"] if multi_build else []) + [
            "guest RAM", "runs", "pause ms median [p10-p90]", "QEMU downtime ms",
            "total s", "snapshot MiB", "write dip %", "peak RSS MiB source / restored",
            "disk MiB", SPLIT_HEADER]
        table = Table(f"Mode: {mode}", header)
        for s in series:
            if s.mode != mode:
                continue
            split = []
            for fig_def in TIME_SPLIT:
                summary = stats.summarize(s.values(fig_def.key))
                split.append(summary.median if summary else None)
            row = ([s.qemu_build] if multi_build else []) + [
                fmt_mib(s.guest_mem_mib), _runs(s), _spread(s, PAUSE), _median(s, DOWNTIME),
                _median(s, TOTAL), _median(s, SNAPSHOT_MIB), _median(s, DIP),
                f"{_median(s, SOURCE_RSS)} / {_median(s, RESTORED_RSS)}", _median(s, DISK),
                split_text(split)]
            table.rows.append(row)
        notes = []
        for s in series:
            if s.mode == mode and len(s.workloads) > 1:
                notes.append(f"{s.qemu_build} {fmt_mib(s.guest_mem_mib)} mixes workloads: "
                             + "; ".join(s.workloads))
        table.note = " ".join(notes)
        tables.append(table)
    return tables


def ab_table(comparison: ABComparison) -> Table:
    table = Table(f"A/B: {comparison.b_label} (B) vs {comparison.a_label} (A, baseline)",
                  ["mode", "guest RAM", "figure", "A median", "B median", "change",
                   "p-value", "runs A/B", "verdict"],
                  note=comparison.answer_line() + (
                      ". " + " ".join(comparison.warnings) if comparison.warnings else ""))
    for row in comparison.rows:
        v = row.verdict
        runs = f"{v.n_a}/{v.n_b}"
        if row.failed_a or row.failed_b:
            runs += f" ({row.failed_a}/{row.failed_b} failed)"
        verdict = v.verdict + (f" ({v.note})" if v.verdict == stats.NOT_ENOUGH and v.note else "")
        if v.flagged:
            verdict += {True: " (confirmed)", False: " (not confirmed by the re-run)",
                        None: " (unconfirmed)"}[row.confirmed]
        table.rows.append([row.mode, fmt_mib(row.guest_mem_mib), row.figure.title,
                           fmt(v.median_a), fmt(v.median_b), fmt_pct(v.rel_change),
                           "n/a" if v.p_value is None else f"{v.p_value:.3g}", runs, verdict])
    return table


def points_table(points: Sequence[collect.Point]) -> Table:
    table = Table("Every run", ["job", "test", "build", "mode", "RAM", "rep", "outcome",
                                "pause ms", "STOP / RESUME (s, QEMU stamps)", "QEMU downtime ms",
                                "total s", SPLIT_HEADER])
    for p in points:
        stamps = "; ".join(
            f"{'?' if stop is None else f'{stop:.6f}'} / "
            f"{'no RESUME' if resume is None else f'{resume:.6f}'}"
            for stop, resume in p.pause_windows) or "-"
        role = "" if p.kind == collect.KIND_SNAPSHOT else f" [{p.kind}]"
        table.rows.append([
            p.job, p.test + role, p.qemu_build, p.mode_label,
            fmt_mib(p.guest_mem_mib), "" if p.repetition is None else str(p.repetition),
            _short(p.outcome), fmt(p.pause_ms), stamps, fmt(p.downtime_ms), fmt(p.snapshot_total_s),
            split_text([p.figure(f.key) for f in TIME_SPLIT])])
    return table


def shapes_table(checks: Sequence[ShapeCheck]) -> Table:
    """The expected shapes of the pause over RAM, per build (report/shapes.py)."""
    return Table("Expected shapes of the true pause over guest RAM",
                 ["QEMU build", "mode", "check", "outcome", "measured"],
                 [[c.build, c.mode, c.name, c.outcome, c.detail] for c in checks],
                 note="background flat (pause at the largest / smallest RAM <= 2) and short "
                      "(< 20 ms); stop_save and snapshot_save grow (the same ratio >= the RAM "
                      "ratio^0.5). 'avocado bgsnap report' exits 1 when one fails.")


def memory_table(rows: Sequence[memconfig.ConfigRow]) -> Table:
    """The memory family: one row per memory configuration, one column per build."""
    build_names = memconfig.row_builds(rows)
    restored = any(r.key.restored not in ("", memconfig.UNKNOWN) for r in rows)
    during = any(r.key.during for r in rows)
    header = (["memory configuration"] + (["restored into"] if restored else [])
              + ["host THP"] + (["during the save"] if during else []) + build_names)
    table = Table("Memory configurations", header,
                  note="Per QEMU build: PASS (snapshot, restore and exact verify passed) with "
                       "the true pause; CANCEL when QEMU refused background-snapshot as "
                       "predicted (no snapshot taken); FAIL / ERROR with the start of the "
                       "verdict.",
                  footer=memconfig.answer_line(rows))
    for row in rows:
        key = row.key
        table.rows.append([key.memory] + ([key.restored or "same"] if restored else [])
                          + [key.thp] + ([key.during or "-"] if during else [])
                          + [row.cell(b) for b in build_names])
    return table


def kernel_table(verdict) -> Table:
    """One kernel's verdict (report/kernel.py): a row per check or test."""
    return Table(title=f"Kernel {verdict.kernel}: UFFD-WP under background snapshots",
                 header=["family", "check / test", "outcome", "evidence"],
                 rows=[[r.family, r.case, r.outcome, r.evidence] for r in verdict.rows],
                 note=f"UFFD features {verdict.features}; uffd: the guest-less self-check "
                      f"(docs/uffd-check.md); memory: the backends (docs/memory.md); "
                      f"hostmm: the host's memory management during the save "
                      f"(docs/host-mm.md).",
                 footer=verdict.answer())


def hosts_table(rows: Sequence[fleet.HostRow]) -> Table:
    table = Table("Hosts", ["host", "kernel", "QEMU", "CPU", "accel", "jobs", "tests",
                            "statuses", "background pause ms (median)"],
                  note="One row per host the records name (host.hostname); the A/B tables "
                       "below compare hosts as two QEMU builds are compared.")
    for row in rows:
        table.rows.append([row.hostname, row.kernels, _short(row.qemus, 40), _short(row.cpus, 40),
                           row.accels, str(len(row.jobs)), str(len(row.points)),
                           ", ".join(f"{k} {v}" for k, v in row.statuses().items()),
                           fmt(row.median_pause_ms())])
    return table

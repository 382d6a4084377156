"""PNG plots of a report, drawn with matplotlib's Agg canvas.

No pyplot: each figure is a ``matplotlib.figure.Figure`` on a
``FigureCanvasAgg``, so nothing needs a display, no global backend is
switched (the result plugin runs inside avocado's process) and no figure is
kept in a global registry.

Each ``plot_*`` function writes one PNG and returns a :class:`Plot`, or None
when the data has nothing to show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from . import collect, stats
from .compare import ABComparison
from .figures import (DOWNTIME, PAUSE, STALL_MAX, TIME_SPLIT, TIME_SPLIT_NAMES, TOTAL, Figure,
                      fmt, fmt_mib)

DPI = 110
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22")
FAILED_COLOR = "#d62728"
# every file name plot_all may write (glob patterns): only these are replaced
OWN_PNGS = ("pause_vs_ram.png", "total_vs_ram.png", "throughput.png", "downtime_vs_pause.png",
            "time_split.png", "ab[0-9]*_pause.png", "ab[0-9]*_stall.png")
PHASE_COLORS = ("#9e9e9e", "#bcbd22", "#1f77b4", "#2ca02c", "#17becf", "#9467bd")


@dataclass(frozen=True)
class Plot:
    filename: str               # relative to the report dir
    title: str
    caption: str


def new_figure(width: float, height: float) -> MplFigure:
    """A figure on an Agg canvas (the only way this module makes figures)."""
    figure = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _finish(figure: MplFigure, path: Path, title: str, caption: str,
            title_size: int = 13) -> Plot:
    """Title the figure, write it as ``path`` (PNG) and describe it."""
    figure.suptitle(title, fontsize=title_size)
    figure.canvas.print_png(str(path))
    return Plot(path.name, title, caption)


def _grid(figure: MplFigure, count: int, sharey: bool = False):
    cols = min(count, 2)
    rows = math.ceil(count / cols)
    axes = figure.subplots(rows, cols, squeeze=False, sharey=sharey)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return flat[:count]


def _ram_axis(ax, sizes: Sequence[int]) -> None:
    """log2 x axis with a tick per measured RAM size."""
    ax.set_xscale("log", base=2)
    sizes = sorted(set(sizes))
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_mib(int(round(v)))))
    if len(sizes) == 1:
        ax.set_xlim(sizes[0] / 1.6, sizes[0] * 1.6)
    else:
        ax.set_xlim(sizes[0] / 1.3, sizes[-1] * 1.3)
    ax.set_xlabel("guest RAM")
    ax.grid(True, which="major", alpha=0.3)


def _log_y(ax) -> None:
    """log y with plain numbers (0.5, 2, 300) instead of 5x10^-1; minor labels
    (2, 3, 5 x 10^k) only when the data spans little more than a decade, every
    minor tick when it spans less than 3x (else a panel may show one label)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, 2)))

    def minor(value, _):
        low, high = ax.get_ylim()
        span = high / max(low, 1e-300)
        if span > 30:
            return ""
        lead = round(value / 10 ** math.floor(math.log10(value)), 6)
        return fmt(value, 2) if span < 3 or lead in (2, 3, 5) else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _positive(values):
    return [v for v in values if v is not None and v > 0]


def _build_label(series: Sequence[collect.Series], build: str) -> str:
    versions = sorted({v for s in series if s.qemu_build == build for v in s.qemu_versions})
    version = versions[0].split(" ")[0] if len(versions) == 1 else (
        "several versions" if versions else "")
    return f"{build} (QEMU {version})" if version else build


def _colors(series: Sequence[collect.Series]) -> dict[str, str]:
    return {b: COLORS[i % len(COLORS)] for i, b in enumerate(collect.builds(series))}


def _mode_panels(shown: Sequence[collect.Series]):
    """A figure with one panel per mode (shared y axis); returns (figure, axes,
    panels), each panel (ax, mode, its series, [(build, its series by RAM)])."""
    modes = collect.modes(shown)
    figure = new_figure(6.2 if len(modes) == 1 else 11, 4.2 * math.ceil(len(modes) / 2))
    axes = _grid(figure, len(modes), sharey=True)
    panels = []
    for ax, mode in zip(axes, modes):
        in_mode = [s for s in shown if s.mode == mode]
        by_build = [(build, sorted((s for s in in_mode if s.qemu_build == build),
                                   key=lambda s: s.guest_mem_mib))
                    for build in collect.builds(in_mode)]
        panels.append((ax, mode, in_mode, by_build))
    return figure, axes, panels


def _scaling_plot(series: Sequence[collect.Series], figure_def: Figure, path: Path,
                  title: str, caption: str, log_y: bool = True) -> Plot | None:
    """One panel per mode: median line with p10-p90 whiskers, every run as a dot."""
    shown = [s for s in series if s.values(figure_def.key)]
    if not shown:
        return None
    colors = _colors(shown)
    figure, axes, panels = _mode_panels(shown)
    for ax, mode, in_mode, by_build in panels:
        for build, mine in by_build:
            xs, meds, low, high = [], [], [], []
            for s in mine:
                summary = stats.summarize(s.values(figure_def.key))
                if summary is None or (log_y and summary.median <= 0):
                    continue
                xs.append(s.guest_mem_mib)
                meds.append(summary.median)
                low.append(summary.median - summary.p10)
                high.append(summary.p90 - summary.median)
                ok = [p.figure(figure_def.key) for p in s.points if p.ok]
                bad = [p.figure(figure_def.key) for p in s.points if not p.ok]
                ok, bad = (_positive(ok), _positive(bad)) if log_y else (
                    [v for v in ok if v is not None], [v for v in bad if v is not None])
                ax.scatter([s.guest_mem_mib * 1.04] * len(ok), ok, s=14, alpha=0.45,
                           color=colors[build], linewidths=0, zorder=2)
                ax.scatter([s.guest_mem_mib * 1.04] * len(bad), bad, s=40, marker="x",
                           color=FAILED_COLOR, zorder=3)
            if xs:
                ax.errorbar(xs, meds, yerr=[low, high], color=colors[build], marker="o",
                            markersize=5, capsize=4, linewidth=1.8, zorder=4,
                            label=_build_label(shown, build))
        _ram_axis(ax, [s.guest_mem_mib for s in in_mode])
        if log_y:
            _log_y(ax)
        ax.set_title(f"mode: {mode}")
        ax.set_ylabel(figure_def.title)
        ax.tick_params(axis="y", which="both", labelleft=True)
    legend = {}
    for ax in axes:  # a build may be missing from the first panel
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    handles += [axes[0].scatter([], [], s=14, color="#777777"),
                axes[0].scatter([], [], s=40, marker="x", color=FAILED_COLOR)]
    labels += ["one run", "one run, test failed"]
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
                  title="median with p10-p90 whiskers")
    return _finish(figure, path, title, caption)


def plot_pause(series, outdir: Path) -> Plot | None:
    return _scaling_plot(
        series, PAUSE, outdir / "pause_vs_ram.png",
        "True guest pause vs guest RAM",
        "Time the guest was stopped, from QEMU's STOP/RESUME event stamps, per snapshot "
        "mode (log scale; median with p10-p90 whiskers; dots are single runs, red crosses "
        "runs whose test failed).")


def plot_total(series, outdir: Path) -> Plot | None:
    return _scaling_plot(
        series, TOTAL, outdir / "total_vs_ram.png",
        "Snapshot total time vs guest RAM",
        "Wall time from the migrate command to 'completed', per snapshot mode (log scale).")


def plot_throughput(series, outdir: Path) -> Plot | None:
    """Guest write throughput before / during / after the snapshot: the dip."""
    shown = [s for s in series if any(p.mib_s_before is not None for p in s.points)]
    if not shown:
        return None
    panels = sorted({(s.qemu_build, s.mode) for s in shown},
                    key=lambda k: (collect.build_sort_key(k[0]), collect.mode_sort_key(k[1])))
    multi_build = len({b for b, _ in panels}) > 1
    figure = new_figure(6.2 if len(panels) == 1 else 11, 4.0 * math.ceil(len(panels) / 2))
    axes = _grid(figure, len(panels))
    windows = (("before", "mib_s_before", "#7f7f7f"), ("during", "mib_s_during", "#d62728"),
               ("after", "mib_s_after", "#2ca02c"))
    for ax, (build, mode) in zip(axes, panels):
        mine = sorted((s for s in shown if s.qemu_build == build and s.mode == mode),
                      key=lambda s: s.guest_mem_mib)
        width = 0.26
        top = 0.0
        for i, (label, key, color) in enumerate(windows):
            meds = []
            for s in mine:
                summary = stats.summarize(s.values(key))
                meds.append(summary.median if summary else 0.0)
            top = max([top] + meds)
            ax.bar([j + (i - 1) * width for j in range(len(mine))], meds, width, color=color,
                   label=f"{label} the snapshot")
        for j, s in enumerate(mine):
            dip = stats.summarize(s.values("dip_pct"))
            if dip is not None:
                ax.annotate(f"dip {dip.median:.0f} %", (j, top * 1.02), ha="center",
                            fontsize=9)
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
        ax.set_xticks(range(len(mine)), [fmt_mib(s.guest_mem_mib) for s in mine])
        ax.set_xlabel("guest RAM")
        ax.set_ylabel("guest writes (MiB/s, median)")
        ax.set_title(f"{build}: {mode}" if multi_build else f"mode: {mode}")
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3)
    title = "Guest write throughput before / during / after the snapshot"
    return _finish(figure, outdir / "throughput.png", title,
                   "Median MiB/s the guest's writers achieved in each window; 'dip' is how much "
                   "slower they wrote during the snapshot than before it. A rate-limited "
                   "workload shows no dip unless the snapshot slows it below its rate.")


def plot_downtime_vs_pause(series, outdir: Path) -> Plot | None:
    """QEMU's own downtime figure next to the true pause (stop_save: the lie)."""
    shown = [s for s in series if s.values(DOWNTIME.key) and s.values(PAUSE.key)]
    if not shown:
        return None
    colors = _colors(shown)
    figure, axes, panels = _mode_panels(shown)
    for ax, mode, in_mode, by_build in panels:
        for build, mine in by_build:
            medians = {}
            for fig_def, style, marker, what in ((PAUSE, "-", "o", "true pause"),
                                                 (DOWNTIME, "--", "s", "QEMU downtime")):
                pts = {s.guest_mem_mib: stats.median(s.values(fig_def.key))
                       for s in mine if s.values(fig_def.key)}
                pts = {x: y for x, y in pts.items() if y > 0}
                medians[fig_def.key] = pts
                if pts:
                    ax.plot(list(pts), list(pts.values()), style, marker=marker,
                            markerfacecolor="white" if fig_def is DOWNTIME else colors[build],
                            color=colors[build], label=f"{what}, {build}")
            # label the sizes where QEMU's figure is off by 3x or more: the lie
            for x, pause in medians[PAUSE.key].items():
                downtime = medians[DOWNTIME.key].get(x)
                if downtime and pause / downtime >= 3:
                    ax.annotate(f"{fmt(pause, 2)} ms", (x, pause), textcoords="offset points",
                                xytext=(0, 7), ha="center", fontsize=8, color=colors[build])
                    ax.annotate(f"{fmt(downtime, 2)} ms", (x, downtime), ha="center",
                                textcoords="offset points", xytext=(0, -13), fontsize=8,
                                color=colors[build])
        _ram_axis(ax, [s.guest_mem_mib for s in in_mode])
        _log_y(ax)
        ax.margins(y=0.15)  # room for the value labels
        ax.set_title(f"mode: {mode}")
        ax.set_ylabel("milliseconds (median)")
        ax.tick_params(axis="y", which="both", labelleft=True)
        ax.legend(fontsize=8)
    title = "QEMU's reported downtime vs the true pause"
    return _finish(figure, outdir / "downtime_vs_pause.png", title,
                   "Solid: the true pause (STOP to RESUME). Dashed: the 'downtime' QEMU reports "
                   "in query-migrate (medians; values printed where they differ 3x or more). "
                   "In stop_save mode the guest is stopped before the migration starts, so "
                   "QEMU's downtime misses almost all of the pause. Modes without a downtime "
                   "figure (snapshot_save: not a migration) are not shown.")


def plot_time_split(series, outdir: Path) -> Plot | None:
    """Where one test's wall time goes: boot, fill, save, restore, dump, verify."""
    if not series:
        return None
    build_names = collect.builds(series)
    figure = new_figure(11, 0.9 + 0.32 * len(series) + 0.6 * len(build_names))
    axes = figure.subplots(len(build_names), 1, squeeze=False)[:, 0]
    for ax, build in zip(axes, build_names):
        mine = [s for s in series if s.qemu_build == build]
        labels = [f"{s.mode} {fmt_mib(s.guest_mem_mib)}" for s in mine]
        left = [0.0] * len(mine)
        for fig_def, color in zip(TIME_SPLIT, PHASE_COLORS):
            widths = []
            for s in mine:
                summary = stats.summarize(s.values(fig_def.key))
                widths.append(summary.median if summary else 0.0)
            ax.barh(range(len(mine)), widths, left=left, color=color,
                    label=TIME_SPLIT_NAMES[fig_def.key])
            left = [a + b for a, b in zip(left, widths)]
        ax.set_yticks(range(len(mine)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (median per phase)")
        ax.set_title(_build_label(series, build))
        ax.grid(True, axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    title = "Where a test's time goes"
    return _finish(figure, outdir / "time_split.png", title,
                   "Median seconds per phase of one test, per mode and RAM size: boot, "
                   "workload fill, snapshot save, restore, memory dump, host verification.")


def plot_ab(comparison: ABComparison, figure_def: Figure, path: Path) -> Plot | None:
    """A and B side by side per RAM size, one panel per mode; flagged sizes marked."""
    pairs = sorted({(r.mode, r.guest_mem_mib) for r in comparison.rows
                    if r.figure.key == figure_def.key},
                   key=lambda k: (collect.mode_sort_key(k[0]), k[1]))
    if not pairs:
        return None
    verdicts = {(r.mode, r.guest_mem_mib): r.verdict for r in comparison.rows
                if r.figure.key == figure_def.key}
    modes = sorted({m for m, _ in pairs}, key=collect.mode_sort_key)
    figure = new_figure(6.2 if len(modes) == 1 else 11, 4.4 * math.ceil(len(modes) / 2))
    axes = _grid(figure, len(modes))
    sides = ((f"A: {comparison.a_label}", comparison.a_points, COLORS[0], -0.17),
             (f"B: {comparison.b_label}", comparison.b_points, COLORS[1], 0.17))
    for ax, mode in zip(axes, modes):
        sizes = [mem for m, mem in pairs if m == mode]
        for label, points, color, offset in sides:
            for j, mem in enumerate(sizes):
                vals = _positive(p.figure(figure_def.key) for p in points
                                 if p.mode_label == mode and p.guest_mem_mib == mem)
                if not vals:
                    continue
                ax.scatter([j + offset] * len(vals), vals, s=18, alpha=0.55, color=color,
                           linewidths=0, label=label if j == 0 else None)
                ax.hlines(stats.median(vals), j + offset - 0.12, j + offset + 0.12,
                          color=color, linewidth=2.5)
        _log_y(ax)
        ticks, tick_colors = [], []
        for mem in sizes:
            verdict = verdicts[(mode, mem)].verdict
            mark, color = {stats.REGRESSION: ("WORSE", FAILED_COLOR),
                           stats.IMPROVEMENT: ("better", COLORS[2]),
                           stats.NOT_ENOUGH: ("few runs", "#777777")}.get(verdict,
                                                                          ("same", "#222222"))
            ticks.append(f"{fmt_mib(mem)}\n{mark}")
            tick_colors.append(color)
        ax.set_xticks(range(len(sizes)), ticks)
        for label, color in zip(ax.get_xticklabels(), tick_colors):
            label.set_color(color)
        ax.set_xlim(-0.6, len(sizes) - 0.4)
        ax.set_xlabel("guest RAM, verdict for B")
        ax.set_ylabel(figure_def.title)
        ax.set_title(f"mode: {mode}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="bar = median", title_fontsize=8)
    title = f"{figure_def.label[0].upper()}{figure_def.label[1:]}: " \
            f"{comparison.b_label} (B) vs {comparison.a_label} (A)"
    first = next(iter(verdicts.values()))
    return _finish(figure, path, title,
                   f"Every run of A and B per RAM size (log scale), the bar is the median. "
                   f"WORSE/better: Mann-Whitney p < {first.alpha:g} and the medians differ "
                   f"by at least {first.min_effect * 100:.0f} %; 'same' otherwise; 'few "
                   f"runs': not enough runs on a side for a verdict.", title_size=12)


def _over_ram(series: Sequence[collect.Series]) -> bool:
    sizes: dict[tuple[str, str], set[int]] = {}
    for s in series:
        sizes.setdefault((s.qemu_build, s.mode), set()).add(s.guest_mem_mib)
    return any(len(found) >= 2 for found in sizes.values())


def plot_all(series: Sequence[collect.Series], comparisons: Sequence[ABComparison],
             outdir: Path) -> list[Plot]:
    """Every plot the data allows, in reading order.  The lines against
    guest RAM need two sizes of one build and mode: for one size they would
    be a dot each, what the summary's table already says (and they were
    half of a one-test job's report time, 0.45 of 0.9 s)."""
    over_ram = _over_ram(series)
    makers: list[Callable[[], Plot | None]] = [
        lambda: plot_pause(series, outdir) if over_ram else None,
        lambda: plot_total(series, outdir) if over_ram else None,
        lambda: plot_throughput(series, outdir),
        lambda: plot_downtime_vs_pause(series, outdir) if over_ram else None,
        lambda: plot_time_split(series, outdir),
    ]
    for i, comparison in enumerate(comparisons, 1):
        for fig_def, stem in ((PAUSE, "pause"), (STALL_MAX, "stall")):
            makers.append(lambda c=comparison, f=fig_def, s=stem, n=i:
                          plot_ab(c, f, outdir / f"ab{n}_{s}.png"))
    plots = []
    for make in makers:
        plot = make()
        if plot is not None:
            plots.append(plot)
    return plots

"""How often does the A/B verdict flag a change that is not there, and how
often does it find one that is?  Measured on real runs, by resampling.

A *pool* is the values of one compared figure over the runs of one measured
point (QEMU build, mode, guest RAM) of real jobs: runs of the same thing, so
any two sets drawn from it are an A/A.  One trial is one simulated report
of ``rows`` comparisons (the pools in turn, every pool used when there
are more pools than rows: :func:`report_rows`):

* **A/A**: A and B are drawn from the pool -- without replacement while the
  pool holds 2 x reps values, else with replacement -- and compared with
  :func:`stats.compare`; every flag is a false one.
* **power**: the same, with B scaled by ``1 + shift`` in the worse direction
  on one row (each row in turn); found = that row flagged as a regression.

With ``control`` the report-wide false discovery control of
:func:`compare.control_report` (Benjamini-Hochberg over the report's rows)
is applied, as ``avocado bgsnap report`` does.  Pure: points in, rates out.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from . import collect, stats
from .figures import COMPARED, Figure

DEFAULT_TRIALS = 400
DEFAULT_SHIFTS = (0.2, 0.5)


@dataclass(frozen=True)
class Pool:
    build: str
    mode: str
    guest_mem_mib: int
    figure: Figure
    values: tuple[float, ...]

    @property
    def label(self) -> str:
        return f"{self.build} {self.mode} {self.guest_mem_mib} MiB {self.figure.key}"


def pools(points: Iterable[collect.Point], min_values: int = 6,
          figures: Sequence[Figure] = COMPARED) -> list[Pool]:
    """Every (point, figure) of passed runs with at least ``min_values`` values."""
    out = []
    for series in collect.group_series(points):
        ok = [p for p in series.points if p.ok]
        for figure in figures:
            if not figure.applies_to(series.mode):
                continue
            values = tuple(v for v in (p.figure(figure.key) for p in ok) if v is not None)
            if len(values) >= min_values:
                out.append(Pool(series.qemu_build, series.mode, series.guest_mem_mib, figure,
                                values))
    return out


def _draw(pool: Pool, reps: int, rng: random.Random) -> tuple[list[float], list[float]]:
    values = list(pool.values)
    if len(values) >= 2 * reps:
        picked = rng.sample(values, 2 * reps)
    else:
        picked = [rng.choice(values) for _ in range(2 * reps)]
    return picked[:reps], picked[reps:]


def _shifted(values: list[float], shift: float, higher_is_worse: bool) -> list[float]:
    factor = 1 + shift
    return [v * factor if higher_is_worse else v / factor for v in values]


def report_rows(pool_list: Sequence[Pool], rows: int, first: int) -> list[Pool]:
    """The pools of one simulated report's ``rows`` rows: the pools in
    turn from pool ``first`` (mod their number).  Trials move ``first`` on,
    so that every pool takes part when there are more pools than rows."""
    return [pool_list[(first + row) % len(pool_list)] for row in range(rows)]


def _trial(row_pools: Sequence[Pool], reps: int, rng: random.Random,
           target: int | None, shift: float, control: bool,
           min_effect: float, alpha: float) -> list[stats.Verdict]:
    verdicts = []
    for row, pool in enumerate(row_pools):
        a, b = _draw(pool, reps, rng)
        if row == target:
            b = _shifted(b, shift, pool.figure.higher_is_worse)
        verdicts.append(stats.compare(a, b, min_effect=min_effect, alpha=alpha,
                                      higher_is_worse=pool.figure.higher_is_worse))
    return stats.held_to_fdr(verdicts, alpha) if control else verdicts


@dataclass(frozen=True)
class Rates:
    reps: int
    rows: int
    control: bool
    trials: int
    false_flag_rate: float          # flagged rows / rows, A/A
    reports_with_false_flag: float  # trials with at least one flag, A/A
    power: dict[str, float]         # shift ("20 %") -> fraction of trials the shifted row was found
    min_effect: float = stats.DEFAULT_MIN_EFFECT  # the effect floor of the verdict
    # figure key -> shift -> fraction found, of the trials that shifted a row of that figure
    power_by_figure: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def measure(pool_list: Sequence[Pool], reps: int, rows: int | None = None,
            trials: int = DEFAULT_TRIALS, shifts: Sequence[float] = DEFAULT_SHIFTS,
            control: bool = True, seed: int = 1,
            min_effect: float = stats.DEFAULT_MIN_EFFECT,
            alpha: float = stats.DEFAULT_ALPHA) -> Rates:
    """The verdict's error rates at ``reps`` runs per side, from these pools."""
    if not pool_list:
        raise collect.ReportError("no pool of repeated runs to resample (each compared "
                                  "figure of a point needs at least 6 passed runs)")
    if reps < 1 or trials < 1:
        raise ValueError(f"reps {reps} and trials {trials} must be >= 1")
    rows = rows or len(pool_list)
    rng = random.Random(seed)
    flagged = with_flag = 0
    for trial in range(trials):
        verdicts = _trial(report_rows(pool_list, rows, trial * rows), reps, rng, None, 0.0, control,
                          min_effect, alpha)
        hits = sum(v.flagged for v in verdicts)
        flagged += hits
        with_flag += hits > 0
    power: dict[str, float] = {}
    by_figure: dict[str, dict[str, float]] = {}
    for shift in shifts:
        label = f"{shift * 100:.0f} %"
        tried, found = Counter(), Counter()
        for trial in range(trials):
            # the shifted row's pool: every pool in turn (pool ``trial`` mod their number)
            target = trial % rows
            row_pools = report_rows(pool_list, rows, trial - target)
            key = row_pools[target].figure.key
            verdicts = _trial(row_pools, reps, rng, target, shift, control, min_effect, alpha)
            tried[key] += 1
            found[key] += verdicts[target].verdict == stats.REGRESSION
        power[label] = sum(found.values()) / trials
        for key in tried:
            by_figure.setdefault(key, {})[label] = found[key] / tried[key]
    return Rates(reps, rows, control, trials, flagged / (trials * rows), with_flag / trials,
                 power, min_effect, by_figure)


def render(pool_list: Sequence[Pool], results: Sequence[Rates]) -> str:
    lines = [f"pools: {len(pool_list)} (" + "; ".join(
        f"{p.label}: {len(p.values)} runs" for p in pool_list) + ")"]
    shifts = list(results[0].power) if results else []
    lines.append("floor  reps  rows  control  false flags/row  reports with a flag  "
                 + "  ".join(f"found {s}" for s in shifts))
    for r in results:
        lines.append(f"{r.min_effect * 100:4.0f}%  {r.reps:4d}  {r.rows:4d}  "
                     f"{'BH' if r.control else 'none':7s}  "
                     f"{r.false_flag_rate * 100:14.2f} %  {r.reports_with_false_flag * 100:18.1f} %  "
                     + "  ".join(f"{r.power[s] * 100:8.1f} %" for s in shifts))
    lines.append("found, per figure of the shifted row:")
    for r in results:
        lines.append(f"{r.min_effect * 100:4.0f}%  {r.reps:4d}  {'BH' if r.control else 'none':4s}  "
                     + "; ".join(f"{key} " + " ".join(f"{s} {v * 100:.0f}%" for s, v in
                                                     found.items())
                                 for key, found in r.power_by_figure.items()))
    return "\n".join(lines)

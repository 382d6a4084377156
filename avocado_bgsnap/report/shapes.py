"""Expected shapes of the pause over guest RAM, checked rather than assumed.

Per QEMU build, on the median true pause of each measured RAM size:

* ``background`` stays **flat**: pause at the largest RAM / pause at the
  smallest <= ``FLAT_MAX_RATIO`` (2);
* ``background`` stays **short**: every median under ``BACKGROUND_MAX_MS``
  (20 ms, what TCG gives here; KVM hosts do better);
* ``stop_save`` and ``snapshot_save`` **grow**: the same ratio >=
  ``GROW_MIN_RATIO`` (4: at least the square root of the 16x RAM range the
  scaling matrix spans; measured here 9.7 and 11.5).

A ratio needs two sizes at least ``MIN_RAM_SPAN`` apart; with less the
check is "not checked", never a pass.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import collect, stats
from .figures import PAUSE, fmt, fmt_mib

FLAT_MAX_RATIO = 2.0
BACKGROUND_MAX_MS = 20.0
GROW_MIN_RATIO = 4.0
GROWING_MODES = ("stop_save", "snapshot_save")
MIN_RAM_SPAN = 4.0
PASS, FAIL, NOT_CHECKED = "PASS", "FAIL", "not checked"


@dataclass(frozen=True)
class ShapeCheck:
    build: str
    mode: str
    name: str          # flat | short | grows
    outcome: str       # PASS | FAIL | not checked
    detail: str

    @property
    def line(self) -> str:
        return f"{self.build}, {self.mode} {self.name}: {self.outcome} ({self.detail})"


def _medians(series: Sequence[collect.Series], build: str, mode: str) -> list[tuple[int, float]]:
    out = []
    for s in series:
        if s.qemu_build == build and s.mode == mode and s.values(PAUSE.key):
            out.append((s.guest_mem_mib, stats.median(s.values(PAUSE.key))))
    return sorted(out)


def _ratio_check(build: str, mode: str, name: str, medians: list[tuple[int, float]],
                 passes, rule: str) -> ShapeCheck:
    if len(medians) < 2 or medians[-1][0] / medians[0][0] < MIN_RAM_SPAN:
        sizes = ", ".join(fmt_mib(m) for m, _ in medians) or "none"
        return ShapeCheck(build, mode, name, NOT_CHECKED,
                          f"needs two sizes {MIN_RAM_SPAN:g}x apart, measured: {sizes}")
    (lo_mem, lo), (hi_mem, hi) = medians[0], medians[-1]
    ratio = hi / lo if lo > 0 else float("inf")
    return ShapeCheck(build, mode, name, PASS if passes(ratio) else FAIL,
                      f"{fmt(hi)} ms at {fmt_mib(hi_mem)} / {fmt(lo)} ms at "
                      f"{fmt_mib(lo_mem)} = {ratio:.2f}, {rule}")


def check_shapes(series: Sequence[collect.Series]) -> list[ShapeCheck]:
    """Every shape check the measured modes allow, per build."""
    checks = []
    for build in collect.builds(series):
        modes = collect.modes(s for s in series if s.qemu_build == build)
        if "background" in modes:
            medians = _medians(series, build, "background")
            checks.append(_ratio_check(build, "background", "flat", medians,
                                       lambda r: r <= FLAT_MAX_RATIO,
                                       f"must be <= {FLAT_MAX_RATIO:g}"))
            if medians:
                worst_mem, worst = max(medians, key=lambda m: m[1])
                checks.append(ShapeCheck(
                    build, "background", "short",
                    PASS if worst < BACKGROUND_MAX_MS else FAIL,
                    f"longest median {fmt(worst)} ms (at {fmt_mib(worst_mem)}), must be "
                    f"< {BACKGROUND_MAX_MS:g} ms"))
        for mode in GROWING_MODES:
            if mode in modes:
                checks.append(_ratio_check(build, mode, "grows", _medians(series, build, mode),
                                           lambda r: r >= GROW_MIN_RATIO,
                                           f"must be >= {GROW_MIN_RATIO:g}"))
    return checks


def failed(checks: Sequence[ShapeCheck]) -> list[ShapeCheck]:
    return [c for c in checks if c.outcome == FAIL]

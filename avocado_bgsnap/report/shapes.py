"""Expected shapes of the pause over guest RAM, checked rather than assumed.

Per QEMU build, on the median true pause of each measured RAM size:

* ``background`` stays **flat**: pause at the largest RAM / pause at the
  smallest <= ``FLAT_MAX_RATIO`` (2);
* ``background`` stays **short**: every median under ``BACKGROUND_MAX_MS``
  (20 ms, what TCG gives here; KVM hosts do better);
* ``stop_save`` and ``snapshot_save`` **grow**: the same ratio >= the RAM
  ratio to the power ``GROW_MIN_EXPONENT`` (0.5: 4 over the scaling
  matrix's 16x RAM range, 2 over the A/B set's 4x; pause ~ RAM^k with
  k >= 0.5; measured here k = 0.65-0.89).

A ratio needs two sizes at least ``MIN_RAM_SPAN`` apart; with less the
check is "not checked", never a pass.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from . import collect, stats
from .figures import PAUSE, fmt, fmt_mib

FLAT_MAX_RATIO = 2.0
BACKGROUND_MAX_MS = 20.0
GROW_MIN_EXPONENT = 0.5
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
                 bound_for: Callable[[float], float], at_most: bool) -> ShapeCheck:
    """The pause ratio (largest / smallest RAM) must be at most (or, with
    ``at_most`` false, at least) ``bound_for(RAM ratio)``."""
    if len(medians) < 2 or medians[-1][0] / medians[0][0] < MIN_RAM_SPAN:
        sizes = ", ".join(fmt_mib(m) for m, _ in medians) or "none"
        return ShapeCheck(build, mode, name, NOT_CHECKED,
                          f"needs two sizes {MIN_RAM_SPAN:g}x apart, measured: {sizes}")
    (lo_mem, lo), (hi_mem, hi) = medians[0], medians[-1]
    ratio = hi / lo if lo > 0 else float("inf")
    bound = bound_for(hi_mem / lo_mem)
    holds = ratio <= bound if at_most else ratio >= bound
    return ShapeCheck(build, mode, name, PASS if holds else FAIL,
                      f"{fmt(hi)} ms at {fmt_mib(hi_mem)} / {fmt(lo)} ms at "
                      f"{fmt_mib(lo_mem)} = {ratio:.2f}, must be {'<=' if at_most else '>='} "
                      f"{bound:.2f}")


def check_shapes(series: Sequence[collect.Series]) -> list[ShapeCheck]:
    """Every shape check the measured modes allow, per build."""
    checks = []
    for build in collect.builds(series):
        modes = collect.modes(s for s in series if s.qemu_build == build)
        if "background" in modes:
            medians = _medians(series, build, "background")
            checks.append(_ratio_check(build, "background", "flat", medians,
                                       lambda ram: FLAT_MAX_RATIO, at_most=True))
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
                                           lambda ram: ram ** GROW_MIN_EXPONENT,
                                           at_most=False))
    return checks


def failed(checks: Sequence[ShapeCheck]) -> list[ShapeCheck]:
    return [c for c in checks if c.outcome == FAIL]

"""Pure arithmetic of the workload benchmark (``tests/bgsnap_workload_bench.py``).

Medians, writer throughput from two ``status`` replies, the cost of latency
timing in %, the ON/OFF measuring order, and the verdicts against the targets
of the issue.  The targets are reported, never asserted: they are benchmark
figures of one host, not pass/fail criteria.  See docs/workload.md.
"""

import statistics
from typing import Iterable, Sequence

PAGES_PER_MIB = 256             # 4 KiB pages; one writer step writes one page
VERIFY_TARGET_S = 10.0          # verify of a 1 GiB region, seconds (issue target)
VERIFY_TARGET_MIB = 1024        # the region size the verify target is stated for
OVERHEAD_TARGET_PCT = 5.0       # cost of latency timing on the writers, %


def median(values: Iterable[float]) -> float:
    """Median; the mean of the two middle values for an even count."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def median_or_none(values: Sequence[float]) -> float | None:
    return median(values) if values else None


def write_mib_s(before: dict, after: dict) -> float:
    """Writer throughput between two ``status`` replies of one workload run.

    Uses the workload's own counters: ``steps_total`` (pages written) and
    ``elapsed_s`` (time spent running, frozen time excluded), so the time the
    host needs to read the status over the serial console does not count.
    """
    steps = int(after["steps_total"]) - int(before["steps_total"])
    seconds = float(after["elapsed_s"]) - float(before["elapsed_s"])
    if seconds <= 0:
        raise ValueError(f"no running time between the two status reads ({seconds:.3f} s): "
                         f"frozen, or not the same workload run")
    if steps < 0:
        raise ValueError(f"steps went backwards ({steps}): not the same workload run")
    return steps / PAGES_PER_MIB / seconds


def overhead_pct(on_mib_s: float, off_mib_s: float) -> float:
    """How much slower the writers are with latency timing ON, in % of OFF.

    Negative when ON measured faster than OFF (noise, or swapped inputs).
    """
    if off_mib_s <= 0:
        raise ValueError(f"throughput without latency timing must be > 0, got {off_mib_s}")
    return (off_mib_s - on_mib_s) / off_mib_s * 100.0


def round_overheads_pct(on_mib_s: Sequence[float],
                        off_mib_s: Sequence[float]) -> list[float | None]:
    """The overhead within each round (its ON and OFF measured back to back);
    their spread shows how far the host's noise reaches.  ``on_mib_s[r]`` and
    ``off_mib_s[r]`` are round r's; an unfinished last round is left out, a
    round whose OFF writers made no progress is None."""
    return [overhead_pct(on, off) if off > 0 else None for on, off in zip(on_mib_s, off_mib_s)]


def on_off_order(rounds: int) -> list[bool]:
    """Latency timing ON (True) / OFF (False) per measurement, ABBA order.

    ``rounds`` pairs: ON OFF, OFF ON, ON OFF, ...  Each side goes first in
    every other pair, so a linear drift of the host (load, thermals) does not
    favour one side.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    order: list[bool] = []
    for r in range(rounds):
        order += [True, False] if r % 2 == 0 else [False, True]
    return order


def below(value: float | None, limit: float) -> bool | None:
    """The target ``value < limit`` (strict); None when not measured."""
    return None if value is None else value < limit


def verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "not measured"}[met]


def verify_line(region_mib: int, median_s: float | None,
                limit_s: float = VERIFY_TARGET_S) -> str:
    shown = "n/a" if median_s is None else f"{median_s:.2f}"
    note = "" if region_mib == VERIFY_TARGET_MIB else f", stated for {VERIFY_TARGET_MIB} MiB"
    return (f"verify {region_mib} MiB: median {shown} s "
            f"(target < {limit_s:g} s{note}: {verdict(below(median_s, limit_s))})")


def overhead_line(pct: float | None, limit_pct: float = OVERHEAD_TARGET_PCT) -> str:
    shown = "n/a" if pct is None else f"{pct:.1f}"
    return (f"latency overhead: {shown} % "
            f"(target < {limit_pct:g} %: {verdict(below(pct, limit_pct))})")


def summarize(region_mib: int, fill_mib_s: Sequence[float], verify_s: Sequence[float],
              verify_mib_s: Sequence[float], on_mib_s: Sequence[float],
              off_mib_s: Sequence[float]) -> dict:
    """The benchmark's figures (medians, overhead, target verdicts) and its
    human-readable lines; tolerates missing parts of an interrupted run.

    ``fill_mib_s[0]`` is the first fill, into guest RAM never touched before
    (QEMU allocates its host pages then); later fills reuse freed RAM.
    """
    on, off = median_or_none(on_mib_s), median_or_none(off_mib_s)
    overhead = overhead_pct(on, off) if on is not None and off else None
    per_round = round_overheads_pct(on_mib_s, off_mib_s)
    verify_median = median_or_none(verify_s)
    fill, vmibs = median_or_none(fill_mib_s), median_or_none(verify_mib_s)
    first = fill_mib_s[0] if fill_mib_s else None
    lines = [
        verify_line(region_mib, verify_median),
        overhead_line(overhead),
        "fill %s MiB/s (first; median of %d fills %s), verify %s MiB/s, writers %s MiB/s with "
        "latency timing / %s without (medians)" % (
            _fmt(first, 0), len(fill_mib_s), *(_fmt(v, 0) for v in (fill, vmibs, on, off))),
        "latency overhead per ON/OFF round: "
        + (", ".join(_fmt(v, 1) for v in per_round) + " %" if per_round else "n/a"),
    ]
    return {
        "fill_mib_s_first": first,
        "fill_mib_s_median": fill,
        "verify_s_median": verify_median,
        "verify_mib_s_median": vmibs,
        "latency_on_mib_s_median": on,
        "latency_off_mib_s_median": off,
        "latency_overhead_pct": overhead,
        "latency_overhead_pct_rounds": per_round,
        "targets": {
            "verify_s": {"value": verify_median, "limit": VERIFY_TARGET_S,
                         "region_mib": VERIFY_TARGET_MIB, "met": below(verify_median,
                                                                       VERIFY_TARGET_S)},
            "latency_overhead_pct": {"value": overhead, "limit": OVERHEAD_TARGET_PCT,
                                     "met": below(overhead, OVERHEAD_TARGET_PCT)},
        },
        "summary": lines,
    }


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"

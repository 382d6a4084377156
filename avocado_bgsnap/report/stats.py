"""Pure statistics of the report: summaries, the A/B verdict, a growth exponent.

No I/O, no avocado.  ``compare`` is the one place that decides whether a
difference between two sets of runs is flagged (docs/report.md):

* Mann-Whitney U, two-sided (``scipy.stats.mannwhitneyu``): pause times and
  stalls are skewed, heavy-tailed and few (3-10 runs per point), so a rank
  test that assumes no distribution is used instead of a t-test;
* AND the relative change of the medians is at least ``min_effect`` (20 %):
  a tiny but consistent shift on a quiet host is significant and useless,
  and with many points x figures compared, the effect floor is what keeps
  chance hits (5 % of them at alpha 0.05) out of the verdicts.

Fewer than 3 runs on a side, or so few that the exact rank test cannot reach
``alpha`` at all (3 vs 3: smallest two-sided p = 0.1), is "not enough
samples", never "no change".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

REGRESSION = "regression"
IMPROVEMENT = "improvement"
NO_CHANGE = "no change"
NOT_ENOUGH = "not enough samples"

MIN_SAMPLES = 3
DEFAULT_MIN_EFFECT = 0.2
DEFAULT_ALPHA = 0.05


def _clean(values: Iterable[float | None]) -> list[float]:
    """Finite floats only: None and NaN are missing figures, not zeros."""
    out = []
    for value in values:
        if value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            out.append(value)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    data = sorted(_clean(values))
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True)
class Summary:
    """Spread of one figure over the runs of one point."""

    n: int
    median: float
    p10: float
    p90: float
    min: float
    max: float


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Summary of the present values; None when there are none."""
    data = _clean(values)
    if not data:
        return None
    return Summary(n=len(data), median=median(data), p10=percentile(data, 10),
                   p90=percentile(data, 90), min=min(data), max=max(data))


def relative_change(a: float, b: float) -> float:
    """(b - a) / |a|: +0.5 = B is 50 % higher than A."""
    if a == 0:
        return 0.0 if b == 0 else math.copysign(math.inf, b)
    return (b - a) / abs(a)


def min_two_sided_p(n_a: int, n_b: int) -> float:
    """Smallest p the exact two-sided rank test can give for these sizes."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


@dataclass(frozen=True)
class Verdict:
    """Outcome of comparing one figure between side A (baseline) and B."""

    verdict: str                   # REGRESSION | IMPROVEMENT | NO_CHANGE | NOT_ENOUGH
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    rel_change: float | None       # (median B - median A) / median A
    p_value: float | None          # Mann-Whitney U, two-sided
    alpha: float
    min_effect: float
    note: str = ""

    @property
    def flagged(self) -> bool:
        return self.verdict in (REGRESSION, IMPROVEMENT)


def compare(a_samples: Iterable[float | None], b_samples: Iterable[float | None],
            min_effect: float = DEFAULT_MIN_EFFECT, alpha: float = DEFAULT_ALPHA,
            higher_is_worse: bool = True) -> Verdict:
    """Is B different from A?  Flagged only when p < alpha AND |change| >= min_effect.

    ``higher_is_worse`` says which direction is a regression (pause, stall,
    time: higher is worse; throughput: lower is worse).
    """
    if min_effect < 0 or not 0 < alpha < 1:
        raise ValueError(f"min_effect {min_effect} must be >= 0 and alpha {alpha} in (0, 1)")
    a, b = _clean(a_samples), _clean(b_samples)
    med_a = median(a) if a else None
    med_b = median(b) if b else None
    change = relative_change(med_a, med_b) if a and b else None
    common = dict(n_a=len(a), n_b=len(b), median_a=med_a, median_b=med_b,
                  rel_change=change, alpha=alpha, min_effect=min_effect)
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return Verdict(NOT_ENOUGH, p_value=None,
                       note=f"{len(a)} vs {len(b)} runs; at least {MIN_SAMPLES} per side needed",
                       **common)
    floor = min_two_sided_p(len(a), len(b))
    if floor >= alpha:
        return Verdict(NOT_ENOUGH, p_value=None,
                       note=f"{len(a)} vs {len(b)} runs: the rank test cannot go below "
                            f"p = {floor:.3g} (alpha {alpha}); run more per side", **common)
    from scipy.stats import mannwhitneyu  # heavy: only when something is compared

    if len(set(a + b)) == 1:
        p_value = 1.0  # all equal: scipy would warn and give nan
    else:
        p_value = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        if not math.isfinite(p_value):
            p_value = 1.0
    significant = p_value < alpha
    large = change is not None and abs(change) >= min_effect
    if not (significant and large):
        why = []
        if not significant:
            why.append(f"p {p_value:.3g} >= {alpha}")
        if not large:
            why.append(f"|change| {abs(change) * 100:.1f} % < {min_effect * 100:.0f} %")
        return Verdict(NO_CHANGE, p_value=p_value, note="; ".join(why), **common)
    worse = (change > 0) == higher_is_worse
    return Verdict(REGRESSION if worse else IMPROVEMENT, p_value=p_value, **common)


def benjamini_hochberg(p_values: Sequence[float | None], q: float = DEFAULT_ALPHA) -> list[bool]:
    """Which p-values stay discoveries when the false discovery rate over
    all of them is held at ``q`` (Benjamini-Hochberg step-up); a None (no
    test made) never is one and does not count in m."""
    if not 0 < q < 1:
        raise ValueError(f"q {q} must be in (0, 1)")
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(ranked)
    last = max((rank for rank, (p, _) in enumerate(ranked, 1) if p <= q * rank / m), default=0)
    keep = [False] * len(p_values)
    for _, i in ranked[:last]:
        keep[i] = True
    return keep


def held_to_fdr(verdicts: Sequence[Verdict], q: float = DEFAULT_ALPHA,
                scope: str = "") -> list[Verdict]:
    """The verdicts with the flags that are no Benjamini-Hochberg discovery
    at ``q`` over all of them made "no change", the reason in the note.
    ``scope`` names the set in that note (e.g. "the report's ")."""
    keep = benjamini_hochberg([v.p_value for v in verdicts], q)
    m = sum(v.p_value is not None for v in verdicts)
    return [v if kept or not v.flagged else replace(
        v, verdict=NO_CHANGE, note=f"p {v.p_value:.3g} is not a discovery over {scope}{m} "
                                   f"comparisons (Benjamini-Hochberg, q {q})")
            for v, kept in zip(verdicts, keep)]


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Exponent k of y ~ x**k by least squares on logs; None below 2 distinct x.

    k = 1: the figure grows linearly with RAM; k = 0: it does not grow.
    Non-positive values have no log and are skipped.
    """
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
             if x is not None and y is not None and x > 0 and y > 0]
    if len({lx for lx, _ in pairs}) < 2:
        return None
    mean_x = sum(lx for lx, _ in pairs) / len(pairs)
    mean_y = sum(ly for _, ly in pairs) / len(pairs)
    sxx = sum((lx - mean_x) ** 2 for lx, _ in pairs)
    sxy = sum((lx - mean_x) * (ly - mean_y) for lx, ly in pairs)
    return sxy / sxx

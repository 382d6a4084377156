"""report.stats: summaries and the A/B verdict (flag only p < alpha AND a large change)."""

import math
import random

import numpy
import pytest
from scipy.stats import mannwhitneyu

from avocado_bgsnap.report import stats


def test_percentiles_match_numpy_linear():
    rng = random.Random(3)
    data = [rng.lognormvariate(0, 1) for _ in range(37)]
    for q in (0, 10, 50, 90, 100):
        assert stats.percentile(data, q) == pytest.approx(numpy.percentile(data, q))
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([7]) == 7


def test_summary_ignores_missing_values_and_is_none_without_data():
    summary = stats.summarize([None, 3.0, float("nan"), 1.0, 2.0])
    assert summary == stats.Summary(n=3, median=2.0, p10=1.2, p90=2.8, min=1.0, max=3.0)
    assert stats.summarize([]) is None
    assert stats.summarize([None, float("nan")]) is None
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1], 101)


def test_relative_change_and_zero_baseline():
    assert stats.relative_change(2.0, 3.0) == pytest.approx(0.5)
    assert stats.relative_change(2.0, 1.0) == pytest.approx(-0.5)
    assert stats.relative_change(0.0, 0.0) == 0.0
    assert stats.relative_change(0.0, 1.0) == math.inf


def test_fewer_than_three_runs_per_side_is_not_a_verdict():
    verdict = stats.compare([1.0, 1.1], [5.0, 5.1, 5.2, 5.3])
    assert verdict.verdict == stats.NOT_ENOUGH and not verdict.flagged
    assert verdict.p_value is None and (verdict.n_a, verdict.n_b) == (2, 4)
    assert verdict.median_a == pytest.approx(1.05)  # medians are still reported
    assert stats.compare([], []).verdict == stats.NOT_ENOUGH
    # missing figures (None) are not samples
    assert stats.compare([1, 2, None], [1, 2, 3]).verdict == stats.NOT_ENOUGH


def test_three_vs_three_cannot_reach_alpha_and_says_so():
    # exact two-sided Mann-Whitney with 3+3 runs: smallest p is 2/20 = 0.1
    assert stats.min_two_sided_p(3, 3) == pytest.approx(0.1)
    verdict = stats.compare([1.0, 1.1, 1.2], [10.0, 11.0, 12.0])
    assert verdict.verdict == stats.NOT_ENOUGH
    assert "cannot go below" in verdict.note
    # 4 vs 4 can (2/70 = 0.029), and a 10x shift is flagged
    assert stats.compare([1.0, 1.1, 1.2, 1.3], [10, 11, 12, 13]).verdict == stats.REGRESSION


def test_clear_fifty_percent_shift_is_flagged_both_ways():
    rng = random.Random(42)
    a = [rng.lognormvariate(0, 0.1) for _ in range(8)]
    b = [rng.lognormvariate(math.log(1.5), 0.1) for _ in range(8)]
    worse = stats.compare(a, b)
    assert worse.verdict == stats.REGRESSION and worse.flagged
    assert worse.p_value < 0.05 and 0.3 < worse.rel_change < 1.0
    assert worse.p_value == pytest.approx(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    assert stats.compare(b, a).verdict == stats.IMPROVEMENT
    # throughput: higher is better, so the same shift is an improvement
    assert stats.compare(a, b, higher_is_worse=False).verdict == stats.IMPROVEMENT


def test_significant_but_small_change_is_not_flagged():
    rng = random.Random(7)
    a = [rng.gauss(100, 0.5) for _ in range(20)]
    b = [rng.gauss(105, 0.5) for _ in range(20)]   # +5 %, p ~ 1e-8
    verdict = stats.compare(a, b)
    assert verdict.p_value < 1e-6
    assert verdict.verdict == stats.NO_CHANGE and "< 20 %" in verdict.note
    # with a 3 % effect floor the same data is a regression
    assert stats.compare(a, b, min_effect=0.03).verdict == stats.REGRESSION


def test_large_but_noisy_change_is_not_flagged():
    a = [1.0, 10.0, 0.5, 8.0, 2.0]
    b = [1.5, 15.0, 0.7, 12.0, 3.0]   # medians +50 %, distributions overlap
    verdict = stats.compare(a, b)
    assert verdict.rel_change == pytest.approx(0.5)
    assert verdict.p_value > 0.05 and verdict.verdict == stats.NO_CHANGE


def test_identical_samples_give_p_one():
    verdict = stats.compare([2.0] * 5, [2.0] * 5)
    assert verdict.verdict == stats.NO_CHANGE and verdict.p_value == 1.0


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        stats.compare([1, 2, 3], [1, 2, 3], alpha=0)
    with pytest.raises(ValueError):
        stats.compare([1, 2, 3], [1, 2, 3], min_effect=-0.1)


def test_a_a_same_distribution_stays_silent():
    """A vs A: every (mode, size, figure) drawn from one distribution -> nothing flagged."""
    rng = random.Random(20261129)
    flagged = []
    for case in range(24):   # e.g. 2 modes x 3 sizes x 4 figures
        sigma = (0.05, 0.2, 0.5)[case % 3]
        a = [rng.lognormvariate(0, sigma) for _ in range(5)]
        b = [rng.lognormvariate(0, sigma) for _ in range(5)]
        verdict = stats.compare(a, b)
        assert verdict.verdict in (stats.NO_CHANGE,)
        flagged += [case] if verdict.flagged else []
    assert flagged == []


def test_a_a_false_alarm_rate_is_far_below_alpha():
    """Over many A/A trials, p < alpha alone fires ~5 %; with the effect floor far less."""
    rng = random.Random(1)
    trials, p_only, flagged = 400, 0, 0
    for _ in range(trials):
        a = [rng.lognormvariate(0, 0.1) for _ in range(6)]
        b = [rng.lognormvariate(0, 0.1) for _ in range(6)]
        verdict = stats.compare(a, b)
        p_only += verdict.p_value < 0.05
        flagged += verdict.flagged
    assert p_only > 0          # the rank test alone does raise chance alarms
    assert flagged <= trials * 0.005


def test_loglog_slope():
    assert stats.loglog_slope([256, 512, 1024], [1, 2, 4]) == pytest.approx(1.0)
    assert stats.loglog_slope([256, 512, 1024], [3, 3, 3]) == pytest.approx(0.0)
    assert stats.loglog_slope([256], [1]) is None
    assert stats.loglog_slope([256, 256], [1, 2]) is None
    assert stats.loglog_slope([256, 512, 1024], [0, 2, 4]) == pytest.approx(1.0)  # 0 skipped


# --- report-wide control: Benjamini-Hochberg ----------------------------------------------

def test_benjamini_hochberg_step_up():
    # m = 5 tested: thresholds 0.01 0.02 0.03 0.04 0.05; the largest rank under
    # its threshold is 3 (0.029 <= 0.03), so ranks 1-3 are discoveries
    p = [0.001, 0.5, 0.029, None, 0.015, 0.045]
    assert stats.benjamini_hochberg(p, 0.05) == [True, False, True, False, True, False]
    assert stats.benjamini_hochberg([0.04] * 4, 0.05) == [True] * 4
    assert stats.benjamini_hochberg([None, None]) == [False, False]
    with pytest.raises(ValueError):
        stats.benjamini_hochberg([0.1], 1.5)

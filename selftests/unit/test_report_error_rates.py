"""report.error_rates: the A/B verdict's false flags and power, by resampling real runs."""

import random

import pytest
from test_report_synthetic import make_job, scale_tests

from avocado_bgsnap.report import collect, error_rates, figures


def _pool(values, figure=figures.PAUSE):
    return error_rates.Pool("system", "background", 256, figure, tuple(values))


def test_quiet_runs_never_false_flag_and_a_large_shift_is_found():
    rng = random.Random(3)
    quiet = _pool([rng.lognormvariate(0, 0.05) for _ in range(40)])
    rates = error_rates.measure([quiet], reps=8, rows=4, trials=40, shifts=(0.5,))
    assert rates.false_flag_rate == 0 and rates.reports_with_false_flag == 0
    assert rates.power["50 %"] >= 0.95


def test_no_shift_is_never_found():
    """The negative control of the power figure: 'found' at a 0 % shift is a false flag."""
    rng = random.Random(3)
    quiet = _pool([rng.lognormvariate(0, 0.05) for _ in range(40)])
    rates = error_rates.measure([quiet], reps=8, rows=4, trials=40, shifts=(0.0,))
    assert rates.power["0 %"] == 0


def test_noisy_runs_false_flag_without_control_and_less_with_it():
    rng = random.Random(5)
    noisy = _pool([rng.lognormvariate(0, 0.9) for _ in range(40)])
    bare = error_rates.measure([noisy], reps=5, rows=16, trials=60, shifts=(), control=False)
    held = error_rates.measure([noisy], reps=5, rows=16, trials=60, shifts=(), control=True)
    assert bare.false_flag_rate > 0.01
    assert held.false_flag_rate < bare.false_flag_rate / 4


def test_lower_is_worse_figures_are_shifted_down():
    assert error_rates._shifted([2.0], 1.0, higher_is_worse=False) == [1.0]
    assert error_rates._shifted([2.0], 1.0, higher_is_worse=True) == [4.0]


def test_pools_come_from_repeated_passed_runs(tmp_path):
    job = make_job(tmp_path, "job-a", scale_tests(reps=6, sizes=(256,)))
    pools = error_rates.pools(collect.load_points([job]))
    assert {(p.mode, p.figure.key, len(p.values)) for p in pools} == {
        ("background", "pause_ms", 6), ("background", "stall_max_ms", 6),
        ("background", "stall_p99_us", 6), ("background", "snapshot_total_s", 6),
        ("stop_save", "pause_ms", 6), ("stop_save", "snapshot_total_s", 6)}
    assert error_rates.pools(collect.load_points([job]), min_values=7) == []
    with pytest.raises(collect.ReportError, match="no pool of repeated runs"):
        error_rates.measure([], reps=5)


def test_a_floor_at_the_shift_caps_its_power_and_a_lower_one_lifts_it():
    """A true 20 % shift moves the observed median by 20 % or more only about
    half the time: a 20 % floor cannot find it reliably, a 10 % one can."""
    rng = random.Random(7)
    quiet = _pool([rng.lognormvariate(0, 0.05) for _ in range(60)])
    at = error_rates.measure([quiet], reps=10, rows=4, trials=80, shifts=(0.2,), min_effect=0.2)
    below = error_rates.measure([quiet], reps=10, rows=4, trials=80, shifts=(0.2,),
                                min_effect=0.1)
    assert at.power["20 %"] < 0.8 <= below.power["20 %"]
    assert (at.min_effect, below.min_effect) == (0.2, 0.1)
    assert below.false_flag_rate == 0


def test_power_is_given_per_figure_of_the_shifted_row():
    """A quiet figure's shift is found, a noisy one's is not: the report-wide
    power averages them, the per-figure split tells them apart."""
    rng = random.Random(11)
    quiet = _pool([rng.lognormvariate(0, 0.05) for _ in range(40)], figures.TOTAL)
    noisy = _pool([rng.lognormvariate(0, 1.5) for _ in range(40)], figures.STALL_MAX)
    rates = error_rates.measure([quiet, noisy], reps=8, rows=4, trials=80, shifts=(0.5,),
                                min_effect=0.1)
    split = rates.power_by_figure
    assert set(split) == {quiet.figure.key, noisy.figure.key}
    assert split[quiet.figure.key]["50 %"] >= 0.95 > 0.5 > split[noisy.figure.key]["50 %"]
    assert rates.power["50 %"] == pytest.approx(
        (split[quiet.figure.key]["50 %"] + split[noisy.figure.key]["50 %"]) / 2)
    assert "found, per figure" in error_rates.render([quiet, noisy], [rates])


def test_every_pool_takes_part_when_there_are_more_pools_than_rows():
    """8 pools, reports of 4 rows: the last 4 pools (another figure) are drawn
    too, in the A/A rows and as the shifted row (they were never used when
    row i always drew from pool i)."""
    rng = random.Random(13)
    pools = [_pool([rng.lognormvariate(0, 0.05) for _ in range(20)],
                   figures.PAUSE if i < 4 else figures.TOTAL) for i in range(8)]
    used = {id(p) for t in range(2) for p in error_rates.report_rows(pools, 4, t * 4)}
    assert used == {id(p) for p in pools}
    rates = error_rates.measure(pools, reps=8, rows=4, trials=16, shifts=(0.5,), min_effect=0.1)
    assert set(rates.power_by_figure) == {figures.PAUSE.key, figures.TOTAL.key}

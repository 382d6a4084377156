"""report.confirm: a flag is re-run, A and B interleaved, before it is reported."""

import pytest
from test_report_synthetic import make_job, scale_tests

from avocado_bgsnap.report import build, collect, compare, confirm, stats


def _ab_job(tmp_path, name, seed, scale):
    """One job with both builds, as 'avocado run ab' makes it (5 runs a side)."""
    tests = scale_tests(builds=("system", "qemu10"), modes=("background",), sizes=(256,),
                        reps=5, seed=seed, pause_scale={"qemu10": scale})
    tests = [(n.replace("scale.", "ab."), r, s) for n, r, s in tests]
    return make_job(tmp_path, name, tests)


def _comparisons(job):
    comparisons = compare.compare_builds(collect.load_points([job]))
    compare.control_report(comparisons)
    return comparisons


def test_stems_select_the_build():
    point = collect.point_from_record({"qemu_build": "system"}, job="j", test="1-x",
                                      record_path="r", status={"name": "ab.background.256m.r3"})
    assert confirm.stem(point) == "system.ab.background.256m"
    other = collect.point_from_record({"qemu_build": "qemu10"}, job="j", test="2-x", record_path="r",
                                      status={"name": "qemu10.ab.background.256m.r12"})
    assert confirm.stem(other) == "qemu10.ab.background.256m"


def test_the_rerun_interleaves_a_and_b_and_swaps_the_order(tmp_path):
    job = _ab_job(tmp_path, "job-first", 1, 3.0)
    [flag] = confirm.flags(_comparisons(job))
    assert (flag.mode, flag.figure, flag.verdict) == ("background", "pause_ms", stats.REGRESSION)
    assert confirm.plan([flag, flag], runs=4) == [
        "system.ab.background.256m.r1", "qemu10.ab.background.256m.r1",
        "qemu10.ab.background.256m.r2", "system.ab.background.256m.r2",
        "system.ab.background.256m.r3", "qemu10.ab.background.256m.r3",
        "qemu10.ab.background.256m.r4", "system.ab.background.256m.r4"]
    with pytest.raises(confirm.ConfirmError, match="4 is the least"):
        confirm.plan([flag], runs=3)


def test_a_flag_the_rerun_repeats_is_confirmed_and_answers_yes(tmp_path):
    job = _ab_job(tmp_path, "job-first", 1, 3.0)
    rerun = _ab_job(tmp_path, "job-rerun", 2, 3.0)
    flags = confirm.flags(_comparisons(job))
    [result] = confirm.judge(flags, collect.load_points([rerun]))
    assert result.confirmed and result.n_a == result.n_b == 5
    confirm.write(job, rerun, [result])
    files = build.make_report([job], output=tmp_path / "report")
    assert files.answers[0].startswith("Is qemu10 worse than system (pause or stalls)? YES: "
                                       "1 regression(s) flagged (1 confirmed")
    assert "regression (confirmed)" in files.files["markdown"].read_text()


def test_a_chance_flag_the_rerun_does_not_repeat_is_not_reported(tmp_path):
    """The negative control: the first job's shift is gone in the re-run."""
    job = _ab_job(tmp_path, "job-first", 1, 3.0)
    rerun = _ab_job(tmp_path, "job-rerun", 2, 1.0)
    [result] = confirm.judge(confirm.flags(_comparisons(job)), collect.load_points([rerun]))
    assert not result.confirmed and result.rerun == stats.NO_CHANGE
    confirm.write(job, rerun, [result])
    comparisons = _comparisons(job)
    confirm.apply(comparisons, confirm.load([job]))
    assert comparisons[0].answer == compare.NO
    assert "0 confirmed, 0 awaiting a re-run, 1 not confirmed by it" in \
        comparisons[0].answer_line()


def test_an_unreadable_confirmation_is_an_error(tmp_path):
    job = _ab_job(tmp_path, "job-first", 1, 3.0)
    (job / confirm.CONFIRM_FILE).write_text("{")
    with pytest.raises(collect.ReportError, match="unreadable confirmation"):
        confirm.load([job])


def test_the_end_of_an_ab_job_reruns_its_flags_once(tmp_path, monkeypatch):
    """The report plugin's hook: an 'ab' job of two builds is confirmed before
    its report; the re-run job itself, a job of one build, a job of another
    family and confirm_runs = 0 are not."""
    from avocado_bgsnap.report import confirm_run, result_plugin

    calls = []
    monkeypatch.setattr(confirm_run, "confirm_job",
                        lambda job, runs, log: calls.append((job.name, runs)) or [])
    monkeypatch.delenv(confirm_run.CONFIRMING_ENV, raising=False)
    job = _ab_job(tmp_path, "job-first", 1, 3.0)
    points = collect.load_points([job])
    assert confirm_run.is_ab_job(points)
    result_plugin.confirm_ab_flags(job, points, {})
    result_plugin.confirm_ab_flags(job, points, {"bgsnap.confirm_runs": 6})
    result_plugin.confirm_ab_flags(job, points, {"bgsnap.confirm_runs": 0})
    assert calls == [("job-first", confirm_run.DEFAULT_RUNS), ("job-first", 6)]
    one_build = [p for p in points if p.qemu_build == "system"]
    assert not confirm_run.is_ab_job(one_build)
    scale = make_job(tmp_path, "job-scale", scale_tests(
        builds=("system", "qemu10"), modes=("background",), sizes=(256,), reps=5, seed=1))
    assert not confirm_run.is_ab_job(collect.load_points([scale]))
    monkeypatch.setenv(confirm_run.CONFIRMING_ENV, "job-first")
    result_plugin.confirm_ab_flags(job, points, {})
    assert len(calls) == 2


def test_a_job_without_flags_runs_nothing_again(tmp_path, monkeypatch):
    from avocado_bgsnap.report import confirm_run

    monkeypatch.setattr(confirm_run.subprocess, "run",
                        lambda *a, **k: pytest.fail("nothing to re-run"))
    job = _ab_job(tmp_path, "job-same", 1, 1.0)
    assert confirm_run.confirm_job(job) == []

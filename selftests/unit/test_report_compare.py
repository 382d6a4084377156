"""report.compare: A/B between job dirs and between QEMU builds of one job."""

from test_report_synthetic import make_job, scale_tests, synthetic_matrix

from avocado_bgsnap.report import collect, compare, stats


def _jobs(tmp_path, seed_a, seed_b, reps=5, **b_kwargs):
    a = make_job(tmp_path, "job-a", scale_tests(reps=reps, seed=seed_a))
    b = make_job(tmp_path, "job-b", scale_tests(reps=reps, seed=seed_b, **b_kwargs))
    return a, b


def test_a_a_same_build_twice_flags_nothing(tmp_path):
    a, b = _jobs(tmp_path, seed_a=11, seed_b=12)
    result = compare.compare_dirs([a], [b])
    assert (result.a_label, result.b_label) == ("job-a", "job-b")
    # background: 4 figures per size; stop_save: no guest-write figures (the
    # guest is stopped during the save), pause and total time only
    assert len(result.rows) == 3 * 4 + 3 * 2
    assert {r.figure.key for r in result.rows if r.mode == "stop_save"} == {
        "pause_ms", "snapshot_total_s"}
    assert [r for r in result.rows if r.verdict.flagged] == []
    assert result.answer == compare.NO
    assert result.answer_line().startswith("Is job-b worse than job-a (pause or stalls)? no")


def test_fifty_percent_longer_pause_is_a_regression(tmp_path):
    a, b = _jobs(tmp_path, seed_a=11, seed_b=12, pause_scale={"system": 1.5})
    result = compare.compare_dirs([a], [b])
    flagged = [(r.mode, r.guest_mem_mib, r.figure.key) for r in result.rows if r.verdict.flagged]
    assert sorted(flagged) == sorted((m, s, "pause_ms") for m in ("background", "stop_save")
                                     for s in (256, 512, 1024))
    assert all(r.verdict.verdict == stats.REGRESSION for r in result.regressions)
    # flagged, but a flag is a yes only once a re-run confirms it (report/confirm.py)
    assert result.answer == compare.UNCONFIRMED
    assert "not yet known: 6 regression(s) flagged (0 confirmed, 6 awaiting a re-run, 0 not " \
        "confirmed by it)" in result.answer_line()
    assert result.answer_line().endswith("confirm with: avocado bgsnap ab-confirm --job JOB")
    for i, row in enumerate(result.rows):
        if row.verdict.flagged:
            result.rows[i] = compare.ABRow(**{**row.__dict__, "confirmed": i % 2 == 0})
    assert result.answer == compare.YES and "YES" in result.answer_line()
    result.rows = [compare.ABRow(**{**r.__dict__, "confirmed": False}) for r in result.rows]
    assert result.answer == compare.NO
    # the other way round it is an improvement, and the answer is no
    reverse = compare.compare_dirs([b], [a])
    assert reverse.answer == compare.NO and len(reverse.improvements) == 6


def test_worse_stalls_alone_are_a_regression(tmp_path):
    a, b = _jobs(tmp_path, seed_a=11, seed_b=12, stall_scale={"system": 3.0})
    result = compare.compare_dirs([a], [b])
    keys = {r.figure.key for r in result.regressions}
    assert keys == {"stall_max_ms", "stall_p99_us"} and result.answer == compare.UNCONFIRMED


def test_three_runs_per_side_cannot_tell(tmp_path):
    a, b = _jobs(tmp_path, seed_a=1, seed_b=2, reps=3, pause_scale={"system": 3.0})
    result = compare.compare_dirs([a], [b])
    assert result.rows and all(r.verdict.verdict == stats.NOT_ENOUGH for r in result.rows)
    assert result.answer == compare.CANNOT_TELL


def test_points_on_one_side_only_are_warned_about(tmp_path):
    a = make_job(tmp_path, "job-a", scale_tests(sizes=(256,), reps=4))
    b = make_job(tmp_path, "job-b", scale_tests(sizes=(256, 512), reps=4, seed=5))
    result = compare.compare_dirs([a], [b])
    assert {r.guest_mem_mib for r in result.rows} == {256}
    assert any("one side only" in w and "512 MiB" in w for w in result.warnings)


def test_builds_of_one_job_are_compared_against_system(tmp_path):
    points = collect.load_points([synthetic_matrix(tmp_path)])
    (result,) = compare.compare_builds(points)
    assert (result.a_label, result.b_label) == ("system", "qemu10")
    # 3 runs per side: the failed run leaves 2 pauses, and 3 vs 3 cannot reach alpha
    assert result.answer == compare.CANNOT_TELL
    failed = [r for r in result.rows if r.failed_a]
    assert failed and all(r.mode == "background" and r.guest_mem_mib == 512 for r in failed)
    assert compare.compare_builds([p for p in points if p.qemu_build == "system"]) == []


def test_side_by_side_jobs_are_compared_build_with_build(tmp_path):
    # an A/A of a two-build job: each build against itself, never mixed
    a = make_job(tmp_path, "job-a", scale_tests(builds=("system", "qemu10"), reps=5, seed=3))
    b = make_job(tmp_path, "job-b", scale_tests(builds=("system",), reps=5, seed=4,
                                                pause_scale={"system": 1.5}))
    results = compare.compare_job_sets(collect.load_points([a]), collect.load_points([b]),
                                       a_label="job-a", b_label="job-b")
    (system,) = results
    assert (system.a_label, system.b_label) == ("job-a [system]", "job-b [system]")
    assert not any("mixes" in w for w in system.warnings)
    assert any("one side only" in w and "qemu10" in w for w in system.warnings)
    assert system.answer == compare.UNCONFIRMED and system.regressions
    assert {p.qemu_build for p in system.a_points} == {"system"}


def test_single_build_sides_are_compared_whole(tmp_path):
    a, b = _jobs(tmp_path, seed_a=11, seed_b=12)
    (result,) = compare.compare_job_sets(collect.load_points([a]), collect.load_points([b]),
                                         a_label="job-a", b_label="job-b")
    assert (result.a_label, result.b_label) == ("job-a", "job-b") and result.answer == compare.NO


def test_report_wide_control_withdraws_a_lone_chance_flag(tmp_path):
    a, b = _jobs(tmp_path, seed_a=11, seed_b=12, reps=8)
    result = compare.compare_dirs([a], [b])
    lone = result.rows[0]
    result.rows[0] = compare.ABRow(lone.mode, lone.guest_mem_mib, lone.figure, stats.Verdict(
        stats.REGRESSION, 8, 8, 1.0, 1.3, 0.3, 0.04, 0.05, 0.2), 0, 0)
    assert compare.control_report([result]) == 1
    assert result.rows[0].verdict.verdict == stats.NO_CHANGE
    assert "not a discovery over the report's 18 comparisons" in result.rows[0].verdict.note
    assert result.answer == compare.NO


def test_report_wide_control_keeps_a_real_shift(tmp_path):
    """The negative control of the above: a 50 % longer pause everywhere stays flagged."""
    a, b = _jobs(tmp_path, seed_a=11, seed_b=12, reps=8, pause_scale={"system": 1.5})
    result = compare.compare_dirs([a], [b])
    before = len(result.regressions)
    assert before >= 3
    assert compare.control_report([result]) == 0 and len(result.regressions) == before

"""report.shapes: the expected shapes of the pause over RAM, and that each check can fail."""

from test_report_synthetic import make_job, scale_tests

from avocado_bgsnap.report import build, collect, shapes

SIZES = (256, 512, 1024, 2048)


def series_of(tmp_path, tests):
    return collect.group_series(collect.load_points([make_job(tmp_path, "job-1", tests)]))


def with_pause(tests, pause_of):
    """Rewrite each record's pause (and its STOP/RESUME window) as pause_of(mode, mem)."""
    out = []
    for name, record, status in tests:
        pause = pause_of(record["mode"], record["guest_mem_mib"], record["pause_ms"])
        stop = record["pause_windows"][0][0]
        record = dict(record, pause_ms=pause, pause_windows=[[stop, stop + pause / 1000]])
        out.append((name, record, status))
    return out


def outcomes(checks):
    return {(c.mode, c.name): c.outcome for c in checks}


def test_expected_shapes_pass(tmp_path):
    checks = shapes.check_shapes(series_of(tmp_path, scale_tests(sizes=SIZES)))
    assert outcomes(checks) == {("background", "flat"): "PASS", ("background", "short"): "PASS",
                                ("stop_save", "grows"): "PASS"}
    assert "2 GiB" in checks[0].detail and "256 MiB" in checks[0].detail


def test_each_check_fails_on_the_wrong_shape(tmp_path):
    # background growing with RAM and slow; stop_save flat: every check must say FAIL
    tests = with_pause(scale_tests(sizes=SIZES),
                       lambda mode, mem, pause: 25.0 * mem / 256 if mode == "background"
                       else 400.0)
    checks = shapes.check_shapes(series_of(tmp_path, tests))
    assert set(outcomes(checks).values()) == {"FAIL"} and len(checks) == 3
    assert len(shapes.failed(checks)) == 3
    line = build.shape_answer(checks)
    assert line.startswith("Expected shapes: 0 passed, 3 failed") and "background flat" in line


def test_a_narrow_ram_range_is_not_checked_never_passed(tmp_path):
    checks = shapes.check_shapes(series_of(tmp_path, scale_tests(sizes=(256, 512))))
    assert outcomes(checks)[("background", "flat")] == "not checked"
    assert outcomes(checks)[("stop_save", "grows")] == "not checked"
    assert outcomes(checks)[("background", "short")] == "PASS"  # needs no range


def test_report_command_fails_when_a_shape_fails(tmp_path):
    tests = with_pause(scale_tests(sizes=SIZES),
                       lambda mode, mem, pause: 400.0 if mode == "stop_save" else pause)
    job = make_job(tmp_path, "job-1", tests)
    result = build.make_report([job])
    assert [(c.mode, c.name) for c in result.shape_failures] == [("stop_save", "grows")]
    assert "FAIL" in (job / "bgsnap-report" / "summary.md").read_text()


def test_the_growth_bound_scales_with_the_ram_span(tmp_path):
    # 256 MiB -> 1 GiB (4x): pause ~ RAM^0.65 grows (2.46 >= 2), RAM^0.3 does not (1.52 < 2)
    for k, expected in ((0.65, "PASS"), (0.3, "FAIL")):
        tests = with_pause(scale_tests(sizes=(256, 1024), reps=3),
                           lambda mode, mem, pause, k=k: 200.0 * (mem / 256) ** k
                           if mode == "stop_save" else pause)
        checks = shapes.check_shapes(series_of(tmp_path / str(k), tests))
        grows = [c for c in checks if c.name == "grows"][0]
        assert grows.outcome == expected, grows.detail
        assert "must be >= 2.00" in grows.detail

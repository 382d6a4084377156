"""avocado_bgsnap.baseline: the raw plan from a test's records, suite / raw
per phase, the run order (pure; the runs themselves: docs/benchmarks.md)."""

import json

import pytest

from avocado_bgsnap.baseline import compare, raw, runs

from test_repro import DEBUG_LOG, METRICS, SNAPDIR, TRACE


def _test_dir(tmp_path, debug_log=DEBUG_LOG, trace=TRACE):
    (tmp_path / "data").mkdir()
    (tmp_path / "debug.log").write_text(debug_log)
    (tmp_path / "data" / "bgsnap-metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "bgsnap-qmp-trace.jsonl").write_text(
        "".join(json.dumps(step) + "\n" for step in trace))
    return tmp_path


def test_the_plan_is_the_tests_own_command_lines_and_migration_setup(tmp_path):
    plan = raw.plan_from_test(_test_dir(tmp_path))
    assert plan.source_argv[0] == "/q/bin/qemu-x" and "-S" in plan.source_argv
    # sockets moved, guest files kept where the test took them from
    assert any("path={qmp}" in a for a in plan.source_argv)
    assert any("path={serial}" in a for a in plan.source_argv)
    assert "/g/kernel/vmlinuz" in plan.source_argv and "/g/initrd-1.img" in plan.restore_argv
    assert plan.restore_argv[-1] == "exec:cat {work}/bgsnap-snapshot.bin"
    assert [s["cmd"] for s in plan.setup_qmp] == ["migrate-set-capabilities"]
    assert plan.save_uri.startswith("exec:cat > {work}/") and SNAPDIR not in plan.save_uri
    assert plan.workload.mib == 128 and plan.workload.nonce == 42


def test_a_test_without_a_restore_gives_no_plan(tmp_path):
    one_run = DEBUG_LOG[:DEBUG_LOG.index("PID 100") + len("PID 100")] + "\n"
    with pytest.raises(raw.RawError, match="1 QEMU run"):
        raw.plan_from_test(_test_dir(tmp_path, debug_log=one_run))


def test_a_trace_without_migrate_gives_no_plan(tmp_path):
    trace = [s for s in TRACE if s["cmd"] != "migrate"]
    with pytest.raises(raw.RawError, match="no 'migrate'"):
        raw.plan_from_test(_test_dir(tmp_path, trace=trace))


RECORD = {"boot_s": 5.0, "login_s": 0.5, "phase_s": {
    "fill": 4.0, "snapshot": 6.0, "source_check": 1.0, "restore": 4.0,
    "host_verify": 0.2, "dump": 0.3, "guest_verify": 2.0, "cleanup": 0.5}}


def test_suite_phases_split_the_wall_time_without_losing_any():
    phases = compare.suite_phases(RECORD, test_s=25.0, wall_s=28.0)
    assert phases["boot"] == 5.5 and phases["host_verify"] == 0.5
    assert phases["avocado"] == 3.0
    assert phases["other"] == pytest.approx(25.0 - 23.5)
    assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(28.0)


def test_the_ratio_is_of_medians_and_the_target_is_judged():
    suite = [dict(compare.suite_phases(RECORD, 25.0, w)) for w in (28.0, 30.0, 29.0)]
    raw_runs = [{"boot": 3.0, "fill": 4.0, "total": t} for t in (15.0, 20.0, 19.0)]
    rows = compare.compare(suite, raw_runs)
    assert compare.total_ratio(rows) == pytest.approx(29.0 / 19.0)
    text = compare.render(rows, 3, 3)
    assert "1.53x" in text and "NOT met" in text
    assert "source_check" in text and "(suite only)" in text
    fast = [{"total": 20.0}]
    assert "target <= 1.5x: met" in compare.render(compare.compare(suite, fast), 3, 1)


def test_no_runs_of_a_side_is_an_error():
    with pytest.raises(compare.BaselineError):
        compare.compare([], [{"total": 1.0}])


def test_runs_alternate_abba():
    assert runs.order(3) == ["suite", "raw", "raw", "suite", "suite", "raw"]
    assert runs.order(1) == ["suite", "raw"]

"""report.collect: finding records, joining statuses, typed points, grouping into series."""

import json

import pytest
from test_report_synthetic import (failed_no_resume, make_job, make_record, scale_tests,
                                   synthetic_matrix)

from avocado_bgsnap.report import collect


def test_job_dirs_accepts_a_job_or_a_results_dir_and_dedupes_latest(tmp_path):
    job1 = make_job(tmp_path, "job-1", [("bgsnap.basic.small", make_record(), "PASS")])
    job2 = make_job(tmp_path, "job-2", [("bgsnap.basic.small", make_record(), "PASS")])
    (tmp_path / "latest").symlink_to(job2)
    (tmp_path / "not-a-job").mkdir()
    assert collect.job_dirs([tmp_path]) == [job1.resolve(), job2.resolve()]
    assert collect.job_dirs([tmp_path / "latest", job2]) == [job2.resolve()]
    with pytest.raises(collect.ReportError, match="no such"):
        collect.job_dirs([tmp_path / "missing"])
    with pytest.raises(collect.ReportError, match="neither"):
        collect.job_dirs([tmp_path / "not-a-job"])


def test_point_joins_status_and_tolerates_absent_fields(tmp_path):
    old = {"guest_mem_mib": 256, "pause_ms": 1.2, "verdict": "pass"}   # before mode/qemu_build
    job = make_job(tmp_path, "job-1", [("bgsnap.basic.small", old, "PASS")])
    (point,) = collect.load_points([job])
    assert (point.qemu_build, point.mode, point.transport) == ("system", "background", "file")
    assert point.status == "PASS" and point.ok and point.name == "bgsnap.basic.small"
    assert point.pause_ms == 1.2 and point.pause_windows == []
    assert point.downtime_ms is None and point.dip_pct is None and point.stall_max_ms is None
    assert point.qemu_version is None and point.kind == collect.KIND_SNAPSHOT


def test_statuses_override_results_json(tmp_path):
    job = make_job(tmp_path, "job-1", [("bgsnap.basic.small", make_record(), "PASS")])
    (job / "results.json").unlink()
    (point,) = collect.load_points([job])
    assert point.status is None and point.ok  # unknown status, verdict pass
    (point,) = collect.load_points([job], {"1-bgsnap.basic.small": {"status": "ERROR"}})
    assert point.status == "ERROR" and not point.ok and point.outcome == "ERROR"


def test_missing_resume_makes_the_pause_unknown_not_short(tmp_path):
    record = failed_no_resume(make_record())
    record["pause_ms"] = 0.0   # even a stale figure is not trusted without RESUME
    job = make_job(tmp_path, "job-1", [("bgsnap.basic.small", record, "FAIL")])
    (point,) = collect.load_points([job])
    assert point.missing_resume and point.pause_ms is None
    assert point.stop_s == record["pause_windows"][0][0] and point.resume_s is None
    assert not point.ok and point.outcome.startswith("no RESUME")


def test_pause_from_windows_when_pause_ms_absent():
    record = {"pause_windows": [[10.0, 10.002], [20.0, 20.001]]}
    point = collect.point_from_record(record, job="j", test="1-t", record_path="p")
    assert point.pause_ms == pytest.approx(3.0)


def test_derived_figures_from_latency_windows():
    point = collect.point_from_record(make_record(), job="j", test="1-t", record_path="p")
    assert point.mib_s_before > point.mib_s_during
    assert point.dip_pct == pytest.approx(40.0)
    assert point.stall_p99_us == pytest.approx(65.0)
    assert 5 < point.stall_max_ms < 50
    assert point.snapshot_mib == pytest.approx(256 * 0.8, rel=0.01)


def test_kinds_negative_controls_and_benchmarks_stay_out_of_series(tmp_path):
    tests = [("bgsnap.basic.small", make_record(), "PASS"),
             ("bgsnap.negative.late_image.small",
              make_record(negative_control="late_image"), "PASS"),
             ("bench.workload.1g", {"bench_seconds": 2.0, "guest_mem_mib": 1280,
                                    "verdict": "pass"}, "PASS"),
             ("bgsnap.transport.gzip.small", make_record(transport={"name": "gzip"}), "PASS")]
    legacy = make_record()
    del legacy["negative_control"]   # older records: only the test name tells
    tests.append(("bgsnap.damaged_snapshot.small", legacy, "PASS"))
    points = collect.load_points([make_job(tmp_path, "job-1", tests)])
    assert [p.kind for p in points] == ["snapshot", "negative", "bench", "snapshot", "negative"]
    series = collect.group_series(points)
    assert [s.key for s in series] == [("system", "background", 256),
                                       ("system", "background+gzip", 256)]


def test_grouping_by_build_mode_ram_in_order(tmp_path):
    job = synthetic_matrix(tmp_path)
    series = collect.group_series(collect.load_points([job]))
    assert len(series) == 2 * 2 * 3
    assert all(s.n == 3 for s in series)
    assert [s.key for s in series][:4] == [("qemu10", "background", 256),
                                           ("qemu10", "background", 512),
                                           ("qemu10", "background", 1024),
                                           ("qemu10", "stop_save", 256)]
    assert collect.builds(series) == ["system", "qemu10"]     # system first
    assert collect.modes(series) == ["background", "stop_save"]
    failed = [s for s in series if s.n_failed]
    assert len(failed) == 1 and failed[0].n_missing_resume == 1
    assert len(failed[0].values("pause_ms")) == 2           # the lost pause is not a sample
    assert failed[0].qemu_versions == ["7.2.22 (Debian 1:7.2+dfsg-7)"]


def test_unreadable_record_names_the_file(tmp_path):
    job = make_job(tmp_path, "job-1", [("bgsnap.basic.small", make_record(), "PASS")])
    path = next(job.glob("test-results/*/data/bgsnap-metrics.json"))
    path.write_text("{not json")
    with pytest.raises(collect.ReportError, match="unreadable"):
        collect.load_points([job])
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(collect.ReportError, match="not a JSON object"):
        collect.load_points([job])


def test_garbage_values_are_absent_not_crashes():
    record = {"guest_mem_mib": "lots", "pause_ms": "fast", "phase_s": {"fill": "x", "dump": 1},
              "latency_windows": [{"window": "?"}, "junk"], "pause_windows": ["junk", [1.0]]}
    point = collect.point_from_record(record, job="j", test="1-t", record_path="p")
    assert point.guest_mem_mib is None and point.phase_s == {"dump": 1}
    assert point.latency_windows == {} and point.pause_windows == [(1.0, None)]
    assert point.missing_resume and point.pause_ms is None
    assert scale_tests(reps=1, sizes=(256,), modes=("background",))  # factory sanity


def test_a_whole_vm_snapshot_is_its_own_mode():
    """Its pause holds the disk step: not a sample of the plain background pause."""
    plain = collect.point_from_record({"mode": "background"}, job="j", test="1-a", record_path="r")
    whole = collect.point_from_record({"mode": "background", "disk": {"form": "background"}},
                                      job="j", test="2-b", record_path="r")
    assert (plain.mode_label, whole.mode_label) == ("background", "background+disk")
    assert whole.disk_form == "background"


def test_footprint_figures_and_the_mode_table_column():
    from avocado_bgsnap.report import tables

    point = collect.point_from_record(
        {"guest_mem_mib": 1024, "pause_ms": 1.0, "source_peak_rss_kib": 1100 * 1024,
         "restored_peak_rss_kib": 1050 * 1024, "disk_bytes_peak": 800 * 2**20},
        job="j", test="1-a", record_path="r")
    assert (point.figure("source_peak_rss_mib"), point.figure("restored_peak_rss_mib"),
            point.figure("disk_mib")) == (1100, 1050, 800)
    [table] = tables.mode_tables(collect.group_series([point]))
    row = dict(zip(table.header, table.rows[0]))
    assert row["peak RSS MiB source / restored"] == "1100 / 1050" and row["disk MiB"] == "800"

"""report.fleet: many hosts in one report, A/B between hosts or kernels; archives."""

import json
import zipfile

import pytest
from test_report_synthetic import make_job, scale_tests

from avocado_bgsnap.host import facts
from avocado_bgsnap.report import build, collect, compare, fleet

HOSTS = {
    "node2": {"hostname": "node2", "kernel_release": "6.18.44", "cpu_model": "EPYC 7B13"},
    "node3": {"hostname": "node3", "kernel_release": "6.18.44", "cpu_model": "EPYC 7B13"},
    "node4": {"hostname": "node4", "kernel_release": "6.1.0-27-amd64", "cpu_model": "EPYC 7B13"},
}


def host_job(root, host, seed, reps=5, **kwargs):
    """A job of one host: its records name it as cycle.py's do (record['host'])."""
    tests = scale_tests(reps=reps, seed=seed, **kwargs)
    for _, record, _ in tests:
        record["host"] = {**record["host"], **HOSTS[host]}
    return make_job(root, f"job-{host}", tests)


def test_cpu_model_is_the_first_model_name():
    text = "processor\t: 0\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n" \
           "processor\t: 1\nmodel name\t: other\n"
    assert facts.parse_cpu_model(text) == "AMD EPYC 7B13 64-Core Processor"
    assert facts.parse_cpu_model("processor : 0\n") == ""


def test_points_name_their_host(tmp_path):
    points = collect.load_points([host_job(tmp_path, "node2", 1, reps=1)])
    assert {(p.hostname, p.kernel_release, p.cpu_model) for p in points} == {
        ("node2", "6.18.44", "EPYC 7B13")}


def test_records_without_host_facts_are_one_unknown_host(tmp_path):
    points = collect.load_points([make_job(tmp_path, "job-old", scale_tests(reps=1))])
    assert fleet.sides(points) == [fleet.UNKNOWN]
    assert not fleet.is_fleet(points)


def test_two_identical_hosts_are_an_a_a_that_stays_silent(tmp_path):
    jobs = [host_job(tmp_path, "node2", 11), host_job(tmp_path, "node3", 12)]
    points = collect.load_points(jobs)
    assert fleet.is_fleet(points)
    rows = fleet.host_rows(points)
    assert [(r.hostname, len(r.points), r.statuses()) for r in rows] == [
        ("node2", 30, {"PASS": 30}), ("node3", 30, {"PASS": 30})]
    [result] = fleet.compare_sides(points)
    assert (result.a_label, result.b_label) == ("host node2", "host node3")
    assert result.answer == compare.NO and result.rows


def test_a_slower_host_is_flagged(tmp_path):
    """The negative control of the A/A above: a 50 % longer pause on one host is found."""
    jobs = [host_job(tmp_path, "node2", 11), host_job(tmp_path, "node3", 12,
                                                      pause_scale={"system": 1.5})]
    [result] = fleet.compare_sides(collect.load_points(jobs))
    assert result.answer == compare.UNCONFIRMED
    assert {r.figure.key for r in result.regressions} == {"pause_ms"}


def test_kernels_are_compared_across_hosts(tmp_path):
    jobs = [host_job(tmp_path, "node2", 11), host_job(tmp_path, "node3", 12),
            host_job(tmp_path, "node4", 13, pause_scale={"system": 1.6})]
    points = collect.load_points(jobs)
    assert fleet.sides(points, "kernel") == ["6.1.0-27-amd64", "6.18.44"]
    [result] = fleet.compare_sides(points, "kernel", "6.18.44", "6.1.0-27-amd64")
    assert len(result.a_points) == 60 and len(result.b_points) == 30
    assert result.answer == compare.UNCONFIRMED and result.regressions
    with pytest.raises(collect.ReportError, match="no kernel '5.4'.*6.1.0-27-amd64, 6.18.44"):
        fleet.compare_sides(points, "kernel", "5.4")
    with pytest.raises(collect.ReportError, match="cannot group by 'disk'"):
        fleet.compare_sides(points, "disk")


def test_hosts_keep_qemu_builds_apart(tmp_path):
    jobs = [host_job(tmp_path, "node2", 11, builds=("system", "qemu10")),
            host_job(tmp_path, "node3", 12, builds=("system", "qemu10"))]
    results = fleet.compare_sides(collect.load_points(jobs))
    assert [r.b_label for r in results] == ["host node3 [system]", "host node3 [qemu10]"]


def test_fleet_report_has_a_hosts_table_and_series_per_host(tmp_path):
    jobs = [host_job(tmp_path, "node2", 11), host_job(tmp_path, "node3", 12)]
    files = build.make_report(jobs, output=tmp_path / "report")
    assert files.answers[0] == ("Fleet: 2 hosts, 60 tests: node2 (6.18.44, QEMU 7.2.22 (Debian "
                                "1:7.2+dfsg-7), tcg): 30; node3 (6.18.44, QEMU 7.2.22 (Debian "
                                "1:7.2+dfsg-7), tcg): 30")
    assert any(a.startswith("Is host node3 worse than host node2") for a in files.answers)
    text = files.files["markdown"].read_text()
    assert "## Hosts" in text and "system@node2" in text and "system@node3" in text
    points = json.loads(files.files["json"].read_text())
    assert {p["hostname"] for p in points["points"]} == {"node2", "node3"}


def test_job_archives_are_read_like_job_dirs(tmp_path):
    job = host_job(tmp_path / "hosts", "node2", 1, reps=1)
    archive = tmp_path / "results" / f"{job.name}.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:   # as avocado's --archive writes it
        for path in job.rglob("*"):
            if path.is_file():
                zipped.write(path, "/" + str(path.relative_to(job)))
    from_zip = collect.load_points([archive])
    from_results_dir = collect.load_points([tmp_path / "results"])
    assert len(from_zip) == len(from_results_dir) == 6
    assert {p.job for p in from_zip} == {job.name}
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(collect.ReportError, match="not a readable job archive"):
        collect.load_points([tmp_path / "bad.zip"])

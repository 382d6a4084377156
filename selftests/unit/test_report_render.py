"""report.build/render: summary.md/.html, points.csv/.json, the command's output dir, the plugin."""

import csv
import json
import logging
import re
from types import SimpleNamespace

import pytest
from test_report_synthetic import make_job, make_record, scale_tests, synthetic_matrix

from avocado_bgsnap.report import build, collect, render
from avocado_bgsnap.report.result_plugin import BgsnapReportResult


@pytest.fixture(name="matrix_report", scope="module")
def fixture_matrix_report(tmp_path_factory):
    job = synthetic_matrix(tmp_path_factory.mktemp("matrix"))
    return job, build.make_report([job])


def test_report_goes_to_the_job_by_default_with_all_files(matrix_report):
    job, result = matrix_report
    assert result.outdir == job.resolve() / "bgsnap-report"
    for name in ("summary.md", "summary.html", "points.csv", "points.json"):
        assert (result.outdir / name).stat().st_size > 0
    names = {p.name for p in result.plots}
    assert {"pause_vs_ram.png", "total_vs_ram.png", "throughput.png", "downtime_vs_pause.png",
            "time_split.png", "ab1_pause.png", "ab1_stall.png"} <= names


def test_markdown_has_the_answer_and_a_table_per_mode(matrix_report):
    _, result = matrix_report
    text = (result.outdir / "summary.md").read_text()
    assert "## Mode: background" in text and "## Mode: stop_save" in text
    assert "## True guest pause, median ms [p10-p90]" in text
    assert "## A/B: qemu10 (B) vs system (A, baseline)" in text
    assert "Is qemu10 worse than system (pause or stalls)? cannot tell" in text
    assert "| 512 MiB | 3 (1 failed, 1 no RESUME) |" in text
    assert "no RESUME" in text                        # the raw stamps table shows it
    assert "![True guest pause vs guest RAM](pause_vs_ram.png)" in text
    # the time split of each row: boot / fill / save / restore / dump / verify
    assert re.search(r"\| 5\.7 / 1\.7 / 0\.\d+ / 2\.6 / 0\.30 / 0\.050 \|", text)


def test_html_is_self_contained_and_images_resolve(matrix_report):
    _, result = matrix_report
    page = (result.outdir / "summary.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(result.plots)
    assert all((result.outdir / src).is_file() and "/" not in src for src in sources)
    assert "<h2>Mode: stop_save</h2>" in page


def test_csv_and_json_hold_every_raw_point(matrix_report):
    job, result = matrix_report
    rows = list(csv.DictReader((result.outdir / "points.csv").open()))
    assert len(rows) == 36 and list(rows[0]) == list(render.CSV_COLUMNS)
    failed = [r for r in rows if r["status"] == "FAIL"]
    assert len(failed) == 1
    assert failed[0]["missing_resume"] == "True" and failed[0]["pause_ms"] == ""
    assert failed[0]["resume_s"] == "" and json.loads(failed[0]["pause_windows"])[0][1] is None
    # raw STOP/RESUME stamps at full precision
    first = json.loads(next(job.glob("test-results/1-*/data/bgsnap-metrics.json")).read_text())
    row = next(r for r in rows if r["test"].startswith("1-"))
    assert float(row["stop_s"]) == first["pause_windows"][0][0]
    assert float(row["resume_s"]) == first["pause_windows"][0][1]
    assert float(row["pause_ms"]) == first["pause_ms"]
    payload = json.loads((result.outdir / "points.json").read_text())
    assert payload["schema"] == 1 and len(payload["points"]) == 36
    point = next(p for p in payload["points"] if p["test"].startswith("1-"))
    assert point["pause_windows"] == first["pause_windows"]
    assert len(point["latency_windows"]) == 4 and point["qemu_build"] == "system"


def test_compare_dirs_and_output_option(tmp_path):
    # 6 runs a side: with 4, no row of 18 survives the report-wide control
    # (the rank test's smallest p, 0.029, is above 6 x 0.05 / 18)
    a = make_job(tmp_path, "job-a", scale_tests(reps=6, seed=1))
    b = make_job(tmp_path, "job-b", scale_tests(reps=6, seed=2, pause_scale={"system": 2.0}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.png").write_bytes(b"not ours")
    (tmp_path / "out" / "ab7_pause.png").write_bytes(b"stale")
    result = build.make_report([b], compare_paths=[a], output=tmp_path / "out")
    assert result.outdir == tmp_path / "out"
    assert (tmp_path / "out" / "mine.png").read_bytes() == b"not ours"   # not ours: kept
    assert not (tmp_path / "out" / "ab7_pause.png").exists()            # stale: removed
    assert result.answers[0].startswith(
        "Is job-b worse than job-a (pause or stalls)? not yet known: 6 regression(s) flagged")
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| regression (unconfirmed) |" in text and "(baseline A)" in text
    assert '<td class="regression">' in (tmp_path / "out" / "summary.html").read_text()


def test_a_results_dir_reports_into_itself(tmp_path):
    make_job(tmp_path, "job-1", scale_tests(reps=1, sizes=(256,)))
    make_job(tmp_path, "job-2", scale_tests(reps=1, sizes=(512,), seed=3))
    result = build.make_report([tmp_path])
    assert result.outdir == tmp_path.resolve() / "bgsnap-report"
    assert len(list(csv.DictReader((result.outdir / "points.csv").open()))) == 4


def test_no_records_is_an_error_and_only_controls_is_a_warning(tmp_path):
    (tmp_path / "job-1" / "test-results").mkdir(parents=True)
    with pytest.raises(collect.ReportError, match="no bgsnap-metrics.json"):
        build.make_report([tmp_path / "job-1"])
    job = make_job(tmp_path, "job-2", [("bgsnap.negative.late_image.small",
                                        make_record(negative_control="late_image"), "PASS")])
    result = build.make_report([job])
    assert result.plots == []
    assert "no snapshot runs" in (result.outdir / "summary.md").read_text()


def _fake_job(logdir, status="PASS"):
    test = {"logdir": str(logdir / "test-results" / "1-bgsnap.basic.small"),
            "name": "bgsnap.basic.small", "status": status, "fail_reason": ""}
    return (SimpleNamespace(tests=[test]),
            SimpleNamespace(logdir=str(logdir), config={"stdout_claimed_by": None}))


def test_result_plugin_writes_the_report_with_avocados_statuses(tmp_path):
    job = make_job(tmp_path, "job-1", [("bgsnap.basic.small", make_record(), "PASS")])
    (job / "results.json").unlink()  # the plugin may run before the json plugin
    result, fake_job = _fake_job(job, status="FAIL")
    BgsnapReportResult().render(result, fake_job)
    rows = list(csv.DictReader((job / "bgsnap-report" / "points.csv").open()))
    assert rows[0]["status"] == "FAIL"


def test_result_plugin_does_nothing_without_records_and_never_raises(tmp_path, caplog):
    (tmp_path / "job-1" / "test-results").mkdir(parents=True)
    BgsnapReportResult().render(*_fake_job(tmp_path / "job-1"))
    assert not (tmp_path / "job-1" / "bgsnap-report").exists()
    job = make_job(tmp_path, "job-2", [("bgsnap.basic.small", make_record(), "PASS")])
    next(job.glob("test-results/*/data/bgsnap-metrics.json")).write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="avocado.app"):
        BgsnapReportResult().render(*_fake_job(job))
    assert "bgsnap report not written" in caplog.text
    BgsnapReportResult().render(SimpleNamespace(tests=[]), SimpleNamespace(logdir=None))


def test_result_plugin_skips_jobs_without_snapshot_runs(tmp_path):
    bench = {"bench_seconds": 2.0, "guest_mem_mib": 1280, "verdict": "pass"}
    job = make_job(tmp_path, "job-1", [("bench.workload.1g", bench, "PASS")])
    BgsnapReportResult().render(*_fake_job(job))
    assert not (job / "bgsnap-report").exists()


def test_command_dispatch_writes_the_report_and_fails_without_records(tmp_path):
    from avocado_bgsnap import commands

    job = make_job(tmp_path, "job-1", scale_tests(reps=1, sizes=(256,)))
    config = {"bgsnap.report_jobs": [str(job)], "bgsnap.report_compare": None,
              "bgsnap.report_output": str(tmp_path / "out")}
    assert commands.dispatch("report", config) == commands.EXIT_OK
    assert (tmp_path / "out" / "summary.html").is_file()
    config["bgsnap.report_jobs"] = [str(tmp_path / "nothing-here")]
    assert commands.dispatch("report", config) == commands.EXIT_FAIL


def test_report_options_are_repeatable():
    import argparse

    from avocado_bgsnap import plugin

    options = {key: (key_type, help_msg, long_arg)
               for key, key_type, _, help_msg, long_arg in plugin.OPTIONS}
    parser = argparse.ArgumentParser()
    for key in plugin.SUBCOMMANDS["report"][1]:
        plugin._add_argument(parser, key, *options[key])  # pylint: disable=protected-access
    args = vars(parser.parse_args(["--job", "a", "--job", "b", "--compare", "c"]))
    assert args == {"bgsnap.report_jobs": ["a", "b"], "bgsnap.report_compare": ["c"],
                    "bgsnap.report_output": None, "bgsnap.report_by": None,
                    "bgsnap.report_sides": None}
    args = vars(parser.parse_args(["--by", "kernel", "--side", "6.1", "--side", "6.18"]))
    assert (args["bgsnap.report_by"], args["bgsnap.report_sides"]) == ("kernel", ["6.1", "6.18"])


AVOCADO_HTML = """<table>
            <tr>
              <td>Results Dir</td>
              <td><a href="."><samp>job-x</samp></a></td>
            </tr>
            <tr>
              <td>Cumulative test time</td>
            </tr></table>"""


def test_avocado_html_page_gets_one_link_row(tmp_path):
    from avocado_bgsnap.report.result_plugin import link_from_avocado_html

    report = tmp_path / "bgsnap-report" / "summary.html"
    (tmp_path / "results.html").write_text(AVOCADO_HTML)
    assert link_from_avocado_html(tmp_path, report)
    assert link_from_avocado_html(tmp_path, report)  # idempotent
    page = (tmp_path / "results.html").read_text()
    assert page.count('href="bgsnap-report/summary.html"') == 1
    assert page.index("Results Dir") < page.index("bgsnap report") < page.index("Cumulative")


def test_avocado_html_page_of_another_shape_or_absent_is_left_alone(tmp_path):
    from avocado_bgsnap.report.result_plugin import link_from_avocado_html

    report = tmp_path / "bgsnap-report" / "summary.html"
    assert not link_from_avocado_html(tmp_path, report)
    (tmp_path / "results.html").write_text("<html>no table</html>")
    assert not link_from_avocado_html(tmp_path, report)
    assert (tmp_path / "results.html").read_text() == "<html>no table</html>"

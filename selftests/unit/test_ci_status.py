"""The CI profile's exit status (report/ci_status.py): 0 PASS/CANCEL, 1 FAIL, 2 the rest."""

import json

import pytest

from avocado_bgsnap.report import ci_status


def _results(*statuses, debuglog=None):
    tests = [{"name": f"{i}-ci.t{i}", "status": s,
              "fail_reason": f"reason {i}\nmore" if s not in ("PASS",) else None}
             for i, s in enumerate(statuses, 1)]
    out = {"tests": tests}
    if debuglog:
        out["debuglog"] = str(debuglog)
    return out


@pytest.mark.parametrize("statuses, avocado_status, expected, want", [
    (("PASS", "PASS"), 0, 2, ci_status.OK),
    (("PASS", "CANCEL"), 0, 2, ci_status.OK),
    (("PASS", "FAIL"), 1, 2, ci_status.FAIL),
    (("PASS", "ERROR"), 1, 2, ci_status.INFRA),
    # a FAIL is QEMU's or the kernel's whatever else went wrong
    (("FAIL", "ERROR"), 1, 2, ci_status.FAIL),
    (("FAIL",), 9, 3, ci_status.FAIL),
    (("PASS", "INTERRUPTED"), 8, 2, ci_status.INFRA),
    (("PASS", "SKIP"), 0, 2, ci_status.INFRA),
    (("PASS", "WARN"), 0, 2, ci_status.INFRA),
    # avocado's job-level bits: job failed, avocado failed, interrupted
    (("PASS", "PASS"), 2, 2, ci_status.INFRA),
    (("PASS", "PASS"), 4, 2, ci_status.INFRA),
    # a test without a result (job timeout)
    (("PASS",), 0, 2, ci_status.INFRA),
    ((), 0, 0, ci_status.INFRA),
])
def test_judge(statuses, avocado_status, expected, want):
    verdict = ci_status.judge(_results(*statuses), avocado_status, expected)
    assert verdict.status == want, verdict.lines()
    assert verdict.lines()[-1].startswith("ci-profile: ")
    assert f"-> exit {want}:" in verdict.lines()[-1]


def test_not_passed_listed_with_first_reason_line():
    verdict = ci_status.judge(_results("PASS", "FAIL", "CANCEL"), 1, 3)
    assert verdict.not_passed == [("FAIL", "2-ci.t2", "reason 2")]
    assert verdict.counts == {"PASS": 1, "FAIL": 1, "CANCEL": 1}


def test_missing_results_and_leftovers(tmp_path):
    assert ci_status.judge_files(tmp_path / "none.json", 0, 1).status == ci_status.INFRA
    job = tmp_path / "job"
    job.mkdir()
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results("PASS", debuglog=job / "job.log")))
    assert ci_status.judge_files(results, 0, 1).status == ci_status.OK
    (job / "bgsnap-leftovers.json").write_text(json.dumps([{"kind": "qemu", "pid": 1}]))
    verdict = ci_status.judge_files(results, 0, 1)
    assert verdict.status == ci_status.INFRA
    assert "leftovers" in verdict.lines()[-1]


def test_main_never_reads_a_crash_as_fail(tmp_path, capsys):
    assert ci_status.main([str(tmp_path / "r.json"), "not-a-number", "1"]) == ci_status.INFRA
    assert "cannot judge" in capsys.readouterr().out

"""End-to-end: the guest-less UFFD-WP self-check as an avocado job
(docs/uffd-check.md): every case passes on this kernel, and its negative
control (nothing write-protected) is caught."""

import json
from pathlib import Path

from jobs import by_name, pytestmark, run_job  # noqa: F401


def test_uffd_selfcheck_and_its_negative_control(tmp_path):
    data, _ = run_job(tmp_path, "uffd.selfcheck", "uffd.negative")
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS", "PASS"], \
        [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]
    (report,) = Path(tests["uffd.selfcheck"]["logdir"]).glob("**/uffd-check.json")
    cases = json.loads(report.read_text())["cases"]
    assert {c["result"] for c in cases} <= {"pass", "unsupported"}
    assert any(c["name"] == "wp-basic" and c["result"] == "pass" for c in cases)
    (negative,) = Path(tests["uffd.negative"]["logdir"]).glob("**/uffd-check.json")
    assert any(c["result"] == "FAIL" for c in json.loads(negative.read_text())["cases"])

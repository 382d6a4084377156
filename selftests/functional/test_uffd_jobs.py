"""End-to-end: the guest-less UFFD-WP self-check as an avocado job
(docs/uffd-check.md): its verdict is FAIL exactly when a case FAILed, naming
it (kernel 6.18 here FAILs wp-ksm: KSM merging drops uffd-wp, findings.md),
and its negative control (nothing write-protected) is caught."""

import json
from pathlib import Path

from jobs import by_name, pytestmark, run_job  # noqa: F401


def test_uffd_selfcheck_and_its_negative_control(tmp_path):
    data, job = run_job(tmp_path, "uffd.selfcheck", "uffd.negative")
    tests = by_name(data)
    check = tests["uffd.selfcheck"]
    (report,) = Path(check["logdir"]).glob("**/uffd-check.json")
    cases = json.loads(report.read_text())["cases"]
    assert any(c["name"] == "wp-basic" and c["result"] == "pass" for c in cases)
    failed = sorted({c["name"] for c in cases if c["result"] == "FAIL"})
    if failed:   # the kernel is wrong: the test says so, naming the cases
        assert check["status"] == "FAIL", check["fail_reason"]
        assert all(name in check["fail_reason"] for name in failed), check["fail_reason"]
    else:
        assert check["status"] == "PASS", check["fail_reason"]
    assert tests["uffd.negative"]["status"] == "PASS", tests["uffd.negative"]["fail_reason"]
    # the job carries this kernel's last self-check (the full one, not the negative)
    kept = json.loads((job / "bgsnap-uffd-check.json").read_text())
    assert not kept["no_protect"] and kept["cases"] == json.loads(report.read_text())["cases"]
    (negative,) = Path(tests["uffd.negative"]["logdir"]).glob("**/uffd-check.json")
    assert any(c["result"] == "FAIL" for c in json.loads(negative.read_text())["cases"])

"""The verdict table per kernel (report/kernel.py), from synthetic job dirs."""

import json

from avocado_bgsnap.report import kernel

UFFD = {"kernel": "6.18.44", "features": "0x1ffff", "no_protect": False,
        "fault_round_trip_us": {"p50_us": 12.0, "p99_us": 45.0, "max_us": 400.0, "n": 4096},
        "cases": [{"name": "wp-basic", "memory_type": "anon", "result": "pass", "reason": ""},
                  {"name": "wp-basic", "memory_type": "shmem", "result": "FAIL",
                   "reason": "12 of 4096 pages written without a fault"},
                  {"name": "wp-fork", "memory_type": "anon", "result": "unsupported",
                   "reason": "no EVENT_FORK"}]}


def _write(job, test, name, data):
    path = job / "test-results" / test / "data" / name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))


def _job(tmp_path, kernel_release="6.18.44", uffd=UFFD, negative=False):
    job = tmp_path / f"job-{kernel_release}"
    _write(job, "1-uffd.selfcheck", kernel.UFFD_RESULT, dict(uffd, kernel=kernel_release))
    if negative:
        _write(job, "2-uffd.negative", kernel.UFFD_RESULT,
               dict(uffd, no_protect=True, cases=[{"name": "wp-basic", "memory_type": "anon",
                                                    "result": "FAIL", "reason": "x"}]))
    host = {"kernel_release": kernel_release, "uffd": {"features": "0x1ffff"}}
    _write(job, "3-hostmm.pageout", "bgsnap-metrics.json",
           {"host": host, "verdict": "pass", "pause_ms": 2.2,
            "during_save": [{"action": "pageout", "vmstat": {"pswpout": 50066, "pswpin": 0}}]})
    _write(job, "4-memory.backend.disk_file", "bgsnap-metrics.json",
           {"host": host, "qemu_refusal": "Background-snapshot is not compatible"})
    _write(job, "5-memory.device.balloon", "bgsnap-metrics.json", {"host": host, "verdict": "pass"})
    (job / "results.json").write_text(json.dumps({"tests": [
        {"logdir": str(job / "test-results" / "4-memory.backend.disk_file"),
         "name": "memory.backend.disk_file", "status": "CANCEL", "fail_reason": "refused"}]}))
    return job


def test_rows_per_kernel_fold_memory_types_and_skip_the_negative_control(tmp_path):
    (verdict,) = kernel.kernel_verdicts([_job(tmp_path, negative=True)])
    rows = {(r.family, r.case): r for r in verdict.rows}
    assert rows[("uffd", "wp-basic")].outcome == "FAIL"          # worst of its memory types
    assert "shmem: FAIL" in rows[("uffd", "wp-basic")].evidence
    assert rows[("uffd", "wp-fork")].outcome == "unsupported"
    assert rows[("hostmm", "pageout")].outcome == "PASS"
    assert "pswpout 50066" in rows[("hostmm", "pageout")].evidence   # what really happened
    assert "pswpin" not in rows[("hostmm", "pageout")].evidence      # zero counters not shown
    assert rows[("memory", "backend.disk_file")].outcome == "CANCEL"  # avocado's status wins
    assert ("memory", "device.balloon") not in rows                  # not a kernel row
    assert verdict.answer().startswith("kernel 6.18.44: NO") and "uffd wp-basic" in verdict.answer()


def test_two_kernels_sit_side_by_side_and_a_clean_one_says_yes(tmp_path):
    clean = dict(UFFD, cases=[c for c in UFFD["cases"] if c["result"] == "pass"])
    verdicts = kernel.kernel_verdicts([_job(tmp_path, "6.1.0"), _job(tmp_path, "6.18.44", clean)])
    by_kernel = {v.kernel: v for v in verdicts}
    assert set(by_kernel) == {"6.1.0", "6.18.44"}
    assert by_kernel["6.18.44"].answer().startswith("kernel 6.18.44: yes")
    text = kernel.render(verdicts)
    assert text.count("UFFD features") == 2 and "p50 12.0 µs" in text

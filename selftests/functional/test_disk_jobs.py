"""End-to-end: whole-VM snapshots on the system QEMU in one real avocado
job (docs/disk.md): the journal disk and the RAM at one instant, in both
forms, and the negative control, a disk frozen 3 s before the RAM, which
PASSes only when the journal check catches it.  142-156 s under TCG here.
"""

from jobs import by_name, metrics_of, pytestmark, run_job  # noqa: F401


def test_whole_vm_snapshots_and_a_skewed_disk(tmp_path):
    data, _ = run_job(tmp_path, "disk.background", "disk.internal",
                      "disk.negative.disk_early")
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS"] * 3, \
        [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]

    for name in ("disk.background", "disk.internal"):
        m = metrics_of(tests[name])
        disk = m["disk"]
        assert m["verdict"] == "pass" and m["point_in_time"] == "ok"
        assert m["host_verify"].startswith("CLEAN") and m["guest_verify"].startswith("CLEAN")
        assert disk["fsck"].endswith("(clean)")
        journal = disk["journal"]
        # the disk holds every record whose fsync had returned, none the RAM had not written
        assert journal["durable_seq"] <= journal["disk_records"] <= journal["pending_seq"]
        assert journal["durable_seq"] > 10 and disk["journal_problems"] == []
        assert journal["disk_last_step"] <= journal["ram_steps_total"]

    background = metrics_of(tests["disk.background"])
    assert background["disk"]["order"] == "stop, disk, ram, cont"
    # one pause, from our STOP to the RESUME: the disk step is inside it
    (window,) = background["pause_windows"]
    assert background["pause_ms"] > background["disk"]["disk_step_ms"] > 0
    assert background["pause_ms"] < 100

    early = metrics_of(tests["disk.negative.disk_early"])
    problems = early["disk"]["journal_problems"]
    assert early["verdict"] == "pass" and early["host_verify"].startswith("CLEAN")
    assert any("the disk is older than the RAM" in p for p in problems), problems
    assert early["disk"]["journal"]["disk_records"] < early["disk"]["journal"]["durable_seq"]

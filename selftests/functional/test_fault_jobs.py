"""Failure paths end to end, on the system QEMU: a save whose target dies,
a test process killed mid-save, a bad image, a second migrate (the rest:
'avocado run fault', docs/failure-paths.md)."""

import json
from pathlib import Path

from jobs import by_name, metrics_of, run_job

from avocado_bgsnap import host

# QEMU 7.2 leaves the guest write-protected and frozen after a failed
# background snapshot (measured 7.2.22; docs/findings.md); 10.0.2 does not.
WEDGES_BEFORE = (10, 0, 0)


def _system_qemu_version() -> tuple:
    return host.probe_qemu().version


def test_failure_paths_end_bounded_with_honest_verdicts(tmp_path):
    data, job = run_job(tmp_path, "fault.writer_exits", "fault.kill_test",
                        "fault.bad_image.header", "fault.second_migrate")
    tests = by_name(data)

    # the target's writer exits mid-stream: the source must come back
    writer = tests["fault.writer_exits"]
    end = metrics_of(writer)["fault_end"]
    assert end["outcome"] == "failed" and "Broken pipe" in end["message"], end
    if _system_qemu_version() < WEDGES_BEFORE:
        assert writer["status"] == "FAIL", writer
        assert "GuestWedged" in writer["fail_reason"]
        assert "asleep in handle_userfault" in writer["fail_reason"]
    else:
        assert writer["status"] == "PASS", writer["fail_reason"]
        after = metrics_of(writer)["after_failure"]
        assert after["protection_seen_during"] and after["source_verify"].startswith("CLEAN")

    # the test process dies mid-save: ERROR, bounded, its QEMUs and files reaped
    killed = tests["fault.kill_test"]
    assert killed["status"] == "ERROR" and "died without a result" in killed["fail_reason"]
    assert killed["time_elapsed"] < 120, killed["time_elapsed"]
    died = json.loads((Path(killed["logdir"]) / "bgsnap-test-died.json").read_text())
    assert died["reported"] and any("qemu-system" in argv for argv in died["killed"].values())
    assert any(p.endswith(".partial") for p in died["removed"])

    # a corrupted header is refused within the bound, with QEMU's own words
    header = tests["fault.bad_image.header"]
    assert header["status"] == "PASS", header["fail_reason"]
    restore = metrics_of(header)["restore_end"]
    assert restore["outcome"] == "refused" and restore["took_s"] < 60, restore
    assert "migration" in restore["message"].lower(), restore

    # a second migrate is refused and the first snapshot still verifies
    second = tests["fault.second_migrate"]
    assert second["status"] == "PASS", second["fail_reason"]
    m = metrics_of(second)
    (action,) = m["during_save"]
    assert action["refused"] and action["qemu_message"], action
    assert m["host_verify"].startswith("CLEAN")

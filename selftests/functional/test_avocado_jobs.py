"""End-to-end: real avocado jobs booting real QEMU guests (TCG or KVM).

Needs what ``scripts/run-tests.sh`` sets up (venv activated, ``avocado bgsnap
setup`` done); skipped with a reason otherwise.  Each job gets its own
results dir, and every test checks that no QEMU process outlives it.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from jobs import AVOCADO, avocado, by_name, metrics_of, pytestmark, run_job  # noqa: F401

def test_plugins_and_listing():
    plugins = avocado("plugins")
    assert "bgsnap" in plugins.stdout
    listing = avocado("list")
    for name in ("bgsnap.basic.small", "bgsnap.basic.1g", "bgsnap.negative.damaged_file.small",
                 "bgsnap.transport.zstd.small"):
        assert name in listing.stdout, listing.stdout + listing.stderr
    check = avocado("bgsnap", "host-check", "--json")
    assert check.returncode == 0, check.stderr
    facts = json.loads(check.stdout[check.stdout.index("{"):])
    assert facts["qemu"]["background_snapshot"] and facts["accel"]["accel"] in ("kvm", "tcg")


NEGATIVE = ("bgsnap.negative.damaged_file.small", "bgsnap.negative.damaged_in_transit.small",
            "bgsnap.negative.late_image.small")


def test_snapshot_restore_verify_and_negative_controls(tmp_path):
    data, job = run_job(tmp_path, "bgsnap.basic.small", *NEGATIVE)
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS"] * 4, \
        [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]

    basic = metrics_of(tests["bgsnap.basic.small"])
    assert basic["verdict"] == "pass" and basic["point_in_time"] == "ok"
    assert basic["host_verify"].startswith("CLEAN") and basic["guest_verify"].startswith("CLEAN")
    # read in place: the restoring QEMU's memfd, no dump file (restored_ram.py)
    assert basic["host_ram_source"] == "memfd" and "dump" not in basic["phase_s"]
    assert basic["source_verify"].startswith("CLEAN")
    assert 0 < basic["pause_ms"] < 1000 and basic["downtime_ms"] is not None
    assert basic["snapshot_bytes"] > basic["workload_mib"] * 2**20
    assert basic["steps_during_save"] > 0
    for lo, got, hi in zip(basic["steps_before_trigger"], basic["restored_steps"],
                           basic["steps_after_resume"]):
        assert lo <= got <= hi
    # written once, identical on the whiteboard
    assert json.loads(tests["bgsnap.basic.small"]["whiteboard"]) == basic

    damaged = metrics_of(tests["bgsnap.negative.damaged_file.small"])
    assert damaged["host_verify"].startswith("BAD: 1 bad page")
    assert damaged["damaged_file_offset"] > 0
    in_transit = metrics_of(tests["bgsnap.negative.damaged_in_transit.small"])
    assert in_transit["host_verify"].startswith("BAD: 1 bad page")
    late = metrics_of(tests["bgsnap.negative.late_image.small"])
    assert late["host_verify"].startswith("CLEAN")  # consistent, but late:
    assert "not the START state" in late["point_in_time"]
    assert late["restored_steps"][0] > late["steps_after_resume"][0]
    # the snapshot files are not kept
    assert not list(job.glob("**/bgsnap-snapshot.bin*"))


def test_pausing_modes_pause_for_the_whole_save(tmp_path):
    """stop_save and snapshot_save (internal qcow2 snapshot) are restored and
    verified like background; their true pause is the whole save.  The
    damaged qcow2 is caught."""
    data, job = run_job(tmp_path, "bgsnap.mode.stop_save.small", "bgsnap.mode.snapshot_save.small",
                        "bgsnap.negative.damaged_internal.small")
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS"] * 3, \
        [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]
    for name in ("bgsnap.mode.stop_save.small", "bgsnap.mode.snapshot_save.small"):
        m = metrics_of(tests[name])
        assert m["host_verify"].startswith("CLEAN") and m["point_in_time"] == "ok", name
        assert m["pause_ms"] >= 0.8 * m["snapshot_total_s"] * 1000, name
        assert m["snapshot_bytes"] > m["workload_mib"] * 2**20, name
    stop_save = metrics_of(tests["bgsnap.mode.stop_save.small"])
    assert stop_save["pause_ms"] > stop_save["downtime_ms"]  # QEMU's figure is not the pause
    assert stop_save["max_bandwidth_mib_s"] == 0
    damaged = metrics_of(tests["bgsnap.negative.damaged_internal.small"])
    assert damaged["mode"] == "snapshot_save"
    assert damaged["host_verify"].startswith("BAD: 1 bad page")
    assert not list(job.glob("**/bgsnap-snapshot.qcow2*"))
    # avocado's HTML page links the bgsnap report written at job end
    assert 'href="bgsnap-report/summary.html"' in (job / "results.html").read_text()


def test_bad_cfg_value_is_a_clear_error_before_any_vm(tmp_path):
    data, _ = run_job(tmp_path, "bgsnap.basic.small", extra=["bgsnap_workload_mib=300"])
    (test,) = data["tests"]
    assert test["status"] == "ERROR"
    assert "bgsnap_workload_mib = 300 must be below mem = 256" in test["fail_reason"]


def test_missing_prerequisite_cancels(tmp_path):
    data, _ = run_job(tmp_path, "bgsnap.basic.small", extra=["qemu_binary=/nonexistent/qemu"])
    (test,) = data["tests"]
    assert test["status"] == "CANCEL", test
    assert "QEMU unusable" in test["fail_reason"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("ref, message", [
    ("bgsnap.basic.small", "migration failed"),
    ("bgsnap.mode.snapshot_save.small", "snapshot-save failed"),
])
def test_save_failure_leaves_no_partial_snapshot(tmp_path, ref, message):
    """The snapshot target fills up mid-save: a clear failure, no file left
    that could pass for a snapshot, and no QEMU left running."""
    target = Path(tempfile.mkdtemp(prefix="bgsnap-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(target)], check=True)
    try:
        data, _ = run_job(tmp_path, ref, extra=[f"bgsnap_snapshot_dir={target}"])
        (test,) = data["tests"]
        assert test["status"] in ("ERROR", "FAIL")
        assert message in test["fail_reason"], test["fail_reason"]
        assert list(target.iterdir()) == []
    finally:
        subprocess.run(["umount", str(target)], check=False)
        target.rmdir()


def test_transports_and_patterns(tmp_path):
    """zstd through an exec: pipeline; the file: URI where this QEMU has it
    (else cancelled with the reason); two writers with the mixed pattern."""
    data, _ = run_job(tmp_path, "bgsnap.transport.zstd.small", "bgsnap.transport.file_uri.small",
                      "bgsnap.pattern.mixed.small")
    tests = by_name(data)
    assert tests["bgsnap.transport.zstd.small"]["status"] == "PASS"
    assert tests["bgsnap.pattern.mixed.small"]["status"] == "PASS"
    zstd = metrics_of(tests["bgsnap.transport.zstd.small"])
    assert zstd["host_verify"].startswith("CLEAN")
    file_uri = tests["bgsnap.transport.file_uri.small"]
    if file_uri["status"] == "CANCEL":
        assert "needs QEMU 8.2.0+" in file_uri["fail_reason"]
    else:
        assert file_uri["status"] == "PASS", file_uri["fail_reason"]


def test_bad_transport_template_fails_before_any_vm(tmp_path):
    data, job = run_job(tmp_path, "bgsnap.basic.small",
                      extra=["bgsnap_save_uri=exec:no-such-tool-xyz > {path}",
                             "bgsnap_restore_uri=exec:cat {path}"])
    (test,) = data["tests"]
    assert test["status"] == "ERROR"
    assert "command 'no-such-tool-xyz' not found on this host" in test["fail_reason"]
    assert "Running qemu command" not in Path(test["logfile"]).read_text()

"""End-to-end: real avocado jobs booting real QEMU guests (TCG or KVM).

Needs what ``scripts/run-tests.sh`` sets up (venv activated, ``avocado bgsnap
setup`` done); skipped with a reason otherwise.  Each job gets its own
results dir, and every test checks that no QEMU process outlives it.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from avocado_bgsnap import paths

AVOCADO = shutil.which("avocado")
pytestmark = pytest.mark.skipif(
    not AVOCADO or not paths.host_config_file().is_file(),
    reason="suite not set up: run scripts/run-tests.sh (it runs 'avocado bgsnap setup')")


def qemu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def avocado(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([AVOCADO, *args], capture_output=True, text=True, timeout=timeout)


def run_job(tmp_path, *refs, extra=()) -> tuple[dict, Path]:
    """Run refs in one job; return (results.json, job dir); assert no QEMU leaked."""
    before = qemu_pids()
    results = tmp_path / "results"
    cmd = ["run", "--job-results-dir", str(results), *refs]
    if extra:
        cmd += ["--vt-extra-params", *extra]
    proc = avocado(*cmd)
    (job,) = [p for p in results.iterdir() if p.name.startswith("job-")]
    leaked = qemu_pids() - before
    assert not leaked, f"QEMU processes left behind: {leaked}"
    data = json.loads((job / "results.json").read_text())
    assert data["tests"], proc.stdout + proc.stderr
    return data, job


def metrics_of(test: dict) -> dict:
    (path,) = Path(test["logdir"]).glob("**/bgsnap-metrics.json")
    return json.loads(path.read_text())


def by_name(data: dict) -> dict:
    return {t["name"]: t for t in data["tests"]}


def test_plugins_and_listing():
    plugins = avocado("plugins")
    assert "bgsnap" in plugins.stdout
    listing = avocado("list")
    for name in ("bgsnap.basic.small", "bgsnap.basic.1g", "bgsnap.damaged_snapshot.small"):
        assert name in listing.stdout, listing.stdout + listing.stderr
    check = avocado("bgsnap", "host-check", "--json")
    assert check.returncode == 0, check.stderr
    facts = json.loads(check.stdout[check.stdout.index("{"):])
    assert facts["qemu"]["background_snapshot"] and facts["accel"]["accel"] in ("kvm", "tcg")


def test_snapshot_restore_verify_and_negative_control(tmp_path):
    data, job = run_job(tmp_path, "bgsnap.basic.small", "bgsnap.damaged_snapshot.small")
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS", "PASS"], \
        [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]

    basic = metrics_of(tests["bgsnap.basic.small"])
    assert basic["verdict"] == "pass"
    assert basic["host_verify"].startswith("CLEAN") and basic["guest_verify"].startswith("CLEAN")
    assert basic["source_verify"].startswith("CLEAN")
    assert 0 < basic["pause_ms"] < 1000 and basic["downtime_ms"] is not None
    assert basic["snapshot_bytes"] > basic["workload_mib"] * 2**20
    assert basic["steps_during_save"] > 0
    for lo, got, hi in zip(basic["steps_before_trigger"], basic["restored_steps"],
                           basic["steps_after_resume"]):
        assert lo <= got <= hi
    # written once, identical on the whiteboard
    assert json.loads(tests["bgsnap.basic.small"]["whiteboard"]) == basic

    damaged = metrics_of(tests["bgsnap.damaged_snapshot.small"])
    assert damaged["host_verify"].startswith("BAD: 1 bad page")
    assert damaged["damaged_file_offset"] > 0
    # the snapshot files are not kept
    assert not list(job.glob("**/bgsnap-snapshot.bin*"))


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
def test_save_failure_leaves_no_partial_snapshot(tmp_path):
    """The snapshot target fills up mid-save: a clear failure, no file left
    that could pass for a snapshot, and no QEMU left running."""
    target = Path(tempfile.mkdtemp(prefix="bgsnap-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(target)], check=True)
    try:
        data, _ = run_job(tmp_path, "bgsnap.basic.small",
                          extra=[f"bgsnap_snapshot_dir={target}"])
        (test,) = data["tests"]
        assert test["status"] in ("ERROR", "FAIL")
        assert "migration failed" in test["fail_reason"], test["fail_reason"]
        assert list(target.iterdir()) == []
    finally:
        subprocess.run(["umount", str(target)], check=False)
        target.rmdir()

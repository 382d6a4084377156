"""End-to-end: a job that leaves something behind says so (docs/leftovers.md).

While ``bgsnap.basic.small`` runs, things appear that the job then leaves:
a QEMU carrying the job's marker (as every QEMU the job starts does), a
``.partial`` snapshot in its ``bgsnap_snapshot_dir``, a RAM dump in its job
dir.  Its ``bgsnap-leftovers.json``, job log and console name exactly
those; what is not the job's is not named: a QEMU of another job, and a
snapshot file that was in the snapshot dir before the job started.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from avocado_bgsnap.leftovers import JOB_ENV
from jobs import job_leftovers, pytestmark, run_job_proc  # noqa: F401

QEMU = shutil.which("qemu-system-x86_64")


def idle_qemu(job_id: str) -> subprocess.Popen:
    """A QEMU that does nothing until killed, started as one of job ``job_id``."""
    return subprocess.Popen([QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S"],
                            env={**os.environ, JOB_ENV: job_id}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def first_match(results: Path, pattern: str, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(results.glob(pattern)) if results.is_dir() else []
        if found:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no {pattern} in {results} after {timeout}s")


@pytest.mark.skipif(not QEMU, reason="no qemu-system-x86_64 on this host")
def test_what_a_job_leaves_is_named_and_what_is_not_its_is_not(tmp_path):
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    earlier = snapshots / "bgsnap-late-image.bin"   # an earlier job's: not this one's
    earlier.write_text("kept by an earlier job")
    os.utime(earlier, (time.time() - 3600,) * 2)
    qemus: list[subprocess.Popen] = []
    planted: dict[str, Path] = {}

    def leave_things(results: Path) -> None:
        test_dir = first_match(results, "job-*/test-results/1-*")   # the test runs
        job = test_dir.parent.parent
        job_id = (job / "id").read_text().strip()
        qemus.append(idle_qemu(job_id))
        qemus.append(idle_qemu("another-job"))
        planted["partial"] = snapshots / "bgsnap-snapshot.bin.gz.partial"
        planted["dump"] = job / "bgsnap-restored-ram.elf"
        for path in planted.values():
            path.write_text("left on purpose")

    try:
        proc, data, job = run_job_proc(tmp_path, "bgsnap.basic.small",
                                       extra=[f"bgsnap_snapshot_dir={snapshots}"],
                                       during=leave_things)
        (test,) = data["tests"]
        assert test["status"] == "PASS", test["fail_reason"]
        found = job_leftovers(job)
        mine, other = qemus
        assert [(f["kind"], f["what"].split(":")[0]) for f in found] == [
            ("qemu", f"pid {mine.pid}"),
            ("file", str(planted["dump"].resolve())),
            ("file", str(planted["partial"].resolve()))], found
        log = (job / "job.log").read_text()
        for item in found:
            assert f"WARNI| bgsnap leftover {item['kind']}: {item['what']}" in log
        assert f"pid {other.pid}" not in log and str(earlier) not in log
        console = proc.stdout + proc.stderr
        assert "bgsnap leftovers: 3 left by this job" in console, console[-2000:]
        assert earlier.exists()
    finally:
        for qemu in qemus:
            qemu.kill()
            qemu.wait(timeout=30)

"""What the end-to-end tests share: running a real avocado job of the suite
in its own results dir, and checking that no QEMU of it outlives it.
"""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from avocado_bgsnap import paths
from avocado_bgsnap.host.memory import HostSettingsGuard

AVOCADO = shutil.which("avocado")
pytestmark = pytest.mark.skipif(
    not AVOCADO or not paths.host_config_file().is_file(),
    reason="suite not set up: run scripts/run-tests.sh (it runs 'avocado bgsnap setup')")


def qemu_pids(tag: str | None = None) -> set[int]:
    """QEMU processes; with ``tag``, only those started by a job of ours
    (they inherit BGSNAP_JOB_TAG), so other QEMUs on the host do not count."""
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout
    pids = {int(p) for p in out.split()}
    if tag is None:
        return pids
    mine = set()
    for pid in pids:
        try:
            if f"BGSNAP_JOB_TAG={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                mine.add(pid)
        except OSError:
            pass
    return mine


def avocado(*args, timeout=900, tag: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "BGSNAP_JOB_TAG": tag}
    return subprocess.run([AVOCADO, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def system_only(ref: str) -> str:
    """With side-by-side QEMU builds registered (avocado bgsnap qemu-add), a
    test name selects it on every build: keep these tests on the system one."""
    from avocado_bgsnap import qemu_builds

    return f"system.{ref}" if qemu_builds.load_builds() else ref


def run_job(tmp_path, *refs, extra=()) -> tuple[dict, Path]:
    """Run refs in one job; return (results.json, job dir); assert no QEMU
    leaked and no host memory setting (hugepages, THP, hugetlbfs mounts) was
    left changed."""
    tag = uuid.uuid4().hex
    host_settings = HostSettingsGuard()
    results = tmp_path / "results"
    cmd = ["run", "--job-results-dir", str(results), *map(system_only, refs)]
    for item in extra:  # the option appends one key=value per use
        cmd += ["--vt-extra-params", item]
    proc = avocado(*cmd, tag=tag)
    jobs = [p for p in results.iterdir() if p.name.startswith("job-")] if results.is_dir() else []
    assert len(jobs) == 1, f"avocado ran no job: {proc.stdout[-1500:]} {proc.stderr[-1500:]}"
    job = jobs[0]
    leaked = qemu_pids(tag)
    assert not leaked, f"QEMU processes left behind: {leaked}"
    changed = host_settings.changes()
    assert changed == [], f"host settings left changed: {changed}"
    data = json.loads((job / "results.json").read_text())
    assert data["tests"], proc.stdout + proc.stderr
    return data, job


def metrics_of(test: dict) -> dict:
    (path,) = Path(test["logdir"]).glob("**/bgsnap-metrics.json")
    return json.loads(path.read_text())


def by_name(data: dict) -> dict:
    return {t["name"]: t for t in data["tests"]}

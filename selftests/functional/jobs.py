"""What the end-to-end tests share: running a real avocado job of the suite
in its own results dir, and checking that it left nothing behind: no QEMU
outlives it, and its own bgsnap-leftovers.json is empty.
"""

import json
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Callable

import pytest

from avocado_bgsnap import paths
from avocado_bgsnap.host.memory import HostSettingsGuard
from avocado_bgsnap.leftovers import LEFTOVERS_FILE

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

    return qemu_builds.system_only(ref)


def run_job_proc(tmp_path, *refs, extra=(), during: Callable[[Path], None] | None = None,
                 avocado_opts=(), run_opts=()) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """Run refs in one job; return (the avocado process, results.json, job
    dir).  ``during(results_dir)``, when given, runs in a thread alongside the
    job; ``avocado_opts`` go before ``run`` (e.g. --config), ``run_opts``
    after it.  Asserts, from outside the job, that no QEMU of it is still
    running and that no host memory setting (hugepages, THP, hugetlbfs
    mounts) was left changed."""
    tag = uuid.uuid4().hex
    host_settings = HostSettingsGuard()
    results = tmp_path / "results"
    cmd = [*avocado_opts, "run", "--job-results-dir", str(results), *run_opts,
           *map(system_only, refs)]
    for item in extra:  # the option appends one key=value per use
        cmd += ["--vt-extra-params", item]
    watcher = threading.Thread(target=during, args=(results,), daemon=True) if during else None
    if watcher:
        watcher.start()
    proc = avocado(*cmd, tag=tag)
    if watcher:
        watcher.join(timeout=30)
    jobs = [p for p in results.iterdir() if p.name.startswith("job-")] if results.is_dir() else []
    assert len(jobs) == 1, f"avocado ran no job: {proc.stdout[-1500:]} {proc.stderr[-1500:]}"
    job = jobs[0]
    leaked = qemu_pids(tag)
    assert not leaked, f"QEMU processes left behind: {leaked}"
    changed = host_settings.changes()
    assert changed == [], f"host settings left changed: {changed}"
    data = json.loads((job / "results.json").read_text())
    assert data["tests"], proc.stdout + proc.stderr
    return proc, data, job


def job_leftovers(job: Path) -> list[dict]:
    """The job's own account of what it left (bgsnap-leftovers.json)."""
    path = job / LEFTOVERS_FILE
    assert path.is_file(), f"the job wrote no {LEFTOVERS_FILE}"
    return json.loads(path.read_text())


def run_job(tmp_path, *refs, extra=(), **options) -> tuple[dict, Path]:
    """Run refs in one job; return (results.json, job dir); assert the job
    left nothing: no QEMU, socket, snapshot file, mount or host setting
    (its bgsnap-leftovers.json is empty; docs/leftovers.md).  ``options``:
    those of run_job_proc."""
    _, data, job = run_job_proc(tmp_path, *refs, extra=extra, **options)
    found = job_leftovers(job)
    assert found == [], f"the job left: {found}"
    return data, job


def metrics_of(test: dict) -> dict:
    (path,) = Path(test["logdir"]).glob("**/bgsnap-metrics.json")
    return json.loads(path.read_text())


def by_name(data: dict) -> dict:
    return {t["name"]: t for t in data["tests"]}

"""What a job left behind, found in temp dirs and a fake /proc (no avocado job)."""

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from avocado_bgsnap import leftovers as lo
from avocado_bgsnap.host.memory import HostMemorySettings, ThpSettings

MARKER = lo.job_marker("c4f4163")
HOST = lo.HostState(memory=HostMemorySettings({2048: 0}, ThpSettings("madvise", "madvise", "never")),
                    ksm={"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20}, swaps=())


def fake_proc(root: Path, pid: int, argv: list[str], env: list[str]) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "environ").write_bytes(b"\0".join(e.encode() for e in env) + b"\0")


@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "proc"
    root.mkdir()
    (root / "mounts").write_text("proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    # QEMUs that are not this job's: the user's, and another job's
    fake_proc(root, 100, ["/usr/bin/qemu-system-x86_64", "-m", "1G"], ["HOME=/root"])
    fake_proc(root, 101, ["qemu-system-x86_64"], [lo.job_marker("otherjob"), "HOME=/root"])
    return root


@pytest.fixture
def job_dir(tmp_path):
    d = tmp_path / "job-2026-12-02T02.47-c4f4163"
    (d / "test-results" / "1-bgsnap.basic.small" / "data").mkdir(parents=True)
    return d


def check(proc, job_dir, baseline=None, snapshot_dirs=(), host_now=HOST):
    baseline = baseline or lo.take_baseline(proc, host=HOST)
    return lo.leftovers(baseline, job_dir, snapshot_dirs, MARKER, proc_root=proc,
                        host_now=host_now)


def kinds(found):
    return [(f.kind, f.what) for f in found]


def test_a_clean_job_leaves_nothing(proc, job_dir):
    assert check(proc, job_dir) == []


def test_a_qemu_of_this_job_is_reported_others_are_not(proc, job_dir):
    baseline = lo.take_baseline(proc, host=HOST)
    fake_proc(proc, 200, ["/usr/bin/qemu-system-x86_64", "-name", "vm1"], ["A=1", MARKER])
    fake_proc(proc, 201, ["zstd", "-dc"], [MARKER])
    fake_proc(proc, 202, ["sleep", "1"], [MARKER + "0"])  # a job id that only starts the same
    assert kinds(check(proc, job_dir, baseline)) == [
        ("qemu", "pid 200: /usr/bin/qemu-system-x86_64 -name vm1"),
        ("process", "pid 201: zstd -dc")]


def test_a_process_running_at_job_start_is_not_the_jobs(proc, job_dir):
    fake_proc(proc, 300, ["qemu-system-x86_64"], [MARKER])
    assert check(proc, job_dir, lo.take_baseline(proc, host=HOST)) == []


@pytest.fixture
def vt_tmp():
    # short: a unix socket path has ~108 bytes
    d = Path(tempfile.mkdtemp(prefix="lo")) / "avocado_ab12cd34"  # as mkdtemp names it
    d.mkdir()
    yield d
    shutil.rmtree(d.parent)


def test_a_socket_named_in_the_jobs_logs_and_still_there_is_reported(proc, job_dir, vt_tmp):
    monitor, serial = vt_tmp / "monitor-qmp1-20261202-1", vt_tmp / "serial-serial0-20261202-1"
    log = job_dir / "test-results" / "1-bgsnap.basic.small" / "debug.log"
    log.write_text(f"Running qemu command: -chardev socket,id=qmp1,path={monitor},server=on "
                   f"-chardev socket,id=s0,path={serial},server=on\n")
    assert check(proc, job_dir) == []  # named, but gone
    serial.write_text("")              # there, but a plain file
    (vt_tmp / "monitor-unnamed").touch()
    assert check(proc, job_dir) == []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(monitor))
        assert kinds(check(proc, job_dir)) == [("socket", str(monitor))]


def test_a_left_qemus_sockets_are_reported(proc, job_dir, vt_tmp):
    baseline = lo.take_baseline(proc, host=HOST)
    monitor = vt_tmp / "monitor-qmp1-x"
    fake_proc(proc, 200, ["qemu-system-x86_64", "-chardev", f"socket,path={monitor},server=on"],
              [MARKER])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(monitor))
        assert [f.kind for f in check(proc, job_dir, baseline)] == ["qemu", "socket"]


def test_snapshot_dump_and_partial_files_in_the_job_dir_are_reported(proc, job_dir):
    workdir = job_dir / "test-results" / "1-bgsnap.basic.small" / "tmp_dirx" / "1-basic"
    workdir.mkdir(parents=True)
    (workdir / "bgsnap-metrics.json").write_text("{}")  # not a snapshot file
    (job_dir / "bgsnap-report").mkdir()
    (job_dir / "bgsnap-report" / "pause_vs_ram.png").write_text("")
    assert check(proc, job_dir) == []
    planted = [workdir / "bgsnap-snapshot.bin.partial", workdir / "bgsnap-restored-ram.elf",
               workdir / "bgsnap-late-image.bin", workdir / "bgsnap-snapshot.qcow2"]
    for path in planted:
        path.write_text("x")
    assert kinds(check(proc, job_dir)) == [("file", str(p.resolve())) for p in sorted(planted)]


def record_keep(job_dir, snapshot: Path, keep: bool) -> None:
    (job_dir / "test-results" / "1-bgsnap.basic.small" / "data" / "bgsnap-metrics.json") \
        .write_text(json.dumps({"keep_snapshot": keep, "snapshot_file": str(snapshot)}))


def test_a_snapshot_kept_on_purpose_is_not_a_leftover_its_partial_is(proc, job_dir):
    workdir = job_dir / "test-results" / "1-bgsnap.basic.small" / "tmp_dirx"
    workdir.mkdir()
    snapshot = workdir / "bgsnap-snapshot.bin.zst"
    for name in (snapshot.name, "bgsnap-late-image.bin.zst", snapshot.name + ".partial"):
        (workdir / name).write_text("x")
    record_keep(job_dir, snapshot, keep=True)
    assert kinds(check(proc, job_dir)) == [("file", str(workdir / (snapshot.name + ".partial")))]
    record_keep(job_dir, snapshot, keep=False)
    assert len(check(proc, job_dir)) == 3


def test_in_a_snapshot_dir_outside_the_job_only_files_written_since_job_start_count(
        proc, job_dir, tmp_path):
    outside = tmp_path / "snapshots"
    outside.mkdir()
    old = outside / "bgsnap-snapshot.bin"
    old.write_text("from an earlier job")
    (outside / "unrelated.partial").write_text("x")
    os.utime(old, (time.time() - 60, time.time() - 60))
    os.utime(outside / "unrelated.partial", (time.time() + 60, time.time() + 60))
    baseline = lo.take_baseline(proc, host=HOST)
    assert check(proc, job_dir, baseline, [outside, tmp_path / "missing"]) == []
    new = outside / "bgsnap-snapshot.bin.gz.partial"
    new.write_text("x")
    assert kinds(check(proc, job_dir, baseline, [outside])) == [("file", str(new))]


def test_a_new_mount_is_reported(proc, job_dir):
    baseline = lo.take_baseline(proc, host=HOST)
    with open(proc / "mounts", "a") as mounts:
        mounts.write("none /tmp/bgsnap-hugetlbfs-x hugetlbfs rw,pagesize=2M 0 0\n")
    assert kinds(check(proc, job_dir, baseline)) == [
        ("mount", "/tmp/bgsnap-hugetlbfs-x (hugetlbfs)")]


@pytest.mark.parametrize("after, line", [
    (lo.HostState(HostMemorySettings({2048: 64}, HOST.memory.thp), HOST.ksm, ()),
     "nr_hugepages hugepages-2048kB: before 0, after 64"),
    (lo.HostState(HOST.memory, {**HOST.ksm, "run": 1}, ()), "ksm/run: before 0, after 1"),
    (lo.HostState(HOST.memory, HOST.ksm, ("/tmp/bgsnap-swap-1",)),
     "swaps: before [], after ['/tmp/bgsnap-swap-1']"),
])
def test_a_host_setting_left_changed_is_reported(proc, job_dir, after, line):
    assert kinds(check(proc, job_dir, host_now=after)) == [("host-setting", line)]
    assert check(proc, job_dir, host_now=HOST) == []


def test_the_host_state_of_this_host_reads_and_equals_itself():
    state = lo.host_state()
    assert state.differences(lo.host_state()) == []
    assert state.memory.hugetlbfs_mounts == ()  # mounts are their own kind


# -- the plugin ----------------------------------------------------------------

@pytest.fixture
def plugin_job(job_dir, monkeypatch):
    monkeypatch.setattr(lo, "host_state", lambda: HOST)
    monkeypatch.delenv(lo.JOB_ENV, raising=False)
    yield SimpleNamespace(unique_id="c4f4163" * 6, logdir=str(job_dir), test_suites=[])
    os.environ.pop(lo.JOB_ENV, None)


def test_the_plugin_marks_the_job_and_writes_an_empty_report_when_clean(plugin_job, job_dir):
    plugin = lo.BgsnapLeftovers()
    plugin.pre(plugin_job)
    assert os.environ[lo.JOB_ENV] == plugin_job.unique_id
    plugin.post(plugin_job)
    assert json.loads((job_dir / lo.LEFTOVERS_FILE).read_text()) == []


def test_the_plugin_warns_and_records_each_leftover(plugin_job, job_dir, tmp_path, caplog):
    outside = tmp_path / "snapshots"
    outside.mkdir()
    plugin_job.test_suites = [SimpleNamespace(tests=[
        SimpleNamespace(kwargs={"bgsnap_snapshot_dir": str(outside)})])]
    plugin = lo.BgsnapLeftovers()
    plugin.pre(plugin_job)
    (outside / "bgsnap-restored-ram.elf.partial").write_text("x")
    with caplog.at_level(logging.WARNING):
        plugin.post(plugin_job)
    what = str(outside / "bgsnap-restored-ram.elf.partial")
    assert json.loads((job_dir / lo.LEFTOVERS_FILE).read_text()) == [
        {"kind": "file", "what": what}]
    assert f"bgsnap leftover file: {what}" in caplog.text
    assert "bgsnap leftovers: 1 left by this job" in caplog.text

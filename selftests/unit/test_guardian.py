"""The guardian of a test process: what it reads from /proc and the runner's
command line, and that it does nothing after a test that said "done" (the
real death of a test runs in selftests/functional/test_fault_jobs.py)."""

import io
import os
import subprocess
import sys
from pathlib import Path

from avocado_bgsnap import guardian


def _proc(tmp_path, pid, environ, argv, stat_start=1234, fds=()):
    d = tmp_path / "proc" / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "environ").write_bytes(b"\0".join(e.encode() for e in environ) + b"\0")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    fields = ["S"] + ["0"] * 18 + [str(stat_start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} (na me) " + " ".join(fields))
    for n, target in enumerate(fds):
        os.symlink(target, d / "fd" / str(n))
    return tmp_path / "proc"


def test_runner_args_from_the_command_line():
    cmd = ["python3", "avocado-runner-avocado-vt", "task-run", "-i", "3-fault.cancel", "-j",
           "abc", "-k", "avocado-vt", "-c", "{}", "x=y", "-s", "/var/tmp/a/.status_server.sock"]
    assert guardian.runner_args(cmd) == {"status_uri": "/var/tmp/a/.status_server.sock",
                                         "task_id": "3-fault.cancel", "job_id": "abc"}
    assert guardian.runner_args(["avocado"]) == {"status_uri": None, "task_id": None,
                                                 "job_id": None}


def test_marked_processes_and_start_times(tmp_path):
    root = _proc(tmp_path, 10, ["A=1", "BGSNAP_TEST_MARKER=m1"], ["qemu-system-x86_64", "-S"],
                 stat_start=500)
    _proc(tmp_path, 11, ["BGSNAP_TEST_MARKER=other"], ["qemu-system-x86_64"])
    _proc(tmp_path, 12, ["BGSNAP_TEST_MARKER=m1x"], ["cat"])
    assert guardian.marked_processes("BGSNAP_TEST_MARKER=m1", root) == {
        10: ["qemu-system-x86_64", "-S"]}
    assert guardian.marked_processes("BGSNAP_TEST_MARKER=m1", root, frozenset({10})) == {}
    assert guardian.start_time(10, root) == 500
    assert guardian.start_time(99, root) is None


def test_aexpect_dirs_from_open_files_and_argv(tmp_path):
    root = _proc(tmp_path, 20, [], ["/bin/bash", "-c", "source /tmp/aexpect_AbCdEf12/a.sh"],
                 fds=["/tmp/aexpect_ZyXwVu98/inpipe", "/dev/null"])
    processes = {20: (root / "20" / "cmdline").read_text().split("\0")}
    assert guardian.aexpect_dirs(processes, root) == [
        Path("/tmp/aexpect_AbCdEf12"),
        Path("/tmp/aexpect_ZyXwVu98")]


def test_memory_files_are_the_suites_only(tmp_path):
    for name in ("bgsnap-snapshot.bin.partial", "bgsnap-restored-ram.elf",
                 "bgsnap-snapshot-bad.bin", "debug.log", "bgsnap-metrics.json"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in guardian.memory_files(tmp_path)] == [
        "bgsnap-restored-ram.elf", "bgsnap-snapshot-bad.bin", "bgsnap-snapshot.bin.partial"]


def test_watch_survives_its_command_line(tmp_path):
    watch = guardian.Watch(1, 2, "m", tmp_path, tmp_path / "s", "/sock", "1-t", "job",
                           before_run=[[5, 77]])
    assert guardian.Watch.from_argv(watch.to_argv()) == watch


def _watch(tmp_path, runner_pid):
    return guardian.Watch(test_pid=1, runner_pid=runner_pid, marker="no-such-marker-xyz",
                          output_dir=tmp_path / "out", snapshot_dir=tmp_path,
                          status_uri=None, task_id=None, job_id=None)


def test_a_test_that_said_done_is_left_alone(tmp_path, monkeypatch):
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "bgsnap-snapshot.bin").write_text("kept")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(guardian.DONE)))
        assert guardian.main(_watch(tmp_path, runner.pid).to_argv()) == 0
        assert runner.poll() is None and (tmp_path / "bgsnap-snapshot.bin").exists()
    finally:
        runner.kill()
        runner.wait()


def test_a_test_that_died_is_reaped_and_its_runner_stopped(tmp_path, monkeypatch):
    # negative control of the one above: the same, but the pipe closed silently
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "bgsnap-snapshot.bin.partial").write_text("half")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
        assert guardian.main(_watch(tmp_path, runner.pid).to_argv()) == 1
        assert runner.wait(timeout=10) != 0
        assert not (tmp_path / "bgsnap-snapshot.bin.partial").exists()
        died = (tmp_path / "out" / guardian.DIED_FILE).read_text()
        assert "died without a result" in died and '"reported": false' in died
    finally:
        runner.kill()
        runner.wait()


def test_every_test_module_of_the_suite_runs_guarded():
    import importlib

    tests_dir = Path(guardian.__file__).parent / "tests"
    modules = sorted(p.stem for p in tests_dir.glob("bgsnap_*.py"))
    assert len(modules) >= 6
    unguarded = [m for m in modules
                 if not getattr(importlib.import_module(f"avocado_bgsnap.tests.{m}").run,
                                "bgsnap_guarded", False)]
    assert unguarded == [], f"run() without @vt_compat.guarded: {unguarded}"

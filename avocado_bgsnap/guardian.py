"""Watch a test process; when it dies without finishing, end what it left.

avocado-vt's runner (avocado 113, ``avocado_vt/plugins/vt_runner.py``) runs
each test in a multiprocessing child and waits for the child's result on a
queue, never checking that the child is alive: a test process that dies
(SIGKILL, the OOM killer, a crash) leaves the task "running" until its
24-hour default timeout, and the test's QEMUs run on (they live under
aexpect's server, not as the test's children).  ``vt_compat.guarded``
starts this guardian beside every test of the suite, holding one end of a
pipe; the test writes ``done`` into it when it ends in any normal way.
When the pipe closes without ``done``, the guardian, bounded:

1. kills the processes carrying the test's marker (its QEMUs, their exec:
   children, aexpect's servers) and removes their avocado-vt sockets;
2. removes the guest-memory files of the test (snapshot, ``.partial``,
   dump, late image) from its snapshot dir;
3. posts an ERROR result for the test to avocado's status server, as the
   runner would have, with what it did, and writes the same into
   ``bgsnap-test-died.json`` of the test's results;
4. stops the runner, so avocado goes on with the next test.

Run as ``python -m avocado_bgsnap.guardian``; see :func:`main`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TEST_ENV = "BGSNAP_TEST_MARKER"
DIED_FILE = "bgsnap-test-died.json"
DONE = b"done"
# guest-memory files of a test (leftovers.py knows the same names)
MEMORY_FILE_PREFIXES = ("bgsnap-snapshot", "bgsnap-late-image", "bgsnap-restored-ram")
STOP_WAIT_S = 5.0
AEXPECT_DIR = re.compile(r"/[^\s'\"]*/aexpect_[A-Za-z0-9_]{8}(?=/)")


@dataclass(frozen=True)
class Watch:
    """What the guardian needs to know about one test."""
    test_pid: int
    runner_pid: int
    marker: str             # the value of TEST_ENV in the test's processes
    output_dir: Path        # the test's results (debug.log, data/)
    snapshot_dir: Path
    status_uri: str | None  # avocado's status server (the runner's -s)
    task_id: str | None     # the runner's -i
    job_id: str | None      # the runner's -j
    # what avocado-vt started for the test before its run() (the IP
    # sniffer's tcpdump under aexpect): [pid, start time] each
    before_run: list = ()

    def to_argv(self) -> list[str]:
        return [json.dumps({k: str(v) if isinstance(v, Path) else v
                            for k, v in self.__dict__.items()})]

    @classmethod
    def from_argv(cls, argv: list[str]) -> "Watch":
        data = json.loads(argv[0])
        data["output_dir"], data["snapshot_dir"] = (Path(data["output_dir"]),
                                                    Path(data["snapshot_dir"]))
        return cls(**data)


def started_since(entry: str, since: int, exclude: frozenset[int] = frozenset()
                  ) -> list[list[int]]:
    """[pid, start time] of the processes holding ``entry`` started at or
    after ``since`` (start-time ticks)."""
    found = []
    for pid in marked_processes(entry, exclude=exclude):
        started = start_time(pid)
        if started is not None and started >= since:
            found.append([pid, started])
    return sorted(found)


def runner_args(cmdline: list[str]) -> dict[str, str | None]:
    """The status server, task and job ids from an avocado runner's command
    line (``task-run -i ID -j JOB ... -s URI``)."""
    found = {"-s": None, "-i": None, "-j": None}
    for flag, value in zip(cmdline, cmdline[1:]):
        if flag in found and found[flag] is None:
            found[flag] = value
    return {"status_uri": found["-s"], "task_id": found["-i"], "job_id": found["-j"]}


def start_time(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """The process's start time (clock ticks since boot), None when gone:
    with the pid, it names one process even after the pid is reused."""
    try:
        stat = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])   # field 22


def marked_processes(entry: str, proc_root: Path = Path("/proc"),
                     exclude: frozenset[int] = frozenset()) -> dict[int, list[str]]:
    """pid -> argv of the processes whose environment holds ``entry``
    (``NAME=value``)."""
    entry = entry.encode()
    found = {}
    for proc in proc_root.iterdir():
        if not proc.name.isdigit() or int(proc.name) in exclude:
            continue
        try:
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                found[int(proc.name)] = [a.decode(errors="replace") for a in argv if a]
        except OSError:
            continue
    return found


def memory_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith(MEMORY_FILE_PREFIXES) and p.is_file())


def vt_sockets(texts: list[str]) -> list[Path]:
    """avocado-vt's sockets named in ``texts`` that still exist."""
    from .leftovers import sockets_named_in  # the job's leftover check uses the same

    return [Path(p) for p in sockets_named_in(texts)]


def aexpect_dirs(processes: dict[int, list[str]], proc_root: Path = Path("/proc")
                 ) -> list[Path]:
    """aexpect's temp dirs (``.../aexpect_XXXX/``: its pipes, lock and
    output files) that these processes hold open or name."""
    found = set()
    for pid, argv in processes.items():
        paths = list(argv)
        for fd in (proc_root / str(pid) / "fd").glob("*"):
            with contextlib.suppress(OSError):
                paths.append(os.readlink(fd))
        for path in paths:
            match = AEXPECT_DIR.search(path)
            if match:
                found.add(Path(match.group(0)))
    return sorted(found)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    _kill([pid])


def reap(watch: Watch) -> dict:
    """Steps 1 and 2 of the module docstring; returns what was done."""
    processes = marked_processes(f"{TEST_ENV}={watch.marker}", exclude=frozenset({os.getpid()}))
    for pid, started in watch.before_run:
        if start_time(pid) == started:
            with contextlib.suppress(OSError):
                processes[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes()
                                  .decode(errors="replace").split("\0"))
    temp_dirs = aexpect_dirs(processes)
    _kill(sorted(processes))
    for directory in temp_dirs:
        shutil.rmtree(directory, ignore_errors=True)
    logs = []
    for log in (watch.output_dir / "debug.log",):
        try:
            logs.append(log.read_text(errors="replace"))
        except OSError:
            pass
    logs += [" ".join(argv) for argv in processes.values()]
    sockets = vt_sockets(logs)
    files = memory_files(watch.snapshot_dir)
    for path in sockets + files:
        path.unlink(missing_ok=True)
    return {"killed": {str(p): " ".join(a)[:160] for p, a in sorted(processes.items())},
            "removed": [str(p) for p in sockets + files + temp_dirs]}


def report_error(watch: Watch, reason: str) -> bool:
    """Step 3: the test's ERROR, posted as its runner would have."""
    if not (watch.status_uri and watch.task_id):
        return False
    from avocado.core.nrunner.task import TaskStatusService
    from avocado.core.utils import messages

    message = messages.FinishedMessage.get("error", fail_reason=reason)
    message.update({"id": watch.task_id, "job_id": watch.job_id})
    try:
        return bool(TaskStatusService(watch.status_uri).post(message))
    except OSError:
        return False


def after_death(watch: Watch) -> dict:
    done = reap(watch)
    reason = (f"the test process (pid {watch.test_pid}) died without a result; the suite's "
              f"guardian killed {len(done['killed'])} process(es) it left and removed "
              f"{len(done['removed'])} file(s)/socket(s) (see {DIED_FILE})")
    done["reason"] = reason
    done["reported"] = report_error(watch, reason)
    try:
        watch.output_dir.mkdir(parents=True, exist_ok=True)
        (watch.output_dir / DIED_FILE).write_text(json.dumps(done, indent=2) + "\n")
    except OSError:
        pass
    _stop(watch.runner_pid)
    return done


def main(argv: list[str]) -> int:
    """``python -m avocado_bgsnap.guardian WATCH_JSON`` with the read end of
    the test's pipe as stdin."""
    watch = Watch.from_argv(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the job's Ctrl-C is for the test
    got = sys.stdin.buffer.read()
    if got.startswith(DONE):
        return 0
    after_death(watch)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

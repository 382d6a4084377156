"""A small structured record of the suite's QMP steps, for reproducers.

Every command :class:`qmp.SnapshotQMP` sends is appended as one JSON line
to ``bgsnap-qmp-trace.jsonl`` in the running test's results dir (next to
its debug.log); outside a test nothing is written.  A polled query (``query-migrate`` & co.) is written only when its
answer's status changes, so a long save costs a few lines, not thousands.
``avocado bgsnap repro`` (:mod:`repro`) reads it back.
"""

import json
import os
import re
import time
from pathlib import Path

TRACE_FILE = "bgsnap-qmp-trace.jsonl"
OUTPUTDIR_ENV = "AVOCADO_TEST_OUTPUTDIR"
POLLED = ("query-migrate", "query-status", "query-jobs", "query-named-block-nodes",
          "query-migrate-capabilities", "query-qmp-schema")
_PID = re.compile(r"-pid-(\d+)\.log$")
_last_poll: dict[tuple, object] = {}
_started = time.monotonic()


def trace_path() -> Path | None:
    """The running test's results dir (where its debug.log goes), or None."""
    outdir = os.environ.get(OUTPUTDIR_ENV)
    if outdir:
        return Path(outdir) / TRACE_FILE
    try:
        # avocado-vt's runner does not export it; virttest keeps it for
        # its monitor logs (qmp1-vm1-pid-N.log)
        from virttest import utils_logfile
        logdir = utils_logfile.get_log_file_dir()
    except (ImportError, AttributeError):
        return None
    return Path(logdir) / TRACE_FILE if logdir else None


def qemu_pid(monitor) -> int | None:
    """The QEMU a virttest monitor talks to (its log file is named after it)."""
    match = _PID.search(str(getattr(monitor, "log_file", "")))
    return int(match.group(1)) if match else None


def entry(pid, command: str, args, reply=None, error: str | None = None) -> dict | None:
    """The line to write for one command, or None for a repeated poll."""
    line = {"t": round(time.monotonic() - _started, 3), "pid": pid, "cmd": command}
    if args:
        line["args"] = args
    if error is not None:
        line["error"] = error
    if command in POLLED:
        answer = _poll_answer(command, reply)
        key = (pid, command)
        if error is None and key in _last_poll and _last_poll[key] == answer:
            return None
        _last_poll[key] = answer
        if answer is not None:
            line["answer"] = answer
    return line


def _poll_answer(command: str, reply):
    if not isinstance(reply, dict):
        return None
    if command == "query-migrate":
        return {k: reply[k] for k in ("status", "error-desc") if k in reply}
    if command == "query-status":
        return reply.get("status")
    return None


def record(monitor, command: str, args, reply=None, error: str | None = None) -> None:
    """Append one command to the test's trace (never fails the step)."""
    path = trace_path()
    if path is None:
        return
    try:
        line = entry(qemu_pid(monitor), command, args, reply, error)
        if line is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")
    except (OSError, TypeError, ValueError):
        pass


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

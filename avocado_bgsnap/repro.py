"""A standalone reproducer for a failed test, from the test's records.

Pure: the inputs are the test's results (its debug.log text, the QMP trace
``bgsnap-qmp-trace.jsonl`` (:mod:`qmp_trace`), ``bgsnap-metrics.json`` and
its ``fail_reason``); the output is a plan (QEMU command lines, the QMP steps
of the source and of the restoring QEMU, the workload, what to check) and
the text of a Python 3 script (``repro_script.py`` with the plan in it)
that needs only QEMU, Python's stdlib, the guest kernel/initrd and the
static ``bgsnap-wl``.  docs/repro.md.
"""

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .wlproto import WorkloadSpec

SCRIPT_TEMPLATE = Path(__file__).with_name("repro_script.py")
PLAN_LINE = "PLAN = {}  # filled in by avocado_bgsnap.repro"
GUEST_BINARY = "/bin/bgsnap-wl"
GUEST_LOG = "/tmp/bgsnap-wl.log"
DUMP_NAME = "bgsnap-restored-ram.elf"
FINAL = ("completed", "failed", "cancelled")
# what the test failed on -> what the script checks
RESTORE_FAILS, VERIFY_BAD, SOURCE_WEDGED = "restore-fails", "verify-bad", "source-wedged"

_CMD_START = "Running qemu command (reformatted):"
_ALIVE = re.compile(r"VM appears to be alive with PID (\d+)")
_STDLOG = re.compile(r"^\[stdlog\] ?")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class ReproError(Exception):
    """The test's records do not say enough for a reproducer."""


@dataclass(frozen=True)
class QemuRun:
    argv: tuple[str, ...]
    pid: int | None  # None: avocado-vt never saw it alive


def qemu_runs(debug_log: str) -> list[QemuRun]:
    """Every QEMU command line avocado-vt ran, in order, with its PID."""
    runs, lines = [], debug_log.splitlines()
    i = 0
    while i < len(lines):
        if _CMD_START not in lines[i]:
            match = _ALIVE.search(lines[i])
            if match and runs and runs[-1].pid is None:
                runs[-1] = QemuRun(runs[-1].argv, int(match.group(1)))
            i += 1
            continue
        parts = []
        i += 1
        while i < len(lines):
            text = _STDLOG.sub("", lines[i]).rstrip()
            i += 1
            more = text.endswith("\\")
            parts.append(text[:-1] if more else text)
            if not more:
                break
        argv = shlex.split(" ".join(parts))
        while argv and _ENV.match(argv[0]):  # MALLOC_PERTURB_=1 &c.: avocado-vt's
            argv.pop(0)
        runs.append(QemuRun(tuple(argv), None))
    return runs


def portable_argv(argv: tuple[str, ...], snapshot_dir: str) -> list[str]:
    """``argv`` with the monitor and serial sockets, the guest files and the
    snapshot folder as ``{qmp}``, ``{serial}``, ``{kernel}``, ``{initrd}``,
    ``{work}`` (the script fills them in)."""
    out, follows = [], None
    for arg in argv:
        if follows in ("-kernel", "-initrd"):
            arg = "{%s}" % follows[1:]
        elif follows == "-chardev" and arg.startswith("socket,"):
            kind = "qmp" if "id=qmp_id_" in arg else "serial" if "id=chardev_serial" in arg else None
            if kind:
                arg = re.sub(r"path=[^,]+", "path={%s}" % kind, arg)
        out.append(_portable(arg, snapshot_dir))
        follows = arg if arg.startswith("-") else None
    return out


def _portable(value, snapshot_dir: str):
    """A path under the test's snapshot folder -> under ``{work}``; the
    save's ``.partial`` name -> the final one (the script keeps no partial)."""
    if isinstance(value, str):
        if snapshot_dir and snapshot_dir in value:
            value = value.replace(snapshot_dir, "{work}").replace(".partial", "")
        return value
    if isinstance(value, list):
        return [_portable(v, snapshot_dir) for v in value]
    if isinstance(value, dict):
        return {k: _portable(v, snapshot_dir) for k, v in value.items()}
    return value


def expectation(fail_reason: str, metrics: dict) -> str:
    """What the test failed on, as the script checks it."""
    reason = fail_reason or ""
    if metrics.get("restore_error") or reason.startswith("ImageNotRestorable"):
        return RESTORE_FAILS
    if reason.startswith("GuestWedged") or "does not answer" in reason:
        return SOURCE_WEDGED
    if "BAD" in str(metrics.get("host_verify", "")) or "BAD" in reason:
        return VERIFY_BAD
    raise ReproError(f"no reproducer for this failure: {reason[:200] or 'no fail_reason'}")


def source_steps(trace: list[dict], pid: int | None) -> list[dict]:
    """The source's QMP steps up to the end of its first save."""
    steps, migrating = [], False
    for step in trace:
        if step.get("pid") != pid:
            continue
        steps.append(step)
        if step["cmd"] == "migrate":
            migrating = True
            if "error" in step:
                break
        status = (step.get("answer") or {}).get("status") if step["cmd"] == "query-migrate" else None
        if migrating and (status in FINAL or (step["cmd"] == "query-migrate" and "error" in step)):
            break
    return steps


def restore_steps(trace: list[dict], pid: int | None) -> list[dict]:
    """The restoring QEMU's QMP steps up to its RAM dump."""
    if pid is None:
        return []
    steps = []
    for step in trace:
        if step.get("pid") == pid:
            steps.append(step)
            if step["cmd"] == "dump-guest-memory":
                break
    return steps


def _qmp_step(step: dict, snapshot_dir: str) -> dict:
    out = {"cmd": step["cmd"]}
    if step.get("args"):
        out["args"] = _portable(step["args"], snapshot_dir)
    if "answer" in step:
        out["answer"] = step["answer"]
    if "error" in step:
        out["error"] = step["error"]
    return out


def make_plan(test_name: str, debug_log: str, trace: list[dict], metrics: dict,
              fail_reason: str) -> dict:
    """Everything the script does, as plain data."""
    runs = qemu_runs(debug_log)
    if not runs:
        raise ReproError("no 'Running qemu command' in the test's debug.log")
    if not trace:
        raise ReproError("no QMP trace (bgsnap-qmp-trace.jsonl) in the test's results")
    expect = expectation(fail_reason, metrics)
    snapshot_dir = str(Path(metrics["snapshot_file"]).parent) if metrics.get("snapshot_file") else ""
    spec = WorkloadSpec(**metrics["workload"])
    source = runs[0]
    plan = {
        "test": test_name,
        "fail_reason": fail_reason,
        "expect": expect,
        "source_argv": portable_argv(source.argv, snapshot_dir),
        "source_qmp": [_qmp_step(s, snapshot_dir) for s in source_steps(trace, source.pid)],
        "workload_start": f"{spec.run_command(binary=GUEST_BINARY)} > {GUEST_LOG} 2>&1 &",
        "workload_status": f"{GUEST_BINARY} ctl status",
        "restore_argv": None, "restore_qmp": [], "verify_argv": None,
        "original_files": {"kernel": arg_after(source.argv, "-kernel"),
                           "initrd": arg_after(source.argv, "-initrd")},
    }
    if expect != SOURCE_WEDGED:
        if len(runs) < 2:
            raise ReproError("the test's debug.log has no restoring QEMU")
        restore = runs[1]
        plan["restore_argv"] = portable_argv(restore.argv, snapshot_dir)
        plan["restore_qmp"] = [_qmp_step(s, snapshot_dir)
                               for s in restore_steps(trace, restore.pid)]
        plan["verify_argv"] = spec.verify_dump_argv("{work}/" + DUMP_NAME, binary="{wl}")
    return plan


def arg_after(argv, option: str) -> str | None:
    """The argument after ``option`` in ``argv`` (None without one)."""
    argv = list(argv)
    return argv[argv.index(option) + 1] if option in argv[:-1] else None


def render(plan: dict) -> str:
    """The reproducer's text: the script template with ``plan`` in it."""
    template = SCRIPT_TEMPLATE.read_text()
    if PLAN_LINE not in template:
        raise ReproError(f"{SCRIPT_TEMPLATE.name} has no plan line")
    body = json.dumps(plan, indent=4, sort_keys=True)
    header = (f"# Reproducer of {plan['test']}: expects '{plan['expect']}'.\n"
              f"# The test failed with: {' '.join(plan['fail_reason'].split())[:300]}\n")
    script = template.replace(PLAN_LINE, "PLAN = json.loads(r'''\n" + body + "\n''')")
    return script.replace("# REPRO-HEADER\n", header, 1)


def test_param(debug_log: str, name: str) -> str | None:
    """A test parameter as avocado-vt logged it (``    name = value``)."""
    match = re.search(r"DEBUG\|\s+%s = (.*)$" % re.escape(name), debug_log, re.MULTILINE)
    return match.group(1).strip() if match else None


def pick_test(tests: list[dict], wanted: str | None) -> dict:
    """The test of a job's results.json to reproduce: ``wanted`` (a name or
    a part of it), else the first that failed."""
    if wanted:
        found = [t for t in tests if wanted == t.get("name") or wanted in str(t.get("id"))]
        if not found:
            raise ReproError(f"no test {wanted!r} in the job")
        return found[0]
    for test in tests:
        if test.get("status") in ("FAIL", "ERROR"):
            return test
    raise ReproError("no failed test in the job")

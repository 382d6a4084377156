"""A background snapshot that must not complete, and what must hold after it.

:func:`attempt` runs the save with a fault (``during.faults``) or a failing
transport and says how it ended.  :func:`check_source_after` then checks
the source guest, each check with the verdict class of what it finds
(docs/verdicts.md):

* the guest answers within a bound and its writers advance, else it is
  wedged (FAIL: QEMU 7.2 leaves the vCPU asleep in ``handle_userfault``);
* write protection is gone: the guest's p99 write after the save is back
  at the level of before it (FAIL when it stays at the level of during).
  Its own control: the writes during the save must look slow to the same
  check (``protection_seen_during``), else it cannot see protection at all;

* its memory verifies exactly (FAIL);
* no file with the snapshot's name, no ``.partial`` (ERROR: the suite's
  own promise).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aexpect

from . import snapshot
from .during import DuringSaveRun, SaveContext
from .qmp import QMPStepError, SnapshotQMP
from .transport import Transport
from .verdicts import Defect, GuestWedged
from .workload import WINDOW_AFTER, WINDOW_BEFORE, WINDOW_DURING, GuestWorkload

# the latency window of the writes after a failed save (0-2: before, during, after)
WINDOW_AFTER_FAILURE = 3
# A running guest answers 'ctl status' in well under a second, even under TCG.
ANSWER_TIMEOUT_S = 20
# How long the writers run after the failed save before their latency is read.
AFTER_WINDOW_S = 3.0
# The p99 guest write after the save may exceed the one before it by this
# factor plus this slack (TCG noise) and still be "back at baseline".
# Measured (QEMU 10.0.2, TCG, 256 MiB): p99 7.2 us before, 115 us during a
# save, 8.2 us after a failed one.  The worst single write is no guide: TCG
# scheduling gives 12-18 ms outliers in every window.
P99_FACTOR, P99_SLACK_US = 3.0, 20.0


class HarnessLeftover(Exception):
    """The suite left a file that could pass for a snapshot (an ERROR)."""


@dataclass(frozen=True)
class SaveEnd:
    """How a save that was meant to fail ended."""
    outcome: str            # 'completed', 'cancelled', 'failed', 'source killed', 'error'
    message: str
    took_s: float

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "message": self.message, "took_s": round(self.took_s, 3)}


# virttest's words (qemu_monitor.py) for a QMP command QEMU never answered
NO_ANSWER = "Received no response to QMP"
MONITOR_WEDGED = "monitor wedged"


def attempt(vm, transport: Transport, path: Path, timeout: float, during: DuringSaveRun,
            workload: GuestWorkload, log: Callable[[str], None]) -> SaveEnd:
    """Run one background snapshot with ``during``'s faults; never raises
    for the save's own failure, returns how it ended."""
    qmp = SnapshotQMP(vm.monitor, log)
    ctx = SaveContext(vm, qmp, log, workload)
    workload.mark(WINDOW_DURING)
    started = time.monotonic()
    try:
        snapshot.take_background_snapshot(
            qmp, transport, path, timeout, log,
            on_started=lambda: during.at_trigger(ctx), on_resume=lambda: during.act(ctx))
    except QMPStepError as exc:
        took = time.monotonic() - started
        info = exc.reply if isinstance(exc.reply, dict) else {}
        if info.get("status"):
            return SaveEnd(info["status"], str(exc), took)
        if snapshot.exits_soon(vm):   # the monitor broke first, the process goes next
            return SaveEnd("source killed", str(exc), took)
        if NO_ANSWER in str(exc):     # alive, but its monitor no longer answers
            return SaveEnd(MONITOR_WEDGED, str(exc), took)
        return SaveEnd("error", str(exc), took)
    return SaveEnd("completed", "the save completed", time.monotonic() - started)


def no_snapshot_left(path: Path) -> None:
    """Neither the snapshot's name nor its ``.partial`` exists."""
    left = [p for p in (path, path.with_name(path.name + ".partial")) if p.exists()]
    if left:
        raise HarnessLeftover(f"a failed save left {', '.join(map(str, left))}")


def _window(status: dict, window: int) -> dict:
    for w in status.get("windows") or []:
        if w.get("window") == window:
            return w
    return {}


def _p99_us(window: dict) -> float | None:
    return None if not window.get("count") else window["p99_ns"] / 1e3


def write_protection_gone(before: dict, after: dict) -> str | None:
    """None when the guest's p99 write after the failed save is back near
    the one before it; else why not.  ``before``/``after``: latency windows."""
    p99_before, p99_after = _p99_us(before), _p99_us(after)
    if p99_after is None:
        return "no guest write after the failed save: the writers did not run"
    if p99_before is None:
        return "no guest write before the save: no baseline"
    bound = p99_before * P99_FACTOR + P99_SLACK_US
    if p99_after > bound:
        return (f"the guest's p99 write after the failed save took {p99_after:.1f} us, over "
                f"{bound:.1f} us ({P99_FACTOR:g} x the {p99_before:.1f} us before the save + "
                f"{P99_SLACK_US:g}): write protection still in place?")
    return None


def wedge_evidence(vm) -> str:
    """What QEMU says and where its threads sleep, bounded: a vCPU asleep
    in ``handle_userfault`` is a write fault nobody resolves."""
    try:
        state = vm.monitor.cmd("query-status", timeout=5, debug=False).get("status")
    except Exception as exc:  # a wedged QEMU may not answer: that is evidence too
        state = f"no answer ({type(exc).__name__})"
    pid = vm.get_pid()
    sleeping = []
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan") if pid else ():
        with contextlib.suppress(OSError):
            sleeping.append(wchan.read_text().strip())
    in_uffd = sleeping.count("handle_userfault")
    return (f"QEMU run state '{state}', {in_uffd} of its {len(sleeping)} threads asleep in "
            f"handle_userfault")


def check_source_after(vm, workload: GuestWorkload, verify_timeout_s: float,
                       log: Callable[[str], None]) -> dict:
    """The source guest after a failed or cancelled save (see the module
    docstring); returns the figures, raises :class:`Defect` on a finding."""
    try:
        first = workload.mark(WINDOW_AFTER_FAILURE, timeout=ANSWER_TIMEOUT_S)
        time.sleep(AFTER_WINDOW_S)
        status = workload.status(timeout=ANSWER_TIMEOUT_S)
    except aexpect.ShellError as exc:
        raise GuestWedged(f"the source guest does not answer within {ANSWER_TIMEOUT_S}s after "
                          f"the failed save ({type(exc).__name__}); {wedge_evidence(vm)}"
                          ) from exc
    advanced = sum(map(int, status["committed"])) - sum(map(int, first["committed"]))
    if advanced <= 0:
        raise GuestWedged(f"the source guest's writers made no progress in {AFTER_WINDOW_S:g}s "
                          f"after the failed save (steps {first['committed']} -> "
                          f"{status['committed']})")
    before, during = _window(status, WINDOW_BEFORE), _window(status, WINDOW_DURING)
    after = _window(status, WINDOW_AFTER_FAILURE)
    figures = {"steps_after_failure": advanced,
               "p99_write_us": {"before": _p99_us(before), "during": _p99_us(during),
                                "after": _p99_us(after)},
               "max_write_ms": {k: w.get("max_ns", 0) / 1e6 for k, w in
                                (("before", before), ("during", during), ("after", after))}}
    log("after the failed save: %s" % figures)
    # the check's own control: the writes under protection must look slow
    # to it, else it could not see protection left behind either
    seen = write_protection_gone(before, during) is not None
    figures["protection_seen_during"] = seen
    still = write_protection_gone(before, after)
    if seen and still:
        raise Defect(still)
    workload.freeze()
    result = workload.verify(verify_timeout_s, thaw=True)
    workload.mark(WINDOW_AFTER)
    figures["source_verify"] = result.summary()
    if not result.clean:
        raise Defect("the source guest's memory is damaged after the failed save: "
                     + result.summary())
    return figures

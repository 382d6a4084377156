"""A guest suspended to RAM (ACPI S3) through a background snapshot.

QEMU 9.0 (49a5020, "migration: preserve suspended for bg_migration") keeps
a suspended guest suspended through the save; before it, the snapshot's
resume woke the guest.  The steps here suspend the guest, take the save and
say, from QEMU's run states and events, whether the guest stayed asleep.
A suspended guest may have no pause window at all (nothing to stop).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import snapshot
from .qmp import SnapshotQMP
from .transport import Transport

SUSPEND_COMMAND = "echo mem > /sys/power/state"
SUSPENDED = "suspended"
# Events that tell what QEMU did to the run state during the save.
RUN_STATE_EVENTS = ("STOP", "RESUME", "SUSPEND", "WAKEUP")


@dataclass(frozen=True)
class SuspendedSave:
    result: snapshot.SnapshotResult
    status_before: str
    status_after: str
    events: tuple[str, ...]        # RUN_STATE_EVENTS seen during the save, in order

    @property
    def woke(self) -> bool:
        return self.status_after != SUSPENDED or "WAKEUP" in self.events

    def to_dict(self) -> dict:
        return {"status_before": self.status_before, "status_after": self.status_after,
                "events": list(self.events), "woke": self.woke}


def suspend_guest(session, qmp: SnapshotQMP, timeout: float) -> float:
    """Suspend the guest to RAM from its shell; return how long QEMU took
    to report SUSPEND.  The shell does not answer until the guest wakes."""
    qmp.clear_events()
    started = time.monotonic()
    session.sendline(SUSPEND_COMMAND)
    qmp.wait_event("SUSPEND", timeout, poll_s=0.2)
    return round(time.monotonic() - started, 3)


def wake(session, qmp: SnapshotQMP, timeout: float) -> None:
    """Wake the guest if it still sleeps, and wait for its shell to return
    from the suspend command (its prompt), so the next command reads clean."""
    if qmp.status() == SUSPENDED:
        qmp.system_wakeup()
    session.read_up_to_prompt(timeout=timeout)


def snapshot_suspended(qmp: SnapshotQMP, transport: Transport, path: Path, timeout: float,
                       log: Callable[[str], None]) -> SuspendedSave:
    """A background snapshot of the suspended guest behind ``qmp``."""
    before = qmp.status()
    result = snapshot.take_background_snapshot(qmp, transport, path, timeout, log)
    events = tuple(e["event"] for e in sorted(result.raw_events, key=lambda e: (
        e["timestamp"]["seconds"], e["timestamp"]["microseconds"]))
        if e.get("event") in RUN_STATE_EVENTS)
    return SuspendedSave(result, before, qmp.status(), events)


def suspended_errors(save: SuspendedSave, preserved_expected: bool) -> list[str]:
    """A build that wakes a suspended guest is wrong (a FAIL), with the
    states and events as evidence; before 9.0 that is the known defect."""
    if not save.woke:
        return []
    known = "" if preserved_expected else " (QEMU before 9.0 does: fixed by 49a5020)"
    return [f"the background snapshot woke the suspended guest{known}: run state "
            f"{save.status_before} -> {save.status_after}, events during the save: "
            f"{', '.join(save.events) or 'none'}"]


def pause_note(save: SuspendedSave) -> str | None:
    """Why a suspended save has no pause figure (no STOP/RESUME pair)."""
    if save.result.pause_windows:
        return None
    return "no pause window: the guest was suspended and QEMU did not stop it"

"""Faults on the save itself while it streams: cancel it, start a second
``migrate`` next to it, kill the source QEMU.

QEMU's history says where to look: the resume bottom half of a background
snapshot used to be freed under a cancel that came right after the start
(Jan 2024, object_ref/unref around ``bg_migration_vm_start_bh``); QEMU 7.2
left the guest write-protected and frozen after a failed save
(docs/findings.md).  What must hold after each fault is checked by
:mod:`avocado_bgsnap.failed_save`, not here: an action only does its fault
and records what it did.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from ..qmp import QMPStepError
from . import DuringSave, SaveContext

FAULTS = ("cancel", "cancel_at_start", "kill_source", "target_fails", "kill_test")
# how each fault's save must end: a final migration state, or the source gone
EXPECTED_END = {"cancel": "cancelled", "cancel_at_start": "cancelled",
                "kill_source": "source killed", "target_fails": "failed",
                "kill_test": "never: the test process is gone"}


@dataclass(frozen=True)
class FaultSettings:
    name: str               # one of FAULTS
    delay_s: float          # after RESUME, before the fault (cancel, kill_source)

    @property
    def expected_end(self) -> str:
        return EXPECTED_END[self.name]

    @property
    def source_survives(self) -> bool:
        return self.name != "kill_source"

    @property
    def protected_before_fault(self) -> bool:
        """The guest ran write-protected before the fault (a cancel right
        after the start may come before the protection)."""
        return self.name in ("cancel", "target_fails")


class CancelSave(DuringSave):
    """``migrate_cancel`` ``delay_s`` after RESUME, or right after the
    ``migrate`` command (``at_start``: QEMU still setting up, the resume
    bottom half pending)."""

    name = "cancel"

    def __init__(self, delay_s: float = 0.0, at_start: bool = False):
        self.delay_s = delay_s
        self.at_start = at_start

    def _cancel(self, ctx: SaveContext) -> dict:
        time.sleep(self.delay_s)
        status = ctx.migration_status()
        ctx.qmp.migrate_cancel()
        return {"delay_s": self.delay_s, "status_at_cancel": status}

    def at_trigger(self, ctx: SaveContext) -> dict | None:
        return self._cancel(ctx) if self.at_start else None

    def act(self, ctx: SaveContext) -> dict:
        return self._cancel(ctx)


class KillSource(DuringSave):
    """SIGKILL the source QEMU ``delay_s`` after RESUME."""

    name = "kill_source"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def act(self, ctx: SaveContext) -> dict:
        time.sleep(self.delay_s)
        pid = ctx.vm.get_pid()
        status = ctx.migration_status()
        os.kill(pid, signal.SIGKILL)
        return {"delay_s": self.delay_s, "pid": pid, "status_at_kill": status}


class KillTest(DuringSave):
    """SIGKILL the test's own process ``delay_s`` after RESUME: what the
    job does when a test dies mid-save (its QEMUs live on: they run under
    aexpect's server, not as the test's children)."""

    name = "kill_test"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def act(self, ctx: SaveContext) -> dict:
        time.sleep(self.delay_s)
        ctx.log(f"killing the test process (pid {os.getpid()}) mid-save")
        os.kill(os.getpid(), signal.SIGKILL)
        return {}


class SecondMigrate(DuringSave):
    """A second ``migrate`` while the snapshot streams: QEMU must refuse it
    and go on with the first."""

    name = "second_migrate"

    def act(self, ctx: SaveContext) -> dict:
        target = "exec:cat > /dev/null"
        try:
            ctx.qmp.migrate(target)
        except QMPStepError as exc:
            return {"uri": target, "refused": True, "qemu_message": exc.qemu_message}
        return {"uri": target, "refused": False, "qemu_message": None}

    def errors(self, record: dict) -> list[str]:
        if record.get("refused") is False:
            return ["QEMU accepted a second migrate while a background snapshot streamed"]
        return []


def fault_action(cfg: FaultSettings) -> list[DuringSave]:
    """The during-save action of a fault (``target_fails`` has none: its
    transport fails by itself)."""
    if cfg.name == "cancel":
        return [CancelSave(cfg.delay_s)]
    if cfg.name == "cancel_at_start":
        return [CancelSave(at_start=True)]
    if cfg.name == "kill_source":
        return [KillSource(cfg.delay_s)]
    if cfg.name == "kill_test":
        return [KillTest(cfg.delay_s)]
    return []


def configured(second_migrate: bool) -> list[DuringSave]:
    """The actions of this module a ``bgsnap_basic`` test asks for
    (``bgsnap_during = second_migrate``): the save then completes."""
    return [SecondMigrate()] if second_migrate else []

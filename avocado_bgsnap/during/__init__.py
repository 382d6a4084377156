"""Actions that happen while a background snapshot streams the guest's RAM.

The cycle offers two moments: just before the trigger
(:meth:`DuringSave.before_trigger`, for baselines), and right after QEMU's ``RESUME`` (the guest runs
again, its RAM is write-protected and still being saved).  It calls
:meth:`DuringSave.act` of each configured action there, one after the
other, and :meth:`DuringSave.settle` once the save completed.  Each action
records what it really did; :class:`DuringSaveRun` records whether the save
was still streaming when it acted, so an action that came too late is
reported as not tested (an ERROR of the harness), never as a pass.

An action is a small class: a device being resized (:mod:`.devices`), and
later host events acting on QEMU's protected memory.  It takes typed
settings, never params.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..qmp import QMPStepError, SnapshotQMP

STREAMING = ("active", "setup")


class DuringSaveMissed(Exception):
    """An action did not happen while the save streamed: the variant did
    not test what it claims (the save was too quick, or the action slow)."""


@dataclass
class SaveContext:
    """What an action may use: the source VM, its QMP, the log, and the
    guest workload (a :class:`~avocado_bgsnap.workload.GuestWorkload`, when
    the cycle has one)."""
    vm: object
    qmp: SnapshotQMP
    log: Callable[[str], None]
    workload: object = None

    def migration_status(self) -> str:
        try:
            return self.qmp.query_migrate().get("status", "none")
        except QMPStepError as exc:
            return f"unknown ({exc})"


class DuringSave:
    """One action; subclasses set ``name`` and override ``act``."""

    name = "action"

    def before_trigger(self, ctx: SaveContext) -> None:
        """Just before the snapshot starts (e.g. read a baseline)."""

    def at_trigger(self, ctx: SaveContext) -> dict | None:
        """Right after the ``migrate`` command returned, before RESUME (QEMU
        may still be setting up); return what was done, or None to act
        only after RESUME."""
        return None

    def act(self, ctx: SaveContext) -> dict:
        """Do it now, while the RAM streams; return what was done."""
        raise NotImplementedError

    def settle(self, ctx: SaveContext) -> dict:
        """After the save completed: final state, undo what must be undone."""
        return {}

    def errors(self, record: dict) -> list[str]:
        """Failures of QEMU/kernel the action itself saw (its own record)."""
        return []

    def nothing_happened(self, record: dict) -> str | None:
        """Why the action, though it ran in time, changed nothing (its own
        record, after ``settle``): the variant did not test what it claims."""
        return None


class DuringSaveRun:
    """The configured actions of one snapshot, and what each did."""

    def __init__(self, actions: Sequence[DuringSave], log: Callable[[str], None]):
        self.actions = tuple(actions)
        self.log = log
        self.records: list[dict] = []

    def __bool__(self) -> bool:
        return bool(self.actions)

    def before_trigger(self, ctx: SaveContext) -> None:
        for action in self.actions:
            action.before_trigger(ctx)

    def at_trigger(self, ctx: SaveContext) -> None:
        """The actions that act right after the trigger (see
        :meth:`DuringSave.at_trigger`); they are not called again after RESUME."""
        for action in self.actions:
            self._run(action, ctx, action.at_trigger, moment="trigger")

    def act(self, ctx: SaveContext) -> None:
        done = {r["action"] for r in self.records}
        for action in self.actions:
            if action.name not in done:
                self._run(action, ctx, action.act, moment="resume")

    def _run(self, action: DuringSave, ctx: SaveContext, step, moment: str) -> None:
        before = ctx.migration_status()
        started = time.monotonic()
        done = step(ctx)
        if done is None:
            return
        after = ctx.migration_status()
        record = {"action": action.name, "moment": moment, "status_before": before,
                  "status_after": after, "took_s": round(time.monotonic() - started, 3), **done}
        self.log(f"during the save ({moment}): {action.name}: {done} (save {before} -> {after})")
        self.records.append(record)

    def _pairs(self):
        """(action, its record) for the actions that acted, in order."""
        by_name = {a.name: a for a in self.actions}
        return [(by_name[r["action"]], r) for r in self.records]

    def settle(self, ctx: SaveContext) -> None:
        for action, record in self._pairs():
            record["after_save"] = action.settle(ctx)

    def missed(self) -> list[str]:
        """Actions that did not start while the save streamed, or did nothing."""
        late = [f"{r['action']}: the save was already '{r['status_before']}' when it started"
                for r in self.records if r["status_before"] not in STREAMING]
        idle = [f"{r['action']}: nothing happened: {why}"
                for action, r in self._pairs()
                if r["status_before"] in STREAMING and (why := action.nothing_happened(r))]
        return late + idle

    def errors(self) -> list[str]:
        return [f"{r['action']}: {e}" for action, r in self._pairs() for e in action.errors(r)]

"""Restore what is not a good snapshot of this guest: QEMU must refuse it,
clearly and within a bound.

A kind of bad image is a mutation of a good snapshot file (truncated, its
header corrupted, empty) or a good file restored into a QEMU that does not
match it (another RAM size, another machine type), or a restore whose QEMU
is killed halfway.  :func:`attempt_restore` says how the restore ended:

* ``refused``: QEMU said no (the restoring QEMU exited, or the incoming
  migration failed) within the bound, with its message: the pass;
* ``loaded``: QEMU took it and reports the guest restored: a FAIL (a bad
  image passed for a good one), except for the control (the good image);
* ``hang``: nothing within the bound: a FAIL (docs/verdicts.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from virttest import virt_vm

from . import snapshot
from .qmp import QMPStepError
from .transport import Transport

# What a bad image is, and what restoring it needs (None: the source's).
KINDS = ("good", "truncated", "header", "empty", "ram_size", "machine", "restore_killed")
# QEMU's stream starts with the magic 'QEVM' and the version 3.
STREAM_MAGIC = b"QEVM"


@dataclass(frozen=True)
class BadImageSettings:
    kind: str               # one of KINDS
    bound_s: float          # the restore must end within this


class BadImageError(Exception):
    """A bad image could not be made (not a verdict: an ERROR)."""


@dataclass(frozen=True)
class RestoreEnd:
    outcome: str            # 'loaded', 'refused' or 'hang'
    message: str
    took_s: float

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "message": self.message, "took_s": round(self.took_s, 3)}


def make_bad_copy(good: Path, kind: str, dest: Path) -> Path:
    """A copy of ``good`` as ``kind`` wants it (unchanged for the kinds
    that change the restoring QEMU instead)."""
    size = good.stat().st_size
    with open(good, "rb") as src:
        if src.read(4) != STREAM_MAGIC:
            raise BadImageError(f"{good} does not start with {STREAM_MAGIC!r}")
    snapshot.create_private(dest)
    if kind == "empty":
        return dest
    shutil.copyfile(good, dest)
    if kind == "truncated":
        os.truncate(dest, size // 2)
    elif kind == "header":
        with open(dest, "r+b") as f:
            f.write(b"XXXX")
    return dest


def slow_restore(transport: Transport, mib_s: int = 32) -> Transport:
    """``transport``'s restore, read at ``mib_s`` (long enough to kill the
    restoring QEMU halfway)."""
    if transport.restore_template != "exec:cat {path}":
        raise BadImageError(f"a slow restore needs the file transport, not {transport.name}")
    return dataclasses.replace(
        transport, name=f"{transport.name}_slow_restore",
        restore_template=f"exec:{{python}} -m avocado_bgsnap.throttle_filter {mib_s} < {{path}}")


def restore_overrides(kind: str, guest_mem_mib: int) -> dict:
    """The restoring QEMU's params, changed for the mismatch kinds."""
    if kind == "ram_size":
        return {"mem": str(guest_mem_mib * 2)}
    if kind == "machine":
        return {"machine_type": "q35"}
    return {}


def attempt_restore(vm, transport: Transport, path: Path, bound_s: float,
                    log: Callable[[str], None], overrides: dict | None = None,
                    kill_after_s: float | None = None) -> RestoreEnd:
    """Restore ``path`` into a paused clone of ``vm``; never raises for the
    restore's own failure.  ``kill_after_s``: SIGKILL the restoring QEMU
    that long after it started (it must be restoring slowly by then)."""
    started = time.monotonic()
    cm = snapshot.restored_vm(vm, transport, path, bound_s, log, overrides,
                              on_created=_killer(kill_after_s, log) if kill_after_s else None)
    try:
        with cm as (_clone, qmp):
            return RestoreEnd("loaded", f"restored, run state {qmp.status()}",
                              time.monotonic() - started)
    except (QMPStepError, virt_vm.VMError) as exc:
        took = time.monotonic() - started
        output = getattr(exc, "output", None)
        text = snapshot.qemu_said(output) if output else " ".join(str(exc).split())[-600:]
        if "still '" in text and f"after {bound_s:.0f}s" in text:
            return RestoreEnd("hang", text, took)
        return RestoreEnd("refused", text, took)


def _killer(after_s: float, log: Callable[[str], None]):
    def kill(clone) -> None:
        time.sleep(after_s)
        pid = clone.get_pid()
        log(f"killing the restoring QEMU (pid {pid}) {after_s:g}s into the restore")
        os.kill(pid, 9)
    return kill

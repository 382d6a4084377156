"""Guest states a background snapshot meets besides a running, loaded
guest: paused (QMP ``stop``), idle (no workload), right after boot, and a
soak of back-to-back snapshots under load (tests/bgsnap_paused.py,
bgsnap_idle.py, bgsnap_after_boot.py, bgsnap_soak.py; docs/guest-states.md).

The shared cycle (cycle.py) does the snapshot, the restore and the exact
verification; what is here is what only these states need: their QMP and
shell steps, and the pure checks (unit-tested in
selftests/unit/test_guest_states.py).
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import snapshot
from .qmp import QMPStepError, SnapshotQMP
from .transport import Transport
from .verifier import PAGE_MAGIC

PAUSED = "paused"
RUN_STATE_EVENTS = ("STOP", "RESUME")
# wl/wl_core.h WL_MAGIC_META: word 0 of the workload's metadata page (word 1: nonce)
META_MAGIC = 0x31544D4C57534742
# QEMU's 'globalstate' section header: idstr length byte + idstr, then
# instance_id and version_id (be32 each), then the fields 'size' (be32) and
# 'runstate' (a 100-byte buffer): the run state when the save stopped the VM.
GLOBALSTATE_IDSTR = b"\x0bglobalstate"
RUNSTATE_BUFFER = 100
IDLE_FILE = "/tmp/bgsnap-idle.bin"
# /proc/uptime has two decimals
UPTIME_RESOLUTION_S = 0.01


@dataclass(frozen=True)
class StateSettings:
    soak_rounds: int        # bgsnap_soak_count: back-to-back snapshots of one guest
    idle_file_mib: int      # bgsnap_idle_file_mib: the tmpfs file an idle guest keeps


# -- paused ------------------------------------------------------------------
@dataclass(frozen=True)
class PausedSave:
    result: snapshot.SnapshotResult
    status_before: str
    status_after: str
    events: tuple[str, ...]          # STOP / RESUME during the save, in QEMU's order
    image_runstate: str | None       # what the image's globalstate section says

    @property
    def resumed(self) -> bool:
        return self.status_after != PAUSED or "RESUME" in self.events

    def to_dict(self) -> dict:
        return {"status_before": self.status_before, "status_after": self.status_after,
                "events": list(self.events), "resumed": self.resumed,
                "image_runstate": self.image_runstate}


def pause_guest(qmp: SnapshotQMP, timeout: float) -> float:
    """QMP ``stop``; wait for its STOP event; return how long it took."""
    qmp.clear_events()
    started = time.monotonic()
    qmp.stop()
    qmp.wait_event("STOP", timeout)
    status = qmp.status()
    if status != PAUSED:
        raise QMPStepError(f"after 'stop' the guest is '{status}', not paused",
                                    "query-status", status)
    return round(time.monotonic() - started, 3)


def snapshot_paused(qmp: SnapshotQMP, transport: Transport, path: Path, timeout: float,
                    log: Callable[[str], None]) -> PausedSave:
    """A background snapshot of the paused guest behind ``qmp``."""
    before = qmp.status()
    result = snapshot.take_background_snapshot(qmp, transport, path, timeout, log)
    events = run_state_events(result.raw_events)
    runstate = image_runstate(path) if transport.suffix == ".bin" else None
    return PausedSave(result, before, qmp.status(), events, runstate)


def run_state_events(events) -> tuple[str, ...]:
    ordered = sorted(events, key=lambda e: (e["timestamp"]["seconds"],
                                            e["timestamp"]["microseconds"]))
    return tuple(e["event"] for e in ordered if e.get("event") in RUN_STATE_EVENTS)


def image_runstate(path: Path) -> str | None:
    """The run state a migration stream carries in its globalstate section
    (the last one in the file: a background snapshot writes the device
    state after the RAM); None when there is none."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return parse_runstate(data)


def parse_runstate(data) -> str | None:
    at = data.rfind(GLOBALSTATE_IDSTR)
    if at < 0:
        return None
    body = at + len(GLOBALSTATE_IDSTR) + 8          # instance_id, version_id
    if body + 4 > len(data):
        return None
    (size,) = struct.unpack(">I", data[body:body + 4])
    if not 1 <= size <= RUNSTATE_BUFFER:
        return None
    raw = bytes(data[body + 4:body + 4 + size]).split(b"\0")[0]
    return raw.decode("ascii", "replace") or None


# QEMU 9.0 (the series of 49a5020) resumes the old run state after the
# save (vm_resume(vm_old_state)); before, bg_migration_vm_start_bh called
# vm_start() whatever the guest's state was.
PRESERVED_SINCE = (9, 0)


def expect_paused_preserved(qemu_version: tuple[int, ...]) -> bool:
    return tuple(qemu_version[:2]) >= PRESERVED_SINCE


def paused_errors(save: PausedSave, restored_status: str | None,
                  preserved_expected: bool = True) -> list[str]:
    """A paused guest stays paused through the save, and the image brings
    it back paused: anything else is QEMU's doing (a FAIL)."""
    errors = []
    if save.resumed:
        known = "" if preserved_expected else " (QEMU before 9.0 does: vm_start() after the save)"
        errors.append(f"the background snapshot resumed the paused guest{known}: run state "
                      f"{save.status_before} -> {save.status_after}, events during the save: "
                      f"{', '.join(save.events) or 'none'}")
    if save.image_runstate not in (None, PAUSED):
        errors.append(f"the image says the guest was '{save.image_runstate}', not paused")
    if restored_status != PAUSED:
        errors.append(f"the restored guest came back '{restored_status}', not paused")
    return errors


def pause_note(result: snapshot.SnapshotResult) -> str | None:
    """Why a save of a paused guest has no pause figure."""
    if result.pause_windows:
        return None
    return "no pause window: the guest was paused before the save"


# -- idle --------------------------------------------------------------------
def write_idle_file(session, mib: int, timeout: float) -> str:
    """Write ``mib`` MiB of random bytes to the guest's tmpfs (guest RAM),
    before the snapshot; return their md5."""
    session.cmd(f"head -c {mib * 2**20} /dev/urandom > {IDLE_FILE}", timeout=timeout)
    return file_digest(session, timeout)


def file_digest(session, timeout: float) -> str:
    out = session.cmd_output(f"md5sum {IDLE_FILE}", timeout=timeout)
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == IDLE_FILE and len(words[0]) == 32:
            return words[0]
    raise ValueError(f"no md5sum of {IDLE_FILE} in {out!r}")


def read_uptime(session, timeout: float = 20) -> float:
    """The guest's /proc/uptime (seconds since boot)."""
    return parse_uptime(session.cmd_output("cat /proc/uptime", timeout=timeout))


def parse_uptime(text: str) -> float:
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2:
            try:
                return float(words[0])
            except ValueError:
                continue
    raise ValueError(f"no /proc/uptime line in {text!r}")


def round_trip(session, number: int, timeout: float = 20) -> str:
    """The guest's shell computes ``number + 1`` (so the answer is not the
    echo of the command line) and runs ``uptime``; returns their output."""
    out = session.cmd_output(f"echo bgsnap-$(({number} + 1)); uptime", timeout=timeout)
    if f"bgsnap-{number + 1}" not in out.split():
        raise ValueError(f"the guest did not answer bgsnap-{number + 1}: {out!r}")
    return " ".join(out.split())


def uptime_error(before_s: float, after_s: float, restored_s: float, since_cont_s: float,
                 resolution_s: float = UPTIME_RESOLUTION_S) -> str | None:
    """The restored guest's uptime ``restored_s``, read at most
    ``since_cont_s`` after its ``cont``, comes from a snapshot instant U:
    restored_s - since_cont_s <= U <= restored_s.  The source's uptimes
    read right before the trigger and right after RESUME bound U:
    before_s <= U <= after_s.  The two ranges must meet."""
    earliest, latest = restored_s - since_cont_s, restored_s
    if latest + resolution_s < before_s:
        return (f"restored uptime {restored_s:.2f} s is below the source's {before_s:.2f} s "
                f"before the trigger: the image is from an earlier instant")
    if earliest - resolution_s > after_s:
        return (f"restored uptime {restored_s:.2f} s, {since_cont_s:.2f} s after cont, puts "
                f"the image after the source's {after_s:.2f} s right after RESUME: not the "
                f"snapshot instant")
    return None


# -- right after boot --------------------------------------------------------
def run_frames(path: Path, nonce: int, npages: int) -> tuple[int, int]:
    """Frames of the workload run ``nonce`` in a RAM dump, at any offset:
    (region pages: PAGE_MAGIC then nonce ^ p with p < npages, metadata
    pages: META_MAGIC then nonce)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return 0, 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return count_run_frames(data, nonce, npages)


def count_run_frames(data, nonce: int, npages: int) -> tuple[int, int]:
    magic = struct.pack("<Q", PAGE_MAGIC)
    pages, at = 0, data.find(magic)
    while at >= 0:
        if at + 16 <= len(data):
            (word1,) = struct.unpack("<Q", data[at + 8:at + 16])
            pages += (word1 ^ nonce) < npages
        at = data.find(magic, at + 8)
    meta_needle = struct.pack("<QQ", META_MAGIC, nonce)
    metas, at = 0, data.find(meta_needle)
    while at >= 0:
        metas += 1
        at = data.find(meta_needle, at + 16)
    return pages, metas


def after_boot_errors(pages: int, metas: int, workload_in_restored: str,
                      source_clean: bool, source_summary: str) -> list[str]:
    """The image of a guest snapshotted right after boot holds nothing of
    the workload started after RESUME; the source's workload is intact."""
    errors = []
    if pages or metas:
        errors.append(f"{pages} workload pages and {metas} metadata pages written after the "
                      f"snapshot instant are in the image: write protection missed pages the "
                      f"guest had never touched")
    if workload_in_restored:
        errors.append(f"the restored guest runs a workload started after the snapshot "
                      f"instant (pid {workload_in_restored})")
    if not source_clean:
        errors.append("source guest damaged after the snapshot: " + source_summary)
    return errors


# -- soak --------------------------------------------------------------------
@dataclass(frozen=True)
class RoundOutcome:
    round: int
    failure: str | None
    pause_ms: float | None
    snapshot_total_s: float | None
    host_verify: str | None
    guest_verify: str | None
    point_in_time: str | None

    @classmethod
    def from_record(cls, n: int, record: dict, failure: str | None) -> "RoundOutcome":
        return cls(n, failure, record.get("pause_ms"), record.get("snapshot_total_s"),
                   record.get("host_verify"), record.get("guest_verify"),
                   record.get("point_in_time"))

    def to_dict(self) -> dict:
        return {"round": self.round, "verdict": self.failure or "pass",
                "pause_ms": self.pause_ms, "snapshot_total_s": self.snapshot_total_s,
                "host_verify": self.host_verify, "guest_verify": self.guest_verify,
                "point_in_time": self.point_in_time}


def soak_figure(outcomes: list[RoundOutcome], rounds: int) -> str:
    passed = sum(1 for o in outcomes if o.failure is None)
    return f"{passed} passed of {rounds}"


def soak_failure(outcomes: list[RoundOutcome], rounds: int) -> str | None:
    """None when every one of ``rounds`` rounds ran and passed; else the
    failed (or never run) rounds by number, with their reasons."""
    failed = [o for o in outcomes if o.failure is not None]
    missing = rounds - len(outcomes)
    if not failed and not missing:
        return None
    parts = [f"round {o.round}: {o.failure}" for o in failed]
    if missing:
        parts.append(f"rounds {len(outcomes) + 1}..{rounds} not run")
    numbers = ", ".join(str(o.round) for o in failed) or "none"
    return f"{soak_figure(outcomes, rounds)} (failed: {numbers}): " + "; ".join(parts)


def pause_summary(outcomes: list[RoundOutcome]) -> dict:
    """min / median / max of the rounds' pauses (ms)."""
    pauses = sorted(o.pause_ms for o in outcomes if o.pause_ms is not None)
    if not pauses:
        return {"min": None, "median": None, "max": None}
    mid = len(pauses) // 2
    median = pauses[mid] if len(pauses) % 2 else (pauses[mid - 1] + pauses[mid]) / 2
    return {"min": round(pauses[0], 3), "median": round(median, 3), "max": round(pauses[-1], 3)}

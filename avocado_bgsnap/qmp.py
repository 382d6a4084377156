"""The QMP steps of a snapshot, over avocado-vt's ``vm.monitor`` (QMPMonitor).

The pause is taken from QEMU's own event timestamps (``STOP`` ->
``RESUME``), stamped when QEMU emitted them, never from when we read them:
in background mode both often arrive in one read.
"""

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from . import qmp_trace

# migrate-set-capabilities that background-snapshot refuses next to it
# (qemu migration/options.c migrate_caps_check).
INCOMPATIBLE_WITH_BACKGROUND = (
    "postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate",
    "return-path", "multifd", "pause-before-switchover", "auto-converge",
    "release-ram", "rdma-pin-all", "compress", "xbzrle", "x-colo",
    "validate-uuid", "zero-copy-send",
)
FINAL_STATES = ("completed", "failed", "cancelled")
# max-bandwidth meaning "no limit": QEMU caps a migration at 128 MiB/s by
# default, which would make a stop-and-save pause a measure of that cap; a
# save to a file lifts it (so does libvirt for 'virsh save').
UNLIMITED_BANDWIDTH = (2**63 - 1) // 2**20 * 2**20


class QMPStepError(Exception):
    """A QMP step of the snapshot failed; carries the command and QEMU's reply."""

    def __init__(self, message: str, command: str = "", reply=None):
        super().__init__(message)
        self.command = command
        self.reply = reply

    @property
    def qemu_message(self) -> str:
        """QEMU's own error text (its ``desc``) when the reply carries one."""
        if isinstance(self.reply, dict) and self.reply.get("desc"):
            return str(self.reply["desc"])
        return str(self)


class MigrationFailed(QMPStepError):
    """query-migrate reached 'failed'/'cancelled' (or the wait timed out)."""


@dataclass(frozen=True)
class PauseWindow:
    stop_s: float           # QEMU's STOP timestamp (host clock, seconds)
    resume_s: float | None  # None: no RESUME seen (still paused)

    @property
    def pause_ms(self) -> float | None:
        if self.resume_s is None:
            return None
        return (self.resume_s - self.stop_s) * 1000.0


def event_time(event: dict) -> float:
    stamp = event["timestamp"]
    return stamp["seconds"] + stamp["microseconds"] / 1e6


def pause_windows(events: Iterable[dict]) -> list[PauseWindow]:
    """Pair every STOP with the next RESUME, in QEMU's timestamp order.

    A RESUME without a preceding STOP (the VM was started paused) is ignored;
    a trailing STOP without RESUME gives a window with ``resume_s=None``.
    """
    relevant = sorted((e for e in events if e.get("event") in ("STOP", "RESUME")),
                      key=event_time)
    windows, stop = [], None
    for event in relevant:
        if event["event"] == "STOP":
            if stop is None:
                stop = event_time(event)
        elif stop is not None:
            windows.append(PauseWindow(stop, event_time(event)))
            stop = None
    if stop is not None:
        windows.append(PauseWindow(stop, None))
    return windows


def total_pause_ms(windows: list[PauseWindow]) -> float | None:
    if not windows or any(w.resume_s is None for w in windows):
        return None
    return sum(w.pause_ms for w in windows)


class SnapshotQMP:
    """What the suite asks of one QEMU's monitor, and nothing more."""

    def __init__(self, monitor, log: Callable[[str], None] = lambda msg: None):
        self.monitor = monitor
        self.log = log

    def _cmd(self, command: str, args: dict | None = None, timeout: float = 60,
             debug: bool = True):
        try:
            reply = self.monitor.cmd(command, args, timeout=timeout, debug=debug)
        except Exception as exc:  # virttest raises QMPCmdError & co.
            qmp_trace.record(self.monitor, command, args, error=str(exc))
            raise QMPStepError(f"{command} failed: {exc}", command, getattr(exc, "data", None)) from exc
        qmp_trace.record(self.monitor, command, args, reply)
        return reply

    def capabilities(self) -> dict[str, bool]:
        reply = self._cmd("query-migrate-capabilities")
        return {item["capability"]: item["state"] for item in reply}

    def set_capabilities(self, caps: dict[str, bool]) -> None:
        self._cmd("migrate-set-capabilities", {
            "capabilities": [{"capability": k, "state": v} for k, v in caps.items()]})

    def enable_background_snapshot(self, extra: tuple[str, ...] = ()) -> None:
        """Turn off whatever background-snapshot refuses, then turn it on
        (with the ``extra`` capabilities a transport needs, e.g. mapped-ram).
        What ``extra`` asks for is never turned off first: a save asked to
        run with a capability QEMU should refuse keeps it when QEMU accepts
        (tests/bgsnap_capability.py)."""
        current = self.capabilities()
        if "background-snapshot" not in current:
            raise QMPStepError("this QEMU has no background-snapshot capability",
                               "query-migrate-capabilities", current)
        off = {c: False for c in INCOMPATIBLE_WITH_BACKGROUND if current.get(c) and c not in extra}
        if off:
            self.set_capabilities(off)
        self.set_capabilities({"background-snapshot": True, **{c: True for c in extra}})

    def qmp_schema(self) -> list[dict]:
        """query-qmp-schema: what this build's QMP offers (build options show)."""
        return self._cmd("query-qmp-schema", debug=False)

    def enable_plain_migration(self, extra: tuple[str, ...] = ()) -> None:
        """background-snapshot off (a classic migration), ``extra`` on."""
        self.set_capabilities({"background-snapshot": False, **{c: True for c in extra}})

    def set_max_bandwidth(self, bytes_per_s: int) -> None:
        """The migration rate cap (``UNLIMITED_BANDWIDTH`` lifts it)."""
        self._cmd("migrate-set-parameters", {"max-bandwidth": int(bytes_per_s)})

    def clear_events(self) -> None:
        self.monitor.clear_events()

    def events(self) -> list[dict]:
        return list(self.monitor.get_events())

    def migrate(self, uri: str) -> None:
        self._cmd("migrate", {"uri": uri})

    def query_migrate(self) -> dict:
        return self._cmd("query-migrate", debug=False)  # polled: keep the log readable

    def wait_migration(self, timeout: float, poll_s: float = 0.05,
                       progress: Callable[[dict], None] | None = None,
                       progress_every_s: float = 2.0) -> dict:
        """Poll query-migrate until a final state; return the final reply.

        The poll interval only bounds how soon we notice the end: no figure
        is derived from it.
        """
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + progress_every_s
        while True:
            info = self.query_migrate()
            status = info.get("status")
            if status in FINAL_STATES:
                if status != "completed":
                    raise MigrationFailed(
                        f"migration {status}: {info.get('error-desc', 'no error-desc')}",
                        "query-migrate", info)
                return info
            now = time.monotonic()
            if now > deadline:
                raise MigrationFailed(f"migration still '{status}' after {timeout:.0f}s",
                                      "query-migrate", info)
            if progress and now >= next_report:
                progress(info)
                next_report = now + progress_every_s
            time.sleep(poll_s)

    def wait_event(self, name: str, timeout: float, poll_s: float = 0.02) -> dict:
        """Return the first event ``name`` seen since the last clear_events()."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if event.get("event") == name:
                    return event
            if time.monotonic() > deadline:
                raise QMPStepError(f"no {name} event within {timeout:.0f}s", name)
            time.sleep(poll_s)

    def wait_resume(self, timeout: float, poll_s: float = 0.02) -> dict:
        """The RESUME event of a running save; a save that ends first
        (failed, cancelled) raises MigrationFailed then, not at ``timeout``."""
        deadline = time.monotonic() + timeout
        next_query = 0.0
        while True:
            for event in self.events():
                if event.get("event") == "RESUME":
                    return event
            now = time.monotonic()
            if now >= next_query:
                info = self.query_migrate()
                if info.get("status") in ("failed", "cancelled"):
                    raise MigrationFailed(
                        f"migration {info['status']} before the guest resumed: "
                        f"{info.get('error-desc', 'no error-desc')}", "query-migrate", info)
                next_query = now + 0.1
            if now > deadline:
                raise QMPStepError(f"no RESUME event within {timeout:.0f}s", "RESUME")
            time.sleep(poll_s)

    def migrate_cancel(self) -> None:
        self._cmd("migrate_cancel")

    def migrate_incoming(self, uri: str) -> None:
        self._cmd("migrate-incoming", {"uri": uri})

    def stop(self) -> None:
        self._cmd("stop")

    def status(self) -> str:
        return self._cmd("query-status")["status"]

    def cont(self) -> None:
        self._cmd("cont")

    def blockdev_add(self, options: dict) -> None:
        self._cmd("blockdev-add", options)

    def blockdev_del(self, node_name: str) -> None:
        self._cmd("blockdev-del", {"node-name": node_name})

    def blockdev_snapshot_sync(self, node_name: str, overlay: str, overlay_node: str) -> None:
        """External snapshot of ``node_name``: ``overlay`` (a qcow2 QEMU
        formats) becomes its active layer, the old image its frozen backing."""
        self._cmd("blockdev-snapshot-sync", {"node-name": node_name, "snapshot-file": overlay,
                                             "snapshot-node-name": overlay_node,
                                             "format": "qcow2", "mode": "absolute-paths"})

    def snapshot_disks_sync(self, snapshots: list[dict]) -> None:
        """One ``transaction`` of ``blockdev-snapshot-sync`` actions: every
        disk freezes at the same instant, or none does.  Each entry: the
        action's arguments (``node-name`` or ``device``, ``snapshot-file``,
        ...); qcow2, absolute backing paths."""
        actions = [{"type": "blockdev-snapshot-sync",
                    "data": {"format": "qcow2", "mode": "absolute-paths", **args}}
                   for args in snapshots]
        self._cmd("transaction", {"actions": actions})

    def named_block_node(self, node_name: str) -> dict:
        """query-named-block-nodes' entry for one node (its image info)."""
        for node in self._cmd("query-named-block-nodes", debug=False):
            if node.get("node-name") == node_name:
                return node
        raise QMPStepError(f"no block node {node_name!r}", "query-named-block-nodes")

    def run_job(self, command: str, args: dict, timeout: float, poll_s: float = 0.05) -> float:
        """Start a job (``args`` carries its ``job-id``), wait until it
        concludes, dismiss it; return its run time in seconds.  A job that
        ends with an error raises QMPStepError with QEMU's message."""
        job_id = args["job-id"]
        started = time.monotonic()
        self._cmd(command, args, timeout=timeout)
        while True:
            jobs = {j["id"]: j for j in self._cmd("query-jobs", debug=False)}
            job = jobs.get(job_id)
            if job is None:
                raise QMPStepError(f"{command}: job {job_id} vanished", "query-jobs", jobs)
            if job["status"] == "concluded":
                break
            if time.monotonic() - started > timeout:
                raise QMPStepError(f"{command}: job {job_id} still '{job['status']}' "
                                   f"after {timeout:.0f}s", "query-jobs", job)
            time.sleep(poll_s)
        elapsed = time.monotonic() - started
        self._cmd("job-dismiss", {"id": job_id})
        if job.get("error"):
            raise QMPStepError(f"{command} failed: {job['error']}", command, job)
        return elapsed

    def balloon(self, target_bytes: int) -> None:
        self._cmd("balloon", {"value": int(target_bytes)})

    def balloon_actual(self) -> int:
        """The guest's memory as the balloon says (bytes)."""
        return int(self._cmd("query-balloon", debug=False)["actual"])

    def qom_get(self, path: str, prop: str):
        return self._cmd("qom-get", {"path": path, "property": prop}, debug=False)

    def qom_set(self, path: str, prop: str, value) -> None:
        self._cmd("qom-set", {"path": path, "property": prop, "value": value})

    def system_wakeup(self) -> None:
        self._cmd("system_wakeup")

    def dump_guest_memory(self, path: str, timeout: float) -> None:
        """Dump all guest RAM (ELF, no paging) synchronously into ``path``."""
        self._cmd("dump-guest-memory", {"paging": False, "protocol": "file:" + path},
                  timeout=timeout)

"""Take a background snapshot of a running VM into a file, and restore it.

The snapshot is streamed to ``<name>.partial`` and renamed to its final name
only once QEMU reports ``completed``: a half-written file is never presented
as a snapshot, and a failed save leaves nothing behind.
"""

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import vt_compat
from .transport import Transport
from .qmp import (UNLIMITED_BANDWIDTH, MigrationFailed, PauseWindow, QMPStepError,
                  SnapshotQMP, pause_windows, total_pause_ms)


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    snapshot_bytes: int
    pause_windows: tuple[PauseWindow, ...]
    pause_ms: float | None          # sum of STOP->RESUME windows (QEMU stamps)
    downtime_ms: float | None       # QEMU's own figure (query-migrate)
    setup_ms: float | None          # QEMU's own figure (query-migrate)
    total_s: float                  # migrate command -> completed seen
    ram_transferred_bytes: int
    ram_total_bytes: int
    raw_events: tuple[dict, ...] = field(default=(), repr=False)


# A file holding guest memory (snapshot, dump, qcow2) is its owner's only.
PRIVATE_MODE = 0o600


def create_private(path: Path) -> Path:
    """An empty ``path`` of mode 0600 whatever the umask, replacing any old
    file.  What writes into it then keeps that mode: a shell's ``>``,
    QEMU's ``file:`` and ``dump-guest-memory``, and ``qemu-img create`` open
    an existing file with O_TRUNC (measured: docs/privileges.md).  Created
    by them it would be 0644 under umask 022 (a shell, qemu-img)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # the umask may have taken bits off
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def written_atomically(path: Path):
    """Yield ``<path>.partial``, created empty and private (see
    :func:`create_private`), to write; rename it to ``path`` when the block
    succeeds, remove it when it fails: a half-written file never carries the
    snapshot's name."""
    partial = path.with_name(path.name + ".partial")
    create_private(partial)
    try:
        yield partial
        # a writer that replaced the file (a custom exec: template) made it anew
        os.chmod(partial, PRIVATE_MODE)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


def take_background_snapshot(qmp: SnapshotQMP, transport: Transport, path: Path, timeout: float,
                             log: Callable[[str], None] = lambda m: None,
                             on_resume: Callable[[], None] | None = None,
                             on_started: Callable[[], None] | None = None) -> SnapshotResult:
    """Snapshot the running VM behind ``qmp`` into ``path`` via ``transport``.

    ``on_started`` is called as soon as the ``migrate`` command returned
    (QEMU is still setting up; the guest may be about to stop);
    ``on_resume`` as soon as QEMU's RESUME event is seen (the guest runs
    again, the RAM is still being saved).  A save that ends before its
    RESUME raises :class:`MigrationFailed` at once, not after ``timeout``.
    """
    qmp.enable_background_snapshot(transport.capabilities)
    qmp.clear_events()
    started = time.monotonic()
    with written_atomically(path) as partial:
        qmp.migrate(transport.save_uri(partial))
        if on_started is not None:
            on_started()
        if on_resume is not None:
            qmp.wait_resume(timeout)
            try:
                on_resume()
            except Exception as exc:
                _raise_if_migration_failed(qmp, exc)
                raise
        info = qmp.wait_migration(timeout, progress=_progress_logger(log, started))
        total_s = time.monotonic() - started
    return _result(qmp, path, info, total_s)


def take_migration_image(qmp: SnapshotQMP, transport: Transport, path: Path, timeout: float,
                         log: Callable[[str], None] = lambda m: None, stop_first: bool = True,
                         resume: bool = True, extra_caps: tuple[str, ...] = (),
                         max_bandwidth: int = UNLIMITED_BANDWIDTH) -> SnapshotResult:
    """A snapshot without background-snapshot.

    ``stop_first``: the classic snapshot (stop, migrate, cont): the pause is
    the whole save, and QEMU's ``downtime`` does not say so.  Otherwise a
    precopy migration of the running guest into the file: QEMU stops it at
    the end (the image is that END state) and leaves it in postmigrate;
    ``resume`` continues it.  ``max_bandwidth`` (bytes/s) is the migration
    rate cap; QEMU's default of 128 MiB/s would dominate a stop-and-save
    pause, so it is lifted unless a cap is asked for.
    """
    qmp.enable_plain_migration(tuple(transport.capabilities) + tuple(extra_caps))
    qmp.set_max_bandwidth(max_bandwidth)
    qmp.clear_events()
    started = time.monotonic()
    if stop_first:
        qmp.stop()
    try:
        with written_atomically(path) as partial:
            qmp.migrate(transport.save_uri(partial))
            info = qmp.wait_migration(timeout, progress=_progress_logger(log, started))
            total_s = time.monotonic() - started
    finally:
        if resume:
            qmp.cont()
    if resume:
        qmp.wait_event("RESUME", timeout)
    return _result(qmp, path, info, total_s)


def _progress_logger(log: Callable[[str], None], started: float) -> Callable[[dict], None]:
    def progress(info: dict) -> None:
        ram = info.get("ram", {})
        log("snapshot %s: %.0f/%.0f MiB saved, %.1fs" % (
            info.get("status"), ram.get("transferred", 0) / 2**20,
            ram.get("total", 0) / 2**20, time.monotonic() - started))
    return progress


def snapshot_result(qmp: SnapshotQMP, path: Path, total_s: float, *,
                    downtime_ms: float | None = None, setup_ms: float | None = None,
                    transferred_bytes: int = 0, total_bytes: int = 0) -> SnapshotResult:
    """The result of a save into ``path``: the pause from the STOP/RESUME
    events ``qmp`` collected since it cleared them, the rest as given."""
    events = tuple(qmp.events())
    windows = tuple(pause_windows(events))
    return SnapshotResult(
        path=path,
        snapshot_bytes=path.stat().st_size,
        pause_windows=windows,
        pause_ms=total_pause_ms(list(windows)),
        downtime_ms=downtime_ms,
        setup_ms=setup_ms,
        total_s=total_s,
        ram_transferred_bytes=transferred_bytes,
        ram_total_bytes=total_bytes,
        raw_events=events,
    )


def _result(qmp: SnapshotQMP, path: Path, info: dict, total_s: float) -> SnapshotResult:
    """A migration's result, with QEMU's own figures from query-migrate."""
    ram = info.get("ram", {})
    return snapshot_result(qmp, path, total_s, downtime_ms=info.get("downtime"),
                           setup_ms=info.get("setup-time"),
                           transferred_bytes=int(ram.get("transferred", 0)),
                           total_bytes=int(ram.get("total", 0)))


def _raise_if_migration_failed(qmp: SnapshotQMP, cause: Exception) -> None:
    """A step failed during the save: if the save itself failed, say that."""
    try:
        info = qmp.query_migrate()
    except QMPStepError:
        return
    if info.get("status") in ("failed", "cancelled"):
        raise MigrationFailed(
            "migration %s: %s (and then the guest stopped answering: %s)"
            % (info["status"], info.get("error-desc", "no error-desc"), cause),
            "query-migrate", info) from cause


@contextlib.contextmanager
def paused_clone(vm, extra_params: str = "", param_overrides: dict | None = None,
                 **create_kwargs):
    """A second QEMU with ``vm``'s configuration (``param_overrides``
    changed, e.g. another memory backend), left paused (avocado-vt
    starts every QEMU with -S; ``paused_after_start_vm`` keeps it so): the
    restored guest has not executed a single instruction when this yields.
    Leaving the block always stops it."""
    params = vm.params.copy()
    params.update(param_overrides or {})
    params["extra_params"] = params.get("extra_params", "") + extra_params
    params["paused_after_start_vm"] = "yes"
    clone = vm.clone(params=params)
    try:
        try:
            clone.create(**create_kwargs)
        except Exception as exc:  # VMCreateError, a monitor that hung up, ...
            # a restoring QEMU that exits while it starts could not load
            raise_if_exited(clone, "restore", exc)
            raise
        yield clone
    finally:
        vt_compat.shutdown_bounded(clone)
        clone.destroy(gracefully=False)


def raise_if_exited(clone, what: str, exc: Exception) -> None:
    """A QMP step of a restore failed: when the restoring QEMU is gone, say
    so with the last of its output (QEMU prints why it could not load)."""
    if exits_soon(clone):
        # a VMCreateError carries QEMU's output; virttest has closed the process by then
        output = getattr(exc, "output", None) or (clone.process.get_output()
                                                  if clone.process else "")
        raise MigrationFailed(f"{what} failed, the restoring QEMU exited: "
                              + qemu_said(output)) from exc


QEMU_ERROR = re.compile(r"qemu-system-[\w-]+: (.+)")


def qemu_said(output: str, limit: int = 500) -> str:
    """QEMU's own error lines in a process output (``qemu-system-x86_64:
    ...``), without the command line avocado-vt echoes before them; the
    output's tail when it has none."""
    said = [m.group(1).strip() for m in QEMU_ERROR.finditer(output or "")]
    text = " | ".join(dict.fromkeys(said)) if said else " ".join((output or "").split())
    return text[-limit:] if text else "no output"


@contextlib.contextmanager
def restored_vm(vm, transport: Transport, path: Path, timeout: float,
                log: Callable[[str], None] = lambda m: None,
                param_overrides: dict | None = None,
                on_created: Callable[[object], None] | None = None):
    """A second QEMU restored from the migration stream in ``path``, paused
    (see :func:`paused_clone`); yields (clone, qmp).  ``on_created(clone)``
    runs once the clone's QEMU is up and loading, before the wait."""
    uri = transport.restore_uri(path)
    if transport.restore_is_exec:
        clone_cm = paused_clone(vm, param_overrides=param_overrides, migration_mode="exec",
                                migration_exec_cmd=uri[len("exec:"):], timeout=timeout)
    else:
        # file: needs -incoming defer + migrate-incoming (capabilities first)
        clone_cm = paused_clone(vm, " -incoming defer", param_overrides, timeout=timeout)
    with clone_cm as clone:
        qmp = SnapshotQMP(clone.monitor, log)
        started = time.monotonic()
        try:
            if not transport.restore_is_exec:
                if transport.capabilities:
                    qmp.set_capabilities({c: True for c in transport.capabilities})
                qmp.migrate_incoming(uri)
            if on_created is not None:
                on_created(clone)
            qmp.wait_migration(timeout)
        except QMPStepError as exc:
            raise_if_exited(clone, "restore", exc)
            raise
        log("restored %s in %.1fs (status %s)" % (path.name, time.monotonic() - started,
                                                  qmp.status()))
        yield clone, qmp


def exits_soon(vm, within_s: float = 3.0) -> bool:
    """True when ``vm``'s QEMU is gone or goes within ``within_s`` (a QMP
    error often arrives just before the process is reaped)."""
    deadline = time.monotonic() + within_s
    while not vm.is_dead():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def damage_guest_page(path: Path, needle: bytes, offset_in_page: int = 512) -> int:
    """Flip one byte of the first guest page in the snapshot file that starts
    with ``needle``; return the file offset flipped.  Used by the negative
    control: the verifier must catch it."""
    chunk = 16 * 2**20
    with open(path, "r+b") as f:
        base = 0
        while True:
            f.seek(base)
            data = f.read(chunk + len(needle))
            if len(data) < len(needle):
                raise ValueError(f"no page starting with {needle.hex()} in {path}")
            pos = data.find(needle)
            if pos >= 0:
                target = base + pos + offset_in_page
                f.seek(target)
                old = f.read(1)
                f.seek(target)
                f.write(bytes([old[0] ^ 0xFF]))
                return target
            base += chunk

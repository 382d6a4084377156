"""Whole-VM snapshots, the disk half (docs/disk.md): the guest's journal
disk, its external snapshot at the RAM's instant, the fresh overlay a
restore runs on, and the host's look at the frozen base.

The disk is a qcow2 the test makes (``mkfs.ext4`` on a raw file, converted
with ``qemu-img``), given to QEMU as ``-blockdev`` + ``virtio-blk-pci`` with
a serial the guest finds it by.  At the snapshot the guest is stopped,
``blockdev-snapshot-sync`` puts a new overlay on top (the base is frozen
from then on: the source writes into the overlay), the background snapshot
of the RAM is started, and the guest runs again once QEMU has write-
protected its RAM.  A restore runs a second QEMU on a fresh overlay over
the frozen base, so the base stays as it was at the snapshot.

Every file is named ``bgsnap-disk-*`` in the snapshot dir (leftovers.py
looks for them) and is created 0600 before QEMU or a tool writes it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import snapshot
from .qmp import MigrationFailed, QMPStepError, SnapshotQMP
from .transport import Transport

DISK_STEM = "bgsnap-disk"
NODE = "bgsnap-journal"
OVERLAY_NODE = "bgsnap-journal-overlay"
DEVICE_ID = "bgsnap-journal-dev"
SERIAL = "bgsnap-journal"
LABEL = "bgsnap-jrnl"
GUEST_MOUNT = "/mnt/bgsnap-journal"
JOURNAL_NAME = "journal.bin"
FORMS = ("background", "internal")
# How often the wait for QEMU's write protection asks query-migrate, and the
# grace after it before 'cont' (see wait_ram_protected).
POLL_S = 0.005
CONT_GRACE_S = 0.02
# Values a path must not carry into QEMU's key=value option syntax.
_UNSAFE_PATH = re.compile(r"[,\s'\"=]")


class DiskError(Exception):
    """A disk step of the harness failed (a tool, a file): an ERROR."""


@dataclass(frozen=True)
class DiskSettings:
    form: str            # bgsnap_disk_form: background (external) | internal (snapshot-save)
    disk_mib: int        # bgsnap_disk_mib: the journal disk's size
    journal_ms: int      # bgsnap_journal_ms: one fsynced record every N ms
    skew_s: float        # bgsnap_disk_skew_s: negative control; < 0 disk frozen earlier
                         # than the RAM, > 0 later, 0: the same instant (the test)

    @property
    def negative(self) -> bool:
        return self.skew_s != 0


@dataclass(frozen=True)
class DiskFiles:
    base: Path        # the disk the guest boots with; frozen by the external snapshot
    overlay: Path     # the source's active layer after it (QEMU creates it)
    restore: Path     # the restored QEMU's fresh overlay on the base
    scratch: Path     # a raw copy of the frozen disk for e2fsck / debugfs
    journal: Path     # the journal file read out of the scratch copy

    @classmethod
    def in_dir(cls, directory: Path) -> "DiskFiles":
        files = cls(*(Path(directory) / f"{DISK_STEM}-{name}" for name in (
            "base.qcow2", "overlay.qcow2", "restore.qcow2", "fsck.raw", "journal.bin")))
        for path in files.all():
            if _UNSAFE_PATH.search(str(path)):
                raise DiskError(f"the snapshot dir {directory} holds a character QEMU's "
                                f"-blockdev syntax cannot take (comma, space, quote, '=')")
        return files

    def all(self) -> tuple[Path, ...]:
        return (self.base, self.overlay, self.restore, self.scratch, self.journal)

    def remove(self, keep_images: bool = False) -> None:
        for path in self.all():
            if keep_images and path in (self.base, self.overlay, self.restore):
                continue
            path.unlink(missing_ok=True)


# A guest with its own root disk (a distro guest, cfg/guests.cfg: image 'root',
# given as -drive): avocado-vt's drive id for it.
ROOT_IMAGE = "root"
ROOT_DEVICE = "drive_root"


@dataclass(frozen=True)
class RootDisk:
    """A distro guest's root disk, frozen together with the journal disk.

    The guest boots on ``active``, an overlay on its pristine image, instead
    of QEMU's temporary ``snapshot=on`` overlay (which no second QEMU can
    open).  At the snapshot ``active`` freezes with the journal disk in one
    QMP transaction, and the restored QEMU runs on a fresh overlay on it, so
    the restored guest's root file system is the one of the RAM's instant."""

    base: Path      # the guest's pristine image: never written
    active: Path    # the source's root until the snapshot, then frozen
    overlay: Path   # the source's active layer after the snapshot (QEMU creates it)
    restore: Path   # the restored QEMU's fresh overlay on ``active``

    @classmethod
    def of(cls, params, directory: Path) -> "RootDisk | None":
        """The root disk of a guest that boots from one (None: busybox)."""
        if ROOT_IMAGE not in params.objects("images"):
            return None
        image = params.object_params(ROOT_IMAGE)
        base = Path(image["image_name"] + "." + image.get("image_format", "qcow2"))
        return cls(base.resolve(), *(Path(directory) / f"{DISK_STEM}-root-{name}.qcow2"
                                     for name in ("active", "overlay", "restore")))

    def all(self) -> tuple[Path, ...]:
        return (self.active, self.overlay, self.restore)

    @staticmethod
    def params(image: Path) -> dict[str, str]:
        """avocado-vt params that boot the root from ``image`` (a .qcow2)."""
        return {f"image_name_{ROOT_IMAGE}": str(image.with_suffix("")),
                f"image_snapshot_{ROOT_IMAGE}": "no", f"image_format_{ROOT_IMAGE}": "qcow2"}


TOOLS = ("qemu-img", "mkfs.ext4", "e2fsck", "debugfs")
# e2fsprogs installs into /sbin, which a user's PATH often lacks
SBIN = "/usr/sbin:/sbin"


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=SBIN)


def unsupported_reason(tools=TOOLS) -> str | None:
    """Why this host cannot run the whole-VM test, or None."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        return (f"the whole-VM snapshot needs {', '.join(missing)} on the host "
                f"(Debian: qemu-utils, e2fsprogs)")
    return None


def _tool(argv: list[str], what: str, ok=(0,)) -> subprocess.CompletedProcess:
    argv = [which(argv[0]) or argv[0]] + list(argv[1:])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode not in ok:
        raise DiskError(f"{what}: {shlex.join(argv)} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc


# -- the disk ---------------------------------------------------------------
def create_disk(files: DiskFiles, mib: int) -> None:
    """A fresh ext4 in ``files.base`` (qcow2, 0600): mkfs on a raw file (no
    root needed), converted.  Inode tables and the journal are written now,
    so no lazy init writes in the guest's background."""
    raw = files.scratch
    snapshot.create_private(raw)
    try:
        with open(raw, "r+b") as f:
            f.truncate(mib * 2**20)
        _tool(["mkfs.ext4", "-q", "-F", "-L", LABEL,
               "-E", "lazy_itable_init=0,lazy_journal_init=0", str(raw)], "mkfs.ext4")
        snapshot.create_private(files.base)
        _tool(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
               str(files.base)], "qemu-img convert")
    finally:
        raw.unlink(missing_ok=True)


def create_overlay(overlay: Path, backing: Path) -> None:
    """A fresh qcow2 ``overlay`` on ``backing`` (0600): what the restored QEMU
    writes into, so the backing stays as it is."""
    snapshot.create_private(overlay)
    _tool(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "qcow2",
           str(overlay)], "qemu-img create (overlay)")


def qemu_args(image: Path) -> str:
    """The journal disk on QEMU's command line (avocado-vt's extra_params)."""
    return (f" -blockdev driver=qcow2,node-name={NODE},file.driver=file,"
            f"file.filename={image} -device virtio-blk-pci,drive={NODE},id={DEVICE_ID},"
            f"serial={SERIAL}")


# -- QMP: the snapshot --------------------------------------------------------
def freeze_disk(qmp: SnapshotQMP, overlay: Path, root: RootDisk | None = None) -> float:
    """``blockdev-snapshot-sync``: the disk's current image becomes the
    frozen base, ``overlay`` (created 0600 first, QEMU formats it) the
    active layer.  QEMU drains and flushes the disk first.  With ``root``,
    the guest's root disk freezes with it, in one transaction.  Returns the
    seconds the command took."""
    snapshot.create_private(overlay)
    started = time.monotonic()
    if root is None:
        qmp.blockdev_snapshot_sync(NODE, str(overlay), OVERLAY_NODE)
    else:
        snapshot.create_private(root.overlay)
        qmp.snapshot_disks_sync([
            {"node-name": NODE, "snapshot-file": str(overlay), "snapshot-node-name": OVERLAY_NODE},
            {"device": ROOT_DEVICE, "snapshot-file": str(root.overlay)}])
    return time.monotonic() - started


def wait_ram_protected(qmp: SnapshotQMP, timeout: float) -> dict:
    """After ``migrate`` of a guest we stopped: wait until QEMU's save
    thread has taken the RAM's instant (stopped the VM, write-protected the
    RAM, scheduled the guest's restart) and return that query-migrate.

    QEMU saves RAM pages only in its iterations, which begin after that
    setup (bg_migration_thread): pages counted, or ``completed``, prove it.
    QEMU 7.2 then starts the guest itself (RESUME); 9.0+ puts back the run
    state it found (paused) in a bottom half scheduled before the first
    iteration, which ``cont`` must not overtake (a bottom half run after
    'cont' would mark the running guest paused): the caller waits
    :data:`CONT_GRACE_S` before it."""
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.query_migrate()
        status = info.get("status")
        ram = info.get("ram", {})
        if status == "completed" or ram.get("normal", 0) + ram.get("duplicate", 0) > 0:
            return info
        if status in ("failed", "cancelled"):
            raise MigrationFailed(
                f"migration {status} before the RAM was protected: "
                f"{info.get('error-desc', 'no error-desc')}", "query-migrate", info)
        if time.monotonic() > deadline:
            raise QMPStepError(f"the background snapshot saved no RAM within {timeout:.0f}s "
                               f"(status {status})", "query-migrate", info)
        time.sleep(POLL_S)


@dataclass(frozen=True)
class DiskStep:
    disk_s: float           # blockdev-snapshot-sync, host wall time
    skew_s: float           # asked: disk frozen this long before (< 0) / after the RAM
    order: str              # "stop, disk, ram, cont" or what the negative control did


def take_whole_vm_snapshot(qmp: SnapshotQMP, transport: Transport, ram_path: Path,
                           files: DiskFiles, timeout: float, log: Callable[[str], None],
                           on_resume: Callable[[], None], skew_s: float = 0.0,
                           root: RootDisk | None = None
                           ) -> tuple[snapshot.SnapshotResult, DiskStep]:
    """Disk and RAM of the running VM at one instant: stop, freeze the
    disk, start the background snapshot, let the guest run once the RAM is
    protected, stream the RAM.  The pause (STOP -> RESUME, QEMU's stamps)
    holds the disk step.

    ``skew_s`` is the negative control: the disk frozen that many seconds
    before (< 0) or after (> 0) the RAM's instant, the guest running
    between the two.  ``root``: the guest's root disk freezes with the
    journal disk."""
    if skew_s < 0:
        disk_s = freeze_disk(qmp, files.overlay, root)
        log("negative control: disk frozen %.1fs before the RAM" % -skew_s)
        time.sleep(-skew_s)
        result = snapshot.take_background_snapshot(qmp, transport, ram_path, timeout, log,
                                                   on_resume=on_resume)
        return result, DiskStep(round(disk_s, 4), skew_s, "disk, wait, ram")
    if skew_s > 0:
        result = snapshot.take_background_snapshot(qmp, transport, ram_path, timeout, log,
                                                   on_resume=on_resume)
        time.sleep(skew_s)
        disk_s = freeze_disk(qmp, files.overlay, root)
        log("negative control: disk frozen %.1fs after the RAM" % skew_s)
        return result, DiskStep(round(disk_s, 4), skew_s, "ram, wait, disk")
    qmp.enable_background_snapshot(transport.capabilities)
    qmp.clear_events()
    started = time.monotonic()
    qmp.stop()
    qmp.wait_event("STOP", timeout)
    with snapshot.written_atomically(ram_path) as partial:
        try:
            disk_s = freeze_disk(qmp, files.overlay, root)
            qmp.migrate(transport.save_uri(partial))
            wait_ram_protected(qmp, timeout)
        finally:
            if qmp.status() == "paused":
                time.sleep(CONT_GRACE_S)
                qmp.cont()
        qmp.wait_resume(timeout)
        on_resume()
        info = qmp.wait_migration(timeout)
        total_s = time.monotonic() - started
    ram = info.get("ram", {})
    result = snapshot.snapshot_result(
        qmp, ram_path, total_s, downtime_ms=info.get("downtime"),
        setup_ms=info.get("setup-time"), transferred_bytes=int(ram.get("transferred", 0)),
        total_bytes=int(ram.get("total", 0)))
    status = qmp.status()
    if status != "running":
        raise QMPStepError(f"the source is '{status}' after the whole-VM snapshot, not "
                           f"running", "query-status", status)
    return result, DiskStep(round(disk_s, 4), 0.0, "stop, disk, ram, cont")


# -- the host's look at the frozen disk ---------------------------------------
@dataclass(frozen=True)
class FsckResult:
    replay_exit: int       # e2fsck -E journal_only: the ext4 journal replayed
    check_exit: int        # e2fsck -fn after it: 0 = consistent
    output: str

    @property
    def consistent(self) -> bool:
        return self.check_exit == 0

    def summary(self) -> str:
        return (f"e2fsck: journal replay exit {self.replay_exit}, check exit "
                f"{self.check_exit} ({'clean' if self.consistent else 'INCONSISTENT'})")


def read_frozen_disk(files: DiskFiles, source: Path, snapshot_tag: str | None = None
                     ) -> tuple[FsckResult, bytes | None]:
    """Copy the frozen disk (``source``, or its internal snapshot
    ``snapshot_tag``) to a raw scratch file, replay the ext4 journal there
    as a mount would, check the file system (``e2fsck -fn``) and read the
    journal file out of it (None if it is not there).  The image itself is
    only read."""
    snapshot.create_private(files.scratch)
    try:
        argv = ["qemu-img", "convert", "-q", "-U", "-O", "raw"]
        if snapshot_tag:
            argv += ["-l", f"snapshot.name={snapshot_tag}"]
        _tool(argv + [str(source), str(files.scratch)], "qemu-img convert (frozen disk)")
        # exit 0/1: nothing to replay / replayed; more is an e2fsck failure
        replay = _tool(["e2fsck", "-E", "journal_only", "-y", str(files.scratch)],
                       "e2fsck -E journal_only", ok=(0, 1))
        check = _tool(["e2fsck", "-f", "-n", str(files.scratch)], "e2fsck -fn",
                      ok=(0, 1, 4))
        fsck = FsckResult(replay.returncode, check.returncode,
                          (replay.stdout + check.stdout + check.stderr).strip()[-1500:])
        snapshot.create_private(files.journal)
        _tool(["debugfs", "-R", f"dump /{JOURNAL_NAME} {files.journal}", str(files.scratch)],
              "debugfs dump")
        data = files.journal.read_bytes() if files.journal.stat().st_size else None
        return fsck, data
    finally:
        files.scratch.unlink(missing_ok=True)
        files.journal.unlink(missing_ok=True)


# -- the guest side -------------------------------------------------------------
_DEVICE = re.compile(r"BGSNAP-DISK=(\S*)")


def guest_device_command(serial: str = SERIAL) -> str:
    """Shell text that prints the disk with ``serial`` as BGSNAP-DISK=<dev>:
    by its udev link where there is one (a distro guest), else by the
    virtio-blk serial in sysfs (the busybox guest has no udev).  The marker
    is split in the text, so the echoed command never matches."""
    return (f'd=; l=/dev/disk/by-id/virtio-{serial}; [ -e $l ] && d=$(readlink -f $l); '
            f'for b in /sys/block/vd*; do [ -z "$d" ] && '
            f'[ "$(cat $b/serial 2>/dev/null)" = "{serial}" ] && d=/dev/${{b##*/}}; done; '
            f'echo "BGSNAP""-DISK=$d"')


def parse_guest_device(text: str) -> str | None:
    found = _DEVICE.findall(text or "")
    return found[-1] if found and found[-1] else None


def mount_journal_disk(session, timeout: float = 60) -> str:
    """Find the journal disk in the guest by its serial and mount it; returns
    the device."""
    device = parse_guest_device(session.cmd_output(guest_device_command(), timeout=timeout))
    if device is None:
        listing = session.cmd_output("ls /sys/block; cat /sys/block/vd*/serial", timeout=timeout)
        raise DiskError(f"the guest has no virtio disk with serial {SERIAL} (virtio_blk "
                        f"loaded? bgsnap.modules on the kernel command line): "
                        f"{' '.join(listing.split())[:300]}")
    status, output = session.cmd_status_output(
        f"mkdir -p {GUEST_MOUNT} && mount -t ext4 {device} {GUEST_MOUNT}", timeout=timeout)
    if status != 0:
        raise DiskError(f"mount -t ext4 {device} in the guest failed: {output.strip()[-300:]}")
    return device


def journal_args(journal_ms: int) -> tuple[str, ...]:
    """The workload's options for its journal on the mounted disk."""
    return ("--journal", f"{GUEST_MOUNT}/{JOURNAL_NAME}", "--journal-ms", str(journal_ms))

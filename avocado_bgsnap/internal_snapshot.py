"""Internal snapshots: the ``snapshot-save`` / ``snapshot-load`` jobs (QEMU 6.0+).

QEMU stops the guest, writes RAM and device state into a qcow2 image (next
to the disk data, as ``savevm`` does) and resumes it: the pause is the
whole save, like stop_save, but through the block layer instead of a
migration stream.

The guest has no disk, so the suite gives QEMU a qcow2 of its own: created
with ``qemu-img``, attached with ``blockdev-add`` as a node no device uses,
named as both ``vmstate`` and the only snapshotted device, and detached
once saved.  Detaching releases QEMU's image lock, so the second QEMU can
open it to ``snapshot-load`` while the source keeps running.
"""

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from . import snapshot
from .qmp import QMPStepError, SnapshotQMP

NODE = "bgsnap-vmstate"
TAG = "bgsnap"
SUFFIX = ".qcow2"
# The virtual disk size; the vmstate lives after it and grows the file.
DISK_SIZE = "1M"
MIN_QEMU = (6, 0, 0)


class InternalSnapshotError(Exception):
    """The qcow2 image for an internal snapshot could not be prepared."""


def unsupported_reason(qemu_version: tuple[int, int, int]) -> str | None:
    """Why this host cannot take internal snapshots the suite's way, or None."""
    if tuple(qemu_version) < MIN_QEMU:
        return ("mode snapshot_save needs the snapshot-save job of QEMU 6.0+, this QEMU is "
                + ".".join(map(str, qemu_version)))
    if shutil.which("qemu-img") is None:
        return "mode snapshot_save needs qemu-img (Debian package qemu-utils)"
    return None


def create_image(path: Path) -> None:
    """A fresh, empty qcow2 at ``path`` (replacing any old one), mode 0600:
    ``qemu-img create`` keeps an existing file's mode (it would create a new
    one 0644), so the file is made private first."""
    try:
        snapshot.create_private(path)
    except OSError as exc:
        raise InternalSnapshotError(f"qemu-img create {path}: cannot create it: {exc}") from exc
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), DISK_SIZE],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InternalSnapshotError(f"qemu-img create {path} failed: "
                                    f"{(proc.stderr or proc.stdout).strip()}")


def _node_options(path: Path) -> dict:
    return {"driver": "qcow2", "node-name": NODE,
            "file": {"driver": "file", "filename": str(path)}}


def _job_args(job_id: str, vmstate: str = NODE, devices: tuple[str, ...] = (NODE,)) -> dict:
    return {"job-id": job_id, "tag": TAG, "vmstate": vmstate, "devices": list(devices)}


@contextlib.contextmanager
def _attached(qmp: SnapshotQMP, path: Path):
    qmp.blockdev_add(_node_options(path))
    try:
        yield
    except BaseException:
        with contextlib.suppress(QMPStepError):  # keep the first error
            qmp.blockdev_del(NODE)
        raise
    qmp.blockdev_del(NODE)


def vmstate_size(qmp: SnapshotQMP) -> int:
    """Bytes of saved VM state in the attached image's snapshot ``TAG``."""
    image = qmp.named_block_node(NODE).get("image", {})
    for snap in image.get("snapshots", []):
        if snap.get("name") == TAG:
            return int(snap.get("vm-state-size", 0))
    raise QMPStepError(f"no snapshot {TAG!r} in {NODE}", "query-named-block-nodes", image)


def take_internal_snapshot(qmp: SnapshotQMP, path: Path, timeout: float,
                           log: Callable[[str], None] = lambda m: None
                           ) -> snapshot.SnapshotResult:
    """``snapshot-save`` of the running VM into a new qcow2 at ``path``.

    The image is built as ``<path>.partial`` and renamed when the job has
    concluded without error and the node is detached.
    """
    with snapshot.written_atomically(path) as partial:
        create_image(partial)
        with _attached(qmp, partial):
            qmp.clear_events()
            total_s = qmp.run_job("snapshot-save", _job_args("bgsnap-save"), timeout)
            state_bytes = vmstate_size(qmp)
    log("snapshot-save: %.0f MiB of VM state in %.1fs" % (state_bytes / 2**20, total_s))
    # QEMU gives no downtime for it: not a migration
    return snapshot.snapshot_result(qmp, path, total_s, transferred_bytes=state_bytes,
                                    total_bytes=state_bytes)


def take_disk_snapshot(qmp: SnapshotQMP, image: Path, node: str, timeout: float,
                       log: Callable[[str], None] = lambda m: None
                       ) -> snapshot.SnapshotResult:
    """``snapshot-save`` of the running VM with its disk: the guest's own
    qcow2 disk (block node ``node``, file ``image``) takes the internal
    snapshot ``TAG`` of its data and holds the VM state, as ``savevm`` does."""
    qmp.clear_events()
    total_s = qmp.run_job("snapshot-save", _job_args("bgsnap-save", node, (node,)), timeout)
    log("snapshot-save with the disk %s in %.1fs" % (node, total_s))
    return snapshot.snapshot_result(qmp, image, total_s)


@contextlib.contextmanager
def restored_vm(vm, path: Path, timeout: float, log: Callable[[str], None] = lambda m: None):
    """A second QEMU, paused, with the internal snapshot in ``path`` loaded
    (``snapshot-load`` keeps a VM that was not running paused); yields
    (clone, qmp)."""
    with snapshot.paused_clone(vm, timeout=timeout) as clone:
        qmp = SnapshotQMP(clone.monitor, log)
        try:
            qmp.blockdev_add(_node_options(path))
        except QMPStepError as exc:
            snapshot.raise_if_exited(clone, "snapshot-load", exc)
            raise
        _load(clone, qmp, NODE, (NODE,), timeout, log, path.name)
        yield clone, qmp


@contextlib.contextmanager
def restored_disk_vm(vm, node: str, timeout: float, log: Callable[[str], None] = lambda m: None,
                     param_overrides: dict | None = None):
    """A second QEMU, paused, whose disk (block node ``node``, on its
    command line) holds the snapshot of :func:`take_disk_snapshot`:
    ``snapshot-load`` puts back the disk's data and the VM state."""
    with snapshot.paused_clone(vm, param_overrides=param_overrides, timeout=timeout) as clone:
        qmp = SnapshotQMP(clone.monitor, log)
        _load(clone, qmp, node, (node,), timeout, log, node)
        yield clone, qmp


def _load(clone, qmp: SnapshotQMP, vmstate: str, devices: tuple[str, ...], timeout: float,
          log: Callable[[str], None], name: str) -> None:
    try:
        seconds = qmp.run_job("snapshot-load", _job_args("bgsnap-load", vmstate, devices),
                              timeout)
    except QMPStepError as exc:
        snapshot.raise_if_exited(clone, "snapshot-load", exc)
        raise
    log("snapshot-load of %s in %.1fs (status %s)" % (name, seconds, qmp.status()))

"""The whole-VM snapshot cycle (docs/disk.md): the snapshot cycle of
cycle.py with the guest's journal disk frozen at the RAM's instant.

:class:`WholeVMCycle` overrides four steps of :class:`~.cycle.SnapshotCycle`
and adds one; the rest (workload, source check, host and guest
verification of the RAM, the point-in-time check, the gates) is the cycle's:

* ``_take``: stop, disk, RAM, continue (``background``), or ``snapshot-save``
  with the disk (``internal``);
* ``_restored_vm``: the second QEMU on a fresh overlay over the frozen base
  (``internal``: on the disk itself, once the source is down, and
  ``snapshot-load``);
* ``inspect_dump``: the journal's state page in the restored RAM;
* ``check_disk``: e2fsck of the frozen disk, its journal against the RAM;
* ``_restore_errors``: the RAM's errors and the disk's; for the negative
  control (a disk frozen at another instant) the disk check must object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import disk_snapshot, internal_snapshot, journal, snapshot, vt_compat
from .cycle import AFTER_RESUME_TIMEOUT, SnapshotCycle
from .disk_snapshot import DiskFiles, DiskSettings, RootDisk
from .metrics import Metrics
from .settings import BgsnapSettings


class WholeVMCycle(SnapshotCycle):
    def __init__(self, vm, cfg: BgsnapSettings, record: Metrics, workdir: Path,
                 wl_binary: Path, log: Callable[[str], None], disk: DiskSettings,
                 files: DiskFiles, base_extra_params: str, root: RootDisk | None = None):
        restored_disk = files.base if disk.form == "internal" else files.restore
        restore_params = {"extra_params": base_extra_params
                          + disk_snapshot.qemu_args(restored_disk)}
        if root is not None:
            restore_params.update(RootDisk.params(root.restore))
        super().__init__(vm, cfg, record, workdir, wl_binary, log,
                         restore_params=tuple(restore_params.items()))
        self.disk = disk
        self.files = files
        self.root = root
        self.journal_state: journal.JournalState | None = None
        self.journal_error: str | None = None
        self.fsck: disk_snapshot.FsckResult | None = None
        self.journal_verdict: journal.JournalVerdict | None = None
        record.update({"disk": {"form": disk.form, "disk_mib": disk.disk_mib,
                                "journal_ms": disk.journal_ms, "skew_s": disk.skew_s,
                                # a distro guest's root disk freezes with the journal's
                                "root_frozen": root is not None}})
        if cfg.keep_snapshot:
            record.set("kept_files", [str(p) for p in (files.base, files.overlay,
                                                       files.restore)])

    def _disk_record(self, **values) -> None:
        self.record.set("disk", {**self.record.get("disk"), **values})

    # -- the snapshot ------------------------------------------------------------
    def _take(self, qmp, ctx) -> snapshot.SnapshotResult:
        if self.disk.form == "internal":
            result = internal_snapshot.take_disk_snapshot(
                qmp, self.files.base, disk_snapshot.NODE, self.cfg.snapshot_timeout_s, self.log)
            self.steps_after_resume = self.workload.committed(timeout=AFTER_RESUME_TIMEOUT)
            self._disk_record(order="snapshot-save (disk + VM state)")
            return result

        def after_resume():
            self.steps_after_resume = self.workload.committed(timeout=AFTER_RESUME_TIMEOUT)

        result, step = disk_snapshot.take_whole_vm_snapshot(
            qmp, self.cfg.transport, self.snapshot_path, self.files,
            self.cfg.snapshot_timeout_s, self.log, after_resume, self.disk.skew_s, self.root)
        self._disk_record(disk_step_ms=round(step.disk_s * 1000, 2), order=step.order)
        self.log("disk frozen in %.1f ms (%s)" % (step.disk_s * 1000, step.order))
        return result

    # -- the restore ---------------------------------------------------------------
    def _restored_vm(self):
        timeout = self.cfg.restore_timeout_s
        if self.disk.form == "internal":
            # the restore opens the source's own disk: the source goes first
            vt_compat.shutdown_bounded(self.vm)
            return internal_snapshot.restored_disk_vm(self.vm, disk_snapshot.NODE, timeout,
                                                      self.log, self.restore_params)
        disk_snapshot.create_overlay(self.files.restore, self.files.base)
        if self.root is not None:
            disk_snapshot.create_overlay(self.root.restore, self.root.active)
        return snapshot.restored_vm(self.vm, self.cfg.transport, self.image_path, timeout,
                                    self.log, self.restore_params)

    def inspect_dump(self, dump_path: Path) -> None:
        try:
            self.journal_state = journal.find_state_in_file(dump_path, self.cfg.workload.nonce)
        except journal.JournalError as exc:
            self.journal_error = str(exc)
        self._disk_record(journal_state=self.journal_state and self.journal_state.to_dict(),
                          journal_state_error=self.journal_error)

    # -- the disk ----------------------------------------------------------------------
    def check_disk(self) -> None:
        """The frozen disk on the host: e2fsck after the ext4 journal's
        replay, the workload journal read out and judged against the RAM."""
        tag = internal_snapshot.TAG if self.disk.form == "internal" else None
        self.record.start("disk_check")
        self.fsck, data = disk_snapshot.read_frozen_disk(self.files, self.files.base, tag)
        self.record.stop("disk_check")
        self._disk_record(fsck=self.fsck.summary())
        self.log("frozen disk: %s" % self.fsck.summary())
        if not self.fsck.consistent:
            self.log("e2fsck said: %s" % self.fsck.output)
        if self.journal_state is None or self.host_verify is None:
            return
        disk = journal.parse_journal(data or b"", self.cfg.workload.nonce)
        self.journal_verdict = journal.judge(disk, self.journal_state,
                                             sum(self.host_verify.committed))
        self._disk_record(journal=self.journal_verdict.figures,
                          journal_problems=list(self.journal_verdict.problems))
        self.log(self.journal_verdict.summary())

    def disk_problems(self) -> list[str]:
        problems = []
        if self.fsck is not None and not self.fsck.consistent:
            problems.append("the frozen disk's file system is inconsistent: " + self.fsck.summary())
        if self.journal_error:
            problems.append("restored RAM: " + self.journal_error)
        if self.journal_verdict is not None and not self.journal_verdict.agrees:
            problems.append("the journal on the frozen disk disagrees with the restored "
                            "RAM: " + "; ".join(self.journal_verdict.problems))
        return problems

    def _restore_errors(self) -> list[str]:
        errors = super()._restore_errors()
        problems = self.disk_problems()
        checked = self.journal_verdict is not None
        if not self.disk.negative:
            if not checked and not self.journal_error and not errors:
                problems.append("the journal was not checked")
            return errors + problems
        where = "before" if self.disk.skew_s < 0 else "after"
        if problems:
            self.log("negative control: the disk frozen %.1fs %s the RAM was caught: %s"
                     % (abs(self.disk.skew_s), where, "; ".join(problems)))
            return errors
        return errors + [f"negative control: a disk frozen {abs(self.disk.skew_s):.1f}s {where} "
                         f"the RAM passed the journal check"]

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            self.files.remove(keep_images=self.cfg.keep_snapshot)
            if self.root is not None and not self.cfg.keep_snapshot:
                for path in self.root.all():
                    path.unlink(missing_ok=True)

"""Whole-VM snapshot: the guest's disk and RAM at one instant, proven by a
journal the guest keeps on that disk (docs/disk.md).

1. Check the host (QEMU, UFFD-WP, accelerator, qemu-img, mkfs.ext4,
   e2fsck, debugfs); cancel if unfit.  Make the journal disk: ext4 in a
   qcow2 (``bgsnap_disk_mib``), on a virtio-blk with serial bgsnap-journal.
2. Boot the guest, find the disk by its serial, mount it, start the memory
   workload with its journal there (one fsynced record every
   ``bgsnap_journal_ms``, each naming the writers' steps), wait for the fill.
3. Snapshot (``bgsnap_disk_form``): ``background``: stop, external disk
   snapshot (the base freezes), background snapshot of the RAM, continue
   once the RAM is write-protected; the pause (QEMU's STOP -> RESUME
   stamps) holds the disk step.  ``internal``: ``snapshot-save`` with the
   disk, which also holds the VM state.
4. The source ran on and still verifies clean.
5. Restore into a second QEMU on a fresh overlay over the frozen base
   (internal: the disk itself, ``snapshot-load``), kept paused; dump its RAM,
   verify it on the host (exact, point in time) and find the journal's
   state there; resume it, let it verify itself.
6. The frozen disk on the host: its ext4 consistent after the journal
   replay (e2fsck); the journal on it agrees with the RAM: every record
   whose fsync had returned is there, none the RAM had not written, no step
   beyond the RAM's.  Negative control ``bgsnap_disk_skew_s``: a disk frozen
   that long before (< 0) or after the RAM must be caught (then PASS).
7. Record the metrics once; overlays and images removed unless kept.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import disk_snapshot, preflight, settings, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.disk_snapshot import DiskFiles
from avocado_bgsnap.whole_vm import WholeVMCycle
from avocado_bgsnap.workload import GuestWorkload


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    disk = settings.disk_from_params(params)
    facts = preflight.admit(test, params, cfg)
    missing = disk_snapshot.unsupported_reason()
    if missing:
        test.cancel(missing)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel})
    files = DiskFiles.in_dir(cfg.snapshot_dir or Path(test.workdir))
    # a distro guest's root disk is frozen with the journal disk (background form)
    root = (disk_snapshot.RootDisk.of(params, files.base.parent)
            if disk.form == "background" else None)
    base_extra = params.get("extra_params", "")
    params["extra_params"] = base_extra + disk_snapshot.qemu_args(files.base)
    if root is not None:
        params.update(disk_snapshot.RootDisk.params(root.active))
    vm = env.get_vm(params["main_vm"])
    cycle = WholeVMCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                         test.log.info, disk, files, base_extra, root)
    failure = None
    try:
        with verdicts.judged(test):
            error_context.context("Make the journal disk, boot, mount it", test.log.info)
            disk_snapshot.create_disk(files, disk.disk_mib)
            if root is not None:
                disk_snapshot.create_overlay(root.active, root.base)
            boot_started = time.monotonic()
            vm.create(params=params.object_params(vm.name))
            cycle.log_in(boot_started)
            device = disk_snapshot.mount_journal_disk(cycle.session)
            record.set("guest_disk_device", device)
            cycle.fill_workload(GuestWorkload(cycle.session, cfg.workload, test.log.info,
                                              run_args=disk_snapshot.journal_args(
                                                  disk.journal_ms)))
            error_context.context("Whole-VM snapshot (%s)" % disk.form, test.log.info)
            cycle.take_snapshot()
            error_context.context("Check the source guest", test.log.info)
            cycle.check_source()
            error_context.context("Restore on the frozen disk and verify", test.log.info)
            cycle.restore_and_verify()
            error_context.context("Check the frozen disk against the RAM", test.log.info)
            cycle.check_disk()
            failure = cycle.verdict()
    finally:
        cycle.cleanup()
        record.write_logged(test)
    if failure:
        test.fail(failure)

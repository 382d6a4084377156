"""Restore a bad image: QEMU must refuse it clearly, within a bound.

1. Check the host; boot the guest, fill the workload, take a background
   snapshot of it (kept for this test only).
2. Make the bad image of ``bgsnap_bad_image``: truncated, header
   corrupted, empty; or restore the good file into a QEMU with twice the
   RAM or another machine type; or kill the restoring QEMU halfway through
   a slowed-down restore.  ``good`` is the control: the same steps with the
   file untouched must restore.
3. Restore it into a second QEMU, bounded by ``bgsnap_bad_image_bound``:
   refused with QEMU's message is the pass; a bad image that restores, or
   a restore that hangs past the bound, is a FAIL.  No QEMU and no file
   are left (the job's leftover check).
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import bad_image, preflight, settings, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle

BAD_STEM = "bgsnap-snapshot-bad"  # the suite's guest-memory file prefix: reaped, checked


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    bad_cfg = settings.bad_image_from_params(params)
    kind, bound_s = bad_cfg.kind, bad_cfg.bound_s
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "bad_image": kind,
                   "bound_s": bound_s})
    vm = env.get_vm(params["main_vm"])
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    bad = cycle.snapshot_dir / (BAD_STEM + cfg.transport.suffix)
    try:
        with verdicts.judged(test):
            end = _run(test, params, cfg, kind, bound_s, vm, cycle, bad)
    finally:
        bad.unlink(missing_ok=True)
        cycle.cleanup()
        record.write_logged(test)
    record_end = end.to_dict()
    test.log.info("restore of the %s image: %s", kind, record_end)
    wanted = "loaded" if kind == "good" else "refused"
    if end.outcome != wanted:
        test.fail(f"the {kind} image: restore {end.outcome} after {end.took_s:.1f}s, expected "
                  f"{wanted} within {bound_s:g}s: {end.message}")


def _run(test, params, cfg, kind, bound_s, vm, cycle, bad):
    error_context.context("Boot, fill, take a good snapshot", test.log.info)
    vm.create(params=params.object_params(vm.name))
    cycle.boot_and_fill(time.monotonic())
    cycle.take_snapshot()
    error_context.context(f"Make the {kind} image and restore it", test.log.info)
    transport = cfg.transport
    kill_after = None
    if kind == "restore_killed":
        transport, kill_after = bad_image.slow_restore(cfg.transport), 2.0
    bad_image.make_bad_copy(cycle.snapshot_path, kind, bad)
    end = bad_image.attempt_restore(vm, transport, bad, bound_s, test.log.info,
                                    bad_image.restore_overrides(kind, cfg.guest_mem_mib),
                                    kill_after)
    cycle.record.set("restore_end", end.to_dict())
    return end

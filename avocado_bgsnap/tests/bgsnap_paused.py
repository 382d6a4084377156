"""Background snapshot of a paused guest (QMP ``stop``), restored paused.

1. Check the host; boot the guest and fill the workload.
2. Hold the writers (the image must hold exactly their steps), pause the
   guest with QMP ``stop`` and wait for its STOP event.
3. Take a background snapshot; record the run states, the STOP / RESUME
   events during the save and the run state the image carries (its
   globalstate section).  A save that resumes the paused guest FAILs with
   them as evidence (QEMU before 9.0 does: its bg_migration_vm_start_bh
   calls vm_start(); 9.0+ restores the old run state, vm_resume()).  No
   pause window is expected: the save says so instead of a pause figure.
4. ``cont`` the source if it is still paused; its memory must be intact.
5. Restore into a second QEMU: its run state at load must be 'paused';
   verify its RAM on the host (exactly the held steps), ``cont`` it, let
   it verify itself.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import guest_states, preflight, settings, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.qmp import SnapshotQMP


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    preserved = guest_states.expect_paused_preserved(facts.qemu.version)
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "guest_state": "paused",
                   "expected_paused_preserved": preserved})
    vm = env.get_vm(params["main_vm"])
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    failures = []
    try:
        with verdicts.judged(test):
            _run(test, params, cfg, vm, cycle, record, preserved, failures)
    finally:
        cycle.cleanup()
        record.set("verdict", "; ".join(failures) or record.get("verdict"))
        record.write_logged(test)
    if failures:
        test.fail("; ".join(failures))


def _run(test, params, cfg, vm, cycle, record, preserved, failures):
    error_context.context("Boot, fill, hold the writers, pause the guest", test.log.info)
    vm.create(params=params.object_params(vm.name))
    cycle.boot_and_fill(time.monotonic())
    cycle.hold_workload()
    qmp = SnapshotQMP(vm.monitor, test.log.info)
    record.set("stop_s", guest_states.pause_guest(qmp, cfg.snapshot_timeout_s))
    error_context.context("Background snapshot of the paused guest", test.log.info)
    save = guest_states.snapshot_paused(qmp, cfg.transport, cycle.snapshot_path,
                                        cfg.snapshot_timeout_s, test.log.info)
    cycle.record_result(save.result)
    record.update({"paused_save": save.to_dict(),
                   "pause_note": guest_states.pause_note(save.result)})
    test.log.info("paused save: %s", save.to_dict())
    error_context.context("Resume and check the source", test.log.info)
    if qmp.status() == guest_states.PAUSED:
        qmp.cont()
    cycle.check_source()
    error_context.context("Restore (paused), verify, resume the restored guest", test.log.info)
    cycle.restore_and_verify()
    failures += guest_states.paused_errors(save, record.get("restored_status_at_load"), preserved)
    failures += [f for f in [cycle.verdict()] if f]

"""Background snapshot of a guest suspended to RAM (ACPI S3).

1. Check the host; boot the guest and fill the workload.
2. Hold the writers (the image must hold exactly their steps), suspend the
   guest (``echo mem > /sys/power/state``), wait for QMP ``SUSPEND``.
3. Take a background snapshot; record the run states and the STOP /
   RESUME / WAKEUP events.  A build that wakes the guest FAILs with them as
   evidence (QEMU before 9.0 does: 49a5020).  A save without a pause window
   says so instead of a pause figure.
4. Wake the source if it still sleeps; its memory must be intact.
5. Restore into a second QEMU, verify its RAM on the host, wake it
   (``system_wakeup``), let it verify itself; a restored guest that never
   answers is a FAIL too.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap import preflight, settings, suspend, verdicts, vt_compat
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.host.memory import thp_defrag, thp_mode
from avocado_bgsnap.memory.predict import expect_suspended_preserved
from avocado_bgsnap.qmp import SnapshotQMP
from avocado_bgsnap.verdicts import GuestWedged


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    facts = preflight.admit(test, params, cfg)
    preserved = expect_suspended_preserved(facts.qemu.version)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "guest_state": "S3",
                   "memory": cfg.memory.to_dict(), "restore_memory": cfg.memory.to_dict(),
                   "host_memory": {"thp_mode": thp_mode(), "thp_defrag": thp_defrag()},
                   "expected_suspended_preserved": preserved})
    vm = env.get_vm(params["main_vm"])
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    failures = []
    with verdicts.judged(test):
        _run(test, params, cfg, vm, cycle, record, preserved, failures)
    if failures:
        test.fail("; ".join(failures))


def _run(test, params, cfg, vm, cycle, record, preserved, failures):
    try:
        error_context.context("Boot, fill, hold the writers, suspend", test.log.info)
        boot_started = time.monotonic()
        vm.create(params=params.object_params(vm.name))
        cycle.boot_and_fill(boot_started)
        cycle.hold_workload()
        qmp = SnapshotQMP(vm.monitor, test.log.info)
        record.set("suspend_s", suspend.suspend_guest(cycle.session, qmp, cfg.snapshot_timeout_s))
        error_context.context("Background snapshot of the suspended guest", test.log.info)
        save = suspend.snapshot_suspended(qmp, cfg.transport, cycle.snapshot_path,
                                          cfg.snapshot_timeout_s, test.log.info)
        cycle.record_result(save.result)
        record.update({"suspended_save": save.to_dict(), "pause_note": suspend.pause_note(save)})
        test.log.info("suspended save: %s", save.to_dict())
        failures += suspend.suspended_errors(save, preserved)
        error_context.context("Wake and check the source", test.log.info)
        suspend.wake(cycle.session, qmp, cfg.snapshot_timeout_s)
        cycle.check_source()
        error_context.context("Restore, verify, wake the restored guest", test.log.info)
        try:
            cycle.restore_and_verify()
        except GuestWedged as exc:
            # seen on 7.2 after it woke the guest; reported with the rest
            failures.append(str(exc))
        failures += [f for f in [cycle.verdict()] if f]
        record.set("verdict", "; ".join(failures) or "pass")
    finally:
        cycle.cleanup()
        record.write_logged(test)

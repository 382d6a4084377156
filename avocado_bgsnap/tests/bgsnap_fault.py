"""A background snapshot that is cancelled or fails, and the guest after it.

1. Check the host; boot the guest and fill the workload.
2. Save with the fault of ``bgsnap_fault``: ``cancel`` a while after
   RESUME, ``cancel_at_start`` right after the ``migrate`` command,
   ``kill_source`` (SIGKILL the source QEMU), ``target_fails`` (the cfg's
   transport dies mid-stream).  The save must end as the fault says; one
   that completes anyway tested nothing (ERROR).
3. A killed source: its QEMU is gone.  Else the source guest answers and
   writes (a wedged guest is a FAIL), its p99 write is back at the level
   of before the save (FAIL; the same check must see the save's own write
   protection, else ERROR), its memory verifies (FAIL).  Either way no
   file carries the snapshot's name (ERROR).
4. The source lives on: a second snapshot right after, into a plain file,
   restored and verified exactly as in ``bgsnap_basic``.
"""

import dataclasses
import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import failed_save, preflight, settings, transport, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.during import DuringSaveRun
from avocado_bgsnap.during.faults import fault_action
from avocado_bgsnap.verdicts import GuestWedged

# a killed QEMU is reaped within this (seconds)
GONE_WITHIN_S = 10


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    fault = settings.fault_from_params(params)
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "fault": fault.name,
                   "fault_expected_end": fault.expected_end})
    vm = env.get_vm(params["main_vm"])
    # the second snapshot goes to a plain file, whatever the fault's transport
    cycle = SnapshotCycle(vm, dataclasses.replace(cfg, transport=transport.by_name("file")),
                          record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    failure = None
    try:
        with verdicts.judged(test):
            failure = _run(test, params, cfg, fault, vm, cycle, record)
    finally:
        cycle.cleanup()
        record.write_logged(test)
    if failure:
        test.fail(failure)


def _run(test, params, cfg, fault, vm, cycle, record):
    error_context.context("Boot the guest and fill the workload", test.log.info)
    vm.create(params=params.object_params(vm.name))
    cycle.boot_and_fill(time.monotonic())
    error_context.context(f"Background snapshot with the fault {fault.name}", test.log.info)
    during = DuringSaveRun(fault_action(fault), test.log.info)
    end = failed_save.attempt(vm, cfg.transport, cycle.snapshot_path, cfg.snapshot_timeout_s,
                              during, cycle.workload, test.log.info)
    record.update({"fault_end": end.to_dict(), "during_save": during.records})
    test.log.info("the save with the fault ended: %s", end.to_dict())
    if end.outcome == "completed" or during.missed():
        test.error("not tested: the save completed before the fault "
                   f"({'; '.join(during.missed()) or end.message})")
    if end.outcome == failed_save.MONITOR_WEDGED and fault.source_survives:
        # the process lives on and QEMU stopped answering its monitor: QEMU's fault
        raise GuestWedged(f"the source QEMU's monitor stopped answering during the failed "
                          f"save ({end.message}); {failed_save.wedge_evidence(vm)}")
    if end.outcome != fault.expected_end:
        test.error(f"the save ended '{end.outcome}', not '{fault.expected_end}': {end.message}")
    failed_save.no_snapshot_left(cycle.snapshot_path)
    if not fault.source_survives:
        error_context.context("The killed source is gone", test.log.info)
        deadline = time.monotonic() + GONE_WITHIN_S
        while not vm.is_dead() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not vm.is_dead():
            test.error(f"the killed source QEMU is still there after {GONE_WITHIN_S}s")
        return None
    error_context.context("Check the source guest after the failed save", test.log.info)
    after = failed_save.check_source_after(vm, cycle.workload, cfg.verify_timeout_s,
                                           test.log.info)
    record.set("after_failure", after)
    if fault.protected_before_fault and not after["protection_seen_during"]:
        test.error(f"not tested: the guest's writes during the save (p99 "
                   f"{after['p99_write_us']['during']} us) look like those before it: the "
                   f"check cannot see write protection")
    error_context.context("A second snapshot right after, restored and verified",
                          test.log.info)
    cycle.take_snapshot()
    cycle.check_source()
    cycle.restore_and_verify()
    return cycle.verdict()

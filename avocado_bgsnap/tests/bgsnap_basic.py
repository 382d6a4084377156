"""Background snapshot of a running guest, restored and verified exactly
(or, with ``bgsnap_mode``, a stop-and-save, internal or precopy snapshot).

1. Check the host (QEMU capability, UFFD-WP, accelerator, the snapshot
   transport); cancel if unfit.  Give the memory configuration what it
   needs (hugepages, a hugetlbfs, the THP mode; put back at the end) and
   predict whether background-snapshot must work for it.
2. Boot the guest, start the memory workload, wait until it is filled.
3. Turn background-snapshot on: QEMU's answer must match the prediction
   (a predicted refusal is a CANCEL with QEMU's message, any disagreement
   a FAIL).  Read the writers' steps, trigger the snapshot through QMP,
   read the steps again right after RESUME, do the ``bgsnap_during``
   actions while the RAM streams, wait for ``completed``.  The negative
   control ``wrong_prediction`` judges QEMU's answer against the opposite
   claim and PASSes only when that is caught.
4. The source kept running (its steps advanced) and still verifies clean.
5. Negative controls (``bgsnap_negative_control``): ``damage_file`` flips
   one byte of a guest page in the file (``damage_in_transit`` did it in the
   save pipeline); ``late_image`` takes a stop-and-save image a few seconds
   after the trigger and restores that instead.  They PASS when caught.
6. Restore into a second QEMU, kept paused; dump its RAM and verify on the
   host: exact content, and the restored steps lie between the steps read
   before the trigger and right after RESUME (the image is the START state).
7. Resume the restored guest and let it verify its own memory.
8. Record the metrics once; gate the pause with ``max_pause_ms``.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap import preflight, settings, verdicts, vt_compat
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.during import DuringSaveRun, faults, host_mm
from avocado_bgsnap.during.devices import configured
from avocado_bgsnap.host.memory import HostMemoryUnavailable
from avocado_bgsnap.memory import host_setup, predict


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    error_context.context("Check the host", test.log.info)
    facts = preflight.admit(test, params, cfg)
    test.log.info("Host: %s", facts.summary())

    try:
        with host_setup.prepared(cfg.memory, cfg.restore_memory, cfg.restore_params,
                                 cfg.host_thp, params, test.log.info) as memory, \
                host_mm.prepared(cfg.host_mm, test.log.info) as host_events:
            with verdicts.judged(test):
                _run_cycle(test, params, env, cfg, facts, memory, host_events)
    except host_mm.HostMMUnavailable as exc:
        test.cancel(f"not tested on this host: {exc}")
    except HostMemoryUnavailable as exc:
        test.cancel(f"the host cannot give this memory configuration: {exc}")


def _run_cycle(test, params, env, cfg, facts, memory, host_events):
    expected = host_setup.expectation(memory, facts.uffd.features, facts.qemu.version)
    if not expected.supported and expected.refusal is None:
        test.cancel(f"unsupported by this host: {expected.reason}")
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel,
                   "memory": memory.memory.to_dict(), "host_memory": memory.host,
                   "restore_memory": memory.restore_memory.to_dict(),
                   "host_mm": host_events.host})
    vm = env.get_vm(params["main_vm"])
    during = DuringSaveRun(configured(cfg.balloon, cfg.virtio_mem) + host_events.actions
                           + faults.configured(cfg.second_migrate), test.log.info)
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info, during, memory.restore_params)
    failure = None
    try:
        error_context.context("Boot the guest and fill the workload", test.log.info)
        boot_started = time.monotonic()
        vm.create(params=params.object_params(vm.name))
        cycle.boot_and_fill(boot_started)
        error_context.context("Take the snapshot (mode %s)" % cfg.mode, test.log.info)
        if cfg.negative_control == "wrong_prediction":
            judgement = cycle.offer_background_snapshot(predict.contradicted(expected))
            if judgement.outcome != "fail":
                test.fail("negative control wrong_prediction: a wrong prediction was not "
                          "caught: " + judgement.message)
            test.log.info("negative control: the wrong prediction was caught: %s",
                          judgement.message)
            return
        if cfg.mode == "background":
            judgement = cycle.offer_background_snapshot(expected)
            if judgement.outcome == "cancel":
                test.cancel(judgement.message)
            if judgement.outcome == "fail":
                test.fail(judgement.message)
        cycle.take_snapshot()
        missed = cycle.harness_errors()
        if missed:
            test.error("not tested: " + "; ".join(missed))
        error_context.context("Check the source guest", test.log.info)
        cycle.check_source()
        if cfg.negative_control == "damage_file":
            cycle.damage_snapshot()
        elif cfg.negative_control == "late_image":
            cycle.take_late_image()
        cycle.retire_source()  # nothing below needs it
        error_context.context("Restore and verify", test.log.info)
        cycle.restore_and_verify()
        failure = cycle.verdict()
    finally:
        cycle.cleanup()
        record.write_logged(test)
    if failure:
        test.fail(failure)

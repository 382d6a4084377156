"""A migration capability next to background-snapshot: QEMU's answer, judged.

1. Check the host; boot the guest and fill the workload.
2. Predict QEMU's answer for ``bgsnap_capability`` from its version, its
   capabilities and its build (capabilities.expect): refused next to
   background-snapshot, refused on its own, unknown, or (a control)
   accepted.
3. Turn it on with background-snapshot (one command; then background-
   snapshot first, the capability next): refused as predicted, with QEMU's
   message, is the pass; unknown or refused on its own, as predicted, a
   CANCEL; another refusal, or a refused capability left on, a FAIL.
4. Accepted: the image decides what it did.  Background snapshot with the
   capability on, restored and verified exactly as in ``bgsnap_basic``:
   for a control that is the verdict; where refusal was predicted it is a
   FAIL either way, saying whether the image is broken.
"""

import dataclasses
import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import capabilities, preflight, settings, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.qmp import QMPStepError, SnapshotQMP


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    name = settings.capability_from_params(params)
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "capability": name})
    vm = env.get_vm(params["main_vm"])
    # a save QEMU accepts runs with the capability on (qmp.enable_background_snapshot)
    with_cap = dataclasses.replace(cfg.transport,
                                   capabilities=cfg.transport.capabilities + (name,))
    cycle = SnapshotCycle(vm, dataclasses.replace(cfg, transport=with_cap), record,
                          Path(test.workdir), Path(params["bgsnap_wl_binary"]), test.log.info)
    try:
        with verdicts.judged(test):
            outcome, message = _run(test, params, name, facts.qemu, vm, cycle, record)
    finally:
        cycle.cleanup()
        path = record.write(test, Path(test.outputdir))
        test.log.info("Metrics: %s: %s (%s)", name, record.get("verdict_reason"), path)
    if outcome == "cancel":
        test.cancel(message)
    if outcome == "fail":
        test.fail(message)


def _run(test, params, name, qemu, vm, cycle, record):
    error_context.context("Boot the guest and fill the workload", test.log.info)
    vm.create(params=params.object_params(vm.name))
    cycle.boot_and_fill(time.monotonic())
    qmp = SnapshotQMP(vm.monitor, test.log.info)
    replication = capabilities.built_with_replication(qmp.qmp_schema())
    expected = capabilities.expect(name, qemu.version, qemu.migration_capabilities, replication)
    test.log.info("predicted for %s on QEMU %s: %s (%s) %s", name, qemu.version_text,
                  expected.outcome, expected.reason, expected.message or "")
    error_context.context(f"Turn {name} on next to background-snapshot", test.log.info)
    answers = capabilities.offer(qmp, expected, test.log.info)
    last = answers[-1]
    record.update({"expected": expected.to_dict(), "replication": replication,
                   "answers": [a.to_dict() for a in answers],
                   "qemu_message": answers[0].refusal, "accepted": last.refusal is None,
                   "prediction_check": last.judgement.outcome,
                   "verdict_reason": last.judgement.message})
    test.log.info("answer judged %s: %s", last.judgement.outcome, last.judgement.message)
    if last.refusal is not None:
        return last.judgement.outcome, last.judgement.message
    error_context.context(f"QEMU accepted {name}: snapshot with it on, restore, verify",
                          test.log.info)
    try:
        cycle.take_snapshot()
        cycle.check_source()
        cycle.restore_and_verify()
        image_error = cycle.verdict()
    except (verdicts.Defect, QMPStepError) as exc:   # a save it accepted, then failed
        image_error = f"{type(exc).__name__}: {exc}"
    record.set("image", image_error or "restored exactly")
    if last.judgement.outcome == "pass":   # a control: the image is the verdict
        outcome, message = ("fail", image_error) if image_error else ("pass", "")
    else:
        outcome, message = "fail", last.judgement.message + (
            f"; its image is broken: {image_error}" if image_error
            else "; its image restored exactly")
    record.set("verdict_reason", message or last.judgement.message)
    return outcome, message

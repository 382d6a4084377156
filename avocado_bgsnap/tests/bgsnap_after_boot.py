"""Background snapshot right after boot, while most guest pages were never
touched; the workload then writes them during the save.

Why this variant: the verifier judges a region against committed writer
steps, and during the fill every page not yet filled has no frame at all
('missing'): a snapshot taken mid-fill cannot be verified exactly.  So the
snapshot is triggered as soon as the serial shell answers, and the workload
is started right after RESUME: its fill writes pages the guest has not
touched since boot (host pages QEMU never populated: its pre-fault,
eeccb99c9d28, is what protects them), while the RAM streams over the slow
target.  Every page it writes carries this run's nonce, which exists
nowhere before the start: the image must hold not one of them.

1. Check the host; boot; log in; record QEMU's RSS (the pages populated).
2. Trigger the background snapshot; on RESUME start the workload and wait
   for its fill; the save must still be streaming then (else the test
   tested nothing: ERROR).
3. The source's workload runs and verifies clean.
4. Restore into a second QEMU, kept paused; its RAM dump must hold no page
   and no metadata page of this run (FAIL: write protection missed them).
   ``cont`` it: it answers, and runs no workload.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import guest_states, preflight, settings, snapshot, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.host.memory import rss_kib
from avocado_bgsnap.qmp import SnapshotQMP
from avocado_bgsnap.workload import GuestWorkload


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel,
                   "guest_state": "after_boot"})
    vm = env.get_vm(params["main_vm"])
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    failures = []
    try:
        with verdicts.judged(test):
            _run(test, params, cfg, vm, cycle, record, failures)
    finally:
        cycle.cleanup()
        record.set("verdict", "; ".join(failures) or "pass")
        record.write_logged(test)
    if failures:
        test.fail("; ".join(failures))


def _run(test, params, cfg, vm, cycle, record, failures):
    error_context.context("Boot; snapshot as soon as the shell answers", test.log.info)
    vm.create(params=params.object_params(vm.name))
    cycle.log_in(time.monotonic())
    record.set("rss_before_kib", rss_kib(vm.get_pid()))
    qmp = SnapshotQMP(vm.monitor, test.log.info)
    cycle.workload = GuestWorkload(cycle.session, cfg.workload, test.log.info)
    cycle.steps_before = [0] * cfg.workload.writers
    fill = {}

    def start_workload():
        cycle.workload.start()
        fill["status"] = cycle.workload.wait_running(cfg.fill_timeout_s)
        fill["save_status_after_fill"] = qmp.query_migrate().get("status")
        cycle.steps_after_resume = cycle.workload.committed()

    result = snapshot.take_background_snapshot(qmp, cfg.transport, cycle.snapshot_path,
                                               cfg.snapshot_timeout_s, test.log.info,
                                               on_resume=start_workload)
    record.set("rss_after_kib", rss_kib(vm.get_pid()))
    cycle.record_result(result)
    record.update({"fill_mib_s": fill["status"].get("fill_mib_per_s"),
                   "save_status_after_fill": fill["save_status_after_fill"]})
    if fill["save_status_after_fill"] != "active":
        test.error(f"not tested: the save was '{fill['save_status_after_fill']}' when the "
                   f"fill ended, not streaming (a slower bgsnap_transport?)")
    error_context.context("Check the source", test.log.info)
    cycle.check_source()
    frames = {}

    def check_ram(dump):
        frames["pages"], frames["metas"] = guest_states.run_frames(
            dump, cfg.workload.nonce, cfg.workload.mib * 256)

    def check_guest(session, _resumed_at):
        frames["workload_pid"] = session.cmd_output("pidof bgsnap-wl || true").strip()
        record.set("restored_answer", guest_states.round_trip(session, 41))

    error_context.context("Restore; no page of the workload in the image", test.log.info)
    cycle.restore_and_check(check_ram, check_guest)
    record.set("run_frames_in_image", frames)
    test.log.info("frames of this run in the image: %s", frames)
    failures += guest_states.after_boot_errors(
        frames["pages"], frames["metas"], frames["workload_pid"],
        cycle.source_verify.clean, cycle.source_verify.summary())

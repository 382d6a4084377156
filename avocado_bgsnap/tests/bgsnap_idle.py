"""Background snapshot of an idle guest (no workload), restored and run.

Nothing writes guest memory the host could predict, so the exact RAM
check of the workload does not apply; what is verified instead:

1. Check the host; boot the guest; write ``bgsnap_idle_file_mib`` MiB of
   random bytes to its tmpfs (guest RAM) and take their md5; then nothing
   runs but the kernel and the idle shell.
2. Read the guest's uptime, trigger the background snapshot, read the
   uptime again right after RESUME (the instant lies between the two).
3. The source answers and its file is unchanged.
4. Restore into a second QEMU, ``cont`` it, log in on its console: it
   answers (FAIL if not).  Its uptime, read at most t seconds after
   ``cont``, must put the image between the two source readings (the
   restored clock continues from the snapshot instant); its file must
   read back with the same md5 (every byte of it exact); a command round
   trip (``echo`` + ``uptime``) runs and the clock advances.

Not verified: the rest of the guest's RAM (kernel, page cache), whose
content at the snapshot instant nothing on the host knows.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import guest_states, preflight, settings, snapshot, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle
from avocado_bgsnap.qmp import SnapshotQMP


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    state = settings.guest_state_from_params(params)
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "guest_state": "idle",
                   "idle_file_mib": state.idle_file_mib})
    vm = env.get_vm(params["main_vm"])
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    failures = []
    try:
        with verdicts.judged(test):
            _run(test, params, cfg, state, vm, cycle, record, failures)
    finally:
        cycle.cleanup()
        record.set("verdict", "; ".join(failures) or "pass")
        record.write_logged(test)
    if failures:
        test.fail("; ".join(failures))


def _run(test, params, cfg, state, vm, cycle, record, failures):
    error_context.context("Boot; a file in the guest's tmpfs", test.log.info)
    vm.create(params=params.object_params(vm.name))
    cycle.log_in(time.monotonic())
    session, timeout = cycle.session, cfg.verify_timeout_s
    digest = guest_states.write_idle_file(session, state.idle_file_mib, timeout)
    error_context.context("Background snapshot of the idle guest", test.log.info)
    uptime = {"before": guest_states.read_uptime(session)}
    result = snapshot.take_background_snapshot(
        SnapshotQMP(vm.monitor, test.log.info), cfg.transport, cycle.snapshot_path,
        cfg.snapshot_timeout_s, test.log.info,
        on_resume=lambda: uptime.update(after=guest_states.read_uptime(session)))
    cycle.record_result(result)
    error_context.context("Check the source", test.log.info)
    source_digest = guest_states.file_digest(session, timeout)
    if source_digest != digest:
        failures.append(f"the source's file changed over the save: md5 {digest} -> "
                        f"{source_digest}")

    def check_restored(restored, resumed_at):
        uptime["restored"] = guest_states.read_uptime(restored)
        since_cont = time.monotonic() - resumed_at
        restored_digest = guest_states.file_digest(restored, timeout)
        answer = guest_states.round_trip(restored, 41)
        uptime["restored_later"] = guest_states.read_uptime(restored)
        record.update({"uptime_s": uptime, "since_cont_s": round(since_cont, 3),
                       "idle_file_md5": {"before": digest, "restored": restored_digest},
                       "restored_answer": answer})
        error = guest_states.uptime_error(uptime["before"], uptime["after"],
                                          uptime["restored"], since_cont)
        record.set("point_in_time", error or "ok")
        failures.extend([error] if error else [])
        if restored_digest != digest:
            failures.append(f"the restored file differs: md5 {restored_digest}, "
                            f"{digest} at the snapshot")
        if uptime["restored_later"] <= uptime["restored"]:
            failures.append("the restored guest's clock does not advance: it does not run")

    error_context.context("Restore, run and check the restored guest", test.log.info)
    cycle.restore_and_check(None, check_restored)
    test.log.info("uptimes %s, %.2f s after cont", uptime, record.get("since_cont_s"))
    pause = record.get("pause_ms")
    if cfg.max_pause_ms and (pause is None or pause > cfg.max_pause_ms):
        failures.append(f"pause {pause} ms exceeds max_pause_ms = {cfg.max_pause_ms}")

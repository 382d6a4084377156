"""N back-to-back background snapshots of one guest under load, each
restored and verified exactly (a soak; its figure: N passed of N).

1. Check the host; boot the guest and fill the workload once.
2. ``bgsnap_soak_count`` rounds, each as in ``bgsnap_basic``: the cycle
   forgets the last round (``new_round``), takes the snapshot (steps
   before the trigger and right after RESUME), checks the source, restores
   into a second QEMU, verifies the RAM on the host (exact, point in time)
   and in the restored guest.  A round whose image does not restore, or
   whose restored guest never answers, fails; the next round still runs.
3. Record each round's pause, save time and verify summaries, the pause
   min/median/max and the figure; FAIL naming the failed rounds.
"""

import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import guest_states, preflight, settings, verdicts, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import SnapshotCycle

# what a round records (RoundOutcome.from_record reads them)
ROUND_KEYS = ("pause_ms", "snapshot_total_s", "host_verify", "guest_verify", "point_in_time")


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    rounds = settings.guest_state_from_params(params).soak_rounds
    facts = preflight.admit(test, params, cfg)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "guest_state": "soak",
                   "soak_rounds": rounds})
    vm = env.get_vm(params["main_vm"])
    cycle = SnapshotCycle(vm, cfg, record, Path(test.workdir), Path(params["bgsnap_wl_binary"]),
                          test.log.info)
    outcomes = []
    try:
        with verdicts.judged(test):
            error_context.context("Boot the guest and fill the workload", test.log.info)
            vm.create(params=params.object_params(vm.name))
            cycle.boot_and_fill(time.monotonic())
            for n in range(1, rounds + 1):
                error_context.context(f"Round {n} of {rounds}", test.log.info)
                outcomes.append(_round(test, cycle, record, n))
                test.log.info("round %d: %s", n, outcomes[-1].to_dict())
    finally:
        cycle.cleanup()
        failure = guest_states.soak_failure(outcomes, rounds)
        record.update({"soak": guest_states.soak_figure(outcomes, rounds),
                       "rounds": [o.to_dict() for o in outcomes],
                       "pause_ms_rounds": guest_states.pause_summary(outcomes),
                       "verdict": failure or "pass"})
        path = record.write(test, Path(test.outputdir))
        test.log.info("Soak: %s; %s (%s)", record.get("soak"),
                      bg_metrics.summary_line(record.as_dict()), path)
    if failure:
        test.fail(failure)


def _round(test, cycle, record, n):
    cycle.new_round()
    record.update(dict.fromkeys(ROUND_KEYS))  # nothing of the last round shows in this one
    cycle.take_snapshot()
    missed = cycle.harness_errors()
    if missed:
        test.error(f"round {n} not tested: " + "; ".join(missed))
    cycle.check_source()
    try:
        cycle.restore_and_verify()
    except verdicts.Defect as exc:
        return guest_states.RoundOutcome.from_record(n, record.as_dict(), str(exc))
    failure = cycle.verdict()
    return guest_states.RoundOutcome.from_record(n, record.as_dict(), failure)

"""Benchmark of the guest workload: fill, verify, cost of latency timing.

1. Check the host and boot the guest as ``bgsnap_basic`` does (cancel if unfit).
2. Start the workload (``bgsnap_workload_mib``), wait for the fill; fill MiB/s.
3. Freeze, run the in-guest ``verify`` ``bgsnap_bench_repeats`` times (seconds
   and MiB/s each), thaw.  A verify that is not clean fails the test.
4. Writer MiB/s with latency timing ON and OFF, ``bgsnap_bench_repeats`` ABBA
   rounds, each on a fresh workload run: steps and running time from two
   status reads ``bgsnap_bench_seconds`` apart.
5. Record the figures once (whiteboard + bgsnap-metrics.json), log the summary
   with the targets; targets never fail the test (bench.py).
"""

import dataclasses
import os
import time
from pathlib import Path

from virttest import error_context

from avocado_bgsnap import bench, preflight, settings, vt_compat
from avocado_bgsnap import metrics as bg_metrics
from avocado_bgsnap.cycle import LOGIN_TIMEOUT
from avocado_bgsnap.workload import GuestWorkload


@vt_compat.guarded
@error_context.context_aware
def run(test, params, env):
    cfg = settings.from_params(params)
    repeats = int(params.get_numeric("bgsnap_bench_repeats", 3))
    seconds = params.get_numeric("bgsnap_bench_seconds", 5, float)
    error_context.context("Check the host", test.log.info)
    facts = preflight.admit(test, params, cfg, with_snapshot=False)
    record = bg_metrics.Metrics()
    record.update({"host": facts.to_dict(), "accel": facts.accel.accel, "load_before":
                   os.getloadavg(), "guest_mem_mib": cfg.guest_mem_mib, "workload_mib":
                   cfg.workload.mib, "workload": dataclasses.asdict(cfg.workload), "bench_repeats":
                   repeats, "bench_seconds": seconds, "order": bench.on_off_order(repeats)})
    fills, verifies, rates = [], [], {True: [], False: []}
    vm, session, dirty = env.get_vm(params["main_vm"]), None, []
    try:
        error_context.context("Boot the guest and fill the workload", test.log.info)
        vm.create(params=params.object_params(vm.name))
        session = vt_compat.serial_login(vm, LOGIN_TIMEOUT)
        wl = GuestWorkload(session, cfg.workload, test.log.info)
        wl.start()
        fills.append(wl.wait_running(cfg.fill_timeout_s)["fill_mib_per_s"])
        error_context.context("Verify the frozen region", test.log.info)
        wl.freeze()
        for _ in range(repeats):
            started, result = time.monotonic(), wl.verify(cfg.verify_timeout_s)
            verifies.append({"seconds": result.verify_seconds, "mib_s": result.mib_per_s,
                             "host_s": round(time.monotonic() - started, 3)})
            dirty += [] if result.clean else [result.summary()]
        wl.thaw()
        for latency in [] if dirty else record.get("order"):
            error_context.context(f"Writers with WorkloadSpec.latency={latency}", test.log.info)
            spec = dataclasses.replace(cfg.workload, latency=latency)
            fills.append(wl.restart(spec, cfg.fill_timeout_s)["fill_mib_per_s"])
            rates[latency].append(round(bench.write_mib_s(*wl.status_pair(seconds)), 1))
        wl.quit()
        record.set("verdict", "; ".join(dirty) or "pass")
    finally:
        if session is not None:
            session.close()
        record.set("qemu_killed", vt_compat.shutdown_bounded(vm))
        record.update({"fills_mib_s": fills, "verifies": verifies, "latency_on_mib_s":
                       rates[True], "latency_off_mib_s": rates[False], "load_after":
                       os.getloadavg()})
        record.update(bench.summarize(cfg.workload.mib, fills, [v["seconds"] for v in verifies],
                                      [v["mib_s"] for v in verifies], rates[True], rates[False]))
        path = record.write(test, Path(test.outputdir))
        test.log.info("Benchmark (%s):\n  %s", path, "\n  ".join(record.get("summary")))
    if dirty:
        test.fail("verify of the frozen region not clean: " + "; ".join(dirty))

"""What ``avocado bgsnap <sub-command>`` does."""

import json
import subprocess
import sys
import shutil
import time
from pathlib import Path

from avocado.core.output import LOG_UI

from . import (host, metrics, paths, preflight, qemu_builds, qmp_trace, uffdcheck, vt_compat,
               vtsetup)
from .guest import build as guest_build
from .guest import delivery as guest_delivery
from .guest import distro as guest_distro
from .host.memory import HostMemoryError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _opt(config, key):
    return config.get(f"bgsnap.{key}")


def build_guest(config) -> guest_build.GuestAssets:
    kernel = _opt(config, "kernel")
    started = time.monotonic()
    assets = guest_build.build_guest(paths.guest_cache_dir(), LOG_UI.info,
                                     Path(kernel) if kernel else None)
    LOG_UI.info("guest ready in %.1fs: kernel %s (%s), initrd %s",
                time.monotonic() - started, assets.kernel, assets.kernel_package, assets.initrd)
    wl_disk = guest_distro.build_wl_disk(paths.guest_cache_dir(), LOG_UI.info)
    LOG_UI.info("workload delivery disk %s", wl_disk)
    return assets


def build_distro_guest(config) -> int:
    """``build-guest --distro``: the Debian guest (docs/guests.md), and the
    top-level cfg's include of cfg/guests.cfg."""
    started = time.monotonic()
    build_guest(config)  # the workload binary and its delivery disk
    guest = guest_distro.build_distro_guest(
        paths.guest_cache_dir(), _opt(config, "distro"),
        guest_build.workload_binary(paths.guest_cache_dir()), LOG_UI.info)
    vtsetup.prepare()  # the top-level cfg's guests include and avocado.conf's filter, together
    LOG_UI.info("%s ready in %.1fs: kernel %s (%s), initrd %s, root image %s",
                guest.distro.name, time.monotonic() - started, guest.kernel,
                guest.kernel_version, guest.initrd, guest.image)
    return EXIT_OK


def host_check(config) -> int:
    qemu_binary = _opt(config, "qemu_binary") or shutil.which("qemu-system-x86_64")
    if not qemu_binary:
        LOG_UI.error("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
        return EXIT_FAIL
    guest = guest_build.cached_guest(paths.guest_cache_dir())
    if guest is None:
        LOG_UI.error("no embedded guest yet (the KVM probe boots it): run 'avocado bgsnap "
                     "build-guest' or 'avocado bgsnap setup' first")
        return EXIT_FAIL
    try:
        facts = preflight.check_host(qemu_binary, _opt(config, "accel"), guest.kernel,
                                     guest.initrd, _opt(config, "kvm_probe_timeout"))
    except preflight.HostUnsupported as exc:
        LOG_UI.error("host cannot run background snapshots: %s", exc)
        return EXIT_FAIL
    except host.HostCheckError as exc:
        LOG_UI.error("host check failed: %s", exc)
        return EXIT_FAIL
    if _opt(config, "json"):
        LOG_UI.info(json.dumps(facts.to_dict(), indent=2, sort_keys=True))
    else:
        for line in facts.report_lines():
            LOG_UI.info(line)
    return EXIT_OK


def setup(config) -> int:
    assets = build_guest(config)
    written = vtsetup.configure(assets, guest_build.workload_binary(paths.guest_cache_dir()),
                                _opt(config, "qemu_binary"), LOG_UI.info)
    for what, path in written.items():
        LOG_UI.info("%-13s %s", what, path)
    return EXIT_OK


def summary(config) -> int:
    job = Path(_opt(config, "job") or paths.results_dir() / "latest")
    files = sorted(job.glob("test-results/*/**/" + metrics.METRICS_FILE))
    if not files:
        LOG_UI.error("no %s under %s", metrics.METRICS_FILE, job)
        return EXIT_FAIL
    LOG_UI.info("job %s", job.resolve())
    for path in files:
        data = json.loads(path.read_text())
        test = path.relative_to(job / "test-results").parts[0]
        LOG_UI.info("%s: %s", test, metrics.summary_line(data))
        LOG_UI.info("    verdict: %s", data.get("verdict", "not reached"))
    return EXIT_OK


def report(config) -> int:
    from .report import build as report_build  # matplotlib/scipy only when asked for
    from .report.collect import ReportError

    jobs = _opt(config, "report_jobs") or [str(paths.results_dir() / "latest")]
    try:
        result = report_build.make_report(jobs, _opt(config, "report_compare") or (),
                                          _opt(config, "report_output"),
                                          by=_opt(config, "report_by"),
                                          sides=_opt(config, "report_sides") or ())
    except ReportError as exc:
        LOG_UI.error("%s", exc)
        return EXIT_FAIL
    for line in result.answers:
        LOG_UI.info("%s", line)
    for what in ("html", "markdown", "csv", "json"):
        LOG_UI.info("%-8s %s", what, result.files[what])
    LOG_UI.info("plots    %s", " ".join(p.name for p in result.plots) or "none")
    for check in result.shape_failures:  # a job-level gate: the exit status says it
        LOG_UI.error("shape check failed: %s", check.line)
    return EXIT_FAIL if result.shape_failures else EXIT_OK


def _added(build: qemu_builds.QemuBuild, wrapper: Path) -> None:
    LOG_UI.info("added QEMU build %s: %s (%s)", build.name, build.version_text, build.source)
    LOG_UI.info("  binary   %s %s", build.binary, " ".join(build.extra_args))
    for key, value in build.env.items():
        LOG_UI.info("  env      %s=%s", key, value)
    LOG_UI.info("  modules  %s (its own + placeholders masking the system QEMU's)",
                qemu_builds.module_overlay_dir(build.name))
    LOG_UI.info("  wrapper  %s", wrapper)
    LOG_UI.info("  tests    avocado list %s   (e.g. avocado run %s.bgsnap.basic.small)",
                build.name, build.name)


def qemu_add(config) -> int:
    backports, folder = _opt(config, "qemu_backports"), _opt(config, "qemu_dir")
    if bool(backports) == bool(folder):
        LOG_UI.error("usage: avocado bgsnap qemu-add --backports | --dir PATH [--name NAME]")
        return EXIT_USAGE
    name = _opt(config, "qemu_name")
    if backports:
        build = qemu_builds.fetch_debian_backports(qemu_builds.backports_dir(), LOG_UI.info,
                                                   name=name)
        if build is None:
            return EXIT_OK
    else:
        build = qemu_builds.build_from_dir(Path(folder), name=name)
    wrapper = qemu_builds.register(build)
    vtsetup.refresh_qemu_builds(LOG_UI.info)
    _added(build, wrapper)
    return EXIT_OK


def _system_row() -> tuple[str, str, str, str]:
    wrapper = paths.bgsnap_home() / "bin" / host.DEFAULT_QEMU
    binary = (vt_compat.real_qemu_binary(str(wrapper)) if wrapper.is_file()
              else shutil.which(host.DEFAULT_QEMU))
    if not binary:
        return (qemu_builds.SYSTEM, "not found", "system", "-")
    try:
        version = host.probe_qemu(binary).version_text
    except host.HostCheckError as exc:
        version = f"unusable: {exc.message}"
    return (qemu_builds.SYSTEM, version, "system", binary)


def qemu_list(config) -> int:
    rows = [("NAME", "VERSION", "SOURCE", "BINARY"), _system_row()]
    for build in qemu_builds.load_builds():
        missing = "" if Path(build.binary).is_file() else "  (MISSING)"
        rows.append((build.name, build.version_text, build.source, build.binary + missing))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        LOG_UI.info("%s  %s  %s  %s", *(c.ljust(w) for c, w in zip(row, widths)), row[3])
    if len(rows) > 2:
        LOG_UI.info("test names: <name>.<test> per build (e.g. %s.bgsnap.basic.small); the "
                    "system QEMU keeps the plain names (system.<test> selects it alone)",
                    rows[2][0])
    return EXIT_OK


def qemu_remove(config) -> int:
    build = qemu_builds.unregister(_opt(config, "qemu_build"))
    vtsetup.refresh_qemu_builds(LOG_UI.info)
    LOG_UI.info("removed QEMU build %s (%s, %s)", build.name, build.version_text, build.binary)
    return EXIT_OK


def uffd_check(config) -> int:
    try:
        report = uffdcheck.run_check(log=LOG_UI.info)
    except (uffdcheck.UffdCheckError, HostMemoryError) as exc:
        LOG_UI.error("%s", exc)
        return EXIT_FAIL
    for line in uffdcheck.render_table(report).splitlines():
        LOG_UI.info("%s", line)
    if _opt(config, "uffd_json"):
        LOG_UI.info("json     %s", uffdcheck.write_json(report, Path(_opt(config, "uffd_json"))))
    result = uffdcheck.verdict(report)
    (LOG_UI.error if result.status == "FAIL" else LOG_UI.info)("%s", result.message)
    return EXIT_FAIL if result.status == "FAIL" else EXIT_OK


# The kernel set (docs/uffd-check.md "One command for a kernel"): the
# guest-less self-check, the memory backends, the host's memory management.
KERNEL_SET = ("uffd", "memory.backend", "hostmm")


def validate_kernel(config) -> int:
    """Run the kernel set on the system QEMU, print one verdict table per
    kernel; exit 1 when a check or test failed."""
    from .report import kernel as kernel_report

    prefix = "system." if qemu_builds.load_builds() else ""
    refs = [prefix + ref for ref in (_opt(config, "kernel_refs") or KERNEL_SET)]
    LOG_UI.info("avocado run %s", " ".join(refs))
    job_status = subprocess.run([sys.executable, "-m", "avocado", "run", *refs],
                                check=False).returncode
    job = (paths.results_dir() / "latest").resolve()
    verdicts = kernel_report.kernel_verdicts([job])
    if not verdicts:
        LOG_UI.error("job %s (exit %d) holds no kernel results", job, job_status)
        return EXIT_FAIL
    for line in kernel_report.render(verdicts).splitlines():
        LOG_UI.info("%s", line)
    out = job / kernel_report.VERDICT_FILE
    out.write_text(json.dumps([v.to_dict() for v in verdicts], indent=2) + "\n")
    LOG_UI.info("json     %s (compare two kernels: avocado bgsnap report --job B --compare A)",
                out)
    failed = any(v.failed for v in verdicts)
    return EXIT_FAIL if failed or job_status not in (0, 1) else EXIT_OK


def repro(config) -> int:
    """Write a standalone reproducer for a failed test (docs/repro.md)."""
    from . import repro as repro_plan

    job = Path(_opt(config, "repro_job") or paths.results_dir() / "latest").resolve()
    try:
        results = json.loads((job / "results.json").read_text())
        test = repro_plan.pick_test(results.get("tests", []), _opt(config, "repro_test"))
        logdir = Path(test["logdir"])
        debug_log = (logdir / "debug.log").read_text(errors="replace")
        metrics_path = logdir / "data" / metrics.METRICS_FILE
        plan = repro_plan.make_plan(
            test["name"].split(":")[-1] if ":" in test["name"] else test["name"], debug_log,
            qmp_trace.read(logdir / qmp_trace.TRACE_FILE),
            json.loads(metrics_path.read_text()) if metrics_path.exists() else {},
            test.get("fail_reason") or "")
    except (OSError, ValueError, KeyError, repro_plan.ReproError) as exc:
        LOG_UI.error("no reproducer: %s", exc)
        return EXIT_FAIL
    out = Path(_opt(config, "repro_output") or job / "bgsnap-repro" / _safe(plan["test"]))
    out.mkdir(parents=True, exist_ok=True)
    files = {"vmlinuz": plan["original_files"]["kernel"],
             "initrd.img": plan["original_files"]["initrd"],
             "bgsnap-wl": repro_plan.test_param(debug_log, "bgsnap_wl_binary")}
    for name, source in files.items():
        if not source or not Path(source).exists():
            LOG_UI.error("no reproducer: the test's %s (%s) is gone", name, source)
            return EXIT_FAIL
        shutil.copy2(source, out / name)
    script = out / "repro.py"
    script.write_text(repro_plan.render(plan))
    script.chmod(0o755)
    LOG_UI.info("reproducer of %s (expects %s): %s", plan["test"], plan["expect"], script)
    LOG_UI.info("with copies of %s", ", ".join(f"{k} ({v})" for k, v in files.items()))
    LOG_UI.info("run: python3 %s   (exit 1: reproduced, 0: not, 2: incomplete)", script)
    return EXIT_OK


def ab_error_rates(config) -> int:
    """The A/B verdict's false-flag rate and power, resampled from real runs
    (report/error_rates.py, docs/benchmarks.md)."""
    from .report import collect, error_rates, stats  # scipy only when asked for

    jobs = _opt(config, "report_jobs") or [str(paths.results_dir() / "latest")]
    try:
        reps = [int(r) for r in str(_opt(config, "rates_reps") or "5").split(",")]
        floors = [float(f) for f in str(_opt(config, "rates_min_effect")
                                        or stats.DEFAULT_MIN_EFFECT).split(",")]
        pool_list = error_rates.pools(collect.load_points(collect.job_dirs(jobs)))
        results = [error_rates.measure(pool_list, r, rows=_opt(config, "rates_rows"),
                                       trials=_opt(config, "rates_trials")
                                       or error_rates.DEFAULT_TRIALS, control=control,
                                       min_effect=floor)
                   for floor in floors for r in reps for control in (False, True)]
    except (collect.ReportError, ValueError) as exc:
        LOG_UI.error("no error rates: %s", exc)
        return EXIT_FAIL
    for line in error_rates.render(pool_list, results).splitlines():
        LOG_UI.info("%s", line)
    out = collect.job_dirs(jobs)[0] / "bgsnap-error-rates.json"
    out.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    LOG_UI.info("json     %s", out)
    return EXIT_OK


def ab_confirm(config) -> int:
    """Re-run a job's A/B flags, A and B interleaved, and keep those that
    hold (report/confirm_run.py); the job's report is written again."""
    from .report import build as report_build, collect, confirm, confirm_run

    job = Path(_opt(config, "job") or paths.results_dir() / "latest").resolve()
    runs = _opt(config, "confirm_runs") or confirm_run.DEFAULT_RUNS
    try:
        confirmations = confirm_run.confirm_job(job, runs, LOG_UI.info)
    except (collect.ReportError, confirm.ConfirmError) as exc:
        LOG_UI.error("cannot confirm: %s", exc)
        return EXIT_FAIL
    if not confirmations:
        LOG_UI.info("nothing to confirm: no A/B flag between QEMU builds in %s", job)
        return EXIT_OK
    for c in confirmations:
        LOG_UI.info("%s", confirm_run.describe(c))
    LOG_UI.info("json     %s", job / confirm.CONFIRM_FILE)
    result = report_build.make_report([job])
    for line in result.answers:
        LOG_UI.info("%s", line)
    return EXIT_OK


def baseline(config) -> int:
    """The suite's test against the same cycle on raw QEMU (baseline/)."""
    from .baseline import compare, runs

    test = _opt(config, "baseline_test") or runs.DEFAULT_TEST
    n = _opt(config, "baseline_runs") or runs.DEFAULT_RUNS
    try:
        result = runs.measure(test, n, LOG_UI.info)
    except (runs.RunError, compare.BaselineError) as exc:
        LOG_UI.error("no baseline: %s", exc)
        return EXIT_FAIL
    for line in compare.render(result.rows, len(result.suite), len(result.raw)).splitlines():
        LOG_UI.info("%s", line)
    LOG_UI.info("json     %s", result.path)
    return EXIT_OK


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def dispatch(subcommand: str | None, config) -> int:
    handlers = {
        "host-check": host_check,
        "build-guest": lambda c: (build_distro_guest(c) if _opt(c, "distro")
                                  else build_guest(c) and EXIT_OK),
        "setup": setup,
        "summary": summary,
        "report": report,
        "qemu-add": qemu_add,
        "qemu-list": qemu_list,
        "qemu-remove": qemu_remove,
        "uffd-check": uffd_check,
        "validate-kernel": validate_kernel,
        "repro": repro,
        "ab-error-rates": ab_error_rates,
        "ab-confirm": ab_confirm,
        "baseline": baseline,
    }
    if subcommand not in handlers:
        LOG_UI.error("usage: avocado bgsnap {%s}", ",".join(handlers))
        return EXIT_USAGE
    try:
        return handlers[subcommand](config)
    except (guest_build.GuestBuildError, vtsetup.VtSetupError,
            qemu_builds.QemuBuildError, guest_distro.DistroBuildError,
            guest_delivery.DeliveryError) as exc:
        LOG_UI.error("%s", exc)
        return EXIT_FAIL

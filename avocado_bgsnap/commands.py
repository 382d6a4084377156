"""What ``avocado bgsnap <sub-command>`` does."""

import json
import shutil
import time
from pathlib import Path

from avocado.core.output import LOG_UI

from . import host, metrics, paths, preflight, vtsetup
from .guest import build as guest_build

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
    return assets


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


def dispatch(subcommand: str | None, config) -> int:
    handlers = {
        "host-check": host_check,
        "build-guest": lambda c: build_guest(c) and EXIT_OK,
        "setup": setup,
        "summary": summary,
    }
    if subcommand not in handlers:
        LOG_UI.error("usage: avocado bgsnap {%s}", ",".join(handlers))
        return EXIT_USAGE
    try:
        return handlers[subcommand](config)
    except (guest_build.GuestBuildError, vtsetup.VtSetupError) as exc:
        LOG_UI.error("%s", exc)
        return EXIT_FAIL

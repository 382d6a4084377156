"""Host checks done before any VM starts, with results a test can act on.

A missing prerequisite raises :class:`HostUnsupported`; the test turns it
into ``test.cancel(reason)``, never a failure.
"""

import os
from pathlib import Path

from . import host, internal_snapshot, paths, qemu_builds, vt_compat
from .guest.build import GUEST_READY_MARKER
from .transport import Transport

ACCEL_CACHE = "accel-probe.json"


class HostUnsupported(Exception):
    """The host cannot run a background snapshot; the message says why."""


def choose_accelerator(requested: str, qemu: host.QemuInfo, kernel: Path, initrd: Path,
                       probe_timeout: float) -> host.AccelChoice:
    """Resolve auto|kvm|tcg; the KVM boot probe is cached per host/QEMU/guest."""
    cache = paths.state_dir() / ACCEL_CACHE
    key = host.accel_cache_key(qemu, str(kernel), str(initrd), timeout=probe_timeout)

    def probe() -> host.AccelChoice:
        cached = host.load_cached_accel(cache, key)
        if cached is not None:
            return cached
        choice = host.probe_kvm(qemu, str(kernel), str(initrd), GUEST_READY_MARKER,
                                timeout=probe_timeout)
        host.save_cached_accel(cache, key, choice)
        return choice

    return host.resolve_accelerator(requested, probe)


def _probe_target(qemu_binary: str) -> tuple[str, tuple, dict | None]:
    """(binary, extra_args, env) to probe: a side-by-side build's wrapper is
    probed as its binary with the build's -L folders and module dir (so the
    KVM probe boots it exactly as the test will), the stall wrapper of the
    system QEMU as the binary behind it."""
    build = qemu_builds.build_for_wrapper(qemu_binary)
    if build is not None:
        return (build.binary, tuple(build.extra_args),
                {**os.environ, **qemu_builds.wrapper_env(build)})
    return vt_compat.real_qemu_binary(qemu_binary), (), None


def check_host(qemu_binary: str, requested_accel: str, kernel: Path, initrd: Path,
               probe_timeout: float = 20.0,
               snapshot_transport: Transport | None = None,
               snapshot_mode: str = "background") -> host.HostFacts:
    """Everything a background-snapshot test needs from the host, or HostUnsupported.

    With ``snapshot_transport``, a transport the QEMU lacks is unsupported
    too; so is a ``snapshot_mode`` it cannot do.
    """
    try:
        binary, extra_args, env = _probe_target(qemu_binary)
        qemu = host.probe_qemu(binary, extra_args=extra_args, env=env)
    except host.HostCheckError as exc:
        raise HostUnsupported(f"QEMU unusable: {exc}") from exc
    uffd = host.probe_uffd()
    for path in (kernel, initrd):
        if not Path(path).is_file():
            raise HostUnsupported(f"guest asset {path} missing: run 'avocado bgsnap build-guest'")
    accel = choose_accelerator(requested_accel, qemu, kernel, initrd, probe_timeout)
    facts = host.collect_facts(qemu, uffd, accel)
    problems = facts.problems()
    if snapshot_transport is not None:
        reason = snapshot_transport.unsupported_reason(qemu.version, qemu.migration_capabilities)
        if reason:
            problems.append(reason)
    if snapshot_mode == "snapshot_save":
        reason = internal_snapshot.unsupported_reason(qemu.version)
        if reason:
            problems.append(reason)
    if problems:
        raise HostUnsupported("; ".join(problems))
    return facts


def check_test_host(params, cfg, with_snapshot: bool = True) -> host.HostFacts:
    """:func:`check_host` for a test: its QEMU, kernel and initrd params and
    its settings (``with_snapshot``: also the transport and mode it saves with)."""
    snapshot_args = (cfg.transport, cfg.mode) if with_snapshot else ()
    return check_host(params["qemu_binary"], cfg.accel, Path(params["kernel"]),
                      Path(params["initrd"]), cfg.kvm_probe_timeout_s, *snapshot_args)


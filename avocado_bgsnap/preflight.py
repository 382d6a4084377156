"""Host checks done before any VM starts, with results a test can act on.

A missing prerequisite raises :class:`HostUnsupported`; the test turns it
into ``test.cancel(reason)``, never a failure.  A bad input the user gave
(a missing kernel, a snapshot dir that is not writable, a guest larger than
the host can hold) raises :class:`~.settings.SettingsError` first
(:func:`check_inputs`): the test ends in ERROR, naming the param.
"""

import os
import tempfile
from pathlib import Path

from . import host, internal_snapshot, paths, qemu_builds, vt_compat
from .guest import distro as guest_distro
from .guest.build import GUEST_READY_MARKER
from .host.memory import parse_meminfo
from .memory.config import HUGETLB
from .settings import BgsnapSettings, SettingsError
from .transport import Transport

ACCEL_CACHE = "accel-probe.json"
# The files of the guest a test boots; 'avocado bgsnap setup' sets them.
GUEST_FILES = ("kernel", "initrd")
# The host-side verifier of a snapshot (bgsnap-wl verify-dump).
VERIFIER_FILE = "bgsnap_wl_binary"
MEMINFO = Path("/proc/meminfo")


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


def check_file(params, key: str) -> Path:
    """params[key] names a readable regular file, or SettingsError."""
    value = params.get(key)
    if not value:
        raise SettingsError(f"{key} is not set: expected a file ('avocado bgsnap setup' "
                            f"sets it)")
    path = Path(value)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "no such file"
        raise SettingsError(f"{key} = {value!r}: {what}: expected an existing file "
                            f"('avocado bgsnap setup' sets it)")
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{key} = {value!r}: not readable by this user")
    return path


def check_writable_dir(key: str, path: Path) -> None:
    """``path`` is a directory this user can create files in, or SettingsError.

    os.access() is not the whole answer (root passes it on a read-only
    mount): a file is created and removed to be sure."""
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise SettingsError(f"{key} = '{path}': {what}: expected an existing, writable "
                            f"directory")
    try:
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("no write permission for this user")
        with tempfile.NamedTemporaryFile(dir=path, prefix=".bgsnap-write-check-"):
            pass
    except OSError as exc:
        raise SettingsError(f"{key} = '{path}': not writable (creating a file there: "
                            f"{exc.strerror or exc}): "
                            f"expected a directory this user can create files in") from None


def _ram_mib(memory) -> int:
    """RAM one QEMU of this memory config takes from the host's page pool
    (hugetlb blocks come from the hugepage pool, checked where it is set up)."""
    return sum(b.size_mib for b in memory.blocks if b.memory_type != HUGETLB)


def check_host_memory(cfg: BgsnapSettings, with_snapshot: bool = True,
                      meminfo: Path | None = None) -> None:
    """The guests of a test fit this host's MemAvailable, or SettingsError.

    Rule: a snapshot test runs the source guest and its restored copy at
    once, so ``mem`` counts twice (once without a snapshot)."""
    try:
        available_kib = parse_meminfo((meminfo or MEMINFO).read_text()).get("MemAvailable")
    except OSError:
        available_kib = None
    if available_kib is None:
        return
    need = _ram_mib(cfg.memory)
    if with_snapshot:
        need += _ram_mib(cfg.restore_memory or cfg.memory)
    if need > available_kib // 1024:
        who = "the guest and its restored copy run at once" if with_snapshot else "one guest"
        raise SettingsError(f"mem = {cfg.guest_mem_mib}: {who}: {need} MiB of guest RAM "
                            f"must fit this host's MemAvailable of {available_kib // 1024} MiB")


def check_inputs(params, cfg: BgsnapSettings, with_snapshot: bool = True) -> None:
    """What the user gave, against this host, before any QEMU starts: the
    guest's files, the snapshot dir, the guest's size (SettingsError naming
    the param: an ERROR, not a CANCEL)."""
    distro_error = guest_distro.missing_guest(params)
    if distro_error:
        raise SettingsError(distro_error)
    for key in GUEST_FILES + ((VERIFIER_FILE,) if with_snapshot else ()):
        check_file(params, key)
    if with_snapshot and cfg.snapshot_dir is not None:
        check_writable_dir("bgsnap_snapshot_dir", cfg.snapshot_dir)
    check_host_memory(cfg, with_snapshot)


def admit(test, params, cfg, with_snapshot: bool = True) -> host.HostFacts:
    """:func:`check_test_host` for a running test: an unfit host cancels it
    with the reason; a fit one's accelerator goes into the VM's params."""
    try:
        facts = check_test_host(params, cfg, with_snapshot)
    except HostUnsupported as exc:
        test.cancel(str(exc))
    params["vm_accelerator"] = facts.accel.accel
    return facts


def check_test_host(params, cfg, with_snapshot: bool = True) -> host.HostFacts:
    """:func:`check_inputs`, then :func:`check_host` for a test: its QEMU,
    kernel and initrd params and its settings (``with_snapshot``: also the
    transport and mode it saves with)."""
    check_inputs(params, cfg, with_snapshot)
    snapshot_args = (cfg.transport, cfg.mode) if with_snapshot else ()
    # the KVM probe boots the embedded guest whatever the test's guest is: it
    # prints the ready marker (a distro guest does not, cfg/guests.cfg)
    return check_host(params["qemu_binary"], cfg.accel,
                      Path(params.get("bgsnap_probe_kernel") or params["kernel"]),
                      Path(params.get("bgsnap_probe_initrd") or params["initrd"]),
                      cfg.kvm_probe_timeout_s, *snapshot_args)


"""One frozen, typed view of a test's Cartesian params.

Test modules call :func:`from_params` once; everything below them takes
these typed values, never the raw ``params`` dict.
"""

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from . import bad_image, capabilities
from . import guest_states
from . import transport as transports
from .during import faults
from .during import host_mm as mm_actions
from .during.devices import BalloonSettings, VirtioMemSettings
from .guest.build import GUEST_READY_MARKER
from .memory import config as memory_config
from .memory.config import MemoryConfig
from .wlproto import MAX_MIB, MAX_WRITERS, PATTERNS, WorkloadSpec

ACCELERATORS = ("auto", "kvm", "tcg")
# What a negative-control variant does to the snapshot; the test then PASSes
# only when the verifier catches it.
NEGATIVE_CONTROLS = ("none", "damage_file", "damage_in_transit", "late_image",
                     "wrong_prediction", "skewed_disk")
# background: the feature under test; stop_save: stop, migrate to the file,
# cont; snapshot_save: an internal snapshot into a qcow2 (snapshot-save job);
# precopy: live migration into the file (its END state is the image).
MODES = ("background", "stop_save", "snapshot_save", "precopy")
# The modes whose guest keeps running while its RAM is saved.
RUNNING_MODES = ("background", "precopy")
# Negative controls that make sense for an internal snapshot (no migration
# stream to damage in transit; the late image is a migration stream).
INTERNAL_NEGATIVE_CONTROLS = ("none", "damage_file")
# The host THP mode a test runs under (keep: leave the host's as it is).
HOST_THP_MODES = ("keep", "always", "madvise", "never")
# What can happen while the RAM streams (during/): a name each.
DURING_ACTIONS = ("balloon", "virtio_mem", "second_migrate") + mm_actions.HOST_MM_ACTIONS
# The largest guest the workload can address (1 TiB); the host's own memory
# is checked in preflight.check_inputs().
MAX_MEM_MIB = MAX_MIB
SEED_MAX = (1 << 64) - 1


class SettingsError(ValueError):
    """A cfg value is missing or invalid; the message names the param."""


@dataclass(frozen=True)
class GuestLogin:
    """How the guest is reached on its serial console (cfg/guests.cfg)."""

    guest: str = "busybox"           # bgsnap_guest: busybox, debian12, debian13
    prompt: str = ""                 # bgsnap_login_prompt: a regex; '' = a shell at once
    timeout_s: float = 120           # bgsnap_login_timeout: boot + login
    restored_timeout_s: float = 30   # bgsnap_restored_login_timeout
    attempt_s: float = 2             # one login attempt (longer with a login prompt)
    ready_marker: str = GUEST_READY_MARKER  # printed right before the shell ("" for others)


@dataclass(frozen=True)
class BgsnapSettings:
    accel: str                 # auto | kvm | tcg  (param bgsnap_accel)
    kvm_probe_timeout_s: float
    guest_mem_mib: int         # param mem
    workload: WorkloadSpec
    fill_timeout_s: float
    snapshot_timeout_s: float
    restore_timeout_s: float
    verify_timeout_s: float
    max_pause_ms: float        # 0 = no gate
    max_total_s: float         # snapshot start -> completed; 0 = no gate
    max_stall_ms: float        # worst guest page write during the save; 0 = no gate
    negative_control: str      # one of NEGATIVE_CONTROLS
    late_image_delay_s: float  # late_image: stop-and-save this long after the trigger
    transport: transports.Transport
    mode: str                  # one of MODES
    max_bandwidth_mib_s: int   # migration rate cap for stop_save/precopy; 0 = none
    qemu_build: str            # a label for reports (system, qemu10_0_2, ...)
    repetition: int            # which repetition of a measured point
    keep_snapshot: bool
    snapshot_dir: Path | None  # None = the test's workdir
    memory: MemoryConfig       # what backs the guest RAM (avocado-vt's mem params)
    restore_params: tuple[tuple[str, str], ...] = ()  # params changed for the restoring QEMU
    restore_memory: MemoryConfig | None = None        # its memory, when restore_params change it
    host_thp: str = "keep"     # one of HOST_THP_MODES
    balloon: BalloonSettings | None = None        # bgsnap_during has 'balloon'
    virtio_mem: VirtioMemSettings | None = None   # bgsnap_during has 'virtio_mem'
    host_mm: mm_actions.HostMMSettings | None = None  # bgsnap_during has pageout, ksm, ...
    second_migrate: bool = False    # bgsnap_during has 'second_migrate' (during/faults.py)
    login: GuestLogin = GuestLogin()  # the guest's console login (cfg/guests.cfg)


def _choice(params, key: str, default: str, allowed: tuple) -> str:
    value = params.get(key, default)
    if value not in allowed:
        raise SettingsError(f"{key} = {value!r}: expected one of {', '.join(allowed)}")
    return value


def _transport(params, negative: str, nonce: int) -> transports.Transport:
    """bgsnap_save_uri + bgsnap_restore_uri (custom) win over bgsnap_transport."""
    save, restore = params.get("bgsnap_save_uri"), params.get("bgsnap_restore_uri")
    name = params.get("bgsnap_transport", "file")
    where = f"bgsnap_transport = {name!r}"
    try:
        if negative == "damage_in_transit":
            where = "bgsnap_negative_control = damage_in_transit"
            return transports.damaged_in_transit(nonce)
        if save or restore:
            where = "bgsnap_save_uri, bgsnap_restore_uri"
            if not (save and restore):
                raise transports.TransportError(
                    "set both bgsnap_save_uri and bgsnap_restore_uri, or neither")
            caps = tuple(params.get("bgsnap_transport_capabilities", "").split())
            return transports.custom(save, restore, caps)
        return transports.by_name(name)
    except transports.TransportError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def _check_internal(transport: transports.Transport, negative: str) -> None:
    """snapshot_save writes into a qcow2: no transport, fewer negative controls."""
    if transport.name != "file":
        raise SettingsError(f"bgsnap_mode = snapshot_save saves into a qcow2 image: "
                            f"bgsnap_transport = {transport.name} does not apply")
    if negative not in INTERNAL_NEGATIVE_CONTROLS:
        raise SettingsError(f"bgsnap_negative_control = {negative} does not apply to "
                            f"bgsnap_mode = snapshot_save (allowed: "
                            f"{', '.join(INTERNAL_NEGATIVE_CONTROLS)})")


def _restore_params(params) -> tuple[tuple[str, str], ...]:
    """bgsnap_restore_params = "key=value key=value": the restoring QEMU's
    params differ from the source's in these (e.g. another backend)."""
    pairs = []
    for item in params.get("bgsnap_restore_params", "").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"bgsnap_restore_params: {item!r} is not key=value")
        pairs.append((key, value))
    return tuple(pairs)


def _memory(params) -> tuple[MemoryConfig, MemoryConfig | None, tuple]:
    restore = _restore_params(params)
    try:
        memory = memory_config.from_params(params)
        restore_memory = None
        if restore:
            changed = params.copy()
            changed.update(dict(restore))
            restore_memory = memory_config.from_params(changed)
    except memory_config.MemoryConfigError as exc:
        raise SettingsError(str(exc)) from None
    if memory.vcpus < 1:
        raise SettingsError(f"smp = {memory.vcpus}: expected >= 1 (vCPUs)")
    return memory, restore_memory, restore


def _during(params, mode: str, mem: int, memory: MemoryConfig, dup_mib: int = 0):
    names = params.get("bgsnap_during", "").split()
    for name in names:
        if name not in DURING_ACTIONS:
            raise SettingsError(f"bgsnap_during: unknown action {name!r}: expected some of "
                                f"{', '.join(DURING_ACTIONS)}")
    if names and mode != "background":
        raise SettingsError(f"bgsnap_during = {' '.join(names)} acts while a background "
                            f"snapshot streams: needs bgsnap_mode = background, not {mode}")
    timeout = _seconds(params, "bgsnap_during_timeout", 20)
    balloon = vmem = None
    if "balloon" in names:
        if not params.objects("balloon"):
            raise SettingsError("bgsnap_during = balloon needs a balloon device (balloon = ...)")
        inflate = _number(params, "bgsnap_balloon_inflate_mib", 64, int, 1, mem // 2 - 1,
                          note=f" (under half of mem = {mem})")
        balloon = BalloonSettings(mem, inflate, timeout)
    if "virtio_mem" in names:
        devs = [b for b in memory.blocks if b.virtio_mem]
        if len(devs) != 1:
            raise SettingsError("bgsnap_during = virtio_mem needs exactly one mem_devs entry "
                                "with vm_memdev_model = virtio-mem")
        words = params.get("bgsnap_virtio_mem_sizes", "").split()
        sizes = tuple(int(x) for x in words if x.isdigit())
        if not sizes or len(sizes) != len(words) or any(x > devs[0].size_mib for x in sizes):
            raise SettingsError(f"bgsnap_virtio_mem_sizes = {params.get('bgsnap_virtio_mem_sizes')!r}"
                                f": expected MiB values in 0..{devs[0].size_mib}")
        vmem = VirtioMemSettings(
            f"virtio_mem-{devs[0].name}", mem, devs[0].size_mib, sizes,
            step_wait_s=_number(params, "bgsnap_virtio_mem_step_wait", 3, float),
            settle_timeout_s=_seconds(params, "bgsnap_virtio_mem_settle_timeout", 90))
    return balloon, vmem, _host_mm(params, names, mem, timeout, dup_mib)


def _number(params, key: str, default, kind=int, low=0, high=None, strict=False, note=""):
    """params[key] as ``kind`` in ``low..high`` (``strict``: above ``low``);
    the message names the param, the value and what is expected."""
    raw = params.get(key, default)
    wanted = (f"{low}..{high}" if high is not None else
              f"> {low}" if strict else f">= {low}") + note
    try:
        value = kind(raw)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None or (kind is float and not math.isfinite(value)):
        noun = "an integer" if kind is int else "a number"
        raise SettingsError(f"{key} = {raw!r}: expected {noun} {wanted}")
    if value < low or (strict and value == low) or (high is not None and value > high):
        raise SettingsError(f"{key} = {raw}: expected {wanted}")
    return value


def _seconds(params, key: str, default) -> float:
    """A timeout: seconds, above 0."""
    return _number(params, key, default, float, 0, strict=True, note=" (seconds)")


def _gate(params, key: str) -> float:
    """A threshold of cfg; 0 (the default) disables it."""
    return _number(params, key, 0, float, note=" (0 = no gate)")


def _positive(params, key: str, default, kind=int, minimum=1):
    return _number(params, key, default, kind, minimum)


def _host_mm(params, names, mem: int, timeout: float, dup_mib: int = 0
             ) -> mm_actions.HostMMSettings | None:
    """The host memory-management actions (during/host_mm.py) and their knobs."""
    if not set(names) & set(mm_actions.HOST_MM_ACTIONS):
        return None
    pageout = compact = collapse = ksm = numa = None
    loop_s = _positive(params, "bgsnap_host_mm_timeout", timeout, float, 0.1)
    if "pageout" in names:
        swap_mib = _positive(params, "bgsnap_swap_mib", 1024)
        if swap_mib < mem:
            raise SettingsError(f"bgsnap_swap_mib = {swap_mib}: the swap file must hold the "
                                f"whole guest RAM (mem = {mem})")
        swap_dir = params.get("bgsnap_swap_dir", "/var/tmp")
        if not swap_dir.startswith("/"):
            raise SettingsError(f"bgsnap_swap_dir = {swap_dir!r}: expected an absolute path")
        pageout = mm_actions.PageoutSettings(mem, swap_mib, Path(swap_dir))
    if "compact" in names:
        compact = mm_actions.CompactSettings(
            mem, loop_s, _positive(params, "bgsnap_compact_interval", 0.5, float, 0.01))
    if "thp_collapse" in names:
        collapse = mm_actions.ThpCollapseSettings(
            mem, loop_s, _positive(params, "bgsnap_thp_collapse_interval", 0.5, float, 0.01))
    if "ksm" in names:
        dupwrite = params.get_boolean("bgsnap_ksm_dupwrite", False)
        if dupwrite and not dup_mib:
            raise SettingsError("bgsnap_ksm_dupwrite = yes writes the workload's duplicate "
                                "region: needs bgsnap_dup_mib > 0")
        merged_pct = _number(params, "bgsnap_ksm_dup_merged_pct", 50, int, 1, 100)
        ksm = mm_actions.KsmSettings(mem, _positive(params, "bgsnap_ksm_pages_to_scan", 10000),
                                  _positive(params, "bgsnap_ksm_sleep_ms", 10, int, 0), loop_s,
                                  dupwrite=dupwrite, dup_merged_pct=merged_pct)
    if "numa_migrate" in names:
        nodes = params.get("bgsnap_numa_nodes", "0 1").split()
        if len(nodes) != 2 or not all(n.isdigit() for n in nodes) or nodes[0] == nodes[1]:
            raise SettingsError(f"bgsnap_numa_nodes = {params.get('bgsnap_numa_nodes')!r}: "
                                "expected two different host node numbers, from and to")
        numa = mm_actions.NumaMigrateSettings(mem, int(nodes[0]), int(nodes[1]))
    return mm_actions.HostMMSettings(pageout, compact, collapse, ksm, numa)


def _workload(params, mem: int) -> WorkloadSpec:
    """The guest workload's params, each checked by name (WorkloadSpec checks
    them again, by field)."""
    wl_mib = _number(params, "bgsnap_workload_mib", mem * 3 // 4, int, 1, MAX_MEM_MIB)
    if wl_mib >= mem:
        raise SettingsError(f"bgsnap_workload_mib = {wl_mib} must be below mem = {mem}")
    dup_mib = _number(params, "bgsnap_dup_mib", 0, note=" (0 = none)")
    if dup_mib and wl_mib + dup_mib >= mem:
        raise SettingsError(f"bgsnap_workload_mib + bgsnap_dup_mib = {wl_mib} + {dup_mib} "
                            f"must be below mem = {mem}")
    return WorkloadSpec(
        mib=wl_mib,
        seed=_number(params, "bgsnap_seed", 1, int, 0, SEED_MAX),
        nonce=random.SystemRandom().getrandbits(63),
        writers=_number(params, "bgsnap_writers", 1, int, 1, MAX_WRITERS),
        pattern=_choice(params, "bgsnap_pattern", "random", PATTERNS),
        hot_pct=_number(params, "bgsnap_hot_pct", 10, int, 1, 100, note=" (%)"),
        rate_mib_s=_number(params, "bgsnap_rate_mib_s", 0, note=" (0 = unlimited)"),
        latency=params.get_boolean("bgsnap_latency", True),
        dup_mib=dup_mib,
    )


def _snapshot_dir(params) -> Path | None:
    """bgsnap_snapshot_dir, absolute (preflight.check_inputs() checks that
    it is a writable directory)."""
    value = params.get("bgsnap_snapshot_dir") or None
    if value is not None and not value.startswith("/"):
        raise SettingsError(f"bgsnap_snapshot_dir = {value!r}: expected an absolute path "
                            f"(empty: the test's workdir)")
    return Path(value) if value else None


def from_params(params) -> BgsnapSettings:
    """Read and validate every param the suite uses, once."""
    try:
        mem = _number(params, "mem", 1024, int, 1, MAX_MEM_MIB, note=" MiB (at most 1 TiB)")
        workload = _workload(params, mem)
        negative = _choice(params, "bgsnap_negative_control", "none", NEGATIVE_CONTROLS)
        mode = _choice(params, "bgsnap_mode", "background", MODES)
        transport = _transport(params, negative, workload.nonce)
        if mode == "snapshot_save":
            _check_internal(transport, negative)
        memory, restore_memory, restore = _memory(params)
        balloon, vmem, host_mm_cfg = _during(params, mode, mem, memory, workload.dup_mib)
        return BgsnapSettings(
            accel=_choice(params, "bgsnap_accel", "auto", ACCELERATORS),
            kvm_probe_timeout_s=_seconds(params, "bgsnap_kvm_probe_timeout", 20),
            guest_mem_mib=mem,
            workload=workload,
            fill_timeout_s=_seconds(params, "bgsnap_fill_timeout", 300),
            snapshot_timeout_s=_seconds(params, "bgsnap_snapshot_timeout", 600),
            restore_timeout_s=_seconds(params, "bgsnap_restore_timeout", 600),
            verify_timeout_s=_seconds(params, "bgsnap_verify_timeout", 300),
            max_pause_ms=_gate(params, "max_pause_ms"),
            max_total_s=_gate(params, "max_total_s"),
            max_stall_ms=_gate(params, "max_stall_ms"),
            negative_control=negative,
            late_image_delay_s=_number(params, "bgsnap_late_image_delay", 2, float),
            transport=transport,
            mode=mode,
            max_bandwidth_mib_s=_number(params, "bgsnap_max_bandwidth_mib_s", 0,
                                        note=" (0 = no cap)"),
            qemu_build=params.get("bgsnap_qemu_build", "system"),
            repetition=_number(params, "bgsnap_repetition", 1, int, 1),
            keep_snapshot=params.get_boolean("bgsnap_keep_snapshot", False),
            snapshot_dir=_snapshot_dir(params),
            memory=memory,
            restore_params=restore,
            restore_memory=restore_memory,
            host_thp=_choice(params, "bgsnap_host_thp", "keep", HOST_THP_MODES),
            balloon=balloon,
            virtio_mem=vmem,
            host_mm=host_mm_cfg,
            second_migrate="second_migrate" in params.get("bgsnap_during", "").split(),
            login=login_from_params(params),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"invalid bgsnap cfg: {exc}") from exc


def login_from_params(params) -> GuestLogin:
    """The guest's console login (cfg/guests.cfg, docs/guests.md)."""
    prompt = params.get("bgsnap_login_prompt", "")
    try:
        re.compile(prompt)
    except re.error as exc:
        raise SettingsError(f"bgsnap_login_prompt = {prompt!r}: not a regular expression "
                            f"({exc})") from None
    guest = params.get("bgsnap_guest", "busybox")
    return GuestLogin(
        guest=guest,
        prompt=prompt,
        timeout_s=_seconds(params, "bgsnap_login_timeout", 120),
        restored_timeout_s=_seconds(params, "bgsnap_restored_login_timeout", 30),
        # avocado-vt's console login waits its whole attempt before it reads
        # (vt_compat 5): short attempts, a few more for the password prompt
        attempt_s=4.0 if prompt else 2.0,
        ready_marker=GUEST_READY_MARKER if guest == "busybox" and not prompt else "")


def fault_from_params(params) -> "faults.FaultSettings":
    """The fault of a ``bgsnap_fault`` test (during/faults.py)."""
    name = _choice(params, "bgsnap_fault", "cancel", faults.FAULTS)
    delay = params.get_numeric("bgsnap_fault_delay", 1.0, float)
    if not 0 <= delay <= 60:
        raise SettingsError(f"bgsnap_fault_delay = {delay}: expected 0..60 (seconds after "
                            f"RESUME)")
    return faults.FaultSettings(name, delay)


def bad_image_from_params(params) -> "bad_image.BadImageSettings":
    """The bad image of a ``bgsnap_bad_image`` test (bad_image.py)."""
    kind = _choice(params, "bgsnap_bad_image", "truncated", bad_image.KINDS)
    bound = params.get_numeric("bgsnap_bad_image_bound", 60, float)
    if not 1 <= bound <= 3600:
        raise SettingsError(f"bgsnap_bad_image_bound = {bound}: expected 1..3600 seconds")
    return bad_image.BadImageSettings(kind, bound)


def guest_state_from_params(params) -> "guest_states.StateSettings":
    """The knobs of the guest-state tests (guest_states.py)."""
    mem = _number(params, "mem", 1024, int, 1, MAX_MEM_MIB)
    return guest_states.StateSettings(
        soak_rounds=_number(params, "bgsnap_soak_count", 5, int, 1, 1000,
                            note=" (back-to-back snapshots)"),
        idle_file_mib=_number(params, "bgsnap_idle_file_mib", 16, int, 1, max(1, mem // 4),
                              note=f" MiB (at most a quarter of mem = {mem})"))


def capability_from_params(params) -> str:
    """The migration capability of a ``bgsnap_capability`` test
    (capabilities.py): one QEMU refuses next to background-snapshot
    (qmp.INCOMPATIBLE_WITH_BACKGROUND), or a control it accepts."""
    return _choice(params, "bgsnap_capability", "", capabilities.TESTED)


def disk_from_params(params) -> "disk_snapshot.DiskSettings":
    """The journal disk of a whole-VM snapshot (``bgsnap_disk``, disk_snapshot.py)."""
    from . import disk_snapshot  # its settings only; the module needs no settings

    form = _choice(params, "bgsnap_disk_form", "background", disk_snapshot.FORMS)
    mode = _choice(params, "bgsnap_mode", "background", MODES)
    wanted = "snapshot_save" if form == "internal" else "background"
    if mode != wanted:
        raise SettingsError(f"bgsnap_disk_form = {form} needs bgsnap_mode = {wanted}, "
                            f"not {mode}")
    skew = _number(params, "bgsnap_disk_skew_s", 0, float, -60, 60,
                   note=" (seconds; < 0 disk frozen before the RAM, > 0 after, 0 = same instant)")
    negative = _choice(params, "bgsnap_negative_control", "none", ("none", "skewed_disk"))
    if (negative == "skewed_disk") != (skew != 0):
        raise SettingsError(f"bgsnap_negative_control = {negative} with bgsnap_disk_skew_s = "
                            f"{skew}: the negative control skewed_disk needs a skew, a skew "
                            f"needs the negative control")
    if skew and form == "internal":
        raise SettingsError(f"bgsnap_disk_skew_s = {skew}: the internal form saves disk and "
                            f"RAM in one job, nothing to skew (bgsnap_disk_form = background)")
    return disk_snapshot.DiskSettings(
        form=form,
        disk_mib=_number(params, "bgsnap_disk_mib", 64, int, 16, 4096, note=" MiB"),
        journal_ms=_number(params, "bgsnap_journal_ms", 10, int, 0, 60000,
                           note=" (ms between journal records)"),
        skew_s=skew)

"""One frozen, typed view of a test's Cartesian params.

Test modules call :func:`from_params` once; everything below them takes
these typed values, never the raw ``params`` dict.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from . import transport as transports
from .wlproto import WorkloadSpec

ACCELERATORS = ("auto", "kvm", "tcg")
# What a negative-control variant does to the snapshot; the test then PASSes
# only when the verifier catches it.
NEGATIVE_CONTROLS = ("none", "damage_file", "damage_in_transit", "late_image")
# background: the feature under test; stop_save: stop, migrate to the file,
# cont; snapshot_save: an internal snapshot into a qcow2 (snapshot-save job);
# precopy: live migration into the file (its END state is the image).
MODES = ("background", "stop_save", "snapshot_save", "precopy")
# The modes whose guest keeps running while its RAM is saved.
RUNNING_MODES = ("background", "precopy")
# Negative controls that make sense for an internal snapshot (no migration
# stream to damage in transit; the late image is a migration stream).
INTERNAL_NEGATIVE_CONTROLS = ("none", "damage_file")


class SettingsError(ValueError):
    """A cfg value is missing or invalid; the message names the param."""


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


def _choice(params, key: str, default: str, allowed: tuple) -> str:
    value = params.get(key, default)
    if value not in allowed:
        raise SettingsError(f"{key} = {value!r}: expected one of {', '.join(allowed)}")
    return value


def _transport(params, negative: str) -> transports.Transport:
    """bgsnap_save_uri + bgsnap_restore_uri (custom) win over bgsnap_transport."""
    save, restore = params.get("bgsnap_save_uri"), params.get("bgsnap_restore_uri")
    try:
        if negative == "damage_in_transit":
            return transports.by_name("damaged_in_transit")
        if save or restore:
            if not (save and restore):
                raise transports.TransportError(
                    "set both bgsnap_save_uri and bgsnap_restore_uri, or neither")
            caps = tuple(params.get("bgsnap_transport_capabilities", "").split())
            return transports.custom(save, restore, caps)
        return transports.by_name(params.get("bgsnap_transport", "file"))
    except transports.TransportError as exc:
        raise SettingsError(str(exc)) from None


def _check_internal(transport: transports.Transport, negative: str) -> None:
    """snapshot_save writes into a qcow2: no transport, fewer negative controls."""
    if transport.name != "file":
        raise SettingsError(f"bgsnap_mode = snapshot_save saves into a qcow2 image: "
                            f"bgsnap_transport = {transport.name} does not apply")
    if negative not in INTERNAL_NEGATIVE_CONTROLS:
        raise SettingsError(f"bgsnap_negative_control = {negative} does not apply to "
                            f"bgsnap_mode = snapshot_save (allowed: "
                            f"{', '.join(INTERNAL_NEGATIVE_CONTROLS)})")


def from_params(params) -> BgsnapSettings:
    """Read and validate every param the suite uses, once."""
    try:
        mem = int(params.get_numeric("mem", 1024))
        wl_mib = int(params.get_numeric("bgsnap_workload_mib", mem * 3 // 4))
        if wl_mib >= mem:
            raise SettingsError(f"bgsnap_workload_mib = {wl_mib} must be below mem = {mem}")
        seed = int(params.get_numeric("bgsnap_seed", 1))
        workload = WorkloadSpec(
            mib=wl_mib,
            seed=seed,
            nonce=random.SystemRandom().getrandbits(63),
            writers=int(params.get_numeric("bgsnap_writers", 1)),
            pattern=params.get("bgsnap_pattern", "random"),
            hot_pct=int(params.get_numeric("bgsnap_hot_pct", 10)),
            rate_mib_s=int(params.get_numeric("bgsnap_rate_mib_s", 0)),
            latency=params.get_boolean("bgsnap_latency", True),
        )
        snapshot_dir = params.get("bgsnap_snapshot_dir") or None
        negative = _choice(params, "bgsnap_negative_control", "none", NEGATIVE_CONTROLS)
        mode = _choice(params, "bgsnap_mode", "background", MODES)
        transport = _transport(params, negative)
        if mode == "snapshot_save":
            _check_internal(transport, negative)
        bandwidth = int(params.get_numeric("bgsnap_max_bandwidth_mib_s", 0))
        if bandwidth < 0:
            raise SettingsError(f"bgsnap_max_bandwidth_mib_s = {bandwidth}: expected >= 0 "
                                f"(0 = no cap)")
        return BgsnapSettings(
            accel=_choice(params, "bgsnap_accel", "auto", ACCELERATORS),
            kvm_probe_timeout_s=params.get_numeric("bgsnap_kvm_probe_timeout", 20, float),
            guest_mem_mib=mem,
            workload=workload,
            fill_timeout_s=params.get_numeric("bgsnap_fill_timeout", 300, float),
            snapshot_timeout_s=params.get_numeric("bgsnap_snapshot_timeout", 600, float),
            restore_timeout_s=params.get_numeric("bgsnap_restore_timeout", 600, float),
            verify_timeout_s=params.get_numeric("bgsnap_verify_timeout", 300, float),
            max_pause_ms=params.get_numeric("max_pause_ms", 0, float),
            max_total_s=params.get_numeric("max_total_s", 0, float),
            max_stall_ms=params.get_numeric("max_stall_ms", 0, float),
            negative_control=negative,
            late_image_delay_s=params.get_numeric("bgsnap_late_image_delay", 2, float),
            transport=transport,
            mode=mode,
            max_bandwidth_mib_s=bandwidth,
            qemu_build=params.get("bgsnap_qemu_build", "system"),
            repetition=int(params.get_numeric("bgsnap_repetition", 1)),
            keep_snapshot=params.get_boolean("bgsnap_keep_snapshot", False),
            snapshot_dir=Path(snapshot_dir) if snapshot_dir else None,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"invalid bgsnap cfg: {exc}") from exc

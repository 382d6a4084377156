"""The figures the report shows and compares: one name, label, unit each.

A figure's ``key`` is an attribute of :class:`collect.Point`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..settings import RUNNING_MODES


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_worse: bool = True
    # a figure of the guest's writes DURING the save: only defined where the
    # guest runs during it (in stop_save/snapshot_save it is stopped, and the
    # "during" window holds the few writes around the pause: noise)
    running_guest_only: bool = False

    def applies_to(self, mode_label: str) -> bool:
        return not self.running_guest_only or mode_label.split("+", 1)[0] in RUNNING_MODES

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


PAUSE = Figure("pause_ms", "true pause", "ms")
DOWNTIME = Figure("downtime_ms", "QEMU downtime", "ms")
TOTAL = Figure("snapshot_total_s", "snapshot total time", "s")
SNAPSHOT_MIB = Figure("snapshot_mib", "snapshot size", "MiB")
DIP = Figure("dip_pct", "guest write throughput dip", "%")
STALL_MAX = Figure("stall_max_ms", "longest guest write during the snapshot", "ms",
                   running_guest_only=True)
STALL_P99 = Figure("stall_p99_us", "p99 guest write during the snapshot", "µs",
                   running_guest_only=True)
SOURCE_RSS = Figure("source_peak_rss_mib", "peak RSS of the source QEMU", "MiB")
RESTORED_RSS = Figure("restored_peak_rss_mib", "peak RSS of the restoring QEMU", "MiB")
DISK = Figure("disk_mib", "disk used at once (image + dump)", "MiB")
BOOT = Figure("boot_s", "boot", "s")
FILL = Figure("fill_s", "fill", "s")
RESTORE = Figure("restore_s", "restore", "s")
DUMP = Figure("dump_s", "dump", "s")
VERIFY = Figure("verify_s", "host verify", "s")

# What "did my patch make the pause or the stalls worse?" compares.
COMPARED = (PAUSE, STALL_MAX, STALL_P99, TOTAL)
# The time split of one test: where its wall time went.
TIME_SPLIT = (BOOT, FILL, TOTAL, RESTORE, DUMP, VERIFY)
TIME_SPLIT_NAMES = {BOOT.key: "boot", FILL.key: "fill", TOTAL.key: "save",
                    RESTORE.key: "restore", DUMP.key: "dump", VERIFY.key: "verify"}


def fmt(value: float | None, digits: int = 3) -> str:
    """About ``digits`` significant digits, no exponent for everyday sizes."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else ("+inf" if value > 0 else "-inf")
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def fmt_pct(change: float | None) -> str:
    if change is None:
        return "n/a"
    if math.isinf(change):
        return "+inf %" if change > 0 else "-inf %"
    return f"{change * 100:+.1f} %"


def fmt_mib(mib: int | float | None) -> str:
    if mib is None:
        return "n/a"
    return f"{mib / 1024:g} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib:g} MiB"

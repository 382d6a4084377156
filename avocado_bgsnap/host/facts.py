"""Host facts: the probes together with kernel, CPU and memory.

:class:`HostFacts` and :meth:`HostFacts.problems`, which names any missing
prerequisite.  No work at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .accel import AccelChoice
from .errors import _read_text
from .qemu import BACKGROUND_SNAPSHOT, QemuInfo
from .uffd import UFFD_DEV_SINCE, UFFD_DEVICE, UFFD_MODE_DEVICE, UFFD_MODE_USER_ONLY, UffdInfo


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` in KiB from /proc/meminfo text."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1])
            except (IndexError, ValueError):
                return None
    return None


def parse_cpu_model(text: str) -> str:
    """The first ``model name`` of /proc/cpuinfo ("" when absent, e.g. on s390x)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return " ".join(value.split())
    return ""


@dataclass(frozen=True)
class HostFacts:
    """What this host offers a background snapshot."""

    qemu: QemuInfo
    uffd: UffdInfo
    accel: AccelChoice | None
    kernel_release: str
    cpu_count: int
    mem_total_kib: int | None
    hostname: str = ""          # what a fleet report groups by (os.uname().nodename)
    cpu_model: str = ""         # /proc/cpuinfo "model name" of the first CPU

    def problems(self) -> list[str]:
        """Missing prerequisites, each a message that says what to do."""
        found = []
        if not self.qemu.supports_background_snapshot:
            found.append(f"QEMU {self.qemu.version_text} ({self.qemu.binary}) lacks the "
                         f"migration capability '{BACKGROUND_SNAPSHOT}' (QEMU 6.0+ needed)")
        if not self.uffd.available:
            found.append(f"userfaultfd unavailable: {self.uffd.reason}")
        elif not self.uffd.wp:
            found.append(f"host kernel {self.kernel_release}: userfaultfd lacks "
                         "UFFD_FEATURE_PAGEFAULT_FLAG_WP (write-protect), which "
                         "background-snapshot needs: Linux 5.7+ needed")
        elif self.uffd.open_mode == UFFD_MODE_USER_ONLY:
            found.append("userfaultfd opens only with UFFD_USER_MODE_ONLY "
                         f"(vm.unprivileged_userfaultfd=0 for this user); QEMU opens it "
                         "without that flag and refuses background-snapshot ('not supported by "
                         "host kernel'): run as root, "
                         "set sysctl vm.unprivileged_userfaultfd=1, or (QEMU 8.0+) grant "
                         f"access to {UFFD_DEVICE}")
        elif (self.uffd.open_mode == UFFD_MODE_DEVICE
              and tuple(self.qemu.version) < UFFD_DEV_SINCE):
            found.append(f"userfaultfd is reachable only through {UFFD_DEVICE}, which QEMU "
                         f"{self.qemu.version_text} does not use (8.0+ does): run as root or "
                         "set sysctl vm.unprivileged_userfaultfd=1")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "qemu": self.qemu.to_dict(),
            "uffd": self.uffd.to_dict(),
            "accel": self.accel.to_dict() if self.accel else None,
            "kernel_release": self.kernel_release,
            "cpu_count": self.cpu_count,
            "mem_total_kib": self.mem_total_kib,
            "hostname": self.hostname,
            "cpu_model": self.cpu_model,
            "problems": self.problems(),
        }

    def summary(self) -> str:
        """One line for a test log."""
        accel = f"{self.accel.accel} ({self.accel.reason})" if self.accel else "not chosen"
        uffd = (f"features {self.uffd.features:#x} (WP {'yes' if self.uffd.wp else 'no'})"
                if self.uffd.available else f"unavailable ({self.uffd.reason})")
        mem = f"{self.mem_total_kib // 1024} MiB" if self.mem_total_kib else "? MiB"
        return (f"QEMU {self.qemu.version_text}, {BACKGROUND_SNAPSHOT} "
                f"{'yes' if self.qemu.supports_background_snapshot else 'NO'}; UFFD {uffd}; "
                f"accel {accel}; Linux {self.kernel_release}, {self.cpu_count} CPUs, {mem}")

    def report_lines(self) -> list[str]:
        """A readable multi-line report (``avocado bgsnap host-check``)."""
        q, u = self.qemu, self.uffd
        lines = [
            f"QEMU:          {q.binary} {q.version_text}",
            f"  {BACKGROUND_SNAPSHOT}: {'yes' if q.supports_background_snapshot else 'NO'}, "
            f"file: URI: {'yes' if q.supports_file_uri else 'no'}, "
            f"mapped-ram: {'yes' if q.supports_mapped_ram else 'no'}",
            f"  migration capabilities: {', '.join(sorted(q.migration_capabilities))}",
        ]
        if u.available:
            lines.append(f"userfaultfd:   features {u.features:#x} via {u.open_mode}: "
                         f"{', '.join(u.feature_names()) or '-'}")
        else:
            lines.append(f"userfaultfd:   unavailable: {u.reason}")
        if self.accel:
            lines.append(f"accelerator:   {self.accel.accel} ({self.accel.reason}; probe "
                         f"{self.accel.probe_seconds:.1f}s)")
        mem = f"{self.mem_total_kib // 1024} MiB" if self.mem_total_kib else "unknown"
        lines.append(f"host:          {self.hostname or '?'}: Linux {self.kernel_release}, "
                     f"{self.cpu_count} CPUs ({self.cpu_model or 'model unknown'}), memory {mem}")
        problems = self.problems()
        lines.append("problems:      " + ("none" if not problems else problems[0]))
        lines.extend("               " + p for p in problems[1:])
        return lines


def collect_facts(qemu: QemuInfo, uffd: UffdInfo, accel: AccelChoice | None) -> HostFacts:
    """Combine the probes with the host's kernel release, CPU count and memory."""
    return HostFacts(
        qemu=qemu, uffd=uffd, accel=accel,
        kernel_release=os.uname().release,
        cpu_count=os.cpu_count() or 1,
        mem_total_kib=parse_meminfo_total(_read_text(Path("/proc/meminfo"))),
        hostname=os.uname().nodename,
        cpu_model=parse_cpu_model(_read_text(Path("/proc/cpuinfo"))),
    )

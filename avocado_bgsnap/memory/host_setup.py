"""Give a memory configuration what it needs from the host, and take it back.

:func:`prepared` reserves the hugepages both QEMUs of a test need (source
and restore run at the same time), mounts a hugetlbfs for ``@hugetlbfs``
paths, sets the host THP mode a variant asks for, and resolves those paths
into the VM's params.  Leaving the block puts every host setting back, also
when the test fails; what cannot be had raises
:class:`~avocado_bgsnap.host.memory.HostMemoryUnavailable` (a CANCEL).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..host import memory as host_memory
from .config import HUGETLBFS_PLACEHOLDER, MemoryConfig

MOUNTS = Path("/proc/self/mounts")


@dataclass(frozen=True)
class PreparedMemory:
    memory: MemoryConfig                     # the source's, filesystems resolved
    restore_memory: MemoryConfig             # the restoring QEMU's
    restore_params: tuple[tuple[str, str], ...]
    host: dict = field(default_factory=dict)  # what the host had and was given


def filesystem_of(path: str, mounts_text: str | None = None) -> str | None:
    """The filesystem type of the mount ``path`` lives on (longest prefix)."""
    if mounts_text is None:
        mounts_text = MOUNTS.read_text()
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mountpoint = parts[1].replace("\\040", " ")
        inside = real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best):
            best, fstype = mountpoint, parts[2]
    return fstype


def _resolve(value: str, mount: str | None) -> str:
    return mount if value == HUGETLBFS_PLACEHOLDER and mount else value


def hugepages_for(memory: MemoryConfig, restore: MemoryConfig) -> dict[int, int]:
    """Pages per size (KiB) the source and the restoring QEMU need together."""
    need = dict(memory.hugepages_needed)
    for size, pages in restore.hugepages_needed.items():
        need[size] = need.get(size, 0) + pages
    return need


@contextlib.contextmanager
def prepared(memory: MemoryConfig, restore_memory: MemoryConfig | None,
             restore_params: tuple[tuple[str, str], ...], host_thp: str, params,
             log: Callable[[str], None] = lambda m: None):
    """Yield a :class:`PreparedMemory`; ``params`` (the VM's) get the
    resolved host paths.  Everything changed is undone on leaving."""
    restore_memory = restore_memory or memory
    host: dict = {"thp_mode_before": host_memory.thp_mode(),
                  "thp_defrag": host_memory.thp_defrag()}
    with contextlib.ExitStack() as stack:
        mount = None
        if memory.uses_hugetlbfs_mount or restore_memory.uses_hugetlbfs_mount:
            mount = str(stack.enter_context(host_memory.hugetlbfs_mount()))
            host["hugetlbfs_mount"] = mount
        for key, value in list(params.items()):
            if value == HUGETLBFS_PLACEHOLDER:
                params[key] = mount
        restore_params = tuple((k, _resolve(v, mount)) for k, v in restore_params)

        def fs_of(path: str) -> str | None:
            return filesystem_of(_resolve(path, mount))

        memory = memory.with_path_fs(fs_of)
        restore_memory = restore_memory.with_path_fs(fs_of)
        need = hugepages_for(memory, restore_memory)
        for size_kib, pages in sorted(need.items()):
            log(f"reserving {pages} hugepages of {size_kib} kB (source + restoring QEMU)")
            stack.enter_context(host_memory.reserved_hugepages(pages, size_kib))
        host["hugepages_reserved"] = {str(k): v for k, v in need.items()}
        if host_thp != "keep":
            stack.enter_context(host_memory.thp_mode_set(host_thp))
        host["thp_mode"] = host_memory.thp_mode()
        yield PreparedMemory(memory, restore_memory, restore_params, host)


def expectation(prepared_memory: PreparedMemory, uffd_features: int, qemu_version: tuple):
    """The prediction for the source's memory, and the restoring QEMU's when
    it differs (both must be supported for the cycle to be expected to pass)."""
    from .predict import expect_background_snapshot

    sizes = frozenset(host_memory.hugepage_pools())
    expected = expect_background_snapshot(prepared_memory.memory, uffd_features, qemu_version,
                                          sizes)
    return expected

"""The restored guest's RAM, read by the host without a RAM-sized file.

The migration stream does not care which backend receives it.  So, for the
default guest RAM (one private ``memory-backend-ram`` block, no NUMA), the
restoring QEMU gets its RAM as ``memory-backend-memfd`` under the same id
(avocado-vt names it ``mem-machine_mem`` on both sides, so the stream
loads).  While the restored guest is paused, the host verifier maps that
memfd read-only through ``/proc/<pid>/fd/<n>``: no dump, and nothing on disk
besides the snapshot.  Any other configuration restores as the test asked,
and its RAM is dumped to a file as before (dump-guest-memory, 0600, removed
afterwards): several blocks (NUMA, virtio-mem), a chosen restoring backend
(``bgsnap_restore_params``), or a source on memfd, hugepages or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .memory.config import MemoryConfig

MEMFD_BACKEND = "memory-backend-memfd"
# QEMU names the memfd after the backend's type (backends/hostmem-memfd.c)
MEMFD_NAME = "/memfd:" + MEMFD_BACKEND
RESTORE_OVERRIDES = {"vm_mem_backend": MEMFD_BACKEND}
MEMORY_PARAMS = ("vm_mem_backend", "vm_mem_share", "vm_mem_prealloc", "vm_mem_backend_path",
                 "hugepage_path", "mem_devs", "guest_numa_nodes")


def dump_free(memory: MemoryConfig, restore_params: Mapping[str, str]) -> bool:
    """Whether the restoring QEMU can take its RAM as a memfd the host reads."""
    if memory.numa_nodes or len(memory.blocks) != 1:
        return False
    block = memory.blocks[0]
    chosen = any(key in restore_params for key in MEMORY_PARAMS)
    return (block.name == "machine" and block.backend == "memory-backend-ram"
            and not (block.share or block.prealloc or block.virtio_mem) and not chosen)


def restore_overrides(memory: MemoryConfig, restore_params: Mapping[str, str]) -> dict:
    """The restoring QEMU's params: ``restore_params``, with the memfd RAM when dump-free."""
    out = dict(restore_params)
    if dump_free(memory, restore_params):
        out.update(RESTORE_OVERRIDES)
    return out


class NoMemfd(Exception):
    """The restoring QEMU holds no memfd of the guest's RAM size."""


def memfd_path(pid: int, size_bytes: int, proc: Path = Path("/proc")) -> Path:
    """``/proc/<pid>/fd/<n>`` of QEMU's guest RAM memfd (its name and size)."""
    fd_dir = proc / str(pid) / "fd"
    seen = []
    try:
        entries = sorted(fd_dir.iterdir(), key=lambda p: int(p.name))
    except OSError as exc:
        raise NoMemfd(f"cannot list {fd_dir}: {exc}") from exc
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if not target.startswith(MEMFD_NAME):
            continue
        size = entry.stat().st_size
        seen.append(f"{entry.name}: {size} bytes")
        if size == size_bytes:
            return entry
    raise NoMemfd(f"QEMU pid {pid} has no {MEMFD_NAME} of {size_bytes} bytes"
                  + (f" (found {', '.join(seen)})" if seen else ""))

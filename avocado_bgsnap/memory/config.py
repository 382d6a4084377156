"""The RAMBlocks a VM's cfg asks avocado-vt for, as typed values.

The backends are avocado-vt's own params (what tp-qemu's memory tests use):

* no ``guest_numa_nodes``: the machine's RAM, ``vm_mem_backend`` (default
  ``memory-backend-ram``), ``vm_mem_share``, ``vm_mem_prealloc``,
  ``vm_mem_backend_path``;
* ``guest_numa_nodes``: each node's ``numa_memdev`` names one of
  ``mem_devs``, whose ``backend_mem_<dev>``, ``share_mem_<dev>``,
  ``hugetlb_mem_<dev>``, ``mem-path_mem_<dev>``, ``prealloc_mem_<dev>`` and
  ``size_mem_<dev>`` say what it is;
* a ``mem_devs`` entry with ``vm_memdev_model_<dev> = virtio-mem`` is a
  virtio-mem device's memory (a RAMBlock with a RamDiscardManager).

A ``mem-path`` of ``@hugetlbfs`` stands for a hugetlbfs mount the test
provides (:mod:`.host_setup` resolves it).  Nothing here touches the host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from virttest import utils_misc

HUGETLBFS_PLACEHOLDER = "@hugetlbfs"
DEFAULT_HUGEPAGE_KIB = 2048
BACKENDS = ("memory-backend-ram", "memory-backend-memfd", "memory-backend-file")
# What the kernel sees behind a RAMBlock: UFFD-WP support differs by it.
ANON, SHMEM, HUGETLB, FILE = "anon", "shmem", "hugetlb", "file"
# statfs f_type names host_setup resolves a mem-path to
FS_TMPFS, FS_HUGETLBFS = "tmpfs", "hugetlbfs"
# Filesystems whose files are shmem: tmpfs, and devtmpfs (a tmpfs inside the
# kernel; seen: /dev/shm of a chroot whose /dev is a plain bind of the host's)
SHMEM_FILESYSTEMS = (FS_TMPFS, "devtmpfs")


class MemoryConfigError(ValueError):
    """The memory params are inconsistent; the message names the param."""


@dataclass(frozen=True)
class RamBlockSpec:
    name: str                   # 'machine' or the mem_devs name
    backend: str                # one of BACKENDS
    size_mib: int
    share: bool = False
    hugetlb: bool = False       # memfd hugetlb=on
    hugepage_kib: int = DEFAULT_HUGEPAGE_KIB
    mem_path: str | None = None  # memory-backend-file's mem-path (may be the placeholder)
    path_fs: str | None = None   # filesystem behind mem_path, filled in at run time
    prealloc: bool = False
    virtio_mem: bool = False    # memory of a virtio-mem device (RamDiscardManager)

    @property
    def on_hugetlbfs(self) -> bool:
        return self.mem_path == HUGETLBFS_PLACEHOLDER or self.path_fs == FS_HUGETLBFS

    @property
    def memory_type(self) -> str:
        """anon | shmem | hugetlb | file: the kind of mapping QEMU gets."""
        if self.backend == "memory-backend-ram":
            # a shared anonymous mapping is shmem to the kernel
            return SHMEM if self.share else ANON
        if self.backend == "memory-backend-memfd":
            return HUGETLB if self.hugetlb else SHMEM
        if self.on_hugetlbfs:
            return HUGETLB
        return SHMEM if self.path_fs in SHMEM_FILESYSTEMS else FILE

    @property
    def hugepages_needed(self) -> int:
        """Hugepages one QEMU needs for this block (0 unless hugetlb)."""
        if self.memory_type != HUGETLB:
            return 0
        return -(-self.size_mib * 1024 // self.hugepage_kib)

    def label(self) -> str:
        """A short name for tables: memfd/shared, file(hugetlbfs)/private, ..."""
        kind = self.backend.removeprefix("memory-backend-")
        if self.hugetlb:
            kind += "+hugetlb"
        if self.mem_path:
            kind += f"({self.path_fs or self.mem_path})"
        parts = [kind, "shared" if self.share else "private"]
        if self.prealloc:
            parts.append("prealloc")
        if self.virtio_mem:
            parts.append("virtio-mem")
        return "/".join(parts)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "memory_type": self.memory_type,
                "label": self.label()}


@dataclass(frozen=True)
class MemoryConfig:
    blocks: tuple[RamBlockSpec, ...]
    numa_nodes: int             # 0: no -numa
    vcpus: int

    @property
    def hugepages_needed(self) -> dict[int, int]:
        """Hugepages per page size (KiB) one QEMU of this config needs."""
        need: dict[int, int] = {}
        for block in self.blocks:
            if block.hugepages_needed:
                need[block.hugepage_kib] = need.get(block.hugepage_kib, 0) + block.hugepages_needed
        return need

    @property
    def uses_hugetlbfs_mount(self) -> bool:
        return any(b.mem_path == HUGETLBFS_PLACEHOLDER for b in self.blocks)

    @property
    def has_virtio_mem(self) -> bool:
        return any(b.virtio_mem for b in self.blocks)

    def label(self) -> str:
        """What a report groups by: the blocks, the NUMA nodes, the vCPUs."""
        text = " + ".join(b.label() for b in self.blocks)
        if self.numa_nodes > 1:
            text += f", {self.numa_nodes} NUMA nodes"
        return text + f", {self.vcpus} vCPU" + ("s" if self.vcpus > 1 else "")

    def with_path_fs(self, fs_of) -> "MemoryConfig":
        """A copy whose file-backed blocks know their filesystem
        (``fs_of(mem_path) -> 'tmpfs' | 'hugetlbfs' | 'ext4' | ...``)."""
        blocks = tuple(dataclasses.replace(b, path_fs=fs_of(b.mem_path)) if b.mem_path else b
                       for b in self.blocks)
        return dataclasses.replace(self, blocks=blocks)

    def to_dict(self) -> dict:
        return {"label": self.label(), "numa_nodes": self.numa_nodes, "vcpus": self.vcpus,
                "blocks": [b.to_dict() for b in self.blocks],
                "hugepages_needed": {str(k): v for k, v in self.hugepages_needed.items()}}


def _yes(value) -> bool:
    return str(value).lower() in ("yes", "on", "true", "1")


def _mib(value: str, param: str) -> int:
    """A size in MiB; a bare number is MiB (as avocado-vt's ``mem``)."""
    text = str(value).strip()
    if text.replace(".", "", 1).isdigit():
        text += "M"
    try:
        return int(float(utils_misc.normalize_data_size(text, "M")))
    except (ValueError, TypeError) as exc:
        raise MemoryConfigError(f"{param} = {value!r}: not a size ({exc})") from None


def _backend(value: str, param: str) -> str:
    if value not in BACKENDS:
        raise MemoryConfigError(f"{param} = {value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def _hugepage_kib(value, param: str) -> int:
    return _mib(value, param) * 1024 if value else DEFAULT_HUGEPAGE_KIB


def _machine_block(params) -> RamBlockSpec:
    path = params.get("hugepage_path") or params.get("vm_mem_backend_path") or None
    backend = "memory-backend-file" if params.get("hugepage_path") else _backend(
        params.get("vm_mem_backend", "memory-backend-ram"), "vm_mem_backend")
    if backend == "memory-backend-file" and not path:
        raise MemoryConfigError("vm_mem_backend = memory-backend-file needs vm_mem_backend_path")
    return RamBlockSpec(name="machine", backend=backend,
                        size_mib=_mib(params.get("mem", 1024), "mem"),
                        share=_yes(params.get("vm_mem_share", "no")),
                        mem_path=path, prealloc=_yes(params.get("vm_mem_prealloc", "no")))


def _device_block(params, dev: str) -> RamBlockSpec:
    p = params.object_params(dev).object_params("mem")
    where = f"mem_devs {dev}"
    backend = _backend(p.get("backend", "memory-backend-ram"), f"backend_mem_{dev}")
    if "size" not in p:
        raise MemoryConfigError(f"{where}: size_mem_{dev} is not set")
    hugetlb = _yes(p.get("hugetlb", "no"))
    if hugetlb and backend != "memory-backend-memfd":
        raise MemoryConfigError(f"hugetlb_mem_{dev} = yes needs backend_mem_{dev} = "
                                f"memory-backend-memfd (a file backend takes a hugetlbfs "
                                f"mem-path_mem_{dev} instead)")
    path = p.get("mem-path") or None
    if backend == "memory-backend-file" and not path:
        raise MemoryConfigError(f"{where}: memory-backend-file needs mem-path_mem_{dev}")
    model = params.object_params(dev).get("vm_memdev_model", "dimm")
    return RamBlockSpec(name=dev, backend=backend, size_mib=_mib(p["size"], f"size_mem_{dev}"),
                        share=_yes(p.get("share", "no")), hugetlb=hugetlb,
                        hugepage_kib=_hugepage_kib(p.get("hugetlbsize"), f"hugetlbsize_mem_{dev}"),
                        mem_path=path, prealloc=_yes(p.get("prealloc", "no")),
                        virtio_mem=model == "virtio-mem")


def from_params(params) -> MemoryConfig:
    """The RAMBlocks ``params`` describe, validated."""
    nodes = params.objects("guest_numa_nodes")
    devs = params.objects("mem_devs")
    blocks: list[RamBlockSpec] = []
    if nodes:
        for node in nodes:
            memdev = params.object_params(node).get("numa_memdev")
            if not memdev:
                raise MemoryConfigError(f"guest_numa_nodes {node}: numa_memdev_{node} is not set "
                                        f"(the suite gives every node its own backend)")
            dev = memdev.removeprefix("mem-")
            if dev not in devs:
                raise MemoryConfigError(f"numa_memdev_{node} = {memdev}: {dev} is not in mem_devs")
            blocks.append(_device_block(params, dev))
        total = sum(b.size_mib for b in blocks)
        mem = _mib(params.get("mem", 1024), "mem")
        if total != mem:
            raise MemoryConfigError(f"the NUMA nodes' backends hold {total} MiB, mem = {mem}: "
                                    f"they must be equal")
    else:
        blocks.append(_machine_block(params))
    named = {b.name for b in blocks}
    blocks += [_device_block(params, dev) for dev in devs if dev not in named]
    try:
        vcpus = int(params.get("smp", 1))
    except ValueError:
        raise MemoryConfigError(f"smp = {params.get('smp')!r}: not a number") from None
    return MemoryConfig(blocks=tuple(blocks), numa_nodes=len(nodes), vcpus=vcpus)

"""restored_ram: the restored guest's RAM read in place (its memfd), no dump."""

import os

import pytest

from avocado_bgsnap import restored_ram
from avocado_bgsnap.memory.config import MemoryConfig, RamBlockSpec


def _memory(*blocks, numa=0):
    return MemoryConfig(blocks=tuple(blocks), numa_nodes=numa, vcpus=1)


DEFAULT = _memory(RamBlockSpec("machine", "memory-backend-ram", 1024))


def test_only_the_default_ram_restores_into_a_memfd():
    assert restored_ram.dump_free(DEFAULT, {})
    assert restored_ram.restore_overrides(DEFAULT, {"extra_params": " -x"}) == {
        "extra_params": " -x", "vm_mem_backend": "memory-backend-memfd"}
    # the cases that keep the dump: what the test chose stays as it is
    assert not restored_ram.dump_free(DEFAULT, {"vm_mem_backend": "memory-backend-ram"})
    assert not restored_ram.dump_free(
        _memory(RamBlockSpec("machine", "memory-backend-ram", 1024, share=True)), {})
    assert not restored_ram.dump_free(
        _memory(RamBlockSpec("machine", "memory-backend-memfd", 1024, hugetlb=True)), {})
    assert not restored_ram.dump_free(
        _memory(RamBlockSpec("m0", "memory-backend-ram", 512),
                RamBlockSpec("m1", "memory-backend-ram", 512), numa=2), {})
    assert restored_ram.restore_overrides(DEFAULT, {"mem_devs": "m0"}) == {"mem_devs": "m0"}


def test_the_memfd_is_found_by_name_and_size():
    size = 2 * 2**20
    fd = os.memfd_create(restored_ram.MEMFD_BACKEND)
    other = os.memfd_create(restored_ram.MEMFD_BACKEND)
    try:
        os.ftruncate(fd, size)
        os.ftruncate(other, 4096)
        path = restored_ram.memfd_path(os.getpid(), size)
        assert path.name == str(fd) and path.stat().st_size == size
        with pytest.raises(restored_ram.NoMemfd, match=r"no /memfd:memory-backend-memfd of 3 "
                                                         r"bytes \(found .*4096 bytes"):
            restored_ram.memfd_path(os.getpid(), 3)
    finally:
        os.close(fd)
        os.close(other)


def test_a_gone_process_has_no_memfd():
    with pytest.raises(restored_ram.NoMemfd, match="cannot list"):
        restored_ram.memfd_path(2**22 + 11, 4096)

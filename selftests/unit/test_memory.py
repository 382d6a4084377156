"""Memory configurations: cfg parsing, the prediction table, the judgement."""

import pytest
from virttest.utils_params import Params

from avocado_bgsnap.during.devices import populated_too_much
from avocado_bgsnap.host.uffd import UFFD_FEATURE_BITS
from avocado_bgsnap.memory import config, predict
from avocado_bgsnap.memory.host_setup import filesystem_of, hugepages_for

ALL_FEATURES = 0x1FFFF
WP_ONLY = 1 << UFFD_FEATURE_BITS["PAGEFAULT_FLAG_WP"]
POOLS = frozenset({2048, 1048576})
Q72, Q10 = (7, 2, 22), (10, 0, 2)


def _node_params(**backend):
    p = {"mem": "256", "smp": "1", "guest_numa_nodes": "node0", "numa_memdev_node0": "mem-mem0",
         "mem_devs": "mem0", "use_mem_mem0": "no", "size_mem_mem0": "256M"}
    p.update({f"{k.replace('__', '-')}_mem_mem0": v for k, v in backend.items()})
    return Params(p)


def _resolved(params, fs=None):
    return config.from_params(Params(params)).with_path_fs(lambda path: fs)


def test_machine_default_is_private_anonymous():
    memory = config.from_params(Params({"mem": "256"}))
    (block,) = memory.blocks
    assert (block.name, block.backend, block.memory_type) == ("machine", "memory-backend-ram",
                                                               config.ANON)
    assert memory.numa_nodes == 0 and memory.vcpus == 1 and memory.hugepages_needed == {}


@pytest.mark.parametrize("params, fs, kind", [
    ({"vm_mem_backend": "memory-backend-ram", "vm_mem_share": "yes"}, None, config.SHMEM),
    ({"vm_mem_backend": "memory-backend-memfd", "vm_mem_share": "no"}, None, config.SHMEM),
    ({"vm_mem_backend": "memory-backend-file", "vm_mem_backend_path": "/dev/shm"}, "tmpfs",
     config.SHMEM),
    ({"vm_mem_backend": "memory-backend-file", "vm_mem_backend_path": "/var/tmp"}, "ext4",
     config.FILE),
    ({"vm_mem_backend": "memory-backend-file", "vm_mem_backend_path": "/dev/shm"}, "devtmpfs",
     config.SHMEM),
    ({"vm_mem_backend": "memory-backend-file", "vm_mem_backend_path": "@hugetlbfs"}, "hugetlbfs",
     config.HUGETLB),
])
def test_machine_backends(params, fs, kind):
    memory = _resolved({"mem": "256", **params}, fs)
    assert memory.blocks[0].memory_type == kind


def test_numa_node_memfd_hugetlb_needs_pages():
    memory = config.from_params(_node_params(backend="memory-backend-memfd", hugetlb="yes",
                                             hugetlbsize="2M", share="yes"))
    (block,) = memory.blocks
    assert block.memory_type == config.HUGETLB
    assert memory.hugepages_needed == {2048: 128}
    assert hugepages_for(memory, memory) == {2048: 256}   # source + restoring QEMU


def test_two_nodes_two_blocks_and_label():
    p = _node_params(backend="memory-backend-memfd", share="yes")
    p.update({"guest_numa_nodes": "node0 node1", "numa_memdev_node1": "mem-mem1",
              "mem_devs": "mem0 mem1", "size_mem_mem0": "128M", "size_mem_mem1": "128M",
              "backend_mem_mem1": "memory-backend-ram", "smp": "2"})
    memory = config.from_params(p)
    assert [b.memory_type for b in memory.blocks] == [config.SHMEM, config.ANON]
    assert memory.label() == "memfd/shared + ram/private, 2 NUMA nodes, 2 vCPUs"


def test_virtio_mem_is_an_extra_block():
    p = Params({"mem": "256", "mem_devs": "vmem0", "vm_memdev_model_vmem0": "virtio-mem",
                "size_mem_vmem0": "1G"})
    memory = config.from_params(p)
    assert [(b.name, b.virtio_mem, b.size_mib) for b in memory.blocks] == [
        ("machine", False, 256), ("vmem0", True, 1024)]
    assert memory.has_virtio_mem


@pytest.mark.parametrize("params, message", [
    ({"mem": "256", "vm_mem_backend": "memory-backend-foo"}, "vm_mem_backend"),
    ({"mem": "256", "vm_mem_backend": "memory-backend-file"}, "vm_mem_backend_path"),
    ({"mem": "256", "guest_numa_nodes": "node0"}, "numa_memdev_node0"),
    ({"mem": "256", "guest_numa_nodes": "node0", "numa_memdev_node0": "mem-x",
      "mem_devs": "y"}, "not in mem_devs"),
    ({"mem": "512", "guest_numa_nodes": "node0", "numa_memdev_node0": "mem-mem0",
      "mem_devs": "mem0", "size_mem_mem0": "256M"}, "must be equal"),
    ({"mem": "256", "mem_devs": "m", "size_mem_m": "256M", "hugetlb_mem_m": "yes"},
     "memory-backend-memfd"),
])
def test_bad_memory_params_name_the_param(params, message):
    with pytest.raises(config.MemoryConfigError, match=message):
        config.from_params(Params(params))


# -- the prediction table ----------------------------------------------------
CASES = {
    "anon": ({"mem": "256"}, None),
    "memfd": ({"mem": "256", "vm_mem_backend": "memory-backend-memfd"}, None),
    "shm": ({"mem": "256", "vm_mem_backend": "memory-backend-file",
             "vm_mem_backend_path": "/dev/shm", "vm_mem_share": "yes"}, "tmpfs"),
    "hugetlbfs": ({"mem": "256", "vm_mem_backend": "memory-backend-file",
                   "vm_mem_backend_path": "@hugetlbfs"}, "hugetlbfs"),
    "disk": ({"mem": "256", "vm_mem_backend": "memory-backend-file",
              "vm_mem_backend_path": "/var/tmp"}, "ext4"),
}


@pytest.mark.parametrize("case, features, version, supported, refusal", [
    ("anon", ALL_FEATURES, Q72, True, None),
    ("anon", ALL_FEATURES, Q10, True, None),
    ("memfd", ALL_FEATURES, Q72, True, None),
    ("shm", ALL_FEATURES, Q10, True, None),
    ("hugetlbfs", ALL_FEATURES, Q72, True, None),
    ("anon", WP_ONLY, Q72, True, None),
    ("memfd", WP_ONLY, Q72, False, predict.REFUSED_MEMORY),
    ("hugetlbfs", WP_ONLY, Q10, False, predict.REFUSED_MEMORY),
    ("disk", ALL_FEATURES, Q72, False, predict.REFUSED_MEMORY),
    ("anon", 0, Q72, False, predict.REFUSED_KERNEL),
    ("anon", ALL_FEATURES, (5, 2, 0), False, None),
])
def test_prediction_table(case, features, version, supported, refusal):
    params, fs = CASES[case]
    expected = predict.expect_background_snapshot(_resolved(params, fs), features, version, POOLS)
    assert (expected.supported, expected.refusal) == (supported, refusal), expected.reason


def test_missing_hugepage_pool_is_unsupported_before_any_vm():
    memory = config.from_params(_node_params(backend="memory-backend-memfd", hugetlb="yes",
                                             hugetlbsize="1G"))
    expected = predict.expect_background_snapshot(memory, ALL_FEATURES, Q72, frozenset({2048}))
    assert not expected.supported and expected.refusal is None
    assert "1048576 kB" in expected.reason


MEMORY_REFUSAL = "migrate-set-capabilities failed: Background-snapshot is not compatible " \
                 "with guest memory configuration"


@pytest.mark.parametrize("supported, refusal, outcome", [
    (True, None, "proceed"),
    (True, MEMORY_REFUSAL, "fail"),             # refused where it must work
    (False, None, "fail"),                      # accepted where it must not
    (False, MEMORY_REFUSAL, "cancel"),          # refused as predicted
    (False, "Background-snapshot is not supported by host kernel", "fail"),  # another refusal
])
def test_judge(supported, refusal, outcome):
    expected = predict.Expectation(supported, "why",
                                   None if supported else predict.REFUSED_MEMORY)
    assert predict.judge(expected, refusal).outcome == outcome


def test_suspended_preserved_since_9_0():
    assert not predict.expect_suspended_preserved(Q72)
    assert predict.expect_suspended_preserved(Q10)


def test_filesystem_of_longest_prefix():
    mounts = ("/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n"
              "none /tmp/hp hugetlbfs rw,pagesize=2M 0 0\n")
    assert filesystem_of("/dev/shm", mounts) == "tmpfs"
    assert filesystem_of("/dev/shmx", mounts) == "ext4"
    assert filesystem_of("/tmp/hp/f", mounts) == "hugetlbfs"


@pytest.mark.parametrize("growth, populated", [(300.0, False), (384.0, False), (1100.0, True)])
def test_virtio_mem_population_check(growth, populated):
    # 256 MiB boot RAM + 128 MiB plugged of a 1 GiB device: populating the
    # unplugged 896 MiB is far above what the guest's RAM could add
    assert populated_too_much(growth, 256, 128) is populated


@pytest.mark.parametrize("supported, refusal", [(True, None), (False, MEMORY_REFUSAL)])
def test_a_contradicted_prediction_is_judged_a_failure(supported, refusal):
    """The negative control wrong_prediction: QEMU's real answer against the
    opposite claim must FAIL, whichever way the truth lies."""
    truth = predict.Expectation(supported, "why", None if supported else predict.REFUSED_MEMORY)
    assert predict.judge(truth, refusal).outcome in ("proceed", "cancel")
    assert predict.judge(predict.contradicted(truth), refusal).outcome == "fail"

"""avocado_bgsnap.host.memory: parsers and restore-on-exit against fake /sys and /proc
trees; one live check (hugepages, hugetlbfs, THP) that runs only as root.

The fake kernel stands in for sysfs: a write to ``nr_hugepages`` updates the
pool's counters the way the kernel does (up to a capacity, pages in use kept
as surplus), a write to a choice file moves its brackets.
"""

import mmap
import os
import shutil
import sys
from pathlib import Path

import pytest

from avocado_bgsnap.host import memory

POOL = "sys/kernel/mm/hugepages/hugepages-{}kB"
THP = "sys/kernel/mm/transparent_hugepage"

STATUS = """Name:\tqemu-system-x86
VmPeak:\t 5380000 kB
VmRSS:\t 1052000 kB
RssAnon:\t 1040000 kB
RssFile:\t   12000 kB
RssShmem:\t       0 kB
HugetlbPages:\t  262144 kB
Threads:\t5
"""
ROLLUP = """55d63d0f9000-7fffdf318000 ---p 00000000 00:00 0                          [rollup]
Rss:             1052000 kB
AnonHugePages:    839680 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:      2048 kB
"""


class FakeKernel:
    """What sysfs does with the writes this module makes."""

    def __init__(self, capacity=10**6, in_use=0):
        self.capacity = capacity    # pages the kernel can find
        self.in_use = in_use        # pages mapped by someone
        self.writes = []

    def write(self, path, value):
        path = Path(path)
        self.writes.append((path.name, value))
        if path.name == "nr_hugepages":
            persistent = min(int(value), self.capacity)
            nr = max(persistent, self.in_use)
            for name, number in (("nr_hugepages", nr), ("free_hugepages", nr - self.in_use),
                                 ("surplus_hugepages", nr - persistent)):
                (path.parent / name).write_text(f"{number}\n")
            return
        old = path.read_text() if path.exists() else ""
        if "[" in old:
            words = old.replace("[", "").replace("]", "").split()
            if value not in words:
                raise OSError(22, "Invalid argument")
            value = " ".join(f"[{w}]" if w == value else w for w in words)
        path.write_text(value + "\n")


def make_pool(root, size_kib, nr=0, free=0, resv=0, surplus=0):
    pool = root / POOL.format(size_kib)
    pool.mkdir(parents=True, exist_ok=True)
    for name, value in (("nr_hugepages", nr), ("free_hugepages", free),
                        ("resv_hugepages", resv), ("surplus_hugepages", surplus),
                        ("nr_overcommit_hugepages", 0)):
        (pool / name).write_text(f"{value}\n")
    return pool


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """A fake /sys and /proc under tmp_path, root privileges assumed, a fake kernel."""
    make_pool(tmp_path, 2048, nr=4, free=4)
    make_pool(tmp_path, 1048576)
    thp = tmp_path / THP
    thp.mkdir(parents=True)
    (thp / "enabled").write_text("always [madvise] never\n")
    (thp / "defrag").write_text("always defer defer+madvise [madvise] never\n")
    (thp / "shmem_enabled").write_text("always within_size advise [never] deny force\n")
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemTotal:       24683584 kB\n"
                                           "HugePages_Total:       4\n"
                                           "Hugepagesize:       2048 kB\n")
    (tmp_path / "proc/mounts").write_text(
        "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
        "tmpfs /dev/shm tmpfs rw,relatime,size=24683584k 0 0\n")
    kernel = FakeKernel()
    monkeypatch.setattr(memory, "_root", tmp_path)
    monkeypatch.setattr(memory, "_is_root", lambda: True)
    monkeypatch.setattr(memory, "_write_sysfs", kernel.write)
    return kernel


def nr_hugepages(root, size_kib=2048):
    return int((root / POOL.format(size_kib) / "nr_hugepages").read_text())


# -- facts --------------------------------------------------------------------

def test_pools_and_default_size(fake_host, tmp_path):
    make_pool(tmp_path, 2048, nr=10, free=6, resv=2, surplus=1)
    (tmp_path / "sys/kernel/mm/hugepages/not-a-pool").mkdir()
    pools = memory.hugepage_pools()
    assert list(pools) == [2048, 1048576]
    pool = pools[2048]
    assert (pool.nr_hugepages, pool.free_hugepages, pool.resv_hugepages) == (10, 6, 2)
    assert pool.available == 4 and pool.persistent == 9
    assert pool.name == "hugepages-2048kB"
    assert pool.to_dict()["size_kib"] == 2048
    assert memory.default_hugepage_kib() == 2048


def test_no_hugetlb_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "_root", tmp_path)
    assert memory.hugepage_pools() == {}
    assert memory.default_hugepage_kib() is None
    assert memory.thp_mode() is None
    with pytest.raises(memory.HostMemoryUnavailable, match="this host has: none"):
        memory.hugepage_pool(2048)


def test_missing_pool_is_named(fake_host, tmp_path):
    shutil.rmtree(tmp_path / POOL.format(1048576))
    with pytest.raises(memory.HostMemoryUnavailable, match="no hugepages-1048576kB pool"):
        with memory.reserved_hugepages(1, 1048576):
            pass
    assert fake_host.writes == []


# -- reserved_hugepages ---------------------------------------------------------

def test_reserve_grows_by_what_is_missing_and_restores(fake_host, tmp_path):
    with memory.reserved_hugepages(10) as pool:
        assert pool.available >= 10
        assert nr_hugepages(tmp_path) == 10      # 4 free already, 6 added
    assert nr_hugepages(tmp_path) == 4
    assert fake_host.writes == [("nr_hugepages", "10"), ("nr_hugepages", "4")]


def test_reserve_enough_free_changes_nothing(fake_host, tmp_path):
    with memory.reserved_hugepages(3) as pool:
        assert pool.available == 4
    assert fake_host.writes == []


def test_reserved_pages_in_use_by_others_do_not_count(fake_host, tmp_path):
    make_pool(tmp_path, 2048, nr=4, free=4, resv=3)
    with memory.reserved_hugepages(2):
        assert nr_hugepages(tmp_path) == 5       # 4 free, 3 of them reserved: 1 more
    assert nr_hugepages(tmp_path) == 4


def test_reserve_restores_after_an_exception(fake_host, tmp_path):
    with pytest.raises(RuntimeError, match="test failed"):
        with memory.reserved_hugepages(8):
            assert nr_hugepages(tmp_path) == 8
            raise RuntimeError("test failed")
    assert nr_hugepages(tmp_path) == 4
    assert fake_host.writes[-1] == ("nr_hugepages", "4")


def test_short_allocation_raises_and_restores(fake_host, tmp_path):
    make_pool(tmp_path, 2048)
    fake_host.capacity = 60
    with pytest.raises(memory.HostMemoryUnavailable,
                       match="asked 140 free 2048 kB hugepages, the kernel gave 60"):
        with memory.reserved_hugepages(140):
            pytest.fail("the block must not run")
    assert nr_hugepages(tmp_path) == 0
    # one compaction and retry before giving up, then the original back
    assert fake_host.writes == [("nr_hugepages", "140"), ("compact_memory", "1"),
                                ("nr_hugepages", "140"), ("nr_hugepages", "0")]


def test_reserve_needs_root(fake_host, monkeypatch):
    monkeypatch.setattr(memory, "_is_root", lambda: False)
    with pytest.raises(memory.HostMemoryUnavailable, match="needs root to reserve hugepages"):
        with memory.reserved_hugepages(8):
            pass
    assert fake_host.writes == []


def test_reserve_write_refused(fake_host, monkeypatch, tmp_path):
    def refuse(path, value):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(memory, "_write_sysfs", refuse)
    with pytest.raises(memory.HostMemoryUnavailable, match="cannot set .*EACCES") as info:
        with memory.reserved_hugepages(8):
            pass
    assert any("cannot put nr_hugepages back" in n for n in info.value.__notes__)


def test_pages_still_in_use_are_reported(fake_host, tmp_path):
    with pytest.raises(memory.HostMemoryNotRestored,
                       match="put back to 4 but reads 8 .*4 surplus.*still mapped"):
        with memory.reserved_hugepages(8):
            fake_host.in_use = 8                 # a QEMU that did not exit
    fake_host.in_use = 0


def test_pages_in_use_after_a_failure_keep_the_failure(fake_host, tmp_path):
    with pytest.raises(RuntimeError, match="guest crashed") as info:
        with memory.reserved_hugepages(8):
            fake_host.in_use = 8
            raise RuntimeError("guest crashed")
    assert any("still mapped" in n for n in info.value.__notes__)


# -- hugetlbfs ------------------------------------------------------------------

def test_parse_mounts_and_pagesize(fake_host, tmp_path):
    text = ("hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
            "none /mnt/huge\\0401g hugetlbfs rw,relatime,pagesize=1024M 0 0\n"
            "none /mnt/old hugetlbfs rw,relatime 0 0\n")
    mounts = memory.parse_mounts(text)
    assert [m.target for m in mounts] == ["/dev/hugepages", "/mnt/huge 1g", "/mnt/old"]
    assert [m.pagesize_kib for m in mounts] == [2048, 1048576, 2048]  # default size
    assert memory.parse_size_kib("1G") == 1048576
    assert memory.parse_size_kib("4096") == 4
    assert memory.parse_size_kib("huge") is None


def test_hugepage_kib_for(fake_host, tmp_path):
    huge = tmp_path / "huge"
    (huge / "sub").mkdir(parents=True)
    (tmp_path / "proc/mounts").write_text(
        "/dev/root / ext4 rw 0 0\n"
        f"none {huge} hugetlbfs rw,relatime,pagesize=1G 0 0\n")
    assert memory.hugepage_kib_for(huge) == 1048576
    assert memory.hugepage_kib_for(huge / "sub" / "guest-ram") == 1048576
    assert memory.hugepage_kib_for(tmp_path / "hugepages") is None   # prefix, not a child
    assert memory.hugepage_kib_for(tmp_path) is None


def test_existing_mount_is_used_and_only_new_files_go(fake_host, tmp_path, monkeypatch):
    huge = tmp_path / "hugepages"
    huge.mkdir()
    (huge / "kept").write_text("")
    (tmp_path / "proc/mounts").write_text(
        f"none {huge} hugetlbfs rw,relatime,pagesize=2M 0 0\n")
    monkeypatch.setattr(memory, "_run", lambda cmd: pytest.fail(f"ran {cmd}"))
    with pytest.raises(RuntimeError):
        with memory.hugetlbfs_mount(2048) as path:
            assert path == huge
            (path / "qemu-ram").write_text("")
            (path / "qemu-dir").mkdir()
            raise RuntimeError("test failed")
    assert sorted(p.name for p in huge.iterdir()) == ["kept"]


def test_own_mount_is_unmounted_and_removed(fake_host, tmp_path, monkeypatch):
    (tmp_path / "proc/mounts").write_text(
        f"none {tmp_path}/one hugetlbfs rw,relatime,pagesize=1G 0 0\n")  # other size
    ran = []

    def run(cmd):
        ran.append(cmd)
        return memory.subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(memory, "_run", run)
    with pytest.raises(RuntimeError):
        with memory.hugetlbfs_mount(2048) as path:
            assert path.is_dir()
            (path / "qemu-ram").write_text("")
            raise RuntimeError("test failed")
    assert ran == [["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(path)],
                   ["umount", str(path)]]
    assert not path.exists()


def test_own_mount_busy_is_reported(fake_host, monkeypatch):
    def run(cmd):
        code = 32 if cmd[0] == "umount" else 0
        return memory.subprocess.CompletedProcess(cmd, code, "", "umount: target is busy.")
    monkeypatch.setattr(memory, "_run", run)
    with pytest.raises(memory.HostMemoryNotRestored, match="target is busy"):
        with memory.hugetlbfs_mount(2048) as path:
            pass
    path.rmdir()


def test_mount_failure_and_no_root(fake_host, monkeypatch):
    monkeypatch.setattr(memory, "_run", lambda cmd: memory.subprocess.CompletedProcess(
        cmd, 32, "", "mount: permission denied"))
    with pytest.raises(memory.HostMemoryUnavailable, match="permission denied") as info:
        with memory.hugetlbfs_mount(2048):
            pass
    assert info.value.command[:3] == ["mount", "-t", "hugetlbfs"]
    monkeypatch.setattr(memory, "_is_root", lambda: False)
    with pytest.raises(memory.HostMemoryUnavailable, match="needs root to mount hugetlbfs"):
        with memory.hugetlbfs_mount(2048):
            pass


# -- THP --------------------------------------------------------------------------

def test_thp_settings(fake_host):
    assert memory.parse_bracketed("always [madvise] never") == "madvise"
    assert memory.parse_bracketed("") is None
    assert memory.thp_mode() == "madvise"
    assert memory.thp_defrag() == "madvise"
    settings = memory.thp_settings()
    assert (settings.enabled, settings.defrag, settings.shmem_enabled) == (
        "madvise", "madvise", "never")
    assert settings.to_dict()["defrag"] == "madvise"


def test_thp_mode_set_restores_after_an_exception(fake_host):
    with pytest.raises(RuntimeError):
        with memory.thp_mode_set("never") as previous:
            assert previous == "madvise"
            assert memory.thp_mode() == "never"
            raise RuntimeError("test failed")
    assert memory.thp_mode() == "madvise"
    assert fake_host.writes == [("enabled", "never"), ("enabled", "madvise")]


def test_thp_mode_set_same_mode_and_bad_mode(fake_host):
    with memory.thp_mode_set("madvise"):
        pass
    assert fake_host.writes == []
    with pytest.raises(ValueError, match="not one of"):
        with memory.thp_mode_set("sometimes"):
            pass


def test_thp_mode_set_needs_root(fake_host, monkeypatch):
    monkeypatch.setattr(memory, "_is_root", lambda: False)
    with pytest.raises(memory.HostMemoryUnavailable, match="needs root to set THP"):
        with memory.thp_mode_set("always"):
            pass


# -- process memory ---------------------------------------------------------------

def test_process_memory(fake_host, tmp_path):
    proc = tmp_path / "proc/4242"
    proc.mkdir()
    (proc / "status").write_text(STATUS)
    (proc / "smaps_rollup").write_text(ROLLUP)
    got = memory.process_memory(4242)
    assert (got.vm_rss_kib, got.rss_anon_kib, got.rss_file_kib, got.rss_shmem_kib) == (
        1052000, 1040000, 12000, 0)
    assert got.hugetlb_kib == 262144
    assert (got.anon_huge_kib, got.shmem_pmd_kib, got.file_pmd_kib) == (839680, 0, 2048)
    assert got.to_dict()["anon_huge_kib"] == 839680
    assert memory.rss_kib(4242) == 1052000


def test_process_memory_unreadable(fake_host, tmp_path):
    proc = tmp_path / "proc/4243"
    proc.mkdir()
    (proc / "status").write_text(STATUS)   # smaps_rollup: no ptrace access
    got = memory.process_memory(4243)
    assert got.vm_rss_kib == 1052000 and got.anon_huge_kib is None
    gone = memory.process_memory(999999)
    assert memory.rss_kib(999999) is None
    assert gone.to_dict() == {"pid": 999999, **{k: None for k in gone.to_dict() if k != "pid"}}


# -- the guard ----------------------------------------------------------------------

def test_guard_names_what_was_left_changed(fake_host, tmp_path):
    with memory.HostSettingsGuard() as guard:
        assert guard.changes() == []
        (tmp_path / POOL.format(2048) / "nr_hugepages").write_text("12\n")
        (tmp_path / THP / "enabled").write_text("always madvise [never]\n")
        with open(tmp_path / "proc/mounts", "a") as mounts:
            mounts.write("none /tmp/bgsnap-hugetlbfs-x hugetlbfs rw,pagesize=2M 0 0\n")
    assert guard.changed == [
        "nr_hugepages hugepages-2048kB: before 4, after 12",
        "transparent_hugepage/enabled: before madvise, after never",
        "hugetlbfs mounts: before [], after ['/tmp/bgsnap-hugetlbfs-x (pagesize 2048 kB)']",
    ]
    assert guard.before.to_dict()["nr_hugepages"] == {"2048": 4, "1048576": 0}


def test_guard_quiet_when_everything_is_back(fake_host):
    guard = memory.HostSettingsGuard()
    with memory.reserved_hugepages(8), memory.thp_mode_set("always"):
        assert len(guard.changes()) == 2
    assert guard.changes() == []


# -- live, as root ------------------------------------------------------------------

def _meminfo(name):
    return memory.parse_meminfo(Path("/proc/meminfo").read_text())[name]


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                    reason="changes host memory settings: needs root on Linux")
def test_live_hugepages_hugetlbfs_thp():
    pools = memory.hugepage_pools()
    if 2048 not in pools or memory.thp_mode() is None:
        pytest.skip("no 2 MiB hugetlb pool or no THP on this kernel")
    mounts_before = Path("/proc/mounts").read_text()
    free_before = pools[2048].free_hugepages
    with memory.HostSettingsGuard() as guard:
        with memory.reserved_hugepages(8, 2048):
            assert memory.hugepage_pools()[2048].free_hugepages >= 8
            if memory.default_hugepage_kib() == 2048:
                assert _meminfo("HugePages_Free") >= 8
            with memory.hugetlbfs_mount(2048) as path:
                assert memory.hugepage_kib_for(path) == 2048
                with open(path / "guest-ram", "w+b") as ram:   # what QEMU's mem-path does
                    ram.truncate(2 << 20)
                    with mmap.mmap(ram.fileno(), 2 << 20) as mapped:
                        mapped[0] = 1
                    assert memory.hugepage_pools()[2048].free_hugepages <= 7
            assert str(path) not in Path("/proc/mounts").read_text()
            assert not path.exists()
        assert memory.hugepage_pools()[2048].free_hugepages == free_before
        if memory.default_hugepage_kib() == 2048:
            assert _meminfo("HugePages_Free") == free_before
        mode = memory.thp_mode()
        other = "never" if mode != "never" else "madvise"
        with memory.thp_mode_set(other) as previous:
            assert previous == mode and memory.thp_mode() == other
        assert memory.thp_mode() == mode
    assert guard.changed == []
    assert Path("/proc/mounts").read_text() == mounts_before

"""Host memory management during the save (during/host_mm.py, host/swap.py,
host/ksm.py): the maps finder, smaps/vmstat/pagemap arithmetic, the
settings, the "nothing happened" hook, and the swap file and KSM knobs put
back also when the test fails, against fake /proc and /sys trees.
"""

import subprocess
from pathlib import Path

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import settings
from avocado_bgsnap.during import DuringSave, DuringSaveRun, host_mm
from avocado_bgsnap.host import ksm, swap
from avocado_bgsnap.host.memory import HostMemoryNotRestored, HostMemoryUnavailable

MIB = 2**20

# a QEMU 7.2 with 256 MiB of anonymous guest RAM: alignment gap, the RAM,
# its PROT_NONE guard page, a 256 MiB file mapping and a 256 MiB shmem one
MAPS = """\
55d0c8a00000-55d0c9200000 r-xp 00000000 fe:00 1234   /usr/bin/qemu-system-x86_64
55d0cb000000-55d0cb400000 rw-p 00000000 00:00 0      [heap]
7f3a40000000-7f3a48000000 rw-p 00000000 00:00 0
7f3a48000000-7f3a50000000 rw-p 00000000 00:00 0
7f3a50000000-7f3a50001000 ---p 00000000 00:00 0
7f3a60000000-7f3a70000000 rw-s 00000000 00:01 77     /memfd:mem0 (deleted)
7f3a80000000-7f3a90000000 r--p 00000000 fe:00 99     /var/tmp/big
7f3aa0000000-7f3aa0200000 rw-p 00000000 00:00 0
"""


def params(**extra):
    base = {"mem": "256", "bgsnap_workload_mib": "128"}
    base.update({k: str(v) for k, v in extra.items()})
    return Params(base)


# -- maps, smaps, vmstat, pagemap -----------------------------------------------

def test_guest_ram_is_the_anonymous_run_of_its_size():
    # two adjacent VMAs (split by the kernel) are one 256 MiB RAMBlock
    assert host_mm.guest_ram_ranges(MAPS, 256 * MIB) == [(0x7F3A40000000, 0x7F3A50000000)]
    # single VMAs of the size come first
    assert host_mm.guest_ram_ranges(MAPS, 128 * MIB) == [(0x7F3A40000000, 0x7F3A48000000),
                                                         (0x7F3A48000000, 0x7F3A50000000)]
    assert host_mm.guest_ram_ranges(MAPS, 2 * MIB) == [(0x7F3AA0000000, 0x7F3AA0200000)]
    # measured (QEMU 7.2): a thread's anonymous mapping right below the RAM
    beside = ("7f080b07c000-7f080be00000 rw-p 00000000 00:00 0\n"
              "7f080be00000-7f081be00000 rw-p 00000000 00:00 0\n"
              "7f081be00000-7f081be01000 ---p 00000000 00:00 0\n")
    assert host_mm.guest_ram_ranges(beside, 256 * MIB) == [(0x7F080BE00000, 0x7F081BE00000)]
    # the 256 MiB shmem and file mappings are not anonymous RAM
    assert host_mm.guest_ram_ranges(MAPS.replace("7f3a48000000-7f3a50000000", "7f3a48000000-7f3a4c000000"),
                                    256 * MIB) == []
    maps = host_mm.parse_maps(MAPS)
    assert maps[0].path == "/usr/bin/qemu-system-x86_64" and not maps[0].anonymous
    assert maps[5].path == "/memfd:mem0 (deleted)" and maps[2].anonymous


SMAPS = """\
7f3a40000000-7f3a48000000 rw-p 00000000 00:00 0
Rss:              131072 kB
Swap:               1024 kB
AnonHugePages:     65536 kB
VmFlags: rd wr mr mw me ac hg mg
7f3a48000000-7f3a50000000 rw-p 00000000 00:00 0
Rss:                4096 kB
Swap:                  0 kB
AnonHugePages:      2048 kB
VmFlags: rd wr mr mw me ac mg
7f3aa0000000-7f3aa0200000 rw-p 00000000 00:00 0
Rss:                2048 kB
AnonHugePages:      2048 kB
VmFlags: rd wr mr mw me ac
"""


def test_smaps_sums_the_guest_ram_vmas_only():
    got = host_mm.smaps_of(SMAPS, [(0x7F3A40000000, 0x7F3A50000000)])
    assert got == {"rss_kib": 135168, "swap_kib": 1024, "anon_huge_kib": 67584,
                   "vmflags": ["ac", "hg", "me", "mg", "mr", "mw", "rd", "wr"]}


def test_vmstat_delta_keeps_zeros_of_the_asked_counters():
    before = host_mm.parse_vmstat("pswpin 10\npswpout 20\npgfault 5\nnr_free_pages 1\n")
    after = host_mm.parse_vmstat("pswpin 10\npswpout 65556\npgfault 99\nnr_free_pages 3\n")
    assert host_mm.vmstat_delta(before, after, ("pswp",)) == {"pswpin": 0, "pswpout": 65536}
    assert host_mm.vmstat_delta({}, {"compact_stall": 2, "x": 1},
                                ("compact_", "pgmigrate_")) == {"compact_stall": 2}


P, X, W, S = host_mm.PM_PRESENT, host_mm.PM_EXCLUSIVE, host_mm.PM_UFFD_WP, host_mm.PM_SWAPPED


def test_page_counts_and_moved_pages():
    before = [P | X | W | 100, P | X | W | 101, P | 7, 0, P | X | 104]
    after = [S | W | 5, P | X | W | 900, P | 8, P | X | 50, P | X | 104]
    assert host_mm.page_counts(after) == {"pages": 5, "present": 4, "swapped": 1, "uffd_wp": 2,
                                          "swapped_uffd_wp": 1, "exclusive": 3}
    # only page 1: exclusive and present before, present elsewhere after
    # (page 0 is in swap, page 2 was the shared zero page, page 3 newly populated)
    assert host_mm.pages_moved(before, after) == 1


def test_huge_chunks_are_aligned_and_whole():
    assert host_mm.huge_chunks([(0x1000, 0x5FF000)]) == [(0x200000, 0x400000)]
    assert len(host_mm.huge_chunks([(0x40000000, 0x50000000)])) == 128


def test_numa_nodes_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(host_mm, "_root", tmp_path)
    nodes = tmp_path / "sys/devices/system/node"
    for name in ("node0", "possible", "online"):
        (nodes / name).mkdir(parents=True)
    assert host_mm.numa_nodes() == 1
    (nodes / "node1").mkdir()
    assert host_mm.numa_nodes() == 2


# -- settings ---------------------------------------------------------------------

def test_host_mm_settings():
    cfg = settings.from_params(params(bgsnap_during="pageout ksm compact",
                                      bgsnap_swap_mib=512, bgsnap_transport="slow"))
    mm = cfg.host_mm
    assert mm.names == ("pageout", "compact", "ksm")
    assert mm.pageout == host_mm.PageoutSettings(256, 512, Path("/var/tmp"))
    assert mm.ksm.pages_to_scan == 10000 and mm.ksm.sleep_millisecs == 10
    assert mm.ksm.timeout_s == 20 and mm.thp_collapse is None
    assert settings.from_params(params()).host_mm is None
    numa = settings.from_params(params(bgsnap_during="numa_migrate",
                                       bgsnap_numa_nodes="1 0")).host_mm.numa_migrate
    assert (numa.from_node, numa.to_node) == (1, 0)


@pytest.mark.parametrize("extra, message", [
    ({"bgsnap_during": "pageout", "bgsnap_swap_mib": 128}, "bgsnap_swap_mib = 128: the swap"),
    ({"bgsnap_during": "pageout", "bgsnap_swap_mib": 0}, "bgsnap_swap_mib = 0: expected >= 1"),
    ({"bgsnap_during": "pageout", "bgsnap_swap_dir": "tmp"}, "bgsnap_swap_dir"),
    ({"bgsnap_during": "ksm", "bgsnap_ksm_pages_to_scan": 0}, "bgsnap_ksm_pages_to_scan"),
    ({"bgsnap_during": "ksm", "bgsnap_ksm_sleep_ms": -1}, "bgsnap_ksm_sleep_ms"),
    ({"bgsnap_during": "thp_collapse", "bgsnap_host_mm_timeout": 0}, "bgsnap_host_mm_timeout"),
    ({"bgsnap_during": "thp_collapse", "bgsnap_thp_collapse_interval": 0},
     "bgsnap_thp_collapse_interval"),
    ({"bgsnap_during": "numa_migrate", "bgsnap_numa_nodes": "0 0"}, "bgsnap_numa_nodes"),
    ({"bgsnap_during": "numa_migrate", "bgsnap_numa_nodes": "0"}, "bgsnap_numa_nodes"),
    ({"bgsnap_during": "pageout", "bgsnap_mode": "stop_save"}, "needs bgsnap_mode = background"),
    ({"bgsnap_during": "swapstorm"}, "unknown action 'swapstorm'"),
])
def test_bad_host_mm_values_are_named(extra, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.from_params(params(**extra))


# -- "nothing happened" ------------------------------------------------------------

class _Ctx:
    def migration_status(self):
        return "active"


class _Idle(DuringSave):
    name = "idle"

    def act(self, ctx):
        return {"moved": 0}

    def nothing_happened(self, record):
        return "moved no page" if record["moved"] == 0 else None


def test_an_action_that_changed_nothing_is_not_tested():
    run = DuringSaveRun([_Idle()], lambda m: None)
    run.act(_Ctx())
    assert run.missed() == ["idle: nothing happened: moved no page"]
    assert run.errors() == []


def test_the_actions_say_when_nothing_happened():
    out = host_mm.PageOut(host_mm.PageoutSettings(256, 1024, Path("/var/tmp")))
    record = {"vmstat": {"pswpout": 0}, "pages_after": {"swapped": 0}, "madvise": ["EINVAL"]}
    assert "no guest page went to swap" in out.nothing_happened(record)
    record = {"vmstat": {"pswpout": 65536}, "pages_after": {"swapped": 65000}, "madvise": [1]}
    assert out.nothing_happened(record) is None
    compact = host_mm.Compact(host_mm.CompactSettings(256, 20, 0.5))
    assert "moved none of QEMU's" in compact.nothing_happened(
        {"moved_while_streaming": 0, "vmstat": {"pgmigrate_success": 12}})
    assert "no anonymous mapping" in compact.nothing_happened(compact._no_ram())


# -- the swap file ---------------------------------------------------------------

class FakeSwapTools:
    """mkswap/swapon/swapoff on a fake /proc/swaps; ``stuck``: swapoff fails."""

    def __init__(self, root, stuck=False):
        self.swaps = root / "proc/swaps"
        self.swaps.parent.mkdir(parents=True)
        self.swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n")
        self.stuck = stuck
        self.calls = []

    def run(self, cmd):
        self.calls.append(cmd[0])
        if cmd[0] == "fallocate":
            Path(cmd[-1]).write_bytes(b"\0" * 16)
        elif cmd[0] == "swapon":
            self.swaps.write_text(self.swaps.read_text() + f"{cmd[1]}\tfile\t1048572\t0\t-2\n")
        elif cmd[0] == "swapoff" and not self.stuck:
            lines = self.swaps.read_text().splitlines(True)
            self.swaps.write_text("".join(x for x in lines if not x.startswith(cmd[1])))
        return subprocess.CompletedProcess(cmd, 1 if cmd[0] == "swapoff" and self.stuck else 0,
                                           "", "swapoff: Cannot allocate memory")


@pytest.fixture
def fake_swap(tmp_path, monkeypatch):
    tools = FakeSwapTools(tmp_path)
    monkeypatch.setattr(swap, "_root", tmp_path)
    monkeypatch.setattr(swap, "_is_root", lambda: True)
    monkeypatch.setattr(swap, "_run", tools.run)
    return tools


def test_swap_file_is_switched_off_and_deleted_also_when_the_test_fails(fake_swap, tmp_path):
    with pytest.raises(RuntimeError, match="test failed"):
        with swap.swap_file(tmp_path, 1024) as dev:
            assert swap.active_swaps() == [dev.path] and Path(dev.path).exists()
            raise RuntimeError("test failed")
    assert swap.active_swaps() == [] and not Path(dev.path).exists()
    assert fake_swap.calls == ["fallocate", "mkswap", "swapon", "swapoff"]


def test_a_swap_file_that_stays_on_is_named(fake_swap, tmp_path):
    fake_swap.stuck = True
    with pytest.raises(HostMemoryNotRestored, match="still on after swapoff"):
        with swap.swap_file(tmp_path, 1024):
            pass
    with pytest.raises(RuntimeError) as failed:      # the test's error is kept, with a note
        with swap.swap_file(tmp_path, 1024):
            raise RuntimeError("test failed")
    assert "still on after swapoff" in failed.value.__notes__[0]


def test_swap_needs_root(fake_swap, tmp_path, monkeypatch):
    monkeypatch.setattr(swap, "_is_root", lambda: False)
    with pytest.raises(HostMemoryUnavailable, match="needs root"):
        with swap.swap_file(tmp_path, 1024):
            pass
    assert fake_swap.calls == []


# -- KSM ---------------------------------------------------------------------------

@pytest.fixture
def fake_ksm(tmp_path, monkeypatch):
    directory = tmp_path / ksm.KSM_DIR
    directory.mkdir(parents=True)
    for name, value in (("run", 0), ("pages_to_scan", 100), ("sleep_millisecs", 20),
                        ("pages_shared", 0), ("pages_sharing", 0), ("full_scans", 3)):
        (directory / name).write_text(f"{value}\n")
    (tmp_path / "proc/42").mkdir(parents=True)
    (tmp_path / "proc/42/ksm_stat").write_text("ksm_rmap_items 10\nksm_merging_pages 7\n"
                                              "ksm_merge_any: no\n")
    monkeypatch.setattr(ksm, "_root", tmp_path)
    monkeypatch.setattr(ksm, "_is_root", lambda: True)
    return directory


def test_ksm_knobs_are_put_back_also_when_the_test_fails(fake_ksm):
    written = []
    real = ksm._write

    def write(name, value):
        written.append((name, value))
        real(name, value)

    ksm._write = write
    try:
        with pytest.raises(RuntimeError):
            with ksm.ksm_control() as control:
                control.start(10000, 10)
                assert (fake_ksm / "run").read_text() == "1"
                (fake_ksm / "pages_sharing").write_text("5\n")   # ksmd merged something
                raise RuntimeError("test failed")
    finally:
        ksm._write = real
    # unmerged (run 2) before the knobs went back: run 0 as found
    assert ("run", 2) in written and written[-1] == ("run", 0)
    assert {n: (fake_ksm / n).read_text().strip() for n in ksm.KNOBS} == \
        {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20"}


def test_ksm_counters_and_process_stat(fake_ksm):
    assert ksm.counters()["full_scans"] == 3 and ksm.counters()["pages_volatile"] is None
    assert ksm.process_ksm(42) == {"ksm_rmap_items": 10, "ksm_merging_pages": 7}
    assert ksm.process_ksm(43) == {}


def test_ksm_needs_root_and_ksm(fake_ksm, monkeypatch, tmp_path):
    monkeypatch.setattr(ksm, "_is_root", lambda: False)
    with pytest.raises(HostMemoryUnavailable, match="needs root to run KSM"):
        with ksm.ksm_control():
            pass
    monkeypatch.setattr(ksm, "_root", tmp_path / "nowhere")
    with pytest.raises(HostMemoryUnavailable, match="no KSM on this kernel"):
        with ksm.ksm_control():
            pass


# -- around the whole test ----------------------------------------------------------

def test_numa_migrate_cancels_before_any_vm_on_one_node(tmp_path, monkeypatch):
    monkeypatch.setattr(host_mm, "_root", tmp_path)
    (tmp_path / "sys/devices/system/node/node0").mkdir(parents=True)
    monkeypatch.setattr(host_mm.os, "geteuid", lambda: 0)
    cfg = host_mm.HostMMSettings(numa_migrate=host_mm.NumaMigrateSettings(256, 0, 1))
    with pytest.raises(host_mm.HostMMUnavailable,
                       match="numa_migrate needs 2 host NUMA nodes, this host has 1"):
        with host_mm.prepared(cfg):
            pass


def test_host_mm_without_root_is_a_cancel_naming_what_is_missing(monkeypatch):
    monkeypatch.setattr(host_mm.os, "geteuid", lambda: 1000)
    cfg = host_mm.HostMMSettings(compact=host_mm.CompactSettings(256, 20, 0.5))
    with pytest.raises(host_mm.HostMMUnavailable, match="compact need root"):
        with host_mm.prepared(cfg):
            pass
    with host_mm.prepared(None) as nothing:
        assert nothing.actions == []


# -- the KSM action's duplicate-region write (hostmm.ksm_dup) -------------------

def test_dup_settings_fit_below_mem_and_need_a_dup_region():
    cfg = settings.from_params(params(bgsnap_during="ksm", bgsnap_dup_mib=32,
                                      bgsnap_ksm_dupwrite="yes"))
    assert cfg.workload.dup_mib == 32 and cfg.workload.dup_pages == 8192
    assert cfg.host_mm.ksm.dupwrite and cfg.host_mm.ksm.dup_merged_pct == 50
    assert "--dup-mib" in cfg.workload.run_argv() and "--dup-mib" in \
        cfg.workload.verify_dump_argv("d")
    assert "--dup-mib" not in settings.from_params(params()).workload.run_argv()
    with pytest.raises(settings.SettingsError, match="128 \\+ 128 must be below mem = 256"):
        settings.from_params(params(bgsnap_dup_mib=128))
    with pytest.raises(settings.SettingsError, match="needs bgsnap_dup_mib > 0"):
        settings.from_params(params(bgsnap_during="ksm", bgsnap_ksm_dupwrite="yes"))
    with pytest.raises(settings.SettingsError, match="bgsnap_ksm_dup_merged_pct"):
        settings.from_params(params(bgsnap_during="ksm", bgsnap_dup_mib=8,
                                    bgsnap_ksm_dupwrite="yes", bgsnap_ksm_dup_merged_pct=101))


def test_dup_counts_split_merged_protected_and_saved():
    wp, present = host_mm.PM_UFFD_WP, host_mm.PM_PRESENT
    entries = [present | wp, present | wp, present, present, present | wp]
    merged = [True, False, True, False, False]
    assert host_mm.dup_counts(entries, merged) == {
        "pages": 5, "merged": 2, "merged_uffd_wp": 1, "merged_no_uffd_wp": 1,
        "uffd_wp": 3, "unprotected": 1}


def test_find_pages_finds_page_aligned_copies_only(tmp_path, monkeypatch):
    d0 = bytes(range(256)) * 16
    base = 0x40_0000
    image = bytearray(16 * 4096)
    for page in (2, 3, 9):
        image[page * 4096:(page + 1) * 4096] = d0
    image[5 * 4096 + 8:6 * 4096 + 8] = d0            # not page aligned: not a page of D0
    mem = tmp_path / "proc/42/mem"
    mem.parent.mkdir(parents=True)
    with open(mem, "wb") as handle:
        handle.seek(base)
        handle.write(image)
    monkeypatch.setattr(host_mm, "_root", tmp_path)
    found = host_mm.find_pages(42, [(base, base + len(image))], d0, chunk=8 * 4096)
    assert found == [base + p * 4096 for p in (2, 3, 9)]


class _Workload:
    def __init__(self, spec):
        self.spec, self.calls = spec, 0

    def dupwrite(self, timeout=None):
        self.calls += 1
        return {"pages": self.spec.dup_pages, "seconds": 0.01}


class _SaveCtx:
    """A save that streams for ``polls`` migration-status reads."""

    def __init__(self, workload, polls, remaining=1 << 30):
        self.workload, self.polls, self.log = workload, polls, lambda m: None
        self.qmp, self.remaining = self, remaining

    def migration_status(self):
        self.polls -= 1
        return "active" if self.polls > 0 else "completed"

    def query_migrate(self):
        return {"ram": {"remaining": self.remaining}}


def _fake_ksm_action(monkeypatch, merge_after: int):
    """KsmMerge over 4 dup pages that become KSM pages after ``merge_after``
    pagemap reads of the dup region; ksmd's knobs faked."""
    from avocado_bgsnap.wlproto import WorkloadSpec
    spec = WorkloadSpec(mib=1, seed=1, nonce=2, dup_mib=1)
    reads = {"n": 0}

    def pagemap(pid, ranges):
        if len(ranges) == 4:                        # the dup pages
            reads["n"] += 1
        return [host_mm.PM_PRESENT | 7] * len(ranges)

    def flagged(entries):
        return [reads["n"] > merge_after] * len(entries)

    monkeypatch.setattr(host_mm, "pagemap", pagemap)
    monkeypatch.setattr(host_mm, "ksm_flagged", flagged)
    monkeypatch.setattr(host_mm, "find_pages", lambda pid, ranges, content: [0x1000 * i
                                                                              for i in range(4)])
    monkeypatch.setattr(host_mm.host_ksm, "counters", lambda: {"full_scans": 0})
    monkeypatch.setattr(host_mm.host_ksm, "process_ksm", lambda pid: {"ksm_merging_pages": 0})
    monkeypatch.setattr(host_mm.KsmMerge, "_smaps", lambda self: {"vmflags": ["mg"]})
    monkeypatch.setattr(host_mm.KsmMerge, "DUP_SAMPLE_S", 0.0)
    monkeypatch.setattr(host_mm.KsmMerge, "SAMPLE_S", 0.0)

    class Control:
        def start(self, *a):
            pass

        def stop(self):
            pass

    action = host_mm.KsmMerge(host_mm.KsmSettings(256, 10000, 10, 5, dupwrite=True), Control())
    action.pid, action.ranges = 42, [(0, 0x10000)]
    return action, _Workload(spec)


def test_ksm_dupwrite_runs_once_the_dup_region_merged_while_streaming(monkeypatch):
    action, workload = _fake_ksm_action(monkeypatch, merge_after=3)
    monkeypatch.setattr(host_mm._GuestRamAction, "before_trigger", lambda self, ctx: None)
    ctx = _SaveCtx(workload, polls=40)
    action.before_trigger(ctx)
    assert action.dup_found["found_d0"] == 4
    record = action.act(ctx)
    dup = record["dup_region"]
    assert workload.calls == 1 and dup["dupwrite"]["pages_written"] == 256
    assert dup["dupwrite"]["save_before"] == "active"
    assert dup["dupwrite"]["dup_before"]["merged"] == 4
    assert dup["dupwrite"]["trigger"]["measure"] == "dup pages KSM-merged"
    assert action.nothing_happened(record) is None


def test_ksm_dupwrite_that_never_ran_is_not_tested(monkeypatch):
    action, workload = _fake_ksm_action(monkeypatch, merge_after=10**6)
    monkeypatch.setattr(host_mm._GuestRamAction, "before_trigger", lambda self, ctx: None)
    ctx = _SaveCtx(workload, polls=4)
    action.before_trigger(ctx)
    record = action.act(ctx)
    assert workload.calls == 0 and record["dup_region"]["dupwrite"] is None
    assert "dupwrite did not run" in action.nothing_happened(record)


def test_ksm_dupwrite_without_the_workload_is_named(monkeypatch):
    action, _ = _fake_ksm_action(monkeypatch, merge_after=0)
    monkeypatch.setattr(host_mm._GuestRamAction, "before_trigger", lambda self, ctx: None)
    ctx = _SaveCtx(None, polls=4)
    action.before_trigger(ctx)
    record = action.act(ctx)
    assert "duplicate region" in action.nothing_happened(record)


def test_ksm_dupwrite_after_the_save_passed_the_region_is_not_tested(monkeypatch):
    action, workload = _fake_ksm_action(monkeypatch, merge_after=0)
    monkeypatch.setattr(host_mm._GuestRamAction, "before_trigger", lambda self, ctx: None)
    ctx = _SaveCtx(workload, polls=40, remaining=1000)
    action.before_trigger(ctx)
    record = action.act(ctx)
    write = record["dup_region"]["dupwrite"]
    assert write["dup_before"]["uffd_wp"] == 0 and write["ram_remaining_before"] == 1000
    assert "dupwrite came too late" in action.nothing_happened(record)

"""Every bad input tried, one table: each is refused before any VM starts
with an error naming the param (the test ends in ERROR).

``BAD_INPUTS`` is the table of docs/bad-input.md: a test checks that the
document lists every row with the message the user gets.  Print the rows
for the document with ``python selftests/unit/test_bad_input.py``.
"""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import preflight, settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
# Any readable regular file stands for the guest's kernel, initrd and the
# host-side verifier.
A_FILE = str(Path(__file__).resolve())
BASE = {"mem": "256", "bgsnap_workload_mib": "128",
        "kernel": A_FILE, "initrd": A_FILE, "bgsnap_wl_binary": A_FILE}


@dataclass(frozen=True)
class BadInput:
    what: str          # the bad input, in words
    param: str
    value: str
    message: str       # a fragment of what the user reads
    extra: dict = field(default_factory=dict)   # other params the case needs
    when: str = "settings"   # settings.from_params, or preflight.check_inputs (the host)


PREFLIGHT = "preflight"
_BOTH_URIS = {"bgsnap_restore_uri": "exec:cat {path}"}

BAD_INPUTS = [
    BadInput("unknown mode", "bgsnap_mode", "savevm",
             "bgsnap_mode = 'savevm': expected one of background, stop_save"),
    BadInput("unknown negative control", "bgsnap_negative_control", "maybe",
             "bgsnap_negative_control = 'maybe': expected one of none, damage_file"),
    BadInput("unknown accelerator", "bgsnap_accel", "xen",
             "bgsnap_accel = 'xen': expected one of auto, kvm, tcg"),
    BadInput("unknown write pattern", "bgsnap_pattern", "zigzag",
             "bgsnap_pattern = 'zigzag': expected one of random"),
    BadInput("unknown host THP mode", "bgsnap_host_thp", "sometimes",
             "bgsnap_host_thp = 'sometimes': expected one of keep"),
    BadInput("guest RAM zero", "mem", "0", "mem = 0: expected 1..1048576 MiB"),
    BadInput("guest RAM negative", "mem", "-256", "mem = -256: expected 1..1048576 MiB"),
    BadInput("guest RAM not a number", "mem", "lots",
             "mem = 'lots': expected an integer 1..1048576 MiB"),
    BadInput("guest RAM not whole MiB", "mem", "1.5", "mem = '1.5': expected an integer"),
    BadInput("guest RAM absurd", "mem", "1000000000",
             "mem = 1000000000: expected 1..1048576 MiB (at most 1 TiB)"),
    BadInput("guest RAM above host memory", "mem", "1000000",
             "mem = 1000000: the guest and its restored copy run at once: 2000000 MiB of "
             "guest RAM must fit this host's MemAvailable", when=PREFLIGHT),
    BadInput("workload zero", "bgsnap_workload_mib", "0",
             "bgsnap_workload_mib = 0: expected 1..1048576"),
    BadInput("workload negative", "bgsnap_workload_mib", "-5",
             "bgsnap_workload_mib = -5: expected 1..1048576"),
    BadInput("workload not a number", "bgsnap_workload_mib", "half",
             "bgsnap_workload_mib = 'half': expected an integer"),
    BadInput("workload absurd", "bgsnap_workload_mib", "1000000000",
             "bgsnap_workload_mib = 1000000000: expected 1..1048576"),
    BadInput("workload not below mem", "bgsnap_workload_mib", "256",
             "bgsnap_workload_mib = 256 must be below mem = 256"),
    BadInput("duplicate region negative", "bgsnap_dup_mib", "-1",
             "bgsnap_dup_mib = -1: expected >= 0 (0 = none)"),
    BadInput("workload + duplicate region not below mem", "bgsnap_dup_mib", "128",
             "bgsnap_workload_mib + bgsnap_dup_mib = 128 + 128 must be below mem = 256"),
    BadInput("no writers", "bgsnap_writers", "0", "bgsnap_writers = 0: expected 1..64"),
    BadInput("too many writers", "bgsnap_writers", "65", "bgsnap_writers = 65: expected 1..64"),
    BadInput("hot set 0 %", "bgsnap_hot_pct", "0", "bgsnap_hot_pct = 0: expected 1..100 (%)"),
    BadInput("hot set above 100 %", "bgsnap_hot_pct", "101",
             "bgsnap_hot_pct = 101: expected 1..100 (%)"),
    BadInput("write rate negative", "bgsnap_rate_mib_s", "-1",
             "bgsnap_rate_mib_s = -1: expected >= 0 (0 = unlimited)"),
    BadInput("seed negative", "bgsnap_seed", "-1",
             "bgsnap_seed = -1: expected 0..18446744073709551615"),
    BadInput("repetition zero", "bgsnap_repetition", "0", "bgsnap_repetition = 0: expected >= 1"),
    BadInput("vCPUs zero", "smp", "0", "smp = 0: expected >= 1 (vCPUs)"),
    BadInput("fill timeout zero", "bgsnap_fill_timeout", "0",
             "bgsnap_fill_timeout = 0: expected > 0 (seconds)"),
    BadInput("snapshot timeout negative", "bgsnap_snapshot_timeout", "-1",
             "bgsnap_snapshot_timeout = -1: expected > 0 (seconds)"),
    BadInput("restore timeout not a number", "bgsnap_restore_timeout", "soon",
             "bgsnap_restore_timeout = 'soon': expected a number > 0 (seconds)"),
    BadInput("verify timeout infinite", "bgsnap_verify_timeout", "inf",
             "bgsnap_verify_timeout = 'inf': expected a number > 0 (seconds)"),
    BadInput("KVM probe timeout zero", "bgsnap_kvm_probe_timeout", "0",
             "bgsnap_kvm_probe_timeout = 0: expected > 0 (seconds)"),
    BadInput("pause gate negative", "max_pause_ms", "-1",
             "max_pause_ms = -1: expected >= 0 (0 = no gate)"),
    BadInput("save-time gate not a number", "max_total_s", "fast",
             "max_total_s = 'fast': expected a number >= 0 (0 = no gate)"),
    BadInput("stall gate negative", "max_stall_ms", "-5",
             "max_stall_ms = -5: expected >= 0 (0 = no gate)"),
    BadInput("late image delay negative", "bgsnap_late_image_delay", "-1",
             "bgsnap_late_image_delay = -1: expected >= 0"),
    BadInput("bandwidth cap negative", "bgsnap_max_bandwidth_mib_s", "-1",
             "bgsnap_max_bandwidth_mib_s = -1: expected >= 0 (0 = no cap)"),
    BadInput("unknown transport", "bgsnap_transport", "carrier-pigeon",
             "bgsnap_transport = 'carrier-pigeon': unknown transport 'carrier-pigeon'"),
    BadInput("save URI without restore URI", "bgsnap_save_uri", "exec:cat > {path}",
             "bgsnap_save_uri, bgsnap_restore_uri: set both"),
    BadInput("transport URI of another scheme", "bgsnap_save_uri", "tcp:{path}",
             "bgsnap_save_uri, bgsnap_restore_uri: save URI 'tcp:{path}': must start with one "
             "of", _BOTH_URIS),
    BadInput("transport URI with an unknown placeholder", "bgsnap_save_uri",
             "exec:cat > {file}", "save URI 'exec:cat > {file}': unknown placeholder(s) "
             "['file']", _BOTH_URIS),
    BadInput("transport URI without {path}", "bgsnap_save_uri", "exec:cat > /tmp/x",
             "save URI 'exec:cat > /tmp/x': has no {path}", _BOTH_URIS),
    BadInput("transport command not on the host", "bgsnap_save_uri",
             "exec:nosuchcmd > {path}", "command 'nosuchcmd' not found on this host",
             _BOTH_URIS),
    BadInput("transport command unparsable", "bgsnap_save_uri", "exec:cat > '{path}",
             "save URI \"exec:cat > '{path}\": No closing quotation", _BOTH_URIS),
    BadInput("file: URI with more than {path}", "bgsnap_restore_uri", "file:{path}.gz",
             "restore URI 'file:{path}.gz': a file: URI is exactly 'file:{path}'",
             {"bgsnap_save_uri": "file:{path}"}),
    BadInput("save and restore of different schemes", "bgsnap_restore_uri", "exec:cat {path}",
             "save and restore URIs must both be file: or both exec:",
             {"bgsnap_save_uri": "file:{path}"}),
    BadInput("kernel not set", "kernel", "", "kernel is not set: expected a file", when=PREFLIGHT),
    BadInput("kernel missing", "kernel", "/nonexistent/vmlinuz",
             "kernel = '/nonexistent/vmlinuz': no such file: expected an existing file", when=PREFLIGHT),
    BadInput("initrd missing", "initrd", "/nonexistent/initrd.img",
             "initrd = '/nonexistent/initrd.img': no such file: expected an existing file", when=PREFLIGHT),
    BadInput("initrd a directory", "initrd", "/tmp",
             "initrd = '/tmp': is not a regular file", when=PREFLIGHT),
    BadInput("verifier binary missing", "bgsnap_wl_binary", "/nonexistent/bgsnap-wl",
             "bgsnap_wl_binary = '/nonexistent/bgsnap-wl': no such file", when=PREFLIGHT),
    BadInput("snapshot dir relative", "bgsnap_snapshot_dir", "snapshots",
             "bgsnap_snapshot_dir = 'snapshots': expected an absolute path"),
    BadInput("snapshot dir missing", "bgsnap_snapshot_dir", "/nonexistent/snapshots",
             "bgsnap_snapshot_dir = '/nonexistent/snapshots': does not exist: expected an "
             "existing, writable directory", when=PREFLIGHT),
    BadInput("snapshot dir a file", "bgsnap_snapshot_dir", "/etc/passwd",
             "bgsnap_snapshot_dir = '/etc/passwd': is not a directory", when=PREFLIGHT),
    # /proc: no file can be created there, not even by root (os.access says
    # yes to root): the check creates one
    BadInput("snapshot dir not writable", "bgsnap_snapshot_dir", "/proc",
             "bgsnap_snapshot_dir = '/proc': not writable", when=PREFLIGHT),
]


def refused(case: BadInput) -> str:
    """The message a test gets for ``case``, from the step the table says:
    settings (first line of run()) or the input checks of preflight (next,
    before the host probe); both come before any QEMU."""
    params = Params({**BASE, **case.extra, case.param: case.value})
    try:
        cfg = settings.from_params(params)
    except settings.SettingsError as exc:
        assert case.when == "settings", f"{case.what}: refused by settings, not {case.when}"
        return str(exc)
    assert case.when == PREFLIGHT, f"{case.what}: settings accepted it"
    with pytest.raises(settings.SettingsError) as caught:
        preflight.check_inputs(params, cfg)
    return str(caught.value)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.what)
def test_bad_input_is_refused_naming_the_param(case):
    message = refused(case)
    assert case.message in message
    assert case.param in message.split(":")[0], "the message does not start with the param"


def test_base_params_are_good():
    params = Params(BASE)
    preflight.check_inputs(params, settings.from_params(params))


def test_input_checks_come_before_the_host_probe(monkeypatch):
    def probed(*args, **kwargs):
        raise AssertionError("the host was probed (a QEMU started) before the input checks")

    monkeypatch.setattr(preflight, "check_host", probed)
    params = Params({**BASE, "kernel": "/nonexistent/vmlinuz"})
    with pytest.raises(settings.SettingsError, match="kernel = '/nonexistent/vmlinuz'"):
        preflight.check_test_host(params, settings.from_params(params))


def test_snapshot_dir_is_checked_by_creating_a_file(tmp_path, monkeypatch):
    """os.access says yes (as it does to root on a read-only mount): the
    file that cannot be created decides."""
    monkeypatch.setattr(preflight.os, "access", lambda *a: True)

    def no_file(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", no_file)
    with pytest.raises(settings.SettingsError,
                       match="not writable \\(creating a file there: Read-only file system"):
        preflight.check_writable_dir("bgsnap_snapshot_dir", tmp_path)


def test_a_writable_snapshot_dir_is_left_empty(tmp_path):
    preflight.check_writable_dir("bgsnap_snapshot_dir", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_host_memory_rule(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 4194304 kB\nMemAvailable: 1048576 kB\n")  # 1 GiB free
    fits = settings.from_params(Params({**BASE, "mem": "512"}))
    preflight.check_host_memory(fits, meminfo=meminfo)              # 2 x 512 = 1024
    too_big = settings.from_params(Params({**BASE, "mem": "513"}))
    with pytest.raises(settings.SettingsError, match="1026 MiB of guest RAM must fit this "
                                                     "host's MemAvailable of 1024 MiB"):
        preflight.check_host_memory(too_big, meminfo=meminfo)
    preflight.check_host_memory(too_big, with_snapshot=False, meminfo=meminfo)  # one guest
    meminfo.write_text("")                                          # unknown: not checked
    preflight.check_host_memory(too_big, meminfo=meminfo)


def test_hugetlb_ram_is_not_counted_against_mem_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 1048576 kB\n")
    cfg = settings.from_params(Params({**BASE, "mem": "1024", "mem_devs": "m0",
                                       "guest_numa_nodes": "n0", "numa_memdev_n0": "mem-m0",
                                       "backend_mem_m0": "memory-backend-memfd",
                                       "hugetlb_mem_m0": "yes", "size_mem_m0": "1024M"}))
    preflight.check_host_memory(cfg, meminfo=meminfo)


# -- the document -------------------------------------------------------------------

def doc_row(case: BadInput, message: str) -> str:
    value = f"`{case.value}`" if case.value else "(empty)"
    extra = "".join(f" (with `{k} = {v}`)" for k, v in case.extra.items())
    return (f"| {case.what} | `{case.param}` | {value}{extra} | ERROR: "
            f"{_cell(message)} | {case.when} |")


def _cell(text: str) -> str:
    return text.replace("|", "&#124;")


def test_the_document_lists_every_bad_input():
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for case in BAD_INPUTS:
        mine = [r for r in rows if r.startswith(f"| {case.what} | `{case.param}` |")]
        assert mine, f"docs/bad-input.md lacks the row of {case.what!r} ({case.param})"
        assert _cell(case.message) in mine[0] and f"| {case.when} |" in mine[0], \
            f"docs/bad-input.md: {case.what!r}: the message differs: {mine[0]}"


if __name__ == "__main__":
    for item in BAD_INPUTS:
        print(doc_row(item, refused(item)))

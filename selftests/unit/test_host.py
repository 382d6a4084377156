"""avocado_bgsnap.host: parsers and decisions (pure), probes against this host (live).

Live tests skip when the tool they need is missing.  Fake "QEMU" scripts
stand in where a real guest would be too slow or is not available.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from avocado_bgsnap import host

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="userfaultfd is Linux-only")

VERSION_REPLY = {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7},
                            "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}}
CAPS_REPLY = {"return": [{"state": False, "capability": "xbzrle"},
                         {"state": False, "capability": "background-snapshot"},
                         {"state": True, "capability": "events"}]}


def make_qemu_info(version=(7, 2, 22), caps=("background-snapshot",), binary="/usr/bin/qemu"):
    return host.QemuInfo(binary=binary, version=version,
                         version_text=".".join(map(str, version)),
                         migration_capabilities=frozenset(caps))


def make_facts(qemu=None, uffd=None, accel=None):
    return host.HostFacts(
        qemu=qemu or make_qemu_info(),
        uffd=uffd or host.UffdInfo(True, 0x1ffff, "", host.UFFD_MODE_SYSCALL),
        accel=accel or host.AccelChoice("tcg", "forced by cfg", 0.0),
        kernel_release="6.18.0-test", cpu_count=4, mem_total_kib=8 * 1024 * 1024)


@pytest.fixture
def spawned(monkeypatch):
    """Every process host.py starts, to check none outlives a probe."""
    procs = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            procs.append(self)

    # host.qemu and host.accel both look Popen up on the subprocess module.
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return procs


def assert_all_reaped(procs):
    assert procs, "the probe started no process"
    for proc in procs:
        assert proc.returncode is not None, f"pid {proc.pid} left running"


def write_script(path: Path, body: str) -> str:
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


# ---------------------------------------------------------------- QMP parsing

def test_parse_qmp_version_accepts_reply_payload_and_greeting():
    assert host.parse_qmp_version(VERSION_REPLY) == (7, 2, 22)
    assert host.parse_qmp_version(VERSION_REPLY["return"]) == (7, 2, 22)
    greeting = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10},
                                    "package": ""}, "capabilities": ["oob"]}}
    assert host.parse_qmp_version(greeting) == (10, 0, 2)


def test_parse_qmp_version_text():
    assert host.parse_qmp_version_text(VERSION_REPLY) == "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert host.parse_qmp_version_text({"return": {"qemu": {"major": 10, "minor": 0,
                                                            "micro": 2}}}) == "10.0.2"


@pytest.mark.parametrize("bad", [{}, {"return": {}}, {"return": []}, [], None,
                                 {"return": {"qemu": {"major": "x", "minor": 0, "micro": 0}}}])
def test_parse_qmp_version_rejects_garbage(bad):
    with pytest.raises(ValueError):
        host.parse_qmp_version(bad)


def test_parse_migrate_capabilities():
    expected = frozenset({"xbzrle", "background-snapshot", "events"})
    assert host.parse_migrate_capabilities(CAPS_REPLY) == expected
    assert host.parse_migrate_capabilities(CAPS_REPLY["return"]) == expected
    assert host.parse_migrate_capabilities({"return": []}) == frozenset()


@pytest.mark.parametrize("bad", [{}, {"return": {}}, {"return": [{"state": True}]},
                                 {"return": ["xbzrle"]}, "x"])
def test_parse_migrate_capabilities_rejects_garbage(bad):
    with pytest.raises(ValueError):
        host.parse_migrate_capabilities(bad)


@pytest.mark.parametrize("version,file_uri", [((7, 2, 22), False), ((8, 1, 5), False),
                                              ((8, 2, 0), True), ((10, 0, 2), True)])
def test_qemu_info_file_uri(version, file_uri):
    assert make_qemu_info(version).supports_file_uri is file_uri


def test_qemu_info_capabilities():
    old = make_qemu_info(caps=("xbzrle",))
    new = make_qemu_info((10, 0, 2), caps=("background-snapshot", "mapped-ram"))
    assert not old.has_capability("background-snapshot")
    assert not old.supports_background_snapshot and not old.supports_mapped_ram
    assert new.supports_background_snapshot and new.supports_mapped_ram
    data = new.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["migration_capabilities"] == ["background-snapshot", "mapped-ram"]


# ---------------------------------------------------------------- probe_qemu

def test_find_qemu_binary_errors(tmp_path):
    with pytest.raises(host.HostCheckError, match="does not exist"):
        host.find_qemu_binary(str(tmp_path / "qemu"))
    with pytest.raises(host.HostCheckError, match="not found on PATH"):
        host.find_qemu_binary(f"no-such-qemu-{uuid.uuid4().hex}")
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(host.HostCheckError, match="not executable"):
        host.find_qemu_binary(str(plain))


def test_probe_qemu_nonexistent_binary(tmp_path):
    missing = tmp_path / "qemu-system-x86_64"
    with pytest.raises(host.HostCheckError) as info:
        host.probe_qemu(str(missing))
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)


def test_probe_qemu_not_qemu(spawned):
    false = shutil.which("false") or "/bin/false"
    started = time.monotonic()
    with pytest.raises(host.HostCheckError) as info:
        host.probe_qemu(false, timeout=5)
    assert time.monotonic() - started < 3
    assert "is it QEMU?" in str(info.value)
    assert info.value.returncode == 1
    assert info.value.command[0] == os.path.abspath(false)
    assert_all_reaped(spawned)


def test_probe_qemu_garbage_output(tmp_path, spawned):
    fake = write_script(tmp_path / "fake", "#!/bin/sh\necho oops >&2\necho 'hello, not QMP'\n"
                                           "exec sleep 30\n")
    with pytest.raises(host.HostCheckError) as info:
        host.probe_qemu(fake, timeout=5)
    assert "instead of QMP" in str(info.value) and "oops" in info.value.stderr
    assert_all_reaped(spawned)


def test_probe_qemu_timeout_kills(tmp_path, spawned):
    fake = write_script(tmp_path / "fake", "#!/bin/sh\necho 'starting' >&2\nexec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(host.HostCheckError) as info:
        host.probe_qemu(fake, timeout=0.5)
    assert time.monotonic() - started < 3
    assert "within 0.5s" in str(info.value) and "starting" in str(info.value)
    assert info.value.returncode is not None     # killed, and the status is reported
    assert_all_reaped(spawned)


FAKE_QMP = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
assert args[:2] == ["-L", "/opt/fw"], args
def out(obj):
    sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
out({{"QMP": {{"version": {{"qemu": {{"major": 10, "minor": 0, "micro": 2}}, "package": ""}},
              "capabilities": ["oob"]}}}})
for line in sys.stdin:
    cmd = json.loads(line)
    name, ident = cmd["execute"], cmd.get("id")
    out({{"timestamp": {{"seconds": 1, "microseconds": 2}}, "event": "NOISE"}})
    if name == "query-version":
        ret = {{"qemu": {{"major": 10, "minor": 0, "micro": 2}},
               "package": os.environ.get("FAKE_PACKAGE", "")}}
    elif name == "query-migrate-capabilities":
        ret = [{{"capability": c, "state": False}}
               for c in ("background-snapshot", "mapped-ram", "multifd")]
    else:
        ret = {{}}
    out({{"return": ret, "id": ident}})
    if name == "quit":
        break
"""


def test_probe_qemu_fake_qmp_extra_args_env_and_events(tmp_path, spawned):
    fake = write_script(tmp_path / "qemu-10", FAKE_QMP.format(python=sys.executable))
    env = dict(os.environ, FAKE_PACKAGE="bpo12")
    info = host.probe_qemu(fake, timeout=10, extra_args=("-L", "/opt/fw"), env=env)
    assert info.version == (10, 0, 2)
    assert info.version_text == "10.0.2 (bpo12)"
    assert info.migration_capabilities == {"background-snapshot", "mapped-ram", "multifd"}
    assert info.supports_file_uri and info.supports_mapped_ram
    assert info.extra_args == ("-L", "/opt/fw") and info.env["FAKE_PACKAGE"] == "bpo12"
    assert_all_reaped(spawned)


@needs_qemu
def test_probe_qemu_live(spawned):
    info = host.probe_qemu()
    assert os.path.isabs(info.binary)
    assert info.version >= (6, 0, 0)
    assert info.version_text.startswith("%d.%d.%d" % info.version)
    assert "background-snapshot" in info.migration_capabilities
    assert info.supports_file_uri is (info.version >= (8, 2, 0))
    assert_all_reaped(spawned)
    version_out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    assert "%d.%d.%d" % info.version in version_out


# ---------------------------------------------------------------- userfaultfd

def test_uffd_feature_decoding_all_bits():
    info = host.UffdInfo(True, 0x1ffff)
    assert info.feature_names() == list(host.UFFD_FEATURE_BITS)
    assert info.wp and info.wp_hugetlbfs_shmem and info.wp_unpopulated and info.wp_async


@pytest.mark.parametrize("features,names", [
    (0x0, []),
    (0x1, ["PAGEFAULT_FLAG_WP"]),
    (0x1000, ["WP_HUGETLBFS_SHMEM"]),
    (0x2000 | 0x8000, ["WP_UNPOPULATED", "WP_ASYNC"]),
    (0x10000 | 1 << 20, ["MOVE", "BIT20"]),
    (0x1fff, list(host.UFFD_FEATURE_BITS)[:13]),
])
def test_uffd_feature_names(features, names):
    assert host.UffdInfo(True, features).feature_names() == names


def test_uffd_properties_by_bit():
    assert host.UffdInfo(True, 1 << 0).wp
    assert not host.UffdInfo(True, 0x1fffe).wp
    assert host.UffdInfo(True, 1 << 12).wp_hugetlbfs_shmem
    assert host.UffdInfo(True, 1 << 13).wp_unpopulated
    assert host.UffdInfo(True, 1 << 15).wp_async
    assert not host.UffdInfo(True, 1 << 14).wp_async


UAPI_HEADER = Path("/usr/include/linux/userfaultfd.h")


@pytest.mark.skipif(not UAPI_HEADER.exists(), reason="no linux uapi header")
def test_uffd_bits_match_uapi_header():
    defined = dict(re.findall(r"#define\s+UFFD_FEATURE_(\w+)\s+\(1<<(\d+)\)",
                              UAPI_HEADER.read_text()))
    assert defined, "header parsed to nothing"
    for name, bit in defined.items():
        assert host.UFFD_FEATURE_BITS[name] == int(bit), name
    assert re.search(r"#define\s+UFFD_USER_MODE_ONLY\s+1\b", UAPI_HEADER.read_text())


@needs_linux
def test_probe_uffd_live():
    info = host.probe_uffd()
    if os.uname().machine not in host.USERFAULTFD_SYSCALL:
        assert not info.available and "unknown" in info.reason
        return
    assert info.available, info.reason
    assert info.wp, f"features {info.features:#x}"
    assert info.open_mode in (host.UFFD_MODE_SYSCALL, host.UFFD_MODE_DEVICE,
                              host.UFFD_MODE_USER_ONLY)
    if os.geteuid() == 0:
        assert info.open_mode == host.UFFD_MODE_SYSCALL
    assert info.feature_names()[0] == "PAGEFAULT_FLAG_WP"


# ---------------------------------------------------------------- accelerator

def test_resolve_accelerator_forced_never_probes():
    def probe():
        raise AssertionError("probe must not run")
    for requested in ("kvm", "tcg", " KVM "):
        choice = host.resolve_accelerator(requested, probe)
        assert choice.accel == requested.strip().lower()
        assert choice.reason == "forced by cfg"


def test_resolve_accelerator_auto_probes():
    calls = []
    expected = host.AccelChoice("tcg", "guest did not reach marker", 20.0)
    assert host.resolve_accelerator("auto", lambda: calls.append(1) or expected) is expected
    assert calls == [1]


@pytest.mark.parametrize("bad", ["", "xen", "kvm:tcg", None])
def test_resolve_accelerator_rejects(bad):
    with pytest.raises(ValueError):
        host.resolve_accelerator(bad, lambda: host.AccelChoice("kvm", "", 0))


def test_accel_cache_hit_miss_corrupt(tmp_path):
    cache = tmp_path / "state" / "accel-probe.json"
    key = {"qemu_binary": "/usr/bin/qemu", "qemu_mtime_ns": 1, "host_kernel": "6.18",
           "extra": ["-L", "x"]}
    choice = host.AccelChoice("tcg", "guest did not reach marker within 20s", 20.01)
    assert host.load_cached_accel(cache, key) is None          # no file
    assert host.save_cached_accel(cache, key, choice)
    assert host.load_cached_accel(cache, dict(key)) == host.AccelChoice(
        "tcg", choice.reason, 20.01)
    assert host.load_cached_accel(cache, {**key, "host_kernel": "6.19"}) is None
    assert host.load_cached_accel(cache, {**key, "new": True}) is None
    assert sorted(p.name for p in cache.parent.iterdir()) == [   # no temp left
        cache.name, cache.name + ".lock"]
    cache.write_text("{not json")
    assert host.load_cached_accel(cache, key) is None
    cache.write_text(json.dumps({"key": key, "choice": {"accel": "xen", "reason": ""}}))
    assert host.load_cached_accel(cache, key) is None
    cache.write_text("[]")
    assert host.load_cached_accel(cache, key) is None


def test_accel_cache_save_failure_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not host.save_cached_accel(blocker / "cache.json", {}, host.AccelChoice("kvm", "", 1))


def test_accel_cache_key_follows_files(tmp_path):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_text("k")
    initrd.write_text("i")
    qemu = make_qemu_info(binary=sys.executable)
    key = host.accel_cache_key(qemu, str(kernel), str(initrd))
    assert key == host.accel_cache_key(qemu, str(kernel), str(initrd))
    assert key["host_kernel"] == os.uname().release
    assert key["kvm_device"] == os.path.exists("/dev/kvm")
    assert key["qemu_version"] == qemu.version_text and key["qemu_mtime_ns"]
    os.utime(kernel, ns=(1, 1))
    assert key != host.accel_cache_key(qemu, str(kernel), str(initrd))
    other = make_qemu_info((10, 0, 2), binary=sys.executable)
    assert key != host.accel_cache_key(other, str(kernel), str(initrd))
    json.dumps(key)


FAKE_KVM_QEMU = """\
#!/bin/sh
echo "$@" > "{argv_file}"
while [ $# -gt 0 ]; do
    case "$1" in -serial) shift; out="${{1#file:}}";; esac
    shift
done
{body}
"""


@pytest.fixture
def fake_kvm(tmp_path, monkeypatch, spawned):
    """/dev/kvm replaced by an openable file; yields a fake-QEMU factory."""
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(host.accel, "KVM_DEVICE", str(device))
    workdirs = []
    real_mkdtemp = host.accel.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        workdirs.append(real_mkdtemp(*args, **kwargs))
        return workdirs[-1]

    monkeypatch.setattr(host.accel.tempfile, "mkdtemp", mkdtemp)
    argv_file = tmp_path / "argv"

    def make(body: str) -> host.QemuInfo:
        script = write_script(tmp_path / f"qemu-{uuid.uuid4().hex[:6]}",
                              FAKE_KVM_QEMU.format(argv_file=argv_file, body=body))
        return make_qemu_info(binary=script)

    yield make, argv_file
    assert_all_reaped(spawned)
    assert workdirs and not any(os.path.exists(w) for w in workdirs), "temp files left"


def test_probe_kvm_marker_split_across_writes(fake_kvm):
    make, argv_file = fake_kvm
    qemu = make("printf 'Linux version x\\nBGSNAP-GUE' >> \"$out\"; sleep 0.3\n"
                "printf 'ST-READY\\n' >> \"$out\"; exec sleep 30")
    choice = host.probe_kvm(qemu, "/k", "/i", "BGSNAP-GUEST-READY", timeout=10,
                            cpu_model="qemu64", name="bgsnap-probe-unit")
    assert choice.accel == "kvm"
    assert 0.2 < choice.probe_seconds < 5
    argv = argv_file.read_text().split()
    for expected in ("-accel kvm", "-kernel /k", "-initrd /i", "-cpu qemu64",
                     "-name bgsnap-probe-unit", "-no-reboot", "-nodefaults"):
        assert expected in " ".join(argv)


def test_probe_kvm_timeout(fake_kvm):
    make, _ = fake_kvm
    qemu = make("echo 'Probing EDD (edd=off to disable)... ok' >> \"$out\"; exec sleep 30")
    started = time.monotonic()
    choice = host.probe_kvm(qemu, "/k", "/i", "BGSNAP-GUEST-READY", timeout=0.5)
    assert time.monotonic() - started < 3
    assert choice.accel == "tcg"
    assert "did not reach marker within 0.5s under KVM (nested/sandboxed KVM?)" in choice.reason
    assert "Probing EDD" in choice.reason


def test_probe_kvm_early_exit(fake_kvm):
    make, _ = fake_kvm
    qemu = make("echo 'error: failed to set MSR 0x10a to 0x0' >&2; exit 1")
    choice = host.probe_kvm(qemu, "/k", "/i", "BGSNAP-GUEST-READY", timeout=10)
    assert choice.accel == "tcg"
    assert "status 1" in choice.reason and "MSR 0x10a" in choice.reason
    assert choice.probe_seconds < 5


def test_probe_kvm_without_device(tmp_path, monkeypatch, spawned):
    monkeypatch.setattr(host.accel, "KVM_DEVICE", str(tmp_path / "no-kvm"))
    choice = host.probe_kvm(make_qemu_info(), "/k", "/i", "X", timeout=10)
    assert choice.accel == "tcg" and "missing" in choice.reason
    assert spawned == []


def kvm_device_usable():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


@needs_qemu
@pytest.mark.skipif(not kvm_device_usable(), reason="/dev/kvm not usable read-write")
def test_probe_kvm_live_missing_kernel(tmp_path, spawned):
    qemu = host.probe_qemu()
    name = f"bgsnap-probe-{uuid.uuid4().hex}"
    missing = tmp_path / "no-such-vmlinuz"
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\0" * 512)
    started = time.monotonic()
    choice = host.probe_kvm(qemu, str(missing), str(initrd), "BGSNAP-GUEST-READY",
                            timeout=10, name=name)
    assert time.monotonic() - started < 5
    assert choice.accel == "tcg"
    assert "exited with status" in choice.reason and str(missing) in choice.reason, choice.reason
    assert_all_reaped(spawned)
    left = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"QEMU left running: {left.stdout}"


# ---------------------------------------------------------------- facts

def test_parse_meminfo_total():
    text = "MemTotal:       24684544 kB\nMemFree:  1 kB\n"
    assert host.parse_meminfo_total(text) == 24684544
    assert host.parse_meminfo_total("MemFree: 1 kB\n") is None
    assert host.parse_meminfo_total("MemTotal: lots\n") is None


def test_problems_none_for_a_good_host():
    facts = make_facts()
    assert facts.problems() == []
    data = facts.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["uffd"]["features"] == "0x1ffff" and data["accel"]["accel"] == "tcg"
    assert "background-snapshot yes" in facts.summary()
    assert any("problems:      none" == line for line in facts.report_lines())


def test_problems_qemu_without_capability():
    facts = make_facts(qemu=make_qemu_info((5, 2, 0), caps=("xbzrle",)))
    [problem] = facts.problems()
    assert "5.2.0" in problem and "background-snapshot" in problem


def test_problems_uffd_unavailable():
    facts = make_facts(uffd=host.UffdInfo(False, 0, "userfaultfd cannot be opened (EPERM)"))
    [problem] = facts.problems()
    assert "userfaultfd unavailable" in problem and "EPERM" in problem


def test_problems_uffd_without_wp():
    facts = make_facts(uffd=host.UffdInfo(True, 0x1fe, "", host.UFFD_MODE_SYSCALL))
    [problem] = facts.problems()
    assert "PAGEFAULT_FLAG_WP" in problem and "Linux 5.7+ needed" in problem


def test_problems_uffd_open_modes_qemu_cannot_use():
    user_only = make_facts(uffd=host.UffdInfo(True, 0x1ffff, "", host.UFFD_MODE_USER_ONLY))
    assert "UFFD_USER_MODE_ONLY" in user_only.problems()[0]
    dev = host.UffdInfo(True, 0x1ffff, "", host.UFFD_MODE_DEVICE)
    assert "/dev/userfaultfd" in make_facts(uffd=dev).problems()[0]          # QEMU 7.2
    assert make_facts(qemu=make_qemu_info((10, 0, 2)), uffd=dev).problems() == []


def test_problems_all_at_once():
    facts = make_facts(qemu=make_qemu_info((5, 2, 0), caps=()),
                       uffd=host.UffdInfo(False, 0, "ENOSYS"))
    assert len(facts.problems()) == 2
    assert facts.to_dict()["problems"] == facts.problems()


@needs_qemu
@needs_linux
def test_collect_facts_live():
    facts = host.collect_facts(host.probe_qemu(), host.probe_uffd(),
                               host.AccelChoice("tcg", "forced by cfg"))
    assert facts.kernel_release == os.uname().release
    assert facts.cpu_count >= 1 and facts.mem_total_kib > 0
    assert facts.problems() == [], facts.problems()
    json.dumps(facts.to_dict())


def test_host_check_error_carries_details():
    err = host.HostCheckError("QEMU failed", ["qemu", "-x"], 1, "line one\nline two\n")
    assert err.command == ["qemu", "-x"] and err.returncode == 1
    assert str(err) == "QEMU failed; stderr: line one | line two"
    assert str(host.HostCheckError("plain")) == "plain"


def test_import_does_no_work():
    code = textwrap.dedent("""
        import subprocess, sys
        subprocess.Popen = None  # any process start at import would fail
        import avocado_bgsnap.host as h
        assert "avocado" not in sys.modules, "host.py must not import avocado"
    """)
    root = Path(host.__file__).resolve().parents[2]  # avocado_bgsnap/host/__init__.py
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_accel_cache_keeps_every_key_and_reads_the_old_format(tmp_path):
    cache = tmp_path / "accel-probe.json"
    tcg = host.AccelChoice("tcg", "KVM probe: no boot marker within 20s")
    kvm = host.AccelChoice("kvm", "KVM probe: booted")
    a, b = {"qemu_binary": "/usr/bin/qemu-system-x86_64"}, {"qemu_binary": "/opt/q10/qemu"}
    assert host.save_cached_accel(cache, a, tcg) and host.save_cached_accel(cache, b, kvm)
    assert host.load_cached_accel(cache, a) == tcg     # b's probe did not evict a's
    assert host.load_cached_accel(cache, b) == kvm
    assert host.save_cached_accel(cache, a, kvm)       # a newer probe replaces its own entry
    assert host.load_cached_accel(cache, a) == kvm
    assert len(json.loads(cache.read_text())["entries"]) == 2
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"key": a, "choice": tcg.to_dict(), "saved_at": 1}))
    assert host.load_cached_accel(old, a) == tcg


def test_accel_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    from avocado_bgsnap.host import accel

    monkeypatch.setattr(accel, "CACHE_ENTRIES", 3)
    cache = tmp_path / "accel-probe.json"
    choice = host.AccelChoice("tcg", "r")
    for n in range(5):
        host.save_cached_accel(cache, {"n": n}, choice)
    assert [host.load_cached_accel(cache, {"n": n}) is not None for n in range(5)] == [
        False, False, True, True, True]

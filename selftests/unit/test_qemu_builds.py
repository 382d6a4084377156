"""Side-by-side QEMU builds: manifest, Debian/apt plumbing, build folders, cfg names."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from virttest import cartesian_config

from avocado_bgsnap import host, paths, qemu_builds, vt_compat, vtsetup
from avocado_bgsnap.qemu_builds import QemuBuild, QemuBuildError

BPO = "1:10.0.2+ds-2+deb13u1~bpo12+1"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BGSNAP_HOME", str(tmp_path / "home"))
    return paths.bgsnap_home()


def a_build(name="qemu10_0_2", binary="/opt/q/usr/bin/qemu-system-x86_64", **kw):
    return QemuBuild(name=name, binary=binary, extra_args=("-L", "/opt/q/usr/share/qemu"),
                     env={"QEMU_MODULE_DIR": "/opt/q/usr/lib/x86_64-linux-gnu/qemu"},
                     source=kw.pop("source", "debian-backports"),
                     version_text=kw.pop("version_text", "10.0.2 (Debian " + BPO + ")"), **kw)


# -- manifest -----------------------------------------------------------------

def test_manifest_round_trip(home):
    assert qemu_builds.load_builds() == []
    build = a_build(root="/opt/q")
    qemu_builds.add_build(build)
    (loaded,) = qemu_builds.load_builds()
    assert loaded == build and loaded.env == build.env and loaded.extra_args == build.extra_args
    data = json.loads(qemu_builds.manifest_path().read_text())
    assert data["version"] == 1 and data["builds"][0]["name"] == "qemu10_0_2"
    assert qemu_builds.manifest_path() == home / "qemu-builds.json"


def test_re_adding_replaces_and_name_clash_is_refused(home):
    qemu_builds.add_build(a_build(version_text="old"))
    qemu_builds.add_build(a_build(version_text="new"))
    assert [b.version_text for b in qemu_builds.load_builds()] == ["new"]
    with pytest.raises(QemuBuildError, match="already exists"):
        qemu_builds.add_build(a_build(binary="/elsewhere/qemu-system-x86_64"))


def test_system_only_selects_one_test_when_builds_exist(home):
    assert qemu_builds.system_only("bgsnap.basic.1g") == "bgsnap.basic.1g"  # no builds
    qemu_builds.add_build(a_build())
    assert qemu_builds.system_only("bgsnap.basic.1g") == "system.bgsnap.basic.1g"
    assert qemu_builds.system_only("system.bgsnap.basic.1g") == "system.bgsnap.basic.1g"
    assert qemu_builds.system_only("qemu10_0_2.bgsnap.basic.1g") == "qemu10_0_2.bgsnap.basic.1g"


def test_remove(home):
    qemu_builds.add_build(a_build())
    qemu_builds.add_build(a_build(name="mine", binary="/b/qemu-system-x86_64"))
    assert qemu_builds.remove_build("qemu10_0_2").name == "qemu10_0_2"
    assert [b.name for b in qemu_builds.load_builds()] == ["mine"]
    with pytest.raises(QemuBuildError, match="no QEMU build named 'nope'.*known: mine"):
        qemu_builds.remove_build("nope")
    with pytest.raises(QemuBuildError, match="system QEMU"):
        qemu_builds.remove_build("system")


def test_atomic_write_keeps_the_old_manifest_on_failure(home, monkeypatch):
    qemu_builds.add_build(a_build())
    before = qemu_builds.manifest_path().read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(qemu_builds.os, "replace", broken)
    with pytest.raises(OSError):
        qemu_builds.add_build(a_build(name="other", binary="/x/qemu-system-x86_64"))
    assert qemu_builds.manifest_path().read_text() == before
    assert sorted(p.name for p in home.iterdir()) == ["qemu-builds.json"]  # no temp left


def test_corrupt_manifest_is_a_clear_error(home):
    home.mkdir(parents=True)
    qemu_builds.manifest_path().write_text("{not json")
    with pytest.raises(QemuBuildError, match="cannot read"):
        qemu_builds.load_builds()


@pytest.mark.parametrize("name", ["system", "Qemu10", "10qemu", "qemu-10", "q.x", "", "a" * 41])
def test_bad_names(name):
    with pytest.raises(QemuBuildError, match="bad build name"):
        qemu_builds.check_name(name)


def test_default_name():
    assert qemu_builds.default_name((10, 0, 2)) == "qemu10_0_2"


def fake_qemu(folder: Path, status: int = 0) -> str:
    """A 'QEMU' that prints its argv and QEMU_MODULE_DIR and exits ``status``."""
    script = folder / f"fake-qemu-{status}"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f'#!/bin/sh\necho "ARGS:$*"\necho "MODDIR:$QEMU_MODULE_DIR"\n'
                      f'echo "boom" >&2\nexit {status}\n')
    script.chmod(0o755)
    return str(script)


def test_register_writes_a_wrapper_that_carries_the_build(home, tmp_path):
    build = a_build(binary=fake_qemu(tmp_path))
    wrapper = qemu_builds.register(build)
    assert wrapper == home / "bin" / "qemu-qemu10_0_2" and os.access(wrapper, os.X_OK)
    assert "-L /opt/q/usr/share/qemu" in wrapper.read_text()
    assert vt_compat.real_qemu_binary(str(wrapper)) == build.binary
    out = subprocess.run([str(wrapper), "-S"], capture_output=True, text=True).stdout
    overlay = qemu_builds.module_overlay_dir("qemu10_0_2")
    assert "ARGS:-L /opt/q/usr/share/qemu -S" in out and f"MODDIR:{overlay}" in out
    assert qemu_builds.load_builds() == [build]
    qemu_builds.unregister(build.name)
    assert not wrapper.exists() and not overlay.exists() and qemu_builds.load_builds() == []


def test_a_wrapper_that_fails_is_not_registered(home, tmp_path):
    with pytest.raises(QemuBuildError, match="-device help failed .exit 1.: boom"):
        qemu_builds.register(a_build(binary=fake_qemu(tmp_path, 1)))
    assert qemu_builds.load_builds() == []
    assert not qemu_builds.wrapper_path("qemu10_0_2").exists()


def test_a_taken_name_keeps_its_wrapper(home, tmp_path):
    first = a_build(binary=fake_qemu(tmp_path))
    wrapper = qemu_builds.register(first)
    with pytest.raises(QemuBuildError, match="already exists"):
        qemu_builds.register(a_build(binary=fake_qemu(tmp_path / "other")))
    assert vt_compat.real_qemu_binary(str(wrapper)) == first.binary


def test_module_overlay_masks_the_system_modules(tmp_path):
    own, system = tmp_path / "own", tmp_path / "sys" / "x86_64-linux-gnu" / "qemu"
    for folder, names in ((own, ["audio-alsa.so", "ui-curses.so"]),
                          (system, ["audio-alsa.so", "audio-pa.so", "ui-opengl.so"])):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text("ELF")
    masked = qemu_builds.system_module_names(own, (str(tmp_path / "sys" / "*" / "qemu"),
                                                   str(own)))
    assert masked == {"audio-alsa.so", "audio-pa.so", "ui-opengl.so"}  # own dir not counted
    overlay = qemu_builds.write_module_overlay(tmp_path / "ov", own, masked)
    assert sorted(p.name for p in overlay.iterdir()) == [
        "audio-alsa.so", "audio-pa.so", "ui-curses.so", "ui-opengl.so"]
    assert (overlay / "audio-alsa.so").resolve() == own / "audio-alsa.so"
    assert (overlay / "ui-opengl.so").read_text().startswith("not a QEMU module")
    again = qemu_builds.write_module_overlay(tmp_path / "ov", None, {"x.so"})
    assert [p.name for p in again.iterdir()] == ["x.so"]


def test_unregister_deletes_only_what_the_suite_unpacked(home, tmp_path):
    ours = qemu_builds.backports_dir() / "10.0.2"
    users = tmp_path / "users-build"
    for d in (ours, users):
        d.mkdir(parents=True)
    qemu_builds.register(a_build(binary=fake_qemu(tmp_path), root=str(ours)))
    qemu_builds.register(a_build(name="mine", binary=fake_qemu(tmp_path / "u"),
                                 source="user-dir", root=str(users)))
    qemu_builds.unregister("qemu10_0_2")
    qemu_builds.unregister("mine")
    assert not ours.exists() and users.is_dir()


# -- which Debian ------------------------------------------------------------------

BOOKWORM = '''PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION_CODENAME=bookworm
ID=debian
# a comment
'''


def test_os_release_parsing():
    release = qemu_builds.parse_os_release(BOOKWORM)
    assert release["ID"] == "debian" and release["VERSION_ID"] == "12"
    assert release["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert release["VERSION_CODENAME"] == "bookworm"


def test_backports_plan_per_release():
    assert qemu_builds.backports_plan(qemu_builds.parse_os_release(BOOKWORM)) == \
        "bookworm-backports"
    assert qemu_builds.backports_plan({"ID": "debian", "VERSION_ID": "13",
                                       "VERSION_CODENAME": "trixie"}) is None
    with pytest.raises(QemuBuildError, match="Ubuntu 24.04.*--dir PATH"):
        qemu_builds.backports_plan({"ID": "ubuntu", "ID_LIKE": "debian", "VERSION_ID": "24.04",
                                    "PRETTY_NAME": "Ubuntu 24.04"})


def test_debian13_fetches_nothing(tmp_path):
    release = tmp_path / "os-release"
    release.write_text('ID=debian\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n')
    said = []
    assert qemu_builds.fetch_debian_backports(tmp_path / "q", said.append,
                                              os_release=release) is None
    assert "already ships QEMU 10" in said[0] and not (tmp_path / "q").exists()


DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_deb822_source_first_entry():
    src = qemu_builds.parse_deb822_source(DEBIAN_SOURCES)
    assert src == qemu_builds.AptSource("http://deb.debian.org/debian",
                                        "/usr/share/keyrings/debian-archive-keyring.gpg")
    security_first = DEBIAN_SOURCES.split("\n\n")[1] + "\n\n" + DEBIAN_SOURCES.split("\n\n")[0]
    assert qemu_builds.parse_deb822_source(security_first).uri == "http://deb.debian.org/debian"
    assert qemu_builds.parse_deb822_source("Types: deb-src\nURIs: http://x\n") is None


def test_deb822_inline_key_survives():
    text = ("Types: deb\nURIs: http://m/debian\nSuites: bookworm\nComponents: main\n"
            "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n"
            " -----END PGP PUBLIC KEY BLOCK-----\n")
    src = qemu_builds.parse_deb822_source(text)
    out = qemu_builds.backports_sources_text(src)
    assert "Suites: bookworm-backports" in out
    assert "Signed-By: \n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n -----END" in out


def test_one_line_sources_list():
    text = ("# comment\ndeb-src http://m/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n")
    assert qemu_builds.parse_one_line_source(text) == qemu_builds.AptSource(
        "http://m/debian", "/k.gpg")
    assert qemu_builds.parse_one_line_source("deb http://m/d bookworm main\n") == \
        qemu_builds.AptSource("http://m/d", "")


def test_system_source_falls_back_to_sources_list(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://m/debian bookworm main\n")
    assert qemu_builds.system_debian_source(tmp_path).uri == "http://m/debian"
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    assert qemu_builds.system_debian_source(tmp_path).uri == "http://deb.debian.org/debian"
    with pytest.raises(QemuBuildError, match="no Debian 'deb' entry"):
        qemu_builds.system_debian_source(tmp_path / "empty")


# -- the private apt configuration ---------------------------------------------

def test_private_apt_files(tmp_path):
    src = qemu_builds.parse_deb822_source(DEBIAN_SOURCES)
    apt = qemu_builds.write_private_apt(tmp_path / "apt", src)
    parts = list(apt.source_parts.iterdir())
    assert [p.read_text() for p in parts] == [
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"]
    assert apt.source_list.read_text() == ""
    assert (apt.lists / "partial").is_dir() and (apt.cache / "archives" / "partial").is_dir()
    assert "#clear APT::Update::Post-Invoke-Success;" in apt.conf.read_text()


def test_apt_command_lines_touch_only_the_private_dirs():
    apt = qemu_builds.PrivateApt(Path("/p"))
    opts = ["-c", "/p/apt.conf", "-o", "Dir::Etc::SourceList=/p/sources.list",
            "-o", "Dir::Etc::SourceParts=/p/sources.list.d",
            "-o", "Dir::State::Lists=/p/lists", "-o", "Dir::Cache=/p/cache"]
    assert qemu_builds.apt_update_argv(apt) == ["apt-get", *opts, "-q", "update"]
    assert qemu_builds.apt_madison_argv(apt) == [
        "apt-cache", *opts, "madison", "qemu-system-x86", "qemu-system-common",
        "qemu-system-data", "seabios"]
    versions = {"qemu-system-x86": BPO, "seabios": "1.16.3-2~bpo12+1"}
    assert qemu_builds.apt_download_argv(apt, versions) == [
        "apt-get", *opts, "-q", "download", f"qemu-system-x86={BPO}",
        "seabios=1.16.3-2~bpo12+1"]
    assert qemu_builds.apt_show_argv(apt, versions)[-3:] == [
        "--no-all-versions", f"qemu-system-x86={BPO}", "seabios=1.16.3-2~bpo12+1"]
    assert qemu_builds.dpkg_extract_argv(Path("/d/a.deb"), Path("/x")) == \
        ["dpkg-deb", "-x", "/d/a.deb", "/x"]


def test_madison_and_sizes_parsing():
    madison = (f"qemu-system-x86 | {BPO} | http://deb.debian.org/debian "
               "bookworm-backports/main amd64 Packages\n"
               "qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian "
               "bookworm/main amd64 Packages\n"
               "   seabios | 1.16.3-2~bpo12+1 | http://deb.debian.org/debian "
               "bookworm-backports/main amd64 Packages\n")
    assert qemu_builds.parse_madison(madison) == {"qemu-system-x86": BPO,
                                                  "seabios": "1.16.3-2~bpo12+1"}
    show = ("Package: seabios\nVersion: 1.16.3-2~bpo12+1\nSize: 164452\n\n"
            "Package: qemu-system-x86\nVersion: x\nSize: 10176912\nDescription: a\n more\n")
    assert qemu_builds.parse_sizes(show) == {"seabios": 164452, "qemu-system-x86": 10176912}
    assert qemu_builds.strip_epoch(BPO) == "10.0.2+ds-2+deb13u1~bpo12+1"


# -- build folders ----------------------------------------------------------------

def touch_exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def test_unpacked_debian_layout(tmp_path):
    binary = touch_exe(tmp_path / "usr/bin/qemu-system-x86_64")
    for d in ("usr/share/qemu", "usr/share/seabios", "usr/lib/x86_64-linux-gnu/qemu"):
        (tmp_path / d).mkdir(parents=True)
    assert qemu_builds.dir_layout(tmp_path) == (
        str(binary),
        ("-L", str(tmp_path / "usr/share/qemu"), "-L", str(tmp_path / "usr/share/seabios")),
        {"QEMU_MODULE_DIR": str(tmp_path / "usr/lib/x86_64-linux-gnu/qemu")})


def test_install_prefix_layout(tmp_path):
    binary = touch_exe(tmp_path / "bin/qemu-system-x86_64")
    (tmp_path / "share/qemu").mkdir(parents=True)
    assert qemu_builds.dir_layout(tmp_path) == (
        str(binary), ("-L", str(tmp_path / "share/qemu")), {})


@pytest.mark.parametrize("sub", ["", "build"])
def test_build_tree_layout(tmp_path, sub):
    tree = tmp_path / sub
    binary = touch_exe(tree / "qemu-system-x86_64")
    (tree / "pc-bios").mkdir()
    assert qemu_builds.dir_layout(tmp_path) == (
        str(binary), ("-L", str(tree / "pc-bios")), {})


def test_no_build_in_folder(tmp_path):
    with pytest.raises(QemuBuildError, match="no QEMU build in"):
        qemu_builds.dir_layout(tmp_path)
    with pytest.raises(QemuBuildError, match="is not a folder"):
        qemu_builds.dir_layout(tmp_path / "missing")


def fake_probe(binary, extra_args, env):
    return host.QemuInfo(binary=binary, version=(10, 1, 0), version_text="10.1.0 (v10.1.0)",
                         migration_capabilities=frozenset({"background-snapshot"}),
                         extra_args=tuple(extra_args), env=env)


def test_build_from_dir_names_it_after_the_probed_version(tmp_path):
    touch_exe(tmp_path / "qemu-system-x86_64")
    (tmp_path / "pc-bios").mkdir()
    build = qemu_builds.build_from_dir(tmp_path, probe_fn=fake_probe)
    assert (build.name, build.version_text, build.source) == \
        ("qemu10_1_0", "10.1.0 (v10.1.0)", "user-dir")
    assert qemu_builds.build_from_dir(tmp_path, name="mine", probe_fn=fake_probe).name == "mine"
    with pytest.raises(QemuBuildError, match="bad build name"):
        qemu_builds.build_from_dir(tmp_path, name="system", probe_fn=fake_probe)


def test_a_binary_that_is_not_qemu_fails_the_probe(tmp_path):
    touch_exe(tmp_path / "bin/qemu-system-x86_64")
    with pytest.raises(QemuBuildError, match="does not run"):
        qemu_builds.build_from_dir(tmp_path)


# -- Cartesian names ---------------------------------------------------------------

def parse(top: Path, only=None) -> dict:
    """{shortname: params} as avocado-vt sees them; ``only`` like 'avocado run REF'
    (avocado-vt applies a test reference as an only filter)."""
    parser = cartesian_config.Parser()
    parser.parse_file(str(top))
    if only:
        parser.only_filter(only)
    return {d["shortname"]: d for d in parser.get_dicts()}


def write_top(home: Path) -> Path:
    """bgsnap.cfg as 'avocado bgsnap setup' writes it, without a real guest."""
    top = home / "bgsnap.cfg"
    top.parent.mkdir(parents=True, exist_ok=True)
    top.write_text(f"include {paths.cfg_dir()}/base.cfg\nqemu_binary = {home}/bin/"
                   f"qemu-system-x86_64\ninclude {paths.cfg_dir()}/subtests.cfg\n")
    return top


def test_no_extra_builds_changes_nothing(home):
    top = write_top(home)
    before, dicts = top.read_text(), parse(top)
    assert vtsetup.refresh_qemu_builds() is None
    assert top.read_text() == before and not vtsetup.builds_cfg_path().exists()
    assert vtsetup.with_builds_include(before, None) == before
    assert parse(top) == dicts


def test_extra_build_variants_and_names(home):
    top = write_top(home)
    system = {n: d["name"] for n, d in parse(top).items()}  # shortname -> full name
    assert "bgsnap.basic.small" in system
    qemu_builds.register(a_build(binary=fake_qemu(home)))
    builds_cfg = vtsetup.refresh_qemu_builds()
    assert top.read_text().splitlines()[-1] == f"include {builds_cfg}"
    assert vtsetup.refresh_qemu_builds() == builds_cfg  # idempotent
    assert top.read_text().count("qemu-builds.cfg") == 1
    dicts = parse(top)
    assert set(dicts) == set(system) | {"qemu10_0_2." + n for n in system}
    for short in system:
        mine, other = dicts[short], dicts["qemu10_0_2." + short]
        assert mine["qemu_binary"] == f"{home}/bin/qemu-system-x86_64"
        assert mine["bgsnap_qemu_build"] == "system"
        assert other["qemu_binary"] == f"{home}/bin/qemu-qemu10_0_2"
        assert other["bgsnap_qemu_build"] == "qemu10_0_2"


def test_selecting_tests_per_build(home):
    top = write_top(home)
    short, name = next((n, d["name"]) for n, d in parse(top).items())
    qemu_builds.register(a_build(binary=fake_qemu(home)))
    vtsetup.refresh_qemu_builds()
    assert set(parse(top, "qemu10_0_2." + name)) == {"qemu10_0_2." + short}
    assert set(parse(top, "system." + name)) == {short}
    assert set(parse(top, name)) == {short, "qemu10_0_2." + short}
    assert all(n.startswith("qemu10_0_2.") for n in parse(top, "qemu10_0_2"))


def test_removing_the_last_build_restores_bgsnap_cfg(home):
    top = write_top(home)
    before = top.read_text()
    qemu_builds.register(a_build(binary=fake_qemu(home)))
    vtsetup.refresh_qemu_builds()
    qemu_builds.unregister("qemu10_0_2")
    assert vtsetup.refresh_qemu_builds() is None
    assert top.read_text() == before and not vtsetup.builds_cfg_path().exists()

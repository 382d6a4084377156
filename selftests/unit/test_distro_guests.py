"""Distro guests (guest/distro.py, cfg/guests.cfg, docs/guests.md): the
inputs' digests, the cfg variants and their default, the delivery disk,
the errors that name what to do."""

import shutil
import subprocess
from pathlib import Path

import pytest
from virttest import cartesian_config
from virttest.utils_params import Params

from avocado_bgsnap import paths, settings, vtsetup
from avocado_bgsnap.guest import delivery, distro


def top_cfg(tmp_path, guest_dir="/g") -> Path:
    """A top-level cfg as vtsetup writes it (host paths replaced)."""
    text = (f"include {paths.cfg_dir()}/base.cfg\nkernel = /k\ninitrd = /i\n"
            f"bgsnap_wl_binary = /w\ninclude {paths.cfg_dir()}/subtests.cfg\n")
    text = vtsetup.with_guests_include(text).replace(
        f"bgsnap_guest_dir = {paths.guest_cache_dir()}", f"bgsnap_guest_dir = {guest_dir}")
    path = tmp_path / "top.cfg"
    path.write_text(text)
    return path


def dicts(cfg: Path, *only):
    parser = cartesian_config.Parser()
    parser.parse_file(str(cfg))
    for f in only:
        parser.only_filter(f)
    return {d["shortname"]: d for d in parser.get_dicts()}


def test_default_filter_keeps_every_name_and_the_embedded_guest(tmp_path):
    cfg = top_cfg(tmp_path)
    default = dicts(cfg, vtsetup.DEFAULT_GUEST)
    plain = cartesian_config.Parser()
    plain.parse_file(str(paths.cfg_dir() / "base.cfg"))
    plain.parse_file(str(paths.cfg_dir() / "subtests.cfg"))
    assert set(default) == {d["shortname"] for d in plain.get_dicts()}
    basic = default["bgsnap.basic.small"]
    assert basic["kernel"] == "/k" and basic.get("images", "") == ""
    assert f"only_filter = {vtsetup.DEFAULT_GUEST}" in vtsetup.avocado_conf_text(tmp_path)
    # negative control: without the filter every test runs on every guest
    assert "debian12.fault.cancel" in dicts(cfg, "fault.cancel")


@pytest.mark.parametrize("guest", ["debian12", "debian13"])
def test_a_distro_variant_boots_its_image(tmp_path, guest):
    d = dicts(top_cfg(tmp_path), guest, "bgsnap.basic.small")[f"{guest}.bgsnap.basic.small"]
    assert d["kernel"] == f"/g/{guest}/vmlinuz" and d["initrd"] == f"/g/{guest}/initrd.img"
    assert d["images"] == "root" and d["image_name_root"] == f"/g/{guest}/root"
    assert d["image_snapshot_root"] == "yes" and d["drive_format_root"] == "virtio"
    assert "root=/dev/vda" in d["kernel_params"]
    assert d["kernel_params"] == distro.kernel_params()
    assert d["bgsnap_probe_kernel"] == "/g/vmlinuz"
    login = settings.login_from_params(Params(d))
    assert login.guest == guest and login.prompt
    assert d["password"] == distro.ROOT_PASSWORD and d["username"] == "root"
    assert login.timeout_s > 120 and login.attempt_s > 2
    settings.from_params(Params(d))  # a valid config


def test_userimage_attaches_the_delivery_disk_read_only(tmp_path):
    d = dicts(top_cfg(tmp_path), "userimage", "fault.cancel")["userimage.fault.cancel"]
    assert d["images"] == "root wl"
    assert d["image_readonly_wl"] == "yes" and d["drive_serial_wl"] == delivery.DISK_SERIAL
    assert d["image_name_wl"] + "." + d["image_format_wl"] == "/g/" + distro.DELIVERY_DISK


def test_guests_include_is_added_once_and_stays_last():
    text = "include /c/base.cfg\ninclude /c/subtests.cfg\ninclude /h/qemu-builds.cfg\n"
    once = vtsetup.with_guests_include(text)
    assert vtsetup.with_guests_include(once) == once
    guests = f"include {paths.cfg_dir()}/guests.cfg"
    assert once.splitlines()[-1] == guests
    # the builds' include moves, the guests' lines stay last (or go with none)
    moved = vtsetup.with_builds_include(once, Path("/h2/qemu-builds.cfg")).splitlines()
    assert moved[-1] == guests and moved.count(guests) == 1
    assert moved.index("include /h2/qemu-builds.cfg") < moved.index(guests)
    assert "guests.cfg" not in vtsetup.with_builds_include(text, None)


def test_a_build_reference_still_selects_the_embedded_guest(tmp_path):
    # the guest is the outermost variant: 'system.bgsnap...' (jobs.system_only)
    # still matches; the negative control: the guest in the middle breaks it
    builds = tmp_path / "qemu-builds.cfg"
    builds.write_text("variants:\n    - @system:\n        bgsnap_qemu_build = system\n"
                      "    - qemu10:\n        bgsnap_qemu_build = qemu10\n")
    cfg = top_cfg(tmp_path)
    text = vtsetup.with_builds_include(cfg.read_text(), builds)
    cfg.write_text(text)
    assert list(dicts(cfg, "busybox", "system.bgsnap.basic.small")) == ["bgsnap.basic.small"]
    assert list(dicts(cfg, "debian12", "system.bgsnap.basic.small")) == \
        ["debian12.bgsnap.basic.small"]
    lines = text.splitlines()
    swapped = [l for l in lines if "qemu-builds" not in l] + [f"include {builds}"]
    cfg.write_text("\n".join(swapped) + "\n")
    assert list(dicts(cfg, "busybox", "system.bgsnap.basic.small")) == []


def test_tree_digest_follows_its_inputs(monkeypatch):
    d12, d13 = distro.distro("bookworm"), distro.distro("trixie")
    base = distro.tree_digest(d12)
    assert base == distro.tree_digest(d12)
    assert base != distro.tree_digest(d13)
    assert base != distro.tree_digest(d12, mirror="http://mirror.example/debian")
    monkeypatch.setattr(distro, "INCLUDE", distro.INCLUDE + ("strace",))
    assert base != distro.tree_digest(d12)


def test_image_digest_follows_the_workload(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"wl 1")
    b.write_bytes(b"wl 2")
    assert distro.image_digest("t", a) == distro.image_digest("t", a)
    assert distro.image_digest("t", a) != distro.image_digest("t", b)
    assert distro.image_digest("t", a) != distro.image_digest("u", a)


def test_image_size_leaves_room():
    assert distro.image_mib(0) == distro.FREE_MIB
    assert distro.image_mib(400 << 20) == 500 + distro.FREE_MIB


def test_unknown_distro_names_the_choices():
    with pytest.raises(distro.DistroBuildError, match="'buster': expected one of bookworm, "
                       "trixie"):
        distro.distro("buster")


def test_a_guest_not_built_says_how_to_build_it(tmp_path):
    params = {"bgsnap_guest": "debian13", "kernel": str(tmp_path / "vmlinuz"),
              "initrd": str(tmp_path / "initrd"), "image_name_root": str(tmp_path / "root")}
    assert "avocado bgsnap build-guest --distro trixie" in distro.missing_guest(params)
    for name in ("vmlinuz", "initrd", "root.qcow2"):
        (tmp_path / name).write_text("x")
    assert distro.missing_guest(params) is None  # the control: built
    params.update(bgsnap_wl_disk="yes", image_name_wl=str(tmp_path / "disk"))
    assert "delivery disk" in distro.missing_guest(params)
    assert distro.missing_guest({"bgsnap_guest": "busybox"}) is None


def test_bad_login_prompt_names_the_param():
    with pytest.raises(settings.SettingsError, match="bgsnap_login_prompt"):
        settings.login_from_params(Params({"bgsnap_login_prompt": "login:("}))
    with pytest.raises(settings.SettingsError, match="bgsnap_login_timeout"):
        settings.login_from_params(Params({"bgsnap_login_timeout": "0"}))
    assert settings.login_from_params(Params({})) == settings.GuestLogin()


def test_delivery_disk_carries_the_binary(tmp_path):
    if not shutil.which("debugfs") and not Path("/usr/sbin/debugfs").exists():
        pytest.skip("no debugfs to read the image")
    binary = tmp_path / "bgsnap-wl"
    binary.write_bytes(b"\x7fELF not really" * 100)
    disk = delivery.build_disk(binary, tmp_path / "cache", log=lambda m: None)
    assert disk.name == delivery.disk_name(binary) and disk.stat().st_size == 8 << 20
    assert delivery.build_disk(binary, tmp_path / "cache", log=lambda m: None) == disk  # reused
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
    out = subprocess.run([debugfs, "-R", "stat /bgsnap-wl", str(disk)], capture_output=True,
                         text=True).stdout
    assert "Mode:  0755" in out and f"Size: {binary.stat().st_size}" in out
    dumped = tmp_path / "out"
    subprocess.run([debugfs, "-R", f"dump /bgsnap-wl {dumped}", str(disk)], check=True,
                   capture_output=True)
    assert dumped.read_bytes() == binary.read_bytes()
    label = subprocess.run([debugfs, "-R", "stats", str(disk)], capture_output=True,
                           text=True).stdout
    assert f"Filesystem volume name:   {delivery.DISK_LABEL}" in label
    assert "has_journal" not in label
    binary.write_bytes(b"other")
    assert delivery.build_disk(binary, tmp_path / "cache", log=lambda m: None) != disk

"""The whole-VM snapshot's pure parts: its settings, the disk on QEMU's
command line, the guest's disk lookup, the files and the host's tools on a
real ext4 image (mkfs.ext4, qemu-img, e2fsck, debugfs; skipped without)."""

import shutil
import subprocess

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import disk_snapshot, journal, settings
from avocado_bgsnap.disk_snapshot import DiskFiles
from avocado_bgsnap.guest import build


def params(**kw):
    return Params({"bgsnap_disk_form": "background", **kw})


def test_settings_defaults_and_negative():
    disk = settings.disk_from_params(params())
    assert (disk.form, disk.disk_mib, disk.journal_ms, disk.skew_s) == ("background", 64, 10, 0)
    assert not disk.negative
    assert settings.disk_from_params(params(bgsnap_disk_skew_s="-3",
                                            bgsnap_negative_control="skewed_disk")).negative


@pytest.mark.parametrize("kw, message", [
    ({"bgsnap_disk_form": "sideways"}, "bgsnap_disk_form"),
    ({"bgsnap_disk_mib": "8"}, "bgsnap_disk_mib = 8"),
    ({"bgsnap_journal_ms": "-1"}, "bgsnap_journal_ms"),
    ({"bgsnap_disk_skew_s": "x"}, "bgsnap_disk_skew_s"),
    ({"bgsnap_disk_skew_s": "61"}, "bgsnap_disk_skew_s = 61"),
    ({"bgsnap_disk_skew_s": "3"}, "a skew needs the negative control"),
    ({"bgsnap_negative_control": "skewed_disk"}, "skewed_disk needs a skew"),
    ({"bgsnap_negative_control": "damage_file"}, "bgsnap_negative_control = 'damage_file'"),
    ({"bgsnap_disk_form": "internal"}, "needs bgsnap_mode = snapshot_save"),
    ({"bgsnap_mode": "precopy"}, "needs bgsnap_mode = background"),
    ({"bgsnap_disk_form": "internal", "bgsnap_mode": "snapshot_save",
      "bgsnap_disk_skew_s": "2", "bgsnap_negative_control": "skewed_disk"}, "nothing to skew"),
])
def test_bad_settings_name_the_param(kw, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.disk_from_params(params(**kw))


def test_qemu_args_and_files(tmp_path):
    files = DiskFiles.in_dir(tmp_path)
    assert all(p.name.startswith(disk_snapshot.DISK_STEM) for p in files.all())
    args = disk_snapshot.qemu_args(files.base)
    assert f"file.filename={files.base} " in args
    assert f"serial={disk_snapshot.SERIAL}" in args and "virtio-blk-pci" in args
    for bad in ("a,b", "a b", "a=b"):
        with pytest.raises(disk_snapshot.DiskError, match="cannot take"):
            DiskFiles.in_dir(tmp_path / bad)


def test_guest_device_lookup():
    cmd = disk_snapshot.guest_device_command()
    # the echoed command never reads as an answer
    assert disk_snapshot.parse_guest_device(cmd) is None
    assert disk_snapshot.parse_guest_device(cmd + "\nBGSNAP-DISK=/dev/vdb\n# ") == "/dev/vdb"
    assert disk_snapshot.parse_guest_device("BGSNAP-DISK=\n") is None
    assert "/sys/block/vd*" in cmd and "/dev/disk/by-id/virtio-bgsnap-journal" in cmd


def test_tools_are_found_in_sbin_too(monkeypatch, tmp_path):
    tool = tmp_path / "mkfs.fake"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(disk_snapshot, "SBIN", str(tmp_path))
    assert disk_snapshot.which("mkfs.fake") == str(tool)
    assert disk_snapshot.unsupported_reason(("mkfs.fake",)) is None
    # negative: a tool in neither is named
    assert "needs nosuchtool" in disk_snapshot.unsupported_reason(("mkfs.fake", "nosuchtool"))


def test_guest_has_the_disk_modules(tmp_path):
    assert {"virtio_blk", "ext4"} <= set(build.GUEST_MODULES)
    assert build.TRANSPORT_DEPS["virtio_blk"] == ("virtio_pci",)
    (tmp_path / build.MODULES_DEPS).write_text("virtio_pci: virtio\nvirtio:\n")
    assert not build.has_modules(tmp_path, build.GUEST_MODULES)   # an old cache: fetched again
    assert build.has_modules(tmp_path, ("virtio_pci",))
    assert not build.has_modules(tmp_path / "none", ("virtio_pci",))


@pytest.mark.skipif(disk_snapshot.unsupported_reason() is not None,
                    reason="needs qemu-img and e2fsprogs")
def test_frozen_disk_read_on_the_host(tmp_path):
    files = DiskFiles.in_dir(tmp_path)
    disk_snapshot.create_disk(files, 16)
    assert files.base.stat().st_mode & 0o777 == 0o600 and not files.scratch.exists()
    # put a journal into it, as the guest would (debugfs writes without a mount)
    raw = tmp_path / "edit.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(files.base), str(raw)], check=True)
    nonce = 77
    data = b"".join(journal.Record(s, 10 * s, s).encode(nonce) for s in range(1, 6))
    (tmp_path / "j").write_bytes(data)
    subprocess.run(["debugfs", "-w", "-R", f"write {tmp_path / 'j'} {disk_snapshot.JOURNAL_NAME}",
                    str(raw)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(files.base)], check=True)
    fsck, got = disk_snapshot.read_frozen_disk(files, files.base)
    assert fsck.consistent, fsck.output
    assert got == data
    assert not files.scratch.exists() and not files.journal.exists()
    # negative control: an inode cleared under its directory entry is an inconsistency
    subprocess.run(["debugfs", "-w", "-R", f"clri {disk_snapshot.JOURNAL_NAME}", str(raw)],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(files.base)], check=True)
    fsck, _ = disk_snapshot.read_frozen_disk(files, files.base)
    assert not fsck.consistent and "INCONSISTENT" in fsck.summary()


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_restore_overlay_leaves_the_base(tmp_path):
    files = DiskFiles.in_dir(tmp_path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(files.base), "16M"],
                   check=True)
    disk_snapshot.create_overlay(files.restore, files.base)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(files.restore)],
                          capture_output=True, text=True, check=True).stdout
    assert str(files.base) in info and files.restore.stat().st_mode & 0o777 == 0o600
    files.remove()
    assert not any(p.exists() for p in files.all())


def test_leftover_check_counts_disk_files_unless_kept(tmp_path):
    import json

    from avocado_bgsnap import leftovers
    job = tmp_path / "job"
    work = job / "test-results" / "1-disk.background"
    (work / "data").mkdir(parents=True)
    files = DiskFiles.in_dir(work)
    for path in (files.base, files.overlay, files.restore):
        path.write_bytes(b"x")
    found = leftovers.snapshot_files(job, [], 0)
    assert set(found) == {p.resolve() for p in (files.base, files.overlay, files.restore)}
    # kept on purpose (bgsnap_keep_snapshot): recorded, so not a leftover
    (work / "data" / "bgsnap-metrics.json").write_text(json.dumps({
        "keep_snapshot": True, "snapshot_file": str(work / "bgsnap-snapshot.bin"),
        "kept_files": [str(files.base), str(files.overlay)]}))
    assert leftovers.snapshot_files(job, [], 0) == [files.restore.resolve()]


def test_a_distro_guest_root_disk_is_found_and_reparented(tmp_path):
    from virttest.utils_params import Params

    root = disk_snapshot.RootDisk.of(Params({
        "images": "root", "image_name_root": str(tmp_path / "debian12" / "root"),
        "image_format_root": "qcow2"}), tmp_path)
    assert root.base == (tmp_path / "debian12" / "root.qcow2").resolve()
    assert root.active == tmp_path / "bgsnap-disk-root-active.qcow2"
    assert disk_snapshot.RootDisk.params(root.restore) == {
        "image_name_root": str(tmp_path / "bgsnap-disk-root-restore"),
        "image_snapshot_root": "no", "image_format_root": "qcow2"}
    # the busybox guest boots from no disk: nothing to freeze but the journal's
    assert disk_snapshot.RootDisk.of(Params({"images": ""}), tmp_path) is None

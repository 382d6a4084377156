"""A snapshot file appears under its name only when the save succeeded, and
every file holding guest memory is its owner's only (0600)."""

import os
import shutil
import stat
import subprocess

import pytest

from avocado_bgsnap import snapshot


def test_success_renames_partial(tmp_path):
    target = tmp_path / "snap.bin"
    with snapshot.written_atomically(target) as partial:
        assert partial.name == "snap.bin.partial"
        partial.write_bytes(b"image")
        assert not target.exists()
    assert target.read_bytes() == b"image" and not partial.exists()


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "snap.bin"
    (tmp_path / "snap.bin.partial").write_bytes(b"stale from an earlier crash")
    with pytest.raises(RuntimeError):
        with snapshot.written_atomically(target) as partial:
            assert partial.read_bytes() == b""  # a stale partial is never reused
            partial.write_bytes(b"half")
            raise RuntimeError("migration failed")
    assert list(tmp_path.iterdir()) == []


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for a test, restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_partial_and_snapshot_are_private_whatever_the_umask(tmp_path, umask, mask):
    umask(mask)
    target = tmp_path / "snap.bin"
    with snapshot.written_atomically(target) as partial:
        assert _mode(partial) == 0o600
        with open(partial, "wb") as f:  # what a shell's '>' does: O_TRUNC
            f.write(b"guest memory")
    assert _mode(target) == 0o600


def test_a_writer_that_recreates_the_file_does_not_widen_it(tmp_path, umask):
    umask(0o000)
    target = tmp_path / "snap.bin"
    with snapshot.written_atomically(target) as partial:
        partial.unlink()
        partial.write_bytes(b"guest memory")  # a new file: 0666 under this umask
        assert _mode(partial) == 0o666
    assert _mode(target) == 0o600


def test_create_private_replaces_a_readable_old_file(tmp_path, umask):
    umask(0o000)
    path = tmp_path / "bgsnap-restored-ram.elf"
    path.write_bytes(b"old dump")
    path.chmod(0o644)
    snapshot.create_private(path)
    assert _mode(path) == 0o600 and path.read_bytes() == b""


def test_negative_control_without_create_private_the_umask_decides(tmp_path, umask):
    """What the shell's '>' does to a file that was not created first."""
    umask(0o022)
    path = tmp_path / "snap.bin"
    subprocess.run(["sh", "-c", f"echo x > {path}"], check=True)
    assert _mode(path) == 0o644
    snapshot.create_private(path)
    subprocess.run(["sh", "-c", f"echo x > {path}"], check=True)
    assert _mode(path) == 0o600


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_internal_snapshot_image_is_private(tmp_path, umask):
    from avocado_bgsnap import internal_snapshot

    umask(0o022)
    path = tmp_path / "vmstate.qcow2"
    internal_snapshot.create_image(path)
    assert _mode(path) == 0o600 and path.stat().st_size > 0


def test_damage_guest_page_flips_one_body_byte(tmp_path):
    needle = b"MAGICPG!" + b"\x00" * 8
    data = b"x" * 1000 + needle + bytes(4096) + b"y" * 100
    path = tmp_path / "img"
    path.write_bytes(data)
    offset = snapshot.damage_guest_page(path, needle, offset_in_page=512)
    out = path.read_bytes()
    assert offset == 1000 + 512
    assert [i for i, (a, b) in enumerate(zip(data, out)) if a != b] == [offset]
    with pytest.raises(ValueError):
        snapshot.damage_guest_page(tmp_path / "img", b"absent-needle-xyz")

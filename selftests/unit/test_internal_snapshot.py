"""The internal-snapshot (snapshot-save) helpers that need no VM."""

import shutil
import subprocess

import pytest

from avocado_bgsnap import internal_snapshot


def test_old_qemu_is_refused_with_the_version():
    reason = internal_snapshot.unsupported_reason((5, 2, 0))
    assert reason and "6.0" in reason and "5.2.0" in reason


def test_missing_qemu_img_is_named(monkeypatch):
    monkeypatch.setattr(internal_snapshot.shutil, "which", lambda name: None)
    assert "qemu-utils" in internal_snapshot.unsupported_reason((7, 2, 0))


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_create_image_replaces_an_old_file(tmp_path):
    path = tmp_path / "vmstate.qcow2"
    path.write_bytes(b"not a qcow2")
    internal_snapshot.create_image(path)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert '"format": "qcow2"' in info


def test_create_image_failure_says_why(tmp_path):
    with pytest.raises(internal_snapshot.InternalSnapshotError, match="qemu-img create"):
        internal_snapshot.create_image(tmp_path / "no-such-dir" / "x.qcow2")

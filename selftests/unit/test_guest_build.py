"""The initramfs writer: a valid newc archive, reproducible, with device nodes."""

import gzip
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from avocado_bgsnap.guest import build


def test_newc_roundtrip_with_cpio(tmp_path):
    if not shutil.which("cpio"):
        pytest.skip("cpio not installed")
    buf = io.BytesIO()
    build.write_newc([("bin", 0o040755), ("bin/hello", 0o100755, b"hi\n"),
                      ("dev/console", 0o020600, b"", (5, 1))], buf)
    listing = subprocess.run(["cpio", "-itv"], input=buf.getvalue(), capture_output=True,
                             check=True).stdout.decode()
    assert "bin/hello" in listing and "dev/console" in listing
    assert "crw-------" in listing  # a char device without root


def test_initramfs_is_reproducible_and_digest_tracks_inputs(tmp_path):
    one, two = tmp_path / "a", tmp_path / "b"
    (tmp_path / "wl").write_bytes(b"workload-1")
    busybox = tmp_path / "bb"
    busybox.write_bytes(b"busybox")
    first, d1 = build.build_initramfs(one.mkdir() or one, busybox, tmp_path / "wl")
    second, d2 = build.build_initramfs(two.mkdir() or two, busybox, tmp_path / "wl")
    assert d1 == d2 and first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes()).startswith(b"070701")
    (tmp_path / "wl").write_bytes(b"workload-2")
    third, d3 = build.build_initramfs(one, busybox, tmp_path / "wl")
    assert d3 != d1 and not first.exists() and third.exists()


def test_static_elf_detection(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert not build.is_static_elf(script)
    assert not build.is_static_elf(Path("/bin/ls"))  # dynamic: has PT_INTERP
    assert build.is_static_elf(build.find_busybox())

"""Bad images for the restore tests: each kind is what it says (the real
restores run in the fault.bad_image.* tests)."""

from pathlib import Path

import pytest

from avocado_bgsnap import bad_image, settings, transport
from virttest.utils_params import Params


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.bin"
    path.write_bytes(b"QEVM\x00\x00\x00\x03" + bytes(range(256)) * 64)
    return path


@pytest.mark.parametrize("kind", ["good", "ram_size", "machine", "restore_killed"])
def test_kinds_that_change_the_restoring_qemu_keep_the_file(good, tmp_path, kind):
    bad = bad_image.make_bad_copy(good, kind, tmp_path / "bad.bin")
    assert bad.read_bytes() == good.read_bytes()
    assert bad.stat().st_mode & 0o777 == 0o600


def test_truncated_header_empty(good, tmp_path):
    size = good.stat().st_size
    assert bad_image.make_bad_copy(good, "truncated", tmp_path / "t").stat().st_size == size // 2
    header = bad_image.make_bad_copy(good, "header", tmp_path / "h").read_bytes()
    assert header[:4] == b"XXXX" and header[4:] == good.read_bytes()[4:]
    assert bad_image.make_bad_copy(good, "empty", tmp_path / "e").read_bytes() == b""


def test_not_a_stream_is_refused(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 8192)
    with pytest.raises(bad_image.BadImageError, match="does not start with"):
        bad_image.make_bad_copy(junk, "truncated", tmp_path / "bad")


def test_mismatch_overrides_and_the_slow_restore():
    assert bad_image.restore_overrides("ram_size", 256) == {"mem": "512"}
    assert bad_image.restore_overrides("machine", 256) == {"machine_type": "q35"}
    assert bad_image.restore_overrides("truncated", 256) == {}
    slow = bad_image.slow_restore(transport.by_name("file"))
    assert "throttle_filter 32 <" in slow.restore_uri(Path("/x"))
    with pytest.raises(bad_image.BadImageError, match="needs the file transport"):
        bad_image.slow_restore(transport.by_name("zstd"))


def test_settings():
    assert settings.bad_image_from_params(Params({"bgsnap_bad_image": "empty"})).kind == "empty"
    with pytest.raises(settings.SettingsError, match="bgsnap_bad_image = 'nope'"):
        settings.bad_image_from_params(Params({"bgsnap_bad_image": "nope"}))
    with pytest.raises(settings.SettingsError, match="bgsnap_bad_image_bound = 0"):
        settings.bad_image_from_params(Params({"bgsnap_bad_image_bound": "0"}))

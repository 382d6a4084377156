"""A snapshot file appears under its name only when the save succeeded."""

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
            assert not partial.exists()  # a stale partial is never reused
            partial.write_bytes(b"half")
            raise RuntimeError("migration failed")
    assert list(tmp_path.iterdir()) == []


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

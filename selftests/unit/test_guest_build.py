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


# -- kernel modules ---------------------------------------------------------

import gzip as _gzip  # noqa: E402
import lzma  # noqa: E402
import struct  # noqa: E402


def fake_module(name: str, depends: str = "") -> bytes:
    """A minimal ELF64 relocatable with a .modinfo section, like a .ko."""
    modinfo = b"license=GPL\0depends=%s\0name=%s\0" % (depends.encode(), name.encode())
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body = modinfo + shstrtab
    shoff = 64 + len(body)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    sections = bytes(64)  # the null section
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, 64, len(modinfo), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, 64 + len(modinfo), len(shstrtab),
                            0, 0, 1, 0)
    return bytes(header) + body + sections


def test_module_name_spellings():
    assert build.module_name("kernel/drivers/virtio/virtio_pci.ko.xz") == "virtio_pci"
    assert build.module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert build.module_name("virtio_mem.ko.zst") == "virtio_mem"


def test_modules_dep_parsing_and_load_order():
    index = build.parse_modules_dep(
        "kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz "
        "kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:\n"
        "kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz\n"
        "kernel/drivers/virtio/virtio_ring.ko.xz:\n"
        "kernel/drivers/virtio/virtio_balloon.ko.xz: kernel/drivers/virtio/virtio.ko.xz "
        "kernel/drivers/virtio/virtio_ring.ko.xz\n\n")
    assert index["virtio_pci"][0] == "kernel/drivers/virtio/virtio_pci.ko.xz"
    deps = {name: d for name, (_, d) in index.items()}
    order = build.load_order(["virtio_balloon", "virtio_pci"], deps)
    assert order == ["virtio_ring", "virtio", "virtio_balloon", "virtio_pci_modern_dev",
                     "virtio_pci"]
    for i, name in enumerate(order):  # every dependency comes before its user
        assert set(deps[name]) <= set(order[:i])
    # built-in modules need no loading
    assert build.load_order(["virtio_balloon"], deps, builtin={"virtio_ring"}) == \
        ["virtio", "virtio_balloon"]


def test_load_order_errors():
    with pytest.raises(build.GuestBuildError, match="no module virtio_ring .needed by virtio"):
        build.load_order(["virtio_mem"], {"virtio_mem": ["virtio"], "virtio": ["virtio_ring"]})
    with pytest.raises(build.GuestBuildError, match="no module nosuch$"):
        build.load_order(["nosuch"], {})
    with pytest.raises(build.GuestBuildError, match="cycle: a -> b -> a"):
        build.load_order(["a"], {"a": ["b"], "b": ["a"]})


def test_modinfo_depends():
    assert build.modinfo_depends(fake_module("virtio_pci", "virtio_ring,virtio")) == \
        ["virtio_ring", "virtio"]
    assert build.modinfo_depends(fake_module("virtio_ring")) == []
    with pytest.raises(build.GuestBuildError, match="ELF64"):
        build.modinfo(b"#!/bin/sh\n" + bytes(64))


def test_decompress_module():
    data = fake_module("virtio")
    assert build.decompress_module("a/virtio.ko", data) == data
    assert build.decompress_module("a/virtio.ko.xz", lzma.compress(data)) == data
    assert build.decompress_module("a/virtio.ko.gz", _gzip.compress(data)) == data
    with pytest.raises(build.GuestBuildError, match="not a kernel module"):
        build.decompress_module("a/virtio.txt", data)
    try:
        import zstandard
    except ImportError:
        with pytest.raises(build.GuestBuildError, match="zstd-compressed .*zstandard"):
            build.decompress_module("a/virtio.ko.zst", b"\x28\xb5\x2f\xfd")
    else:
        packed = zstandard.ZstdCompressor().compress(data)
        assert build.decompress_module("a/virtio.ko.zst", packed) == data


def make_moddir(root: Path, with_dep_file: bool) -> Path:
    moddir = root / "lib" / "modules" / "6.12.0-1-cloud-amd64"
    vdir = moddir / "kernel" / "drivers" / "virtio"
    vdir.mkdir(parents=True)
    mods = {"virtio_ring": "", "virtio": "virtio_ring",
            "virtio_pci_modern_dev": "", "virtio_pci_legacy_dev": "",
            "virtio_pci": "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio",
            "virtio_balloon": "virtio,virtio_ring", "virtio_mem": "virtio,virtio_ring",
            "virtio_net": "virtio,virtio_ring"}
    for name, deps in mods.items():
        (vdir / f"{name}.ko.xz").write_bytes(lzma.compress(fake_module(name, deps)))
    rel = "kernel/drivers/virtio/%s.ko.xz"
    (moddir / "modules.order").write_text("".join(rel % n + "\n" for n in mods))
    (moddir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_anchor.ko\n")
    if with_dep_file:  # modules.dep lists every transitive dependency
        (moddir / "modules.dep").write_text("".join(
            f"{rel % n}: {' '.join(rel % d for d in deps.split(',') if d)}\n"
            for n, deps in mods.items()))
    return moddir


@pytest.mark.parametrize("with_dep_file", [False, True])
def test_extract_modules(tmp_path, with_dep_file):
    moddir = make_moddir(tmp_path / "root", with_dep_file)
    out = tmp_path / "modules"
    # the fake kernel has the virtio ones (GUEST_MODULES has the disk's too)
    order = build.extract_modules(moddir, ("virtio_pci", "virtio_balloon", "virtio_mem"), out)
    assert order[-3:] == ["virtio_pci", "virtio_balloon", "virtio_mem"]
    assert set(order) == {"virtio_ring", "virtio", "virtio_pci_modern_dev",
                          "virtio_pci_legacy_dev", "virtio_pci", "virtio_balloon", "virtio_mem"}
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert sorted(p.name for p in out.glob("*.ko")) == sorted(f"{n}.ko" for n in order)
    assert (out / "virtio.ko").read_bytes() == fake_module("virtio", "virtio_ring")  # decompressed
    deps = dict(line.split(":") for line in (out / build.MODULES_DEPS).read_text().splitlines())
    assert deps["virtio_ring"] == ""
    # the PCI transport is loaded before the drivers that need it
    balloon = deps["virtio_balloon"].split()
    assert balloon[-1] == "virtio_pci" and set(balloon) == set(order) - {"virtio_balloon",
                                                                       "virtio_mem"}
    # the built-in ones are "loaded" without a file; a missing module is an error
    assert build.extract_modules(moddir, ["virtio_anchor"], tmp_path / "b") == []
    assert (tmp_path / "b" / build.MODULES_DEPS).read_text() == "virtio_anchor:\n"
    with pytest.raises(build.GuestBuildError, match="no module virtio_gpu"):
        build.extract_modules(moddir, ["virtio_gpu"], tmp_path / "c")


def test_initramfs_entries_and_digest_with_modules(tmp_path):
    (tmp_path / "wl").write_bytes(b"workload")
    (tmp_path / "bb").write_bytes(b"busybox")
    plain = build.initramfs_entries(tmp_path / "bb", tmp_path / "wl")
    assert not [e for e in plain if e[0].startswith("lib")]  # a user kernel: no modules
    modules = tmp_path / "modules"
    build.extract_modules(make_moddir(tmp_path / "root", False), ["virtio_balloon"], modules)
    entries = build.initramfs_entries(tmp_path / "bb", tmp_path / "wl", modules)
    names = [e[0] for e in entries]
    assert names[:len(plain)] == [e[0] for e in plain]
    extra = names[len(plain):]
    assert extra[:3] == ["lib", "lib/modules", "lib/modules/bgsnap.deps"]
    assert sorted(extra[3:]) == sorted(f"lib/modules/{n}.ko" for n in
                                       ("virtio_ring", "virtio", "virtio_pci_modern_dev",
                                        "virtio_pci_legacy_dev", "virtio_pci", "virtio_balloon"))
    assert dict((e[0], e[2]) for e in entries if len(e) > 2)["lib/modules/virtio.ko"] == \
        fake_module("virtio", "virtio_ring")
    (tmp_path / "c1").mkdir(), (tmp_path / "c2").mkdir()
    _, without = build.build_initramfs(tmp_path / "c1", tmp_path / "bb", tmp_path / "wl")
    _, with1 = build.build_initramfs(tmp_path / "c2", tmp_path / "bb", tmp_path / "wl", modules)
    (modules / "virtio.ko").write_bytes(fake_module("virtio", "virtio_ring") + b"\0")
    _, with2 = build.build_initramfs(tmp_path / "c2", tmp_path / "bb", tmp_path / "wl", modules)
    assert len({without, with1, with2}) == 3

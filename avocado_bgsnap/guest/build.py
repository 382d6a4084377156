"""Build the embedded default guest: a Debian cloud kernel + a busybox initramfs.

Everything comes from Debian packages already reachable offline:

* the kernel is the newest ``linux-image-*-cloud-amd64`` (serial console
  built in), fetched with ``apt-get download`` and unpacked with
  ``dpkg-deb`` -- nothing is installed on the host;
* the initramfs holds ``busybox-static``, ``init.sh`` (this folder), the
  statically linked workload ``bgsnap-wl`` (``wl/``) and the few kernel
  modules the suite's devices need (:data:`GUEST_MODULES` and their
  dependencies, decompressed, under ``lib/modules/``).  ``init.sh`` loads
  them only when the kernel command line asks (``bgsnap.modules=a,b``).

Results are cached under :func:`avocado_bgsnap.paths.guest_cache_dir`.  The
initramfs file name carries a digest of its inputs, so it is rebuilt exactly
when one of them changes.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import json
import io
import lzma
import os
import struct
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import wl_build

GUEST_DIR = Path(__file__).resolve().parent
INIT_SCRIPT = GUEST_DIR / "init.sh"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# Printed by init.sh once the serial shell is up (assembled there at run
# time so that no echoed command line contains it).
GUEST_READY_MARKER = "BGSNAP-GUEST-READY"
# Bump when the initramfs layout changes in a way the digest cannot see.
LAYOUT_VERSION = "1"
MANIFEST = "guest.json"
# Kernel modules put into the initramfs (with their dependencies): the
# Debian cloud kernel builds virtio as modules (CONFIG_VIRTIO*=m).  The
# journal disk of the whole-VM snapshot (docs/disk.md) needs virtio_blk and
# ext4 (built into the cloud kernel, CONFIG_EXT4_FS=y: listed so that
# 'bgsnap.modules=...,ext4' also works with a kernel that builds it as a module).
GUEST_MODULES = ("virtio_pci", "virtio_balloon", "virtio_mem", "virtio_blk", "ext4")
# Loaded before a module although no symbol dependency says so: the suite's
# virtio devices are all virtio-*-pci, so a driver without the PCI transport
# would never bind.
TRANSPORT_DEPS = {"virtio_balloon": ("virtio_pci",), "virtio_mem": ("virtio_pci",),
                  "virtio_blk": ("virtio_pci",)}
# In the initramfs: lib/modules/<name>.ko and this load-order file, one line
# per module, "<name>: <dependencies in load order>".
MODULES_DIR = "lib/modules"
MODULES_DEPS = "bgsnap.deps"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class GuestBuildError(Exception):
    """The embedded guest could not be built; the message says what to do."""


@dataclass(frozen=True)
class GuestAssets:
    kernel: Path
    initrd: Path
    kernel_package: str
    digest: str


def _run(cmd: list, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{cmd[0]} not found: install it (Debian: apt-get install {cmd[0]})") from exc
    if proc.returncode != 0:
        raise GuestBuildError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    return proc.stdout


def kernel_package_name() -> str:
    """The concrete kernel package the cloud metapackage points at."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and dep.startswith("linux-image-"):
            return dep
    raise GuestBuildError(
        f"apt knows no {KERNEL_METAPACKAGE}: run 'apt-get update' (Debian amd64 needed)"
    )


def module_name(path: str) -> str:
    """``kernel/drivers/virtio/virtio-foo.ko.xz`` -> ``virtio_foo`` (the kernel's spelling)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` -> {name: (path, [dependency names])}."""
    index = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep or not path.strip():
            continue
        index[module_name(path.strip())] = (path.strip(), [module_name(d) for d in deps.split()])
    return index


def parse_modules_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of an (uncompressed) ELF64 module, key -> values."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestBuildError("not a little-endian ELF64 kernel module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, data[offset:offset + size]

    names = section(shstrndx)[1]
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, body = section(i)
        if names[name_off:names.index(b"\0", name_off)] != b".modinfo":
            continue
        for item in body.split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


def modinfo_depends(data: bytes) -> list[str]:
    return [d for v in modinfo(data).get("depends", []) for d in v.split(",") if d]


def decompress_module(path: str, data: bytes) -> bytes:
    """An uncompressed .ko for busybox ``insmod`` (which cannot decompress)."""
    if path.endswith(".ko"):
        return data
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.endswith(".ko.zst"):
        try:
            import zstandard
        except ImportError:
            raise GuestBuildError(
                f"{path} is zstd-compressed and no Python zstd module is available: "
                "apt-get install python3-zstandard (or pip install zstandard)") from None
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise GuestBuildError(f"{path}: not a kernel module file ({', '.join(MODULE_SUFFIXES)})")


def load_order(wanted: Iterable[str], deps: dict[str, list[str]],
               builtin: Iterable[str] = ()) -> list[str]:
    """``wanted`` and everything they depend on, dependencies first.

    Built-in modules need no loading and are left out; a name that is
    neither a module nor built in is an error.
    """
    builtin, order = set(builtin), []

    def visit(name, chain):
        if name in order or name in builtin:
            return
        if name in chain:
            raise GuestBuildError("kernel module dependency cycle: " + " -> ".join(chain + (name,)))
        if name not in deps:
            needed = f" (needed by {chain[-1]})" if chain else ""
            raise GuestBuildError(f"the kernel has no module {name}{needed}")
        for dep in deps[name]:
            visit(dep, chain + (name,))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def _kernel_module_dir(root: Path) -> Path:
    found = sorted(root.glob("lib/modules/*/modules.order")) + \
        sorted(root.glob("usr/lib/modules/*/modules.order"))
    if not found:
        raise GuestBuildError("the kernel package holds no lib/modules/<version>/modules.order")
    return found[0].parent


def extract_modules(moddir: Path, wanted: Iterable[str], out: Path) -> list[str]:
    """Decompress ``wanted`` + dependencies from an unpacked ``lib/modules/<ver>``
    into ``out``/<name>.ko and write the load-order file; return the load order.

    The dependencies come from ``modules.dep`` when the package ships it;
    Debian's kernel packages do not (depmod runs at install time), so then
    from each module's own ``.modinfo`` ``depends=``.
    """
    builtin = set()
    if (moddir / "modules.builtin").is_file():
        builtin = parse_modules_builtin((moddir / "modules.builtin").read_text())
    paths = {}
    for line in (moddir / "modules.order").read_text().splitlines():
        if line.strip():
            paths[module_name(line.strip())] = line.strip()
    for path in moddir.rglob("*.ko*"):  # modules.order may name the uncompressed file
        paths[module_name(path.name)] = str(path.relative_to(moddir))
    dep_file = moddir / "modules.dep"
    index = parse_modules_dep(dep_file.read_text()) if dep_file.is_file() else {}
    wanted = list(wanted)
    blobs, deps = {}, {}
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name in deps or name in builtin or name not in paths:
            continue  # load_order below reports the unknown ones
        path = index[name][0] if name in index else paths[name]
        blobs[name] = decompress_module(path, (moddir / path).read_bytes())
        deps[name] = index[name][1] if name in index else modinfo_depends(blobs[name])
        deps[name] = list(TRANSPORT_DEPS.get(name, ())) + deps[name]
        pending += deps[name]
    order = load_order(wanted, deps, builtin)
    out.mkdir(parents=True, exist_ok=True)
    for name in order:
        (out / f"{name}.ko").write_bytes(blobs[name])
    lines = [f"{name}: {' '.join(load_order([name], deps, builtin)[:-1])}".rstrip()
             for name in sorted(set(order) | (set(wanted) & builtin))]
    (out / MODULES_DEPS).write_text("\n".join(lines) + "\n")
    return order


def fetch_kernel(cache: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    """Return (vmlinuz, package); download + unpack only when not cached.

    The modules of :data:`GUEST_MODULES` land in :func:`kernel_modules_dir`.
    """
    kdir = cache / "kernel"
    vmlinuz, stamp = kdir / "vmlinuz", kdir / "package"
    modules = kernel_modules_dir(cache)
    if vmlinuz.is_file() and stamp.is_file() and has_modules(modules, GUEST_MODULES):
        return vmlinuz, stamp.read_text().strip()
    package = kernel_package_name()
    log(f"fetching kernel {package} with apt-get download")
    kdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kdir) as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)  # apt's _apt user must be able to write here
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if not debs:
            raise GuestBuildError(f"apt-get download {package} produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")])
        found = sorted((tmp / "root" / "boot").glob("vmlinuz-*"))
        if not found:
            raise GuestBuildError(f"{debs[0].name} holds no boot/vmlinuz-*")
        order = extract_modules(_kernel_module_dir(tmp / "root"), GUEST_MODULES, tmp / "modules")
        log(f"kernel modules: {' '.join(order)}")
        shutil.copyfile(found[0], tmp / "vmlinuz")
        shutil.rmtree(modules, ignore_errors=True)
        os.replace(tmp / "modules", modules)
        os.replace(tmp / "vmlinuz", vmlinuz)
    stamp.write_text(package + "\n")
    return vmlinuz, package


def has_modules(modules: Path, wanted: Iterable[str]) -> bool:
    """True when the load-order file in ``modules`` names every ``wanted``
    module: a cache made before a module joined :data:`GUEST_MODULES` is
    fetched again."""
    try:
        text = (modules / MODULES_DEPS).read_text()
    except OSError:
        return False
    names = {line.split(":")[0].strip() for line in text.splitlines() if line.strip()}
    return set(wanted) <= names


def kernel_modules_dir(cache: Path) -> Path:
    """The decompressed guest modules + load-order file of the Debian kernel."""
    return cache / "kernel" / "modules"


def module_entries(modules: Path | None) -> list[tuple]:
    """Initramfs entries for a :func:`extract_modules` folder (none for None)."""
    if modules is None:
        return []
    deps = (modules / MODULES_DEPS).read_bytes()
    names = [line.split(b":")[0].decode() for line in deps.splitlines() if line.strip()]
    entries = [("lib", 0o040755), (MODULES_DIR, 0o040755),
               (f"{MODULES_DIR}/{MODULES_DEPS}", 0o100644, deps)]
    entries += [(f"{MODULES_DIR}/{name}.ko", 0o100644, (modules / f"{name}.ko").read_bytes())
                for name in names if (modules / f"{name}.ko").is_file()]
    return entries


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    data = path.read_bytes()[:65536]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and is_static_elf(path):
            return path
    raise GuestBuildError(
        "no static busybox found (looked at %s): apt-get install busybox-static"
        % ", ".join(BUSYBOX_CANDIDATES)
    )


def _newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple = (0, 0), ino: int = 0) -> bytes:
    name_b = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name_b
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def write_newc(entries: Iterable[tuple], out: io.BufferedIOBase) -> None:
    """Write a cpio 'newc' archive; entries are (name, mode, data[, rdev]).

    Written in Python so that device nodes (/dev/console) need no root and the
    archive is byte-for-byte reproducible (mtime 0, uid/gid 0).
    """
    for ino, entry in enumerate(entries, start=1):
        out.write(_newc_entry(*entry, ino=ino))
    out.write(_newc_entry("TRAILER!!!", 0))


def initramfs_entries(busybox: Path, workload: Path, modules: Path | None = None) -> list[tuple]:
    d, f, x = 0o040755, 0o100644, 0o100755
    entries = [(name, d) for name in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc")]
    entries += [
        ("dev/console", 0o020600, b"", (5, 1)),
        ("dev/ttyS0", 0o020660, b"", (4, 64)),
        ("bin/busybox", x, busybox.read_bytes()),
        ("bin/bgsnap-wl", x, workload.read_bytes()),
        ("init", x, INIT_SCRIPT.read_bytes()),
        ("etc/hostname", f, b"bgsnap-guest\n"),
    ]
    return entries + module_entries(modules)


def build_initramfs(cache: Path, busybox: Path, workload: Path,
                    modules: Path | None = None) -> tuple[Path, str]:
    entries = initramfs_entries(busybox, workload, modules)
    digest = hashlib.sha256(LAYOUT_VERSION.encode())
    for entry in entries:
        digest.update(repr(entry[:2]).encode())
        digest.update(entry[2] if len(entry) > 2 else b"")
    digest_hex = digest.hexdigest()[:16]
    initrd = cache / f"initrd-{digest_hex}.img"
    if not initrd.is_file():
        buf = io.BytesIO()
        write_newc(entries, buf)
        tmp = initrd.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            # mtime=0: identical inputs give an identical file
            out.write(gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))
        os.replace(tmp, initrd)
        for old in cache.glob("initrd-*.img"):
            if old != initrd:
                old.unlink()
    return initrd, digest_hex


def workload_binary(cache: Path) -> Path:
    """The static workload binary (also runs on the host for verify-dump)."""
    return cache / "bin" / "bgsnap-wl"


def _stable_link(link: Path, target: Path) -> Path:
    tmp = link.with_name(link.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target.name if target.parent == link.parent else target)
    os.replace(tmp, link)
    return link


def cached_guest(cache: Path) -> GuestAssets | None:
    """The last built guest, or None."""
    try:
        data = json.loads((cache / MANIFEST).read_text())
        assets = GuestAssets(Path(data["kernel"]), Path(data["initrd"]),
                             data["kernel_package"], data["digest"])
    except (OSError, ValueError, KeyError):
        return None
    return assets if assets.kernel.is_file() and assets.initrd.is_file() else None


def build_guest(cache: Path, log: Callable[[str], None] = print,
                kernel: Path | None = None) -> GuestAssets:
    """Build (or reuse) the embedded guest under ``cache``.

    ``kernel`` replaces the Debian cloud kernel with the user's own bzImage;
    such a guest has no loadable modules (init.sh says so when asked for one).
    """
    cache.mkdir(parents=True, exist_ok=True)
    if kernel is not None:
        if not kernel.is_file():
            raise GuestBuildError(f"kernel {kernel} does not exist")
        vmlinuz, package, modules = kernel, "user-supplied", None
    else:
        vmlinuz, package = fetch_kernel(cache, log)
        modules = kernel_modules_dir(cache)
    busybox = find_busybox()
    try:
        workload = wl_build.build_wl(workload_binary(cache).parent, static=True)
    except wl_build.WorkloadBuildError as exc:
        raise GuestBuildError(f"building the guest workload failed: {exc}") from exc
    initrd, digest = build_initramfs(cache, busybox, workload, modules)
    # Stable names, so a generated cfg stays valid across rebuilds.
    assets = GuestAssets(kernel=_stable_link(cache / "vmlinuz", vmlinuz.resolve()),
                         initrd=_stable_link(cache / "initrd.img", initrd),
                         kernel_package=package, digest=digest)
    (cache / MANIFEST).write_text(json.dumps(
        {k: str(v) for k, v in dataclasses.asdict(assets).items()}, indent=2) + "\n")
    return assets

"""Build the embedded default guest: a Debian cloud kernel + a busybox initramfs.

Everything comes from Debian packages already reachable offline:

* the kernel is the newest ``linux-image-*-cloud-amd64`` (serial console
  built in), fetched with ``apt-get download`` and unpacked with
  ``dpkg-deb`` -- nothing is installed on the host;
* the initramfs holds ``busybox-static``, ``init.sh`` (this folder) and the
  statically linked workload ``bgsnap-wl`` (``wl/``).

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
import os
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


def fetch_kernel(cache: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    """Return (vmlinuz, package); download + unpack only when not cached."""
    kdir = cache / "kernel"
    vmlinuz, stamp = kdir / "vmlinuz", kdir / "package"
    if vmlinuz.is_file() and stamp.is_file():
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
        shutil.copyfile(found[0], tmp / "vmlinuz")
        os.replace(tmp / "vmlinuz", vmlinuz)
    stamp.write_text(package + "\n")
    return vmlinuz, package


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    import struct

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


def initramfs_entries(busybox: Path, workload: Path) -> list[tuple]:
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
    return entries


def build_initramfs(cache: Path, busybox: Path, workload: Path) -> tuple[Path, str]:
    entries = initramfs_entries(busybox, workload)
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

    ``kernel`` replaces the Debian cloud kernel with the user's own bzImage.
    """
    cache.mkdir(parents=True, exist_ok=True)
    if kernel is not None:
        if not kernel.is_file():
            raise GuestBuildError(f"kernel {kernel} does not exist")
        vmlinuz, package = kernel, "user-supplied"
    else:
        vmlinuz, package = fetch_kernel(cache, log)
    busybox = find_busybox()
    try:
        workload = wl_build.build_wl(workload_binary(cache).parent, static=True)
    except wl_build.WorkloadBuildError as exc:
        raise GuestBuildError(f"building the guest workload failed: {exc}") from exc
    initrd, digest = build_initramfs(cache, busybox, workload)
    # Stable names, so a generated cfg stays valid across rebuilds.
    assets = GuestAssets(kernel=_stable_link(cache / "vmlinuz", vmlinuz.resolve()),
                         initrd=_stable_link(cache / "initrd.img", initrd),
                         kernel_package=package, digest=digest)
    (cache / MANIFEST).write_text(json.dumps(
        {k: str(v) for k, v in dataclasses.asdict(assets).items()}, indent=2) + "\n")
    return assets

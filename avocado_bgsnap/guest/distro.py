"""Debian distribution guests, built offline (docs/guests.md).

``avocado bgsnap build-guest --distro bookworm|trixie`` makes a Debian 12 or
13 guest with systemd from Debian's packages; the guest itself never needs a
network:

1. ``debootstrap --variant=minbase`` with :data:`INCLUDE` (systemd as init,
   udev, Debian's generic kernel) into a directory of the cache, configured
   by writing files (:func:`config_files`: root's password for the normal
   serial login on ttyS0, fstab, hostname, no bracketed paste), root's
   password set with ``chpasswd`` in the tree, the initramfs rebuilt with
   only what the boot needs (virtio-blk, ext4: ``MODULES=list``);
2. the workload ``bgsnap-wl`` copied to ``/usr/local/bin``;
3. an ext4 image made without mounting (``mkfs.ext4 -d``), converted to
   qcow2 (``qemu-img convert``);
4. the kernel and initrd copied out, booted directly (``-kernel/-initrd``,
   ``root=/dev/vda`` on virtio-blk), no bootloader.

Everything lives in ``<guest cache>/<name>/`` (:func:`guest_dir`) under
names holding the digest of its inputs (:func:`tree_digest`,
:func:`image_digest`), with stable links ``vmlinuz``, ``initrd.img``,
``root.qcow2`` for the cfg (cfg/guests.cfg); a change of any input rebuilds
what depends on it, and only that (a new workload binary: a new image from
the same tree).  The kernel's settings stay Debian's (THP ``always``).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from . import delivery

MIRROR = "http://deb.debian.org/debian"
INCLUDE = ("systemd-sysv", "udev", "linux-image-amd64")
ROOT_PASSWORD = "bgsnap"
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")
# apt's timers would reach for a network the guest does not have
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
# free space left in the root file system (the guest writes to /tmp, /var)
FREE_MIB = 512
# bumped when the build's steps change in a way the inputs do not show
RECIPE = 1
DEBOOTSTRAP_TIMEOUT = 1800
DELIVERY_DISK = "bgsnap-wl-disk.raw"   # in the guest cache (cfg/guests.cfg)


class DistroBuildError(Exception):
    """A distro guest could not be built; the message says what failed."""


@dataclasses.dataclass(frozen=True)
class Distro:
    suite: str       # Debian's code name, debootstrap's argument
    name: str        # the cfg variant and the cache folder
    version: int


DISTROS = {d.suite: d for d in (Distro("bookworm", "debian12", 12),
                                Distro("trixie", "debian13", 13))}


def distro(suite: str) -> Distro:
    """The distro of ``--distro``; a clear error for an unknown one."""
    try:
        return DISTROS[suite]
    except KeyError:
        raise DistroBuildError(f"--distro {suite!r}: expected one of "
                               f"{', '.join(DISTROS)}") from None


@dataclasses.dataclass(frozen=True)
class DistroGuest:
    """A built guest: what the cfg points at (the stable links)."""

    distro: Distro
    kernel: Path
    initrd: Path
    image: Path
    kernel_version: str
    digest: str

    def to_dict(self) -> dict:
        return {"distro": self.distro.suite, "name": self.distro.name,
                "kernel": str(self.kernel), "initrd": str(self.initrd),
                "image": str(self.image), "kernel_version": self.kernel_version,
                "digest": self.digest}


def guest_dir(cache_dir: Path, d: Distro) -> Path:
    return cache_dir / d.name


def config_files(d: Distro) -> dict[str, str]:
    """The files written into the tree (path in the guest -> content)."""
    hostname = f"bgsnap-{d.name}"
    return {
        "/etc/hostname": hostname + "\n",
        "/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n",
        "/etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 0\n",
        # the journal in RAM: a restored guest's disk is the base image (the
        # source's writes went to its own temporary overlay)
        "/etc/systemd/journald.conf.d/bgsnap.conf": "[Journal]\nStorage=volatile\n",
        "/etc/initramfs-tools/conf.d/bgsnap.conf": "MODULES=list\n",
        "/etc/initramfs-tools/modules": "".join(m + "\n" for m in INITRAMFS_MODULES),
    }


# appended to /etc/inputrc: bash 5.1+ brackets every prompt with
# ESC[?2004h/l, noise for the host's prompt matching on the serial console
INPUTRC_LINE = "set enable-bracketed-paste off\n"


def tree_digest(d: Distro, mirror: str = MIRROR) -> str:
    """Every input of the debootstrapped, configured tree."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"suite": d.suite, "mirror": mirror, "include": INCLUDE,
                              "variant": "minbase", "password": ROOT_PASSWORD,
                              "files": config_files(d), "inputrc": INPUTRC_LINE,
                              "masked": MASKED_UNITS, "recipe": RECIPE},
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]


def image_digest(tree: str, wl_binary: Path) -> str:
    """The tree's digest and the workload binary's bytes."""
    digest = hashlib.sha256()
    digest.update(f"{tree} free={FREE_MIB}\0".encode())
    digest.update(wl_binary.read_bytes())
    return digest.hexdigest()[:16]


def image_mib(tree_bytes: int) -> int:
    """The ext4 file system's size: the tree, 25 % for metadata, free space."""
    return -(-tree_bytes * 5 // 4 // (1 << 20)) + FREE_MIB


def kernel_params() -> str:
    """The guest's command line (also in cfg/guests.cfg)."""
    return "console=ttyS0 root=/dev/vda rw quiet loglevel=1 systemd.show_status=0 panic=-1"


def _run(cmd: list[str], what: str, timeout: float = 600, log=None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise DistroBuildError(f"{what}: {cmd[0]} not found (scripts/setup-and-run.sh "
                               f"installs it: apt-get install debootstrap e2fsprogs "
                               f"qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise DistroBuildError(f"{what}: no result after {timeout:.0f}s: {' '.join(cmd)}") \
            from None
    if proc.returncode != 0:
        raise DistroBuildError(f"{what} failed (exit {proc.returncode}): "
                               f"{(proc.stdout + proc.stderr).strip()[-1500:]}")
    return proc.stdout


def _tool(name: str) -> str:
    for folder in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(name) if not folder else folder + name
        if path and os.access(path, os.X_OK):
            return path
    raise DistroBuildError(f"{name} not found: apt-get install debootstrap e2fsprogs qemu-utils "
                           f"(scripts/setup-and-run.sh installs them)")


def _tree_bytes(tree: Path) -> int:
    total = 0
    for root, _, files in os.walk(tree):
        for name in files:
            with_path = os.path.join(root, name)
            if not os.path.islink(with_path):
                total += os.lstat(with_path).st_size + 4096
    return total


def _write_tree_config(tree: Path, d: Distro) -> None:
    for path, text in config_files(d).items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    inputrc = tree / "etc/inputrc"
    existing = inputrc.read_text() if inputrc.exists() else ""
    if INPUTRC_LINE not in existing:
        inputrc.write_text(existing + INPUTRC_LINE)
    for unit in MASKED_UNITS:
        link = tree / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    for junk in (tree / "var/cache/apt/archives").glob("*.deb"):
        junk.unlink()
    shutil.rmtree(tree / "var/lib/apt/lists", ignore_errors=True)
    (tree / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _chroot(tree: Path, script: str, what: str) -> None:
    env_cmd = ["chroot", str(tree), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
               "sh", "-c", script]
    _run(env_cmd, what)


def build_tree(cache_dir: Path, d: Distro, log: Callable[[str], None], mirror: str = MIRROR
               ) -> Path:
    """The debootstrapped, configured tree (reused when its digest matches)."""
    gdir = guest_dir(cache_dir, d)
    tree = gdir / f"tree-{tree_digest(d, mirror)}"
    done = tree.with_name(tree.name + ".done")
    if tree.is_dir() and done.is_file():
        return tree
    if os.geteuid() != 0:
        raise DistroBuildError("building a distro guest needs root (debootstrap, chroot)")
    debootstrap = _tool("debootstrap")
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    gdir.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {d.suite} (minbase + {', '.join(INCLUDE)}) from {mirror} ...")
    started = time.monotonic()
    try:
        _run([debootstrap, "--variant=minbase", f"--include={','.join(INCLUDE)}", d.suite,
              str(partial), mirror], f"debootstrap {d.suite}", timeout=DEBOOTSTRAP_TIMEOUT)
        log(f"debootstrap {d.suite}: {time.monotonic() - started:.0f}s")
        _write_tree_config(partial, d)
        _chroot(partial, f"echo root:{ROOT_PASSWORD} | chpasswd", "chpasswd in the tree")
        _chroot(partial, "update-initramfs -u -k all", "update-initramfs in the tree")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for old in gdir.glob("tree-*"):
        if old == partial:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    os.replace(partial, tree)
    done.write_text(f"{d.suite} {mirror} {time.monotonic() - started:.0f}s\n")
    return tree


def _kernel_of(tree: Path) -> tuple[Path, Path, str]:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise DistroBuildError(f"no kernel in {tree}/boot (linux-image-amd64 not installed?)")
    kernel = kernels[-1]
    version = kernel.name[len("vmlinuz-"):]
    initrd = tree / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise DistroBuildError(f"no initramfs {initrd} for kernel {version}")
    return kernel, initrd, version


def _link(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    with_suppress_unlink(tmp)
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


def with_suppress_unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def build_image(tree: Path, wl_binary: Path, dest: Path, log: Callable[[str], None]) -> None:
    """``tree`` + the workload as an ext4 file system (mkfs.ext4 -d, no
    mount) converted to the qcow2 ``dest``."""
    mkfs, qemu_img = _tool("mkfs.ext4"), _tool("qemu-img")
    target = tree / "usr/local/bin/bgsnap-wl"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wl_binary, target)
    target.chmod(0o755)
    raw = dest.with_name(dest.name + ".raw.partial")
    part = dest.with_name(dest.name + ".partial")
    size = image_mib(_tree_bytes(tree))
    try:
        _run([mkfs, "-q", "-F", "-t", "ext4", "-L", "bgsnap-root", "-d", str(tree), str(raw),
              f"{size}M"], "mkfs.ext4 -d")
        _run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(part)],
             "qemu-img convert")
        os.replace(part, dest)
    finally:
        with_suppress_unlink(raw)
        with_suppress_unlink(part)
    log(f"root image {dest} ({size} MiB file system)")


def build_distro_guest(cache_dir: Path, suite: str, wl_binary: Path,
                       log: Callable[[str], None] = print, mirror: str = MIRROR) -> DistroGuest:
    """Build (or reuse) the guest of ``suite``; see the module's docstring."""
    d = distro(suite)
    gdir = guest_dir(cache_dir, d)
    tdigest = tree_digest(d, mirror)
    idigest = image_digest(tdigest, wl_binary)
    image = gdir / f"root-{idigest}.qcow2"
    tree = None
    if not image.is_file():
        tree = build_tree(cache_dir, d, log, mirror)
        build_image(tree, wl_binary, image, log)
    kernel_in_tree = None
    if tree is None:
        tree = gdir / f"tree-{tdigest}"
    if tree.is_dir():
        kernel_in_tree = _kernel_of(tree)
    kernel = gdir / "vmlinuz-bgsnap"
    initrd = gdir / f"initrd-{tdigest}.img"
    if kernel_in_tree is not None:
        src_kernel, src_initrd, version = kernel_in_tree
        if not initrd.is_file():
            for old in gdir.glob("initrd-*.img"):
                old.unlink()
            shutil.copyfile(src_initrd, initrd)
        shutil.copyfile(src_kernel, kernel)
        (gdir / "kernel-version").write_text(version + "\n")
    if not (kernel.is_file() and initrd.is_file()):
        raise DistroBuildError(f"{gdir}: kernel or initrd missing and no tree to take them from")
    version = (gdir / "kernel-version").read_text().strip()
    _link(gdir / "vmlinuz", kernel)
    _link(gdir / "initrd.img", initrd)
    _link(gdir / "root.qcow2", image)
    # older images only once the link names the new one (a test starting
    # meanwhile opens one or the other; a running QEMU keeps its file open)
    for old in gdir.glob("root-*.qcow2"):
        if old != image:
            old.unlink()
    guest = DistroGuest(d, gdir / "vmlinuz", gdir / "initrd.img", gdir / "root.qcow2",
                        version, idigest)
    (gdir / "guest.json").write_text(json.dumps(guest.to_dict(), indent=2) + "\n")
    return guest


def missing_guest(params) -> str | None:
    """Why the test's distro guest (``bgsnap_guest``, cfg/guests.cfg) cannot
    boot: not built yet (the command that builds it), or None."""
    name = params.get("bgsnap_guest", "busybox")
    by_name = {d.name: d for d in DISTROS.values()}
    if name not in by_name:
        return None
    files = [params.get("kernel"), params.get("initrd"),
             params.get("image_name_root", "") + ".qcow2"]
    missing = [f for f in files if not f or not Path(f).is_file()]
    if params.get("bgsnap_wl_disk") == "yes":
        disk = params.get("image_name_wl", "") + ".raw"
        if not Path(disk).is_file():
            return (f"bgsnap_wl_disk = yes: the delivery disk {disk} does not exist: run "
                    f"'avocado bgsnap build-guest'")
    if missing:
        return (f"bgsnap_guest = {name}: the guest is not built ({', '.join(map(str, missing))} "
                f"missing): run 'avocado bgsnap build-guest --distro {by_name[name].suite}' "
                f"(docs/guests.md)")
    return None


def build_wl_disk(cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The workload's delivery disk for guests without it (guest/delivery.py),
    of the cached workload binary, at the stable name ``bgsnap-wl-disk.img``."""
    from . import build as guest_build  # the cache's layout
    disk = delivery.build_disk(guest_build.workload_binary(cache_dir), cache_dir, log)
    for old in cache_dir.glob("bgsnap-wl-disk-*.img"):
        if old != disk:
            old.unlink()
    _link(cache_dir / DELIVERY_DISK, disk)
    return cache_dir / DELIVERY_DISK


def cached_distro_guest(cache_dir: Path, suite: str) -> DistroGuest | None:
    """The guest built last for ``suite``, or None."""
    d = distro(suite)
    info = guest_dir(cache_dir, d) / "guest.json"
    if not info.is_file():
        return None
    data = json.loads(info.read_text())
    guest = DistroGuest(d, Path(data["kernel"]), Path(data["initrd"]), Path(data["image"]),
                        data["kernel_version"], data["digest"])
    return guest if all(p.exists() for p in (guest.kernel, guest.initrd, guest.image)) else None

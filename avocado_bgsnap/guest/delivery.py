"""The workload in a guest the suite did not build (docs/guests.md).

A user's image (a Fedora or RHEL cloud image, an avocado-vt JeOS, or one of
the suite's Debian images treated as one) is neither modified nor given a
network: the static ``bgsnap-wl`` comes on a small read-only disk, an ext4
file system made without mounting (``mkfs.ext4 -d``), attached as a
virtio-blk drive whose serial is :data:`DISK_SERIAL`.  The first workload
command of a session finds that drive through ``/sys/block/*/serial``,
mounts it read-only (in the first writable of /run, /tmp, /dev/shm,
/var/tmp) and runs the binary from there; without such a drive the guest's
own ``/bin/bgsnap-wl`` is used.

Pure logic here: the disk's layout and digest, the shell text the guest
runs, the parsing of its answer.  :func:`build_disk` writes the image.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..wlproto import SOCKET_DIRS

DISK_SERIAL = "bgsnap-wl"
DISK_LABEL = "bgsnap-wl"
DISK_MIB = 8
BINARY_NAME = "bgsnap-wl"
GUEST_BINARIES = ("/bin/bgsnap-wl", "/usr/local/bin/bgsnap-wl")
SCRATCH_DIRS = SOCKET_DIRS      # where the mount point and the log go
MOUNT_NAME = "bgsnap-wl-disk"
LOG_NAME = "bgsnap-wl.log"
# Markers are split in the shell text ("WL""BIN="), so the echo of the
# command line never contains them: only the guest's answer does.
_BIN, _ERR, _PID = "WLBIN=", "WLERR=", "WLPID="


class DeliveryError(Exception):
    """The workload cannot be found or started in the guest: the message
    names what is missing (an ERROR, not a verdict on guest memory)."""


def _split(marker: str) -> str:
    return f'"{marker[:2]}""{marker[2:]}"'


def _scratch() -> str:
    """Shell text: $d = the first writable scratch directory ('' if none)."""
    return (f"d=; for x in {' '.join(SCRATCH_DIRS)}; do "
            "if [ -d $x ] && [ -w $x ]; then d=$x; break; fi; done")


def locate_command() -> str:
    """One line of POSIX sh: mount the delivery disk if one is attached (once
    per boot), print ``WLBIN=<path> WLERR=<reason>``."""
    return "; ".join((
        _scratch(), f"m=${{d:-/tmp}}/{MOUNT_NAME}", "wl=", "err=", "dev=",
        "for s in /sys/block/*/serial; do "
        f'if [ "$(cat $s 2>/dev/null)" = {DISK_SERIAL} ]; then b=${{s%/serial}}; '
        "dev=/dev/${b##*/}; fi; done",
        'if [ -n "$dev" ]; then '
        f"if [ ! -x $m/{BINARY_NAME} ]; then "
        'out=$(mkdir -p $m 2>&1 && mount -r $dev $m 2>&1) || err="mount -r $dev $m: $out"; fi; '
        f'[ -z "$err" ] && wl=$m/{BINARY_NAME}; '
        f'[ -z "$err" ] && [ ! -x "$wl" ] && err="no executable {BINARY_NAME} on $dev"; '
        "else "
        f"for p in {' '.join(GUEST_BINARIES)}; do if [ -x $p ]; then wl=$p; break; fi; done; fi",
        f'echo {_split(_BIN)}"$wl" {_split(_ERR)}"$err"'))


def parse_located(text: str) -> str:
    """The binary's path from :func:`locate_command`'s answer; raises
    :class:`DeliveryError` naming what is missing."""
    line = _last_line_with(text, _BIN)
    if line is None:
        raise DeliveryError(f"the guest shell did not answer the workload lookup: {text[-300:]!r}")
    head, _, err = line.partition(" " + _ERR)
    path = head[len(_BIN):].strip()
    err = err.strip()
    if err:
        raise DeliveryError(f"the workload's delivery disk (serial {DISK_SERIAL}) is attached "
                            f"but unusable: {err}")
    if not path:
        raise DeliveryError(
            f"no {BINARY_NAME} in the guest: none at {', '.join(GUEST_BINARIES)} and no delivery "
            f"disk (a virtio-blk drive with serial {DISK_SERIAL}) attached; for your own image "
            f"set bgsnap_wl_disk = yes (images/README)")
    return path


def start_command(run_command: str) -> str:
    """Shell text starting ``run_command`` in the background with its log in
    the first writable scratch directory; prints ``WLPID=<pid> <log>``."""
    log = f"${{d:-/tmp}}/{LOG_NAME}"
    return f'{_scratch()}; {run_command} >{log} 2>&1 & echo {_split(_PID)}"$! {log}"'


def parse_started(text: str) -> tuple[int, str]:
    """(pid, log path) from :func:`start_command`'s answer."""
    line = _last_line_with(text, _PID)
    try:
        pid, log = line[len(_PID):].split(None, 1)
        return int(pid), log.strip()
    except (AttributeError, ValueError):
        raise DeliveryError(f"the guest shell did not start the workload: {text[-300:]!r}") \
            from None


def _last_line_with(text: str, marker: str) -> str | None:
    found = None
    for line in text.splitlines():
        pos = line.find(marker)
        if pos >= 0:
            found = line[pos:].strip()
    return found


# -- the disk image -----------------------------------------------------------

def disk_digest(binary: Path) -> str:
    """What the disk holds (the binary's bytes) and how it is made."""
    digest = hashlib.sha256()
    digest.update(f"ext4 no-journal {DISK_MIB}MiB label={DISK_LABEL}\0".encode())
    digest.update(binary.read_bytes())
    return digest.hexdigest()[:16]


def disk_name(binary: Path) -> str:
    return f"bgsnap-wl-disk-{disk_digest(binary)}.img"


def build_disk(binary: Path, cache_dir: Path, log=print) -> Path:
    """The raw ext4 image carrying ``binary`` as /bgsnap-wl (mode 0755), in
    ``cache_dir`` under a name holding its digest; reused when it exists.
    Made without root and without mounting: ``mkfs.ext4 -d``."""
    dest = cache_dir / disk_name(binary)
    if dest.is_file():
        return dest
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    if not os.access(mkfs, os.X_OK):
        raise DeliveryError("mkfs.ext4 not found: apt-get install e2fsprogs")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bgsnap-wl-disk-", dir=cache_dir) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        shutil.copyfile(binary, root / BINARY_NAME)
        (root / BINARY_NAME).chmod(0o755)
        part = Path(tmp) / "disk.img"
        proc = subprocess.run(
            [mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", DISK_LABEL,
             "-E", "root_owner=0:0", "-d", str(root), str(part), f"{DISK_MIB}M"],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DeliveryError(f"mkfs.ext4 -d failed (exit {proc.returncode}): "
                                f"{(proc.stdout + proc.stderr).strip()[-500:]}")
        part.chmod(0o644)
        os.replace(part, dest)
    log(f"workload delivery disk: {dest}")
    return dest

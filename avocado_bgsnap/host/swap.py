"""A swap file for the length of a test, switched off and deleted after.

:func:`swap_file` makes a file (``fallocate``, ``dd`` where the filesystem
cannot), ``mkswap``, ``swapon``; leaving the block, also on an exception,
``swapoff`` and deletes it, then checks ``/proc/swaps`` no longer lists it.
What cannot be had (not root, a filesystem that refuses swap files) is
:class:`~avocado_bgsnap.host.memory.HostMemoryUnavailable` (a CANCEL); a
swap device that stays on is
:class:`~avocado_bgsnap.host.memory.HostMemoryNotRestored` (a note on the
test's own error, when it had one).

/proc paths are read below ``_root`` and commands go through ``_run`` so
unit tests can fake both.  No work at import time.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .errors import LOG, _is_root, _read_text, _undoing
from .memory import HostMemoryUnavailable, _not_restored

_root = Path("/")
SWAPS = "proc/swaps"


@dataclass(frozen=True)
class SwapDevice:
    path: str
    size_mib: int

    def to_dict(self) -> dict:
        return asdict(self)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def active_swaps() -> list[str]:
    """The swap devices/files in use (``/proc/swaps``, header dropped)."""
    lines = _read_text(_root / SWAPS).splitlines()[1:]
    return [line.split()[0] for line in lines if line.split()]


def _must(cmd: list[str], what: str) -> None:
    try:
        done = _run(cmd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostMemoryUnavailable(f"{what}: cannot run {' '.join(cmd)}: {exc}", cmd) from exc
    if done.returncode != 0:
        raise HostMemoryUnavailable(what, cmd, done.returncode, done.stderr)


def _make(path: Path, size_mib: int) -> None:
    try:
        _must(["fallocate", "-l", f"{size_mib}M", str(path)], f"cannot allocate {path}")
    except HostMemoryUnavailable:
        _must(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mib}"],
              f"cannot write {path}")
    os.chmod(path, 0o600)
    _must(["mkswap", str(path)], f"mkswap {path} failed")
    _must(["swapon", str(path)], f"swapon {path} failed (does {path.parent}'s filesystem "
                                 "take swap files?)")


@contextmanager
def swap_file(directory: Path, size_mib: int) -> Iterator[SwapDevice]:
    """A swap file of ``size_mib`` in ``directory``, on inside the block."""
    if not _is_root():
        raise HostMemoryUnavailable(f"needs root to add a {size_mib} MiB swap file "
                                    "(mkswap, swapon)")
    path = Path(directory) / f"bgsnap-swap-{os.getpid()}"
    with _undoing(lambda failure: _remove(path, failure)):
        _make(path, size_mib)
        LOG.info("swap file %s (%d MiB) on", path, size_mib)
        yield SwapDevice(str(path), size_mib)


def _remove(path: Path, failure: BaseException | None) -> None:
    if str(path) in active_swaps():
        try:
            done = _run(["swapoff", str(path)])
            stderr = done.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            stderr = str(exc)
        if str(path) in active_swaps():
            _not_restored(f"swap file {path} is still on after swapoff: "
                          f"{' '.join(stderr.split())}", failure)
            return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        _not_restored(f"cannot delete swap file {path}: {exc}", failure)

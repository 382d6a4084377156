"""KSM (kernel samepage merging): its counters, and its knobs given back.

:func:`ksm_control` snapshots ``run``, ``pages_to_scan`` and
``sleep_millisecs`` of ``/sys/kernel/mm/ksm``; inside the block
:meth:`KsmControl.start` runs ``ksmd`` with faster knobs and
:meth:`KsmControl.stop` stops it.  Leaving the block, also on an exception,
unmerges what KSM merged when it had been off (``run = 2``: every process's
pages back to private copies, as before the test), then writes every knob
back and checks it took.  Per process, :func:`process_ksm` reads
``/proc/PID/ksm_stat``.

Paths are read below ``_root`` (unit tests point it at a fake tree).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LOG, _errno_text, _is_root, _read_text, _undoing
from .memory import HostMemoryUnavailable, _not_restored

_root = Path("/")
KSM_DIR = "sys/kernel/mm/ksm"
KNOBS = ("run", "pages_to_scan", "sleep_millisecs")
COUNTERS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
            "full_scans", "pages_scanned", "ksm_zero_pages")


def _file(name: str) -> Path:
    return _root / KSM_DIR / name


def _read(name: str) -> int | None:
    try:
        return int(_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write(name: str, value: int) -> None:
    with open(_file(name), "w") as handle:
        handle.write(str(value))


def available() -> bool:
    return _file("run").exists()


def counters() -> dict[str, int | None]:
    """KSM's host-wide counters now."""
    return {name: _read(name) for name in COUNTERS}


def process_ksm(pid: int) -> dict[str, int]:
    """``/proc/PID/ksm_stat``: ksm_rmap_items, ksm_merging_pages, ... (empty: unreadable)."""
    found = {}
    for line in _read_text(_root / "proc" / str(pid) / "ksm_stat").splitlines():
        key, _, value = line.partition(" ")
        try:
            found[key] = int(value.split()[0])
        except (ValueError, IndexError):
            pass
    return found


class KsmControl:
    """Start and stop ksmd inside :func:`ksm_control`."""

    def __init__(self, original: dict[str, int]):
        self.original = original
        self.started = False

    def start(self, pages_to_scan: int, sleep_millisecs: int) -> None:
        self.started = True
        _write("pages_to_scan", pages_to_scan)
        _write("sleep_millisecs", sleep_millisecs)
        _write("run", 1)
        LOG.info("ksm: run 1, pages_to_scan %d, sleep_millisecs %d", pages_to_scan,
                 sleep_millisecs)

    def stop(self) -> None:
        _write("run", self.original["run"] if self.original["run"] != 1 else 0)


@contextmanager
def ksm_control() -> Iterator[KsmControl]:
    """KSM's knobs as they are now, written back on leaving."""
    if not available():
        raise HostMemoryUnavailable(f"no KSM on this kernel ({_file('run')} missing)")
    if not _is_root() or not os.access(_file("run"), os.W_OK):
        raise HostMemoryUnavailable(f"needs root to run KSM (cannot write {_file('run')})")
    original = {name: _read(name) for name in KNOBS}
    if None in original.values():
        raise HostMemoryUnavailable(f"cannot read KSM's knobs: {original}")
    control = KsmControl(original)
    def put_back(failure: BaseException | None) -> None:
        if control.started:
            _restore(original, failure)

    with _undoing(put_back):
        yield control


def _restore(original: dict[str, int], failure: BaseException | None) -> None:
    try:
        if original["run"] == 0 and (_read("pages_sharing") or _read("pages_shared")):
            _write("run", 2)      # unmerge: every merged page private again
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            _write(name, original[name])
    except OSError as exc:
        _not_restored(f"cannot put KSM back to {original}: {_errno_text(exc.errno or 0)}",
                      failure)
        return
    now = {name: _read(name) for name in KNOBS}
    if now != original:
        _not_restored(f"KSM knobs are {now} after the test, were {original}", failure)
    else:
        LOG.info("ksm: back to %s", original)

"""Accelerator: KVM probe, forced choice, cache.

:func:`probe_kvm` checks whether KVM really runs a guest: a nested or
sandboxed ``/dev/kvm`` can open fine and still hang every guest, so the
probe boots the suite's guest to its ready marker with a short timeout.
No work at import time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import LOG, _errno_text, _read_text, _stop, _tail
from .qemu import QemuInfo

KVM_DEVICE = "/dev/kvm"
ACCELERATORS = ("kvm", "tcg")


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator tests use, and why."""

    accel: str                  # "kvm" | "tcg"
    reason: str
    probe_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"accel": self.accel, "reason": self.reason,
                "probe_seconds": round(self.probe_seconds, 3)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AccelChoice":
        accel = data["accel"]
        if accel not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {accel!r}")
        return cls(accel=accel, reason=str(data["reason"]),
                   probe_seconds=float(data.get("probe_seconds", 0.0)))


def _kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot be used, or None when it opens read-write."""
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} missing (no KVM module, or not exposed to this host/container)"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        hint = ": add the user to group 'kvm'" if exc.errno == errno.EACCES else ""
        return f"{KVM_DEVICE} cannot be opened read-write: {_errno_text(exc.errno or 0)}{hint}"
    os.close(fd)
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def probe_kvm(qemu: QemuInfo, kernel: str, initrd: str, marker: str, timeout: float = 20.0,
              cpu_model: str | None = None, name: str | None = None) -> AccelChoice:
    """Boot ``kernel``+``initrd`` under KVM until ``marker`` shows on the serial port.

    KVM when the guest gets there within ``timeout`` seconds; TCG (with the
    reason) when /dev/kvm is unusable, QEMU exits early or the guest is too
    slow -- a sandboxed nested KVM opens fine and then hangs the guest.
    ``name`` (``-name``) defaults to a unique ``bgsnap-probe-<hex>``.
    The QEMU process and the temporary files never outlive the call.
    """
    timeout = 20.0 if timeout is None else float(timeout)
    started = time.monotonic()

    def tcg(reason: str) -> AccelChoice:
        return AccelChoice("tcg", reason, time.monotonic() - started)

    problem = _kvm_device_problem()
    if problem:
        return tcg(problem)
    if not marker:
        raise ValueError("probe_kvm needs a non-empty marker")
    workdir = Path(tempfile.mkdtemp(prefix="bgsnap-kvm-probe-"))
    serial = workdir / "serial.log"
    stderr_path = workdir / "qemu-stderr.log"
    command = [qemu.binary, *qemu.extra_args, "-name", name or f"bgsnap-probe-{uuid.uuid4().hex}",
               "-accel", "kvm", "-m", "256", "-smp", "1", "-nodefaults", "-display", "none",
               "-serial", f"file:{serial}", "-kernel", str(kernel), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1", "-no-reboot"]
    if cpu_model:
        command += ["-cpu", cpu_model]
    needle = marker.encode()
    proc = None
    try:
        serial.touch()
        with open(stderr_path, "wb") as stderr_file:
            try:
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=stderr_file,
                                        env=dict(qemu.env) if qemu.env is not None else None,
                                        close_fds=True)
            except OSError as exc:
                return tcg(f"cannot run {qemu.binary} for the KVM probe: {exc}")
        offset, carry = 0, b""
        deadline = started + timeout
        with open(serial, "rb") as out:
            while True:
                out.seek(offset)
                chunk = out.read()
                offset += len(chunk)
                if needle in carry + chunk:
                    return AccelChoice("kvm", f"guest reached its ready marker under KVM in "
                                       f"{time.monotonic() - started:.1f}s",
                                       time.monotonic() - started)
                carry = (carry + chunk)[-(len(needle) - 1):] if len(needle) > 1 else b""
                status = proc.poll()
                if status is not None:
                    # Read whatever QEMU wrote last before judging.
                    out.seek(offset)
                    if needle in carry + out.read():
                        return AccelChoice("kvm", "guest reached its ready marker under KVM",
                                           time.monotonic() - started)
                    err = _tail(_read_text(stderr_path), 600)
                    last = _last_line(_read_text(serial))
                    reason = f"QEMU exited with status {status} during the KVM probe"
                    if err:
                        reason += f": {err}"
                    if last:
                        reason += f" (last serial line: {last!r})"
                    return tcg(reason)
                if time.monotonic() >= deadline:
                    last = _last_line(_read_text(serial))
                    reason = (f"guest did not reach marker within {timeout:g}s under KVM "
                              "(nested/sandboxed KVM?)")
                    if last:
                        reason += f"; last serial line: {last!r}"
                    return tcg(reason)
                time.sleep(0.05)
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def resolve_accelerator(requested: str, probe: Callable[[], AccelChoice]) -> AccelChoice:
    """``kvm``/``tcg`` are taken as given; ``auto`` asks ``probe``."""
    choice = (requested or "").strip().lower()
    if choice in ACCELERATORS:
        return AccelChoice(choice, "forced by cfg", 0.0)
    if choice == "auto":
        return probe()
    raise ValueError(f"accelerator must be auto, kvm or tcg, not {requested!r}")


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def accel_cache_key(qemu: QemuInfo, kernel: str, initrd: str, cpu_model: str | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
    """Everything that can change a KVM probe's outcome: any change re-probes."""
    key = {
        "qemu_binary": qemu.binary,
        "qemu_mtime_ns": _mtime_ns(qemu.binary),
        "qemu_version": qemu.version_text,
        "qemu_extra_args": list(qemu.extra_args),
        "host_kernel": os.uname().release,
        "kernel": str(kernel),
        "kernel_mtime_ns": _mtime_ns(str(kernel)),
        "initrd": str(initrd),
        "initrd_mtime_ns": _mtime_ns(str(initrd)),
        "kvm_device": os.path.exists(KVM_DEVICE),
        "cpu_model": cpu_model,
    }
    if timeout is not None:
        key["timeout"] = float(timeout)
    return key


def _normalized(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


# Every probe outcome is kept, one entry per key (a QEMU build, a guest, a
# host kernel, a timeout), the newest CACHE_ENTRIES: alternating builds or
# guests in one job must not re-probe each time (a KVM probe that hangs
# costs its whole timeout).
CACHE_ENTRIES = 64


def _entries(cache_file: Path) -> list[dict]:
    """The cache's entries; a cache of the old one-entry format is one entry."""
    try:
        data = json.loads(Path(cache_file).read_text())
    except (OSError, ValueError):
        return []
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        return [e for e in data["entries"] if isinstance(e, dict)]
    if isinstance(data, dict) and "key" in data:
        return [data]
    return []


def load_cached_accel(cache_file: Path | str, key: Mapping[str, Any]) -> AccelChoice | None:
    """The cached choice for exactly ``key``; None on a miss or an unreadable cache."""
    wanted = _normalized(key)
    for entry in _entries(Path(cache_file)):
        try:
            if _normalized(entry["key"]) == wanted:
                return AccelChoice.from_dict(entry["choice"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def save_cached_accel(cache_file: Path | str, key: Mapping[str, Any], choice: AccelChoice) -> bool:
    """Store ``choice`` for ``key`` beside the other keys' entries, atomically
    (under a lock: tests of a parallel job probe at the same time); False
    (logged) if the cache cannot be written."""
    cache_file = Path(cache_file)
    entry = {"key": json.loads(_normalized(key)), "choice": choice.to_dict(),
             "saved_at": time.time()}
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_file.with_name(cache_file.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            wanted = _normalized(key)
            kept = [e for e in _entries(cache_file)
                    if _normalized(e.get("key")) != wanted][-(CACHE_ENTRIES - 1):]
            with tempfile.NamedTemporaryFile("w", dir=cache_file.parent,
                                             prefix=cache_file.name + ".", suffix=".tmp",
                                             delete=False) as handle:
                tmp = handle.name
                json.dump({"entries": kept + [entry]}, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, cache_file)
            tmp = None
        return True
    except OSError as exc:
        LOG.warning("cannot write accelerator cache %s: %s", cache_file, exc)
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass

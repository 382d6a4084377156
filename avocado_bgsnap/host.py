"""Host facts a background snapshot depends on, read at run time.

* :func:`probe_qemu` -- QEMU version and migration capabilities, asked over
  QMP from a throw-away ``-machine none`` process (works on 7.2 and 10.x);
* :func:`probe_uffd` -- the userfaultfd features the host kernel offers
  (``UFFD_FEATURE_PAGEFAULT_FLAG_WP`` is what background-snapshot needs);
* :func:`probe_kvm` -- whether KVM really runs a guest: a nested or
  sandboxed ``/dev/kvm`` can open fine and still hang every guest, so the
  probe boots the suite's guest to its ready marker with a short timeout;
* :class:`HostFacts` -- all of the above plus kernel/CPU/memory, with
  :meth:`HostFacts.problems` naming any missing prerequisite.

Pure standard library, no Avocado imports and no work at import time.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import select
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

LOG = logging.getLogger(__name__)

DEFAULT_QEMU = "qemu-system-x86_64"
BACKGROUND_SNAPSHOT = "background-snapshot"
# QAPI: ``file:`` migration URI "since 8.2".
FILE_URI_SINCE = (8, 2, 0)
# util/userfaultfd.c: QEMU opens /dev/userfaultfd (when it may) since 8.0;
# before that, and as fallback, the userfaultfd syscall -- never with
# UFFD_USER_MODE_ONLY.
UFFD_DEV_SINCE = (8, 0, 0)
KVM_DEVICE = "/dev/kvm"
UFFD_DEVICE = "/dev/userfaultfd"
STDERR_TAIL = 1500


class HostCheckError(Exception):
    """A host probe failed; ``command``/``returncode``/``stderr`` say how."""

    def __init__(self, message: str, command: Iterable[str] | None = None,
                 returncode: int | None = None, stderr: str = ""):
        self.message = message
        self.command = list(command) if command is not None else None
        self.returncode = returncode
        self.stderr = stderr or ""
        text = message
        tail = _tail(self.stderr)
        if tail:
            text = f"{message}; stderr: {tail}"
        super().__init__(text)


def _tail(text: str, limit: int = STDERR_TAIL) -> str:
    """The end of ``text`` on one line (lines joined with `` | ``)."""
    text = " | ".join(line.strip() for line in (text or "").splitlines() if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------
# QEMU: version and migration capabilities
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class QemuInfo:
    """What one QEMU binary is and which migration capabilities it has."""

    binary: str
    version: tuple[int, int, int]
    version_text: str
    migration_capabilities: frozenset[str]
    # How to run this binary (a side-by-side build needs ``-L DIR`` and an
    # environment with QEMU_MODULE_DIR); probe_kvm reuses both.
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def has_capability(self, name: str) -> bool:
        return name in self.migration_capabilities

    @property
    def supports_background_snapshot(self) -> bool:
        return self.has_capability(BACKGROUND_SNAPSHOT)

    @property
    def supports_file_uri(self) -> bool:
        """``migrate`` to ``file:PATH`` (QEMU 8.2+)."""
        return tuple(self.version) >= FILE_URI_SINCE

    @property
    def supports_mapped_ram(self) -> bool:
        return self.has_capability("mapped-ram")

    def to_dict(self) -> dict[str, Any]:
        return {
            "binary": self.binary,
            "version": list(self.version),
            "version_text": self.version_text,
            "migration_capabilities": sorted(self.migration_capabilities),
            "background_snapshot": self.supports_background_snapshot,
            "file_uri": self.supports_file_uri,
            "mapped_ram": self.supports_mapped_ram,
            "extra_args": list(self.extra_args),
        }


def parse_qmp_version(reply: Mapping[str, Any]) -> tuple[int, int, int]:
    """(major, minor, micro) from a ``query-version`` reply.

    Accepts the whole reply (``{"return": {...}}``), its payload
    (``{"qemu": {...}, "package": ...}``) or the QMP greeting.
    """
    payload = _version_payload(reply)
    try:
        qemu = payload["qemu"]
        return (int(qemu["major"]), int(qemu["minor"]), int(qemu["micro"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a QMP version reply: {reply!r}") from exc


def parse_qmp_version_text(reply: Mapping[str, Any]) -> str:
    """``"7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"``, like ``--version``."""
    major, minor, micro = parse_qmp_version(reply)
    package = str(_version_payload(reply).get("package") or "").strip()
    text = f"{major}.{minor}.{micro}"
    return f"{text} ({package})" if package else text


def _version_payload(reply: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(reply, Mapping):
        raise ValueError(f"not a QMP version reply: {reply!r}")
    if "return" in reply:
        reply = reply["return"]
    elif "QMP" in reply:
        reply = reply["QMP"].get("version", {})
    if not isinstance(reply, Mapping):
        raise ValueError(f"not a QMP version reply: {reply!r}")
    return reply


def parse_migrate_capabilities(reply: Any) -> frozenset[str]:
    """Capability names from a ``query-migrate-capabilities`` reply (or its list)."""
    items = reply.get("return") if isinstance(reply, Mapping) else reply
    if not isinstance(items, list):
        raise ValueError(f"not a query-migrate-capabilities reply: {reply!r}")
    names = set()
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("capability"), str):
            raise ValueError(f"bad migration capability entry: {item!r}")
        names.add(item["capability"])
    return frozenset(names)


def find_qemu_binary(binary: str | None = None) -> str:
    """Absolute path of ``binary`` (a path or a name on PATH; default qemu-system-x86_64)."""
    name = binary or DEFAULT_QEMU
    if os.sep in name:
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise HostCheckError(f"QEMU binary {path} does not exist")
        if not os.access(path, os.X_OK):
            raise HostCheckError(f"QEMU binary {path} is not executable")
        return path
    found = shutil.which(name)
    if not found:
        raise HostCheckError(
            f"{name} not found on PATH: install QEMU (Debian: apt-get install qemu-system-x86) "
            "or set the QEMU binary explicitly")
    return os.path.abspath(found)


class _QmpPipe:
    """QMP over a child's stdin/stdout, one JSON object a line, with deadlines."""

    def __init__(self, proc: subprocess.Popen, command: list[str], stderr_file, deadline: float):
        self.proc = proc
        self.command = command
        self.stderr_file = stderr_file
        self.deadline = deadline
        self.timeout = 0.0
        self._buffer = b""
        self._next_id = 0

    def stderr(self) -> str:
        try:
            self.stderr_file.flush()
            self.stderr_file.seek(0)
            return self.stderr_file.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def error(self, message: str) -> HostCheckError:
        return HostCheckError(message, self.command, self.proc.poll(), self.stderr())

    def read_message(self, step: str) -> dict:
        while b"\n" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self.error(f"{self.command[0]} did not answer QMP ({step}) "
                                 f"within {self.timeout:g}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                try:
                    self.proc.wait(timeout=max(0.1, min(2.0, self.deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
                status = self.proc.poll()
                how = f"exited with status {status}" if status is not None else "closed its stdout"
                raise self.error(f"{self.command[0]} {how} before answering QMP ({step}): "
                                 "is it QEMU?")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode(errors="replace").strip()
        if not text:
            return self.read_message(step)
        try:
            message = json.loads(text)
        except ValueError:
            raise self.error(f"{self.command[0]} printed {text[:200]!r} instead of QMP "
                             f"({step}): is it QEMU?") from None
        if not isinstance(message, dict):
            raise self.error(f"unexpected QMP message ({step}): {text[:200]!r}")
        return message

    def greeting(self) -> dict:
        message = self.read_message("greeting")
        if "QMP" not in message:
            raise self.error(f"no QMP greeting from {self.command[0]}: {message!r}")
        return message

    def execute(self, name: str) -> Any:
        self._next_id += 1
        ident = f"bgsnap-{self._next_id}"
        data = json.dumps({"execute": name, "id": ident}).encode() + b"\n"
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self.error(f"cannot send {name} to {self.command[0]}: {exc}") from exc
        while True:
            message = self.read_message(name)
            if "event" in message or message.get("id") != ident:
                continue
            if "error" in message:
                err = message["error"]
                raise self.error(f"QMP {name} failed: {err.get('class')}: {err.get('desc')}")
            return message.get("return")


def _stop(proc: subprocess.Popen | None, grace: float = 0.0) -> None:
    """Make sure ``proc`` is gone and reaped."""
    if proc is None:
        return
    if grace > 0:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
        LOG.warning("process %s did not exit after SIGKILL", proc.pid)


def probe_qemu(binary: str | None = None, timeout: float = 20,
               extra_args: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> QemuInfo:
    """Ask ``binary`` (default: qemu-system-x86_64 on PATH) for version and capabilities.

    Runs ``-machine none`` with QMP on stdio; the process never outlives
    this call.  Raises :class:`HostCheckError` (with QEMU's stderr) when
    the binary is missing, is not QEMU, fails or does not answer in time.
    """
    path = find_qemu_binary(binary)
    extra_args = tuple(extra_args)
    # Repeated -accel options are tried in order: TCG where built (no vCPU
    # runs with -machine none anyway), KVM for TCG-less builds (RHEL).
    command = [path, *extra_args, "-machine", "none", "-nodefaults", "-display", "none",
               "-accel", "tcg", "-accel", "kvm",
               "-name", f"bgsnap-qemu-probe-{uuid.uuid4().hex[:12]}", "-qmp", "stdio"]
    proc, grace = None, 0.0
    with tempfile.TemporaryFile() as stderr_file:
        try:
            try:
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=stderr_file,
                                        env=dict(env) if env is not None else None, close_fds=True)
            except OSError as exc:
                raise HostCheckError(f"cannot run {path}: {exc}", command) from exc
            qmp = _QmpPipe(proc, command, stderr_file, time.monotonic() + timeout)
            qmp.timeout = timeout
            qmp.greeting()
            qmp.execute("qmp_capabilities")
            version_reply = qmp.execute("query-version")
            caps_reply = qmp.execute("query-migrate-capabilities")
            try:
                version = parse_qmp_version({"return": version_reply})
                version_text = parse_qmp_version_text({"return": version_reply})
                caps = parse_migrate_capabilities(caps_reply)
            except ValueError as exc:
                raise qmp.error(str(exc)) from exc
            try:
                qmp.execute("quit")
                grace = 2.0
            except HostCheckError:
                pass  # it may close stdout before answering; _stop reaps it
        except HostCheckError as exc:
            if proc is None:
                raise
            # Stop first so that the error carries all QEMU wrote to stderr.
            _stop(proc)
            raise HostCheckError(exc.message, command, proc.returncode, qmp.stderr()) from exc
        finally:
            _stop(proc, grace)
    return QemuInfo(binary=path, version=version, version_text=version_text,
                    migration_capabilities=caps, extra_args=extra_args,
                    env=dict(env) if env is not None else None)


# --------------------------------------------------------------------------
# userfaultfd
# --------------------------------------------------------------------------

# include/uapi/linux/userfaultfd.h, by bit number; Debian 12's header stops
# at 12, newer bits are defined by value here.
UFFD_FEATURE_BITS: dict[str, int] = {
    "PAGEFAULT_FLAG_WP": 0,
    "EVENT_FORK": 1,
    "EVENT_REMAP": 2,
    "EVENT_REMOVE": 3,
    "MISSING_HUGETLBFS": 4,
    "MISSING_SHMEM": 5,
    "EVENT_UNMAP": 6,
    "SIGBUS": 7,
    "THREAD_ID": 8,
    "MINOR_HUGETLBFS": 9,
    "MINOR_SHMEM": 10,
    "EXACT_ADDRESS": 11,
    "WP_HUGETLBFS_SHMEM": 12,
    "WP_UNPOPULATED": 13,
    "POISON": 14,
    "WP_ASYNC": 15,
    "MOVE": 16,
}
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << UFFD_FEATURE_BITS["PAGEFAULT_FLAG_WP"]
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << UFFD_FEATURE_BITS["WP_HUGETLBFS_SHMEM"]
UFFD_FEATURE_WP_UNPOPULATED = 1 << UFFD_FEATURE_BITS["WP_UNPOPULATED"]
UFFD_FEATURE_WP_ASYNC = 1 << UFFD_FEATURE_BITS["WP_ASYNC"]

UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1
UFFDIO_API = 0xC018AA3F            # _IOWR(0xAA, 0x3F, struct uffdio_api)
USERFAULTFD_IOC_NEW = 0xAA00       # _IO(0xAA, 0x00), on /dev/userfaultfd
USERFAULTFD_SYSCALL = {"x86_64": 323, "aarch64": 282}

# How the probe obtained its descriptor (QEMU never passes UFFD_USER_MODE_ONLY).
UFFD_MODE_SYSCALL = "syscall"
UFFD_MODE_DEVICE = "dev"
UFFD_MODE_USER_ONLY = "user-mode-only"


def uffd_feature_names(features: int) -> list[str]:
    """Names of the bits set in ``features`` (unknown bits as ``BIT<n>``)."""
    by_bit = {bit: name for name, bit in UFFD_FEATURE_BITS.items()}
    return [by_bit.get(bit, f"BIT{bit}") for bit in range(max(features.bit_length(), 0))
            if features >> bit & 1]


@dataclass(frozen=True)
class UffdInfo:
    """userfaultfd as the host kernel offers it to this process."""

    available: bool
    features: int = 0
    reason: str = ""
    # UFFD_MODE_*: "syscall" is what every QEMU can use.
    open_mode: str = ""

    @property
    def wp(self) -> bool:
        return bool(self.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)

    @property
    def wp_hugetlbfs_shmem(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

    @property
    def wp_unpopulated(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_UNPOPULATED)

    @property
    def wp_async(self) -> bool:
        return bool(self.features & UFFD_FEATURE_WP_ASYNC)

    def feature_names(self) -> list[str]:
        return uffd_feature_names(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "features": hex(self.features),
            "feature_names": self.feature_names(),
            "wp": self.wp,
            "wp_hugetlbfs_shmem": self.wp_hugetlbfs_shmem,
            "reason": self.reason,
            "open_mode": self.open_mode,
        }


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _unprivileged_uffd_setting() -> str:
    try:
        return Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip()
    except OSError:
        return "?"


def probe_uffd() -> UffdInfo:
    """Open a userfaultfd, read the features the kernel reports, close it.

    Tries what QEMU can use first (the syscall, then ``/dev/userfaultfd``),
    then ``UFFD_USER_MODE_ONLY`` only to report the kernel's features.
    Never raises: a failure is ``available=False`` with the reason.
    """
    if os.uname().sysname != "Linux":
        return UffdInfo(False, reason=f"userfaultfd is Linux-only (host: {os.uname().sysname})")
    machine = os.uname().machine
    nr = USERFAULTFD_SYSCALL.get(machine)
    if nr is None:
        return UffdInfo(False, reason=f"userfaultfd syscall number unknown for {machine}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        return UffdInfo(False, reason=f"cannot load libc: {exc}")
    flags = os.O_CLOEXEC | os.O_NONBLOCK

    def via_syscall(extra: int) -> tuple[int, int]:
        fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(flags | extra))
        return fd, (ctypes.get_errno() if fd < 0 else 0)

    def via_device() -> tuple[int, int]:
        try:
            dev = os.open(UFFD_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return -1, exc.errno or errno.EIO
        try:
            fd = libc.ioctl(ctypes.c_int(dev), ctypes.c_ulong(USERFAULTFD_IOC_NEW),
                            ctypes.c_ulong(flags))
            return fd, (ctypes.get_errno() if fd < 0 else 0)
        finally:
            os.close(dev)

    failures = []
    fd, mode = -1, ""
    for mode, opener in ((UFFD_MODE_SYSCALL, lambda: via_syscall(0)),
                         (UFFD_MODE_DEVICE, via_device),
                         (UFFD_MODE_USER_ONLY, lambda: via_syscall(UFFD_USER_MODE_ONLY))):
        fd, err = opener()
        if fd >= 0:
            break
        failures.append((mode, err))
        if mode == UFFD_MODE_SYSCALL and err != errno.EPERM:
            break  # ENOSYS etc.: other ways will not help
    if fd < 0:
        mode_text = "; ".join(f"{m}: {_errno_text(e)}" for m, e in failures)
        reason = f"userfaultfd cannot be opened ({mode_text})"
        if failures and failures[0][1] == errno.ENOSYS:
            reason += ": kernel built without CONFIG_USERFAULTFD"
        elif any(e == errno.EPERM for _, e in failures):
            reason += (f": vm.unprivileged_userfaultfd={_unprivileged_uffd_setting()}; run as "
                       "root (CAP_SYS_PTRACE), set sysctl vm.unprivileged_userfaultfd=1, or "
                       f"grant access to {UFFD_DEVICE}")
        return UffdInfo(False, reason=reason)
    try:
        api = _UffdioApi(api=UFFD_API, features=0, ioctls=0)
        if libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(UFFDIO_API), ctypes.byref(api)) != 0:
            err = ctypes.get_errno()
            return UffdInfo(False, reason=f"UFFDIO_API failed: {_errno_text(err)}",
                            open_mode=mode)
        reason = ""
        if failures:
            reason = "opened via " + mode + " after " + "; ".join(
                f"{m}: {_errno_text(e)}" for m, e in failures)
        return UffdInfo(True, features=int(api.features), reason=reason, open_mode=mode)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Accelerator: KVM probe, forced choice, cache
# --------------------------------------------------------------------------

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


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


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


def load_cached_accel(cache_file: Path | str, key: Mapping[str, Any]) -> AccelChoice | None:
    """The cached choice for exactly ``key``; None on a miss or an unreadable cache."""
    try:
        data = json.loads(Path(cache_file).read_text())
        if _normalized(data["key"]) != _normalized(key):
            return None
        return AccelChoice.from_dict(data["choice"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_cached_accel(cache_file: Path | str, key: Mapping[str, Any], choice: AccelChoice) -> bool:
    """Store ``choice`` for ``key`` atomically; False (logged) if the cache cannot be written."""
    cache_file = Path(cache_file)
    data = {"key": json.loads(_normalized(key)), "choice": choice.to_dict(),
            "saved_at": time.time()}
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, prefix=cache_file.name + ".",
                                         suffix=".tmp", delete=False) as handle:
            tmp = handle.name
            json.dump(data, handle, indent=2, sort_keys=True)
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


# --------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------

def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` in KiB from /proc/meminfo text."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1])
            except (IndexError, ValueError):
                return None
    return None


@dataclass(frozen=True)
class HostFacts:
    """What this host offers a background snapshot."""

    qemu: QemuInfo
    uffd: UffdInfo
    accel: AccelChoice | None
    kernel_release: str
    cpu_count: int
    mem_total_kib: int | None

    def problems(self) -> list[str]:
        """Missing prerequisites, each a message that says what to do."""
        found = []
        if not self.qemu.supports_background_snapshot:
            found.append(f"QEMU {self.qemu.version_text} ({self.qemu.binary}) lacks the "
                         f"migration capability '{BACKGROUND_SNAPSHOT}' (QEMU 6.0+ needed)")
        if not self.uffd.available:
            found.append(f"userfaultfd unavailable: {self.uffd.reason}")
        elif not self.uffd.wp:
            found.append(f"host kernel {self.kernel_release}: userfaultfd lacks "
                         "UFFD_FEATURE_PAGEFAULT_FLAG_WP (write-protect), which "
                         "background-snapshot needs: Linux 5.7+ needed")
        elif self.uffd.open_mode == UFFD_MODE_USER_ONLY:
            found.append("userfaultfd opens only with UFFD_USER_MODE_ONLY "
                         f"(vm.unprivileged_userfaultfd=0 for this user); QEMU opens it "
                         "without that flag and refuses background-snapshot ('not supported by "
                         "host kernel'): run as root, "
                         "set sysctl vm.unprivileged_userfaultfd=1, or (QEMU 8.0+) grant "
                         f"access to {UFFD_DEVICE}")
        elif (self.uffd.open_mode == UFFD_MODE_DEVICE
              and tuple(self.qemu.version) < UFFD_DEV_SINCE):
            found.append(f"userfaultfd is reachable only through {UFFD_DEVICE}, which QEMU "
                         f"{self.qemu.version_text} does not use (8.0+ does): run as root or "
                         "set sysctl vm.unprivileged_userfaultfd=1")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "qemu": self.qemu.to_dict(),
            "uffd": self.uffd.to_dict(),
            "accel": self.accel.to_dict() if self.accel else None,
            "kernel_release": self.kernel_release,
            "cpu_count": self.cpu_count,
            "mem_total_kib": self.mem_total_kib,
            "problems": self.problems(),
        }

    def summary(self) -> str:
        """One line for a test log."""
        accel = f"{self.accel.accel} ({self.accel.reason})" if self.accel else "not chosen"
        uffd = (f"features {self.uffd.features:#x} (WP {'yes' if self.uffd.wp else 'no'})"
                if self.uffd.available else f"unavailable ({self.uffd.reason})")
        mem = f"{self.mem_total_kib // 1024} MiB" if self.mem_total_kib else "? MiB"
        return (f"QEMU {self.qemu.version_text}, {BACKGROUND_SNAPSHOT} "
                f"{'yes' if self.qemu.supports_background_snapshot else 'NO'}; UFFD {uffd}; "
                f"accel {accel}; Linux {self.kernel_release}, {self.cpu_count} CPUs, {mem}")

    def report_lines(self) -> list[str]:
        """A readable multi-line report (``avocado bgsnap host-check``)."""
        q, u = self.qemu, self.uffd
        lines = [
            f"QEMU:          {q.binary} {q.version_text}",
            f"  {BACKGROUND_SNAPSHOT}: {'yes' if q.supports_background_snapshot else 'NO'}, "
            f"file: URI: {'yes' if q.supports_file_uri else 'no'}, "
            f"mapped-ram: {'yes' if q.supports_mapped_ram else 'no'}",
            f"  migration capabilities: {', '.join(sorted(q.migration_capabilities))}",
        ]
        if u.available:
            lines.append(f"userfaultfd:   features {u.features:#x} via {u.open_mode}: "
                         f"{', '.join(u.feature_names()) or '-'}")
        else:
            lines.append(f"userfaultfd:   unavailable: {u.reason}")
        if self.accel:
            lines.append(f"accelerator:   {self.accel.accel} ({self.accel.reason}; probe "
                         f"{self.accel.probe_seconds:.1f}s)")
        mem = f"{self.mem_total_kib // 1024} MiB" if self.mem_total_kib else "unknown"
        lines.append(f"host:          Linux {self.kernel_release}, {self.cpu_count} CPUs, "
                     f"memory {mem}")
        problems = self.problems()
        lines.append("problems:      " + ("none" if not problems else problems[0]))
        lines.extend("               " + p for p in problems[1:])
        return lines


def collect_facts(qemu: QemuInfo, uffd: UffdInfo, accel: AccelChoice | None) -> HostFacts:
    """Combine the probes with the host's kernel release, CPU count and memory."""
    return HostFacts(
        qemu=qemu, uffd=uffd, accel=accel,
        kernel_release=os.uname().release,
        cpu_count=os.cpu_count() or 1,
        mem_total_kib=parse_meminfo_total(_read_text(Path("/proc/meminfo"))),
    )


__all__ = [
    "AccelChoice", "HostCheckError", "HostFacts", "QemuInfo", "UffdInfo",
    "accel_cache_key", "collect_facts", "find_qemu_binary", "load_cached_accel",
    "parse_meminfo_total", "parse_migrate_capabilities", "parse_qmp_version",
    "parse_qmp_version_text", "probe_kvm", "probe_qemu", "probe_uffd", "resolve_accelerator",
    "save_cached_accel", "uffd_feature_names",
]

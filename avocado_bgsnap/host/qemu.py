"""QEMU: version and migration capabilities, asked over QMP.

:func:`probe_qemu` runs a throw-away ``-machine none`` process with QMP on
stdio (works on 7.2 and 10.x); :class:`QemuInfo` is what it learns.
No work at import time.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import HostCheckError, _stop

DEFAULT_QEMU = "qemu-system-x86_64"
BACKGROUND_SNAPSHOT = "background-snapshot"
# QAPI: ``file:`` migration URI "since 8.2".
FILE_URI_SINCE = (8, 2, 0)


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

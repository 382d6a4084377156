"""The raw cycle: one test's boot / fill / snapshot / restore / in-guest
verify driven with plain QEMU and QMP, no avocado, no avocado-vt.

What makes it the same cycle as the suite's and nothing more:

* the source and restoring QEMU command lines are the test's own, read from
  its ``debug.log`` (:func:`avocado_bgsnap.repro.qemu_runs`), with only the
  monitor and serial sockets and the snapshot folder moved;
* the migration set-up is the test's own QMP steps (its trace:
  ``migrate-set-capabilities`` / ``migrate-set-parameters``), then
  ``migrate`` to the same transport;
* the workload is driven by the suite's own :class:`~avocado_bgsnap.workload.
  GuestWorkload` over a plain serial socket (:class:`Console`), so every
  guest command is byte for byte the suite's.

QMP is :mod:`qemu.qmp` (QEMU's own Python client, PyPI ``qemu.qmp``); the
serial console is a unix socket read by a thread.  ``repro_script.py`` has
a console of the same kind; it stays apart because that file is written out
whole as a standalone reproducer (stdlib only), and because this one polls
every 10 ms: the raw side must not be slowed by its own harness.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qemu.qmp.legacy import QEMUMonitorProtocol

from .. import qmp_trace, repro
from ..guest.build import GUEST_READY_MARKER
from ..metrics import METRICS_FILE
from ..repro_script import fill
from ..workload import GuestWorkload
from ..wlproto import WorkloadSpec

FINAL = ("completed", "failed", "cancelled")
CONNECT_TIMEOUT_S = 30.0


class RawError(Exception):
    """A step of the raw cycle did not work; the message says which."""


@dataclass(frozen=True)
class RawPlan:
    """What the raw cycle runs: taken from one test's records."""

    source_argv: tuple[str, ...]
    restore_argv: tuple[str, ...]
    setup_qmp: tuple[dict, ...]       # the test's migrate-set-* steps, in order
    save_uri: str                     # with {work}
    workload: WorkloadSpec
    fill_timeout_s: float = 300.0
    save_timeout_s: float = 600.0


def plan_from_test(test_dir: Path) -> RawPlan:
    """The raw plan of a finished test: its debug.log, QMP trace and record."""
    debug_log = (test_dir / "debug.log").read_text(errors="replace")
    record = json.loads((test_dir / "data" / METRICS_FILE).read_text())
    trace = qmp_trace.read(test_dir / qmp_trace.TRACE_FILE)
    runs = repro.qemu_runs(debug_log)
    if len(runs) < 2:
        raise RawError(f"{test_dir.name}: its debug.log shows {len(runs)} QEMU run(s), "
                       f"a source and a restore are needed")
    snapshot_dir = str(Path(record["snapshot_file"]).parent)
    source, restore = runs[0], runs[1]
    steps = repro.source_steps(trace, source.pid)
    setup = tuple({"cmd": s["cmd"], "args": s.get("args")} for s in steps
                  if s["cmd"] in ("migrate-set-capabilities", "migrate-set-parameters"))
    migrate = [s for s in steps if s["cmd"] == "migrate"]
    if not migrate:
        raise RawError(f"{test_dir.name}: its QMP trace has no 'migrate'")
    uri = repro.portable_argv((migrate[-1]["args"]["uri"],), snapshot_dir)[0]
    # the guest files stay where the test took them from
    files = {"kernel": repro.arg_after(source.argv, "-kernel") or "",
             "initrd": repro.arg_after(source.argv, "-initrd") or ""}

    def portable(argv):
        return tuple(fill(repro.portable_argv(argv, snapshot_dir), files))

    return RawPlan(source_argv=portable(source.argv), restore_argv=portable(restore.argv),
                   setup_qmp=setup, save_uri=uri,
                   workload=WorkloadSpec(**record["workload"]))


class Console:
    """The guest shell on a serial unix socket, with the one method of an
    aexpect session that :class:`GuestWorkload` uses: ``cmd_output``."""

    def __init__(self, path: str, timeout: float = CONNECT_TIMEOUT_S):
        self.sock = _connect(path, timeout)
        self._buf = ""
        self._lock = threading.Lock()
        self._count = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._buf += data.decode("utf-8", "replace")

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if text in self._buf:
                    return True
            time.sleep(0.02)
        return False

    def cmd_output(self, command: str, timeout: float = 60) -> str:
        """Run one shell command; its output (the echo dropped)."""
        self._count += 1
        with self._lock:
            start = len(self._buf)
        # the marker is split in the command, so its echo never matches
        self.sock.sendall(f"{command}; echo __RAW_''DONE_{self._count}\n".encode())
        done = re.compile(r"__RAW_DONE_%d\b" % self._count)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                match = done.search(self._buf, start)
                if match:
                    text = self._buf[start:match.start()]
                    return text.split("\n", 1)[1] if "\n" in text else ""
            time.sleep(0.01)
        raise RawError(f"the guest did not answer {command[:60]!r} within {timeout:.0f}s")

    def cmd(self, command: str, timeout: float = 60) -> str:
        return self.cmd_output(command, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _connect(path: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise RawError(f"cannot connect to {path} within {timeout:.0f}s") from None
            time.sleep(0.01)


@dataclass
class Qemu:
    """One QEMU started from a plan's argv; its QMP and console connected."""

    name: str
    argv: list[str]
    work: str
    proc: subprocess.Popen | None = None
    qmp: QEMUMonitorProtocol | None = None
    console: Console | None = None
    _log: object = field(default=None, repr=False)

    def start(self) -> None:
        values = {"work": self.work, "qmp": self._path("qmp"), "serial": self._path("serial")}
        argv = fill(self.argv, values)
        self._log = open(os.path.join(self.work, f"{self.name}-qemu.log"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        _wait_path(values["qmp"], self.proc)
        self.console = Console(values["serial"])
        self.qmp = QEMUMonitorProtocol(values["qmp"])
        self.qmp.connect()

    def _path(self, kind: str) -> str:
        return os.path.join(self.work, f"{self.name}-{kind}.sock")

    def run(self, cmd: str, args: dict | None = None):
        reply = self.qmp.cmd_raw(cmd, args)
        if "error" in reply:
            raise RawError(f"{self.name}: QMP {cmd}: {reply['error'].get('desc')}")
        return reply.get("return")

    def wait_migration(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.run("query-migrate")
            if info.get("status") in FINAL:
                return info
            if time.monotonic() > deadline:
                raise RawError(f"{self.name}: migration not ended within {timeout:.0f}s: {info}")
            time.sleep(0.05)

    def wait_loaded(self, timeout: float) -> None:
        """Until the incoming image is loaded: the run state leaves
        ``inmigrate`` (``paused``: the command line has -S)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.run("query-status")["status"]
            except Exception as exc:  # QEMU exits when it cannot load the image
                raise RawError(f"{self.name}: the restore failed: {exc}") from exc
            if status != "inmigrate":
                if status != "paused":
                    raise RawError(f"{self.name}: restored guest is {status!r}, not paused")
                return
            if time.monotonic() > deadline:
                raise RawError(f"{self.name}: image not loaded within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.console is not None:
            self.console.close()
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.run("quit")
            with contextlib.suppress(Exception):
                self.qmp.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


def _wait_path(path: str, proc: subprocess.Popen, timeout: float = CONNECT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RawError(f"QEMU exited ({proc.returncode}) before its QMP socket appeared")
        if time.monotonic() > deadline:
            raise RawError(f"no QMP socket {path} within {timeout:.0f}s")
        time.sleep(0.01)


def run_cycle(plan: RawPlan, after_save: Callable[[Path], None] | None = None) -> dict[str, float]:
    """One raw cycle; the seconds of each phase and ``total`` (wall, from
    this call to both QEMUs gone).  Raises :class:`RawError` on a step that
    did not work, with both QEMUs stopped and the work folder removed.
    ``after_save(work)`` runs between the save and the restore, with the
    folder that holds the image (the negative control damages it)."""
    started = time.monotonic()
    phases: dict[str, float] = {}
    work = tempfile.mkdtemp(prefix="bgsnap-raw-")
    source = Qemu("source", list(plan.source_argv), work)
    restore = Qemu("restore", list(plan.restore_argv), work)

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        phases[name] = round(now - since, 3)
        return now

    try:
        t = time.monotonic()
        source.start()
        source.run("cont")  # the suite's command line has -S
        if not source.console.wait_for(GUEST_READY_MARKER, 120):
            raise RawError("the source guest printed no ready marker within 120s")
        t = lap("boot", t)
        workload = GuestWorkload(source.console, plan.workload)
        workload.start()
        workload.wait_running(plan.fill_timeout_s)
        t = lap("fill", t)
        for step in plan.setup_qmp:
            source.run(step["cmd"], step["args"])
        source.run("migrate", {"uri": plan.save_uri.replace("{work}", work)})
        info = source.wait_migration(plan.save_timeout_s)
        if info.get("status") != "completed":
            raise RawError(f"the save ended {info.get('status')}: {info.get('error-desc', '')}")
        t = lap("snapshot", t)
        source.stop()  # as the repro script: the restore gets the host's memory
        t = lap("cleanup", t)
        if after_save is not None:
            after_save(Path(work))
            t = time.monotonic()
        restore.start()
        restore.wait_loaded(plan.save_timeout_s)
        t = lap("restore", t)
        restore.run("cont")
        guest = GuestWorkload(restore.console, plan.workload)
        guest.freeze()
        result = guest.verify(plan.fill_timeout_s)
        if not result.clean:
            raise RawError(f"the restored guest verifies BAD: {result.summary()}")
        t = lap("guest_verify", t)
        restore.stop()
        phases["cleanup"] = round(phases["cleanup"] + time.monotonic() - t, 3)
    finally:
        source.stop()
        restore.stop()
        shutil.rmtree(work, ignore_errors=True)
    phases["total"] = round(time.monotonic() - started, 3)
    return phases

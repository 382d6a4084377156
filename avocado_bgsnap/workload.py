"""Drive the guest workload ``bgsnap-wl`` over the serial shell session.

The protocol (commands, the ``#WL#`` reply line) is in :mod:`wlproto` and
``docs/workload.md``; this module only moves text over an aexpect session.
"""

import shlex
import time
from typing import Callable

from .guest import delivery
from .wlproto import (VerifyResult, WorkloadProtocolError, WorkloadStartError, WorkloadSpec,
                      ctl_command, parse_reply, start_failure)

GUEST_BINARY = "/bin/bgsnap-wl"
GUEST_LOG = "/tmp/bgsnap-wl.log"
WINDOW_BEFORE, WINDOW_DURING, WINDOW_AFTER = 0, 1, 2


class GuestWorkload:
    """One ``bgsnap-wl run`` process in a guest, reached through ``session``."""

    def __init__(self, session, spec: WorkloadSpec, log: Callable[[str], None] = lambda m: None,
                 cmd_timeout: float = 60, run_args: tuple[str, ...] = (),
                 binary: str | None = None):
        self.session = session
        self.spec = spec
        # more options for 'run' (the journal of docs/disk.md: --journal FILE)
        self.run_args = tuple(run_args)
        self.log = log
        self.cmd_timeout = cmd_timeout
        # known already (the restored copy of a guest whose run found it): not looked up again
        self._binary: str | None = binary
        self.pid: int | None = None
        self.guest_log = GUEST_LOG

    @property
    def binary(self) -> str:
        """The workload in this guest: on the delivery disk when one is
        attached (mounted read-only on first use), else the guest's own
        (guest/delivery.py); found once per session."""
        if self._binary is None:
            text = self.session.cmd_output(delivery.locate_command(), timeout=self.cmd_timeout)
            self._binary = delivery.parse_located(text)
            self.log("workload binary in the guest: %s" % self._binary)
        return self._binary

    def _ctl(self, command: str, arg=None, timeout: float | None = None) -> dict:
        text = self.session.cmd_output(ctl_command(command, arg, binary=self.binary),
                                       timeout=timeout or self.cmd_timeout)
        return parse_reply(text)

    def start(self) -> None:
        """Start ``run --tune`` in the background of the guest shell: its
        socket and log go to the first writable of /run, /tmp, /dev/shm,
        /var/tmp (no guest layout assumed); ``--tune`` sets what the region
        needs (docs/workload.md).  Records the process id and the log."""
        cmd = self.spec.run_command(binary=self.binary) + " --tune"
        if self.run_args:
            cmd += " " + shlex.join(self.run_args)
        text = self.session.cmd_output(delivery.start_command(cmd), timeout=self.cmd_timeout)
        self.pid, self.guest_log = delivery.parse_started(text)

    def status(self, timeout: float | None = None) -> dict:
        return self._ctl("status", timeout=timeout)

    def wait_running(self, timeout: float) -> dict:
        """Wait until the fill is done and the writers run; log progress."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                status = self.status()
            except WorkloadProtocolError as exc:  # socket not bound yet, or the workload died
                if not self._alive():
                    raise WorkloadStartError(start_failure(
                        self._last_words(), self.binary, self.spec.mib)) from exc
                status = {"phase": "starting", "error": str(exc)}
            if status.get("phase") == "running":
                return status
            if status != last and status.get("phase") == "filling":
                self.log("workload filling: %s" % _fill_progress(status))
            last = status
            if time.monotonic() > deadline:
                tail = self.session.cmd_output(f"tail -5 {self.guest_log}", timeout=10)
                raise WorkloadProtocolError(
                    f"workload not running after {timeout:.0f}s: {status}; log: {tail.strip()}")
            time.sleep(1.0)

    def _alive(self) -> bool:
        # kill -0 is the shell's own: no pidof/procps needed in the guest
        if self.pid is None:
            return False
        text = self.session.cmd_output(f"kill -0 {self.pid} 2>/dev/null && echo WL-ALIVE",
                                       timeout=self.cmd_timeout)
        return any(line.strip() == "WL-ALIVE" for line in text.splitlines())

    def _last_words(self) -> str:
        """The workload's log and the kernel's last lines (an OOM kill shows there)."""
        text = self.session.cmd_output(f"tail -3 {self.guest_log}; dmesg 2>/dev/null | tail -3",
                                       timeout=self.cmd_timeout)
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    def committed(self, timeout: float | None = None) -> list[int]:
        return [int(s) for s in self.status(timeout)["committed"]]

    def mark(self, window: int, timeout: float | None = None) -> dict:
        return self._ctl("mark", window, timeout=timeout)

    def mark_committed(self, window: int, timeout: float | None = None) -> list[int]:
        """Start throughput window ``window``; the steps committed at that
        moment (one console round trip for what status + mark told)."""
        return [int(s) for s in self.mark(window, timeout)["committed"]]

    def freeze(self) -> list[int]:
        return [int(s) for s in self.freeze_reply()["committed"]]

    def freeze_reply(self) -> dict:
        """Freeze the writers; the reply has ``committed`` and the latency
        ``windows`` as ``status`` gives them (one round trip for both)."""
        return self._ctl("freeze")

    def thaw(self) -> None:
        self._ctl("thaw")

    def dupwrite(self, timeout: float | None = None) -> dict:
        """Overwrite every page of the duplicate region with D1 (the run
        needs ``dup_mib``); the reply: ``pages`` written, ``seconds``."""
        return self._ctl("dupwrite", timeout=timeout)

    def verify(self, timeout: float, thaw: bool = False) -> VerifyResult:
        """Verify the frozen live region (the guest checks itself); with
        ``thaw``, the writers resume right after it, in the same round trip."""
        return VerifyResult.from_reply(self._ctl("verify", "thaw" if thaw else None,
                                                 timeout=timeout))

    def status_pair(self, seconds: float) -> tuple[dict, dict]:
        """Two ``status`` replies about ``seconds`` apart (the host sleeps
        between them); :func:`bench.write_mib_s` turns them into MiB/s."""
        first = self.status()
        time.sleep(seconds)
        return first, self.status()

    def quit(self, timeout: float | None = None) -> list[int]:
        """Stop the server and wait until its process has exited, so its
        region is freed before another run maps one.  Returns ``committed``.

        ``wait`` is the guest shell's builtin: the workload is a background
        job of the same shell (:meth:`start`).
        """
        committed = [int(s) for s in self._ctl("quit")["committed"]]
        self.session.cmd("wait", timeout=timeout or self.cmd_timeout)
        return committed

    def restart(self, spec: WorkloadSpec, fill_timeout: float) -> dict:
        """Quit this run, start ``spec`` in its place, wait for its fill;
        returns the first ``running`` status."""
        self.quit()
        self.spec = spec
        self.start()
        return self.wait_running(fill_timeout)


def _fill_progress(status: dict) -> str:
    done = status.get("fill_done_mib", status.get("fill_mib"))
    total = status.get("fill_total_mib", status.get("mib"))
    return f"{done}/{total} MiB" if done is not None else str(status)

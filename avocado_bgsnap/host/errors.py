"""What every host probe shares: :class:`HostCheckError` and tiny helpers.

No work at import time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Iterator

# The name the single-module ``avocado_bgsnap/host.py`` logged under.
LOG = logging.getLogger("avocado_bgsnap.host")

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


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


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


def _is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def _undoing(undo: Callable[[BaseException | None], None]) -> Iterator[None]:
    """Run the block, then ``undo(failure)`` whatever happens: ``failure`` is
    what the block raised (None when it did not), so an undo that fails too
    can attach its message to it rather than hide it."""
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        undo(failure)

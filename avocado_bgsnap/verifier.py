"""Verify a restored guest's RAM dump on the host with ``bgsnap-wl verify-dump``.

The same C code verifies inside the guest (``ctl verify``) and here, on an
ELF dump that QEMU wrote of the paused restored guest: the exact memory the
snapshot restored, before the restored guest ran a single instruction.
"""

import struct
import subprocess
from pathlib import Path

from .wlproto import VerifyResult, WorkloadProtocolError, WorkloadSpec

# Word 0 of every workload page (wl/wl_core.h WL_MAGIC_PAGE); word 1 is
# nonce ^ page index.  A unit test keeps the two in step.
PAGE_MAGIC = 0x3147504C57534742
EXIT_CLEAN, EXIT_BAD, EXIT_ERROR = 0, 1, 2


def page_header(nonce: int, page: int = 0) -> bytes:
    """The first 16 bytes of workload page ``page`` (what a negative
    control searches an image or a stream for)."""
    return struct.pack("<QQ", PAGE_MAGIC, nonce ^ page)


class VerifierError(Exception):
    """verify-dump could not judge (I/O, no metadata page, usage)."""


def verify_dump(binary: Path, dump: Path, spec: WorkloadSpec, timeout: float) -> VerifyResult:
    argv = spec.verify_dump_argv(str(dump), binary=str(binary))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VerifierError(f"verify-dump took over {timeout:.0f}s") from exc
    if proc.returncode not in (EXIT_CLEAN, EXIT_BAD):
        raise VerifierError(f"verify-dump exit {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    try:
        result = VerifyResult.from_text(proc.stdout)
    except WorkloadProtocolError as exc:
        raise VerifierError(str(exc)) from exc
    if result.clean != (proc.returncode == EXIT_CLEAN):
        raise VerifierError(f"verify-dump exit {proc.returncode} contradicts its reply")
    return result

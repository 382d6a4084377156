"""Build the guest workload ``bgsnap-wl`` from the C sources in ``wl/``.

Nothing happens at import time.  :func:`build_wl` compiles every
``wl/*.c`` into one binary (statically linked for the guest, dynamically
for host-side use in tests) and skips the work when the binary is already
newer than every source and was built with the same settings.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

WL_DIR = Path(__file__).resolve().parent / "wl"
BINARY_NAME = "bgsnap-wl"
CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-O2", "-pthread")
_STAMP_SUFFIX = ".build"


class WorkloadBuildError(Exception):
    """The workload could not be compiled; the message carries the compiler's stderr."""


def source_files() -> list[Path]:
    """The workload's C sources and headers, sorted by name."""
    return sorted(list(WL_DIR.glob("*.c")) + list(WL_DIR.glob("*.h")))


def source_digest() -> str:
    """sha256 (hex) over the names and contents of the sources and the flags."""
    digest = hashlib.sha256()
    digest.update(" ".join(CFLAGS).encode())
    for path in source_files():
        digest.update(b"\0" + path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _settings_text(static: bool, cc: str, extra_cflags: tuple) -> str:
    return f"{source_digest()} static={static} cc={cc} extra={' '.join(extra_cflags)}\n"


def _up_to_date(binary: Path, stamp: Path, settings: str) -> bool:
    try:
        built = binary.stat().st_mtime
        if stamp.read_text() != settings:
            return False
    except OSError:
        return False
    return all(src.stat().st_mtime < built for src in source_files())


def build_wl(dest_dir: Path, static: bool = True, cc: str = "gcc",
             extra_cflags: tuple = ()) -> Path:
    """Compile ``wl/*.c`` into ``dest_dir/bgsnap-wl`` and return its path.

    ``static`` links statically (what the busybox guest needs); ``extra_cflags``
    are appended to the compiler flags (e.g. ``("-Werror",)``).
    Raises :class:`WorkloadBuildError` with the compiler's stderr on failure.
    """
    dest_dir = Path(dest_dir)
    sources = [p for p in source_files() if p.suffix == ".c"]
    if not sources:
        raise WorkloadBuildError(f"no C sources found in {WL_DIR}")
    if shutil.which(cc) is None:
        raise WorkloadBuildError(
            f"C compiler {cc!r} not found: install it (Debian: apt-get install gcc libc6-dev)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    binary = dest_dir / BINARY_NAME
    stamp = dest_dir / (BINARY_NAME + _STAMP_SUFFIX)
    settings = _settings_text(static, cc, tuple(extra_cflags))
    if _up_to_date(binary, stamp, settings):
        return binary
    fd, tmp_name = tempfile.mkstemp(prefix=f".{BINARY_NAME}.", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [cc, *CFLAGS, *extra_cflags, *(["-static"] if static else []),
           "-o", str(tmp), *[str(s) for s in sources]]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WorkloadBuildError(f"{' '.join(cmd)}: {exc}") from exc
        if proc.returncode != 0:
            hint = ""
            if static and ("-lc" in proc.stderr or "libc.a" in proc.stderr
                           or "-lpthread" in proc.stderr):
                hint = "\n(static linking needs static glibc: apt-get install libc6-dev)"
            raise WorkloadBuildError(
                f"compiling {BINARY_NAME} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stderr.strip()}{hint}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        if tmp.exists():
            tmp.unlink()
    stamp.write_text(settings)
    return binary

"""Build the suite's C programs from their source folders.

* :func:`build_wl`: the guest workload ``bgsnap-wl`` from ``wl/``;
* :func:`build_uffd_check`: the host's UFFD-WP self-check
  ``bgsnap-uffd-check`` from ``uffdcheck/`` (docs/uffd-check.md).

Nothing happens at import time.  Each compiles every ``*.c`` of its folder
into one binary (statically linked by default, dynamically for host-side
use in tests) and skips the work when the binary is already newer than
every source and was built with the same settings.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

WL_DIR = Path(__file__).resolve().parent / "wl"
BINARY_NAME = "bgsnap-wl"
UFFDCHECK_DIR = Path(__file__).resolve().parent / "uffdcheck"
UFFDCHECK_BINARY_NAME = "bgsnap-uffd-check"
CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-O2", "-pthread")
_STAMP_SUFFIX = ".build"


class CBuildError(Exception):
    """A C program could not be compiled; the message carries the compiler's stderr."""


class WorkloadBuildError(CBuildError):
    """The workload could not be compiled; the message carries the compiler's stderr."""


class UffdCheckBuildError(CBuildError):
    """bgsnap-uffd-check could not be compiled."""


def source_files(src_dir: Path = WL_DIR) -> list[Path]:
    """The C sources and headers of ``src_dir`` (the workload's by default), sorted by name."""
    return sorted(list(src_dir.glob("*.c")) + list(src_dir.glob("*.h")))


def source_digest(src_dir: Path = WL_DIR) -> str:
    """sha256 (hex) over the names and contents of the sources and the flags."""
    digest = hashlib.sha256()
    digest.update(" ".join(CFLAGS).encode())
    for path in source_files(src_dir):
        digest.update(b"\0" + path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _settings_text(src_dir: Path, static: bool, cc: str, extra_cflags: tuple) -> str:
    return (f"{source_digest(src_dir)} static={static} cc={cc} "
            f"extra={' '.join(extra_cflags)}\n")


def _up_to_date(src_dir: Path, binary: Path, stamp: Path, settings: str) -> bool:
    try:
        built = binary.stat().st_mtime
        if stamp.read_text() != settings:
            return False
    except OSError:
        return False
    return all(src.stat().st_mtime < built for src in source_files(src_dir))


def build_wl(dest_dir: Path, static: bool = True, cc: str = "gcc",
             extra_cflags: tuple = ()) -> Path:
    """Compile ``wl/*.c`` into ``dest_dir/bgsnap-wl`` and return its path.

    ``static`` links statically (what the busybox guest needs); ``extra_cflags``
    are appended to the compiler flags (e.g. ``("-Werror",)``).
    Raises :class:`WorkloadBuildError` with the compiler's stderr on failure.
    """
    return _build(WL_DIR, BINARY_NAME, WorkloadBuildError, Path(dest_dir), static, cc,
                  tuple(extra_cflags))


def build_uffd_check(dest_dir: Path, static: bool = True, cc: str = "gcc",
                     extra_cflags: tuple = ()) -> Path:
    """Compile ``uffdcheck/*.c`` into ``dest_dir/bgsnap-uffd-check`` and return its path.

    Static like the workload, so one binary runs on any host of the
    architecture.  Raises :class:`UffdCheckBuildError` on failure.
    """
    return _build(UFFDCHECK_DIR, UFFDCHECK_BINARY_NAME, UffdCheckBuildError, Path(dest_dir),
                  static, cc, tuple(extra_cflags))


def _build(src_dir: Path, binary_name: str, error: type[CBuildError], dest_dir: Path,
           static: bool, cc: str, extra_cflags: tuple) -> Path:
    sources = [p for p in source_files(src_dir) if p.suffix == ".c"]
    if not sources:
        raise error(f"no C sources found in {src_dir}")
    if shutil.which(cc) is None:
        raise error(
            f"C compiler {cc!r} not found: install it (Debian: apt-get install gcc libc6-dev)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    binary = dest_dir / binary_name
    stamp = dest_dir / (binary_name + _STAMP_SUFFIX)
    settings = _settings_text(src_dir, static, cc, extra_cflags)
    if _up_to_date(src_dir, binary, stamp, settings):
        return binary
    fd, tmp_name = tempfile.mkstemp(prefix=f".{binary_name}.", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [cc, *CFLAGS, *extra_cflags, *(["-static"] if static else []),
           "-o", str(tmp), *[str(s) for s in sources]]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise error(f"{' '.join(cmd)}: {exc}") from exc
        if proc.returncode != 0:
            hint = ""
            if static and ("-lc" in proc.stderr or "libc.a" in proc.stderr
                           or "-lpthread" in proc.stderr):
                hint = "\n(static linking needs static glibc: apt-get install libc6-dev)"
            raise error(
                f"compiling {binary_name} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stderr.strip()}{hint}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        if tmp.exists():
            tmp.unlink()
    stamp.write_text(settings)
    return binary

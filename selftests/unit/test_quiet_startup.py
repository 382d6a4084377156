"""vt_compat.quiet_startup(): no virsh notice, no pkg_resources warning (workaround 9)."""

import logging
import subprocess
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path

import pytest

from avocado_bgsnap import vt_compat

AVOCADO = Path(sys.executable).with_name("avocado")
# what setuptools 80.9 prints (pkg_resources/__init__.py) when avocado imports it
SETUPTOOLS_80_9_WARNING = (
    "pkg_resources is deprecated as an API. See https://setuptools.pypa.io/en/latest/"
    "pkg_resources.html. The pkg_resources package is slated for removal as early as "
    "2025-11-30. Refrain from using this package or pin to Setuptools<81.")
VIRSH_LINE = ("Virsh executable not set or found on path, virsh module will not "
              "function normally")


def test_filters_the_pkg_resources_warning_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vt_compat.quiet_startup()
        warnings.warn(SETUPTOOLS_80_9_WARNING, UserWarning, stacklevel=1)
        warnings.warn(SETUPTOOLS_80_9_WARNING, DeprecationWarning, stacklevel=1)
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]


def test_filters_the_virsh_notice_only(caplog):
    vt_compat.quiet_startup()
    vt_compat.quiet_startup()  # idempotent: one filter
    logger = logging.getLogger("avocado.app")
    assert logger.filters.count(vt_compat._drop_virsh_notice) == 1
    with caplog.at_level(logging.WARNING, logger="avocado.app"):
        logger.warning(VIRSH_LINE)
        logger.warning("another notice")
    assert [r.getMessage() for r in caplog.records] == ["another notice"]


def test_startup_pth_line_runs_quiet_startup(tmp_path):
    """The .pth line is valid for site.py (starts with 'import', one line) and
    does nothing worse than skip when the package is gone."""
    assert vt_compat.STARTUP_PTH_LINE.startswith("import ")
    assert vt_compat.STARTUP_PTH_LINE.count("\n") == 1
    code = "import logging, warnings\n" + vt_compat.STARTUP_PTH_LINE + textwrap.dedent("""
        from avocado_bgsnap import vt_compat
        assert vt_compat._drop_virsh_notice in logging.getLogger("avocado.app").filters
        """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    gone = subprocess.run([sys.executable, "-S", "-c", vt_compat.STARTUP_PTH_LINE],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert gone.returncode == 0, gone.stderr


def _avocado_list(tmp_path, env_extra=None):
    import os

    if not AVOCADO.is_file():
        pytest.skip(f"{AVOCADO} not installed")
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([str(AVOCADO), "list"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120, check=False)
    if "avocado-vt " not in proc.stdout:
        pytest.skip("avocado-vt is not configured (scripts/lib.sh, avocado bgsnap setup): "
                    "its plugins, which print the virsh notice, do not load")
    return proc


def test_avocado_list_prints_neither_line(tmp_path):
    proc = _avocado_list(tmp_path)
    out = proc.stdout + proc.stderr
    assert "Virsh executable" not in out
    assert "pkg_resources is deprecated" not in out


def test_avocado_list_quiet_with_a_warning_pkg_resources(tmp_path):
    """Debian 13's case: a pkg_resources that warns as setuptools 80.9 does,
    imported by avocado before any plugin loads (needs the venv's .pth)."""
    pth = Path(sysconfig.get_paths()["purelib"]) / vt_compat.STARTUP_PTH_NAME
    if not pth.is_file():
        pytest.skip(f"{pth} missing: the venv was not set up by scripts/lib.sh")
    shim = tmp_path / "shim"
    shim.mkdir()
    # the real pkg_resources, after the warning setuptools 80.9 gives
    (shim / "pkg_resources.py").write_text(textwrap.dedent(f"""
        import importlib.machinery, importlib.util, sys, warnings
        warnings.warn({SETUPTOOLS_80_9_WARNING!r}, UserWarning, stacklevel=2)
        _path = [p for p in sys.path if p != {str(shim)!r}]
        _spec = importlib.machinery.PathFinder.find_spec("pkg_resources", _path)
        _real = importlib.util.module_from_spec(_spec)
        sys.modules["pkg_resources"] = _real
        _spec.loader.exec_module(_real)
        """))
    proc = _avocado_list(tmp_path, {"PYTHONPATH": str(shim)})
    out = proc.stdout + proc.stderr
    assert "pkg_resources is deprecated" not in out
    assert "Virsh executable" not in out
    # the control: with the filters reset, the shim's import prints the line
    bare = subprocess.run(
        [sys.executable, "-c", "import warnings; warnings.resetwarnings(); "
         "warnings.simplefilter('default'); import pkg_resources"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"PYTHONPATH": str(shim), "PATH": "/usr/bin:/bin"})
    assert bare.returncode == 0, bare.stderr
    assert "pkg_resources is deprecated as an API" in bare.stderr

"""Where the suite keeps its files.

Everything the suite creates lives under one folder, ``BGSNAP_HOME``
(default: ``.bgsnap/`` in the source checkout): the virtualenv, the
Avocado data dirs, the job results and the cached guest.  Nothing goes to
the user's ``~/avocado`` unless they point ``BGSNAP_HOME`` there.
"""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent


def bgsnap_home() -> Path:
    """The suite's own folder (``$BGSNAP_HOME`` or ``<checkout>/.bgsnap``)."""
    return Path(os.environ.get("BGSNAP_HOME") or PROJECT_DIR / ".bgsnap").resolve()


def cfg_dir() -> Path:
    """The Cartesian configs shipped with the suite."""
    return PROJECT_DIR / "cfg"


def guest_cache_dir() -> Path:
    """Cached embedded guest (kernel, initramfs, workload binary)."""
    return bgsnap_home() / "guest"


def avocado_data_dir() -> Path:
    """Avocado's data/base dirs (``[datadir.paths]``)."""
    return bgsnap_home() / "avocado"


def results_dir() -> Path:
    """Avocado job results."""
    return bgsnap_home() / "results"


def host_config_file() -> Path:
    """The generated top-level Cartesian config (``vt.config``)."""
    return bgsnap_home() / "bgsnap.cfg"


def state_dir() -> Path:
    """Small caches (host probes)."""
    return bgsnap_home() / "state"

"""Fixtures both the unit and the end-to-end tests use."""

import os
import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def private_mounts():
    """Skip, naming why, where no private mount namespace can be made: not
    root, no unshare, or a root that is not a mount point (a chroot, such as
    a ../shared/tools/fresh-machine.sh root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")

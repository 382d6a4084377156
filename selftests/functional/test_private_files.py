"""End-to-end: every file of a job that holds guest memory is its owner's
only (0600), kept only when asked, and nothing else is left behind.

Saves kept with ``bgsnap_keep_snapshot=yes``, under umask 022 (which made an
``exec:cat > FILE`` snapshot 0644): an ``exec:cat`` snapshot, a gzip one and
an internal snapshot's qcow2 (qemu-img) in one job (~1.5 min under TCG);
a ``file:`` one that QEMU opens itself, on the system QEMU when it is 8.2+
(Debian 13), else on a registered 8.2+ build.
"""

import os
import re
import stat
from pathlib import Path

import pytest

from jobs import pytestmark, run_job  # noqa: F401

from avocado_bgsnap import qemu_builds
from avocado_bgsnap.host.qemu import probe_qemu

KEPT = {  # test -> the kept file's name
    "bgsnap.basic.small": "bgsnap-snapshot.bin",
    "bgsnap.transport.gzip.small": "bgsnap-snapshot.bin.gz",
    "bgsnap.mode.snapshot_save.small": "bgsnap-snapshot.qcow2",
}
FILE_URI = "bgsnap.transport.file_uri.small"
# what a job never leaves, kept snapshots or not
NEVER_LEFT = ("*.partial", "bgsnap-restored-ram.elf")


FILE_URI_QEMU = (8, 2, 0)


def _file_uri_params() -> list[str] | None:
    """The job's params for a QEMU with the file: URI (8.2+): none for the
    system QEMU when it has it, else a registered build's wrapper; None
    when there is no such QEMU."""
    if probe_qemu().version >= FILE_URI_QEMU:
        return []
    for build in qemu_builds.load_builds():
        found = re.match(r"(\d+)\.(\d+)\.(\d+)", build.version_text)
        if found and tuple(map(int, found.groups())) >= FILE_URI_QEMU:
            return [f"qemu_binary={qemu_builds.wrapper_path(build.name)}"]
    return None


def _kept_job(tmp_path, refs, extra=()):
    old_umask = os.umask(0o022)
    try:
        data, job = run_job(tmp_path, *refs, extra=("bgsnap_keep_snapshot=yes", *extra))
    finally:
        os.umask(old_umask)
    for pattern in NEVER_LEFT:
        assert list(job.glob("**/" + pattern)) == [], pattern
    return data


def _assert_kept_private(test: dict, file_name: str) -> None:
    assert test["status"] == "PASS", (test["name"], test["fail_reason"])
    kept = list(Path(test["logdir"]).glob("**/" + file_name))
    assert len(kept) == 1, (test["name"], kept)
    mode = stat.S_IMODE(kept[0].stat().st_mode)
    assert mode == 0o600, (test["name"], oct(mode))
    assert kept[0].stat().st_size > 2**20, (test["name"], kept[0].stat().st_size)


def test_kept_snapshots_are_private(tmp_path):
    data = _kept_job(tmp_path, KEPT)
    assert len(data["tests"]) == len(KEPT)
    for test in data["tests"]:
        (ref,) = [r for r in KEPT if test["name"].endswith(r)]
        _assert_kept_private(test, KEPT[ref])


def test_file_uri_snapshot_is_private(tmp_path):
    params = _file_uri_params()
    if params is None:
        pytest.skip("the system QEMU is older than 8.2 and no 8.2+ build is registered "
                    "(the file: URI): avocado bgsnap qemu-add")
    data = _kept_job(tmp_path, [FILE_URI], extra=params)
    (test,) = data["tests"]
    _assert_kept_private(test, "bgsnap-snapshot.bin")

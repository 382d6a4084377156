"""End-to-end: every file of a job that holds guest memory is its owner's
only (0600), kept only when asked, and nothing else is left behind.

Saves kept with ``bgsnap_keep_snapshot=yes``, under umask 022 (which made an
``exec:cat > FILE`` snapshot 0644): an ``exec:cat`` snapshot, a gzip one and
an internal snapshot's qcow2 (qemu-img) in one job (~1.5 min under TCG);
a ``file:`` one that QEMU opens itself on a registered QEMU 8.2+ build.
"""

import os
import re
import stat
from pathlib import Path

import pytest

from jobs import pytestmark, run_job  # noqa: F401

from avocado_bgsnap import qemu_builds

KEPT = {  # test -> the kept file's name
    "bgsnap.basic.small": "bgsnap-snapshot.bin",
    "bgsnap.transport.gzip.small": "bgsnap-snapshot.bin.gz",
    "bgsnap.mode.snapshot_save.small": "bgsnap-snapshot.qcow2",
}
FILE_URI = "bgsnap.transport.file_uri.small"
# what a job never leaves, kept snapshots or not
NEVER_LEFT = ("*.partial", "bgsnap-restored-ram.elf")


def _file_uri_qemu() -> str | None:
    """The wrapper of a registered build with the file: URI (QEMU 8.2+)."""
    for build in qemu_builds.load_builds():
        found = re.match(r"(\d+)\.(\d+)\.(\d+)", build.version_text)
        if found and tuple(map(int, found.groups())) >= (8, 2, 0):
            return str(qemu_builds.wrapper_path(build.name))
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
    qemu = _file_uri_qemu()
    if qemu is None:
        pytest.skip("no QEMU 8.2+ build registered (the file: URI): avocado bgsnap qemu-add")
    data = _kept_job(tmp_path, [FILE_URI], extra=[f"qemu_binary={qemu}"])
    (test,) = data["tests"]
    _assert_kept_private(test, "bgsnap-snapshot.bin")

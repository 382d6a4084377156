"""End-to-end: QEMU run by an unprivileged user (``nobody``) asked for
background-snapshot answers as :func:`predict_unprivileged_uffd` says from
this host's ``vm.unprivileged_userfaultfd`` and ``/dev/userfaultfd`` (see
docs/privileges.md).  Run as root (it starts QEMU through ``runuser``);
skipped otherwise.  No guest: ``-m 64``, a few seconds per QEMU build.
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from avocado_bgsnap import qemu_builds
from avocado_bgsnap.host.uffd import UFFD_DEVICE, predict_unprivileged_uffd

USER = "nobody"
SYSCTL = Path("/proc/sys/vm/unprivileged_userfaultfd")


def _user():
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        return None


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="starting QEMU as another user needs root"),
    pytest.mark.skipif(shutil.which("runuser") is None, reason="runuser not found (util-linux)"),
    pytest.mark.skipif(_user() is None, reason=f"no user {USER!r} on this host"),
    pytest.mark.skipif(not SYSCTL.is_file(), reason="no vm.unprivileged_userfaultfd (not Linux "
                                                     "or a kernel without userfaultfd)"),
]


def _qemus() -> list[tuple[str, str]]:
    """(name, command) of the system QEMU and every registered build."""
    system = shutil.which("qemu-system-x86_64")
    found = [("system", system)] if system else []
    found += [(b.name, str(qemu_builds.wrapper_path(b.name))) for b in qemu_builds.load_builds()]
    if not found:
        pytest.skip("no qemu-system-x86_64")
    return found


def background_snapshot_as(user, qemu: str) -> tuple[tuple[int, int, int], str | None]:
    """QEMU ``qemu`` started as ``user`` over QMP on stdio: its version and
    its error message for ``background-snapshot=on`` (None: accepted)."""
    workdir = Path(tempfile.mkdtemp(prefix="bgsnap-unprivileged-"))
    os.chown(workdir, user.pw_uid, user.pw_gid)
    proc = subprocess.Popen(["runuser", "-u", user.pw_name, "--", qemu, "-accel", "tcg",
                             "-m", "64", "-display", "none", "-nodefaults", "-qmp", "stdio"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=workdir)

    def execute(command, **arguments):
        proc.stdin.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        proc.stdin.flush()
        while True:
            reply = json.loads(proc.stdout.readline())
            if "event" not in reply:
                return reply

    try:
        version = json.loads(proc.stdout.readline())["QMP"]["version"]["qemu"]
        execute("qmp_capabilities")
        reply = execute("migrate-set-capabilities", capabilities=[
            {"capability": "background-snapshot", "state": True}])
        execute("quit")
        proc.stdin.close()  # a build's wrapper feeds QEMU's stdin through sed
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    refusal = reply["error"]["desc"] if "error" in reply else None
    return (version["major"], version["minor"], version["micro"]), refusal


@pytest.mark.parametrize("name, qemu", _qemus())
def test_unprivileged_qemu_answers_as_predicted(name, qemu):
    sysctl = SYSCTL.read_text().strip()
    try:
        dev_mode = os.stat(UFFD_DEVICE).st_mode
    except FileNotFoundError:
        dev_mode = None
    version, refusal = background_snapshot_as(_user(), qemu)
    predicted = predict_unprivileged_uffd(sysctl, dev_mode, version)
    setting = (f"{name} QEMU {version}, vm.unprivileged_userfaultfd={sysctl}, "
               f"{UFFD_DEVICE} {'absent' if dev_mode is None else oct(stat.S_IMODE(dev_mode))}")
    assert refusal == predicted.refusal, f"{setting}: predicted {predicted}, QEMU said {refusal!r}"

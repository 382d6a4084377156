"""The workload starts in any Linux guest with a shell, and when it cannot,
the ERROR names the real cause (docs/workload.md, docs/guests.md).

* bgsnap-wl's control socket falls back from /run to /tmp (and further);
  with no writable directory it says so, and the host's message is about
  that, not guest memory (a private mount namespace stands in for a guest
  without /run; every mount dies with it);
* ``start_failure`` names the cause from the log; memory only when the
  evidence says so (negative control: the same code with an OOM log);
* the delivery disk lookup and the start line in a real POSIX shell.
"""

import os
import shutil
import subprocess

import pytest

from avocado_bgsnap import wlproto
from avocado_bgsnap.guest import delivery, wl_build
from avocado_bgsnap.workload import GuestWorkload

SPEC = wlproto.WorkloadSpec(mib=4, seed=1, nonce=2)


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler (gcc) to build bgsnap-wl")
    return wl_build.build_wl(tmp_path_factory.mktemp("wlbin"), static=False)


def in_namespace(wl, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a private mount namespace (the tests ask for the
    ``private_mounts`` fixture), the binary's folder bound at /mnt (the
    script may hide /tmp); $WL is it."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mount --bind {wl.parent} /mnt || exit 9; WL=/mnt/{wl.name}; "
                           + script], capture_output=True, text=True, timeout=60)


def test_socket_falls_back_to_tmp_when_run_is_read_only(wl, private_mounts):
    argv = " ".join(SPEC.run_argv("$WL"))
    proc = in_namespace(wl,
        "mount -t tmpfs -o ro tmpfs /run && mount -t tmpfs tmpfs /tmp || exit 9; "
        f"{argv} 2>/tmp/log & sleep 1; $WL ctl status; $WL ctl quit >/dev/null; wait; "
        "cat /tmp/log >&2")
    assert proc.returncode == 0, proc.stderr
    assert "listening on /tmp/bgsnap-wl.sock" in proc.stderr
    assert wlproto.parse_reply(proc.stdout)["phase"] in ("filling", "running")


def test_no_writable_socket_dir_is_named_not_memory(wl, private_mounts):
    ro = "; ".join(f"mount -t tmpfs -o ro tmpfs {d}" for d in wlproto.SOCKET_DIRS)
    proc = in_namespace(wl, f"{ro} || exit 9; {' '.join(SPEC.run_argv('$WL'))}")
    assert proc.returncode == 2
    assert "no writable directory for the control socket (tried /run, /tmp, /dev/shm, " \
           "/var/tmp)" in proc.stderr
    message = wlproto.start_failure(proc.stderr, "$WL", SPEC.mib)
    assert message.startswith("the workload did not start: no writable directory for the "
                              "control socket")
    assert "memory" not in message


def test_ctl_without_a_server_names_every_place_it_looked(wl, private_mounts):
    proc = in_namespace(wl, "for d in /run /tmp /dev/shm /var/tmp; do mount -t tmpfs tmpfs $d; "
                        "done; $WL ctl status")
    assert proc.returncode == 3
    reply = proc.stderr[proc.stderr.index(wlproto.REPLY_PREFIX):]
    with pytest.raises(wlproto.WorkloadProtocolError, match="/run/bgsnap-wl.sock, "
                       "/tmp/bgsnap-wl.sock, /dev/shm/bgsnap-wl.sock, /var/tmp/bgsnap-wl.sock"):
        wlproto.parse_reply(reply)


@pytest.mark.parametrize("log, cause", [
    ("sh: 1: /bin/bgsnap-wl: not found", "the workload binary /bin/bgsnap-wl is not in the guest"),
    ("sh: /bin/bgsnap-wl: Exec format error", "cannot execute /bin/bgsnap-wl"),
    ("bgsnap-wl run: cannot listen on /run/bgsnap-wl.sock: Read-only file system",
     "cannot listen on /run/bgsnap-wl.sock: Read-only file system"),
    ("bgsnap-wl run: another server is listening on /run/bgsnap-wl.sock",
     "another server is listening"),
])
def test_start_failure_names_the_cause_and_not_memory(log, cause):
    message = wlproto.start_failure(log + " | [ 1.0] random: crng init done", "/bin/bgsnap-wl", 128)
    assert cause in message and "memory" not in message
    assert log in message  # the evidence


@pytest.mark.parametrize("log", [
    "bgsnap-wl: ERROR: out of guest memory: mmap 134221824 bytes: Cannot allocate memory "
    "(vm.overcommit_memory 2)",
    "[   9.1] Out of memory: Killed process 212 (bgsnap-wl)",
])
def test_start_failure_names_memory_when_the_evidence_says_so(log):
    # the negative control of the test above: the same code does blame memory
    assert "out of guest memory" in wlproto.start_failure(log, "/bin/bgsnap-wl", 128)


def test_start_failure_without_evidence_says_so():
    assert "exited at start without saying why" in wlproto.start_failure("", "/x", 1)


class FakeSession:
    """A guest shell: runs each command in a real sh (stdout + stderr)."""

    def __init__(self, env=None):
        self.env = env
        self.sent = []

    def cmd_output(self, cmd, timeout=None):
        self.sent.append(cmd)
        proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30,
                              env=self.env)
        return proc.stdout + proc.stderr


def test_a_guest_without_the_binary_is_an_error_naming_it():
    workload = GuestWorkload(FakeSession(), SPEC)
    if os.path.exists("/bin/bgsnap-wl") or os.path.exists("/usr/local/bin/bgsnap-wl"):
        pytest.skip("this host has a bgsnap-wl in the guest's places")
    with pytest.raises(delivery.DeliveryError, match="no bgsnap-wl in the guest.*bgsnap_wl_disk"):
        workload.start()


@pytest.mark.parametrize("answer, error", [
    ("WLBIN= WLERR=mount -r /dev/vdb /run/bgsnap-wl-disk: mount: unknown filesystem type",
     "attached but unusable: mount -r /dev/vdb"),
    ("WLBIN= WLERR=no executable bgsnap-wl on /dev/vdb", "no executable bgsnap-wl on /dev/vdb"),
    ("sh: syntax error", "did not answer the workload lookup"),
])
def test_delivery_lookup_errors(answer, error):
    with pytest.raises(delivery.DeliveryError, match=error):
        delivery.parse_located("echo ...\r\n" + answer + "\r\n# ")


def test_delivery_lookup_finds_the_path_and_the_echo_never_carries_the_markers():
    assert delivery.parse_located("x\nWLBIN=/run/bgsnap-wl-disk/bgsnap-wl WLERR=\n# ") == \
        "/run/bgsnap-wl-disk/bgsnap-wl"
    for text in (delivery.locate_command(), delivery.start_command("true")):
        assert "WLBIN=" not in text and "WLERR=" not in text and "WLPID=" not in text


def test_start_line_runs_in_the_background_and_names_its_log():
    out = FakeSession().cmd_output(delivery.start_command("true") + "; wait")
    pid, log = delivery.parse_started(out)
    assert pid > 0 and log.endswith("/bgsnap-wl.log")
    os.unlink(log)

"""A fleet on this machine: one avocado run over two loopback hosts with
avocado's remote spawner (scripts/loopback-hosts.sh, docs/fleet.md), and the
fleet report that comes out of it."""

import os
import socket
import subprocess
from pathlib import Path

import pytest
from jobs import metrics_of, run_job

from avocado_bgsnap import paths
from avocado_bgsnap.report import build

LOOPBACK = Path(__file__).resolve().parents[2] / "scripts" / "loopback-hosts.sh"
STATUS = "127.0.0.1:8891"
HOSTNAMES = {"bgsnap-host2", "bgsnap-host3"}


def _sshd_pids() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "^sshd: /usr/sbin/sshd -D -e"], capture_output=True,
                         text=True).stdout
    return set(out.split())


def _free_port() -> int:
    """A port free on both loopback hosts' addresses (another fleet may be up)."""
    for port in range(22022, 22122):
        try:
            for address in ("127.0.0.2", "127.0.0.3"):
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port on 127.0.0.2/.3 in 22022-22121")


@pytest.fixture(scope="module")
def remote_conf(tmp_path_factory, private_mounts):  # the hosts live in mount namespaces
    before = _sshd_pids()
    # the hosts must not see the job's results dir (under pytest's base
    # temp dir), as real remote hosts would not: the records come back as
    # avocado file messages (vt_compat workaround 10)
    env = {**os.environ, "BGSNAP_FLEET_PORT": str(_free_port()),
           "BGSNAP_FLEET_HIDE": str(tmp_path_factory.getbasetemp())}
    up = subprocess.run([str(LOOPBACK), "up", "2"], capture_output=True, text=True, timeout=600,
                        env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "bgsnap-host2" in up.stdout and "bgsnap-host3" in up.stdout, up.stdout
        yield paths.bgsnap_home() / "fleet" / "remote.conf"
    finally:   # hosts that came up halfway go too
        down = subprocess.run([str(LOOPBACK), "down"], capture_output=True, text=True,
                              timeout=60, env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert _sshd_pids() <= before, "a loopback host is still running"


def test_one_run_over_two_hosts_gives_one_fleet_report(tmp_path, remote_conf):
    data, job = run_job(
        tmp_path, "bgsnap.basic.small", "bgsnap.mode.stop_save.small",
        avocado_opts=("--config", str(remote_conf)),
        run_opts=("--spawner", "remote", "--max-parallel-tasks", "2",
                  "--status-server-disable-auto", "--status-server-listen", STATUS,
                  "--status-server-uri", STATUS))
    assert [t["status"] for t in data["tests"]] == ["PASS", "PASS"], data["tests"]
    # the records came back from the hosts (vt_compat workaround 10), one per
    # host: two tasks at once hold the two slots
    records = [metrics_of(t) for t in data["tests"]]
    assert {r["host"]["hostname"] for r in records} == HOSTNAMES
    assert all(r["host_verify"].startswith("CLEAN") for r in records), records
    files = build.make_report([job], output=tmp_path / "report")
    fleet = [a for a in files.answers if a.startswith("Fleet: ")]
    assert fleet and fleet[0].startswith("Fleet: 2 hosts, 2 tests: bgsnap-host2 ("), files.answers
    assert "## Hosts" in files.files["markdown"].read_text()

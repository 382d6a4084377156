"""End-to-end: a bad input is a test ERROR naming the param, before any VM.

One real avocado job per input (``--vt-extra-params`` applies to every test
of a job): a param refused by settings, one by the host's memory, a missing
kernel, a snapshot dir no file can be created in.  Each job takes seconds:
no QEMU starts.  The whole table is selftests/unit/test_bad_input.py and
docs/bad-input.md.
"""

from pathlib import Path

import pytest

from jobs import pytestmark, run_job  # noqa: F401

QEMU_COMMAND_LINE = "Running qemu command"   # what avocado-vt logs when it starts a VM


@pytest.mark.parametrize("extra, message", [
    (["bgsnap_mode=savevm"],
     "bgsnap_mode = 'savevm': expected one of background, stop_save, snapshot_save, precopy"),
    (["mem=1000000", "bgsnap_workload_mib=128"],
     "mem = 1000000: the guest and its restored copy run at once: 2000000 MiB of guest RAM "
     "must fit this host's MemAvailable of"),
    (["kernel=/nonexistent/vmlinuz"],
     "kernel = '/nonexistent/vmlinuz': no such file: expected an existing file"),
    (["bgsnap_snapshot_dir=/proc"], "bgsnap_snapshot_dir = '/proc': not writable"),
], ids=["mode", "mem_above_host", "kernel_missing", "snapshot_dir_not_writable"])
def test_bad_input_errors_before_any_vm(tmp_path, extra, message):
    data, _ = run_job(tmp_path, "bgsnap.basic.small", extra=extra)
    (test,) = data["tests"]
    assert test["status"] == "ERROR", (test["status"], test["fail_reason"])
    assert test["fail_reason"].startswith(message), test["fail_reason"]
    logdir = Path(test["logdir"])
    assert QEMU_COMMAND_LINE not in (logdir / "debug.log").read_text()
    assert not list(logdir.glob("**/bgsnap-metrics.json"))   # no cycle began

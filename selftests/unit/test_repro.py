"""avocado_bgsnap.repro: a failed test's records -> a standalone script (pure)."""

import ast
import json

import pytest

from avocado_bgsnap import qmp_trace, repro

SNAPDIR = "/r/job/test-results/1-t/tmp_x/1-t"
DEBUG_LOG = """\
[stdlog] 2026-12-02 03:46:43,100 avocado.test utils L0164 DEBUG|     bgsnap_wl_binary = /g/bin/bgsnap-wl
[stdlog] 2026-12-02 03:46:43,993 avocado.virttest.qemu_vm qemu_vm L3865 INFO | Running qemu command (reformatted):
[stdlog] MALLOC_PERTURB_=1  /q/bin/qemu-x \\
[stdlog]     -S  \\
[stdlog]     -name 'vm1' \\
[stdlog]     -m 256 \\
[stdlog]     -chardev socket,wait=off,server=on,path=/var/tmp/a/monitor-qmp1-1,id=qmp_id_qmp1  \\
[stdlog]     -mon chardev=qmp_id_qmp1,mode=control \\
[stdlog]     -chardev socket,path=/var/tmp/a/serial-serial0-1,id=chardev_serial0,wait=off,server=on \\
[stdlog]     -device isa-serial,id=serial0,chardev=chardev_serial0  \\
[stdlog]     -kernel '/g/kernel/vmlinuz'  \\
[stdlog]     -append 'console=ttyS0 panic=-1'  \\
[stdlog]     -initrd '/g/initrd-1.img'  \\
[stdlog]     -nographic
[stdlog] 2026-12-02 03:46:45,275 avocado.virttest.qemu_vm qemu_vm L3967 DEBUG| VM appears to be alive with PID 100
[stdlog] 2026-12-02 03:46:57,909 avocado.virttest.qemu_vm qemu_vm L3865 INFO | Running qemu command (reformatted):
[stdlog] MALLOC_PERTURB_=1  /q/bin/qemu-x \\
[stdlog]     -S  \\
[stdlog]     -kernel '/g/kernel/vmlinuz'  \\
[stdlog]     -initrd '/g/initrd-1.img'  \\
[stdlog]     -incoming "exec:cat %s/bgsnap-snapshot.bin"
[stdlog] 2026-12-02 03:46:59,286 avocado.virttest.qemu_vm qemu_vm L3967 DEBUG| VM appears to be alive with PID 200
""" % SNAPDIR
WORKLOAD = {"mib": 128, "seed": 1, "nonce": 42, "writers": 1, "pattern": "random",
            "hot_pct": 10, "rate_mib_s": 0, "latency": True, "dup_mib": 0}
METRICS = {"snapshot_file": SNAPDIR + "/bgsnap-snapshot.bin", "workload": WORKLOAD}
TRACE = [
    {"pid": 100, "cmd": "migrate-set-capabilities", "args": {"capabilities": [
        {"capability": "background-snapshot", "state": True}]}},
    {"pid": 100, "cmd": "migrate", "args": {"uri": f"exec:cat > {SNAPDIR}/bgsnap-snapshot.bin.partial"}},
    {"pid": 100, "cmd": "query-migrate", "answer": {"status": "active"}},
    {"pid": 100, "cmd": "query-migrate", "answer": {"status": "completed"}},
    {"pid": 100, "cmd": "cont"},
    {"pid": 200, "cmd": "query-migrate", "answer": {"status": "completed"}},
    {"pid": 200, "cmd": "dump-guest-memory",
     "args": {"paranoid": False, "protocol": f"file:{SNAPDIR}/bgsnap-restored-ram.elf"}},
    {"pid": 200, "cmd": "cont"},
]


def test_qemu_runs_joins_the_reformatted_command_and_finds_its_pid():
    runs = repro.qemu_runs(DEBUG_LOG)
    assert [r.pid for r in runs] == [100, 200]
    assert runs[0].argv[:4] == ("/q/bin/qemu-x", "-S", "-name", "vm1")   # env dropped
    assert "console=ttyS0 panic=-1" in runs[0].argv
    assert runs[1].argv[-1] == f"exec:cat {SNAPDIR}/bgsnap-snapshot.bin"


def test_portable_argv_puts_sockets_files_and_the_work_folder_in_placeholders():
    source, restore = repro.qemu_runs(DEBUG_LOG)
    argv = repro.portable_argv(source.argv, SNAPDIR)
    assert "socket,wait=off,server=on,path={qmp},id=qmp_id_qmp1" in argv
    assert "socket,path={serial},id=chardev_serial0,wait=off,server=on" in argv
    assert argv[argv.index("-kernel") + 1] == "{kernel}"
    assert argv[argv.index("-initrd") + 1] == "{initrd}"
    assert not any("/var/tmp" in a for a in argv)
    assert repro.portable_argv(restore.argv, SNAPDIR)[-1] == "exec:cat {work}/bgsnap-snapshot.bin"


@pytest.mark.parametrize("reason, metrics, expect", [
    ("ImageNotRestorable: QEMU did not restore x", {"restore_error": "exited"}, repro.RESTORE_FAILS),
    ("GuestWedged: the source does not answer", {}, repro.SOURCE_WEDGED),
    ("restored RAM: BAD (12 pages)", {"host_verify": "BAD: 12 earlier_step"}, repro.VERIFY_BAD),
])
def test_expectation_follows_what_the_test_failed_on(reason, metrics, expect):
    assert repro.expectation(reason, metrics) == expect


def test_an_unknown_failure_has_no_reproducer():
    with pytest.raises(repro.ReproError):
        repro.expectation("TestError: workload not running", {})


def test_source_steps_end_with_the_save_and_restore_steps_with_the_dump():
    assert [s["cmd"] for s in repro.source_steps(TRACE, 100)] == [
        "migrate-set-capabilities", "migrate", "query-migrate", "query-migrate"]
    assert [s["cmd"] for s in repro.restore_steps(TRACE, 200)] == [
        "query-migrate", "dump-guest-memory"]
    assert repro.restore_steps(TRACE, None) == []   # a QEMU that never came up


def test_a_failed_save_ends_the_source_steps():
    trace = TRACE[:2] + [{"pid": 100, "cmd": "query-migrate",
                          "answer": {"status": "failed", "error-desc": "broken pipe"}},
                         {"pid": 100, "cmd": "query-status", "answer": "running"}]
    assert repro.source_steps(trace, 100)[-1]["answer"]["status"] == "failed"


def test_plan_replaces_test_paths_and_carries_workload_and_verify():
    plan = repro.make_plan("system.bgsnap.x", DEBUG_LOG, TRACE, METRICS,
                           "restored RAM: BAD (3 pages)")
    assert plan["expect"] == repro.VERIFY_BAD
    assert plan["source_qmp"][1]["args"]["uri"] == "exec:cat > {work}/bgsnap-snapshot.bin"
    assert plan["restore_qmp"][-1]["args"]["protocol"] == "file:{work}/bgsnap-restored-ram.elf"
    assert "--nonce 42" in plan["workload_start"] and plan["workload_start"].endswith("&")
    assert plan["verify_argv"][:2] == ["{wl}", "verify-dump"]
    assert "{work}/bgsnap-restored-ram.elf" in plan["verify_argv"]
    assert plan["original_files"] == {"kernel": "/g/kernel/vmlinuz", "initrd": "/g/initrd-1.img"}
    assert SNAPDIR not in json.dumps(plan)


def test_a_wedge_plan_needs_no_restore():
    plan = repro.make_plan("t", DEBUG_LOG.split("[stdlog] 2026-12-02 03:46:57")[0], TRACE,
                           METRICS, "GuestWedged: the source does not answer")
    assert plan["restore_argv"] is None and plan["verify_argv"] is None


def test_records_missing_are_an_error_not_a_script():
    with pytest.raises(repro.ReproError, match="QMP trace"):
        repro.make_plan("t", DEBUG_LOG, [], METRICS, "GuestWedged: x")
    with pytest.raises(repro.ReproError, match="qemu command"):
        repro.make_plan("t", "", TRACE, METRICS, "GuestWedged: x")


def _load(text: str) -> dict:
    """The script's names, without running its main()."""
    namespace = {"__file__": "/x/repro.py", "__name__": "repro_under_test"}
    exec(compile(text, "repro", "exec"), namespace)
    return namespace


def test_rendered_script_is_python_with_the_plan_in_it():
    plan = repro.make_plan("t", DEBUG_LOG, TRACE, METRICS, "ImageNotRestorable: x")
    text = repro.render(plan)
    tree = ast.parse(text)
    imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
               for a in n.names}
    imports |= {n.module.split(".")[0] for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module}
    assert imports <= {"argparse", "json", "os", "re", "shutil", "socket", "subprocess",
                       "sys", "tempfile", "threading", "time"}    # the stdlib only
    namespace = _load(text)
    assert namespace["PLAN"] == plan
    assert text.startswith("#!/usr/bin/env python3\n# Reproducer of t: expects 'restore-fails'")


def test_script_fill_and_console_reply_parsing():
    text = repro.render(repro.make_plan("t", DEBUG_LOG, TRACE, METRICS, "ImageNotRestorable: x"))
    ns = _load(text)
    assert ns["fill"]({"uri": "file:{work}/a", "n": [1, "{wl}"]}, {"work": "/w", "wl": "/b"}) == \
        {"uri": "file:/w/a", "n": [1, "/b"]}
    assert ns["wl_reply"]('echo x\r\n#WL# {"ok": true, "phase": "running"}\r\n') == \
        {"ok": True, "phase": "running"}
    assert ns["wl_reply"]("no answer") is None


class _Monitor:
    log_file = "qmp1-vm1-pid-4379.log"


def test_trace_collapses_polls_and_records_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(qmp_trace.OUTPUTDIR_ENV, str(tmp_path))
    monkeypatch.setattr(qmp_trace, "_last_poll", {})
    mon = _Monitor()
    qmp_trace.record(mon, "query-migrate-capabilities", None, [{"capability": "x"}])
    qmp_trace.record(mon, "migrate", {"uri": "exec:cat > f"}, {})
    for status in ("active", "active", "active", "completed", "completed"):
        qmp_trace.record(mon, "query-migrate", None, {"status": status, "ram": {}})
    qmp_trace.record(mon, "migrate-incoming", {"uri": "file:f"}, error="Connection reset")
    lines = qmp_trace.read(tmp_path / qmp_trace.TRACE_FILE)
    assert [(l["cmd"], l.get("answer")) for l in lines] == [
        ("query-migrate-capabilities", None), ("migrate", None),
        ("query-migrate", {"status": "active"}), ("query-migrate", {"status": "completed"}),
        ("migrate-incoming", None)]
    assert {l["pid"] for l in lines} == {4379}
    assert lines[-1]["error"] == "Connection reset"


def test_no_trace_outside_a_test(monkeypatch):
    monkeypatch.delenv(qmp_trace.OUTPUTDIR_ENV, raising=False)
    import virttest.utils_logfile as logfile
    monkeypatch.setattr(logfile, "get_log_file_dir", lambda: None)
    assert qmp_trace.trace_path() is None


def test_pick_test_takes_the_named_or_the_first_failed():
    tests = [{"name": "a", "id": "1-a", "status": "PASS"},
             {"name": "b.x", "id": "2-b.x", "status": "FAIL"}]
    assert repro.pick_test(tests, None)["name"] == "b.x"
    assert repro.pick_test(tests, "a")["name"] == "a"
    with pytest.raises(repro.ReproError):
        repro.pick_test(tests[:1], None)


def test_test_param_reads_avocado_vts_parameter_dump():
    assert repro.test_param(DEBUG_LOG, "bgsnap_wl_binary") == "/g/bin/bgsnap-wl"
    assert repro.test_param(DEBUG_LOG, "nope") is None

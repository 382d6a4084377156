"""The probe-stall wrapper: '-e ' dropped for stdio probes only, argv intact."""

import subprocess
import sys
from pathlib import Path

import pytest

from avocado_bgsnap import vt_compat


def fake_qemu(tmp_path):
    script = tmp_path / "fake-qemu"
    script.write_text('#!/bin/bash\necho "ARGS:$*"\necho "ENV:${BGSNAP_X:-}"\n'
                      'case " $* " in *" stdio "*) cat ;; esac\n')
    script.chmod(0o755)
    return script


def run(wrapper, args, stdin):
    return subprocess.run([str(wrapper)] + args, input=stdin, capture_output=True,
                          text=True, timeout=10, check=True).stdout


def test_dash_echo_prefix_is_removed_for_monitor_stdio(tmp_path):
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w", str(fake_qemu(tmp_path)))
    out = run(wrapper, ["-monitor", "stdio", "-S"], "-e help\nquit\n")
    assert "ARGS:-monitor stdio -S" in out
    assert "\nhelp\nquit\n" in out and "-e help" not in out


def test_qemu_runs_once_for_a_probe(tmp_path):
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w", str(fake_qemu(tmp_path)))
    out = run(wrapper, ["-qmp", "stdio"], "-e {}\n")
    assert out.count("ARGS:") == 1


def test_real_binary_behind_the_wrapper(tmp_path):
    real = fake_qemu(tmp_path)
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w w", str(real))
    assert vt_compat.real_qemu_binary(str(wrapper)) == str(real)
    assert vt_compat.real_qemu_binary(str(real)) == str(real)
    assert vt_compat.real_qemu_binary("/nonexistent") == "/nonexistent"


def test_other_invocations_are_untouched(tmp_path):
    wrapper = vt_compat.write_qemu_wrapper(tmp_path / "w", str(fake_qemu(tmp_path)),
                                           extra_args=("-L", "/x y"), extra_env={"BGSNAP_X": "1"})
    out = run(wrapper, ["-name", "vm1", "-e"], "")
    assert "ARGS:-L /x y -name vm1 -e" in out and "ENV:1" in out


def test_placeholder_link_satisfies_bootstrap_check(tmp_path):
    link = vt_compat.ensure_provider_download_placeholder(tmp_path / "p", tmp_path)
    assert list((tmp_path / "p" / "downloads").iterdir()) == [link]
    assert vt_compat.ensure_provider_download_placeholder(tmp_path / "p", tmp_path) == link


# --- workaround 10: the remote spawner's fixed task dir --------------------------------

class _Test:
    def __init__(self, logdir, queue=None):
        self.logdir = str(logdir)
        if queue is not None:
            self.queue = queue


def test_a_remote_task_is_recognised_by_its_session_only_under_the_runner(monkeypatch):
    monkeypatch.delenv(vt_compat.REMOTE_ENV, raising=False)
    assert vt_compat.remote_output_dir(_Test("/var/lib/job/test-results/1-x", [])) is None
    monkeypatch.setenv(vt_compat.REMOTE_ENV, "1")
    assert vt_compat.remote_output_dir(_Test("/var/lib/job/test-results/1-x", [])) \
        == Path("/var/lib/job/test-results/1-x")
    assert vt_compat.remote_output_dir(_Test("/var/lib/job/test-results/1-x")) is None


def _task_dir(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("debug.log", "whiteboard", "stderr", "data/bgsnap-metrics.json", "serial.log"):
        (tmp_path / name).write_text(name)
    return tmp_path


def test_an_earlier_tests_files_are_cleared_the_streamed_ones_kept(tmp_path):
    import os
    import time

    task = _task_dir(tmp_path)
    old = time.time() - 60
    for name in ("data/bgsnap-metrics.json", "serial.log", "debug.log"):
        os.utime(task / name, (old, old))
    (task / "new.log").write_text("this test's")
    assert vt_compat.clear_remote_output(task, before=time.time() - 30) == 2
    assert sorted(str(p.relative_to(task)) for p in task.rglob("*") if p.is_file()) == [
        "debug.log", "new.log", "stderr", "whiteboard"]


def test_the_tests_files_are_sent_as_file_messages_in_chunks(tmp_path, monkeypatch):
    task = _task_dir(tmp_path)
    (task / "data" / "bgsnap-metrics.json").write_bytes(b"x" * 5)
    monkeypatch.setattr(vt_compat, "FILE_CHUNK", 2)
    class Queue(list):
        put = list.append

    queue = Queue()
    assert vt_compat.send_remote_output(queue, task) == 2
    sent = [(m["type"], m["path"], m["log"]) for m in queue]
    # sent, then gone from this host; the streamed logs stay
    assert sorted(p.name for p in task.rglob("*") if p.is_file()) == [
        "debug.log", "stderr", "whiteboard"]
    assert sent == [
        ("file", "data/bgsnap-metrics.json", b"xx"), ("file", "data/bgsnap-metrics.json", b"xx"),
        ("file", "data/bgsnap-metrics.json", b"x"), ("file", "serial.log", b"se"),
        ("file", "serial.log", b"ri"), ("file", "serial.log", b"al"), ("file", "serial.log", b".l"),
        ("file", "serial.log", b"og")]


def test_process_start_is_a_unix_time():
    import os
    import time

    assert abs(vt_compat.started_at(os.getpid()) - time.time()) < 3600
    assert vt_compat.started_at(2**22 + 7) == 0.0


# --- workaround 11: the remote spawner's sessions ---------------------------------------

def test_remote_sessions_are_closed_once(monkeypatch):
    from avocado_spawner_remote import RemoteSpawner

    class Session:
        closed = 0

        def close(self):
            Session.closed += 1

    monkeypatch.setattr(RemoteSpawner, "slots_cache", {Session(): False, Session(): True})
    assert vt_compat.close_remote_sessions() == 2
    assert Session.closed == 2 and RemoteSpawner.slots_cache == {}
    assert vt_compat.close_remote_sessions() == 0


def _unix_pair(path):
    import socket
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    return server


class _SerialVM:
    def __init__(self, *paths):
        self.paths = [str(p) for p in paths]

    def get_serial_console_filenames(self):
        return self.paths


def test_a_serial_console_counts_as_up_once_its_socket_is_connected(tmp_path):
    import socket
    path = tmp_path / "serial"
    server = _unix_pair(path)
    try:
        # negative control: QEMU listening, nobody connected yet
        assert not vt_compat._serials_connected(_SerialVM(path))
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        accepted, _ = server.accept()
        assert vt_compat._serials_connected(_SerialVM(path))
        # every console must be up, not just one
        assert not vt_compat._serials_connected(_SerialVM(path, tmp_path / "other"))
        client.close()
        accepted.close()
    finally:
        server.close()


def test_vm_start_waits_are_shortened_only_inside_create():
    import time
    import types

    calls = []
    fake_aexpect = types.SimpleNamespace(
        run_tail=lambda *a, **k: calls.append(("run_tail", k.get("timeout"))),
        Tail=object)

    class VM:
        def get_serial_console_filenames(self):
            return []  # nothing to watch: the sleep returns at once

        def create(self):
            module.aexpect.run_tail("qemu", None, None, "[qemu output] ")
            assert module.aexpect.Tail is object      # the rest is the real module's
            started = time.monotonic()
            module.time.sleep(1)
            calls.append(("slept", round(time.monotonic() - started, 1)))
            calls.append(("time", module.time.time() > 0))
            return "created"

    module = types.SimpleNamespace(VM=VM, aexpect=fake_aexpect, time=time)
    vt_compat.quick_vm_start(module)
    vt_compat.quick_vm_start(module)  # once per process: not wrapped twice
    assert module.VM.create.bgsnap_quick
    assert VM().create() == "created"
    assert calls == [("run_tail", vt_compat.RUN_TAIL_WAIT_S), ("slept", 0.0), ("time", True)]
    # outside create() qemu_vm sees the real modules again
    assert module.aexpect is fake_aexpect and module.time is time


def test_the_vt_runner_is_known_as_its_own_capabilities_command_says(monkeypatch):
    """Workaround 13: what the in-process registration records is what
    avocado's probe of the runner's command would have recorded."""
    import json
    import subprocess

    registry, config_used = {}, {}
    assert vt_compat.known_vt_runner(registry, config_used)
    command = ["avocado-runner-avocado-vt"]
    assert registry == {"avocado-vt": command}
    probed = json.loads(subprocess.run([*command, "capabilities"], capture_output=True,
                                       text=True, check=True).stdout)
    assert sorted(config_used[" ".join(command)]) == sorted(probed["configuration_used"])
    # a runner already known is left alone; none on PATH: nrunner decides
    assert not vt_compat.known_vt_runner(registry, {})
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not vt_compat.known_vt_runner({}, {})


def test_qemu_probes_are_answered_once_per_command_line_inside_devcontainer_only(tmp_path):
    """Workaround 14, with stand-ins: a second VM object asks the binary
    nothing new; a different command line is run; outside the constructor
    the modules see the real process module again."""
    import types

    ran = []
    real = types.SimpleNamespace(run=lambda cmd, **kw: ran.append(cmd) or f"out:{cmd}",
                                 system=lambda cmd: "system")

    class DevContainer:
        def __init__(self, binary):
            self.help = qcontainer.process.run(f"{binary} -help", shell=True)
            self.version = utils_qemu.process.run(f"{binary} -version", shell=True)
            assert qcontainer.process.system("x") == "system"  # the rest is the real module's

    qcontainer = types.SimpleNamespace(DevContainer=DevContainer, process=real)
    utils_qemu = types.SimpleNamespace(process=real)
    answers = {}
    vt_compat.memoized_qemu_probes(qcontainer, utils_qemu, answers, tmp_path / "store.json")
    vt_compat.memoized_qemu_probes(qcontainer, utils_qemu, answers, tmp_path / "store.json")
    first, second = DevContainer("/q/a"), DevContainer("/q/a")
    assert (first.help, second.version) == ("out:/q/a -help", "out:/q/a -version")
    assert ran == ["/q/a -help", "/q/a -version"]
    DevContainer("/q/b")  # another binary: asked
    assert ran[2:] == ["/q/b -help", "/q/b -version"]
    assert qcontainer.process is real and utils_qemu.process is real


def test_a_real_devcontainer_built_twice_asks_qemu_once(monkeypatch, tmp_path):
    """Workaround 14 on avocado-vt's own DevContainer and the host's QEMU:
    the second object gets the same answers without starting QEMU."""
    import shutil

    import pytest
    from avocado.utils import process
    from virttest import utils_qemu
    from virttest.qemu_devices import qcontainer

    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("no qemu-system-x86_64 on this host")
    # the suite's probe wrapper (workaround 2): without it one probe stalls 10 s
    binary = str(vt_compat.write_qemu_wrapper(tmp_path / "qemu", binary, (), {}))
    original_init = qcontainer.DevContainer.__init__
    monkeypatch.setattr(qcontainer.DevContainer, "__init__", original_init)
    started = []
    real_run = process.run
    monkeypatch.setattr(process, "run", lambda cmd, *a, **k: started.append(cmd)
                        or real_run(cmd, *a, **k))
    store = tmp_path / "qemu-probes.json"
    vt_compat.memoized_qemu_probes(qcontainer, utils_qemu, {}, store)
    first = qcontainer.DevContainer(binary, "vm1")
    asked = len(started)
    second = qcontainer.DevContainer(binary, "vm2")
    assert asked >= 5 and len(started) == asked
    assert first.get_help_text() == second.get_help_text()
    # the next test process: the stored answers, QEMU not started at all
    monkeypatch.setattr(qcontainer.DevContainer, "__init__", original_init)
    vt_compat.memoized_qemu_probes(qcontainer, utils_qemu, {}, store)
    third = qcontainer.DevContainer(binary, "vm3")
    assert len(started) == asked and third.get_help_text() == first.get_help_text()
    # a changed binary (here: its wrapper rewritten) is another entry: asked again
    vt_compat.write_qemu_wrapper(Path(binary), shutil.which("qemu-system-x86_64"), ("-L", "/x"), {})
    monkeypatch.setattr(qcontainer.DevContainer, "__init__", original_init)
    vt_compat.memoized_qemu_probes(qcontainer, utils_qemu, {}, store)
    qcontainer.DevContainer(binary, "vm4")
    assert len(started) > asked
    # answers of a binary that is gone are dropped at the next save
    import json
    data = json.loads(store.read_text())
    data["/gone/qemu:1:2"] = {}
    store.write_text(json.dumps(data))
    vt_compat.save_probe_answers(store, "/gone/other:1:2|" + binary + ":1:2", {})
    assert not any(fp.startswith("/gone/qemu") for fp in json.loads(store.read_text()))


def test_no_ip_sniffer_for_vms_without_nics():
    """Workaround 15: avocado-vt's sniffer starts only for a test with a NIC."""
    import types

    from virttest import utils_params

    started = []

    class Env:
        def start_ip_sniffing(self, params):
            started.append(params.get("vms"))

    utils_env = types.SimpleNamespace(Env=Env)
    vt_compat.no_sniffer_without_nics(utils_env)
    vt_compat.no_sniffer_without_nics(utils_env)
    Env().start_ip_sniffing(utils_params.Params({"vms": "vm1", "nics": ""}))
    assert started == []
    Env().start_ip_sniffing(utils_params.Params({"vms": "vm1", "nics": "nic1"}))
    Env().start_ip_sniffing(utils_params.Params({"vms": "vm1 vm2", "nics_vm2": "nic1"}))
    assert started == ["vm1", "vm1 vm2"]


def test_a_restores_stream_is_seen_flowing_only_once_qemu_takes_it_in(tmp_path):
    """Workaround 12, restoring QEMU: the stream's reader under the process
    counts once it read 1 MiB, which a reader whose pipe nobody drains
    cannot (a QEMU that refused the header); QEMU's own reads never count."""
    import subprocess
    import time

    image = tmp_path / "image"
    image.write_bytes(b"\0" * (4 << 20))
    # cat reads the image, then waits on its stdin: alive, as a restore's reader is
    drained = subprocess.Popen(["sh", "-c", f"cat {image} - > /dev/null"],
                               stdin=subprocess.PIPE)
    stuck = subprocess.Popen(["sh", "-c", f"cat {image} | sleep 5"])
    try:
        deadline = time.monotonic() + 5
        while not vt_compat.stream_flowing(drained.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vt_compat.stream_flowing(drained.pid)
        time.sleep(0.3)  # the stuck cat filled its pipe long ago
        assert not vt_compat.stream_flowing(stuck.pid)
    finally:
        for proc in (drained, stuck):
            proc.kill()
            proc.wait()


def test_restore_run_tail_returns_when_the_stream_flows_or_the_process_ends(monkeypatch):
    import time
    import types

    calls = []

    def run_tail(*args, **kwargs):
        calls.append((args, kwargs))
        return types.SimpleNamespace(is_alive=lambda: alive[0], get_pid=lambda: 1)

    alive = [True]
    monkeypatch.setattr(vt_compat, "stream_flowing", lambda pid: True)
    started = time.monotonic()
    vt_compat.restore_run_tail(run_tail, "qemu", None, None, "[qemu output] ", auto_close=False)
    assert time.monotonic() - started < 0.5
    assert calls[-1] == (("qemu", None, None, "[qemu output] "), {"auto_close": False,
                                                                   "timeout": 0})
    monkeypatch.setattr(vt_compat, "stream_flowing", lambda pid: False)
    started = time.monotonic()
    vt_compat.restore_run_tail(run_tail, "qemu", None, None, "", 0.3)  # positional wait
    assert 0.3 <= time.monotonic() - started < 0.8 and calls[-1][0][4] == 0
    alive[0] = False  # exited: no wait at all
    started = time.monotonic()
    vt_compat.restore_run_tail(run_tail, "qemu", None, None, "")
    assert time.monotonic() - started < 0.2


class _Console:
    """What marked_login() reads: scripted replies of aexpect's two reads."""

    def __init__(self, found, text, prompt_ok=True):
        self.found, self.text, self.prompt_ok = found, text, prompt_ok
        self.prompt_reads = 0

    def set_linesep(self, _):
        pass

    def set_status_test_command(self, _):
        pass

    def read_until_output_matches(self, patterns, timeout, internal_timeout):
        assert internal_timeout == vt_compat.RESTORED_QUIET_S
        if self.found is None:
            import aexpect
            raise aexpect.ExpectTimeoutError(patterns, self.text)
        return self.found, self.text

    def read_until_last_line_matches(self, patterns, timeout, internal_timeout):
        self.prompt_reads += 1
        if not self.prompt_ok:
            import aexpect
            raise aexpect.ExpectTimeoutError(patterns, "")
        return 0, "/ # "


def _vm(console):
    import types

    manager = types.SimpleNamespace(_console=console, status_test_command="echo $?")
    return types.SimpleNamespace(console_manager=manager, params={"shell_prompt": r"[\#\$]\s*$"})


def test_marked_login_takes_the_shell_after_the_marker_or_falls_back(monkeypatch):
    from virttest import vt_console

    fallback = []
    monkeypatch.setattr(vt_compat, "serial_login",
                        lambda vm, timeout, attempt: fallback.append(timeout) or "fallback")
    marker = "BGSNAP-GUEST-READY"
    # the prompt came in the same read as the marker: no second read
    console = _Console(0, f"[    1.0] booted\n{marker}\n/ # ")
    session = vt_compat.marked_login(_vm(console), marker, 60)
    assert isinstance(session, vt_compat.QuickReplies)           # workaround 16
    assert isinstance(session.session, vt_console.ConsoleSession)
    assert console.prompt_reads == 0 and not fallback
    # the marker alone: the prompt is read after it ('#1 SMP' before it is no prompt)
    console = _Console(0, f"Linux version 6.1 #1 SMP\n{marker}\n")
    assert isinstance(vt_compat.marked_login(_vm(console), marker, 60).session,
                      vt_console.ConsoleSession)
    assert console.prompt_reads == 1 and not fallback
    # the init is not ready, no marker, or no prompt after it: serial_login()
    for console in (_Console(1, "bgsnap-init: ERROR: not ready"), _Console(None, "booting"),
                    _Console(0, f"{marker}\n", prompt_ok=False)):
        assert vt_compat.marked_login(_vm(console), marker, 60) == "fallback"
    assert len(fallback) == 3 and all(0 < t <= 60 for t in fallback)


def test_restored_login_takes_the_prompt_or_falls_back(monkeypatch):
    """A restored guest's shell prompt after a newline: its session; no
    prompt (a login prompt, a silent guest): serial_login()."""
    import types

    from virttest import vt_console

    fallback = []
    monkeypatch.setattr(vt_compat, "serial_login",
                        lambda vm, timeout, attempt: fallback.append(timeout) or "fallback")
    sent = []
    for console, expected in ((_Console(0, ""), vt_console.ConsoleSession),
                              (_Console(0, "", prompt_ok=False), str)):
        vm = _vm(console)
        vm.serial_console = types.SimpleNamespace(sendline=sent.append)
        session = vt_compat.restored_login(vm, 30)
        assert isinstance(getattr(session, "session", session), expected)
    assert console.prompt_reads == 1 and sent == ["", ""] and fallback == [30]


# -- workaround 16: quick replies on a real aexpect shell -------------------------------
# a reply that pauses right after its leading '#' (longer than aexpect's quiet)
SPLIT_REPLY = "printf '#'; sleep 0.3; printf 'WL# {\"ok\":true}\\n'"


@pytest.fixture
def shell():
    import aexpect

    session = aexpect.ShellSession("env PS1='tst# ' bash --norc --noprofile -i",
                                   prompt=r"^.*[\#\$]\s*$")
    session.read_up_to_prompt(timeout=10)
    yield session
    session.close()


def test_quick_replies_wait_for_the_whole_reply(shell):
    quick = vt_compat.QuickReplies(shell, r"^.*[\#\$]\s*$")
    assert quick.cmd_output(SPLIT_REPLY, timeout=10) == '#WL# {"ok":true}\n'
    assert quick.cmd_output("echo next", timeout=10) == "next\n"
    # aexpect's own arguments still reach aexpect; other methods are the session's
    assert quick.cmd_output("echo own", timeout=10, internal_timeout=0.2) == "own\n"
    assert quick.cmd_status_output("true", timeout=10)[0] == 0


def test_plain_aexpect_cuts_a_reply_at_its_hash(shell):
    """Negative control: the hazard workaround 16 removes is real (when this
    fails, aexpect reads to the end of a quiet console: drop the workaround)."""
    assert shell.cmd_output(SPLIT_REPLY, timeout=10) == ""
    import time
    time.sleep(0.5)
    assert "WL# " in shell.read_nonblocking(0.1)


def test_quick_replies_time_out_as_aexpect_does(shell):
    import aexpect

    quick = vt_compat.QuickReplies(shell, r"^NEVER$")
    with pytest.raises(aexpect.ShellTimeoutError):
        quick.cmd_output("echo x", timeout=0.5)


def test_prompt_candidate_skips_workload_replies():
    for text in ("#", "out\n#W", "#WL#", '#WL# {"ok": true', '#WL# {"ok":true}\n'):
        assert vt_compat.prompt_candidate(text) == "", text
    assert vt_compat.prompt_candidate('#WL# {"ok":true}\nbgsnap-guest# ') == "bgsnap-guest# "
    assert vt_compat.prompt_candidate("root@debian:~# \n\n") == "root@debian:~# "
    assert vt_compat.prompt_candidate("# ") == "# "
    vm = _vm(None)
    wrapped = vt_compat.quick_replies("session", vm)
    assert vt_compat.quick_replies(wrapped, vm) is wrapped


LOOKUP = "d=; for x in /run /tmp; do if [ -d $x ] && [ -w $x ]; then d=$x; break; fi; done; echo $d"


def test_no_prompt_while_the_echo_is_arriving():
    """busybox ash wraps a long command's echo at 80 columns; a wrapped line
    starting with '$' matches the guests' prompt pattern.  Without the
    command (the negative control) that '$' is taken for the prompt."""
    wrapped = "d=; for x in /run /tmp; do if [ -d $x ] && [ -w\r\n$"
    assert vt_compat.prompt_candidate(wrapped) == "$"
    assert vt_compat.prompt_candidate(wrapped, LOOKUP) == ""
    assert vt_compat.prompt_candidate("\x1b[6n" + wrapped, LOOKUP) == ""
    done = LOOKUP[:40] + "\r\n" + LOOKUP[40:] + "\r\n/run\r\nbgsnap-guest# "
    assert vt_compat.prompt_candidate(done, LOOKUP) == "bgsnap-guest# "
    # a shell that does not echo: its output is never taken for an echo
    assert not vt_compat.echo_pending("/run\r\nbgsnap-guest# ", LOOKUP)
    assert vt_compat.echo_pending("", LOOKUP)


# a shell whose echo stops for 0.3 s right after a wrapped line's '$'
WRAPPING_SHELL = r"""
import sys, time
out = sys.stdout
out.write("tst# "); out.flush()
for line in sys.stdin:
    cmd = line.rstrip("\n")
    cut = cmd.index(" $", 30) + 1
    out.write(cmd[:cut] + "\r\n" + cmd[cut]); out.flush()
    time.sleep(0.3)
    out.write(cmd[cut + 1:] + "\r\n"); out.flush()
    out.write("ran\r\ntst# "); out.flush()
"""


def test_quick_replies_wait_for_a_wrapped_echo(tmp_path):
    """On a real aexpect session: the wrapped echo's '$' is not the prompt
    with the wrapper (the negative control: plain matching on the same
    text stops there)."""
    import aexpect

    script = tmp_path / "wrapping_shell.py"
    script.write_text(WRAPPING_SHELL)
    session = aexpect.ShellSession(f"{sys.executable} -u {script}", prompt=r"^.*[\#\$]\s*$")
    try:
        session.read_up_to_prompt(timeout=10)
        quick = vt_compat.QuickReplies(session, r"^.*[\#\$]\s*$")
        assert quick.cmd_output(LOOKUP, timeout=10).splitlines()[-1].strip() == "ran"
        session.sendline(LOOKUP)
        _, cut = session.read_until_output_matches([r"^.*[\#\$]\s*$"], vt_compat.prompt_candidate,
                                                   10, 0.01)
        assert "ran" not in cut
    finally:
        session.close()

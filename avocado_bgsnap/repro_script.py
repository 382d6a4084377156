#!/usr/bin/env python3
# REPRO-HEADER
"""Standalone reproducer written by ``avocado bgsnap repro`` (docs/repro.md).

Needs only QEMU, Python 3 (stdlib) and, next to this script, the guest
kernel ``vmlinuz``, the initramfs ``initrd.img`` (the workload is in it) and
the static host binary ``bgsnap-wl``.  It boots the guest with the test's
QEMU command line, starts the workload on the serial console, replays the
test's QMP steps (background snapshot), restores the image into a second
QEMU, dumps its RAM and verifies it with ``bgsnap-wl verify-dump``, then
checks what the test failed on (PLAN["expect"]):

  restore-fails  the restoring QEMU cannot load the image
  verify-bad     the restored RAM is not the snapshot instant (verify BAD)
  source-wedged  after the failed save the guest does not answer

Exit 1: the failure reproduced; 0: it did not (the build has no such bug);
2: the script could not get as far as the check (see its output).
Options: --qemu BINARY (another build), --keep (keep the work folder),
--wedge-timeout S (how long a guest may take to answer).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

PLAN = {}  # filled in by avocado_bgsnap.repro

HERE = os.path.dirname(os.path.abspath(__file__))
READY_MARKER = "BGSNAP-GUEST-" + "READY"
FINAL = ("completed", "failed", "cancelled")
REPRODUCED, NOT_REPRODUCED, INCOMPLETE = 1, 0, 2


def say(text):
    print(time.strftime("%H:%M:%S"), text, flush=True)


class Failure(Exception):
    """A step did not work; the message says which."""


class QMP:
    """A minimal QMP client over a unix socket."""

    def __init__(self, path, timeout=30):
        self.sock = _connect(path, timeout)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise Failure("QEMU closed its QMP socket")
        return json.loads(line)

    def execute(self, cmd, args=None, timeout=600):
        """QEMU's 'return', or raise QMPError with its 'desc'."""
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        try:
            self.sock.settimeout(timeout)
            self.file.write(json.dumps(msg).encode() + b"\n")
            self.file.flush()
            return self._answer()
        except OSError as exc:  # reset, timeout: QEMU went or hangs
            raise Failure("QMP %s: %s" % (cmd, exc)) from exc

    def _answer(self):
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QMPError(reply["error"].get("desc", str(reply["error"])))
            elif "return" in reply:
                return reply["return"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class QMPError(Failure):
    pass


class Console:
    """The guest's shell on its serial port (a unix socket)."""

    def __init__(self, path, timeout=30):
        self.sock = _connect(path, timeout)
        self.buf = ""
        self.lock = threading.Lock()
        self.count = 0
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.buf += data.decode("utf-8", "replace")

    def wait_for(self, pattern, timeout, start=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                match = re.search(pattern, self.buf[start:])
                if match:
                    return match, self.buf[start:start + match.start()]
            time.sleep(0.05)
        return None, None

    def run(self, command, timeout=60):
        """Run one shell command; its output, or None when the shell does
        not answer within ``timeout``."""
        self.count += 1
        with self.lock:
            start = len(self.buf)
        # the end marker is split in the command so its echo never matches;
        # a line of its own: the command may end with '&'
        self.sock.sendall(("%s\necho __BGSNAP_''DONE_%d $?\n" % (command, self.count)).encode())
        match, output = self.wait_for(r"__BGSNAP_DONE_%d (\d+)" % self.count, timeout, start)
        return None if match is None else output


def _connect(path, timeout):
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise Failure("cannot connect to %s" % path)
            time.sleep(0.1)


def wl_reply(output):
    """The JSON of the last '#WL#' line of the workload's console output."""
    lines = [line for line in (output or "").splitlines() if line.startswith("#WL#")]
    return json.loads(lines[-1][4:]) if lines else None


def verify_summary(stdout):
    """One line of verify-dump's '#WL#' reply: clean or how many pages are bad."""
    reply = wl_reply(stdout)
    if not reply:
        return stdout.strip()[-300:] or "no output"
    if reply.get("clean"):
        return "CLEAN: %s pages, checksum %s" % (reply.get("npages"), reply.get("checksum"))
    first = ", ".join("page %(page)s %(kind)s (found step %(found_step)s, expected "
                      "%(expected_step)s)" % b for b in reply.get("bad_first", [])[:3])
    return "BAD: %s of %s pages %s; first: %s" % (
        reply.get("bad_pages"), reply.get("npages"), reply.get("kinds", {}), first)


class Qemu:
    """One QEMU started from an argv with placeholders, its output in a log."""

    def __init__(self, name, argv, subst, qemu_binary):
        self.name = name
        self.qmp_path = os.path.join(subst["work"], name + "-qmp.sock")
        self.serial_path = os.path.join(subst["work"], name + "-serial.sock")
        values = dict(subst, qmp=self.qmp_path, serial=self.serial_path)
        self.argv = [fill(a, values) for a in argv]
        if qemu_binary:
            self.argv[0] = qemu_binary
        self.log_path = os.path.join(subst["work"], name + "-qemu.log")
        say("%s QEMU: %s" % (name, " ".join(_quote(a) for a in self.argv)))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def exited(self, within=0.0):
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def said(self):
        with open(self.log_path, errors="replace") as f:
            lines = [l.strip() for l in f if "qemu-system" in l or "qemu-" in l[:12]]
        return " | ".join(lines[-5:]) or "no output"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _quote(arg):
    return arg if re.match(r"^[\w@%+=:,./{}-]+$", arg) else "'%s'" % arg.replace("'", "'\\''")


def fill(value, values):
    """Placeholders {work} {qmp} {serial} {kernel} {initrd} {wl} filled in."""
    if isinstance(value, str):
        for key, text in values.items():
            value = value.replace("{%s}" % key, text)
        return value
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    return value


def replay(qmp, steps, values, timeout, who):
    """Send the test's QMP steps.  A recorded final 'query-migrate' is waited
    for (polled until a final state); returns the last migration status
    seen and the first error, if any."""
    status, error = None, None
    for step in steps:
        cmd, args = step["cmd"], fill(step.get("args"), values)
        final = step.get("answer", {}).get("status") if cmd == "query-migrate" else None
        if cmd == "query-migrate" and (final in FINAL or "error" in step):
            info = wait_migration(qmp, timeout)
            status = info.get("status")
            say("%s qmp query-migrate (polled until it ends) -> %s %s"
                % (who, status, info.get("error-desc", "")))
            if status != "completed":
                return status, info.get("error-desc", status)
            continue
        try:
            reply = qmp.execute(cmd, args)
        except QMPError as exc:
            say("%s qmp %s %s -> error: %s" % (who, cmd, json.dumps(args) if args else "", exc))
            error = error or "%s: %s" % (cmd, exc)
            if cmd in ("migrate", "migrate-incoming", "dump-guest-memory"):
                return status, error
            continue
        shown = {"query-status": lambda r: r.get("status"),
                 "query-migrate": lambda r: r.get("status", "no migration yet")
                 }.get(cmd, lambda r: "ok")(reply)
        say("%s qmp %s %s-> %s" % (who, cmd, json.dumps(args) + " " if args else "", shown))
    return status, error


def wait_migration(qmp, timeout):
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.execute("query-migrate")
        if info.get("status") in FINAL or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def boot_with_workload(qemu, timeout):
    if qemu.exited(1.0):
        raise Failure("the source QEMU exited at start: %s" % qemu.said())
    console = Console(qemu.serial_path)
    qmp = QMP(qemu.qmp_path)
    qmp.execute("cont")  # avocado-vt starts QEMU with -S, then continues it
    match, _ = console.wait_for(READY_MARKER, timeout)
    if match is None:
        raise Failure("the guest printed no %s within %ss" % (READY_MARKER, timeout))
    say("guest shell up; workload: %s" % PLAN["workload_start"])
    console.run(PLAN["workload_start"])
    deadline = time.monotonic() + timeout
    while True:
        status = wl_reply(console.run(PLAN["workload_status"]))
        if status and status.get("phase") == "running":
            say("workload running: %s steps" % status.get("steps_total"))
            return qmp, console
        if time.monotonic() > deadline:
            raise Failure("the workload is not running after %ss: %s" % (timeout, status))
        time.sleep(1)


def wait_channels(pid):
    """Each thread of process ``pid`` and where it sleeps in the kernel."""
    out = []
    for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
            with open("/proc/%d/task/%s/wchan" % (pid, tid)) as f:
                wchan = f.read().strip() or "-"
        except OSError:
            continue
        out.append("%s %s: %s" % (tid, comm, wchan))
    return out


def check_source(console, timeout, pid):
    say("does the guest answer within %ss?" % timeout)
    reply = wl_reply(console.run(PLAN["workload_status"], timeout=timeout))
    if reply is None:
        say("QEMU threads' wait channels: %s" % ", ".join(wait_channels(pid)))
        say("REPRODUCED: the guest does not answer on its console within %ss "
            "after the failed save" % timeout)
        return REPRODUCED
    say("NOT REPRODUCED: the guest answers (phase %s, %s steps)"
        % (reply.get("phase"), reply.get("steps_total")))
    return NOT_REPRODUCED


def restore_and_verify(values, args):
    expect = PLAN["expect"]
    clone = Qemu("restore", PLAN["restore_argv"], values, args.qemu)
    try:
        try:
            qmp = QMP(clone.qmp_path)
            status, error = replay(qmp, PLAN["restore_qmp"], values, args.timeout, "restore")
        except Failure as exc:
            status, error = None, str(exc)
        if error or (status and status != "completed") or clone.exited(0.5):
            clone.exited(3)
            said = clone.said()
            if expect == "restore-fails":
                say("REPRODUCED: the restore failed: %s; QEMU said: %s" % (error or status, said))
                return REPRODUCED
            raise Failure("the restore failed (%s; QEMU said: %s)" % (error or status, said))
        if expect == "restore-fails":
            say("NOT REPRODUCED: the image restored")
        dump = os.path.join(values["work"], "bgsnap-restored-ram.elf")
        if not os.path.exists(dump):
            raise Failure("no RAM dump: the plan has no dump-guest-memory step")
        argv = fill(PLAN["verify_argv"], values)
        say("verify: %s" % " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True)
        say("verify-dump exit %d: %s" % (proc.returncode, verify_summary(proc.stdout)))
        if proc.returncode not in (0, 1):
            raise Failure("verify-dump could not judge: %s" % proc.stderr.strip()[-400:])
        if expect == "restore-fails":
            return NOT_REPRODUCED
        if proc.returncode == 1:
            say("REPRODUCED: the restored RAM verifies BAD")
            return REPRODUCED
        say("NOT REPRODUCED: the restored RAM verifies clean")
        return NOT_REPRODUCED
    finally:
        clone.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu", help="QEMU binary instead of the test's: %s"
                        % PLAN["source_argv"][0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--timeout", type=float, default=300, help="bound of a save/restore")
    parser.add_argument("--wedge-timeout", type=float, default=30,
                        help="seconds the guest may take to answer after the save")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bgsnap-repro-")
    values = {"work": work, "kernel": os.path.join(HERE, "vmlinuz"),
              "initrd": os.path.join(HERE, "initrd.img"), "wl": os.path.join(HERE, "bgsnap-wl")}
    say("reproducing %s (expect %s); work folder %s" % (PLAN["test"], PLAN["expect"], work))
    source = None
    try:
        source = Qemu("source", PLAN["source_argv"], values, args.qemu)
        qmp, console = boot_with_workload(source, 120)
        status, error = replay(qmp, PLAN["source_qmp"], values, args.timeout, "source")
        if PLAN["expect"] == "source-wedged":
            say("the save ended: %s" % (error or status))
            if status == "completed" and not error:
                say("NOT REPRODUCED: the save completed")
                return NOT_REPRODUCED
            return check_source(console, args.wedge_timeout, source.proc.pid)
        if error or status != "completed":
            raise Failure("the save did not complete: %s" % (error or status))
        source.stop()  # the restore needs the host's memory, not the source
        source = None
        return restore_and_verify(values, args)
    except Failure as exc:
        say("INCOMPLETE: %s" % exc)
        return INCOMPLETE
    except Exception as exc:  # never let a crash of this script look like exit 1
        say("INCOMPLETE: %s: %s" % (type(exc).__name__, exc))
        return INCOMPLETE
    finally:
        if source is not None:
            source.stop()
        if args.keep:
            say("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

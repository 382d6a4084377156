"""One snapshot -> restore -> verify cycle, step by step, on typed inputs.

Test modules call the steps in order (see ``tests/bgsnap_basic.py``); each
step records its figures into one :class:`metrics.Metrics`.  The cycle owns
every session, file and second QEMU it creates and releases them in
:meth:`cleanup` (restored VMs already on leaving their ``with`` block).
"""

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable

from virttest import remote, virt_vm

from . import internal_snapshot, restored_ram, snapshot, verifier, vt_compat
from .during import DuringSaveRun, SaveContext
from .host.memory import peak_rss_kib, process_memory, rss_kib
from .memory.predict import Expectation, Judgement, judge
from .metrics import Metrics
from .qmp import UNLIMITED_BANDWIDTH, QMPStepError, SnapshotQMP
from .settings import RUNNING_MODES, BgsnapSettings
from .verdicts import GuestWedged, ImageNotRestorable
from .workload import WINDOW_AFTER, WINDOW_BEFORE, WINDOW_DURING, GuestWorkload
from .wlproto import VerifyResult

SNAPSHOT_STEM = "bgsnap-snapshot"
LATE_IMAGE_STEM = "bgsnap-late-image"
DUMP_NAME = "bgsnap-restored-ram.elf"
LOGIN_TIMEOUT = 120
# A restored guest does not boot: its shell answers within seconds (~5 s
# measured under TCG); one that does not is wedged, not slow.
RESTORED_LOGIN_TIMEOUT = 30
# seconds between newlines sent while a distro guest boots to its login prompt
LOGIN_POKE_S = 15
# A running guest answers 'ctl status' in well under a second, even under TCG.
AFTER_RESUME_TIMEOUT = 20


class CycleError(Exception):
    """A step of the cycle could not be carried out (not a verdict)."""


class SnapshotCycle:
    def __init__(self, vm, cfg: BgsnapSettings, record: Metrics, workdir: Path,
                 wl_binary: Path, log: Callable[[str], None],
                 during: DuringSaveRun | None = None,
                 restore_params: tuple[tuple[str, str], ...] = ()):
        self.vm = vm
        self.during = during or DuringSaveRun((), log)
        # the default RAM restores into a memfd the host reads: no dump (restored_ram.py)
        self.dump_free = (cfg.mode != "snapshot_save"
                          and restored_ram.dump_free(cfg.memory, dict(restore_params)))
        self.restore_params = (restored_ram.restore_overrides(cfg.memory, dict(restore_params))
                               if self.dump_free else dict(restore_params))
        self.cfg = cfg
        self.record = record
        self.log = log
        self.wl_binary = wl_binary
        self.snapshot_dir = cfg.snapshot_dir or workdir
        self.internal = cfg.mode == "snapshot_save"
        suffix = internal_snapshot.SUFFIX if self.internal else cfg.transport.suffix
        self.snapshot_path = self.snapshot_dir / (SNAPSHOT_STEM + suffix)
        # the file restored: the snapshot, or the late image (negative control)
        self.image_path = self.snapshot_path
        self.dump_path = self.snapshot_dir / DUMP_NAME
        self.session = None
        self.workload: GuestWorkload | None = None
        self.steps_before: list[int] = []
        self.steps_after_resume: list[int] = []
        self.steps_completed: list[int] = []
        self.host_verify: VerifyResult | None = None
        self.guest_verify: VerifyResult | None = None
        self.source_verify: VerifyResult | None = None
        self.damaged_offset: int | None = None
        self.triggered_at = 0.0
        # the writers are held (a suspended guest): no progress is expected
        self.held = False
        spec = cfg.workload
        record.update({"guest_mem_mib": cfg.guest_mem_mib, "workload_mib": spec.mib,
                       "workload": dataclasses.asdict(spec),
                       "negative_control": cfg.negative_control, "mode": cfg.mode,
                       "qemu_build": cfg.qemu_build, "repetition": cfg.repetition,
                       "max_bandwidth_mib_s": cfg.max_bandwidth_mib_s,
                       "transport": dataclasses.asdict(cfg.transport),
                       # what bgsnap-leftovers.json must not count (docs/leftovers.md)
                       "snapshot_file": str(self.snapshot_path),
                       "keep_snapshot": cfg.keep_snapshot})

    # -- 2 ------------------------------------------------------------------
    def log_in(self, boot_started: float) -> None:
        """Log into the booted guest's serial shell (no workload yet).  A
        guest with a login prompt (cfg/guests.cfg): ``boot_s`` until the
        prompt, ``login_s`` from it to the shell."""
        login = self.cfg.login
        prompt_at = None
        if login.prompt:
            self._wait_login_prompt(login, boot_started)
            prompt_at = time.monotonic()
        if login.ready_marker and not login.prompt:
            self.session = vt_compat.marked_login(self.vm, login.ready_marker, login.timeout_s,
                                                  login.attempt_s)
        else:
            self.session = vt_compat.serial_login(self.vm, login.timeout_s, login.attempt_s)
        shell_at = time.monotonic()
        self.record.set("guest", login.guest)
        self.record.set("boot_s", round((prompt_at or shell_at) - boot_started, 3))
        if prompt_at is not None:
            self.record.set("login_s", round(shell_at - prompt_at, 3))
            self.log("%s guest: login prompt after %.1fs, shell %.1fs later" % (
                login.guest, self.record.get("boot_s"), self.record.get("login_s")))
        else:
            self.log("guest shell after %.1fs" % self.record.get("boot_s"))

    def _wait_login_prompt(self, login, boot_started: float) -> None:
        """Wait for the login prompt, poking the console with a newline
        every LOGIN_POKE_S: Debian 13's boot asks the serial terminal for
        its size (ESC[6n) and may wait for an answer that never comes."""
        deadline = boot_started + login.timeout_s
        while True:
            try:
                self.vm.serial_console.read_until_last_line_matches(
                    [login.prompt], timeout=LOGIN_POKE_S)
                return
            except Exception as exc:  # aexpect's timeout, or a dead QEMU
                if self.vm.is_dead() or time.monotonic() > deadline:
                    raise CycleError(
                        f"no login prompt ({login.prompt!r}) on the {login.guest} guest's "
                        f"serial console within {login.timeout_s:.0f}s "
                        f"(bgsnap_login_timeout): {exc}") from exc
                self.vm.serial_console.sendline("")

    def boot_and_fill(self, boot_started: float) -> None:
        """Log into the booted guest, start the workload, wait for the fill."""
        self.log_in(boot_started)
        self.fill_workload()

    def fill_workload(self, workload: GuestWorkload | None = None) -> None:
        """Start the workload (``workload``, else the plain one of the cfg)
        in the logged-in guest and wait for the fill."""
        self.workload = workload or GuestWorkload(self.session, self.cfg.workload, self.log)
        self.record.start("fill")
        self.workload.start()
        status = self.workload.wait_running(self.cfg.fill_timeout_s)
        self.record.stop("fill")
        self.record.set("fill_mib_s", status.get("fill_mib_per_s"))
        # what the workload saw and set in the guest: THP mode, memlock, sysctls
        self.record.set("guest_settings", status.get("guest"))
        self.log("workload running: %s" % status)

    def hold_workload(self) -> None:
        """Freeze the writers for a save of a guest that will not run (S3):
        the image must hold exactly these steps."""
        self.steps_before = self.steps_after_resume = self.workload.freeze()
        self.held = True
        self.record.set("workload_held_at", self.steps_before)

    def new_round(self) -> None:
        """Forget the last snapshot's steps and verify results: the next
        snapshot of the same guest starts clean (a soak; the record keeps
        the last round's figures until the next round sets them)."""
        self.image_path = self.snapshot_path
        self.steps_before, self.steps_after_resume, self.steps_completed = [], [], []
        self.host_verify = self.guest_verify = self.source_verify = None
        self.damaged_offset = None
        self.triggered_at = 0.0

    # -- 3 ------------------------------------------------------------------
    def offer_background_snapshot(self, expected: Expectation) -> Judgement:
        """Turn background-snapshot on and judge QEMU's answer against the
        prediction (accepted where supported, refused where not)."""
        qmp = SnapshotQMP(self.vm.monitor, self.log)
        try:
            qmp.enable_background_snapshot(self.cfg.transport.capabilities)
            refusal = None
        except QMPStepError as exc:
            refusal = exc.qemu_message
        judgement = judge(expected, refusal)
        self.record.update({"expected": expected.to_dict(), "qemu_refusal": refusal,
                            "prediction_check": judgement.outcome})
        self.log("background-snapshot %s; predicted %s (%s): %s" % (
            "refused" if refusal else "accepted",
            "supported" if expected.supported else "unsupported", expected.reason,
            judgement.outcome))
        return judgement

    def take_snapshot(self) -> snapshot.SnapshotResult:
        """Take the snapshot in the configured mode; the image is restored later."""
        qmp = SnapshotQMP(self.vm.monitor, self.log)
        ctx = SaveContext(self.vm, qmp, self.log, self.workload)
        self.during.before_trigger(ctx)
        self.steps_before = self.workload.mark_committed(WINDOW_DURING)
        self.record.set("rss_before_kib", rss_kib(self.vm.get_pid()))
        # what backs the guest RAM now (THP in use, shmem, hugetlb)
        self.record.set("qemu_memory_before", process_memory(self.vm.get_pid()).to_dict())
        self.log("%s snapshot -> %s" % (self.cfg.mode, self.snapshot_path))
        self.triggered_at = time.monotonic()
        with self.record.phase("snapshot"):
            result = self._take(qmp, ctx)
        self.record.set("rss_after_kib", rss_kib(self.vm.get_pid()))
        if self.during:
            self.during.settle(ctx)
            self.record.set("during_save", self.during.records)
        self.steps_completed = self.workload.mark_committed(WINDOW_AFTER)
        self.record_result(result)
        return result

    def record_result(self, result: snapshot.SnapshotResult) -> None:
        """The save's figures and the steps around it, into the record."""
        self.record.update({
            "pause_ms": result.pause_ms,
            "pause_windows": [[w.stop_s, w.resume_s] for w in result.pause_windows],
            "downtime_ms": result.downtime_ms,
            "setup_ms": result.setup_ms,
            "snapshot_total_s": round(result.total_s, 3),
            "snapshot_bytes": result.snapshot_bytes,
            "ram_transferred_bytes": result.ram_transferred_bytes,
            "ram_total_bytes": result.ram_total_bytes,
            "steps_before_trigger": self.steps_before,
            "steps_after_resume": self.steps_after_resume,
            "steps_at_completed": self.steps_completed,
        })
        self.log("snapshot done: pause %s ms (QEMU downtime %s ms), %.1f MiB in %.1fs"
                 % (_fmt(result.pause_ms), result.downtime_ms,
                    result.snapshot_bytes / 2**20, result.total_s))

    def _take(self, qmp: SnapshotQMP, ctx: SaveContext) -> snapshot.SnapshotResult:
        args = (qmp, self.cfg.transport, self.snapshot_path, self.cfg.snapshot_timeout_s,
                self.log)
        if self.cfg.mode == "background":
            def after_resume():
                self.steps_after_resume = self.workload.committed(timeout=AFTER_RESUME_TIMEOUT)
                self.during.act(ctx)
            return snapshot.take_background_snapshot(*args, on_resume=after_resume)
        if self.internal:
            result = internal_snapshot.take_internal_snapshot(
                qmp, self.snapshot_path, self.cfg.snapshot_timeout_s, self.log)
        else:
            # stop_save pauses for the whole save; precopy lets the guest run
            # and auto-converge throttles it until the rest fits the downtime limit
            result = snapshot.take_migration_image(
                *args, stop_first=self.cfg.mode == "stop_save",
                extra_caps=("auto-converge",) if self.cfg.mode == "precopy" else (),
                max_bandwidth=self._max_bandwidth())
        self.steps_after_resume = self.workload.committed(timeout=AFTER_RESUME_TIMEOUT)
        return result

    def _max_bandwidth(self) -> int:
        mib_s = self.cfg.max_bandwidth_mib_s
        return mib_s * 2**20 if mib_s else UNLIMITED_BANDWIDTH

    # -- 4 ------------------------------------------------------------------
    def check_source(self) -> None:
        """The guest ran during the save, and its memory is intact after it."""
        advanced = sum(self.steps_after_resume) - sum(self.steps_before)
        self.record.set("steps_during_save", advanced)
        with self.record.phase("source_check"):
            frozen = self.workload.freeze_reply()
            self.record.set("latency_windows", frozen.get("windows"))
            self.source_verify = self.workload.verify(self.cfg.verify_timeout_s, thaw=True)
        self.record.set("source_verify", self.source_verify.summary())

    # -- 5 ------------------------------------------------------------------
    def damage_snapshot(self) -> None:
        """Negative control: flip one byte inside a workload page's body."""
        needle = verifier.page_header(self.cfg.workload.nonce)
        if not self.internal and self.cfg.transport.suffix != ".bin":
            raise CycleError(f"damage_file needs an uncompressed image, not "
                             f"{self.cfg.transport.name}")
        self.damaged_offset = snapshot.damage_guest_page(self.snapshot_path, needle)
        self.record.set("damaged_file_offset", self.damaged_offset)
        self.log("negative control: flipped the byte at offset %d of %s"
                 % (self.damaged_offset, self.snapshot_path.name))

    def take_late_image(self) -> None:
        """Negative control: a consistent image taken LATER than the trigger
        (stop-and-save ``late_image_delay_s`` after it); it is what gets
        restored, and the point-in-time check must reject it."""
        delay = self.cfg.late_image_delay_s - (time.monotonic() - self.triggered_at)
        if delay > 0:
            time.sleep(delay)
        self.image_path = self.snapshot_dir / (LATE_IMAGE_STEM + self.cfg.transport.suffix)
        qmp = SnapshotQMP(self.vm.monitor, self.log)
        result = snapshot.take_migration_image(qmp, self.cfg.transport, self.image_path,
                                               self.cfg.snapshot_timeout_s, self.log,
                                               max_bandwidth=self._max_bandwidth())
        self.record.set("late_image_bytes", result.snapshot_bytes)
        self.log("negative control: stop-and-save image %.1fs after the trigger"
                 % (time.monotonic() - self.triggered_at))

    # -- 6, 7 ----------------------------------------------------------------
    def _restored_vm(self):
        """The second QEMU, paused, restored from the image (yields clone, qmp)."""
        timeout = self.cfg.restore_timeout_s
        if self.internal:
            return internal_snapshot.restored_vm(self.vm, self.image_path, timeout, self.log)
        return snapshot.restored_vm(self.vm, self.cfg.transport, self.image_path, timeout,
                                    self.log, self.restore_params)

    def restore_and_verify(self) -> None:
        """Restore the image into a second QEMU, verify it on the host and in
        the guest.  An image that does not load, or a restored guest that
        never answers, is a :class:`~avocado_bgsnap.verdicts.Defect` (FAIL)."""
        with self._source_parked(), self._restored() as (clone, qmp):
            self._verify_restored(clone, qmp)

    def retire_source(self) -> None:
        """Quit the source before its image is restored, for a test that has
        no use for it after its check: a paused source still costs the
        restore 0.4 s of 1.6-2.0 here (measured on the raw cycle, 1 GiB,
        docs/benchmarks.md), and a test's source would be gone by the time
        a user restores.  Only a source that saved and verified clean; the
        others stay for the restore as they are (see _source_parked)."""
        if self.source_verify is None or not self.source_verify.clean or self.vm.is_dead():
            return
        with self.record.phase("retire_source"):
            self.record.set("source_peak_rss_kib", peak_rss_kib(self.vm.get_pid()))
            self.record.set("source_quit_before_restore", True)
            if self.session is not None:
                self.session.close()
                self.session = None
            if vt_compat.shutdown_bounded(self.vm):
                self.log("the source QEMU did not quit: killed it (SIGKILL)")
        self.log("source QEMU quit before the restore (checked clean; not needed after it)")

    @contextlib.contextmanager
    def _source_parked(self):
        """Pause the source while its image is restored and checked, when its
        save completed and it verified clean: its writers would take a core
        from the restore (on 2 TCG cores, measured: docs/benchmarks.md).  A
        source whose save failed is left running: 'stop' waits for vCPUs, and
        a wedged one never stops."""
        parked = None
        if (self.source_verify is not None and self.source_verify.clean
                and not self.vm.is_dead()):
            qmp = SnapshotQMP(self.vm.monitor, self.log)
            if qmp.status() == "running":
                qmp.stop()
                parked = qmp
        try:
            yield
        finally:
            if parked is not None and not self.vm.is_dead():
                parked.cont()

    def restore_and_check(self, check_ram: Callable[[Path], None] | None,
                          check_guest: Callable[[object, float], None]) -> None:
        """Restore the image; for a guest without the workload.  ``check_ram``
        gets the RAM dump of the paused restored guest; ``check_guest`` the
        console session of the resumed one and the host's monotonic time just
        before its ``cont``.  Not restorable, or not answering: a Defect."""
        with self._restored() as (clone, qmp):
            if check_ram is not None:
                with self._restored_ram(clone, qmp) as ram:
                    check_ram(ram)
            resumed_at = time.monotonic()
            self._run_restored(qmp)
            session = self._login_restored(clone)
            try:
                check_guest(session, resumed_at)
            finally:
                session.close()

    @contextlib.contextmanager
    def _restored(self):
        self.record.start("restore")
        restoring = True
        try:
            with self._restored_vm() as (clone, qmp):
                restoring = False
                self.record.stop("restore")
                yield clone, qmp
        except (QMPStepError, virt_vm.VMCreateError) as exc:
            # the clone has the source's configuration, which booted: what
            # it cannot take is the image
            if not restoring:
                raise
            if (isinstance(exc, virt_vm.VMCreateError) and not self.internal
                    and not self.cfg.transport.restore_is_exec):
                # '-incoming defer': QEMU failed to start before it read a
                # byte of the image (e.g. a disk it could not lock)
                raise CycleError(f"the restoring QEMU did not start, before it read the "
                                 f"image: {exc}") from exc
            self.record.set("restore_error", str(exc))
            raise ImageNotRestorable(f"QEMU did not restore {self.image_path.name}, an image "
                                     f"it reported completed: {exc}") from exc

    @contextlib.contextmanager
    def _restored_ram(self, clone, qmp: SnapshotQMP):
        """The paused restored guest's RAM as a file the host reads: the
        restoring QEMU's memfd itself, or (other memory configurations) a
        dump of it, removed afterwards."""
        if self.dump_free:
            try:
                ram = restored_ram.memfd_path(clone.get_pid(),
                                              self.cfg.guest_mem_mib * 2**20)
            except restored_ram.NoMemfd as exc:
                raise CycleError(f"the restored guest's RAM cannot be read: {exc}") from exc
            self.record.set("host_ram_source", "memfd")
            self.log("restored RAM read in place: %s (no dump)" % ram)
            yield ram
            return
        self.record.set("host_ram_source", "dump")
        self.record.start("dump")
        snapshot.create_private(self.dump_path)  # QEMU keeps its mode: 0600
        try:
            qmp.dump_guest_memory(str(self.dump_path), timeout=self.cfg.verify_timeout_s)
            self.record.stop("dump")
            yield self.dump_path
        finally:
            self.dump_path.unlink(missing_ok=True)

    def _record_footprint(self, clone, ram: Path) -> None:
        """Peak RSS of both QEMUs and the disk bytes the test holds at once
        (the image, and the RAM dump when there is one): what a bigger guest
        will need (docs/benchmarks.md)."""
        if not self.vm.is_dead():  # else retire_source() took it
            self.record.set("source_peak_rss_kib", peak_rss_kib(self.vm.get_pid()))
        self.record.set("restored_peak_rss_kib", peak_rss_kib(clone.get_pid()))
        disk = self.image_path.stat().st_size if self.image_path.exists() else 0
        if ram == self.dump_path:
            disk += ram.stat().st_size
        self.record.set("disk_bytes_peak", disk)

    def _verify_restored(self, clone, qmp: SnapshotQMP) -> None:
        with self._restored_ram(clone, qmp) as ram:
            self._record_footprint(clone, ram)
            self.record.start("host_verify")
            self.host_verify = verifier.verify_dump(self.wl_binary, ram, self.cfg.workload,
                                                    self.cfg.verify_timeout_s)
            self.record.stop("host_verify")
            self.record.set("host_verify", self.host_verify.summary())
            self.record.set("restored_steps", self.host_verify.committed)
            self.log("restored RAM (host check): %s" % self.host_verify.summary())
            self.inspect_dump(ram)
        if not self.host_verify.clean and self.cfg.negative_control == "none":
            # its memory is known bad: the guest may not even run
            self.record.set("guest_verify", "skipped: restored RAM already BAD")
            return
        self._run_restored(qmp)
        self.guest_verify = self._verify_in_guest(clone)
        self.record.set("guest_verify", self.guest_verify.summary())
        self.log("restored guest (self check): %s" % self.guest_verify.summary())

    def inspect_dump(self, dump_path: Path) -> None:
        """What a cycle with more state in the RAM reads from the restored
        RAM's dump besides the workload (whole_vm.py: the journal state)."""

    def _run_restored(self, qmp: SnapshotQMP) -> None:
        """Let the restored guest run: 'cont' a paused one, wake a suspended
        one (QEMU 9.0+ restores a suspended guest suspended)."""
        status = qmp.status()
        self.record.set("restored_status_at_load", status)
        if status != "suspended":
            qmp.cont()
            status = qmp.status()
        self.record.set("restored_status", status)
        if status == "suspended":
            qmp.system_wakeup()
            self.log("restored guest was suspended: system_wakeup")

    def _login_restored(self, clone):
        try:
            return vt_compat.restored_login(clone, self.cfg.login.restored_timeout_s,
                                            self.cfg.login.attempt_s)
        except remote.LoginError as exc:
            raise GuestWedged(f"the restored guest does not answer on its console within "
                              f"{self.cfg.login.restored_timeout_s:.0f}s (run state "
                              f"{self.record.get('restored_status')})") from exc

    def _verify_in_guest(self, clone) -> VerifyResult:
        with self.record.phase("guest_verify"):
            session = self._login_restored(clone)
            try:
                # the restored guest is the source's: its workload binary is where it was
                known = self.workload.binary if self.workload is not None else None
                workload = GuestWorkload(session, self.cfg.workload, self.log, binary=known)
                workload.freeze()
                return workload.verify(self.cfg.verify_timeout_s)
            finally:
                session.close()

    # -- 8 ------------------------------------------------------------------
    def point_in_time_error(self) -> str | None:
        """The restored steps must lie in [before trigger, right after RESUME]."""
        restored = self.host_verify.committed
        for w, (lo, got, hi) in enumerate(zip(self.steps_before, restored,
                                              self.steps_after_resume)):
            if not lo <= got <= hi:
                return (f"writer {w}: restored step {got} outside [{lo}, {hi}] "
                        f"(steps before trigger / right after RESUME): not the START state")
        return None

    def harness_errors(self) -> list[str]:
        """What makes this run not a test of what it claims (an ERROR)."""
        return self.during.missed()

    def verdict(self) -> str | None:
        """None when the test passes, else the failure message."""
        errors = list(self.during.errors())
        if (self.cfg.mode in RUNNING_MODES and not self.held
                and self.record.get("steps_during_save", 0) <= 0):
            errors.append("the source guest made no progress during the save")
        if not self.source_verify.clean:
            errors.append("source guest damaged after the snapshot: "
                          + self.source_verify.summary())
        errors += self._restore_errors()
        pause = self.record.get("pause_ms")
        # a save with no pause window (a suspended guest) says so in pause_note
        no_window = pause is None and self.record.get("pause_note")
        if self.cfg.max_pause_ms and not no_window and (pause is None
                                                         or pause > self.cfg.max_pause_ms):
            errors.append(f"pause {_fmt(pause)} ms exceeds max_pause_ms = {self.cfg.max_pause_ms}")
        errors += gate_errors(self.record.as_dict(), self.cfg.max_total_s, self.cfg.max_stall_ms)
        self.record.set("verdict", "; ".join(errors) or "pass")
        return "; ".join(errors) or None

    def _restore_errors(self) -> list[str]:
        """What the restored image must show, per negative control."""
        negative = self.cfg.negative_control
        pit = self.point_in_time_error() if self.host_verify.clean else None
        self.record.set("point_in_time", pit or ("ok" if self.host_verify.clean else "not checked"))
        if negative in ("damage_file", "damage_in_transit"):
            return [] if not self.host_verify.clean else [
                f"negative control {negative}: the damaged snapshot passed verification"]
        if negative == "late_image":
            if not self.host_verify.clean:
                return ["negative control late_image: the late image is not even consistent: "
                        + self.host_verify.summary()]
            return [] if pit else [
                "negative control late_image: an image taken after the trigger passed the "
                "point-in-time check"]
        errors = []
        if not self.host_verify.clean:
            errors.append("restored RAM differs from the snapshot-time state: "
                          + self.host_verify.summary())
        elif pit:
            errors.append(pit)
        if self.guest_verify is not None and not self.guest_verify.clean:
            errors.append("restored guest self-check failed: " + self.guest_verify.summary())
        return errors

    def cleanup(self) -> None:
        with self.record.phase("cleanup"):
            self._cleanup()

    def _cleanup(self) -> None:
        if self.session is not None:
            self.session.close()
        if vt_compat.shutdown_bounded(self.vm):
            self.log("QEMU did not quit: killed it (SIGKILL)")
            self.record.set("qemu_killed", True)
        paths = [self.dump_path] + [p.with_name(p.name + ".partial")
                                    for p in (self.snapshot_path, self.image_path)]
        if not self.cfg.keep_snapshot:
            paths += [self.snapshot_path, self.image_path]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def gate_errors(record: dict, max_total_s: float, max_stall_ms: float) -> list[str]:
    """The save-time and write-stall gates (0 disables each)."""
    errors = []
    total = record.get("snapshot_total_s")
    if max_total_s and (total is None or total > max_total_s):
        errors.append(f"snapshot took {total} s, over max_total_s = {max_total_s}")
    during = [w for w in record.get("latency_windows") or [] if w.get("window") == WINDOW_DURING]
    stall_ns = during[0].get("max_ns") if during else None
    if max_stall_ms and (stall_ns is None or stall_ns / 1e6 > max_stall_ms):
        shown = "unknown" if stall_ns is None else f"{stall_ns / 1e6:.2f} ms"
        errors.append(f"worst guest write during the save {shown}, over max_stall_ms = "
                      f"{max_stall_ms}")
    return errors


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"

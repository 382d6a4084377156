"""Faults on the save and the checks after a failed one: pure logic (the
real faults run in selftests/functional/test_fault_jobs.py)."""

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import failed_save, settings
from avocado_bgsnap.during import DuringSaveRun
from avocado_bgsnap.during.faults import (CancelSave, FaultSettings, SecondMigrate,
                                          fault_action)
from avocado_bgsnap.qmp import QMPStepError

# latency windows as the workload reports them (QEMU 10.0.2, TCG, measured)
BEFORE = {"window": 0, "count": 90000, "p99_ns": 7167, "max_ns": 17940616}
DURING = {"window": 1, "count": 40000, "p99_ns": 114687, "max_ns": 17168837}
AFTER = {"window": 3, "count": 80000, "p99_ns": 8191, "max_ns": 12216972}


def test_writes_back_at_baseline_pass_despite_a_long_outlier():
    assert failed_save.write_protection_gone(BEFORE, AFTER) is None


def test_writes_still_at_the_level_of_during_are_caught():
    # negative control: the writes under protection look like protection
    why = failed_save.write_protection_gone(BEFORE, {**DURING, "window": 3})
    assert "114.7 us" in why and "write protection still in place" in why


def test_no_writes_after_is_not_a_pass():
    assert "did not run" in failed_save.write_protection_gone(BEFORE, {"window": 3, "count": 0})
    assert "no baseline" in failed_save.write_protection_gone({"count": 0}, AFTER)


class _Ctx:
    """A SaveContext stand-in: the migration status, and what was asked."""

    def __init__(self, statuses, refuse=False):
        self.statuses = list(statuses)
        self.asked = []
        self.qmp = self
        self.refuse = refuse

    def migration_status(self):
        return self.statuses.pop(0) if self.statuses else "active"

    def migrate_cancel(self):
        self.asked.append("migrate_cancel")

    def migrate(self, uri):
        self.asked.append(("migrate", uri))
        if self.refuse:
            raise QMPStepError("migrate failed", "migrate",
                               {"desc": "There's a migration process in progress"})


def test_a_cancel_at_start_acts_at_the_trigger_and_not_again_after_resume():
    run = DuringSaveRun([CancelSave(at_start=True)], lambda m: None)
    ctx = _Ctx(["setup", "setup", "cancelling"])
    run.at_trigger(ctx)
    run.act(ctx)
    assert ctx.asked == ["migrate_cancel"]
    assert run.records[0]["moment"] == "trigger" and run.records[0]["status_at_cancel"] == "setup"
    assert run.missed() == []


def test_a_cancel_after_resume_waits_for_resume():
    run = DuringSaveRun([CancelSave(0.0)], lambda m: None)
    ctx = _Ctx(["setup"])
    run.at_trigger(ctx)
    assert ctx.asked == [] and run.records == []
    run.act(ctx)
    assert ctx.asked == ["migrate_cancel"] and run.records[0]["moment"] == "resume"


def test_a_cancel_that_came_after_the_save_ended_is_missed():
    run = DuringSaveRun([CancelSave(0.0)], lambda m: None)
    run.act(_Ctx(["completed", "completed", "completed"]))
    assert run.missed() == ["cancel: the save was already 'completed' when it started"]


def test_a_second_migrate_must_be_refused():
    refused = DuringSaveRun([SecondMigrate()], lambda m: None)
    refused.act(_Ctx([], refuse=True))
    assert refused.errors() == []
    assert "in progress" in refused.records[0]["qemu_message"]
    accepted = DuringSaveRun([SecondMigrate()], lambda m: None)
    accepted.act(_Ctx([]))
    assert accepted.errors() == [
        "second_migrate: QEMU accepted a second migrate while a background snapshot streamed"]


def test_each_fault_has_its_action_and_its_expected_end():
    assert [type(a).__name__ for a in fault_action(FaultSettings("cancel", 1))] == ["CancelSave"]
    assert fault_action(FaultSettings("cancel_at_start", 0))[0].at_start
    assert [type(a).__name__ for a in fault_action(FaultSettings("kill_source", 1))] == \
        ["KillSource"]
    assert fault_action(FaultSettings("target_fails", 0)) == []
    assert FaultSettings("cancel_at_start", 0).expected_end == "cancelled"
    assert not FaultSettings("kill_source", 0).source_survives
    assert not FaultSettings("cancel_at_start", 0).protected_before_fault


@pytest.mark.parametrize("params, message", [
    ({"bgsnap_fault": "unplug"}, "bgsnap_fault = 'unplug': expected one of cancel"),
    ({"bgsnap_fault_delay": "-1"}, "bgsnap_fault_delay = -1.0: expected 0..60"),
])
def test_bad_fault_settings_name_the_param(params, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.fault_from_params(Params(params))


def test_no_snapshot_left_names_what_is_there(tmp_path):
    path = tmp_path / "bgsnap-snapshot.bin"
    failed_save.no_snapshot_left(path)
    (tmp_path / "bgsnap-snapshot.bin.partial").write_bytes(b"x")
    with pytest.raises(failed_save.HarnessLeftover, match=r"bgsnap-snapshot.bin.partial"):
        failed_save.no_snapshot_left(path)


class _Workload:
    def mark(self, window, timeout=None):
        return None


class _VM:
    monitor = None


@pytest.mark.parametrize("message, outcome", [
    ("query-migrate failed: Received no response to QMP command 'query-migrate', or received "
     "a response with an incorrect id", failed_save.MONITOR_WEDGED),
    # the negative control: any other step error of a live QEMU stays the harness's 'error'
    ("migrate failed: no such file", "error"),
])
def test_a_monitor_that_stops_answering_is_told_apart(monkeypatch, message, outcome):
    from avocado_bgsnap import snapshot

    def save(*args, **kwargs):
        raise QMPStepError(message, "query-migrate")

    monkeypatch.setattr(snapshot, "take_background_snapshot", save)
    monkeypatch.setattr(snapshot, "exits_soon", lambda vm: False)
    end = failed_save.attempt(_VM(), None, None, 1, DuringSaveRun((), print), _Workload(), print)
    assert end.outcome == outcome

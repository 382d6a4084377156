"""Pause computation from recorded QMP event streams (no QEMU)."""

import pytest

from avocado_bgsnap.qmp import PauseWindow, pause_windows, total_pause_ms


def ev(name, seconds, micro):
    return {"event": name, "timestamp": {"seconds": seconds, "microseconds": micro}}


def test_one_pair_uses_qemu_stamps_not_arrival_order():
    # background mode: STOP and RESUME arrive in one read, RESUME listed first
    events = [ev("RESUME", 100, 2_150), ev("STOP", 100, 50), ev("MIGRATION", 100, 10)]
    (window,) = pause_windows(events)
    assert window.pause_ms == pytest.approx(2.1)
    assert total_pause_ms([window]) == pytest.approx(2.1)


def test_several_pairs_are_summed():
    events = [ev("STOP", 10, 0), ev("RESUME", 10, 1000), ev("STOP", 11, 0), ev("RESUME", 11, 500_000)]
    windows = pause_windows(events)
    assert [round(w.pause_ms, 3) for w in windows] == [1.0, 500.0]
    assert total_pause_ms(windows) == pytest.approx(501.0)


def test_missing_resume_gives_open_window_and_no_total():
    windows = pause_windows([ev("STOP", 5, 0)])
    assert windows == [PauseWindow(5.0, None)]
    assert windows[0].pause_ms is None
    assert total_pause_ms(windows) is None


def test_resume_without_stop_is_ignored():
    # a VM started with -S emits RESUME at 'cont' without a STOP before it
    assert pause_windows([ev("RESUME", 1, 0)]) == []
    assert total_pause_ms([]) is None


def test_repeated_stop_keeps_the_first():
    windows = pause_windows([ev("STOP", 1, 0), ev("STOP", 1, 900), ev("RESUME", 1, 1000)])
    assert [w.pause_ms for w in windows] == [pytest.approx(1.0)]


def test_microsecond_carry_across_seconds():
    (window,) = pause_windows([ev("STOP", 7, 999_000), ev("RESUME", 8, 2_000)])
    assert window.pause_ms == pytest.approx(3.0)


class ScriptedMonitor:
    """Answers QMP commands from a script; records what was sent."""

    def __init__(self, jobs_replies):
        self.jobs_replies = list(jobs_replies)
        self.sent = []

    def cmd(self, command, args=None, timeout=None, debug=True):
        self.sent.append(command)
        if command == "query-jobs":
            return self.jobs_replies.pop(0)
        return {}


def job(status, error=None):
    reply = {"id": "j1", "type": "snapshot-save", "status": status}
    if error:
        reply["error"] = error
    return [reply]


def test_run_job_waits_for_concluded_and_dismisses():
    from avocado_bgsnap.qmp import SnapshotQMP

    mon = ScriptedMonitor([job("running"), job("running"), job("concluded")])
    SnapshotQMP(mon).run_job("snapshot-save", {"job-id": "j1"}, timeout=5, poll_s=0)
    assert mon.sent == ["snapshot-save", "query-jobs", "query-jobs", "query-jobs", "job-dismiss"]


def test_run_job_error_carries_qemus_message_after_dismissing():
    from avocado_bgsnap.qmp import QMPStepError, SnapshotQMP

    mon = ScriptedMonitor([job("concluded", "Device 'x' is writable but does not support "
                               "snapshots")])
    with pytest.raises(QMPStepError, match="does not support snapshots"):
        SnapshotQMP(mon).run_job("snapshot-save", {"job-id": "j1"}, timeout=5, poll_s=0)
    assert mon.sent[-1] == "job-dismiss"


def test_run_job_that_vanishes_or_hangs_is_an_error():
    from avocado_bgsnap.qmp import QMPStepError, SnapshotQMP

    with pytest.raises(QMPStepError, match="vanished"):
        SnapshotQMP(ScriptedMonitor([[]])).run_job("snapshot-load", {"job-id": "j1"}, 5, 0)
    with pytest.raises(QMPStepError, match="still 'running'"):
        SnapshotQMP(ScriptedMonitor([job("running")] * 10)).run_job(
            "snapshot-load", {"job-id": "j1"}, timeout=0, poll_s=0)

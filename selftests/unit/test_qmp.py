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

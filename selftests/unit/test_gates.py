"""The save-time and write-stall gates fail exactly when a figure is over its bound."""

from avocado_bgsnap.cycle import gate_errors

RECORD = {"snapshot_total_s": 3.2,
          "latency_windows": [{"window": 0, "max_ns": 90_000_000},
                              {"window": 1, "max_ns": 8_232_598},
                              {"window": 2, "max_ns": 1_000}]}


def test_disabled_gates_say_nothing():
    assert gate_errors(RECORD, 0, 0) == []


def test_within_bounds():
    assert gate_errors(RECORD, 3.3, 8.3) == []


def test_over_bounds_are_named():
    errors = gate_errors(RECORD, 3.0, 8.0)
    assert len(errors) == 2
    assert "max_total_s = 3.0" in errors[0] and "8.23 ms" in errors[1]


def test_stall_gate_reads_the_during_window_only():
    # window 0 (before the snapshot) has a 90 ms write: not the snapshot's fault
    assert gate_errors(RECORD, 0, 10) == []


def test_missing_figures_fail_an_enabled_gate():
    assert len(gate_errors({}, 1, 1)) == 2

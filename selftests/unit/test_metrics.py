"""Metrics are written once, as JSON, to the whiteboard and a file."""

import json

import pytest

from avocado_bgsnap.metrics import METRICS_FILE, Metrics, summary_line


class FakeTest:
    whiteboard = ""


def test_written_once_to_whiteboard_and_file(tmp_path):
    record = Metrics()
    record.update({"pause_ms": 2.5, "downtime_ms": 3, "snapshot_bytes": 2**30})
    record.start("fill")
    record.stop("fill")
    test = FakeTest()
    path = record.write(test, tmp_path)
    assert path == tmp_path / METRICS_FILE
    on_disk = json.loads(path.read_text())
    assert json.loads(test.whiteboard) == on_disk
    assert on_disk["pause_ms"] == 2.5 and "fill" in on_disk["phase_s"]
    with pytest.raises(RuntimeError):
        record.write(test, tmp_path)


def test_summary_line_handles_missing_values():
    line = summary_line({"pause_ms": 2.345, "snapshot_bytes": 3 * 2**20, "guest_mem_mib": 256})
    assert "pause 2.35 ms" in line and "3 MiB" in line and "downtime n/a" in line

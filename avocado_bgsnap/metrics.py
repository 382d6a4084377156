"""One metrics record per test, collected in one place and written once.

Written as JSON both to the whiteboard and to ``bgsnap-metrics.json`` in the
test's output dir (``<job>/test-results/<test>/data/``), where the report
command and people find it.
"""

import contextlib
import json
import time
from pathlib import Path

from . import vt_compat

METRICS_FILE = "bgsnap-metrics.json"
SCHEMA = 1


class Metrics:
    """Accumulate named figures, timings and facts; write them once."""

    def __init__(self):
        self._data: dict = {"schema": SCHEMA}
        self._timers: dict[str, float] = {}
        self._written = False

    def set(self, key: str, value) -> None:
        self._data[key] = value

    def update(self, values: dict) -> None:
        self._data.update(values)

    def get(self, key: str, default=None):
        return self._data.get(key, default)

    def start(self, phase: str) -> None:
        self._timers[phase] = time.monotonic()

    def stop(self, phase: str) -> float:
        seconds = time.monotonic() - self._timers.pop(phase)
        self._data.setdefault("phase_s", {})[phase] = round(seconds, 3)
        return seconds

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time the block as ``phase_s[name]`` (also when it raises)."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def as_dict(self) -> dict:
        return dict(self._data)

    def to_json(self) -> str:
        return json.dumps(self._data, sort_keys=True, default=str)

    def write(self, test, outputdir: Path) -> Path:
        """Write whiteboard + file; a second call is a programming error."""
        if self._written:
            raise RuntimeError("metrics already written for this test")
        self._written = True
        text = self.to_json()
        vt_compat.set_whiteboard(test, text)
        outputdir.mkdir(parents=True, exist_ok=True)
        path = outputdir / METRICS_FILE
        path.write_text(json.dumps(self._data, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def write_logged(self, test) -> Path:
        """:meth:`write` into the test's output dir, and log the summary line."""
        path = self.write(test, Path(test.outputdir))
        test.log.info("Metrics: %s (%s)", summary_line(self._data), path)
        return path


def summary_line(data: dict) -> str:
    """The one line a person reads first."""
    def fmt(key, unit, scale=1.0, digits=1):
        value = data.get(key)
        return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"

    restored = (data.get("host_verify") or "n/a").split(":")[0]
    return ("pause %s (QEMU downtime %s), snapshot %s in %s, guest %s MiB / workload %s MiB, "
            "restored RAM %s" % (
                fmt("pause_ms", " ms", digits=2), fmt("downtime_ms", " ms", digits=0),
                fmt("snapshot_bytes", " MiB", 1 / 2**20, 0), fmt("snapshot_total_s", " s"),
                data.get("guest_mem_mib"), data.get("workload_mib"), restored))

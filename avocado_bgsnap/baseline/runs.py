"""``avocado bgsnap baseline``: a test through the suite and the same cycle on
raw QEMU, interleaved, and the per-phase comparison (docs/benchmarks.md).

The suite side is a real ``avocado run TEST`` (its wall time, measured from
here, and its record); the raw side is :func:`raw.run_cycle` over the first
suite run's own command lines.  The order is S R R S S R ...: drift of the
host over the runs falls on both sides alike.
"""

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import paths, qemu_builds
from ..metrics import METRICS_FILE
from . import compare, raw

DEFAULT_TEST = "bgsnap.basic.1g"
DEFAULT_RUNS = 3
RESULT_FILE = "bgsnap-baseline.json"


class RunError(Exception):
    """A run of either side did not work."""


@dataclass(frozen=True)
class Baseline:
    test: str
    suite: list[dict]
    raw: list[dict]
    rows: list[compare.Row]
    path: Path


def order(runs: int) -> list[str]:
    """'suite'/'raw' in ABBA order: S R R S S R ..."""
    pair = (("suite", "raw"), ("raw", "suite"))
    return [side for i in range(runs) for side in pair[i % 2]]


def suite_run(test: str, log: Callable[[str], None],
              results: Path | None = None) -> tuple[dict, Path]:
    """One ``avocado run TEST`` (its jobs in ``results``, default the suite's
    results dir): its phases, and the test's results dir."""
    results = results or paths.results_dir()
    results.mkdir(parents=True, exist_ok=True)
    before = set(results.glob("job-*"))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "avocado", "run", "--job-results-dir",
                           str(results), test], capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    made = sorted(set(results.glob("job-*")) - before)
    if not made:
        raise RunError(f"'avocado run {test}' made no job (exit {proc.returncode}): "
                       f"{(proc.stdout + proc.stderr).strip()[-400:]}")
    job = made[-1]
    tests = json.loads((job / "results.json").read_text()).get("tests", [])
    if len(tests) != 1 or tests[0].get("status") != "PASS":
        got = ", ".join(f"{t.get('id')}: {t.get('status')}" for t in tests) or "no test"
        raise RunError(f"'avocado run {test}' must run exactly one test that passes; "
                       f"got {got} ({job})")
    test_dir = Path(tests[0]["logdir"])
    record = json.loads((test_dir / "data" / METRICS_FILE).read_text())
    phases = compare.suite_phases(record, float(tests[0]["time_elapsed"]), wall)
    log(f"suite: {test} PASS in {wall:.1f}s ({job.name})")
    return phases, test_dir


def measure(test: str, runs: int, log: Callable[[str], None],
            results: Path | None = None) -> Baseline:
    if runs < 1:
        raise RunError(f"--runs must be at least 1, got {runs}")
    test = qemu_builds.system_only(test)  # one test, even with side-by-side builds
    suite, raw_runs, plan, last_dir = [], [], None, None
    for side in order(runs):
        if side == "suite":
            phases, last_dir = suite_run(test, log, results)
            suite.append(phases)
            continue
        if plan is None:  # the first run of the pair order is a suite run
            plan = raw.plan_from_test(last_dir)
        try:
            phases = raw.run_cycle(plan)
        except raw.RawError as exc:
            raise RunError(f"raw cycle: {exc}") from exc
        log(f"raw:   the same cycle on plain QEMU in {phases['total']:.1f}s")
        raw_runs.append(phases)
    rows = compare.compare(suite, raw_runs)
    job = last_dir.parent.parent
    path = job / RESULT_FILE
    path.write_text(json.dumps({
        "test": test, "suite": suite, "raw": raw_runs,
        "rows": [{"phase": r.phase, "suite_s": r.suite_s, "raw_s": r.raw_s,
                  "ratio": r.ratio} for r in rows],
        "ratio": compare.total_ratio(rows), "target": compare.TARGET_RATIO,
    }, indent=2) + "\n")
    return Baseline(test, suite, raw_runs, rows, path)

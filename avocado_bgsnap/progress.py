"""Progress of a long job: which test, how far, elapsed, ETA.

avocado's human UI prints each test as it starts and ends; a 60-point
matrix also needs to say how long is left.  :class:`EtaModel` predicts each
remaining test's run time from the tests already finished: the mean of the
same (mode, guest RAM) when one ran; else a straight line in guest RAM
fitted over the finished tests of that mode once they cover two sizes (with
one size, their mean); a mode with no finished test borrows the line (or
mean) of all finished tests.  Pure logic, unit-tested; :class:`BgsnapProgress` is the
thin avocado ``result_events`` plugin over it (entry point
``bgsnap-progress``), silent for jobs of fewer than ``MIN_TESTS`` bgsnap
tests.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from avocado.core.extension_manager import PluginPriority
from avocado.core.output import LOG_JOB, LOG_UI
from avocado.core.plugin_interfaces import ResultEvents

MIN_TESTS = 2


@dataclass(frozen=True)
class Planned:
    name: str
    mode: str
    mem_mib: float


def _line_fit(samples: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of duration over RAM; None with
    fewer than two distinct RAM sizes."""
    if len({x for x, _ in samples}) < 2:
        return None
    fit = statistics.linear_regression([x for x, _ in samples], [y for _, y in samples])
    return fit.intercept, fit.slope


class EtaModel:
    """Predict the run time of planned tests from the finished ones."""

    def __init__(self, plan: list[Planned], parallel: int = 1):
        self.plan = list(plan)
        self.names = {p.name for p in self.plan}
        self.done: dict[str, float] = {}
        self.parallel = max(1, int(parallel))   # avocado's --max-parallel-tasks

    def finished(self, name: str, seconds: float) -> None:
        self.done[name] = seconds

    def _samples(self, mode: str | None = None) -> list[tuple[float, float]]:
        return [(p.mem_mib, self.done[p.name]) for p in self.plan
                if p.name in self.done and (mode is None or p.mode == mode)]

    def predict(self, test: Planned) -> float | None:
        same = [s for m, s in self._samples(test.mode) if m == test.mem_mib]
        if same:
            return statistics.fmean(same)
        for samples in (self._samples(test.mode), self._samples()):
            fit = _line_fit(samples)
            if fit is not None:
                return max(fit[0] + fit[1] * test.mem_mib, min(s for _, s in samples))
            if samples:  # one RAM size only: its mean is the best guess
                return statistics.fmean(s for _, s in samples)
        return None

    def remaining(self) -> list[Planned]:
        return [p for p in self.plan if p.name not in self.done]

    def eta_s(self) -> float | None:
        """Seconds the remaining tests should take; None before any finished."""
        if not self.done:
            return None
        predictions = [self.predict(p) for p in self.remaining()]
        if any(p is None for p in predictions):
            return None
        if not predictions:
            return 0.0
        # N tests at a time: the work spread over the slots, never less
        # than the longest test left
        slots = min(self.parallel, len(predictions))
        return max(sum(predictions) / slots, max(predictions))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(model: EtaModel, elapsed_s: float, last: str) -> str:
    total, done = len(model.plan), len(model.done)
    remaining = model.remaining()
    text = (f"bgsnap progress: {done}/{total} done ({last}), elapsed "
            f"{fmt_duration(elapsed_s)}, ETA {fmt_duration(model.eta_s())}")
    if remaining:
        text += f", next {remaining[0].name}"
    return text


def planned_from_params(name: str, params: dict) -> Planned | None:
    """A Planned test from its Cartesian params; None when not a bgsnap test."""
    if not str(params.get("type", "")).startswith("bgsnap_"):
        return None
    try:
        mem = float(params.get("mem", 0))
    except (TypeError, ValueError):
        mem = 0.0
    return Planned(name, str(params.get("bgsnap_mode", "background")), mem)


def _parallel_tasks(job) -> int:
    config = getattr(job, "config", None) or {}
    for key in ("run.max_parallel_tasks", "nrunner.max_parallel_tasks"):
        try:
            return max(1, int(config.get(key) or 1))
        except (TypeError, ValueError):
            continue
    return 1


def _runnables(job):
    for suite in getattr(job, "test_suites", None) or []:
        for runnable in getattr(suite, "tests", None) or []:
            yield runnable


def _test_name(state: dict) -> str | None:
    name = state.get("name")
    if name is None:
        return None
    return getattr(name, "name", str(name))


class BgsnapProgress(ResultEvents):
    name = "bgsnap-progress"
    description = "avocado-bgsnap: progress with elapsed time and ETA for long jobs"
    priority = PluginPriority.LOW  # after the human UI has printed the test's end

    def __init__(self, config):  # pylint: disable=W0231
        self.model: EtaModel | None = None
        self.started = 0.0

    def pre_tests(self, job):
        plan = []
        for runnable in _runnables(job):
            kwargs = getattr(runnable, "kwargs", None) or {}
            planned = planned_from_params(getattr(runnable, "uri", "") or "", kwargs)
            if planned is not None:
                plan.append(planned)
        self.model = EtaModel(plan, _parallel_tasks(job)) if len(plan) >= MIN_TESTS else None
        self.started = time.monotonic()

    def start_test(self, result, state):
        pass

    def test_progress(self, progress=False):
        pass

    def end_test(self, result, state):
        name = _test_name(state)
        if self.model is None or name not in self.model.names:
            return
        self.model.finished(name, float(state.get("time_elapsed") or 0.0))
        line = progress_line(self.model, time.monotonic() - self.started,
                             f"{name} {state.get('status', '?')}")
        LOG_UI.info(line)
        LOG_JOB.info(line)

    def post_tests(self, job):
        pass

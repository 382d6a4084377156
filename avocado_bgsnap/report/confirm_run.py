"""Run a job's A/B flags again: the part of confirmation that runs avocado.

:mod:`confirm` decides (pure); this module runs the re-run job and keeps
its outcome beside the first job.  Two callers: ``avocado bgsnap
ab-confirm`` (any job, on demand) and the report plugin at the end of an
``avocado run ab`` job, so that the job's own report already tells
confirmed flags from chance (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import collect, compare, confirm

# set in the re-run job's environment: its own end must not confirm again
CONFIRMING_ENV = "BGSNAP_AB_CONFIRMING"
DEFAULT_RUNS = 5
AB_FAMILY = "ab"


def is_ab_job(points: Sequence[collect.Point]) -> bool:
    """A job of the ``ab`` family (``[<build>.]ab.<mode>.<ram>.r<n>``) that
    compares at least two QEMU builds."""
    ab = [p for p in points if f".{AB_FAMILY}." in f".{p.name}"]
    return bool(ab) and len({p.qemu_build for p in ab}) >= 2


def confirming() -> bool:
    """True inside a re-run job (it must not start another)."""
    return bool(os.environ.get(CONFIRMING_ENV))


def pending_flags(job: Path) -> list[confirm.Flag]:
    """The job's flags between QEMU builds that hold under the report-wide control."""
    comparisons = compare.compare_builds(collect.load_points([job]))
    compare.control_report(comparisons)
    return confirm.flags(comparisons)


def confirm_job(job: Path, runs: int = DEFAULT_RUNS,
                log: Callable[[str], None] = lambda m: None) -> list[confirm.Confirmation]:
    """Re-run ``job``'s flags (A and B interleaved) in a new avocado job and
    write ``<job>/bgsnap-ab-confirm.json``; [] when there is nothing to
    confirm.  Raises :class:`confirm.ConfirmError` when the re-run made no job."""
    flag_list = pending_flags(job)
    if not flag_list:
        return []
    refs = confirm.plan(flag_list, runs)
    log(f"re-running {len(flag_list)} A/B flag(s) as {len(refs)} tests, A and B "
        f"interleaved: {' '.join(refs)}")
    before = set(job.parent.glob("job-*"))
    env = dict(os.environ, **{CONFIRMING_ENV: job.name})
    subprocess.run([sys.executable, "-m", "avocado", "run", *refs], env=env, check=False)
    rerun = sorted(set(job.parent.glob("job-*")) - before)
    if not rerun:
        raise confirm.ConfirmError(f"the re-run made no job in {job.parent}")
    confirmations = confirm.judge(flag_list, collect.load_points(rerun[-1:]))
    confirm.write(job, rerun[-1], confirmations)
    return confirmations


def describe(c: confirm.Confirmation) -> str:
    f = c.flag
    p = "n/a" if c.p_value is None else f"{c.p_value:.3g}"
    return (f"{'CONFIRMED' if c.confirmed else 'not confirmed'} {f.b_label} vs {f.a_label}, "
            f"{f.mode} {f.guest_mem_mib} MiB {f.figure}: re-run says {c.rerun} "
            f"(p {p}, {c.n_a}/{c.n_b} runs)")

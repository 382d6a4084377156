"""A flag is confirmed before it is reported.

An A/B flag of one job is one sample of chance as much as of QEMU.  The
flagged points are run again, A and B interleaved with the order swapped
from pair to pair (A B, B A, A B, ... as Firecracker's A/B harness does), so
that drift of the host over the job (warming caches, a neighbour's load)
falls on both sides alike.  A flag is *confirmed* when the re-run flags the
same figure of the same point in the same direction (report-wide control
applied over the re-run's rows).  The result is kept beside the job
(``bgsnap-ab-confirm.json``) and the job's report shows confirmed and
unconfirmed flags apart; its answer is "yes" on confirmed ones only.

Only comparisons of QEMU builds can be re-run by test name (a fleet's host
is chosen by the spawner).  Pure, except :func:`write` / :func:`load`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from . import collect, compare, stats
from .figures import COMPARED

CONFIRM_FILE = "bgsnap-ab-confirm.json"
REPETITION = re.compile(r"\.r(\d+)$")


class ConfirmError(Exception):
    """Nothing to confirm, or a flag that cannot be re-run; the message says which."""


def stem(point: collect.Point) -> str:
    """The test name without its repetition, selecting the point's build
    (``ab.background.256m.r3`` of the system QEMU -> ``system.ab.background.256m``)."""
    name = REPETITION.sub("", point.name)
    return name if name.startswith(f"{point.qemu_build}.") else f"{point.qemu_build}.{name}"


@dataclass(frozen=True)
class Flag:
    a_label: str
    b_label: str
    mode: str
    guest_mem_mib: int
    figure: str                 # figures.Figure.key
    verdict: str                # stats.REGRESSION | stats.IMPROVEMENT
    a_stem: str
    b_stem: str

    @property
    def key(self) -> tuple:
        return (self.a_label, self.b_label, self.mode, self.guest_mem_mib, self.figure)


def _stem_of(points: Iterable[collect.Point], mode: str, mem: int, side: str) -> str:
    stems = {stem(p) for p in points if p.mode_label == mode and p.guest_mem_mib == mem}
    if len(stems) != 1:
        raise ConfirmError(f"{side}: {mode} {mem} MiB ran as {len(stems)} different tests "
                           f"({', '.join(sorted(stems)) or 'none'}): cannot re-run it by name")
    return stems.pop()


def flags(comparisons: Sequence[compare.ABComparison]) -> list[Flag]:
    """Every flagged row of these comparisons, with the tests that re-run it."""
    out = []
    for c in comparisons:
        for row in c.rows:
            if row.verdict.flagged:
                out.append(Flag(c.a_label, c.b_label, row.mode, row.guest_mem_mib,
                                row.figure.key, row.verdict.verdict,
                                _stem_of(c.a_points, row.mode, row.guest_mem_mib, c.a_label),
                                _stem_of(c.b_points, row.mode, row.guest_mem_mib, c.b_label)))
    return out


def plan(flag_list: Sequence[Flag], runs: int = 5) -> list[str]:
    """Test references for the re-run: per flagged point, ``runs`` pairs, A
    and B interleaved, the order swapped every pair."""
    if runs < 4:
        raise ConfirmError(f"{runs} runs per side cannot reach p < 0.05 (4 is the least)")
    refs: list[str] = []
    for a_stem, b_stem in dict.fromkeys((f.a_stem, f.b_stem) for f in flag_list):
        for i in range(1, runs + 1):
            pair = [f"{a_stem}.r{i}", f"{b_stem}.r{i}"]
            refs += pair if i % 2 else pair[::-1]
    return refs


@dataclass(frozen=True)
class Confirmation:
    flag: Flag
    rerun: str                  # the re-run's verdict of that figure
    p_value: float | None
    rel_change: float | None
    n_a: int
    n_b: int

    @property
    def confirmed(self) -> bool:
        return self.rerun == self.flag.verdict

    def to_dict(self) -> dict:
        return {**asdict(self), "confirmed": self.confirmed}


def judge(flag_list: Sequence[Flag], rerun_points: Sequence[collect.Point],
          min_effect: float = stats.DEFAULT_MIN_EFFECT,
          alpha: float = stats.DEFAULT_ALPHA) -> list[Confirmation]:
    """Each flag against the re-run's runs of the same two tests."""
    figures = {f.key: f for f in COMPARED}
    snapshots = [p for p in rerun_points if p.kind == collect.KIND_SNAPSHOT]
    verdicts = []
    for flag in flag_list:
        figure = figures[flag.figure]
        a = [p.figure(figure.key) for p in snapshots if stem(p) == flag.a_stem]
        b = [p.figure(figure.key) for p in snapshots if stem(p) == flag.b_stem]
        verdicts.append(stats.compare(a, b, min_effect=min_effect, alpha=alpha,
                                      higher_is_worse=figure.higher_is_worse))
    return [Confirmation(flag, v.verdict, v.p_value, v.rel_change, v.n_a, v.n_b)
            for flag, v in zip(flag_list, stats.held_to_fdr(verdicts, alpha))]


def write(job: Path, rerun_job: Path, confirmations: Sequence[Confirmation]) -> Path:
    path = Path(job) / CONFIRM_FILE
    path.write_text(json.dumps({"rerun_job": str(rerun_job),
                                "flags": [c.to_dict() for c in confirmations]}, indent=2) + "\n")
    return path


def load(jobs: Iterable[Path]) -> dict[tuple, bool]:
    """Flag key -> confirmed, from the jobs' confirmation files."""
    out: dict[tuple, bool] = {}
    for job in jobs:
        path = Path(job) / CONFIRM_FILE
        if not path.is_file():
            continue
        try:
            for item in json.loads(path.read_text())["flags"]:
                flag = Flag(**item["flag"])
                out[flag.key] = bool(item["confirmed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise collect.ReportError(f"{path}: unreadable confirmation: {exc}") from exc
    return out


def apply(comparisons: Sequence[compare.ABComparison], confirmed: dict[tuple, bool]) -> None:
    """Mark each flagged row with its re-run's outcome, when there was one."""
    for c in comparisons:
        for i, row in enumerate(c.rows):
            key = (c.a_label, c.b_label, row.mode, row.guest_mem_mib, row.figure.key)
            if row.verdict.flagged and key in confirmed:
                c.rows[i] = replace(row, confirmed=confirmed[key])

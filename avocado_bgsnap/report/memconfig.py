"""Does background snapshot work, exactly, for each memory configuration?

The memory family (``avocado list memory``) runs the basic cycle on other
guest RAM: backends, THP, vCPUs, NUMA, a device acting during the save, a
suspended guest.  Here its points (collect.Point with a ``memory_label``)
become one row per configuration and one outcome per QEMU build:

* PASS: snapshot, restore and exact verify passed; the true pause in ms;
* CANCEL: QEMU refused background-snapshot as predicted (no snapshot
  taken), with what made it refuse ("predicted: refused, file on ext4");
* FAIL / ERROR: the start of the verdict (or avocado's fail reason).

Pure: points in, rows and one answer line out (tables.memory_table renders
the rows).  No avocado imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from . import collect, stats
from .figures import fmt

PASS, CANCEL, FAIL, ERROR = "PASS", "CANCEL", "FAIL", "ERROR"
NOT_RECORDED = "(not recorded)"
UNKNOWN = "?"
NOT_RUN = "-"                                     # the build did not run the configuration
REFUSED_KERNEL = "not supported by host kernel"   # == memory.predict.REFUSED_KERNEL
REASON_CHARS = 60


def is_memory_point(point: collect.Point) -> bool:
    """A run of the memory family: its record says what backs the guest RAM,
    or it is a guest-state variant (a suspended guest)."""
    return point.kind == collect.KIND_SNAPSHOT and (
        point.memory_label is not None or point.guest_state is not None)


def has_memory_records(points: Iterable[collect.Point]) -> bool:
    """The table is shown only for jobs with memory records."""
    return any(p.memory_label is not None for p in points)


@dataclass(frozen=True)
class ConfigKey:
    """One memory configuration: what the row shows left of the builds."""

    memory: str                 # memory.label (+ the mode when not background)
    restored: str               # restore_memory.label when it differs, "" same, "?" unknown
    thp: str                    # host THP mode during the test, "?" unknown
    during: str                 # device action / guest state, "" none


def config_key(point: collect.Point) -> ConfigKey:
    memory = point.memory_label or NOT_RECORDED
    if point.mode != collect.DEFAULT_MODE:   # the transport (slow for the devices) is not named
        memory += f" [{point.mode}]"
    restored = point.restore_memory_label or UNKNOWN
    if restored == point.memory_label:
        restored = ""
    during = list(point.during_actions)
    if point.guest_state:
        during.append(f"guest {point.guest_state}")
    return ConfigKey(memory, restored, point.thp_mode or UNKNOWN, ", ".join(during))


def outcome_class(point: collect.Point) -> str:
    """PASS, CANCEL, FAIL, ERROR, or avocado's other status (SKIP, INTERRUPTED, ...)."""
    if point.cancelled:
        return CANCEL
    if point.status in (None, PASS):
        if point.verdict == "pass":
            return PASS
        return FAIL if point.verdict else ERROR   # no verdict: it stopped before judging
    return str(point.status)


def refusal_cause(point: collect.Point) -> str:
    """What made QEMU refuse, short: the memory type of the guest RAM."""
    if point.expected_refusal and REFUSED_KERNEL in point.expected_refusal:
        return "host kernel has no userfaultfd write-protect"
    types = [t for t in point.memory_types if t != "anon"] or point.memory_types
    words = [f"file on {', '.join(point.memory_fs)}" if t == "file" and point.memory_fs else t
             for t in types]
    return ", ".join(words) or _short(point.expected_reason or "reason not recorded", 40)


def _short(text: str, limit: int = REASON_CHARS) -> str:
    """At most ``limit`` characters, cut after a word when there is one late enough."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "…"


def _times(n: int) -> str:
    return f" x{n}" if n > 1 else ""


def _pass_text(runs: Sequence[collect.Point]) -> str:
    pauses = [p.pause_ms for p in runs if p.pause_ms is not None]
    if not pauses:
        note = "no pause window" if any(p.pause_note for p in runs) else "pause n/a"
        return f"PASS{_times(len(runs))} ({note})"
    if len(runs) == 1:
        return f"PASS {fmt(pauses[0])} ms"
    return f"PASS{_times(len(runs))}, {fmt(stats.median(pauses))} ms median"


def _why(point: collect.Point) -> str:
    """The first words of why a run did not pass."""
    if point.verdict and point.verdict != "pass":
        return point.verdict
    return point.fail_reason or "no verdict"


def cell_text(runs: Sequence[collect.Point]) -> str:
    """The outcome of one configuration on one build; several runs are grouped
    by outcome (PASS first, then CANCEL, FAIL, ERROR, others)."""
    by_class: dict[str, list[collect.Point]] = {}
    for point in runs:
        by_class.setdefault(outcome_class(point), []).append(point)
    order = [PASS, CANCEL, FAIL, ERROR] + sorted(set(by_class) - {PASS, CANCEL, FAIL, ERROR})
    parts = []
    for klass in order:
        mine = by_class.get(klass)
        if not mine:
            continue
        if klass == PASS:
            parts.append(_pass_text(mine))
            continue
        texts = []
        for point in mine:
            if klass == CANCEL and point.prediction_check == collect.PREDICTED_CANCEL:
                text = f"predicted: refused, {refusal_cause(point)}"
            else:
                text = _short(_why(point))
            if text not in texts:
                texts.append(text)
        parts.append(f"{klass}{_times(len(mine))}: " + " / ".join(texts))
    return "; ".join(parts)


@dataclass
class ConfigRow:
    key: ConfigKey
    runs: dict[str, list[collect.Point]] = field(default_factory=dict)   # build -> runs

    def cell(self, build: str) -> str:
        return cell_text(self.runs[build]) if build in self.runs else NOT_RUN

    def verdict(self, build: str) -> str | None:
        """verified | refused | failed | error | other, None when not run on the build.

        A FAIL anywhere is failed; an ERROR (or another status) is not a
        verdict; a predicted refusal is 'refused' only when nothing passed.
        """
        classes = {outcome_class(p) for p in self.runs.get(build, [])}
        if not classes:
            return None
        if FAIL in classes:
            return "failed"
        if ERROR in classes:
            return "error"
        if classes - {PASS, CANCEL}:
            return "other"
        if PASS in classes:
            return "verified"
        refused = all(p.prediction_check == collect.PREDICTED_CANCEL
                      for p in self.runs[build])
        return "refused" if refused else "other"


def config_rows(points: Iterable[collect.Point]) -> list[ConfigRow]:
    """One row per memory configuration, in the order the job ran them."""
    rows: dict[ConfigKey, ConfigRow] = {}
    for point in points:
        if not is_memory_point(point):
            continue
        key = config_key(point)
        row = rows.setdefault(key, ConfigRow(key))
        row.runs.setdefault(point.qemu_build, []).append(point)
    return list(rows.values())


def row_builds(rows: Iterable[ConfigRow]) -> list[str]:
    """The builds that ran any row, the system QEMU first."""
    return sorted({b for r in rows for b in r.runs}, key=collect.build_sort_key)


def row_label(key: ConfigKey) -> str:
    """The configuration in one phrase (the answer line names failures by it)."""
    text = key.memory
    if key.restored not in ("", UNKNOWN):
        text += f" -> {key.restored}"
    if key.during:
        text += f", {key.during}"
    return text


QUESTION = "Does background snapshot work, exactly, for these memory configurations?"


def _build_answer(rows: Sequence[ConfigRow], build: str) -> str:
    verdicts: dict[str, list[ConfigRow]] = {}
    for row in rows:
        verdict = row.verdict(build)
        if verdict:
            verdicts.setdefault(verdict, []).append(row)
    n = {k: len(v) for k, v in verdicts.items()}
    if n.get("failed"):
        word = "NO"
    elif n.get("error") or n.get("other"):
        word = "not all tested"
    elif n.get("verified"):
        word = "yes"
    elif n.get("refused"):
        word = "no, every configuration refused as predicted"
    else:
        word = "not tested"
    parts = []
    if n.get("verified"):
        parts.append(f"{n['verified']} verified")
    for name, label in (("failed", "FAILED"), ("error", "ERROR, no verdict"),
                        ("other", "not run to a verdict")):
        if n.get(name):
            names = " / ".join(f"{row_label(r.key)}, THP {r.key.thp}"
                               if _thp_matters(rows, r) else row_label(r.key)
                               for r in verdicts[name])
            parts.append(f"{n[name]} {label} ({names})")
    if n.get("refused"):
        causes = sorted({refusal_cause(p) for r in verdicts["refused"] for p in r.runs[build]})
        parts.append(f"{n['refused']} refused as predicted ({', '.join(causes)})")
    return f"{build}: {word}" + (f", {', '.join(parts)}" if parts else "")


def _thp_matters(rows: Sequence[ConfigRow], row: ConfigRow) -> bool:
    """Several rows differ only by their THP mode: name it."""
    same = [r for r in rows if (r.key.memory, r.key.restored, r.key.during)
            == (row.key.memory, row.key.restored, row.key.during)]
    return len(same) > 1


def answer_line(rows: Sequence[ConfigRow]) -> str:
    """One line: per build, yes / NO / not all tested, and the counts of
    configurations verified, failed (named), refused as predicted."""
    return QUESTION + " " + "; ".join(_build_answer(rows, b) for b in row_builds(rows))

"""The CI profile's exit status from a job's results (scripts/ci-profile.sh).

avocado's own exit status (avocado/core/exit_codes.py) sets bit 1 for a FAIL
and an ERROR alike; a CI pipeline needs them apart (docs/verdicts.md):

* 0: every test PASS or CANCEL (predicted unsupported)
* 1: a FAIL, QEMU or the kernel, whatever else happened
* 2: no FAIL, but anything else: an ERROR, INTERRUPTED, SKIP or WARN, fewer
  results than tests, a leftover, no results.json, or avocado's bits 2 (job
  failed), 4 (avocado failed), 8 (interrupted)

``python -m avocado_bgsnap.report.ci_status RESULTS_JSON AVOCADO_STATUS
EXPECTED`` prints the tests that did not pass and one verdict line.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OK, FAIL, INFRA = 0, 1, 2
ACCEPTED = ("PASS", "CANCEL")
AVOCADO_TESTS_FAIL = 0x0001  # the only avocado bit judged from the tests instead


@dataclass(frozen=True)
class CiVerdict:
    status: int
    counts: dict
    problems: list = field(default_factory=list)
    not_passed: list = field(default_factory=list)   # (status, name, first reason line)

    def lines(self) -> list[str]:
        out = [f"  {status}: {name}: {reason}" for status, name, reason in self.not_passed]
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "no tests"
        if self.status == FAIL:
            what = "FAIL: a QEMU/kernel regression (docs/verdicts.md)"
        elif self.status == INFRA:
            what = "ERROR: the environment or the harness: " + "; ".join(self.problems)
        else:
            what = "PASS"
        out.append(f"ci-profile: {counts} -> exit {self.status}: {what}")
        return out


def judge(results: dict | None, avocado_status: int, expected: int,
          leftovers: list | None = None) -> CiVerdict:
    """The verdict of a job: ``results`` is avocado's results.json (None: missing)."""
    problems = []
    if results is None:
        problems.append("no results.json")
        results = {}
    tests = results.get("tests", [])
    counts: dict = {}
    for test in tests:
        counts[str(test.get("status"))] = counts.get(str(test.get("status")), 0) + 1
    if avocado_status & ~AVOCADO_TESTS_FAIL:
        problems.append(f"avocado exited {avocado_status} (avocado/core/exit_codes.py: "
                        "2 job failed, 4 avocado failed, 8 interrupted)")
    if not tests:
        problems.append("no test ran")
    elif len(tests) < expected:
        problems.append(f"{len(tests)} of {expected} tests have a result")
    for status in sorted(set(counts) - {*ACCEPTED, "FAIL"}):
        problems.append(f"{counts[status]} {status}")
    if leftovers:
        problems.append(f"{len(leftovers)} leftovers (bgsnap-leftovers.json)")
    not_passed = [(str(t.get("status")), str(t.get("name")),
                   ((t.get("fail_reason") or "").splitlines() or [""])[0])
                  for t in tests if t.get("status") not in ACCEPTED]
    status = FAIL if counts.get("FAIL") else INFRA if problems else OK
    return CiVerdict(status, counts, problems, not_passed)


def judge_files(results_json: Path, avocado_status: int, expected: int) -> CiVerdict:
    try:
        results = json.loads(results_json.read_text())
    except (OSError, ValueError):
        results = None
    leftovers = []
    if results and results.get("debuglog"):
        try:
            leftovers = json.loads(
                (Path(results["debuglog"]).parent / "bgsnap-leftovers.json").read_text())
        except (OSError, ValueError):
            leftovers = []
    return judge(results, avocado_status, expected, leftovers)


def main(argv: list[str]) -> int:
    try:
        verdict = judge_files(Path(argv[0]), int(argv[1]), int(argv[2]))
    except Exception as exc:  # noqa: BLE001 - a crash here must not read as a FAIL (1)
        print(f"ci-profile: ERROR: cannot judge the job: {exc!r} -> exit {INFRA}")
        return INFRA
    print("\n".join(verdict.lines()))
    return verdict.status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The raw-QEMU baseline end to end: a real 'avocado run' of the suite's
smallest background test and the same cycle on plain QEMU from its records
(docs/benchmarks.md, "What the suite costs"); and the raw cycle's own check
caught by a damaged image (its negative control)."""

import json

import pytest

from jobs import qemu_pids

from avocado_bgsnap import snapshot
from avocado_bgsnap.baseline import compare, raw, runs
from avocado_bgsnap.flip_filter import needle

TEST = "bgsnap.basic.small"


def test_the_baseline_compares_a_real_job_with_the_raw_cycle_and_its_check_can_fail(tmp_path):
    before = qemu_pids()
    said = []
    result = runs.measure(TEST, 1, said.append, results=tmp_path / "results")

    # one suite run, one raw run, every phase on both sides, the JSON beside the job
    assert len(result.suite) == len(result.raw) == 1
    assert [r.phase for r in result.rows] == [*compare.PHASES, "total"]
    suite, raw_run = result.suite[0], result.raw[0]
    for phase in ("boot", "fill", "snapshot", "restore", "guest_verify"):
        assert raw_run[phase] > 0 and suite[phase] > 0, (phase, suite, raw_run)
    assert suite["avocado"] > 0 and suite["source_check"] > 0  # what raw does not pay
    assert raw_run["total"] >= sum(raw_run[p] for p in ("boot", "fill", "snapshot", "restore"))
    saved = json.loads(result.path.read_text())
    assert saved["ratio"] == pytest.approx(suite["total"] / raw_run["total"], rel=1e-3)
    assert any(line.startswith("suite: ") for line in said), said

    # negative control: one flipped byte of a workload page in the image,
    # and the raw cycle's restored guest must verify BAD
    test_dir = next((result.path.parent / "test-results").iterdir())
    plan = raw.plan_from_test(test_dir)
    flipped = []

    def damage(work):
        image = next(work.glob("*.bin"))
        flipped.append(snapshot.damage_guest_page(image, needle(plan.workload.nonce)))

    with pytest.raises(raw.RawError, match="verifies BAD"):
        raw.run_cycle(plan, after_save=damage)
    assert flipped, "the image held no workload page to damage"
    assert qemu_pids() <= before, "a QEMU of the baseline outlived it"

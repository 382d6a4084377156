"""The raw-QEMU baseline end to end: a real 'avocado run' of the suite's
smallest background test and the same cycle on plain QEMU from its records
(docs/benchmarks.md, "What the suite costs"); and the raw cycle's own check
caught by a damaged image (its negative control)."""

import json
import mmap
import struct
from pathlib import Path

import pytest

from jobs import qemu_pids

from avocado_bgsnap.baseline import compare, raw, runs
from avocado_bgsnap.verifier import PAGE_MAGIC

TEST = "bgsnap.basic.small"


def damage_every_page(image: Path) -> int:
    """Flip one byte in the body of every workload page of ``image``; the count."""
    magic = struct.pack("<Q", PAGE_MAGIC)
    count = 0
    with open(image, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as data:
        pos = data.find(magic)
        while pos >= 0 and pos + 512 < len(data):
            data[pos + 512] ^= 0xFF
            count += 1
            pos = data.find(magic, pos + 4096)
    return count


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

    # negative control: a flipped byte in every workload page of the image,
    # and the raw cycle's restored guest must verify BAD.  Every page, not
    # one: the raw cycle checks only inside the guest, after 'cont', and its
    # writers may rewrite a damaged page before the check (measured: one
    # flipped page went unseen; the suite's host check reads the restored
    # RAM before the guest runs)
    (test,) = json.loads((result.path.parent / "results.json").read_text())["tests"]
    test_dir = Path(test["logdir"])
    plan = raw.plan_from_test(test_dir)
    flipped = []

    def damage(work):
        flipped.append(damage_every_page(next(work.glob("*.bin"))))

    with pytest.raises(raw.RawError, match="verifies BAD"):
        raw.run_cycle(plan, after_save=damage)
    assert flipped and flipped[0] >= plan.workload.mib * 256 // 2, flipped  # pages found
    assert qemu_pids() <= before, "a QEMU of the baseline outlived it"

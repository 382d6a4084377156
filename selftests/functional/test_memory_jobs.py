"""End-to-end: the memory configurations CI can afford (docs/memory.md).

Real avocado jobs, real QEMU: shared memfd and /dev/shm RAM, hugetlb (the
test reserves hugepages and gives them back), two vCPUs, a balloon inflated
and deflated while the RAM streams, and a file on a disk filesystem, which
QEMU must refuse as predicted (and the prediction check's negative control).  ``run_job`` also checks that no host memory
setting was left changed.
"""

import os

import pytest

from jobs import by_name, metrics_of, pytestmark, run_job  # noqa: F401

PASSING = ("memory.backend.memfd_shared", "memory.backend.shm_shared", "memory.vcpus.2",
           "memory.device.balloon")


def _statuses(tests):
    return [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]


def test_memory_configurations_restore_exactly(tmp_path):
    data, _ = run_job(tmp_path, *PASSING)
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS"] * len(PASSING), _statuses(tests)
    kinds = {}
    for name in PASSING:
        m = metrics_of(tests[name])
        assert m["host_verify"].startswith("CLEAN") and m["point_in_time"] == "ok", name
        assert m["source_verify"].startswith("CLEAN"), name
        assert m["expected"]["supported"] and m["prediction_check"] == "proceed", name
        kinds[name] = [b["memory_type"] for b in m["memory"]["blocks"]]
    assert kinds["memory.backend.memfd_shared"] == ["shmem"]
    assert kinds["memory.backend.shm_shared"] == ["shmem"]
    two = metrics_of(tests["memory.vcpus.2"])
    assert two["memory"]["vcpus"] == 2 and two["workload"]["writers"] == 2
    balloon = metrics_of(tests["memory.device.balloon"])
    (action,) = balloon["during_save"]
    assert action["action"] == "balloon" and action["status_before"] == "active"
    assert action["lowest_actual_mib"] <= action["target_mib"]   # it really inflated
    assert action["after_save"]["actual_mib"] == balloon["guest_mem_mib"]


def test_disk_file_backend_is_refused_as_predicted_and_a_wrong_prediction_is_caught(tmp_path):
    data, _ = run_job(tmp_path, "memory.backend.disk_file",
                      "memory.negative.wrong_prediction_refused")
    tests = by_name(data)
    refused = tests["memory.backend.disk_file"]
    assert refused["status"] == "CANCEL", refused["fail_reason"]
    assert "QEMU refused as predicted" in refused["fail_reason"]
    m = metrics_of(refused)
    assert not m["expected"]["supported"] and m["prediction_check"] == "cancel"
    assert "not compatible with guest memory configuration" in m["qemu_refusal"]
    # the same refusal judged against the claim "supported" must be caught
    negative = tests["memory.negative.wrong_prediction_refused"]
    assert negative["status"] == "PASS", negative["fail_reason"]
    assert metrics_of(negative)["prediction_check"] == "fail"


@pytest.mark.skipif(os.geteuid() != 0, reason="reserving hugepages needs root")
def test_hugetlb_backend_gets_its_pages_and_gives_them_back(tmp_path):
    data, _ = run_job(tmp_path, "memory.backend.memfd_hugetlb")   # settings checked by run_job
    (test,) = data["tests"]
    assert test["status"] == "PASS", test["fail_reason"]
    m = metrics_of(test)
    assert m["memory"]["blocks"][0]["memory_type"] == "hugetlb"
    assert m["host_memory"]["hugepages_reserved"] == {"2048": 256}   # source + restore
    assert m["host_verify"].startswith("CLEAN")

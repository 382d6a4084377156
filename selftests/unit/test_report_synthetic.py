"""Synthetic bgsnap jobs for the report tests (imported by the other test_report_* files).

``make_job`` writes an avocado-like job dir: test-results/<n>-<name>/data/
bgsnap-metrics.json per record plus results.json with each test's status.
"""

import json
import random

BASE_STAMP = 1795941956.919757
MODE_PAUSE_MS = {"background": 1.5, "stop_save": 400.0, "precopy": 40.0}


def make_record(build="system", mode="background", mem=256, rep=1, rng=None,
                pause_scale=1.0, stall_scale=1.0, stamp=BASE_STAMP, **extra):
    """One record shaped like cycle.py writes it; pause grows with RAM."""
    rng = rng or random.Random(0)
    base = MODE_PAUSE_MS[mode] * (mem / 256 if mode != "background" else 1 + mem / 4096)
    pause_ms = base * pause_scale * rng.lognormvariate(0, 0.08)
    total_s = 0.5 * mem / 256 * rng.lognormvariate(0, 0.05)
    before = 1500 * rng.lognormvariate(0, 0.03)
    during = before * (0.6 if mode == "background" else 0.3)
    record = {
        "schema": 1, "accel": "tcg", "guest_mem_mib": mem, "workload_mib": mem * 3 // 4,
        "workload": {"pattern": "random", "writers": 1, "rate_mib_s": 0, "mib": mem * 3 // 4},
        "qemu_build": build, "mode": mode, "repetition": rep, "negative_control": "none",
        "transport": {"name": "file"},
        "host": {"qemu": {"version_text": {"system": "7.2.22 (Debian 1:7.2+dfsg-7)",
                                           "qemu10": "10.0.2 (Debian 1:10.0.2+ds-1)"}[build]}},
        "pause_ms": pause_ms,
        "pause_windows": [[stamp, stamp + pause_ms / 1000.0]],
        "downtime_ms": 10 if mode == "stop_save" else round(pause_ms),
        "snapshot_total_s": total_s,
        "snapshot_bytes": int(mem * 0.8 * 2**20),
        "ram_transferred_bytes": int(mem * 0.8 * 2**20),
        "phase_s": {"fill": 1.7, "restore": 2.6, "dump": 0.3, "host_verify": 0.05},
        "boot_s": 5.7,
        "latency_windows": [
            {"window": 0, "count": 1000, "p50_ns": 2500, "p99_ns": 5600, "max_ns": 3000000,
             "mib_per_s": before, "seconds": 1.4},
            {"window": 1, "count": 900, "p50_ns": 3800, "p99_ns": 65000 * stall_scale,
             "max_ns": 15e6 * stall_scale * rng.lognormvariate(0, 0.1),
             "mib_per_s": during, "seconds": 1.0},
            {"window": 2, "count": 100, "p50_ns": 3000, "p99_ns": 10000, "max_ns": 300000,
             "mib_per_s": before * 0.95, "seconds": 0.2},
            {"window": 3, "count": 0, "p50_ns": None, "p99_ns": None, "max_ns": None,
             "mib_per_s": 0.0, "seconds": 0.0},
        ],
        "rss_before_kib": mem * 1024, "rss_after_kib": mem * 1100,
        "verdict": "pass",
        "host_verify": "CLEAN: 32768 pages (32768 found), 1 writer(s)",
    }
    record.update(extra)
    return record


def failed_no_resume(record):
    """The same record as if QEMU never sent RESUME: the test failed."""
    record = dict(record)
    record["pause_windows"] = [[record["pause_windows"][0][0], None]]
    record.pop("pause_ms", None)
    record["verdict"] = "no RESUME event after STOP within 60 s"
    record.pop("host_verify", None)
    return record


def make_job(root, job_name, tests):
    """tests: [(test name, record dict, avocado status)] -> the job dir."""
    job = root / job_name
    results = []
    for i, (name, record, status) in enumerate(tests, 1):
        logdir = job / "test-results" / f"{i}-{name}"
        (logdir / "data").mkdir(parents=True)
        (logdir / "data" / "bgsnap-metrics.json").write_text(json.dumps(record, indent=2))
        results.append({"id": f"{i}-{name}", "name": name, "status": status,
                        "logdir": str(logdir), "fail_reason": "" if status == "PASS"
                        else record.get("verdict", "")})
    (job / "results.json").write_text(json.dumps({"tests": results}))
    return job


def scale_tests(builds=("system",), modes=("background", "stop_save"), sizes=(256, 512, 1024),
                reps=3, seed=1, pause_scale=None, stall_scale=None):
    """(name, record, status) for every build x mode x size x repetition."""
    rng = random.Random(seed)
    tests = []
    stamp = BASE_STAMP
    for build in builds:
        for mode in modes:
            for mem in sizes:
                for rep in range(1, reps + 1):
                    stamp += 30.0
                    record = make_record(build, mode, mem, rep, rng, stamp=stamp,
                                         pause_scale=(pause_scale or {}).get(build, 1.0),
                                         stall_scale=(stall_scale or {}).get(build, 1.0))
                    prefix = "" if build == "system" else f"{build}."
                    tests.append((f"{prefix}scale.{mode}.{mem}m.r{rep}", record, "PASS"))
    return tests


def synthetic_matrix(root):
    """2 builds x 2 modes x 3 sizes x 3 reps in one job; one run lost its RESUME."""
    tests = scale_tests(builds=("system", "qemu10"))
    name, record, _ = tests[4]
    tests[4] = (name, failed_no_resume(record), "FAIL")
    return make_job(root, "job-2026-01-01T00.00-aaaaaaa", tests)


def test_synthetic_matrix_shape(tmp_path):
    job = synthetic_matrix(tmp_path)
    records = sorted(job.glob("test-results/*/data/bgsnap-metrics.json"))
    assert len(records) == 2 * 2 * 3 * 3
    statuses = json.loads((job / "results.json").read_text())["tests"]
    assert [t["status"] for t in statuses].count("FAIL") == 1

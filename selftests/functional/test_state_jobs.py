"""End-to-end: the two cheapest guest-state tests on the system QEMU, in
one real avocado job (about 2 minutes under TCG; docs/guest-states.md).

* ``state.idle``: no workload; the restored guest runs, its clock puts
  the image between the source's uptimes around the trigger, its tmpfs
  file reads back with the same md5.
* ``state.after_boot``: the snapshot as soon as the shell answers, the
  workload filled during the save: not one of its pages in the image.
"""

from jobs import by_name, metrics_of, pytestmark, run_job  # noqa: F401


def test_idle_and_after_boot_pass_with_their_figures(tmp_path):
    data, _ = run_job(tmp_path, "state.idle", "state.after_boot")
    tests = by_name(data)
    assert [t["status"] for t in tests.values()] == ["PASS"] * 2, \
        [(n, t["status"], t["fail_reason"]) for n, t in tests.items()]

    idle = metrics_of(tests["state.idle"])
    assert idle["guest_state"] == "idle" and idle["verdict"] == "pass"
    assert idle["point_in_time"] == "ok"
    assert idle["idle_file_md5"]["before"] == idle["idle_file_md5"]["restored"]
    uptime = idle["uptime_s"]
    assert uptime["before"] <= uptime["after"] < uptime["restored"] < uptime["restored_later"]
    assert idle["restored_status_at_load"] == "paused"
    assert idle["pause_ms"] is not None and idle["pause_ms"] < 100

    boot = metrics_of(tests["state.after_boot"])
    assert boot["guest_state"] == "after_boot" and boot["verdict"] == "pass"
    assert boot["run_frames_in_image"]["pages"] == 0
    assert boot["run_frames_in_image"]["metas"] == 0
    assert boot["run_frames_in_image"]["workload_pid"] == ""
    assert boot["save_status_after_fill"] == "active"
    # the fill populated guest pages QEMU had never populated before the save
    assert boot["rss_after_kib"] - boot["rss_before_kib"] > 32 * 1024
    assert boot["source_verify"].startswith("CLEAN")


"""The 'during the save' mechanism, the suspended-guest verdict, the slow target."""

import io
import time

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import settings, suspend
from avocado_bgsnap.during import DuringSave, DuringSaveRun
from avocado_bgsnap.snapshot import SnapshotResult
from avocado_bgsnap.throttle_filter import throttle


class _Ctx:
    def __init__(self, statuses):
        self.statuses = list(statuses)

    def migration_status(self):
        return self.statuses.pop(0)


class _Action(DuringSave):
    name = "poke"

    def act(self, ctx):
        return {"did": "it"}

    def errors(self, record):
        return ["saw a bad thing"] if record.get("after_save", {}).get("bad") else []

    def settle(self, ctx):
        return {"bad": True}


def test_an_action_that_starts_after_the_save_is_missed():
    run = DuringSaveRun([_Action()], lambda m: None)
    run.act(_Ctx(["completed", "completed"]))
    assert run.missed() == ["poke: the save was already 'completed' when it started"]


def test_an_action_while_streaming_is_recorded_and_its_errors_reported():
    run = DuringSaveRun([_Action()], lambda m: None)
    run.act(_Ctx(["active", "active"]))
    run.settle(_Ctx([]))
    assert run.missed() == []
    assert run.records[0]["did"] == "it" and run.records[0]["status_before"] == "active"
    assert run.errors() == ["poke: saw a bad thing"]


def _save(status_after, events, windows=()):
    result = SnapshotResult(path=None, snapshot_bytes=0, pause_windows=tuple(windows),
                            pause_ms=None, downtime_ms=None, setup_ms=None, total_s=0,
                            ram_transferred_bytes=0, ram_total_bytes=0)
    return suspend.SuspendedSave(result, "suspended", status_after, tuple(events))


def test_a_build_that_wakes_the_guest_fails_with_the_evidence():
    woke = _save("running", ["STOP", "WAKEUP", "RESUME"])        # QEMU 7.2, measured
    (error,) = suspend.suspended_errors(woke, preserved_expected=False)
    assert "suspended -> running" in error and "WAKEUP" in error and "before 9.0" in error
    kept = _save("suspended", ["STOP", "RESUME"])                # QEMU 10.0.2, measured
    assert suspend.suspended_errors(kept, preserved_expected=True) == []


def test_no_pause_window_is_said_not_failed():
    assert suspend.pause_note(_save("suspended", [])).startswith("no pause window")
    assert suspend.pause_note(_save("suspended", ["STOP", "RESUME"], windows=[object()])) is None


def test_throttle_keeps_to_the_rate():
    src, dst = io.BytesIO(b"x" * (1 << 20)), io.BytesIO()
    started = time.monotonic()
    assert throttle(src, dst, 4 * 2**20) == 1 << 20
    assert time.monotonic() - started >= 0.2          # 1 MiB at 4 MiB/s: >= 0.25 s
    assert dst.getvalue() == b"x" * (1 << 20)


BASE = {"mem": "256", "bgsnap_workload_mib": "128"}


@pytest.mark.parametrize("extra, message", [
    ({"bgsnap_during": "juggle"}, "unknown action"),
    ({"bgsnap_during": "balloon"}, "needs a balloon device"),
    ({"bgsnap_during": "balloon", "balloon": "b0", "bgsnap_mode": "stop_save"},
     "needs bgsnap_mode = background"),
    ({"bgsnap_during": "balloon", "balloon": "b0", "bgsnap_balloon_inflate_mib": "200"},
     "bgsnap_balloon_inflate_mib"),
    ({"bgsnap_during": "virtio_mem"}, "vm_memdev_model = virtio-mem"),
    ({"bgsnap_during": "virtio_mem", "mem_devs": "v", "vm_memdev_model_v": "virtio-mem",
      "size_mem_v": "1G", "bgsnap_virtio_mem_sizes": "2048"}, "bgsnap_virtio_mem_sizes"),
    ({"bgsnap_restore_params": "novalue"}, "is not key=value"),
    ({"bgsnap_host_thp": "sometimes"}, "bgsnap_host_thp"),
])
def test_bad_memory_and_during_params_name_the_param(extra, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.from_params(Params({**BASE, **extra}))


def test_restore_params_give_the_restoring_qemu_its_own_memory():
    cfg = settings.from_params(Params({**BASE, "vm_mem_backend": "memory-backend-memfd",
                                       "vm_mem_share": "yes",
                                       "bgsnap_restore_params":
                                           "vm_mem_backend=memory-backend-ram vm_mem_share=no"}))
    assert cfg.memory.blocks[0].memory_type == "shmem"
    assert cfg.restore_memory.blocks[0].memory_type == "anon"
    assert dict(cfg.restore_params) == {"vm_mem_backend": "memory-backend-ram",
                                        "vm_mem_share": "no"}

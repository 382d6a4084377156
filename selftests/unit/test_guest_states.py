"""Pure logic of the guest-state tests (avocado_bgsnap/guest_states.py):
the point-in-time check of an idle guest's clock, the run-state parser of
an image, the search for a run's frames, the paused and soak verdicts,
and their params."""

import struct
from pathlib import Path

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import guest_states, settings, snapshot
from avocado_bgsnap.guest_states import RoundOutcome, uptime_error
from avocado_bgsnap.verifier import PAGE_MAGIC


# -- the idle guest's clock ---------------------------------------------------
def test_uptime_inside_the_window_passes():
    # source: 100.00 before the trigger, 100.40 right after RESUME; the
    # restored guest reads 103.10, 3 s after its cont: the instant >= 100.10
    assert uptime_error(100.0, 100.4, 103.1, 3.0) is None
    assert uptime_error(100.0, 100.4, 100.0, 0.5) is None      # at the lower edge
    assert uptime_error(100.0, 100.4, 100.9, 0.5) is None      # at the upper edge


def test_uptime_of_an_earlier_image_is_caught():
    # negative control: an image from 20 s before the trigger (a stale file)
    error = uptime_error(100.0, 100.4, 82.0, 2.0)
    assert error and "earlier instant" in error


def test_uptime_of_a_later_image_is_caught():
    # negative control: an image taken 5 s after RESUME (a late image)
    error = uptime_error(100.0, 100.4, 107.5, 2.0)
    assert error and "not the snapshot instant" in error


def test_uptime_resolution_is_the_only_slack():
    assert uptime_error(100.0, 100.4, 99.99, 0.5) is None
    assert uptime_error(100.0, 100.4, 99.98, 0.5) is not None


def test_parse_uptime():
    assert guest_states.parse_uptime("cat /proc/uptime\n12.34 10.00\n") == 12.34
    with pytest.raises(ValueError):
        guest_states.parse_uptime("no such file")


# -- the run state an image carries -------------------------------------------
def globalstate(runstate: bytes) -> bytes:
    body = runstate + b"\0"
    return (b"\x04" + struct.pack(">I", 7) + guest_states.GLOBALSTATE_IDSTR
            + struct.pack(">II", 0, 1) + struct.pack(">I", len(body))
            + body.ljust(guest_states.RUNSTATE_BUFFER, b"\0"))


def test_parse_runstate_finds_the_last_section():
    data = b"x" * 100 + globalstate(b"running") + b"ram" * 50 + globalstate(b"paused") + b"end"
    assert guest_states.parse_runstate(data) == "paused"
    assert guest_states.parse_runstate(b"no device state here") is None


def test_image_runstate_reads_a_file(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(b"QEVM" + b"\0" * 4096 + globalstate(b"paused"))
    assert guest_states.image_runstate(path) == "paused"
    (tmp_path / "empty.bin").write_bytes(b"")
    assert guest_states.image_runstate(tmp_path / "empty.bin") is None


# -- the paused guest -----------------------------------------------------------
def saved():
    return snapshot.SnapshotResult(path=None, snapshot_bytes=1, pause_windows=(),
                                   pause_ms=None, downtime_ms=None, setup_ms=None,
                                   total_s=1.0, ram_transferred_bytes=0, ram_total_bytes=0)


def test_paused_guest_kept_paused_passes():
    save = guest_states.PausedSave(saved(), "paused", "paused", (), "paused")
    assert not save.resumed
    assert guest_states.paused_errors(save, "paused") == []
    assert guest_states.pause_note(save.result).startswith("no pause window")


def test_a_save_that_resumes_the_paused_guest_fails_with_the_evidence():
    save = guest_states.PausedSave(saved(), "paused", "running", ("RESUME",), "paused")
    (error,) = guest_states.paused_errors(save, "paused")
    assert "resumed the paused guest: run state paused -> running" in error
    assert "RESUME" in error
    (error,) = guest_states.paused_errors(save, "paused", preserved_expected=False)
    assert "resumed the paused guest (QEMU before 9.0 does" in error


def test_paused_preserved_since_9_0():
    assert not guest_states.expect_paused_preserved((7, 2, 22))
    assert guest_states.expect_paused_preserved((9, 0, 0))
    assert guest_states.expect_paused_preserved((10, 0, 2))


def test_a_restored_guest_that_runs_by_itself_fails():
    save = guest_states.PausedSave(saved(), "paused", "paused", (), "paused")
    assert guest_states.paused_errors(save, "running") == [
        "the restored guest came back 'running', not paused"]
    save = guest_states.PausedSave(saved(), "paused", "paused", (), "running")
    assert "the image says the guest was 'running'" in guest_states.paused_errors(
        save, "paused")[0]


def test_run_state_events_in_qemu_order():
    def ev(name, s, us):
        return {"event": name, "timestamp": {"seconds": s, "microseconds": us}}
    events = [ev("RESUME", 5, 2), ev("MIGRATION", 5, 0), ev("STOP", 5, 1)]
    assert guest_states.run_state_events(events) == ("STOP", "RESUME")


# -- right after boot: frames of the run --------------------------------------
NONCE = 0x1234_5678_9ABC_DEF0


def page(p: int, nonce: int = NONCE) -> bytes:
    return struct.pack("<QQ", PAGE_MAGIC, nonce ^ p).ljust(4096, b"\xa5")


def test_an_image_without_the_run_has_no_frames():
    data = b"\0" * 4096 * 4 + page(3, nonce=NONCE ^ 0xFFFF_0000) + struct.pack("<Q", PAGE_MAGIC)
    assert guest_states.count_run_frames(data, NONCE, 256) == (0, 0)


def test_pages_and_metadata_of_the_run_are_counted_at_any_offset():
    # negative control: pages written after the snapshot instant in the image
    meta = struct.pack("<QQ", guest_states.META_MAGIC, NONCE).ljust(4096, b"\0")
    data = b"\0" * 100 + page(0) + b"\0" * 7 + page(255) + page(256) + meta
    assert guest_states.count_run_frames(data, NONCE, 256) == (2, 1)


def test_run_frames_of_a_file(tmp_path):
    path = tmp_path / "dump.elf"
    path.write_bytes(b"\x7fELF" + b"\0" * 60 + page(5))
    assert guest_states.run_frames(path, NONCE, 256) == (1, 0)


def test_after_boot_errors():
    assert guest_states.after_boot_errors(0, 0, "", True, "clean") == []
    errors = guest_states.after_boot_errors(3, 1, "57", False, "BAD: 2 pages")
    assert len(errors) == 3
    assert errors[0].startswith("3 workload pages and 1 metadata pages written after")


# -- the soak -----------------------------------------------------------------
def outcome(n, failure=None, pause=5.0):
    return RoundOutcome(n, failure, pause, 2.0, "CLEAN", "CLEAN", "ok")


def test_soak_all_passed():
    outcomes = [outcome(n) for n in (1, 2, 3)]
    assert guest_states.soak_figure(outcomes, 3) == "3 passed of 3"
    assert guest_states.soak_failure(outcomes, 3) is None


def test_soak_names_the_failed_rounds():
    outcomes = [outcome(1), outcome(2, "restored RAM differs"), outcome(3),
                outcome(4, "pause 900 ms")]
    failure = guest_states.soak_failure(outcomes, 4)
    assert failure.startswith("2 passed of 4 (failed: 2, 4): round 2: restored RAM differs")
    assert "round 4: pause 900 ms" in failure


def test_soak_rounds_not_run_are_a_failure():
    failure = guest_states.soak_failure([outcome(1)], 5)
    assert failure == "1 passed of 5 (failed: none): rounds 2..5 not run"


def test_round_outcome_from_the_record():
    record = {"pause_ms": 4.5, "snapshot_total_s": 1.2, "host_verify": "CLEAN x",
              "guest_verify": "CLEAN y", "point_in_time": "ok"}
    o = RoundOutcome.from_record(2, record, None)
    assert o.to_dict() == {"round": 2, "verdict": "pass", "pause_ms": 4.5,
                           "snapshot_total_s": 1.2, "host_verify": "CLEAN x",
                           "guest_verify": "CLEAN y", "point_in_time": "ok"}


def test_pause_summary():
    outcomes = [outcome(1, pause=3.0), outcome(2, pause=9.0), outcome(3, pause=4.0),
                outcome(4, pause=None)]
    assert guest_states.pause_summary(outcomes) == {"min": 3.0, "median": 4.0, "max": 9.0}
    assert guest_states.pause_summary([]) == {"min": None, "median": None, "max": None}


# -- params -------------------------------------------------------------------
def test_state_params_defaults_and_values():
    state = settings.guest_state_from_params(Params({"mem": "256"}))
    assert (state.soak_rounds, state.idle_file_mib) == (5, 16)
    state = settings.guest_state_from_params(Params({"mem": "256", "bgsnap_soak_count": "12",
                                                     "bgsnap_idle_file_mib": "64"}))
    assert (state.soak_rounds, state.idle_file_mib) == (12, 64)


@pytest.mark.parametrize("key, value, message", [
    ("bgsnap_soak_count", "0", "bgsnap_soak_count = 0: expected 1..1000"),
    ("bgsnap_soak_count", "five", "bgsnap_soak_count = 'five': expected an integer 1..1000"),
    ("bgsnap_idle_file_mib", "65", "bgsnap_idle_file_mib = 65: expected 1..64 MiB (at most a "
                                   "quarter of mem = 256)"),
])
def test_bad_state_params_name_the_param(key, value, message):
    with pytest.raises(settings.SettingsError) as exc:
        settings.guest_state_from_params(Params({"mem": "256", key: value}))
    assert str(exc.value).startswith(message)


def test_state_variants_parse():
    from test_cfg import dicts

    names = {d["shortname"]: d for d in dicts("state")}
    assert set(names) == {"state.paused", "state.idle", "state.after_boot", "state.soak"}
    for d in names.values():
        settings.from_params(Params(d))
        settings.guest_state_from_params(Params(d))
    after_boot = settings.from_params(Params(names["state.after_boot"]))
    assert "throttle_filter 8 >" in after_boot.transport.save_uri(Path("/x"))
    assert {d["type"] for d in names.values()} == {
        "bgsnap_paused", "bgsnap_idle", "bgsnap_after_boot", "bgsnap_soak"}

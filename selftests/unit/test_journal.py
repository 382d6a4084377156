"""The workload journal's parser and judgement (journal.py), each check
with the damage it must catch; the C writer's format against the parser."""

import os
import struct
import subprocess
import time

import pytest

from avocado_bgsnap import journal
from avocado_bgsnap.guest import wl_build
from avocado_bgsnap.journal import JournalState, Record

NONCE = 0x1234_5678_9ABC


def records(n, step0=100, per=7):
    return [Record(seq, step0 + per * seq, 10_000 + seq) for seq in range(1, n + 1)]


def file_of(recs, nonce=NONCE):
    return b"".join(r.encode(nonce) for r in recs)


def state(pending, durable, durable_step=None, errors=0):
    return JournalState(pending, durable, 100 + 7 * durable if durable_step is None
                        else durable_step, errors, 0, 0, 10)


def state_page(st: JournalState, nonce=NONCE) -> bytes:
    words = [journal.MAGIC_STATE, nonce, journal.state_check(nonce), journal.RECORD_BYTES,
             st.pending_seq, st.durable_seq, st.durable_step, st.errors, st.fsync_max_ns,
             st.fsync_total_ns, st.interval_ms]
    return struct.pack("<11Q", *words).ljust(journal.PAGE_BYTES, b"\0")


# -- parsing ------------------------------------------------------------------------
def test_parse_whole_records():
    disk = journal.parse_journal(file_of(records(5)), NONCE)
    assert [r.seq for r in disk.records] == [1, 2, 3, 4, 5]
    assert disk.last_step == 135 and disk.problems == () and disk.torn_tail == 0


def test_parse_tolerates_zero_tail_and_one_torn_record():
    data = file_of(records(3))
    torn = records(4)[3].encode(NONCE)[:40] + b"\0" * 24
    disk = journal.parse_journal(data + torn + b"\0" * 128, NONCE)
    assert disk.last_seq == 3 and disk.torn_tail == 1 and disk.zero_tail == 2
    assert disk.problems == ()


@pytest.mark.parametrize("damage, expected", [
    ("hole", "a hole in the journal"),
    ("two_torn", "at most the one being written"),
    ("out_of_place", "expected 3"),
    ("step_back", "steps only grow"),
])
def test_parse_flags_what_no_journal_of_this_run_looks_like(damage, expected):
    recs = records(6)
    if damage == "hole":
        data = bytearray(file_of(recs))
        data[2 * 64 + 20] ^= 0xFF               # record 3 damaged, 4..6 whole
    elif damage == "two_torn":
        data = file_of(recs[:2]) + b"\x55" * 64 + b"\x66" * 64
    elif damage == "out_of_place":
        data = file_of(recs[:2] + [recs[3]])
    else:
        data = file_of(recs[:2] + [Record(3, 50, 1)])
    disk = journal.parse_journal(bytes(data), NONCE)
    assert any(expected in p for p in disk.problems), disk.problems


def test_parse_ignores_another_runs_records():
    disk = journal.parse_journal(file_of(records(3), nonce=NONCE + 1), NONCE)
    assert disk.records == () and disk.torn_tail == 3


# -- the RAM's state page ---------------------------------------------------------------
def test_find_state_in_any_alignment_and_identical_copies():
    st = state(9, 8)
    dump = os.urandom(5000) + state_page(st) + os.urandom(333) + state_page(st)
    assert journal.find_state(dump, NONCE) == st


def test_find_state_none_or_two_different_is_an_error():
    with pytest.raises(journal.JournalError, match="no journal state page"):
        journal.find_state(os.urandom(20000), NONCE)
    with pytest.raises(journal.JournalError, match="2 different"):
        journal.find_state(state_page(state(9, 8)) + state_page(state(10, 9)), NONCE)
    # another run's page, or a wrong check word, is not ours
    bad = bytearray(state_page(state(9, 8)))
    bad[16] ^= 1
    with pytest.raises(journal.JournalError):
        journal.find_state(state_page(state(9, 8), NONCE + 1) + bytes(bad), NONCE)


# -- the judgement ------------------------------------------------------------------------
def judge(n_disk, pending, durable, ram_steps=10**9, **kw):
    return journal.judge(journal.parse_journal(file_of(records(n_disk)), NONCE),
                         state(pending, durable, **kw), ram_steps)


def test_one_instant_agrees():
    # durable <= on disk <= pending: the records after the last fsync may or may not be there
    for n in (8, 9):
        verdict = judge(n, pending=9, durable=8)
        assert verdict.agrees, verdict.problems
        assert verdict.figures["disk_records"] == n


def test_disk_older_than_ram_is_caught():
    verdict = judge(5, pending=9, durable=8)
    assert not verdict.agrees
    assert "records 6..8 are not on the disk" in verdict.problems[0]
    assert "older than the RAM" in verdict.summary()


def test_disk_newer_than_ram_is_caught():
    verdict = judge(12, pending=9, durable=8)
    assert any("records 10..12 are on the disk" in p for p in verdict.problems)


def test_a_step_beyond_the_rams_is_caught():
    verdict = judge(8, pending=9, durable=8, ram_steps=140)  # records 6.. name 142+
    assert any("beyond the restored RAM's 140" in p for p in verdict.problems)


def test_torn_record_the_ram_had_not_begun_is_caught():
    data = file_of(records(9)) + b"\x77" * 64
    verdict = journal.judge(journal.parse_journal(data, NONCE), state(9, 9), 10**9)
    assert any("had not begun" in p for p in verdict.problems)
    ok = journal.judge(journal.parse_journal(data, NONCE), state(10, 9), 10**9)
    assert ok.agrees, ok.problems


def test_writer_errors_are_a_problem():
    assert not judge(8, pending=9, durable=8, errors=1).agrees


def test_empty_journal_before_any_fsync_agrees():
    verdict = journal.judge(journal.parse_journal(b"", NONCE), state(1, 0), 0)
    assert verdict.agrees, verdict.problems


# -- the C writer against this parser ---------------------------------------------------------
@pytest.fixture(scope="module")
def wl_binary(tmp_path_factory):
    try:
        return wl_build.build_wl(tmp_path_factory.mktemp("wl"), static=False)
    except wl_build.WorkloadBuildError as exc:
        pytest.skip(f"no C toolchain: {exc}")


def test_c_journal_parses_and_agrees(wl_binary, tmp_path):
    sock, path = tmp_path / "s", tmp_path / "journal.bin"
    server = subprocess.Popen([str(wl_binary), "run", "--mib", "2", "--seed", "1", "--nonce",
                               str(NONCE), "--socket", str(sock), "--journal", str(path),
                               "--journal-ms", "2"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run([str(wl_binary), "ctl", "--socket", str(sock), "status"],
                                 capture_output=True, text=True).stdout
            if '"durable_seq":' in out and '"durable_seq":0,' not in out \
                    and '"phase":"running"' in out:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.2)
        subprocess.run([str(wl_binary), "ctl", "--socket", str(sock), "quit"],
                       capture_output=True, check=True)
        server.wait(timeout=20)
    finally:
        server.kill()
        server.wait()
    disk = journal.parse_journal(path.read_bytes(), NONCE)
    assert disk.problems == () and disk.last_seq >= 1 and disk.torn_tail == 0
    steps = [r.step for r in disk.records]
    assert steps == sorted(steps) and steps[-1] > 0
    # the journal as the RAM would have it at the end: everything durable
    end = JournalState(disk.last_seq, disk.last_seq, disk.last_step, 0, 0, 0, 2)
    assert journal.judge(disk, end, steps[-1]).agrees
    # and its negative: a RAM that had fsynced one more record than the disk holds
    ahead = JournalState(disk.last_seq + 1, disk.last_seq + 1, disk.last_step, 0, 0, 0, 2)
    assert not journal.judge(disk, ahead, steps[-1]).agrees


def test_c_journal_refuses_a_path_it_cannot_create(wl_binary, tmp_path):
    proc = subprocess.run([str(wl_binary), "run", "--mib", "1", "--seed", "1", "--nonce", "5",
                           "--socket", str(tmp_path / "s"), "--journal",
                           str(tmp_path / "no" / "such" / "dir" / "j")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--journal" in proc.stderr

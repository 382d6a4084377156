"""The workload's journal (wl/wl_journal.c, docs/disk.md): its records on
the disk, its state page in the RAM, and whether the two agree.

Pure logic over bytes, unit-tested (selftests/unit/test_journal.py).

A record is 8 little-endian u64 at offset ``(seq - 1) * 64``: magic
``BGSWLJR1``, nonce, seq, step (the sum of the writers' committed steps
read just before the record was built), CLOCK_MONOTONIC ns, the previous
fsync's ns, 0, check.  The journal thread stores ``pending_seq = seq``
before a record's write and ``durable_seq = seq`` after its fsync returned,
in a state page of its own (magic ``BGSWLJS1``, nonce, check, ...).

For a disk and a RAM taken at one instant:

* every record up to the RAM's ``durable_seq`` is on the disk (its fsync
  had returned: the disk promised it);
* no record beyond the RAM's ``pending_seq`` is (it was not written yet),
  and no record names a step beyond the restored RAM's committed steps;
* the records are whole, in sequence, of this run; past the last whole
  one only zeros, or one torn record that was being written.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .wlproto import _mix

RECORD_BYTES = 64
PAGE_BYTES = 4096
MAGIC_RECORD = 0x31524A4C57534742   # "BGSWLJR1" (wl_journal.h WL_MAGIC_JREC)
MAGIC_STATE = 0x31534A4C57534742    # "BGSWLJS1" (WL_MAGIC_JSTATE)
K_RECORD = 0x6365725F6C6E726A       # "jrnl_rec" (WL_K_JREC)
_WORDS = struct.Struct("<8Q")
_STATE = struct.Struct("<11Q")


class JournalError(Exception):
    """The journal state cannot be read from a RAM dump (not a verdict on
    the disk): none, or two that disagree."""


def h3(a: int, b: int, c: int) -> int:
    return _mix(_mix(_mix(a) ^ b) ^ c)


def record_check(nonce: int, seq: int, step: int, time_ns: int, prev_fsync_ns: int,
                 reserved: int = 0) -> int:
    return h3(K_RECORD ^ nonce, seq ^ step, time_ns ^ prev_fsync_ns ^ reserved)


def state_check(nonce: int) -> int:
    return h3(K_RECORD ^ nonce, MAGIC_STATE, RECORD_BYTES)


@dataclass(frozen=True)
class Record:
    seq: int
    step: int
    time_ns: int
    prev_fsync_ns: int = 0

    def encode(self, nonce: int) -> bytes:
        return _WORDS.pack(MAGIC_RECORD, nonce, self.seq, self.step, self.time_ns,
                           self.prev_fsync_ns, 0,
                           record_check(nonce, self.seq, self.step, self.time_ns,
                                        self.prev_fsync_ns))


def decode_record(chunk: bytes, nonce: int) -> Record | None:
    """The record in a 64-byte chunk, None unless it is a whole record of this run."""
    if len(chunk) != RECORD_BYTES:
        return None
    magic, rec_nonce, seq, step, time_ns, prev, reserved, check = _WORDS.unpack(chunk)
    if magic != MAGIC_RECORD or rec_nonce != nonce:
        return None
    if check != record_check(nonce, seq, step, time_ns, prev, reserved):
        return None
    return Record(seq, step, time_ns, prev)


@dataclass(frozen=True)
class DiskJournal:
    """What the journal file on the disk holds."""
    records: tuple[Record, ...]      # the whole ones, seq 1..N in place
    zero_tail: int = 0               # all-zero 64-byte chunks after them
    torn_tail: int = 0               # other chunks after them (a record being written)
    problems: tuple[str, ...] = ()   # not what a journal of this run can look like

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq if self.records else 0

    @property
    def last_step(self) -> int | None:
        return self.records[-1].step if self.records else None


def parse_journal(data: bytes, nonce: int) -> DiskJournal:
    records, problems = [], []
    chunks = [data[i:i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]
    at = 0
    while at < len(chunks):
        record = decode_record(chunks[at], nonce)
        if record is None:
            break
        if record.seq != at + 1:
            problems.append(f"record at offset {at * RECORD_BYTES} has seq {record.seq}, "
                            f"expected {at + 1}")
            break
        if records and record.step < records[-1].step:
            problems.append(f"record {record.seq} names step {record.step}, below record "
                            f"{records[-1].seq}'s {records[-1].step}: steps only grow")
        records.append(record)
        at += 1
    tail = chunks[at:]
    zero = sum(1 for c in tail if not c.strip(b"\0"))
    torn = len(tail) - zero
    later = [decode_record(c, nonce) for c in tail]
    whole_later = [r.seq for r in later if r is not None]
    if whole_later:
        problems.append(f"whole records {whole_later[:5]} after a damaged or missing one at "
                        f"seq {at + 1}: a hole in the journal")
    if torn > 1:
        problems.append(f"{torn} damaged records after record {at}: at most the one being "
                        f"written may be torn")
    return DiskJournal(tuple(records), zero, torn, tuple(problems))


@dataclass(frozen=True)
class JournalState:
    """The journal thread's state page, as the RAM holds it."""
    pending_seq: int      # written (or being written): may be on the disk
    durable_seq: int      # fsync returned: must be on the disk
    durable_step: int
    errors: int
    fsync_max_ns: int
    fsync_total_ns: int
    interval_ms: int

    def to_dict(self) -> dict:
        return asdict(self)


def parse_state_page(page: bytes, nonce: int) -> JournalState | None:
    """The state page starting at ``page`` (>= 88 bytes), None if it is not
    this run's."""
    if len(page) < _STATE.size:
        return None
    (magic, page_nonce, check, record_bytes, pending, durable, durable_step, errors,
     fsync_max, fsync_total, interval) = _STATE.unpack_from(page)
    if magic != MAGIC_STATE or page_nonce != nonce or check != state_check(nonce) \
            or record_bytes != RECORD_BYTES:
        return None
    return JournalState(pending, durable, durable_step, errors, fsync_max, fsync_total,
                        interval)


def find_state(data, nonce: int) -> JournalState:
    """The one journal state page of this run in ``data`` (a RAM dump, any
    alignment).  Identical copies count once; none, or copies that differ,
    is a :class:`JournalError`."""
    needle = struct.pack("<QQ", MAGIC_STATE, nonce)
    found, at = set(), data.find(needle)
    while at >= 0:
        state = parse_state_page(bytes(data[at:at + _STATE.size]), nonce)
        if state is not None:
            found.add(state)
        at = data.find(needle, at + 1)
    if not found:
        raise JournalError("no journal state page of this run in the RAM dump (was the "
                           "workload started with --journal?)")
    if len(found) > 1:
        raise JournalError(f"{len(found)} different journal state pages of this run in the "
                           f"RAM dump: {sorted(s.durable_seq for s in found)}")
    return found.pop()


def find_state_in_file(path: Path, nonce: int) -> JournalState:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return find_state(data, nonce)


@dataclass(frozen=True)
class JournalVerdict:
    problems: tuple[str, ...]
    figures: dict = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        f = self.figures
        head = (f"journal: {f.get('disk_records')} records on the disk (last step "
                f"{f.get('disk_last_step')}), RAM: durable {f.get('durable_seq')}, pending "
                f"{f.get('pending_seq')}, steps {f.get('ram_steps_total')}")
        return head + (": agrees" if self.agrees else ": " + "; ".join(self.problems))


def judge(disk: DiskJournal, state: JournalState, ram_steps_total: int) -> JournalVerdict:
    """Whether the journal on the disk and the RAM are of one instant (see
    the module's docstring); ``ram_steps_total`` is the sum of the restored
    RAM's committed steps."""
    problems = list(disk.problems)
    n = disk.last_seq
    if n < state.durable_seq:
        problems.append(f"records {n + 1}..{state.durable_seq} are not on the disk, yet "
                        f"their fsync had returned in the RAM: the disk is older than the RAM")
    if n > state.pending_seq:
        problems.append(f"records {state.pending_seq + 1}..{n} are on the disk, yet the RAM "
                        f"had not written them: the disk is newer than the RAM")
    beyond = [r for r in disk.records if r.step > ram_steps_total]
    if beyond:
        problems.append(f"{len(beyond)} records name a step beyond the restored RAM's "
                        f"{ram_steps_total} (first: record {beyond[0].seq}, step "
                        f"{beyond[0].step}): written after the RAM's instant")
    if disk.torn_tail and n + 1 > state.pending_seq:
        problems.append(f"a damaged record after record {n}, which the RAM had not begun "
                        f"to write")
    if state.errors:
        problems.append(f"the journal thread reported {state.errors} write/fsync errors")
    figures = {"disk_records": n, "disk_last_step": disk.last_step,
               "zero_tail": disk.zero_tail, "torn_tail": disk.torn_tail,
               "durable_seq": state.durable_seq, "pending_seq": state.pending_seq,
               "ram_steps_total": ram_steps_total,
               "not_durable_on_disk": max(0, n - state.durable_seq),
               "interval_ms": state.interval_ms,
               "fsync_max_ms": round(state.fsync_max_ns / 1e6, 3),
               "fsync_mean_ms": (round(state.fsync_total_ns / 1e6 / state.durable_seq, 3)
                                 if state.durable_seq else None)}
    return JournalVerdict(tuple(problems), figures)


"""bgsnap-wl: data model, verify-dump verdicts and the live server.

The workload is built for the host once per session.  A small Python
reference implementation of the documented data model (docs/workload.md)
checks that the C code writes exactly what the document says, and lets the
tests forge damaged pages independently of the C code.  Every negative
control must turn a clean dump into a failing one with the right ``kind``.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from avocado_bgsnap import wlproto
from avocado_bgsnap.guest import wl_build

PAGE = 4096
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MAGIC_PAGE = 0x3147504C57534742  # "BGSWLPG1"
MAGIC_META = 0x31544D4C57534742  # "BGSWLMT1"
K_PAT = 0x7061747465726E21
K_BODY = 0x626F64795F6B6579
K_CHECK = 0x636865636B5F6B65
K_META = 0x6D6574615F636B21
PATTERNS = ("random", "sequential", "hot", "mixed")


# ---------------------------------------------------------------- reference

def mix(x: int) -> int:
    z = (x + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def h3(a: int, b: int, c: int) -> int:
    return mix(mix(mix(a) ^ b) ^ c)


def rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def ref_page_hash(page: bytes) -> int:
    p1, p2 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F
    v = [GOLDEN * (k + 1) & M64 for k in range(4)]
    for i, word in enumerate(struct.unpack("<512Q", page)):
        k = i & 3
        v[k] = (rotl((v[k] + word * p2) & M64, 31) * p1) & M64
    return mix((rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64)


@dataclass
class Cfg:
    steps: tuple
    mib: int = 1
    seed: int = 0x1234_5678_9ABC_DEF0
    nonce: int = 0x0DDB_A11C_AFE0_0042
    writers: int = 3
    pattern: str = "random"
    hot_pct: int = 10
    _versions: list = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.steps) == 1:
            self.steps = tuple(self.steps) * self.writers
        assert len(self.steps) == self.writers

    @property
    def npages(self) -> int:
        return self.mib * 256

    def n(self, w: int) -> int:
        return (self.npages - w + self.writers - 1) // self.writers

    def j(self, w: int, s: int) -> int:
        """local page index written by step s >= 1 of writer w"""
        n = self.n(w)
        if self.pattern == "sequential":
            return (s - 1) % n
        h = mix(mix(mix(self.seed ^ K_PAT) ^ w) ^ s)
        hot_n = max(1, n * self.hot_pct // 100)
        if self.pattern == "random":
            return h % n
        if self.pattern == "hot":
            return h % hot_n
        low = h & ((1 << 63) - 1)
        return low % n if h >> 63 else low % hot_n

    def step_page(self, w: int, s: int) -> int:
        return self.j(w, s) * self.writers + w

    def versions(self) -> list:
        if self._versions is None:
            last = [0] * self.npages
            for w in range(self.writers):
                for s in range(1, self.steps[w] + 1):
                    last[self.step_page(w, s)] = s
            self._versions = last
        return self._versions

    def inflight(self, w: int) -> int:
        return self.step_page(w, self.steps[w] + 1)

    def words(self, p: int, s: int) -> list:
        base = h3(self.seed ^ K_BODY, self.nonce ^ p, s)
        return ([MAGIC_PAGE, self.nonce ^ p, s, h3(self.seed ^ K_CHECK, self.nonce ^ p, s)]
                + [base ^ ((i * GOLDEN) & M64) for i in range(4, 512)])

    def page(self, p: int, s: int) -> bytes:
        return struct.pack("<512Q", *self.words(p, s))

    def checksum(self) -> int:
        cs = GOLDEN
        for p, s in enumerate(self.versions()):
            cs = mix(cs ^ ref_page_hash(self.page(p, s)))
        return cs

    def pick(self, pred) -> int:
        """first non-in-flight page satisfying pred(p, version, writer)"""
        skip = {self.inflight(w) for w in range(self.writers)}
        for p, e in enumerate(self.versions()):
            if p not in skip and pred(p, e, p % self.writers):
                return p
        pytest.fail("no page fits the test's needs: change the config")

    def gen_args(self) -> list:
        return ["--mib", str(self.mib), "--seed", str(self.seed), "--nonce", str(self.nonce),
                "--writers", str(self.writers), "--pattern", self.pattern,
                "--hot-pct", str(self.hot_pct), "--steps", ",".join(map(str, self.steps))]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def wl(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler (gcc) to build bgsnap-wl")
    return wl_build.build_wl(tmp_path_factory.mktemp("wlbin"), static=False)


def last_reply(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.startswith(wlproto.REPLY_PREFIX)]
    assert lines, f"no reply line in {stdout!r}"
    return json.loads(lines[-1][len(wlproto.REPLY_PREFIX):])


def gen(wl: Path, out: Path, cfg: Cfg, *extra: str) -> dict:
    proc = subprocess.run([str(wl), "gen", "--out", str(out), *cfg.gen_args(), *extra],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return last_reply(proc.stdout)


def verify(wl: Path, dump: Path, cfg: Cfg, *extra: str, expect_rc: int | None = None):
    proc = subprocess.run([str(wl), "verify-dump", "--dump", str(dump), "--seed", str(cfg.seed),
                           "--nonce", str(cfg.nonce), *extra],
                          capture_output=True, text=True, timeout=60)
    reply = last_reply(proc.stdout)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, (proc.returncode, reply, proc.stderr)
    return proc.returncode, reply


class Dump:
    """A raw dump file as frames, to damage from Python."""

    def __init__(self, path: Path, cfg: Cfg):
        self.path, self.cfg = path, cfg
        self.data = bytearray(path.read_bytes())
        assert len(self.data) % PAGE == 0

    def words01(self, idx: int):
        return struct.unpack_from("<2Q", self.data, idx * PAGE)

    def find(self, p: int) -> int:
        hits = [i for i in range(len(self.data) // PAGE)
                if self.words01(i) == (MAGIC_PAGE, self.cfg.nonce ^ p)]
        assert len(hits) == 1, hits
        return hits[0]

    def find_meta(self) -> int:
        hits = [i for i in range(len(self.data) // PAGE)
                if self.words01(i) == (MAGIC_META, self.cfg.nonce)]
        assert len(hits) == 1
        return hits[0]

    def frame(self, idx: int) -> bytes:
        return bytes(self.data[idx * PAGE:(idx + 1) * PAGE])

    def put(self, idx: int, content: bytes):
        assert len(content) == PAGE
        self.data[idx * PAGE:(idx + 1) * PAGE] = content

    def flip(self, p: int, offset: int, mask: int = 0x10):
        self.data[self.find(p) * PAGE + offset] ^= mask

    def save(self) -> Path:
        self.path.write_bytes(self.data)
        return self.path


BASE = Cfg(steps=(700, 450, 61), writers=3, pattern="random")


@pytest.fixture
def clean_dump(wl, tmp_path):
    """(cfg, Dump) of a clean shuffled dump with garbage frames"""
    cfg = Cfg(steps=BASE.steps, writers=BASE.writers, pattern=BASE.pattern)
    path = tmp_path / "clean.raw"
    gen(wl, path, cfg, "--shuffle", "3", "--garbage", "40")
    rc, reply = verify(wl, path, cfg)
    assert rc == 0 and reply["clean"], reply
    return cfg, Dump(path, cfg)


def assert_bad(wl, dump: Dump, page: int, kind: str, found: int | None = None):
    rc, reply = verify(wl, dump.save(), dump.cfg, expect_rc=1)
    assert reply["ok"] is True and reply["clean"] is False
    assert reply["bad_pages"] >= 1
    first = {b["page"]: b for b in reply["bad_first"]}
    assert page in first, reply["bad_first"]
    assert first[page]["kind"] == kind, reply["bad_first"]
    assert first[page]["expected_step"] == dump.cfg.versions()[page]
    if found is not None:
        assert first[page]["found_step"] == found
    assert reply["kinds"].get(kind, 0) >= 1
    result = wlproto.VerifyResult.from_reply(reply)
    assert not result.clean and result.summary().startswith("BAD:")
    return reply


# ---------------------------------------------------------------- the model

@pytest.mark.parametrize("pattern", PATTERNS)
def test_gen_matches_documented_model(wl, tmp_path, pattern):
    cfg = Cfg(steps=(300, 211, 5), writers=3, pattern=pattern, hot_pct=20)
    path = tmp_path / "plain.raw"
    reply = gen(wl, path, cfg)
    data = path.read_bytes()
    assert len(data) == (1 + cfg.npages) * PAGE
    meta = struct.unpack_from("<512Q", data, 0)
    assert meta[0] == MAGIC_META and meta[1] == cfg.nonce and meta[2] == cfg.seed
    assert meta[3] == cfg.npages
    assert meta[4] == 3 | PATTERNS.index(pattern) << 8 | 20 << 16 | 1 << 32
    assert meta[5] == h3(K_META ^ meta[2], meta[1] ^ meta[3], meta[4])
    assert [meta[8 * w + 7] for w in range(3)] == list(cfg.steps)
    for p, s in enumerate(cfg.versions()):
        assert data[(1 + p) * PAGE:(2 + p) * PAGE] == cfg.page(p, s), f"page {p}"
    assert [i["page"] for i in reply["inflight"]] == [cfg.inflight(w) for w in range(3)]
    _, vreply = verify(wl, path, cfg, expect_rc=0)
    assert int(vreply["checksum"], 16) == cfg.checksum()
    assert vreply["checksum"] == vreply["expected_checksum"]


def test_every_word_of_every_version_is_distinct():
    cfg = Cfg(steps=(1,), writers=1)
    seen = set()
    for p in range(4):
        for s in range(3):
            body = cfg.words(p, s)[4:]
            seen.update(body)
            assert len(set(body)) == len(body)
    assert len(seen) == 4 * 3 * 508


# ---------------------------------------------------------------- clean states

@pytest.mark.parametrize("writers", [1, 3])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_clean_states_pass(wl, tmp_path, pattern, writers):
    cfg = Cfg(steps=(900, 333, 1)[:writers], writers=writers, pattern=pattern)
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--shuffle", str(writers * 7 + len(pattern)), "--garbage", "64")
    _, reply = verify(wl, path, cfg, "--mib", "1", "--writers", str(writers),
                      "--pattern", pattern, expect_rc=0)
    assert reply["clean"] is True and reply["bad_pages"] == 0
    assert reply["pages_found"] == reply["npages"] == cfg.npages
    assert reply["committed"] == list(cfg.steps)
    assert reply["steps_total"] == sum(cfg.steps)
    assert reply["frames_scanned"] == 1 + cfg.npages + 64
    assert [i["state"] for i in reply["inflight"]] == ["old"] * writers
    assert reply["checksum"] == reply["expected_checksum"] != reply["expected_checksum_next"]
    assert reply["mib_per_s"] > 0 and reply["verify_seconds"] >= 0
    result = wlproto.VerifyResult.from_reply(reply)
    assert result.clean and result.checksum_state == "expected"
    assert result.summary().startswith("CLEAN:")


@pytest.mark.parametrize("state", ["old", "new", "torn"])
def test_inflight_page_states_pass(wl, tmp_path, state):
    cfg = Cfg(steps=(500, 400, 300), writers=3, pattern="mixed")
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--shuffle", "9", "--inflight", f"1:{state}")
    _, reply = verify(wl, path, cfg, expect_rc=0)
    got = reply["inflight"][1]
    assert got["state"] == state
    assert got["page"] == cfg.inflight(1)
    assert got["new_step"] == 401 and got["old_step"] == cfg.versions()[cfg.inflight(1)]
    assert [reply["inflight"][w]["state"] for w in (0, 2)] == ["old", "old"]
    if state == "old":
        assert reply["checksum"] == reply["expected_checksum"]
    else:
        assert reply["checksum"] not in (reply["expected_checksum"],
                                         reply["expected_checksum_next"])


def test_all_inflight_new_matches_expected_next(wl, tmp_path):
    cfg = Cfg(steps=(50, 60), writers=2, pattern="hot")
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--inflight", "0:new", "--inflight", "1:new")
    _, reply = verify(wl, path, cfg, expect_rc=0)
    assert reply["checksum"] == reply["expected_checksum_next"]
    assert wlproto.VerifyResult.from_reply(reply).checksum_state == "next"


def test_duplicate_identical_frame_is_harmless(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.data += dump.frame(dump.find(p))
    _, reply = verify(wl, dump.save(), cfg, expect_rc=0)
    assert reply["duplicate_identical"] == 1


def test_millions_of_steps_replay_quickly(wl, tmp_path):
    cfg = Cfg(steps=(3_000_000, 2_000_000), writers=2, pattern="random")
    path = tmp_path / "d.raw"
    gen(wl, path, cfg)
    t0 = time.monotonic()
    _, reply = verify(wl, path, cfg, expect_rc=0)
    assert time.monotonic() - t0 < 5
    assert reply["steps_total"] == 5_000_000


# ---------------------------------------------------------------- negative controls

def test_page_from_a_later_step(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    later = cfg.steps[p % 3] + 5
    dump.put(dump.find(p), cfg.page(p, later))
    assert_bad(wl, dump, p, "later_step", found=later)


def test_page_from_an_earlier_step(wl, clean_dump):
    """a stale page: the previous version of that very page"""
    cfg, dump = clean_dump

    def previous(p, e, w):
        return max((s for s in range(1, e) if cfg.step_page(w, s) == p), default=0)

    p = cfg.pick(lambda p, e, w: e > 0 and previous(p, e, w) > 0)
    old = previous(p, cfg.versions()[p], p % 3)
    dump.put(dump.find(p), cfg.page(p, old))
    assert_bad(wl, dump, p, "earlier_step", found=old)


def test_page_at_its_fill_version(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: e > 0)
    dump.put(dump.find(p), cfg.page(p, 0))
    assert_bad(wl, dump, p, "earlier_step", found=0)


def test_page_with_a_step_that_never_wrote_it(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: e < cfg.steps[w])
    wrong = cfg.versions()[p] + 1  # a committed step, but it wrote another page
    assert cfg.step_page(p % 3, wrong) != p
    dump.put(dump.find(p), cfg.page(p, wrong))
    assert_bad(wl, dump, p, "wrong_version", found=wrong)


def test_writer0_page_at_writer1_sequence_position(wl, clean_dump):
    """page of writer 0 carries the step at which writer 1 wrote its neighbour"""
    cfg, dump = clean_dump
    last = cfg.versions()

    def fits(p, e, w):
        s = last[p + 1] if p + 1 < cfg.npages else 0
        return (w == 0 and 0 < s <= cfg.steps[0] and s != e
                and cfg.step_page(0, s) != p)

    p = cfg.pick(fits)
    s = last[p + 1]
    dump.put(dump.find(p), cfg.page(p, s))
    assert_bad(wl, dump, p, "wrong_version", found=s)


def test_committed_counters_swapped(wl, clean_dump):
    cfg, dump = clean_dump
    meta = dump.find_meta()
    words = list(struct.unpack_from("<512Q", dump.data, meta * PAGE))
    words[7], words[15] = words[15], words[7]  # committed[0] <-> committed[1]
    dump.put(meta, struct.pack("<512Q", *words))
    rc, reply = verify(wl, dump.save(), cfg, expect_rc=1)
    assert reply["committed"][:2] == [cfg.steps[1], cfg.steps[0]]
    # writer 0 (700 steps) judged at 450: later pages; writer 1 (450) at 700: stale pages
    assert reply["kinds"].get("later_step", 0) > 0
    assert reply["kinds"].get("earlier_step", 0) > 0


def test_torn_page_that_is_not_in_flight(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    old, new = cfg.page(p, cfg.versions()[p]), cfg.page(p, cfg.steps[p % 3] + 3)
    torn = old[:16] + new[16:8 * 300] + old[8 * 300:]  # header + 296 body words new
    dump.put(dump.find(p), torn)
    assert_bad(wl, dump, p, "torn_noninflight", found=cfg.steps[p % 3] + 3)


def test_torn_inflight_page_with_a_foreign_word(wl, tmp_path):
    cfg = Cfg(steps=(80, 90), writers=2, pattern="random")
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--inflight", "0:torn")
    dump = Dump(path, cfg)
    p = cfg.inflight(0)
    dump.flip(p, 8 * 450 + 3)  # an old-half word now matches neither version
    reply = assert_bad(wl, dump, p, "garbage", found=81)
    assert reply["inflight"][0]["state"] == "bad"


def test_inflight_page_two_steps_ahead(wl, tmp_path):
    """the in-flight page may be at C+1, never at C+2 or later"""
    cfg = Cfg(steps=(80,), writers=1, pattern="random")
    path = tmp_path / "d.raw"
    gen(wl, path, cfg)
    dump = Dump(path, cfg)
    p = cfg.inflight(0)
    dump.put(dump.find(p), cfg.page(p, 82))
    reply = assert_bad(wl, dump, p, "later_step", found=82)
    assert reply["inflight"][0]["state"] == "bad"


def test_flipped_byte_in_page_body(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.flip(p, 2001, 0x40)
    assert_bad(wl, dump, p, "garbage", found=cfg.versions()[p])


@pytest.mark.parametrize("word", [2, 3])
def test_flipped_byte_in_step_or_check_word(wl, clean_dump, word):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.flip(p, 8 * word + 1)
    assert_bad(wl, dump, p, "garbage")


def test_flipped_byte_in_magic_makes_page_missing(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.flip(p, 5)
    assert_bad(wl, dump, p, "missing")


def test_flipped_byte_in_page_number_word(wl, clean_dump):
    """word 1 names another page: page p is missing, page p^1 ambiguous"""
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: p % 2 == 0)
    dump.flip(p, 8, 0x01)
    rc, reply = verify(wl, dump.save(), cfg, expect_rc=1)
    kinds = {b["page"]: b["kind"] for b in reply["bad_first"]}
    assert kinds == {p: "missing", p + 1: "ambiguous"}


def test_missing_page(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.put(dump.find(p), bytes(PAGE))
    reply = assert_bad(wl, dump, p, "missing")
    assert reply["pages_found"] == cfg.npages - 1


def test_duplicated_page_with_different_content(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: e > 0)
    dump.data += cfg.page(p, 0)  # a stale copy in another frame
    assert_bad(wl, dump, p, "ambiguous")


def test_missing_metadata_is_an_error(wl, clean_dump):
    cfg, dump = clean_dump
    dump.put(dump.find_meta(), bytes(PAGE))
    rc, reply = verify(wl, dump.save(), cfg, expect_rc=2)
    assert reply["ok"] is False and "metadata" in reply["error"]
    with pytest.raises(wlproto.WorkloadProtocolError, match="metadata"):
        wlproto.VerifyResult.from_text(f"#WL# {json.dumps(reply)}")


def test_two_metadata_pages_are_an_error(wl, clean_dump):
    cfg, dump = clean_dump
    dump.data += dump.frame(dump.find_meta())
    rc, reply = verify(wl, dump.save(), cfg, expect_rc=2)
    assert "2 metadata pages" in reply["error"]


def test_corrupt_metadata_is_an_error(wl, clean_dump):
    cfg, dump = clean_dump
    dump.data[dump.find_meta() * PAGE + 8 * 4] ^= 1  # writers 3 -> 2
    rc, reply = verify(wl, dump.save(), cfg, expect_rc=2)
    assert "check word" in reply["error"]


def test_wrong_seed_nonce_or_params_are_errors(wl, clean_dump):
    cfg, dump = clean_dump
    path = dump.save()
    for extra, needle in [(["--writers", "2"], "writers"), (["--mib", "2"], "pages"),
                          (["--pattern", "hot"], "pattern"), (["--hot-pct", "11"], "hot-pct")]:
        rc, reply = verify(wl, path, cfg, *extra, expect_rc=2)
        assert needle in reply["error"]
    other = Cfg(steps=cfg.steps, seed=cfg.seed + 1)
    assert "seed" in verify(wl, path, other, expect_rc=2)[1]["error"]
    other = Cfg(steps=cfg.steps, nonce=cfg.nonce + 1)
    assert "not found" in verify(wl, path, other, expect_rc=2)[1]["error"]


def test_unreadable_dump_is_an_error(wl, tmp_path):
    cfg = Cfg(steps=(1,))
    rc, reply = verify(wl, tmp_path / "nope.raw", cfg, expect_rc=2)
    assert reply["ok"] is False


# ---------------------------------------------------------------- ELF cores

def elf_core(segments: list, note: bytes = b"CORE notes\0\0\0") -> bytes:
    """ELF64 LE core: a PT_NOTE then one PT_LOAD per (paddr, data); the
    segment data is laid out at odd file offsets, as QEMU may do."""
    phnum = 1 + len(segments)
    off = 64 + 56 * phnum
    phdrs, blobs = [], []
    phdrs.append(struct.pack("<IIQQQQQQ", 4, 0, off, 0, 0, len(note), 0, 1))
    blobs.append(note)
    off += len(note)
    for paddr, data in segments:
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, off, paddr, paddr, len(data), len(data), 0))
        blobs.append(data)
        off += len(data)
    ehdr = (b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
            + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0))
    assert len(ehdr) == 64
    return ehdr + b"".join(phdrs) + b"".join(blobs)


def _split_as_elf(raw: bytes) -> bytes:
    """two PT_LOAD segments; the second starts 0x800 bytes before a page
    boundary, so its first half page is not a frame and must be skipped"""
    half = (len(raw) // PAGE // 2) * PAGE
    return elf_core([(0, raw[:half]), (0x1_0000_0000 - 0x800, bytes(0x800) + raw[half:])])


def test_elf_core_with_unaligned_segments_passes(wl, clean_dump, tmp_path):
    cfg, dump = clean_dump
    core = tmp_path / "core.elf"
    core.write_bytes(_split_as_elf(bytes(dump.data)))
    _, reply = verify(wl, core, cfg, expect_rc=0)
    assert reply["format"] == "elf" and reply["segments"] == 2
    assert reply["frames_scanned"] == len(dump.data) // PAGE
    assert reply["pages_found"] == cfg.npages


def test_elf_core_damage_is_caught(wl, clean_dump, tmp_path):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.flip(p, 3000)
    core = tmp_path / "core.elf"
    core.write_bytes(_split_as_elf(bytes(dump.data)))
    _, reply = verify(wl, core, cfg, expect_rc=1)
    assert reply["bad_first"][0]["page"] == p and reply["bad_first"][0]["kind"] == "garbage"


def test_elf_frames_follow_paddr_not_file_offset(wl, clean_dump, tmp_path):
    """a segment whose paddr is not page aligned: scanning it from p_offset
    (instead of the first page-aligned paddr) would find nothing"""
    cfg, dump = clean_dump
    core = tmp_path / "core.elf"
    core.write_bytes(elf_core([(0x7_f800, bytes(0x800) + bytes(dump.data))]))
    _, reply = verify(wl, core, cfg, expect_rc=0)
    assert reply["pages_found"] == cfg.npages


def test_truncated_elf_core_is_an_error(wl, clean_dump, tmp_path):
    cfg, dump = clean_dump
    core = tmp_path / "core.elf"
    core.write_bytes(_split_as_elf(bytes(dump.data))[:-PAGE])
    _, reply = verify(wl, core, cfg, expect_rc=2)
    assert "truncated" in reply["error"]


# ---------------------------------------------------------------- duplicate region

K_DUP = 0x216E676572707564  # "dupregn!"


def ref_dup_page(cfg: Cfg, k: int) -> bytes:
    """D_k of docs/workload.md: word i = h3(seed ^ K_DUP, nonce, k) ^ i*G"""
    base = h3(cfg.seed ^ K_DUP, cfg.nonce, k)
    return struct.pack("<512Q", *(base ^ ((i * GOLDEN) & M64) for i in range(512)))


def test_dup_content_matches_documented_model(wl, tmp_path):
    cfg = Cfg(steps=(10,), writers=1)
    path = tmp_path / "dup.raw"
    gen(wl, path, cfg, "--dup-pages", "2,3")
    data = path.read_bytes()
    frames = [data[i:i + PAGE] for i in range(0, len(data), PAGE)][-5:]
    d0, d1 = ref_dup_page(cfg, 0), ref_dup_page(cfg, 1)
    assert frames == [d0, d0, d1, d1, d1] and d0 != d1
    assert wlproto.dup_page(cfg.seed, cfg.nonce, 0) == d0
    assert wlproto.dup_page(cfg.seed, cfg.nonce, 1) == d1
    # another nonce: another D0 (a stale frame of an earlier run never matches)
    assert ref_dup_page(Cfg(steps=(10,), writers=1, nonce=cfg.nonce ^ 1), 0) != d0


def test_dup_region_all_d0_is_clean(wl, tmp_path):
    cfg = Cfg(steps=BASE.steps, writers=BASE.writers)
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--dup-pages", "512,0", "--shuffle", "5", "--garbage", "16")
    _, reply = verify(wl, path, cfg, "--dup-mib", "2", expect_rc=0)
    assert reply["clean"] is True and reply["bad_pages"] == 0 and reply["dup_bad_pages"] == 0
    assert reply["dup"] == {**reply["dup"], "mib": 2, "pages": 512, "d0": 512, "d1": 0,
                            "mixed": 0, "missing": 0}
    result = wlproto.VerifyResult.from_reply(reply)
    assert result.clean and (result.dup_d0, result.dup_d1) == (512, 0)
    assert "dup: 512 D0, 0 D1" in result.summary() and result.summary().startswith("CLEAN:")
    # without --dup-mib the dup frames are just foreign frames: no dup fields
    _, reply = verify(wl, path, cfg, expect_rc=0)
    assert "dup" not in reply and reply["dup_bad_pages"] == 0


def test_dup_region_d1_frames_are_newer_than_the_snapshot(wl, tmp_path):
    cfg = Cfg(steps=BASE.steps, writers=BASE.writers)
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--dup-pages", "500,12", "--shuffle", "6")
    _, reply = verify(wl, path, cfg, "--dup-mib", "2", expect_rc=1)
    assert reply["clean"] is False and reply["bad_pages"] == 0   # the main region is fine
    assert (reply["dup"]["d0"], reply["dup"]["d1"], reply["dup_bad_pages"]) == (500, 12, 12)
    result = wlproto.VerifyResult.from_reply(reply)
    assert not result.clean and result.dup_d1 == 12
    assert "12 duplicate-region pages newer than the snapshot instant: write protection lost" \
        in result.summary()
    assert result.summary().startswith("BAD:")


def test_dup_region_torn_and_missing_pages_are_bad(wl, tmp_path):
    cfg = Cfg(steps=(40,), writers=1)
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--dup-pages", "255,0")   # one of 256 missing
    dump = Dump(path, cfg)
    torn = bytearray(ref_dup_page(cfg, 0))
    torn[:2048] = ref_dup_page(cfg, 1)[:2048]     # a D1 write caught half-way
    dump.put(len(dump.data) // PAGE - 1, bytes(torn))
    _, reply = verify(wl, dump.save(), cfg, "--dup-mib", "1", expect_rc=1)
    assert (reply["dup"]["d0"], reply["dup"]["d1"], reply["dup"]["mixed"]) == (254, 0, 1)
    assert reply["dup"]["missing"] == 1 and reply["dup_bad_pages"] == 2
    summary = wlproto.VerifyResult.from_reply(reply).summary()
    assert "1 duplicate-region pages torn" in summary and "1 duplicate-region pages missing" \
        in summary


def test_dup_region_with_bad_main_pages_reports_both(wl, clean_dump):
    cfg, dump = clean_dump
    p = cfg.pick(lambda p, e, w: True)
    dump.put(dump.find(p), cfg.page(p, cfg.steps[p % 3] + 5))
    dump.data += ref_dup_page(cfg, 1) * 3 + ref_dup_page(cfg, 0) * 253
    _, reply = verify(wl, dump.save(), cfg, "--dup-mib", "1", expect_rc=1)
    result = wlproto.VerifyResult.from_reply(reply)
    assert result.bad_pages == 1 and result.dup_d1 == 3
    assert "1 bad page(s) [1 later_step]" in result.summary()
    assert "3 duplicate-region pages newer" in result.summary()


def test_dup_region_in_an_elf_core_reports_its_guest_physical_range(wl, tmp_path):
    cfg = Cfg(steps=(40,), writers=1)
    path = tmp_path / "d.raw"
    gen(wl, path, cfg, "--dup-pages", "256,0")
    raw = path.read_bytes()
    core = tmp_path / "core.elf"
    core.write_bytes(elf_core([(0x10_0000, raw)]))
    _, reply = verify(wl, core, cfg, "--dup-mib", "1", expect_rc=0)
    first = 0x10_0000 + len(raw) - 256 * PAGE
    assert reply["dup"]["paddr_min"] == first
    assert reply["dup"]["paddr_max"] == 0x10_0000 + len(raw) - PAGE


# ---------------------------------------------------------------- live server

class Server:
    def __init__(self, wl: Path, sock: str, spec: wlproto.WorkloadSpec):
        self.wl, self.sock = wl, sock
        argv = spec.run_argv(str(wl), socket=sock)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def ctl(self, *args: str) -> dict:
        proc = subprocess.run([str(self.wl), "ctl", "--socket", self.sock, *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip()[len(wlproto.REPLY_PREFIX):])

    def ok(self, *args: str) -> dict:
        return wlproto.parse_reply(f"$ bgsnap-wl ctl {' '.join(args)}\r\n"
                                   f"{wlproto.REPLY_PREFIX} {json.dumps(self.ctl(*args))}\r\n# ")

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def server(wl, request):
    """start(spec) -> Server; every server is killed at teardown"""
    tmp = tempfile.mkdtemp(prefix="wl", dir="/tmp")  # AF_UNIX paths are short
    started = []

    def start(spec: wlproto.WorkloadSpec) -> Server:
        srv = Server(wl, os.path.join(tmp, f"s{len(started)}.sock"), spec)
        started.append(srv)
        deadline = time.monotonic() + 15
        while True:
            assert srv.proc.poll() is None, srv.proc.stderr.read().decode()
            if os.path.exists(srv.sock):
                reply = srv.ctl("status")
                if reply["phase"] == "running":
                    return srv
            assert time.monotonic() < deadline, "workload did not start running"
            time.sleep(0.02)

    def cleanup():
        for srv in started:
            srv.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    request.addfinalizer(cleanup)
    return start


def region_of(pid: int, npages: int) -> tuple[int, int]:
    size = (npages + 1) * PAGE
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if hi - lo == size and "rw-p" in line:
                return lo, size
    pytest.fail("region mapping not found")


def read_mem(pid: int, addr: int, size: int, meta_first_pause: float = 0.0) -> bytes:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(addr)
            meta = mem.read(PAGE)
            time.sleep(meta_first_pause)
            return meta + mem.read(size - PAGE)
    except PermissionError:
        pytest.skip("cannot read /proc/PID/mem here")


def test_live_server_round_trip(wl, server, tmp_path):
    spec = wlproto.WorkloadSpec(mib=8, seed=5, nonce=0xFEED_0000_0077, writers=2,
                                pattern="mixed")
    srv = server(spec)
    st = srv.ok("status")
    assert st["npages"] == spec.npages == st["filled_pages"] and st["fill_pct"] == 100.0
    assert st["writers"] == 2 and st["pattern"] == "mixed" and st["nonce"] == spec.nonce
    time.sleep(0.1)
    st = srv.ok("status")
    assert st["steps_total"] > 0 and st["mib_per_s"] > 0
    w0 = st["windows"][0]
    assert w0["count"] > 0 and 0 < w0["p50_ns"] <= w0["p99_ns"] <= w0["max_ns"]
    before = srv.ok("status")["committed"]
    marked = srv.ok("mark", "1")  # the cycle's lower bound of the image's steps
    assert marked["window"] == 1 and len(marked["committed"]) == 2
    assert all(int(m) >= int(b) for m, b in zip(marked["committed"], before))
    time.sleep(0.1)
    st = srv.ok("status")
    assert st["window"] == 1 and st["windows"][1]["count"] > 0
    with pytest.raises(wlproto.WorkloadProtocolError, match="freeze"):
        srv.ok("verify")  # writers still running
    with pytest.raises(wlproto.WorkloadProtocolError, match="window"):
        srv.ok("mark", "7")
    with pytest.raises(wlproto.WorkloadProtocolError, match="unknown command"):
        srv.ok("explode")

    # a copy of the region taken while the writers run is time-shifted:
    # the committed steps are read first, pages later -> pages from later steps
    addr, size = region_of(srv.proc.pid, spec.npages)
    shifted = tmp_path / "shifted.raw"
    shifted.write_bytes(read_mem(srv.proc.pid, addr, size, meta_first_pause=0.05))
    cfg = Cfg(steps=(0,), mib=8, seed=5, nonce=spec.nonce, writers=2, pattern="mixed")
    _, reply = verify(wl, shifted, cfg, expect_rc=1)
    assert reply["kinds"].get("later_step", 0) > 0

    frozen = srv.ok("freeze")
    assert frozen["phase"] == "frozen" and len(frozen["committed"]) == 2
    time.sleep(0.05)
    st = srv.ok("status")
    assert st["phase"] == "frozen" and st["committed"] == frozen["committed"]
    # the freeze's reply carries the latency windows as status gives them
    assert frozen["windows"] == st["windows"] and len(st["windows"]) == 4
    with pytest.raises(wlproto.WorkloadProtocolError, match="thaw"):
        srv.ok("verify", "later")
    result = wlproto.VerifyResult.from_reply(srv.ok("verify"))
    assert result.clean and list(result.committed) == frozen["committed"]
    assert [i.state for i in result.inflight] == ["old", "old"]
    assert result.checksum == result.expected_checksum

    # the same state, seen from outside through a "RAM dump" of the process
    dump = tmp_path / "frozen.raw"
    dump.write_bytes(read_mem(srv.proc.pid, addr, size))
    _, reply = verify(wl, dump, cfg, expect_rc=0)
    assert reply["committed"] == frozen["committed"] and reply["phase"] == "frozen"
    assert reply["checksum"] == result.checksum

    assert srv.ok("thaw")["phase"] == "running"
    time.sleep(0.05)
    st = srv.ok("status")
    assert st["phase"] == "running" and st["steps_total"] > frozen["steps_total"]
    # verify thaw: verified frozen, running again after it
    frozen = srv.ok("freeze")
    result = wlproto.VerifyResult.from_reply(srv.ok("verify", "thaw"))
    assert result.clean and list(result.committed) == frozen["committed"]
    time.sleep(0.05)
    st = srv.ok("status")
    assert st["phase"] == "running" and st["steps_total"] > frozen["steps_total"]
    assert srv.ok("quit")["cmd"] == "quit"
    assert srv.proc.wait(timeout=10) == 0
    assert not os.path.exists(srv.sock)


def test_live_server_without_latency_and_rate_cap(wl, server):
    spec = wlproto.WorkloadSpec(mib=2, seed=1, nonce=2, writers=1, pattern="sequential",
                                rate_mib_s=40, latency=False)
    srv = server(spec)
    time.sleep(0.3)
    st = srv.ok("status")
    assert st["latency"] is False and st["windows"][0]["p50_ns"] is None
    assert 0 < st["mib_per_s"] < 80, st["mib_per_s"]
    srv.ok("freeze")
    assert wlproto.VerifyResult.from_reply(srv.ok("verify")).clean
    srv.ok("quit")
    assert srv.proc.wait(timeout=10) == 0


def test_live_server_dup_region_and_dupwrite(wl, server, tmp_path):
    spec = wlproto.WorkloadSpec(mib=2, seed=3, nonce=0xD0D0_0000_0011, writers=1, dup_mib=1)
    srv = server(spec)
    st = srv.ok("status")
    assert (st["dup_mib"], st["dup_state"]) == (1, 0)
    d0, d1 = (wlproto.dup_page(spec.seed, spec.nonce, k) for k in (0, 1))

    def dup_mapping():
        """the dup region's address (its VMA may merge with a neighbour's)"""
        with open(f"/proc/{srv.proc.pid}/maps") as maps:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if hi - lo >= spec.dup_pages * PAGE and line.split()[1] == "rw-p":
                    at = read_mem(srv.proc.pid, lo, hi - lo).find(d0)
                    if at >= 0 and at % PAGE == 0:
                        return lo + at, spec.dup_pages * PAGE
        pytest.fail("dup region not found")

    addr, size = dup_mapping()
    data = read_mem(srv.proc.pid, addr, size)
    assert all(data[i:i + PAGE] == d0 for i in range(0, size, PAGE))
    reply = srv.ok("dupwrite")
    assert reply["pages"] == spec.dup_pages == 256 and reply["dup_state"] == 1
    assert srv.ok("status")["dup_state"] == 1
    data = read_mem(srv.proc.pid, addr, size)
    assert all(data[i:i + PAGE] == d1 for i in range(0, size, PAGE))
    srv.ok("freeze")
    assert wlproto.VerifyResult.from_reply(srv.ok("verify")).clean
    srv.ok("quit")
    assert srv.proc.wait(timeout=10) == 0


def test_dupwrite_without_dup_region_is_an_error(wl, server):
    srv = server(wlproto.WorkloadSpec(mib=1, seed=3, nonce=4))
    assert srv.ok("status")["dup_mib"] == 0
    with pytest.raises(wlproto.WorkloadProtocolError, match="no duplicate region"):
        srv.ok("dupwrite")


def test_ctl_without_server_fails_clearly(wl, tmp_path):
    proc = subprocess.run([str(wl), "ctl", "--socket", str(tmp_path / "none.sock"), "status"],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0 and proc.stdout == ""
    with pytest.raises(wlproto.WorkloadProtocolError, match="cannot connect"):
        wlproto.parse_reply(proc.stderr)


def test_selfcheck_fills_and_verifies(wl):
    proc = subprocess.run([str(wl), "selfcheck", "--mib", "4", "--writers", "2",
                           "--seconds", "0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reply = last_reply(proc.stdout)
    assert reply["fill_mib_per_s"] > 0 and reply["verify"]["clean"] is True


def test_sources_compile_without_warnings(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    wl_build.build_wl(tmp_path, static=False, extra_cflags=("-Werror",))


def test_build_failure_carries_compiler_stderr(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    with pytest.raises(wl_build.WorkloadBuildError, match="no-such-header-xyz"):
        wl_build.build_wl(tmp_path, static=False, extra_cflags=("-include", "no-such-header-xyz.h"))
    assert not (tmp_path / "bgsnap-wl").exists()
    with pytest.raises(wl_build.WorkloadBuildError, match="not found"):
        wl_build.build_wl(tmp_path, cc="no-such-cc-xyz")


def test_build_is_skipped_when_up_to_date(wl):
    before = wl.stat().st_mtime_ns
    assert wl_build.build_wl(wl.parent, static=False) == wl
    assert wl.stat().st_mtime_ns == before
    digest = wl_build.source_digest()
    assert len(digest) == 64 and digest == wl_build.source_digest()

"""wlproto: workload spec validation, command text and reply parsing."""

import json
import shlex

import pytest

from avocado_bgsnap.wlproto import (REPLY_PREFIX, VerifyResult, WorkloadProtocolError,
                                    WorkloadSpec, ctl_command, parse_reply)


def spec(**kw) -> WorkloadSpec:
    args = dict(mib=64, seed=1, nonce=2)
    args.update(kw)
    return WorkloadSpec(**args)


# ---------------------------------------------------------------- spec

@pytest.mark.parametrize("kw, needle", [
    (dict(mib=0), "mib"),
    (dict(mib=1.5), "mib"),
    (dict(mib=True), "mib"),
    (dict(mib=(1 << 20) + 1), "mib"),
    (dict(seed=-1), "seed"),
    (dict(nonce=1 << 64), "nonce"),
    (dict(nonce="7"), "nonce"),
    (dict(writers=0), "writers"),
    (dict(writers=65), "writers"),
    (dict(pattern="zigzag"), "pattern"),
    (dict(hot_pct=0), "hot_pct"),
    (dict(hot_pct=101), "hot_pct"),
    (dict(rate_mib_s=-1), "rate_mib_s"),
    (dict(rate_mib_s=float("nan")), "rate_mib_s"),
    (dict(latency="yes"), "latency"),
])
def test_spec_rejects_bad_values(kw, needle):
    with pytest.raises(ValueError, match=needle):
        spec(**kw)


def test_spec_defaults_and_limits():
    s = spec()
    assert (s.writers, s.pattern, s.hot_pct, s.rate_mib_s, s.latency) == (1, "random", 10, 0, True)
    assert s.npages == 64 * 256
    big = spec(mib=1, seed=(1 << 64) - 1, nonce=0, writers=64, pattern="mixed", hot_pct=100)
    assert big.writers == 64
    with pytest.raises(Exception):
        s.mib = 3  # frozen


def test_run_command_text():
    s = spec(mib=512, seed=7, nonce=123456789, writers=4, pattern="hot", hot_pct=25,
             rate_mib_s=100, latency=False)
    argv = s.run_argv()
    assert argv == ["bgsnap-wl", "run", "--mib", "512", "--seed", "7", "--nonce", "123456789",
                    "--writers", "4", "--pattern", "hot", "--hot-pct", "25", "--rate", "100",
                    "--no-latency"]
    text = s.run_command(binary="/bin/bgsnap-wl", socket="/run/x.sock", background=True,
                         log="/tmp/wl.log")
    assert text.endswith(" >/tmp/wl.log 2>&1 &")
    assert shlex.split(text.split(" >")[0]) == s.run_argv("/bin/bgsnap-wl", "/run/x.sock")
    plain = spec().run_command()
    assert "--rate" not in plain and "--no-latency" not in plain and "&" not in plain
    assert REPLY_PREFIX not in text


def test_verify_dump_argv():
    s = spec(writers=3, pattern="sequential")
    argv = s.verify_dump_argv("/tmp/dump.elf", binary="/x/bgsnap-wl")
    assert argv[:4] == ["/x/bgsnap-wl", "verify-dump", "--dump", "/tmp/dump.elf"]
    assert argv[argv.index("--nonce") + 1] == "2" and argv[argv.index("--writers") + 1] == "3"


def test_ctl_command_text():
    assert ctl_command("status") == "bgsnap-wl ctl status"
    assert ctl_command("mark", 1) == "bgsnap-wl ctl mark 1"
    assert ctl_command("mark", "during") == "bgsnap-wl ctl mark 1"
    assert ctl_command("mark", "after") == "bgsnap-wl ctl mark 2"
    assert ctl_command("freeze", socket="/run/a b.sock") == \
        "bgsnap-wl ctl --socket '/run/a b.sock' freeze"
    assert ctl_command("verify", "thaw") == "bgsnap-wl ctl verify thaw"
    for cmd in ("status", "freeze", "thaw", "verify", "quit"):
        assert REPLY_PREFIX not in ctl_command(cmd)
    for window in range(4):
        assert REPLY_PREFIX not in ctl_command("mark", window)


@pytest.mark.parametrize("cmd, arg", [("mark", None), ("mark", 4), ("mark", -1), ("mark", "1"),
                                      ("mark", True), ("status", 1), ("reboot", None),
                                      ("verify", "later"), ("thaw", "thaw")])
def test_ctl_command_rejects(cmd, arg):
    with pytest.raises(ValueError):
        ctl_command(cmd, arg)


# ---------------------------------------------------------------- replies

def test_parse_reply_with_echo_and_prompt_noise():
    text = ("bgsnap-guest# bgsnap-wl ctl status\r\n"
            "[  12.345] some kernel line\r\n"
            f'{REPLY_PREFIX} {{"ok":true,"cmd":"status","phase":"running","committed":[1,2]}}\r\n'
            "bgsnap-guest# ")
    reply = parse_reply(text)
    assert reply["phase"] == "running" and reply["committed"] == [1, 2]
    assert parse_reply(text.encode())["cmd"] == "status"


def test_parse_reply_takes_the_last_reply():
    text = (f'{REPLY_PREFIX} {{"ok":true,"cmd":"mark","window":0}}\n'
            f'{REPLY_PREFIX} {{"ok":true,"cmd":"mark","window":2}}\n')
    assert parse_reply(text)["window"] == 2


def test_parse_reply_ignores_noise_after_the_object():
    assert parse_reply(f'{REPLY_PREFIX} {{"ok":true,"n":1}}bgsnap-guest# \n')["n"] == 1


def test_parse_reply_error_reply():
    text = f'x\n{REPLY_PREFIX} {{"ok":false,"cmd":"verify","error":"verify needs freeze"}}\n$ '
    with pytest.raises(WorkloadProtocolError, match="verify needs freeze") as info:
        parse_reply(text)
    assert "tail" in str(info.value)


@pytest.mark.parametrize("text, needle", [
    ("bgsnap-wl ctl status\r\nsh: bgsnap-wl: not found\r\n# ", "no #WL# reply"),
    ("", "no #WL# reply"),
    (f"{REPLY_PREFIX} {{\"ok\":tru", "invalid JSON"),
    (f"{REPLY_PREFIX}", "invalid JSON"),
    (f"{REPLY_PREFIX} [1,2]", "not an object"),
    (f'{REPLY_PREFIX} {{"cmd":"status"}}', "ok is not true"),
])
def test_parse_reply_failures(text, needle):
    with pytest.raises(WorkloadProtocolError, match=needle) as info:
        parse_reply(text)
    if "not found" in text:
        assert "not found" in str(info.value)  # the raw tail is in the message


# ---------------------------------------------------------------- VerifyResult

def verify_reply(**kw) -> dict:
    reply = {
        "ok": True, "cmd": "verify-dump", "clean": True, "npages": 512, "pages_found": 512,
        "bad_pages": 0, "steps_total": 30, "committed": [10, 20], "kinds": {},
        "bad_first": [],
        "inflight": [{"writer": 0, "page": 4, "state": "old", "old_step": 3, "new_step": 11},
                     {"writer": 1, "page": 9, "state": "torn", "old_step": 0, "new_step": 21}],
        "checksum": "00000000000000aa", "expected_checksum": "00000000000000bb",
        "expected_checksum_next": "00000000000000cc", "verify_seconds": 0.5, "mib_per_s": 4.0,
    }
    reply.update(kw)
    return reply


def test_verify_result_clean():
    r = VerifyResult.from_text(f"echo\n{REPLY_PREFIX} {json.dumps(verify_reply())}\n")
    assert r.clean and r.committed == (10, 20) and r.bad_pages == 0
    assert r.inflight[1].state == "torn" and r.checksum_state == "torn"
    line = r.summary()
    assert line.startswith("CLEAN:") and "\n" not in line and "1 torn" in line
    assert r.raw["cmd"] == "verify-dump"


def test_verify_result_bad():
    reply = verify_reply(clean=False, bad_pages=2, kinds={"later_step": 1, "missing": 1},
                         bad_first=[{"page": 7, "kind": "later_step", "found_step": 25,
                                     "expected_step": 3},
                                    {"page": 8, "kind": "missing", "found_step": 0,
                                     "expected_step": 0}])
    r = VerifyResult.from_reply(reply)
    assert not r.clean and r.bad_first[0].kind == "later_step" and r.checksum_state == "mismatch"
    line = r.summary()
    assert line.startswith("BAD: 2 bad page(s)") and "page 7 later_step" in line
    assert "1 missing" in line


def test_verify_result_rejects_inconsistent_or_incomplete():
    with pytest.raises(WorkloadProtocolError, match="inconsistent"):
        VerifyResult.from_reply(verify_reply(bad_pages=3))
    incomplete = verify_reply()
    del incomplete["committed"]
    with pytest.raises(WorkloadProtocolError, match="committed"):
        VerifyResult.from_reply(incomplete)
    with pytest.raises(WorkloadProtocolError, match="malformed"):
        VerifyResult.from_reply(verify_reply(inflight=[{"writer": 0}]))
    with pytest.raises(WorkloadProtocolError, match="boom"):
        VerifyResult.from_reply({"ok": False, "error": "boom"})

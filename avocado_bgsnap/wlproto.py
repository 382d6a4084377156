"""The host's side of the ``bgsnap-wl`` protocol (pure Python, no Avocado).

* :class:`WorkloadSpec` -- the workload parameters, validated, and the
  shell command lines that start and drive the workload in the guest;
* :func:`parse_reply` -- find the workload's reply in console output;
* :class:`VerifyResult` -- a typed view of a ``verify`` / ``verify-dump``
  reply.

Every reply of the workload is one line ``#WL# {json}``.  The host types
commands such as ``bgsnap-wl ctl status`` on the serial console; the echo of
that command line never contains ``#WL#``, so the reply is the last line that
does.  See docs/workload.md.
"""

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

REPLY_PREFIX = "#WL#"
DEFAULT_BINARY = "bgsnap-wl"
# bgsnap-wl's socket with --socket unset: in the first writable of these
# (wl_cli.h WL_SOCKET_DIRS, same order); `ctl` finds it there.  No guest
# layout is assumed: /run may be missing, /tmp read-only.
SOCKET_DIRS = ("/run", "/tmp", "/dev/shm", "/var/tmp")
SOCKET_NAME = "bgsnap-wl.sock"
PATTERNS = ("random", "sequential", "hot", "mixed")
CTL_COMMANDS = ("status", "mark", "freeze", "thaw", "verify", "dupwrite", "quit")
MARK_WINDOWS = {"before": 0, "during": 1, "after": 2}
MAX_WRITERS = 64
MAX_MIB = 1 << 20
PAGE_SIZE = 4096
BAD_KINDS = ("wrong_version", "later_step", "earlier_step", "torn_noninflight",
             "garbage", "missing", "ambiguous")
INFLIGHT_STATES = ("old", "new", "torn", "bad")
_U64_MAX = (1 << 64) - 1
_TAIL_CHARS = 600


_GOLDEN = 0x9E3779B97F4A7C15
K_DUP = 0x216E676572707564      # "dupregn!" (wl_core.h WL_K_DUP)


def _mix(x: int) -> int:
    """splitmix64 output for state x (docs/workload.md, Mixer)."""
    z = (x + _GOLDEN) & _U64_MAX
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MAX
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64_MAX
    return z ^ (z >> 31)


def dup_page(seed: int, nonce: int, k: int) -> bytes:
    """The 4 KiB content D_k of every duplicate-region page (k = 0 at the
    start, 1 after ``dupwrite``): word i = h3(seed ^ K_DUP, nonce, k) ^ i*G."""
    base = _mix(_mix(_mix(seed ^ K_DUP) ^ nonce) ^ k)
    return b"".join((base ^ (i * _GOLDEN & _U64_MAX)).to_bytes(8, "little")
                    for i in range(PAGE_SIZE // 8))


class WorkloadProtocolError(Exception):
    """The workload's reply is missing, malformed, or reports an error."""


class WorkloadStartError(WorkloadProtocolError):
    """The workload exited before it ran; the message says why (an ERROR)."""


# What the workload's log (and the guest kernel's last lines) say, and what
# that means; the first match names the cause.
_START_CAUSES = (
    ("no writable directory for the control socket", None),
    ("cannot listen on", None),
    ("another server is listening", None),
    ("socket path too long", None),
    ("not found", "the workload binary {binary} is not in the guest"),
    ("No such file or directory", "the workload binary {binary} is not in the guest"),
    ("Exec format error", "the guest cannot execute {binary} (not x86_64 Linux?)"),
    ("Permission denied", "the guest may not execute {binary} (noexec mount?)"),
    ("out of guest memory", None),
    ("Out of memory", "the guest kernel killed it: out of guest memory ({mib} MiB asked)"),
    ("oom-kill", "the guest kernel killed it: out of guest memory ({mib} MiB asked)"),
    ("Killed", "it was killed (out of guest memory? {mib} MiB asked)"),
)


def start_failure(last_words: str, binary: str, mib: int) -> str:
    """Why ``bgsnap-wl run`` exited at start, from its log and the guest
    kernel's last lines: the cause first, then the evidence.  Memory is
    named only when the evidence says so."""
    lines = [line.strip() for line in last_words.replace(" | ", "\n").splitlines()
             if line.strip()]
    for needle, meaning in _START_CAUSES:
        for line in lines:
            if needle in line:
                cause = meaning.format(binary=binary, mib=mib) if meaning else \
                    line.split("ERROR: ", 1)[-1]
                return f"the workload did not start: {cause}; its last words: " \
                       f"{' | '.join(lines)[-_TAIL_CHARS:]}"
    return (f"the workload {binary} exited at start without saying why; its last words: "
            f"{' | '.join(lines)[-_TAIL_CHARS:] or '(none)'}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value, low: int, high: int) -> None:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} = {value} is out of range {low}..{high}")


@dataclass(frozen=True)
class WorkloadSpec:
    """Parameters of one ``bgsnap-wl run`` (see docs/workload.md)."""

    mib: int
    seed: int
    nonce: int
    writers: int = 1
    pattern: str = "random"
    hot_pct: int = 10
    rate_mib_s: int = 0
    latency: bool = True
    # the duplicate region: dup_mib MiB of identical pages (D0, after
    # ``dupwrite`` D1), beside the verified region, not locked (0 = none)
    dup_mib: int = 0

    def __post_init__(self) -> None:
        _check_int("mib", self.mib, 1, MAX_MIB)
        _check_int("seed", self.seed, 0, _U64_MAX)
        _check_int("nonce", self.nonce, 0, _U64_MAX)
        _check_int("writers", self.writers, 1, MAX_WRITERS)
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern = {self.pattern!r}: expected one of {', '.join(PATTERNS)}")
        _check_int("hot_pct", self.hot_pct, 1, 100)
        if isinstance(self.rate_mib_s, bool) or not isinstance(self.rate_mib_s, (int, float)) \
                or not self.rate_mib_s >= 0 or self.rate_mib_s == float("inf"):
            raise ValueError(f"rate_mib_s must be a number >= 0 (0 = unlimited), "
                             f"got {self.rate_mib_s!r}")
        if not isinstance(self.latency, bool):
            raise ValueError(f"latency must be True or False, got {self.latency!r}")
        _check_int("dup_mib", self.dup_mib, 0, MAX_MIB)

    @property
    def npages(self) -> int:
        return self.mib * (1024 * 1024 // PAGE_SIZE)

    @property
    def dup_pages(self) -> int:
        return self.dup_mib * (1024 * 1024 // PAGE_SIZE)

    def run_argv(self, binary: str = DEFAULT_BINARY, socket: str | None = None) -> list[str]:
        """argv of ``bgsnap-wl run`` for this spec."""
        argv = [binary, "run", "--mib", str(self.mib), "--seed", str(self.seed),
                "--nonce", str(self.nonce), "--writers", str(self.writers),
                "--pattern", self.pattern, "--hot-pct", str(self.hot_pct)]
        if self.rate_mib_s:
            argv += ["--rate", str(self.rate_mib_s)]
        if not self.latency:
            argv.append("--no-latency")
        if self.dup_mib:
            argv += ["--dup-mib", str(self.dup_mib)]
        if socket is not None:
            argv += ["--socket", socket]
        return argv

    def run_command(self, binary: str = DEFAULT_BINARY, socket: str | None = None,
                    background: bool = False, log: str | None = None) -> str:
        """Shell text that starts the workload.

        ``log`` redirects its stdout/stderr to that file; ``background``
        appends ``&`` (the guest shell keeps running it).
        """
        text = shlex.join(self.run_argv(binary, socket))
        if log is not None:
            text += f" >{shlex.quote(log)} 2>&1"
        if background:
            text += " &"
        return text

    def verify_dump_argv(self, dump: str, binary: str = DEFAULT_BINARY) -> list[str]:
        """argv of the host-side ``bgsnap-wl verify-dump`` for this run."""
        return [binary, "verify-dump", "--dump", str(dump), "--seed", str(self.seed),
                "--nonce", str(self.nonce), "--mib", str(self.mib),
                "--writers", str(self.writers), "--pattern", self.pattern,
                "--hot-pct", str(self.hot_pct)] + (
                    ["--dup-mib", str(self.dup_mib)] if self.dup_mib else [])


def ctl_command(cmd: str, arg: int | str | None = None, binary: str = DEFAULT_BINARY,
                socket: str | None = None) -> str:
    """Shell text of ``bgsnap-wl ctl [--socket S] CMD [ARG]``.

    ``mark`` takes a window number 0..3 (or ``before``/``during``/``after``);
    ``verify`` may take ``thaw`` (the writers resume once it is done); the
    other commands take no argument.
    """
    if cmd not in CTL_COMMANDS:
        raise ValueError(f"unknown ctl command {cmd!r}: expected one of {', '.join(CTL_COMMANDS)}")
    argv = [binary, "ctl"]
    if socket is not None:
        argv += ["--socket", socket]
    argv.append(cmd)
    if cmd == "mark":
        if isinstance(arg, str) and arg in MARK_WINDOWS:
            arg = MARK_WINDOWS[arg]
        if not _is_int(arg) or not 0 <= arg <= 3:
            raise ValueError(f"mark needs a window 0..3 (or before/during/after), got {arg!r}")
        argv.append(str(arg))
    elif cmd == "verify" and arg == "thaw":
        argv.append(arg)
    elif arg is not None:
        raise ValueError(f"ctl {cmd} takes no argument, got {arg!r}")
    return shlex.join(argv)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def parse_reply(text: str | bytes) -> dict:
    """The JSON object of the LAST ``#WL#`` line in ``text`` (console output).

    Raises :class:`WorkloadProtocolError` if there is no such line, its JSON
    is invalid, or it says ``"ok": false``.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    pos = text.rfind(REPLY_PREFIX)
    if pos < 0:
        raise WorkloadProtocolError(f"no {REPLY_PREFIX} reply in the output; tail: {_tail(text)!r}")
    body = text[pos + len(REPLY_PREFIX):].splitlines()[0] if text[pos + len(REPLY_PREFIX):] else ""
    try:
        # raw_decode ignores console noise (a prompt, '\r') after the object
        reply, _ = json.JSONDecoder().raw_decode(body.lstrip())
    except ValueError as exc:
        raise WorkloadProtocolError(
            f"invalid JSON in the {REPLY_PREFIX} reply ({exc}); tail: {_tail(text)!r}") from None
    if not isinstance(reply, dict):
        raise WorkloadProtocolError(f"{REPLY_PREFIX} reply is not an object; tail: {_tail(text)!r}")
    if reply.get("ok") is not True:
        raise WorkloadProtocolError(
            f"workload error: {reply.get('error', 'ok is not true')}; tail: {_tail(text)!r}")
    return reply


@dataclass(frozen=True)
class BadPage:
    page: int
    kind: str
    found_step: int
    expected_step: int


@dataclass(frozen=True)
class InflightPage:
    writer: int
    page: int
    state: str          # old | new | torn | bad
    old_step: int
    new_step: int


def _need(reply: Mapping[str, Any], key: str):
    if key not in reply:
        raise WorkloadProtocolError(f"verify reply lacks {key!r}: {json.dumps(reply)[:_TAIL_CHARS]}")
    return reply[key]


@dataclass(frozen=True)
class VerifyResult:
    """A verify verdict (guest ``ctl verify`` or host ``verify-dump``).

    ``clean`` is the workload's verdict: every page exactly at its version
    for the committed steps, the in-flight pages old, new or torn.
    """

    clean: bool
    committed: tuple[int, ...]
    steps_total: int
    npages: int
    pages_found: int
    bad_pages: int
    bad_first: tuple[BadPage, ...]
    inflight: tuple[InflightPage, ...]
    kinds: tuple[tuple[str, int], ...]
    checksum: str
    expected_checksum: str
    expected_checksum_next: str
    verify_seconds: float
    mib_per_s: float
    # verify-dump with a duplicate region (--dup-mib): frames equal to D0 /
    # D1, frames that are neither but begin like one (torn), and the dup
    # pages that are not D0 (D1 + torn + missing): each is a defect
    dup_pages: int = 0
    dup_d0: int = 0
    dup_d1: int = 0
    dup_mixed: int = 0
    dup_bad_pages: int = 0
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> "VerifyResult":
        """Build from a parsed reply; raises WorkloadProtocolError if fields lack."""
        if reply.get("ok") is not True:
            raise WorkloadProtocolError(f"workload error: {reply.get('error', 'ok is not true')}")
        try:
            clean = _need(reply, "clean")
            bad_pages = int(_need(reply, "bad_pages"))
            dup = reply.get("dup") or {}
            dup_bad = int(reply.get("dup_bad_pages", 0))
            if not isinstance(clean, bool) or clean != (bad_pages == 0 and dup_bad == 0):
                raise WorkloadProtocolError(
                    f"inconsistent verdict: clean={clean!r} with bad_pages={bad_pages}, "
                    f"dup_bad_pages={dup_bad}")
            return cls(
                clean=clean,
                committed=tuple(int(c) for c in _need(reply, "committed")),
                steps_total=int(_need(reply, "steps_total")),
                npages=int(_need(reply, "npages")),
                pages_found=int(_need(reply, "pages_found")),
                bad_pages=bad_pages,
                bad_first=tuple(BadPage(int(b["page"]), str(b["kind"]), int(b["found_step"]),
                                        int(b["expected_step"]))
                                for b in _need(reply, "bad_first")),
                inflight=tuple(InflightPage(int(i["writer"]), int(i["page"]), str(i["state"]),
                                            int(i["old_step"]), int(i["new_step"]))
                               for i in _need(reply, "inflight")),
                kinds=tuple(sorted((str(k), int(v)) for k, v in reply.get("kinds", {}).items())),
                checksum=str(_need(reply, "checksum")),
                expected_checksum=str(_need(reply, "expected_checksum")),
                expected_checksum_next=str(_need(reply, "expected_checksum_next")),
                verify_seconds=float(_need(reply, "verify_seconds")),
                mib_per_s=float(_need(reply, "mib_per_s")),
                dup_pages=int(dup.get("pages", 0)),
                dup_d0=int(dup.get("d0", 0)),
                dup_d1=int(dup.get("d1", 0)),
                dup_mixed=int(dup.get("mixed", 0)),
                dup_bad_pages=dup_bad,
                raw=dict(reply),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkloadProtocolError(f"malformed verify reply ({exc!r}): "
                                        f"{json.dumps(reply)[:_TAIL_CHARS]}") from None

    @classmethod
    def from_text(cls, text: str | bytes) -> "VerifyResult":
        """parse_reply + from_reply."""
        return cls.from_reply(parse_reply(text))

    @property
    def checksum_state(self) -> str:
        """expected | next | torn | mixed | mismatch (how the checksum relates)."""
        if self.checksum == self.expected_checksum:
            return "expected"
        if self.checksum == self.expected_checksum_next:
            return "next"
        if self.clean and any(i.state == "torn" for i in self.inflight):
            return "torn"
        if self.clean:
            return "mixed"  # some in-flight pages old, others new
        return "mismatch"

    def summary(self) -> str:
        """One line for humans."""
        states = {}
        for i in self.inflight:
            states[i.state] = states.get(i.state, 0) + 1
        inflight = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        head = (f"{self.npages} pages ({self.pages_found} found), {len(self.committed)} writer(s), "
                f"{self.steps_total} steps, in-flight: {inflight}, "
                f"checksum {self.checksum} ({self.checksum_state}), "
                f"{self.verify_seconds:.2f} s at {self.mib_per_s:.0f} MiB/s")
        if self.dup_pages:
            head += f", {self.dup_summary()}"
        if self.clean:
            return "CLEAN: " + head
        bad = []
        if self.bad_pages:
            kinds = ", ".join(f"{n} {k}" for k, n in self.kinds)
            first = "; ".join(f"page {b.page} {b.kind} (found step {b.found_step}, "
                              f"expected {b.expected_step})" for b in self.bad_first[:3])
            bad.append(f"{self.bad_pages} bad page(s) [{kinds}]; first: {first}")
        if self.dup_bad_pages:
            bad.append(self.dup_defect())
        return "BAD: " + "; ".join(bad) + "; " + head

    def dup_summary(self) -> str:
        """``dup: 8192 D0, 0 D1`` (+ torn/missing when there are any)."""
        text = f"dup: {self.dup_d0} D0, {self.dup_d1} D1"
        missing = max(0, self.dup_pages - self.dup_d0)
        if self.dup_mixed:
            text += f", {self.dup_mixed} torn"
        if missing and (self.dup_d1 + self.dup_mixed) < missing:
            text += f", {missing} of {self.dup_pages} not D0"
        return text

    def dup_defect(self) -> str:
        """What the duplicate region's bad pages mean (an image of the
        snapshot instant holds D0 in every dup page)."""
        parts = []
        if self.dup_d1:
            parts.append(f"{self.dup_d1} duplicate-region pages newer than the snapshot "
                         f"instant: write protection lost")
        if self.dup_mixed:
            parts.append(f"{self.dup_mixed} duplicate-region pages torn between D0 and D1")
        missing = max(0, self.dup_pages - self.dup_d0) - self.dup_d1 - self.dup_mixed
        if missing > 0:
            parts.append(f"{missing} duplicate-region pages missing (neither D0 nor D1)")
        return "; ".join(parts) or f"{self.dup_bad_pages} bad duplicate-region pages"

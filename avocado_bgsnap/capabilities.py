"""What QEMU answers when a migration capability is turned on next to
background-snapshot, predicted per QEMU version before it is asked.

Decided from QEMU's source, never from what QEMU answers: the answer is
then judged against it, and a prediction QEMU contradicts is a FAIL (the
suite's rule, as in memory/predict.py; docs/capabilities.md).

What the source says (``migrate_caps_check``: migration/migration.c up to
8.0, migration/options.c since 8.1; read as of 7.2 and 10.0).
``migrate-set-capabilities`` applies the command's whole list to a copy of
the current set and checks that new set, in this order, the first refusal
wins:

1. built without CONFIG_REPLICATION, ``x-colo`` is refused whatever else
   is on: "QEMU compiled without replication module can't enable COLO";
2. ``postcopy-ram`` is checked against the host only on an incoming QEMU
   (a source never is one);
3. with background-snapshot on: the kernel and memory checks, then the first
   capability on of ``check_caps_background_snapshot``:
   "Background-snapshot is not compatible with <name>";
4. later: ``zero-copy-send`` without ``multifd`` is refused ("Zero copy only
   available for non-compressed non-TLS multifd migration"): on its own,
   but next to background-snapshot step 3 answers first.

Which capabilities exist is the QAPI enum MigrationCapability:
``zero-copy-send`` since 7.1 (Linux builds only, like its place in the
list), ``compress`` removed in 9.1 (QEMU's QAPI layer then answers
"Parameter 'capability' does not accept value 'compress'").  The QEMU under
test lists its own (``query-migrate-capabilities``): that decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .qmp import INCOMPATIBLE_WITH_BACKGROUND, QMPStepError

BACKGROUND_SNAPSHOT = "background-snapshot"
# The outcomes of a prediction.
REFUSED = "refused_next_to_background"   # the test's pass: refused, as predicted
REFUSED_ALONE = "refused_alone"          # QEMU refuses it on its own: cannot test (CANCEL)
UNKNOWN = "unknown"                      # this QEMU has no such capability (CANCEL)
ACCEPTED = "accepted"                    # the image taken with it on must restore exactly
OUTCOMES = (REFUSED, REFUSED_ALONE, UNKNOWN, ACCEPTED)

# check_caps_background_snapshot as it reads in QEMU's source: (since, list).
_BASE_LIST = ("postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate",
              "return-path", "multifd", "pause-before-switchover", "auto-converge",
              "release-ram", "rdma-pin-all", "compress", "xbzrle", "x-colo", "validate-uuid")
BACKGROUND_INCOMPATIBLE_SINCE = (
    ((6, 0, 0), _BASE_LIST),                                            # background-snapshot
    ((7, 1, 0), _BASE_LIST + ("zero-copy-send",)),                     # zero-copy-send added
    ((9, 1, 0), tuple(c for c in _BASE_LIST if c != "compress") + ("zero-copy-send",)),
)
# capabilities that left QEMU, with the release that removed them
REMOVED_IN = {"compress": (9, 1, 0)}
# QEMU's messages (%s: the capability)
MSG_NEXT_TO_BACKGROUND = "Background-snapshot is not compatible with %s"
MSG_NO_REPLICATION = "QEMU compiled without replication module can't enable COLO"
MSG_UNKNOWN = "Parameter 'capability' does not accept value '%s'"
# The message read in the source holds up to here; a later QEMU is
# predicted to refuse with the message's start only (a proposed rework
# says "... with currently set capabilities").
EXACT_MESSAGE_BEFORE = (11, 0, 0)
# Capabilities QEMU accepts next to background-snapshot, tested as controls:
# the snapshot taken with one on must restore exactly.
CONTROLS = ("events",)
# What a bgsnap_capability test can be given.
TESTED = INCOMPATIBLE_WITH_BACKGROUND + CONTROLS


@dataclass(frozen=True)
class CapabilityExpectation:
    capability: str
    outcome: str               # one of OUTCOMES
    reason: str                # why, in words a report can show
    message: str | None = None  # QEMU's refusal expected (contained in its text)

    def to_dict(self) -> dict:
        return {"capability": self.capability, "outcome": self.outcome, "reason": self.reason,
                "message": self.message}


@dataclass(frozen=True)
class CapabilityJudgement:
    outcome: str               # 'pass' | 'cancel' | 'fail'
    message: str


def _version_text(version: Iterable[int]) -> str:
    return ".".join(map(str, version))


def incompatible_in(qemu_version: tuple) -> tuple[str, ...]:
    """check_caps_background_snapshot of QEMU ``qemu_version`` (empty
    before background-snapshot, 6.0)."""
    found: tuple[str, ...] = ()
    for since, names in BACKGROUND_INCOMPATIBLE_SINCE:
        if tuple(qemu_version) >= since:
            found = names
    return found


def expect(capability: str, qemu_version: tuple, known_capabilities: Iterable[str],
           replication: bool = True) -> CapabilityExpectation:
    """What QEMU ``qemu_version``, which lists ``known_capabilities`` and was
    built with CONFIG_REPLICATION or not (``replication``), answers to
    ``migrate-set-capabilities`` with ``capability`` and background-snapshot
    both on."""
    version = _version_text(qemu_version)
    known = frozenset(known_capabilities)
    if BACKGROUND_SNAPSHOT not in known:
        return CapabilityExpectation(capability, UNKNOWN,
                                     f"QEMU {version} has no {BACKGROUND_SNAPSHOT}")
    if capability not in known:
        removed = REMOVED_IN.get(capability)
        why = f"QEMU {version} has no migration capability '{capability}'"
        if removed and tuple(qemu_version) >= removed:
            why += f" (removed in {_version_text(removed)})"
        return CapabilityExpectation(capability, UNKNOWN, why, MSG_UNKNOWN % capability)
    if capability == "x-colo" and not replication:
        return CapabilityExpectation(
            capability, REFUSED_ALONE, f"QEMU {version} is built without CONFIG_REPLICATION: "
            f"x-colo is refused before background-snapshot is looked at", MSG_NO_REPLICATION)
    if capability in incompatible_in(qemu_version):
        exact = tuple(qemu_version) < EXACT_MESSAGE_BEFORE
        message = MSG_NEXT_TO_BACKGROUND % capability if exact else (
            MSG_NEXT_TO_BACKGROUND % "").strip()
        return CapabilityExpectation(
            capability, REFUSED, f"'{capability}' is in QEMU {version}'s "
            f"check_caps_background_snapshot", message)
    return CapabilityExpectation(capability, ACCEPTED, f"'{capability}' is not in QEMU "
                                 f"{version}'s check_caps_background_snapshot")


def judge(expected: CapabilityExpectation, refusal: str | None) -> CapabilityJudgement:
    """QEMU's answer (None: accepted, else its message) against the
    prediction: a disagreement either way is a FAIL; QEMU accepting what it
    was predicted to refuse is one whatever its image then shows."""
    name = expected.capability
    if expected.outcome == ACCEPTED:
        if refusal is None:
            return CapabilityJudgement("pass", f"QEMU accepted {name} next to "
                                               f"background-snapshot, as predicted")
        return CapabilityJudgement("fail", f"QEMU refused {name} next to background-snapshot "
                                           f"where it was predicted to accept it "
                                           f"({expected.reason}): {refusal}")
    if refusal is None:
        return CapabilityJudgement("fail", f"QEMU accepted {name} next to background-snapshot "
                                           f"where it was predicted {expected.outcome} "
                                           f"({expected.reason})")
    if expected.message and expected.message not in refusal:
        return CapabilityJudgement("fail", f"QEMU refused {name} next to background-snapshot, "
                                           f"but not as predicted (expected "
                                           f"'{expected.message}': {expected.reason}): {refusal}")
    if expected.outcome == REFUSED:
        return CapabilityJudgement("pass", f"QEMU refused {name} next to background-snapshot, "
                                           f"as predicted: {refusal}")
    why = "unknown to this QEMU" if expected.outcome == UNKNOWN else "refused on its own"
    return CapabilityJudgement("cancel", f"cannot test {name} next to background-snapshot: "
                                         f"{why} ({expected.reason}); QEMU, as predicted: "
                                         f"{refusal}")


def contradicted(expected: CapabilityExpectation) -> CapabilityExpectation:
    """The opposite claim (a negative control): judging QEMU's real answer
    against it must give a FAIL."""
    if expected.outcome == ACCEPTED:
        return CapabilityExpectation(expected.capability, REFUSED, "negative control: claimed "
                                     "refused", MSG_NEXT_TO_BACKGROUND % expected.capability)
    return CapabilityExpectation(expected.capability, ACCEPTED,
                                 "negative control: claimed accepted")


def built_with_replication(schema: list[dict]) -> bool:
    """From ``query-qmp-schema``: the block-driver enum (BlockdevDriver)
    lists 'replication' only in a build with CONFIG_REPLICATION."""
    for entry in schema:
        values = entry.get("values") or [m.get("name") for m in entry.get("members", ())
                                         if isinstance(m, dict)]
        if entry.get("meta-type") == "enum" and "qcow2" in values and "raw" in values:
            return "replication" in values
    return False


# -- asking QEMU --------------------------------------------------------------
# The orders the capability is offered in; QEMU checks the whole new set
# each time, so both must be refused alike.
TOGETHER = "together"            # one command: the capability and background-snapshot
AFTER_BACKGROUND = "after_background"  # background-snapshot on first, the capability next
ORDERS = (TOGETHER, AFTER_BACKGROUND)


@dataclass(frozen=True)
class Answer:
    order: str                 # one of ORDERS
    refusal: str | None        # QEMU's message, None: accepted
    judgement: CapabilityJudgement
    left_on: bool = False      # refused, yet the capability is on afterwards

    def to_dict(self) -> dict:
        return {"order": self.order, "qemu_message": self.refusal,
                "judgement": self.judgement.outcome, "verdict_reason": self.judgement.message,
                "left_on": self.left_on}


def offer(qmp, expected: CapabilityExpectation, log=lambda msg: None) -> list[Answer]:
    """Turn ``expected.capability`` on next to background-snapshot on the
    QEMU behind ``qmp`` (a :class:`~avocado_bgsnap.qmp.SnapshotQMP`), in
    each of ORDERS while QEMU refuses as predicted; the answers, judged.
    A refused command must leave the capability off.  Stops at the first
    acceptance (both are on then) or at an answer that does not pass."""
    name, answers = expected.capability, []
    for order in ORDERS:
        if order == AFTER_BACKGROUND:
            qmp.enable_background_snapshot()
        caps = {name: True} if order == AFTER_BACKGROUND else {name: True,
                                                                BACKGROUND_SNAPSHOT: True}
        try:
            qmp.set_capabilities(caps)
            refusal = None
        except QMPStepError as exc:
            refusal = exc.qemu_message
        judgement = judge(expected, refusal)
        left_on = refusal is not None and bool(qmp.capabilities().get(name))
        if left_on:
            judgement = CapabilityJudgement("fail", f"QEMU refused {name} ({refusal}) but "
                                                    f"left it on")
        answers.append(Answer(order, refusal, judgement, left_on))
        log(f"{name} {order.replace('_', ' ')}: "
            f"{'refused: ' + refusal if refusal else 'accepted'} -> {judgement.outcome}")
        if refusal is None or judgement.outcome != "pass":
            break
    return answers

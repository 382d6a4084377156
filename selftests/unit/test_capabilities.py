"""A capability next to background-snapshot: the prediction per QEMU version,
the judge (with its negative control), the offer against a model of QEMU's
migrate_caps_check, the settings and the cfg variants (no QEMU)."""

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import capabilities as caps
from avocado_bgsnap import settings
from avocado_bgsnap.qmp import INCOMPATIBLE_WITH_BACKGROUND, SnapshotQMP

# query-migrate-capabilities of the two builds here (system 7.2.22, 10.0.2)
KNOWN_7_2 = frozenset(INCOMPATIBLE_WITH_BACKGROUND) | {
    "events", "zero-blocks", "block", "x-ignore-shared", "background-snapshot",
    "postcopy-preempt"}
KNOWN_10_0 = (KNOWN_7_2 - {"compress", "block"}) | {"switchover-ack", "dirty-limit",
                                                   "mapped-ram"}
V7_2, V10_0 = (7, 2, 22), (10, 0, 2)


def test_the_suites_list_is_qemus_list():
    assert set(caps.incompatible_in(V7_2)) == set(INCOMPATIBLE_WITH_BACKGROUND)
    assert set(caps.incompatible_in(V10_0)) == set(INCOMPATIBLE_WITH_BACKGROUND) - {"compress"}
    assert "zero-copy-send" not in caps.incompatible_in((7, 0, 0))
    assert caps.incompatible_in((5, 2, 0)) == ()


@pytest.mark.parametrize("version,known", [(V7_2, KNOWN_7_2), (V10_0, KNOWN_10_0)])
@pytest.mark.parametrize("name", INCOMPATIBLE_WITH_BACKGROUND)
def test_every_listed_capability_is_refused_by_name(name, version, known):
    expected = caps.expect(name, version, known)
    if name == "compress" and version == V10_0:
        assert expected.outcome == caps.UNKNOWN
        assert "removed in 9.1" in expected.reason
        assert expected.message == "Parameter 'capability' does not accept value 'compress'"
    else:
        assert expected.outcome == caps.REFUSED
        assert expected.message == f"Background-snapshot is not compatible with {name}"


def test_x_colo_without_replication_is_refused_on_its_own():
    expected = caps.expect("x-colo", V10_0, KNOWN_10_0, replication=False)
    assert expected.outcome == caps.REFUSED_ALONE
    assert expected.message == "QEMU compiled without replication module can't enable COLO"
    assert caps.expect("multifd", V10_0, KNOWN_10_0, replication=False).outcome == caps.REFUSED


def test_control_and_later_qemu():
    assert caps.expect("events", V7_2, KNOWN_7_2).outcome == caps.ACCEPTED
    later = caps.expect("multifd", (11, 0, 0), KNOWN_10_0)
    assert later.outcome == caps.REFUSED
    assert later.message == "Background-snapshot is not compatible with"
    assert caps.expect("multifd", V7_2, {"multifd"}).outcome == caps.UNKNOWN  # no bg-snapshot


REFUSAL = "Background-snapshot is not compatible with multifd"


def test_judge():
    refused = caps.expect("multifd", V7_2, KNOWN_7_2)
    assert caps.judge(refused, REFUSAL).outcome == "pass"
    assert caps.judge(refused, None).outcome == "fail"
    assert caps.judge(refused, "There's a migration process in progress").outcome == "fail"
    unknown = caps.expect("compress", V10_0, KNOWN_10_0)
    assert caps.judge(unknown, caps.MSG_UNKNOWN % "compress").outcome == "cancel"
    assert caps.judge(unknown, None).outcome == "fail"
    alone = caps.expect("x-colo", V10_0, KNOWN_10_0, replication=False)
    assert caps.judge(alone, caps.MSG_NO_REPLICATION).outcome == "cancel"
    assert caps.judge(alone, "Background-snapshot is not compatible with x-colo"
                      ).outcome == "fail"
    control = caps.expect("events", V10_0, KNOWN_10_0)
    assert caps.judge(control, None).outcome == "pass"
    assert caps.judge(control, "no").outcome == "fail"


@pytest.mark.parametrize("name", INCOMPATIBLE_WITH_BACKGROUND + caps.CONTROLS)
def test_negative_control_a_wrong_prediction_is_caught(name):
    """QEMU's real answer (the model below) judged against the opposite claim
    is a FAIL, for every capability on both versions."""
    for version, known in ((V7_2, KNOWN_7_2), (V10_0, KNOWN_10_0)):
        expected = caps.expect(name, version, known)
        if expected.outcome == caps.UNKNOWN:
            continue
        answer = FakeQEMU(version, known).answer({name: True, "background-snapshot": True})
        assert caps.judge(expected, answer).outcome in ("pass", "cancel")
        assert caps.judge(caps.contradicted(expected), answer).outcome == "fail"


def test_replication_from_the_schema():
    drivers = {"name": "291", "meta-type": "enum", "values": ["qcow2", "raw", "replication"]}
    assert caps.built_with_replication([{"name": "1", "meta-type": "enum",
                                         "values": ["a"]}, drivers])
    drivers["values"] = ["qcow2", "raw"]
    assert not caps.built_with_replication([drivers])
    assert caps.built_with_replication([{"meta-type": "enum", "members": [
        {"name": "qcow2"}, {"name": "raw"}, {"name": "replication"}]}])


class QMPError(Exception):
    def __init__(self, desc):
        super().__init__(desc)
        self.data = {"class": "GenericError", "desc": desc}


class FakeQEMU:
    """A monitor answering migrate-set-capabilities as migrate_caps_check
    does (the whole new set, checks in QEMU's order)."""

    def __init__(self, version, known, replication=True, accepts=(), keeps_on_refusal=False):
        self.version, self.known, self.replication = version, known, replication
        self.accepts, self.keeps = set(accepts), keeps_on_refusal
        self.state = {c: False for c in known}
        self.sent = []

    def answer(self, new):
        unknown = [c for c in new if c not in self.known]
        if unknown:
            return caps.MSG_UNKNOWN % unknown[0]
        full = {**self.state, **new}
        if full.get("x-colo") and not self.replication:
            return caps.MSG_NO_REPLICATION
        if full.get("background-snapshot"):
            for c in caps.incompatible_in(self.version):
                if full.get(c) and c not in self.accepts:
                    return caps.MSG_NEXT_TO_BACKGROUND % c
        if full.get("zero-copy-send") and not full.get("multifd"):
            return "Zero copy only available for non-compressed non-TLS multifd migration"
        return None

    def cmd(self, command, args=None, timeout=None, debug=True):
        self.sent.append((command, args))
        if command == "query-migrate-capabilities":
            return [{"capability": c, "state": v} for c, v in self.state.items()]
        assert command == "migrate-set-capabilities"
        new = {c["capability"]: c["state"] for c in args["capabilities"]}
        refusal = self.answer(new)
        if refusal and not self.keeps:
            raise QMPError(refusal)
        self.state.update({c: v for c, v in new.items() if c in self.known})
        if refusal:
            raise QMPError(refusal)
        return {}


def test_offer_refused_in_both_orders():
    qemu = FakeQEMU(V7_2, KNOWN_7_2)
    answers = caps.offer(SnapshotQMP(qemu), caps.expect("zero-copy-send", V7_2, KNOWN_7_2))
    assert [a.order for a in answers] == list(caps.ORDERS)
    assert all(a.judgement.outcome == "pass" for a in answers)
    assert answers[0].refusal == "Background-snapshot is not compatible with zero-copy-send"
    assert not qemu.state["zero-copy-send"]


def test_offer_a_qemu_that_accepts_or_keeps_it_on_is_caught():
    qemu = FakeQEMU(V10_0, KNOWN_10_0, accepts={"multifd"})
    (answer,) = caps.offer(SnapshotQMP(qemu), caps.expect("multifd", V10_0, KNOWN_10_0))
    assert answer.refusal is None and answer.judgement.outcome == "fail"
    assert qemu.state["multifd"] and qemu.state["background-snapshot"]
    qemu = FakeQEMU(V10_0, KNOWN_10_0, keeps_on_refusal=True)
    (answer,) = caps.offer(SnapshotQMP(qemu), caps.expect("xbzrle", V10_0, KNOWN_10_0))
    assert answer.left_on and answer.judgement.outcome == "fail"
    unknown = caps.offer(SnapshotQMP(FakeQEMU(V10_0, KNOWN_10_0)),
                         caps.expect("compress", V10_0, KNOWN_10_0))
    assert [a.judgement.outcome for a in unknown] == ["cancel"]


def test_a_save_asked_to_keep_a_capability_keeps_it():
    qemu = FakeQEMU(V10_0, KNOWN_10_0, accepts={"multifd"})
    qemu.state["multifd"] = qemu.state["xbzrle"] = True
    SnapshotQMP(qemu).enable_background_snapshot(("multifd",))
    assert qemu.state["multifd"] and qemu.state["background-snapshot"]
    assert not qemu.state["xbzrle"]   # what it was not asked to keep is turned off


def test_settings():
    assert settings.capability_from_params(Params({"bgsnap_capability": "x-colo"})) == "x-colo"
    with pytest.raises(settings.SettingsError, match="bgsnap_capability = 'x_colo': expected "
                                                     "one of postcopy-ram"):
        settings.capability_from_params(Params({"bgsnap_capability": "x_colo"}))
    with pytest.raises(settings.SettingsError, match="bgsnap_capability = ''"):
        settings.capability_from_params(Params({}))


def test_cfg_has_a_variant_per_listed_capability():
    from test_cfg import dicts

    found = {d["shortname"]: d["bgsnap_capability"] for d in dicts("fault.capability")}
    assert sorted(found.values()) == sorted(INCOMPATIBLE_WITH_BACKGROUND + caps.CONTROLS)
    for shortname, value in found.items():
        assert shortname.split(".")[-1] in (value.replace("-", "_"), f"control_{value}")
        assert {d["type"] for d in dicts(shortname)} == {"bgsnap_capability"}

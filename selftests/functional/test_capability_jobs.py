"""End-to-end: a capability QEMU refuses next to background-snapshot, on the
system QEMU (docs/capabilities.md): refused as predicted is a PASS, with
QEMU's message in the metrics.  ``zero-copy-send`` is the subtle one (QEMU
refuses it on its own, yet next to background-snapshot that check answers
first); ``multifd`` a plain one.  A listed capability this QEMU does not
know is a CANCEL (none on 7.2: skipped there).  About a minute.
"""

import pytest

from avocado_bgsnap import capabilities, host
from avocado_bgsnap.qmp import INCOMPATIBLE_WITH_BACKGROUND
from jobs import by_name, metrics_of, pytestmark, run_job  # noqa: F401

REFUSED = ("multifd", "zero-copy-send")


def test_refused_as_predicted_with_qemus_message(tmp_path):
    data, _ = run_job(tmp_path, *(f"fault.capability.{c.replace('-', '_')}" for c in REFUSED))
    tests = by_name(data)
    for name in REFUSED:
        test = tests[f"fault.capability.{name.replace('-', '_')}"]
        assert test["status"] == "PASS", test["fail_reason"]
        metrics = metrics_of(test)
        message = f"Background-snapshot is not compatible with {name}"
        assert metrics["qemu_message"] == message
        assert metrics["expected"]["outcome"] == capabilities.REFUSED
        assert [a["qemu_message"] for a in metrics["answers"]] == [message] * 2
        assert not metrics["accepted"] and message in metrics["verdict_reason"]


def test_unknown_capability_is_a_cancel(tmp_path):
    qemu = host.probe_qemu()   # the system QEMU, on PATH
    unknown = [c for c in INCOMPATIBLE_WITH_BACKGROUND if c not in qemu.migration_capabilities]
    if not unknown:
        pytest.skip(f"QEMU {qemu.version_text} knows every listed capability")
    ref = f"fault.capability.{unknown[0].replace('-', '_')}"
    data, _ = run_job(tmp_path, ref)
    test = by_name(data)[ref]
    assert test["status"] == "CANCEL", test["fail_reason"]
    assert capabilities.MSG_UNKNOWN % unknown[0] in test["fail_reason"]

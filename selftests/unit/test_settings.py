"""Cartesian params -> typed settings; bad values give a message naming the param."""

import pytest
from virttest.utils_params import Params

from avocado_bgsnap import settings


def params(**extra):
    base = {"mem": "256", "bgsnap_workload_mib": "128"}
    base.update({k: str(v) for k, v in extra.items()})
    return Params(base)


def test_defaults():
    cfg = settings.from_params(params())
    assert cfg.guest_mem_mib == 256 and cfg.workload.mib == 128
    assert cfg.accel == "auto" and cfg.negative_control == "none"
    assert cfg.transport.name == "file"
    assert cfg.max_pause_ms == 0
    assert cfg.mode == "background" and cfg.max_bandwidth_mib_s == 0


def test_snapshot_save_mode_with_its_negative_control():
    cfg = settings.from_params(params(bgsnap_mode="snapshot_save",
                                      bgsnap_negative_control="damage_file"))
    assert cfg.mode == "snapshot_save" and cfg.transport.name == "file"


def test_each_run_gets_its_own_nonce():
    assert settings.from_params(params()).workload.nonce != settings.from_params(params()).workload.nonce


@pytest.mark.parametrize("extra, message", [
    ({"bgsnap_accel": "xen"}, "bgsnap_accel"),
    ({"bgsnap_workload_mib": 300}, "must be below mem"),
    ({"bgsnap_negative_control": "maybe"}, "bgsnap_negative_control"),
    ({"bgsnap_transport": "carrier-pigeon"}, "unknown transport"),
    ({"bgsnap_save_uri": "exec:cat > {path}"}, "set both"),
    ({"bgsnap_save_uri": "tcp:{path}", "bgsnap_restore_uri": "exec:cat {path}"}, "must start"),
    ({"bgsnap_pattern": "zigzag"}, "pattern"),
    ({"max_pause_ms": "fast"}, "max_pause_ms = 'fast': expected a number >= 0"),
    ({"bgsnap_mode": "savevm"}, "bgsnap_mode"),
    ({"bgsnap_mode": "snapshot_save", "bgsnap_transport": "gzip"}, "does not apply"),
    ({"bgsnap_mode": "snapshot_save", "bgsnap_negative_control": "late_image"},
     "does not apply to bgsnap_mode = snapshot_save"),
    ({"bgsnap_max_bandwidth_mib_s": -1}, "bgsnap_max_bandwidth_mib_s"),
])
def test_bad_values_are_named(extra, message):
    with pytest.raises(settings.SettingsError, match=message):
        settings.from_params(params(**extra))

"""The prediction of what an unprivileged QEMU answers to background-snapshot=on
(measured on Debian 12 with QEMU 7.2 and 10.0: docs/privileges.md)."""

import stat

import pytest

from avocado_bgsnap.host.uffd import QEMU_NO_UFFD_WP, predict_unprivileged_uffd

DEV_ROOT_ONLY = stat.S_IFCHR | 0o600
DEV_OPEN = stat.S_IFCHR | 0o666
QEMU_7_2 = (7, 2, 22)
QEMU_10 = (10, 0, 2)


@pytest.mark.parametrize("sysctl, dev, qemu, accepted, via", [
    ("0", DEV_ROOT_ONLY, QEMU_7_2, False, ""),       # this host as set up
    ("0", DEV_ROOT_ONLY, QEMU_10, False, ""),
    ("1", DEV_ROOT_ONLY, QEMU_7_2, True, "syscall"),
    ("1", DEV_ROOT_ONLY, QEMU_10, True, "syscall"),
    ("0", DEV_OPEN, QEMU_7_2, False, ""),            # 7.2 never opens the device
    ("0", DEV_OPEN, QEMU_10, True, "dev"),
    ("0", None, QEMU_10, False, ""),
    ("1\n", None, QEMU_7_2, True, "syscall"),        # as read from /proc
])
def test_prediction_matches_the_measurements(sysctl, dev, qemu, accepted, via):
    got = predict_unprivileged_uffd(sysctl, dev, qemu)
    assert (got.accepted, got.via) == (accepted, via), got.reason
    assert got.refusal == (None if accepted else QEMU_NO_UFFD_WP)


def test_refusal_names_what_to_change():
    reason = predict_unprivileged_uffd("0", DEV_OPEN, QEMU_7_2).reason
    assert "vm.unprivileged_userfaultfd = 0" in reason and "does not use it" in reason


def test_group_access_alone_does_not_count():
    """The user is neither owner nor in the group: only the 'other' bits matter."""
    assert not predict_unprivileged_uffd("0", stat.S_IFCHR | 0o660, QEMU_10).accepted
    assert not predict_unprivileged_uffd("0", stat.S_IFCHR | 0o604, QEMU_10).accepted


def test_negative_control_the_opposite_setting_flips_the_prediction():
    """Measured here: QEMU 7.2 as nobody with the sysctl at 0 is refused, at 1
    accepted; QEMU 10 with /dev/userfaultfd 0666 accepted, 0600 refused.  A
    prediction that ignored the setting would be wrong for one of each pair."""
    assert not predict_unprivileged_uffd("0", DEV_ROOT_ONLY, QEMU_7_2).accepted
    assert predict_unprivileged_uffd("1", DEV_ROOT_ONLY, QEMU_7_2).accepted
    assert predict_unprivileged_uffd("0", DEV_OPEN, QEMU_10).accepted
    assert not predict_unprivileged_uffd("0", DEV_ROOT_ONLY, QEMU_10).accepted

"""End-to-end: a Debian 12 guest (docs/guests.md), built offline and cached
('avocado bgsnap build-guest --distro bookworm': debootstrap, mkfs.ext4 -d,
qemu-img convert), boots from Debian's kernel and initramfs, is logged into
through the normal serial login (agetty, root's password), and runs
``bgsnap.basic.small`` (256 MiB guest, 128 MiB workload) in a real avocado
job on the system QEMU: background snapshot, restore, exact verification.
From a cold cache the build takes a few minutes (docs/guests.md), then the
job about as long again under TCG.
"""

import subprocess

from jobs import AVOCADO, by_name, metrics_of, pytestmark, run_job  # noqa: F401

from avocado_bgsnap import paths
from avocado_bgsnap.guest import distro


def test_debian12_guest_runs_the_basic_cycle(tmp_path):
    build = subprocess.run([AVOCADO, "bgsnap", "build-guest", "--distro", "bookworm"],
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    guest = distro.cached_distro_guest(paths.guest_cache_dir(), "bookworm")
    assert guest is not None and guest.image.resolve().suffix == ".qcow2"
    image = guest.image.resolve()
    before = (image.stat().st_size, image.stat().st_mtime_ns)

    data, _ = run_job(tmp_path, "bgsnap.basic.small", run_opts=("--vt-only-filter", "debian12"))
    (name, test), = by_name(data).items()
    assert name.endswith("debian12.bgsnap.basic.small")
    assert test["status"] == "PASS", test["fail_reason"]
    m = metrics_of(test)
    assert m["host_verify"].startswith("CLEAN") and m["guest_verify"].startswith("CLEAN")
    assert m["point_in_time"] == "ok"
    # a distro guest's boot and login are measured apart (busybox: no login)
    assert m["guest"] == "debian12" and m["boot_s"] > 0 and m["login_s"] > 0
    # the workload saw Debian's kernel defaults (THP 'always', which the
    # kernel itself turns off below 512 MiB of RAM) and set what it needs
    assert m["guest_settings"]["thp"] == ("always" if m["guest_mem_mib"] >= 512 else "never")
    assert m["guest_settings"]["compact_unevictable_allowed"].startswith("0")
    # the base image stays pristine (snapshot=on)
    assert (image.stat().st_size, image.stat().st_mtime_ns) == before

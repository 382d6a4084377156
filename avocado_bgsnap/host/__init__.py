"""Host facts a background snapshot depends on, read at run time.

What lives where (everything below is re-exported here, so
``from avocado_bgsnap import host; host.probe_qemu()`` keeps working):

* :mod:`.errors` -- :class:`HostCheckError` and the tiny helpers the probes
  share (stderr tail, errno text, reading a file, reaping a process);
* :mod:`.qemu` -- :func:`probe_qemu`: QEMU version and migration
  capabilities, asked over QMP from a throw-away ``-machine none`` process
  (works on 7.2 and 10.x); :class:`QemuInfo`, the ``parse_*`` helpers,
  :func:`find_qemu_binary`;
* :mod:`.uffd` -- :func:`probe_uffd`: the userfaultfd features the host
  kernel offers (``UFFD_FEATURE_PAGEFAULT_FLAG_WP`` is what
  background-snapshot needs); :class:`UffdInfo`, :func:`uffd_feature_names`;
* :mod:`.accel` -- :func:`probe_kvm`: whether KVM really runs a guest: a
  nested or sandboxed ``/dev/kvm`` can open fine and still hang every guest,
  so the probe boots the suite's guest to its ready marker with a short
  timeout; :class:`AccelChoice`, :func:`resolve_accelerator` and the
  accelerator cache;
* :mod:`.facts` -- :class:`HostFacts`: all of the above plus
  kernel/CPU/memory, with :meth:`HostFacts.problems` naming any missing
  prerequisite; :func:`collect_facts`.

Module-level settings are looked up in the submodule that uses them: to
patch ``/dev/kvm`` in a test, patch ``host.accel.KVM_DEVICE``, not
``host.KVM_DEVICE``.

Pure standard library, no Avocado imports and no work at import time.
"""

from __future__ import annotations

from . import accel as _accel, errors as _errors, qemu as _qemu, uffd as _uffd
from .accel import (
    AccelChoice,
    accel_cache_key,
    load_cached_accel,
    probe_kvm,
    resolve_accelerator,
    save_cached_accel,
)
from .errors import HostCheckError
from .facts import HostFacts, collect_facts, parse_meminfo_total
from .qemu import (
    QemuInfo,
    find_qemu_binary,
    parse_migrate_capabilities,
    parse_qmp_version,
    parse_qmp_version_text,
    probe_qemu,
)
from .uffd import UffdInfo, probe_uffd, uffd_feature_names

# Constants, re-exported for readers of ``host.NAME`` (assignments keep
# __all__ as it was).  A test that patches one must patch the submodule
# that uses it, e.g. ``host.accel.KVM_DEVICE``.
STDERR_TAIL = _errors.STDERR_TAIL

DEFAULT_QEMU = _qemu.DEFAULT_QEMU
BACKGROUND_SNAPSHOT = _qemu.BACKGROUND_SNAPSHOT
FILE_URI_SINCE = _qemu.FILE_URI_SINCE

UFFD_DEV_SINCE = _uffd.UFFD_DEV_SINCE
UFFD_DEVICE = _uffd.UFFD_DEVICE
UFFD_FEATURE_BITS = _uffd.UFFD_FEATURE_BITS
UFFD_FEATURE_PAGEFAULT_FLAG_WP = _uffd.UFFD_FEATURE_PAGEFAULT_FLAG_WP
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = _uffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
UFFD_FEATURE_WP_UNPOPULATED = _uffd.UFFD_FEATURE_WP_UNPOPULATED
UFFD_FEATURE_WP_ASYNC = _uffd.UFFD_FEATURE_WP_ASYNC
UFFD_API = _uffd.UFFD_API
UFFD_USER_MODE_ONLY = _uffd.UFFD_USER_MODE_ONLY
UFFDIO_API = _uffd.UFFDIO_API
USERFAULTFD_IOC_NEW = _uffd.USERFAULTFD_IOC_NEW
USERFAULTFD_SYSCALL = _uffd.USERFAULTFD_SYSCALL
UFFD_MODE_SYSCALL = _uffd.UFFD_MODE_SYSCALL
UFFD_MODE_DEVICE = _uffd.UFFD_MODE_DEVICE
UFFD_MODE_USER_ONLY = _uffd.UFFD_MODE_USER_ONLY

KVM_DEVICE = _accel.KVM_DEVICE
ACCELERATORS = _accel.ACCELERATORS

__all__ = [
    "AccelChoice", "HostCheckError", "HostFacts", "QemuInfo", "UffdInfo",
    "accel_cache_key", "collect_facts", "find_qemu_binary", "load_cached_accel",
    "parse_meminfo_total", "parse_migrate_capabilities", "parse_qmp_version",
    "parse_qmp_version_text", "probe_kvm", "probe_qemu", "probe_uffd", "resolve_accelerator",
    "save_cached_accel", "uffd_feature_names",
]

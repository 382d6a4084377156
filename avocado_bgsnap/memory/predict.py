"""Must background-snapshot work for this memory configuration here?

Decided before the VM starts, from what the host and the build offer, never
guessed from what QEMU answers: QEMU's answer is then checked against it.

QEMU (migration/options.c ``migrate_caps_check``, migration/ram.c
``ram_write_tracking_available/compatible``) refuses the capability with

* "Background-snapshot is not supported by host kernel" when the kernel's
  userfaultfd lacks ``UFFD_FEATURE_PAGEFAULT_FLAG_WP``;
* "Background-snapshot is not compatible with guest memory configuration"
  when a RAMBlock cannot be registered for write-protect: the kernel
  (``vma_can_userfault``) write-protects anonymous memory, and shmem and
  hugetlb only when it reports ``UFFD_FEATURE_WP_HUGETLBFS_SHMEM`` (Linux
  5.19+, CONFIG_PTE_MARKER_UFFD_WP); never a file on a disk filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..host.uffd import UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_WP_HUGETLBFS_SHMEM
from .config import ANON, FILE, HUGETLB, SHMEM, MemoryConfig

REFUSED_KERNEL = "not supported by host kernel"
REFUSED_MEMORY = "not compatible with guest memory configuration"
# QEMU 9.0 (49a5020, "migration: preserve suspended for bg_migration"): a
# guest suspended to RAM stays suspended through a background snapshot;
# before it, the snapshot's resume woke it.
PRESERVES_SUSPENDED_SINCE = (9, 0, 0)


@dataclass(frozen=True)
class Expectation:
    supported: bool
    reason: str                 # why, in words a report can show
    refusal: str | None = None  # the QEMU message part expected when unsupported

    def to_dict(self) -> dict:
        return {"supported": self.supported, "reason": self.reason, "refusal": self.refusal}


@dataclass(frozen=True)
class Judgement:
    outcome: str                # 'proceed' | 'cancel' | 'fail'
    message: str


def expect_background_snapshot(memory: MemoryConfig, uffd_features: int,
                               qemu_version: tuple, hugepage_sizes_kib: frozenset[int]
                               ) -> Expectation:
    """Whether QEMU ``qemu_version`` must accept background-snapshot for
    ``memory`` (its blocks' filesystems resolved) on a kernel offering
    ``uffd_features``, with hugepage pools of ``hugepage_sizes_kib``."""
    version = ".".join(map(str, qemu_version))
    if tuple(qemu_version) < (6, 0, 0):
        return Expectation(False, f"QEMU {version} predates background-snapshot (6.0)")
    if not uffd_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP:
        return Expectation(False, "the host kernel's userfaultfd has no PAGEFAULT_FLAG_WP",
                           REFUSED_KERNEL)
    for block in memory.blocks:
        kind = block.memory_type
        if kind == FILE:
            return Expectation(False, f"RAMBlock {block.name} ({block.label()}) is a file on "
                                      f"{block.path_fs or 'a disk filesystem'}: userfaultfd "
                                      f"write-protects anonymous, shmem and hugetlb memory only",
                               REFUSED_MEMORY)
        if kind in (SHMEM, HUGETLB) and not uffd_features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM:
            return Expectation(False, f"RAMBlock {block.name} ({block.label()}) is {kind}: the "
                                      f"host kernel's userfaultfd lacks WP_HUGETLBFS_SHMEM "
                                      f"(Linux 5.19+)", REFUSED_MEMORY)
        if kind == HUGETLB and block.hugepage_kib not in hugepage_sizes_kib:
            return Expectation(False, f"RAMBlock {block.name} wants {block.hugepage_kib} kB "
                                      f"hugepages: the host has no such pool")
    kinds = sorted({b.memory_type for b in memory.blocks})
    why = f"{'/'.join(kinds)} memory"
    if set(kinds) - {ANON}:
        why += ", and the kernel write-protects shmem/hugetlb (WP_HUGETLBFS_SHMEM)"
    return Expectation(True, f"{why}; QEMU {version}")


def judge(expected: Expectation, refusal: str | None) -> Judgement:
    """QEMU's answer to background-snapshot (None: accepted, else its
    message) against the prediction: the prediction is a claim, and a
    disagreement either way is a FAIL."""
    if expected.supported:
        if refusal is None:
            return Judgement("proceed", "accepted, as predicted")
        return Judgement("fail", f"QEMU refused background-snapshot where the host and build "
                                 f"support it ({expected.reason}): {refusal}")
    if refusal is None:
        return Judgement("fail", f"QEMU accepted background-snapshot where it was predicted "
                                 f"unsupported ({expected.reason})")
    if expected.refusal and expected.refusal not in refusal:
        return Judgement("fail", f"QEMU refused background-snapshot, but not as predicted "
                                 f"(expected '{expected.refusal}': {expected.reason}): {refusal}")
    return Judgement("cancel", f"unsupported by this host: {expected.reason}; QEMU refused as "
                               f"predicted: {refusal}")


def contradicted(expected: Expectation) -> Expectation:
    """The opposite claim (negative control ``wrong_prediction``): judging
    QEMU's real answer against it must give a FAIL."""
    if expected.supported:
        return Expectation(False, "negative control: claimed unsupported", REFUSED_MEMORY)
    return Expectation(True, "negative control: claimed supported")


def expect_suspended_preserved(qemu_version: tuple) -> bool:
    """Whether this build keeps an S3-suspended guest suspended through a
    background snapshot (a build that wakes it is reported as a FAIL)."""
    return tuple(qemu_version) >= PRESERVES_SUSPENDED_SINCE

"""RAM-touching devices resized while the save streams (QEMU's history:
1a8e44a89f19 inhibits virtio-balloon for the duration of a background
snapshot; 6fee3a1fd9ec/f7b9dcfbcf44 keep a virtio-mem device's unplugged
ranges unpopulated).  Both act through QMP and wait, bounded, for the guest
to follow; what really happened is in their record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..host.memory import rss_kib
from . import DuringSave, SaveContext

MIB = 2**20
POLL_S = 0.1


def _poll(read, done, timeout_s: float) -> tuple[object, float | None]:
    """Read until ``done(value)``; return (last value, seconds taken or None)."""
    started = time.monotonic()
    while True:
        value = read()
        if done(value):
            return value, round(time.monotonic() - started, 3)
        if time.monotonic() - started > timeout_s:
            return value, None
        time.sleep(POLL_S)


@dataclass(frozen=True)
class BalloonSettings:
    guest_mem_mib: int
    inflate_mib: int        # how much the balloon takes from the guest
    timeout_s: float        # per step: inflate, deflate


class BalloonInflateDeflate(DuringSave):
    """Inflate the virtio-balloon by ``inflate_mib``, then deflate it fully."""

    name = "balloon"

    def __init__(self, cfg: BalloonSettings):
        self.cfg = cfg

    def act(self, ctx: SaveContext) -> dict:
        full = self.cfg.guest_mem_mib * MIB
        target = full - self.cfg.inflate_mib * MIB
        ctx.qmp.balloon(target)
        low, inflated_s = _poll(ctx.qmp.balloon_actual, lambda a: a <= target, self.cfg.timeout_s)
        status_inflated = ctx.migration_status()
        ctx.qmp.balloon(full)
        actual, deflated_s = _poll(ctx.qmp.balloon_actual, lambda a: a >= full,
                                   self.cfg.timeout_s)
        return {"target_mib": target // MIB, "lowest_actual_mib": low // MIB,
                "inflated_s": inflated_s, "status_when_inflated": status_inflated,
                "deflated_s": deflated_s, "actual_mib": actual // MIB}

    def settle(self, ctx: SaveContext) -> dict:
        full = self.cfg.guest_mem_mib * MIB
        actual, took = _poll(ctx.qmp.balloon_actual, lambda a: a >= full, self.cfg.timeout_s)
        return {"actual_mib": actual // MIB, "back_to_full_s": took}

    def errors(self, record: dict) -> list[str]:
        errors = []
        if record.get("inflated_s") is None:
            errors.append(f"the balloon did not reach {record['target_mib']} MiB within "
                          f"{self.cfg.timeout_s:.0f}s (lowest {record['lowest_actual_mib']} MiB)")
        if record.get("after_save", {}).get("back_to_full_s") is None:
            errors.append("the guest did not get its memory back after the save "
                          f"({record.get('after_save', {}).get('actual_mib')} MiB)")
        return errors


@dataclass(frozen=True)
class VirtioMemSettings:
    device_id: str              # the QOM id of the virtio-mem device
    guest_mem_mib: int          # the machine's boot RAM (not the device's)
    device_size_mib: int        # the memdev behind it (maximum pluggable)
    requested_mib: tuple[int, ...]  # requested-size steps while the save streams
    step_wait_s: float          # how long each step waits for the guest (during the save)
    settle_timeout_s: float     # after the save: wait this long for the last size


def populated_too_much(rss_growth_mib: float, guest_mem_mib: int, plugged_mib: int) -> bool:
    """Whether QEMU's RSS grew by more than the guest's boot RAM and its
    plugged virtio-mem memory together could (so unplugged ranges were
    populated): the background snapshot's pre-fault may touch at most those."""
    return rss_growth_mib > guest_mem_mib + plugged_mib


class VirtioMemResize(DuringSave):
    """Plug / unplug virtio-mem memory through ``requested-size``; the
    record says whether the size changed during the save and when the last
    size was reached after it (not an error: the guest retries later)."""

    name = "virtio_mem"

    def __init__(self, cfg: VirtioMemSettings):
        self.cfg = cfg
        self.path = f"/machine/peripheral/{cfg.device_id}"
        self.rss_before_kib: int | None = None
        self.plugged_max_mib = 0

    def _size(self, ctx: SaveContext) -> int:
        return int(ctx.qmp.qom_get(self.path, "size"))

    def before_trigger(self, ctx: SaveContext) -> None:
        self.rss_before_kib = rss_kib(ctx.vm.get_pid())
        self.plugged_max_mib = self._size(ctx) // MIB

    def act(self, ctx: SaveContext) -> dict:
        steps = []
        for mib in self.cfg.requested_mib:
            ctx.qmp.qom_set(self.path, "requested-size", mib * MIB)
            size, took = _poll(lambda: self._size(ctx), lambda s: s == mib * MIB,
                               self.cfg.step_wait_s)
            self.plugged_max_mib = max(self.plugged_max_mib, size // MIB)
            steps.append({"requested_mib": mib, "size_mib": size // MIB, "reached_s": took,
                          "save": ctx.migration_status()})
        return {"steps": steps}

    def settle(self, ctx: SaveContext) -> dict:
        # right after the save: what the pre-fault and the save populated
        # (later unplugging discards memory and would hide it)
        rss_after = rss_kib(ctx.vm.get_pid())
        want = self.cfg.requested_mib[-1] * MIB
        # measured: the device answers BUSY while the save runs, and the
        # guest retries on its own timer (~50 s later): wait for it, bounded
        size, took = _poll(lambda: self._size(ctx), lambda s: s == want,
                           self.cfg.settle_timeout_s)
        self.plugged_max_mib = max(self.plugged_max_mib, size // MIB)
        growth = None
        if rss_after is not None and self.rss_before_kib is not None:
            growth = round((rss_after - self.rss_before_kib) / 1024, 1)
        return {"size_mib": size // MIB, "reached_s": took,
                "rss_before_mib": _mib(self.rss_before_kib), "rss_after_mib": _mib(rss_after),
                "rss_growth_mib": growth, "plugged_max_mib": self.plugged_max_mib,
                "unplugged_mib": self.cfg.device_size_mib - self.plugged_max_mib}

    def errors(self, record: dict) -> list[str]:
        after = record.get("after_save", {})
        growth = after.get("rss_growth_mib")
        if growth is None:
            return ["QEMU's RSS could not be read: the unplugged ranges were not checked"]
        if populated_too_much(growth, self.cfg.guest_mem_mib, after["plugged_max_mib"]):
            return [f"QEMU's RSS grew {growth} MiB during the save, more than the guest's "
                    f"{self.cfg.guest_mem_mib} MiB RAM + {after['plugged_max_mib']} MiB plugged: "
                    f"unplugged virtio-mem ranges ({after['unplugged_mib']} MiB) were populated"]
        return []


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def configured(balloon: BalloonSettings | None, virtio_mem: VirtioMemSettings | None
               ) -> list[DuringSave]:
    """The device actions a test's settings ask for, in a fixed order."""
    actions: list[DuringSave] = []
    if balloon is not None:
        actions.append(BalloonInflateDeflate(balloon))
    if virtio_mem is not None:
        actions.append(VirtioMemResize(virtio_mem))
    return actions

"""Per-domain statistics: the cumulative counters Hypervisor.stats() samples, and the pure
helpers that turn two samples into rates (CPU utilization for metrics and Auto Scaling).

Counters are cumulative since the domain last started: a new QEMU process starts them from
zero, and `run_id` changes with it. A rate is only meaningful between two samples of one run,
so the helpers answer None across a restart instead of a negative or absurd number.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NicCounters:
    """Traffic of one NIC, seen from the guest (rx: into the guest)."""

    device: str  # the host-side tap, e.g. agent.libvirt.names.tap_name(instance, index)
    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0


@dataclass(frozen=True)
class DiskCounters:
    """I/O the guest did on one disk."""

    target: str  # e.g. "vda"
    read_bytes: int = 0
    read_requests: int = 0
    write_bytes: int = 0
    write_requests: int = 0


@dataclass(frozen=True)
class DomainStats:
    """One sample of one domain. A domain without a QEMU process (shut off, crashed) has no
    counters: all zero, no NICs, no disks."""

    name: str
    #: The domain has a process (running, or paused: its counters stand still but stay).
    active: bool
    #: Identifies the current run (libvirt's domain id); None when not active.
    run_id: int | None
    #: CPU time the guest used since it started, in nanoseconds.
    cpu_time_ns: int
    #: vCPUs of the active guest (0 when not active).
    vcpus: int
    nics: tuple[NicCounters, ...]  # in the domain's NIC order
    disks: tuple[DiskCounters, ...]  # sorted by target
    #: When the sample was taken: time.monotonic() (for intervals) and time.time() (to report).
    sampled_at_monotonic: float
    sampled_at_wall: float


def _same_run(prev: DomainStats, cur: DomainStats) -> bool:
    return (prev.name == cur.name and cur.active and prev.active
            and prev.run_id is not None and prev.run_id == cur.run_id)


def cpu_utilization(prev: DomainStats, cur: DomainStats) -> float | None:
    """The fraction (0.0-1.0) of its vCPUs' capacity the guest used between two samples:
    delta cpu_time / (delta elapsed time * vcpus), elapsed on the monotonic clock.

    None when the samples are not two of one run taken in order (a restart in between, not
    active, no time elapsed, no vCPUs). Capped at 1.0: cpu_time also counts QEMU's own
    threads, which can push a busy guest slightly past its vCPUs' capacity."""
    if not _same_run(prev, cur) or cur.vcpus <= 0:
        return None
    elapsed_ns = (cur.sampled_at_monotonic - prev.sampled_at_monotonic) * 1e9
    used_ns = cur.cpu_time_ns - prev.cpu_time_ns
    if elapsed_ns <= 0 or used_ns < 0:
        return None
    return min(1.0, used_ns / (elapsed_ns * cur.vcpus))


@dataclass(frozen=True)
class CounterDeltas:
    """What one domain did between two samples of one run (sums over its NICs and disks).
    Network directions are the guest's: `net_in_*` is what the guest received (rx)."""

    seconds: float
    net_in_bytes: int
    net_out_bytes: int
    net_in_packets: int
    net_out_packets: int
    disk_read_bytes: int
    disk_write_bytes: int
    disk_read_ops: int
    disk_write_ops: int


def _delta(prev: dict, cur, field: str, key: str) -> int:
    # A device the previous sample did not have (hot-plugged since) started from zero; a
    # counter that went down (a re-plugged device) counts from zero again, never negative.
    before = getattr(prev[getattr(cur, key)], field) if getattr(cur, key) in prev else 0
    now = getattr(cur, field)
    return now - before if now >= before else now


def counter_deltas(prev: DomainStats, cur: DomainStats) -> CounterDeltas | None:
    """Traffic and disk I/O between two samples of one run; None across a restart, when not
    active or when no time elapsed (like cpu_utilization)."""
    if not _same_run(prev, cur):
        return None
    seconds = cur.sampled_at_monotonic - prev.sampled_at_monotonic
    if seconds <= 0:
        return None
    nics = {n.device: n for n in prev.nics}
    disks = {d.target: d for d in prev.disks}

    def nic(field: str) -> int:
        return sum(_delta(nics, n, field, "device") for n in cur.nics)

    def disk(field: str) -> int:
        return sum(_delta(disks, d, field, "target") for d in cur.disks)

    return CounterDeltas(seconds=seconds,
                         net_in_bytes=nic("rx_bytes"), net_out_bytes=nic("tx_bytes"),
                         net_in_packets=nic("rx_packets"), net_out_packets=nic("tx_packets"),
                         disk_read_bytes=disk("read_bytes"), disk_write_bytes=disk("write_bytes"),
                         disk_read_ops=disk("read_requests"),
                         disk_write_ops=disk("write_requests"))

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

"""DomainStats from libvirt's bulk statistics (virConnectGetAllDomainStats): one call for every
domain of the host, cheap enough to sample every few seconds for a hundred domains.

NOWAIT: a domain busy in a long job (a migration, a slow monitor command) reports what needs no
job instead of stalling the whole sample. Keys are libvirt's documented ones ("cpu.time",
"net.<n>.rx.bytes", "block.<n>.rd.reqs", ...); a missing one counts as zero.
"""
from __future__ import annotations

import libvirt

from agent.drivers.stats import DiskCounters, DomainStats, NicCounters

GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
          | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_INTERFACE
          | libvirt.VIR_DOMAIN_STATS_BLOCK)
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT


def _cpu_time(record: dict) -> int:
    if "cpu.time" in record:
        return int(record["cpu.time"])
    # Without a cpuacct cgroup some setups report only per-vCPU time.
    return sum(int(record.get(f"vcpu.{i}.time", 0))
               for i in range(int(record.get("vcpu.maximum", record.get("vcpu.current", 0)))))


def from_record(name: str, domain_id: int, record: dict, monotonic: float,
                wall: float) -> DomainStats:
    """One domain's DomainStats; `domain_id` is virDomainGetID (-1 when not running)."""
    if domain_id < 0:
        return DomainStats(name, False, None, 0, 0, (), (), monotonic, wall)

    def count(key: str) -> int:
        return int(record.get(key, 0))

    nics = tuple(NicCounters(
        device=str(record.get(f"net.{i}.name", "")),
        rx_bytes=count(f"net.{i}.rx.bytes"), rx_packets=count(f"net.{i}.rx.pkts"),
        tx_bytes=count(f"net.{i}.tx.bytes"), tx_packets=count(f"net.{i}.tx.pkts"))
        for i in range(count("net.count")))
    disks = tuple(DiskCounters(
        target=str(record.get(f"block.{i}.name", "")),
        read_bytes=count(f"block.{i}.rd.bytes"), read_requests=count(f"block.{i}.rd.reqs"),
        write_bytes=count(f"block.{i}.wr.bytes"), write_requests=count(f"block.{i}.wr.reqs"))
        for i in range(count("block.count")))
    disks = tuple(sorted(disks, key=lambda d: d.target))
    return DomainStats(name=name, active=True, run_id=domain_id, cpu_time_ns=_cpu_time(record),
                       vcpus=count("vcpu.current"), nics=nics, disks=disks,
                       sampled_at_monotonic=monotonic, sampled_at_wall=wall)

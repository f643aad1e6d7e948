"""What each host has committed: sums over its non-terminated instances (stopped ones keep their
disk and their slot, since a start goes back to the same host while it is usable; one that
moves takes its slot to the new host with its host_id, services/instance_moves.py). Feeds the
scheduler and host views.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, select

from controller.models import Host, Instance
from controller.scheduler import HostState

GIB = 1024**3


@dataclass
class Usage:
    vcpus: int = 0
    memory_mib: int = 0
    disk_bytes: int = 0


def usage_by_host(s: Session) -> dict[str, Usage]:
    rows = s.exec(select(Instance.host_id, func.sum(Instance.vcpus), func.sum(Instance.memory_mib),
                         func.sum(Instance.root_disk_gib))
                  .where(Instance.state != "terminated", Instance.host_id != None)  # noqa: E711
                  .group_by(Instance.host_id))
    return {h: Usage(int(v or 0), int(m or 0), int(d or 0) * GIB) for h, v, m, d in rows}


def host_states(s: Session) -> list[HostState]:
    """Every host as the scheduler's HostState."""
    # FOR UPDATE: on PostgreSQL concurrent placements (other processes) queue on the host rows;
    # SQLite ignores it (its BEGIN IMMEDIATE already serialises writers). Lock first, then sum:
    # under READ COMMITTED the usage query must start after the previous placement committed,
    # or it misses that placement's instances and the host is overbooked.
    hosts = list(s.exec(select(Host).order_by(Host.host_id).with_for_update()))
    used = usage_by_host(s)
    out = []
    for h in hosts:
        u = used.get(h.host_id, Usage())
        out.append(HostState(host_id=h.host_id, up=h.state == "up", enabled=h.enabled,
                             architecture=h.architecture, vcpus=h.vcpus, memory_mib=h.memory_mib,
                             disk_bytes=h.disk_bytes, vcpus_used=u.vcpus,
                             memory_mib_used=u.memory_mib, disk_bytes_used=u.disk_bytes))
    return out

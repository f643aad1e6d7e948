"""The scheduler: picks a host for each instance, as a pure function over host states.

No database, no I/O: the controller passes a snapshot of hosts (`HostState`) and a `Request`;
`schedule` runs the filters (filters.py), weighs the survivors (weighers.py) and returns one host id
per instance. Each placement is consumed from the chosen host before the next is chosen, so a
multi-instance request never overbooks a host. Ties are broken by host id, so the result is
deterministic for a given input. `schedule_between` is the min/max form (EC2 MinCount/MaxCount).
"""
from __future__ import annotations

from .filters import Filter, default_filters, eliminated_by, passing_all
from .state import HostState, NoValidHost, Ratios, Request
from .weighers import WEIGHERS, Weigher, best_index, weighers_for

__all__ = ["HostState", "Request", "NoValidHost", "schedule", "schedule_between", "Filter",
           "Weigher", "WEIGHERS"]


def schedule(hosts: list[HostState], req: Request, count: int, *, cpu_overcommit: float = 4.0,
             ram_overcommit: float = 1.0, disk_overcommit: float = 1.0,
             weigher: str = "spread") -> list[str]:
    """One host id per instance (`count` of them; a host may repeat), or NoValidHost.

    Raises ValueError for a non-positive count, non-positive ratios or an unknown weigher.
    """
    return schedule_between(hosts, req, count, count, cpu_overcommit=cpu_overcommit,
                            ram_overcommit=ram_overcommit, disk_overcommit=disk_overcommit,
                            weigher=weigher)


def schedule_between(hosts: list[HostState], req: Request, min_count: int, max_count: int, *,
                     cpu_overcommit: float = 4.0, ram_overcommit: float = 1.0,
                     disk_overcommit: float = 1.0, weigher: str = "spread") -> list[str]:
    """EC2's min/max launch: as many placements as fit up to `max_count`, NoValidHost if fewer
    than `min_count` fit. The first k placements equal `schedule(..., k)`'s."""
    if min_count < 1 or max_count < min_count:
        raise ValueError(f"need 1 <= min_count <= max_count, got {min_count}, {max_count}")
    ratios = Ratios(cpu_overcommit, ram_overcommit, disk_overcommit)
    weighers = weighers_for(weigher, ratios)
    filters = default_filters(ratios)

    survivors = passing_all(filters, hosts, req)

    placed: list[str] = []
    while len(placed) < max_count and survivors:
        i = best_index(survivors, weighers)
        host = survivors[i]
        placed.append(host.host_id)
        # Only the chosen host changed, so only it needs re-filtering for the next instance.
        after = host.consume(req)
        if all(f.host_passes(after, req) for f in filters):
            survivors[i] = after
        else:
            survivors.pop(i)
    if len(placed) < min_count:
        # Explaining is only paid for on failure: re-run the chain filter by filter.
        raise NoValidHost(total_hosts=len(hosts), eliminated=eliminated_by(filters, hosts, req),
                          placed=len(placed),
                          requested=min_count)
    return placed

"""Value types the scheduler works on: a host's capacity snapshot and one instance's request.

Both are plain frozen dataclasses so the scheduler stays a pure function: callers (the controller's
instance service) build them from the database, the scheduler never touches storage or the network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class HostState:
    """What the scheduler knows about one host: capacity, current usage, health and admin switch."""

    host_id: str
    up: bool
    enabled: bool
    architecture: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    vcpus_used: int
    memory_mib_used: int
    disk_bytes_used: int

    def consume(self, req: "Request") -> "HostState":
        """This host after placing one instance of `req` on it (usage grows; nothing else changes)."""
        return replace(
            self,
            vcpus_used=self.vcpus_used + req.vcpus,
            memory_mib_used=self.memory_mib_used + req.memory_mib,
            disk_bytes_used=self.disk_bytes_used + req.disk_bytes,
        )


@dataclass(frozen=True, slots=True)
class Request:
    """The resources one instance needs."""

    vcpus: int
    memory_mib: int
    disk_bytes: int
    architecture: str = "x86_64"

    def __post_init__(self) -> None:
        # A zero or negative request would let a host "fit" infinitely many instances.
        if self.vcpus < 1 or self.memory_mib < 1 or self.disk_bytes < 0:
            raise ValueError(f"invalid request: {self}")


@dataclass(frozen=True, slots=True)
class Ratios:
    """Overcommit ratios: a host offers capacity * ratio of each resource."""

    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0

    def __post_init__(self) -> None:
        if min(self.cpu, self.ram, self.disk) <= 0:
            raise ValueError(f"overcommit ratios must be positive: {self}")


class NoValidHost(Exception):
    """Fewer hosts (or slots on hosts) than instances requested.

    `eliminated` lists (filter name, hosts it removed) in filter order; `placed` is how many of
    `requested` instances fitted before capacity ran out (0 when the filters left no host).
    """

    code = "InsufficientInstanceCapacity"

    def __init__(self, *, total_hosts: int, eliminated: list[tuple[str, int]], placed: int,
                 requested: int):
        self.total_hosts = total_hosts
        self.eliminated = eliminated
        self.placed = placed
        self.requested = requested
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        parts = ", ".join(f"{name} eliminated {n}" for name, n in self.eliminated)
        msg = (f"no valid host: {self.placed} of {self.requested} instance(s) placed; "
               f"{self.total_hosts} host(s) considered")
        return f"{msg}; {parts}" if parts else msg

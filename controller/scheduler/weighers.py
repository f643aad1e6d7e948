"""Host weighers, nova style: raw weights are normalised to [0, 1] across the candidates, then
multiplied by each weigher's multiplier and summed; the highest total wins.

`spread` prefers the most free RAM and vCPU (multiplier +1), `pack` the least (-1). Free means the
schedulable headroom: capacity * overcommit ratio - used.
"""
from __future__ import annotations

from .state import HostState, Ratios


class Weigher:
    """Base class: subclasses set `name` and implement `raw`."""

    name = "Weigher"

    def __init__(self, multiplier: float = 1.0):
        self.multiplier = multiplier

    def raw(self, host: HostState) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw_all(self, hosts: list[HostState]) -> list[float]:
        raw = self.raw
        return [raw(h) for h in hosts]


class RamWeigher(Weigher):
    name = "RamWeigher"

    def __init__(self, multiplier: float, ratio: float):
        super().__init__(multiplier)
        self.ratio = ratio

    def raw(self, host: HostState) -> float:
        return host.memory_mib * self.ratio - host.memory_mib_used

    def raw_all(self, hosts):
        r = self.ratio
        return [h.memory_mib * r - h.memory_mib_used for h in hosts]


class CpuWeigher(Weigher):
    name = "CpuWeigher"

    def __init__(self, multiplier: float, ratio: float):
        super().__init__(multiplier)
        self.ratio = ratio

    def raw(self, host: HostState) -> float:
        return host.vcpus * self.ratio - host.vcpus_used

    def raw_all(self, hosts):
        r = self.ratio
        return [h.vcpus * r - h.vcpus_used for h in hosts]


WEIGHERS = ("spread", "pack")


def weighers_for(policy: str, ratios: Ratios) -> list[Weigher]:
    """The weigher list for a policy name; ValueError for an unknown one."""
    if policy == "spread":
        sign = 1.0
    elif policy == "pack":
        sign = -1.0
    else:
        raise ValueError(f"unknown weigher {policy!r}; expected one of {', '.join(WEIGHERS)}")
    return [RamWeigher(sign, ratios.ram), CpuWeigher(sign, ratios.cpu)]


def combined_weights(hosts: list[HostState], weighers: list[Weigher]) -> list[float]:
    """Sum over weighers of multiplier * normalised raw weight, one float per host.

    A weigher whose raw values are all equal contributes 0 (nothing to tell the hosts apart).
    """
    total = [0.0] * len(hosts)
    for w in weighers:
        raw = w.raw_all(hosts)
        lo, hi = min(raw), max(raw)
        if hi == lo:
            continue
        scale = w.multiplier / (hi - lo)
        total = [t + (r - lo) * scale for t, r in zip(total, raw)]
    return total


def best_index(hosts: list[HostState], weighers: list[Weigher]) -> int:
    """Index of the winning host: highest combined weight, ties broken by the smallest host id.

    Ranks by sum(raw * multiplier / range) per weigher: the same order as combined_weights (the
    `- lo` offsets are the same constant for every host) with one list pass fewer per weigher.
    """
    columns = []
    for w in weighers:
        raw = w.raw_all(hosts)
        lo, hi = min(raw), max(raw)
        if hi != lo:
            columns.append((raw, w.multiplier / (hi - lo)))
    if not columns:
        weights = None
    elif len(columns) == 1:
        (ra, sa), = columns
        weights = [a * sa for a in ra]
    elif len(columns) == 2:
        (ra, sa), (rb, sb) = columns
        weights = [a * sa + b * sb for a, b in zip(ra, rb)]
    else:
        weights = [sum(col[i] * s for col, s in columns) for i in range(len(hosts))]
    if weights is None:
        return min(range(len(hosts)), key=lambda i: hosts[i].host_id)
    top = max(weights)
    if weights.count(top) == 1:  # the usual case, found with C-level list methods
        return weights.index(top)
    tied = [i for i, w in enumerate(weights) if w == top]
    return min(tied, key=lambda i: hosts[i].host_id)

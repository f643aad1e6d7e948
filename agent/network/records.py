"""Kernel objects as hashable records: the common language of desired state, observed state and
the diff. `ns` is "" for the host namespace (the one the Dataplane drives) or the name of a VPC
router namespace. Equality is what decides "already there": fields marked compare=False only
carry what creation needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Optional, Union

HOST = ""


@dataclass(frozen=True, order=True)
class Netns:
    name: str

    @property
    def ns(self) -> str:
        # A router namespace is created and removed from the host's point of view.
        return HOST


@dataclass(frozen=True, order=True)
class Link:
    """An interface. sig holds the attributes that can only be set at creation (a different sig
    means delete and recreate). peer/peer_ns: the other end of a veth, created with it."""

    ns: str
    name: str
    kind: str
    sig: tuple = ()
    peer: Optional[str] = field(default=None, compare=False)
    peer_ns: Optional[str] = field(default=None, compare=False)
    #: For the router-side end of a veth: created by its host-side peer, never on its own.
    created_by_peer: bool = field(default=False, compare=False)


@dataclass(frozen=True, order=True)
class Up:
    ns: str
    dev: str


@dataclass(frozen=True, order=True)
class Mac:
    ns: str
    dev: str
    mac: str


@dataclass(frozen=True, order=True)
class Master:
    ns: str
    dev: str
    master: str


@dataclass(frozen=True, order=True)
class BrPort:
    ns: str
    dev: str
    learning: bool
    neigh_suppress: bool


@dataclass(frozen=True, order=True)
class Addr:
    ns: str
    dev: str
    cidr: IPv4Interface


@dataclass(frozen=True, order=True)
class Neigh:
    """A permanent neighbour entry (IP -> MAC) on dev."""

    ns: str
    dev: str
    ip: IPv4Address
    mac: str


@dataclass(frozen=True, order=True)
class ProxyNeigh:
    """The host answers ARP for ip on dev (the uplink): how public IPs are reachable."""

    ns: str
    dev: str
    ip: IPv4Address


@dataclass(frozen=True, order=True)
class Fdb:
    """dst set: a vxlan device's own entry (mac -> remote VTEP; 00:..:00 is the flood list).
    dst None: a static entry in the bridge's table pointing at port dev."""

    ns: str
    dev: str
    mac: str
    dst: Optional[IPv4Address] = None


@dataclass(frozen=True, order=True)
class Route:
    ns: str
    table: int
    dst: IPv4Network
    kind: str = "unicast"  # or "throw"
    gateway: Optional[IPv4Address] = None
    dev: Optional[str] = None


@dataclass(frozen=True, order=True)
class Rule:
    ns: str
    priority: int
    src: IPv4Network
    table: int


@dataclass(frozen=True, order=True)
class Sysctl:
    ns: str
    key: str
    value: str


@dataclass(frozen=True, order=True)
class NftTable:
    """The whole owned nft table of a namespace, as the JSON batch that loads it atomically."""

    ns: str
    payload: str = field(compare=True)


Record = Union[Netns, Link, Up, Mac, Master, BrPort, Addr, Neigh, ProxyNeigh, Fdb, Route, Rule,
               Sysctl, NftTable]

#: Order in which records are created; removal runs the reverse order.
ADD_ORDER: tuple[type, ...] = (Netns, Sysctl, Link, Mac, Master, BrPort, Up, Addr, Neigh, Fdb,
                               Route, Rule, ProxyNeigh, NftTable)


def devices_of(rec: Record) -> tuple[tuple[str, str], ...]:
    """(ns, dev) pairs a record depends on: recreating that link re-adds the record."""
    out = []
    for attr in ("dev", "master"):
        val = getattr(rec, attr, None)
        if isinstance(val, str) and val:
            out.append((rec.ns, val))
    return tuple(out)

"""The pure plan step: what to remove and what to add so observed state becomes desired state.

Records equal in both sets are left alone, so a change touches only what differs and running
traffic on everything else never notices. Links whose creation-time attributes differ are
recreated, and then everything hanging on them is re-added; a veth whose far end vanished (its
router namespace was deleted under us) is recreated as a pair. Setting a device's MAC makes the
kernel flush that device's neighbour entries, permanent ones included, so the device's wanted
neighbours are re-added after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from agent.network.records import (
    ADD_ORDER, BrPort, Link, Mac, Master, Neigh, Netns, NftTable, Record, Sysctl, Up, devices_of,
)

#: Records whose disappearance from desired state needs no kernel action (attributes of links,
#: which go away with their link, or settings Kumo does not undo).
_NO_REMOVE = (Mac, BrPort, Up, Sysctl)


@dataclass
class Plan:
    remove: list[Record] = field(default_factory=list)
    add: list[Record] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.remove and not self.add

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for verb, recs in (("add", self.add), ("remove", self.remove)):
            for r in recs:
                key = f"{verb} {type(r).__name__}"
                out[key] = out.get(key, 0) + 1
        return out


def _rank(rec: Record) -> tuple:
    kind = ADD_ORDER.index(type(rec))
    # Among links: bridges before ports, host sides (which create their peers) before others.
    sub = 0
    if isinstance(rec, Link):
        sub = {"bridge": 0, "vxlan": 1, "veth": 2}.get(rec.kind, 3)
    return (kind, sub, repr(rec))


def diff(desired: Iterable[Record], observed: Iterable[Record]) -> Plan:
    want = set(desired)
    have = set(observed)
    have_links = {(r.ns, r.name): r for r in have if isinstance(r, Link)}
    have_ns = {r.name for r in have if isinstance(r, Netns)}
    want_links = {(r.ns, r.name): r for r in want if isinstance(r, Link)}

    recreate: set[tuple[str, str]] = set()
    for key, link in want_links.items():
        cur = have_links.get(key)
        if cur is not None and cur != link:
            recreate.add(key)
        if link.peer is not None:
            peer_key = (link.peer_ns, link.peer)
            if cur is not None and (link.peer_ns not in have_ns or peer_key not in have_links):
                recreate.add(key)
            if key in recreate or cur is None:
                recreate.add(peer_key)
    # A recreated or new host-side veth brings its peer: the peer's records must be re-added.
    add = want - have
    for rec in want:
        if any(dev in recreate for dev in devices_of(rec)):
            add.add(rec)
    for key in recreate:
        if key in want_links:
            add.add(want_links[key])
    # NETDEV_CHANGEADDR -> neigh_changeaddr: a new MAC flushes the device's neighbours (Mac sorts
    # before Neigh in ADD_ORDER, so they come back right after).
    remac = {(r.ns, r.dev) for r in add if isinstance(r, Mac)}
    add |= {r for r in want if isinstance(r, Neigh) and (r.ns, r.dev) in remac}
    remove = {r for r in have - want if not isinstance(r, _NO_REMOVE)}
    for key in recreate:
        if key in have_links:
            remove.add(have_links[key])
    # Records inside a namespace that goes away need no separate removal.
    gone_ns = {r.name for r in remove if isinstance(r, Netns)}
    remove = {r for r in remove if isinstance(r, Netns) or r.ns not in gone_ns}
    # Detaching a port is only needed when it is not re-attached elsewhere.
    want_master_devs = {(r.ns, r.dev) for r in want if isinstance(r, Master)}
    remove = {r for r in remove if not (isinstance(r, Master) and (r.ns, r.dev) in want_master_devs)}
    # A table is replaced atomically by its new version: no removal before it.
    want_nft_ns = {r.ns for r in want if isinstance(r, NftTable)}
    remove = {r for r in remove if not (isinstance(r, NftTable) and r.ns in want_nft_ns)}
    return Plan(remove=sorted(remove, key=_rank, reverse=True), add=sorted(add, key=_rank))

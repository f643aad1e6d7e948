"""Pure renderer: HostFirewall -> the whole nftables ruleset Kumo owns on a host (libnftables JSON).

Owns the layout of the two tables named ``kumo``; nothing here runs nft. The output is built only
from validated model values (ipaddress objects, ints, ids matched against fixed patterns), so no
user text can reach nft.

Why two tables: this kernel has no nf_conntrack_bridge (no ``ct`` in the bridge family), but
br_netfilter is built in and on (``bridge-nf-call-iptables=1``), so bridged IPv4 frames traverse
the inet hooks with conntrack. Hence
- ``bridge kumo``: L2 anti-spoofing, before br_netfilter and before the bridge learns the source MAC
  (prerouting, priority -300), for frames from any tap in set ``taps``: only the port's own MAC and
  IPv4 as source (sets ``port_mac``, ``port_ip`` keyed on the tap), ARP only with its own MAC and
  IP (``port_arp``), no IPv6 (explicitly: no router advertisements), no DHCP server replies, no
  IPv4 to group MACs except the DHCP client's broadcast. Ports are set elements, not rules.
- ``inet kumo``: conntrack zone per VPC (raw-priority prerouting, keyed on the VPC bridge, which is
  the input device br_netfilter shows) and the stateful security groups (forward hook). Inside
  br_netfilter the devices are the bridge, so ports are dispatched with verdict maps keyed on
  ``bridge . ip saddr`` (egress) and ``bridge . ip daddr`` (ingress): the source is trustworthy
  because the bridge table has already dropped spoofed frames. Dispatch cost does not grow with
  the number of ports.

Ports with the same security groups share one chain per direction (``in-<groups>``,
``out-<groups>``). The chain holds, for each of its groups (at most 5): four lookups in the
group's CIDR sets (``addr . l4proto . dport`` twice: a hash set for exact rules, one address and
one port, and an interval set for the rest; ``addr . icmp type . code``; ``addr``) and three per
peer group (member set ``m-<sg>`` then ``l4proto . dport`` / ``type . code`` / ``l4proto``). So a
packet's cost grows with groups and peer groups, not with rules. Egress chains ``return`` on a
match (so the destination port's ingress chain still runs); ingress chains ``accept``; both end
in ``drop``. ``ct state established,related accept`` comes first: removing a rule keeps tracked
flows (as EC2 does); ``ct state invalid`` is dropped at the top of each port chain. Next, new
TCP connections to the metadata service (169.254.169.254:80, answered by the VPC's router
namespace on the bridge) are accepted before any group's chain: security groups do not filter
metadata traffic, as on EC2 (its replies are then established). The source is a port's own
address (anti-spoofing ran first), which is how the service tells instances apart.

``Rendered.transaction(existing)`` is what the applier loads: ONE transaction that moves the
kernel's ``kumo`` tables to this render IN PLACE. It never deletes a table or a base chain that
already exists with the same declaration: ``add table``/``add chain`` are idempotent, ``flush table``
empties every chain, the wanted sets and maps are (re)declared and flushed, objects no longer
wanted (or declared differently) are deleted once nothing references them (their rules and verdict
map elements are already flushed in the same transaction), then elements and rules are added.
Packets see the old generation until the commit swaps it for the new one, and the base-chain hooks
stay registered throughout, so there is no unprotected (or closed) moment. Deleting and re-creating
the tables instead (``Rendered.document()``, the from-scratch form kept for the golden files and
``nft --check``) is NOT equivalent: the new base chains' hooks go live before the commit fills
them, and a few packets slip through the still-empty chains (the lab's blink test saw 0-3 in 15
replaces). ``existing`` maps (kind, family, name) of the objects in the kernel to their declaration,
as ``Rendered.declarations()`` returns them (the applier passes the last render's, or one read back
with ``nft list``).

Limits (by design, for now): IPv4 only (guests' IPv6 is dropped). Traffic between a guest and the
host itself (bridge address: DHCP) takes the input/output hooks: anti-spoofed, not subject to
security groups. Traffic the host ROUTES into a VPC bridge
gets the conntrack zone of its input interface (none unless that is a Kumo bridge).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from agent.firewall.intervals import Box, canonical
from agent.firewall.model import HostFirewall, Rule, SecurityGroup
# exempt from security groups (see the docstring); the package's __init__ imports nothing
from agent.metadata import METADATA_IP, METADATA_PORT

TABLE = "kumo"
FAMILIES = ("inet", "bridge")
PROTO_NUM = {"tcp": 6, "udp": 17}
ALL = (0, 255)

Json = dict[str, Any]


# --- expression helpers (libnftables JSON) -------------------------------------------------
def _payload(proto: str, fld: str) -> Json:
    return {"payload": {"protocol": proto, "field": fld}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _ct(key: str) -> Json:
    return {"ct": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _cat(*parts: Any) -> Json:
    return {"concat": list(parts)}


def _ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _addr(lo: int, hi: int) -> Any:
    """An IPv4 range as nft JSON: a plain address, a prefix, or a range."""
    if lo == hi:
        return _ip(lo)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:  # exactly one prefix
        return {"prefix": {"addr": _ip(lo), "len": 33 - size.bit_length()}}
    return {"range": [_ip(lo), _ip(hi)]}


def _num(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


def set_element(box: Box, kinds: tuple[str, ...]) -> Any:
    parts = [(_addr if k == "addr" else _num)(lo, hi) for k, (lo, hi) in zip(kinds, box)]
    return parts[0] if len(parts) == 1 else _cat(*parts)


def _net_iv(net: IPv4Network) -> tuple[int, int]:
    lo = int(net.network_address)
    return lo, lo | ((1 << (32 - net.prefixlen)) - 1)


# --- set kinds ------------------------------------------------------------------------------
# name suffix -> (nft type, dimension kinds)
CIDR_SETS = {
    # exact rules (one address, one port) live in a hash set: O(1) whatever their number; the
    # rest in the interval (pipapo) set, whose lookup bitmaps grow with its element count
    "net-l4x": (["ipv4_addr", "inet_proto", "inet_service"], ("addr", "num", "num")),
    "net-l4": (["ipv4_addr", "inet_proto", "inet_service"], ("addr", "num", "num")),
    "net-icmp": (["ipv4_addr", "icmp_type", "icmp_code"], ("addr", "num", "num")),
    "net-any": ("ipv4_addr", ("addr",)),
}
PEER_SETS = {
    "l4": (["inet_proto", "inet_service"], ("num", "num")),
    "icmp": (["icmp_type", "icmp_code"], ("num", "num")),
    "any": ("inet_proto", ("num",)),
}
DIRS = {"ingress": "in", "egress": "out"}


def rule_boxes(rules: list[Rule], with_addr: bool) -> dict[str, list[Box]]:
    """Boxes per set kind (l4 / icmp / any) for rules sharing one peer."""
    out: dict[str, list[Box]] = {"l4": [], "icmp": [], "any": []}
    for r in rules:
        head: tuple = (_net_iv(r.cidr),) if with_addr and r.cidr is not None else ()
        if r.protocol in PROTO_NUM:
            p = PROTO_NUM[r.protocol]
            out["l4"].append(head + ((p, p), r.port_range))
        elif r.protocol == "icmp":
            out["icmp"].append(head + r.icmp_ranges)
        else:
            out["any"].append(head if with_addr else (ALL,))
    return out


def group_peers(group: SecurityGroup, direction: str) -> list[str]:
    return sorted({r.peer_group for r in group.rules if r.direction == direction and r.peer_group})


def is_exact(box: Box) -> bool:
    return all(lo == hi for lo, hi in box)


def group_sets(group: SecurityGroup) -> dict[str, tuple[Any, list[Any], bool]]:
    """Set name -> (nft type, JSON elements, interval flag) for one group's rules, both directions."""
    out: dict[str, tuple[Any, list[Any], bool]] = {}
    for direction, d in DIRS.items():
        rules = [r for r in group.rules if r.direction == direction]
        cidr = rule_boxes([r for r in rules if r.cidr is not None], with_addr=True)
        l4 = canonical(cidr["l4"])
        parts = {"net-l4x": [b for b in l4 if is_exact(b)], "net-l4": [b for b in l4 if not is_exact(b)],
                 "net-icmp": canonical(cidr["icmp"]), "net-any": canonical(cidr["any"])}
        for kind, (typ, kinds) in CIDR_SETS.items():
            out[f"{group.group_id}-{d}-{kind}"] = (typ, [set_element(b, kinds) for b in parts[kind]],
                                                   kind != "net-l4x")
        for peer in group_peers(group, direction):
            boxes = rule_boxes([r for r in rules if r.peer_group == peer], with_addr=False)
            for kind, (typ, kinds) in PEER_SETS.items():
                out[f"{group.group_id}-{d}-{peer}-{kind}"] = (typ, [set_element(b, kinds) for b in
                                                                   canonical(boxes[kind])], True)
    return out


def _lookups(group: SecurityGroup, direction: str, verdict: Json) -> list[list[Json]]:
    """The rule expressions one port chain runs for one of its groups."""
    d = DIRS[direction]
    addr = _payload("ip", "saddr" if direction == "ingress" else "daddr")
    g = group.group_id
    l4 = _cat(_meta("l4proto"), _payload("th", "dport"))
    icmp = _cat(_payload("icmp", "type"), _payload("icmp", "code"))
    exprs = [
        [_match(_cat(addr, _meta("l4proto"), _payload("th", "dport")), f"@{g}-{d}-net-l4x"), verdict],
        [_match(_cat(addr, _meta("l4proto"), _payload("th", "dport")), f"@{g}-{d}-net-l4"), verdict],
        [_match(_meta("l4proto"), "icmp"),
         _match(_cat(addr, _payload("icmp", "type"), _payload("icmp", "code")), f"@{g}-{d}-net-icmp"),
         verdict],
        [_match(addr, f"@{g}-{d}-net-any"), verdict],
    ]
    for peer in group_peers(group, direction):
        member = _match(addr, f"@m-{peer}")
        exprs.append([member, _match(l4, f"@{g}-{d}-{peer}-l4"), verdict])
        exprs.append([member, _match(_meta("l4proto"), "icmp"), _match(icmp, f"@{g}-{d}-{peer}-icmp"),
                      verdict])
        exprs.append([member, _match(_meta("l4proto"), f"@{g}-{d}-{peer}-any"), verdict])
    return exprs


def _guard() -> list[list[Json]]:
    """Anti-spoofing for frames from any Kumo tap (bridge family, prerouting), driven by sets of
    (tap, MAC[, IP]) so adding a port adds elements, not rules."""
    etype = _payload("ether", "type")
    tap = _meta("iifname")
    ret, drop = {"return": None}, {"drop": None}
    return [
        [_match(_cat(tap, _payload("ether", "saddr")), "@port_mac", "!="), drop],
        [_match(etype, "arp"),
         _match(_cat(tap, _payload("arp", "saddr ether"), _payload("arp", "saddr ip")), "@port_arp", "!="),
         drop],
        [_match(etype, "arp"), ret],
        [_match(etype, "ip6"), _match(_payload("icmpv6", "type"), "nd-router-advert"), drop],
        [_match(etype, "ip", "!="), drop],
        [_match(_payload("ip", "saddr"), "0.0.0.0"), _match(_payload("ip", "daddr"), "255.255.255.255"),
         _match(_payload("udp", "sport"), 68), _match(_payload("udp", "dport"), 67), ret],
        [_match(_cat(tap, _payload("ip", "saddr")), "@port_ip", "!="), drop],
        [_match(_payload("udp", "sport"), 67), drop],
        [_match({"&": [_payload("ether", "daddr"), "01:00:00:00:00:00"]}, "01:00:00:00:00:00"), drop],
    ]


def combo_name(group_ids: tuple[str, ...]) -> str:
    """Ports with the same groups share one chain per direction, named after the sorted groups."""
    return "-".join(sorted(group_ids))


@dataclass(frozen=True)
class Rendered:
    """A rendered ruleset: the skeleton (tables, chains, set declarations, rules) and elements.

    ``elements`` maps (family, set name) to {canonical text: element}, so two renders can be
    diffed element by element when their skeletons are equal.
    """

    skeleton: tuple[Json, ...]  # commands in load order, without set elements
    elements: dict[tuple[str, str], dict[str, Any]]
    rules_per_chain: dict[tuple[str, str], int]
    chains: dict[tuple[str, str], Any]

    def document(self) -> Json:
        """From scratch: delete both ``kumo`` tables (if present) and create this render, in one
        transaction. Kept for golden files and ``nft --check``; the applier uses ``transaction``,
        because re-created base chains let a few packets through before the commit (see above)."""
        cmds: list[Json] = list(empty_document()["nftables"])
        rules = [c for c in self.skeleton if "rule" in c["add"]]
        cmds += [c for c in self.skeleton if "rule" not in c["add"]]
        cmds += [element_command("add", fam, name, list(elems.values()))
                 for (fam, name), elems in sorted(self.elements.items()) if elems]
        cmds += rules
        return {"nftables": cmds}

    def declarations(self) -> dict[tuple[str, str, str], Any]:
        """(kind, family, name) -> declaration of every chain and set/map this render creates, in
        the normalized form ``declaration()`` gives (what ``existing`` holds in ``transaction``)."""
        out: dict[tuple[str, str, str], Any] = {}
        for cmd in self.skeleton:
            kind, body = next(iter(cmd["add"].items()))
            if kind in ("chain", "set", "map"):
                out[_object_key(kind, body)] = declaration(kind, body)
        return out

    def transaction(self, existing: dict[tuple[str, str, str], Any]) -> Json:
        """ONE transaction that moves the kernel from ``existing`` to this render in place: no
        table, and no base chain declared as before, is deleted (see the module docstring)."""
        want = self.declarations()
        stale = {k for k, spec in existing.items() if want.get(k, _MISSING) != spec}
        cmds: list[Json] = [{"metainfo": {"json_schema_version": 1}}]
        for fam in FAMILIES:  # idempotent: creates the table only when it is missing
            cmds.append({"add": {"table": {"family": fam, "name": TABLE}}})
        for fam in FAMILIES:  # every rule goes (in the next generation): no set or chain is referenced by one
            cmds.append({"flush": {"table": {"family": fam, "name": TABLE}}})
        for key in sorted(k for k in stale if k[0] != "chain"):
            cmds.append({"delete": {key[0]: _ref(key)}})
        decls = [c for c in self.skeleton if "rule" not in c["add"]]
        for cmd in decls:  # sets and maps: declare (idempotent) and empty; flushed verdict maps release their chains
            kind, body = next(iter(cmd["add"].items()))
            if kind in ("set", "map"):
                cmds.append(cmd)
                cmds.append({"flush": {kind: _ref(_object_key(kind, body))}})
        for key in sorted(k for k in stale if k[0] == "chain"):
            cmds.append({"delete": {"chain": _ref(key)}})
        cmds += [c for c in decls if "table" not in c["add"] and "chain" in c["add"]]  # base chains: kept as they are
        cmds += [element_command("add", fam, name, list(elems.values()))
                 for (fam, name), elems in sorted(self.elements.items()) if elems]
        cmds += [c for c in self.skeleton if "rule" in c["add"]]
        return {"nftables": cmds}

    def fingerprint(self) -> Json:
        return {
            "chains": {f"{f} {n}": v for (f, n), v in sorted(self.chains.items())},
            "rules": {f"{f} {n}": c for (f, n), c in sorted(self.rules_per_chain.items())},
            "sets": {f"{f} {n}": len(e) for (f, n), e in sorted(self.elements.items())},
        }


_MISSING = object()


def _object_key(kind: str, body: Json) -> tuple[str, str, str]:
    return (kind, body["family"], body["name"])


def _ref(key: tuple[str, str, str]) -> Json:
    return {"family": key[1], "table": TABLE, "name": key[2]}


def declaration(kind: str, body: Json) -> Any:
    """The part of a chain/set/map declaration that ``add`` cannot change on an existing object,
    normalized so a render's and an ``nft -j list`` object's compare equal: a base chain's type,
    hook, priority and policy (None for a regular chain); a set's key type, flags, map type."""
    if kind == "chain":
        if "hook" not in body:
            return None
        return (body.get("type", "filter"), body["hook"], body["prio"], body.get("policy", "accept"))
    typ = body["type"]
    return (tuple(typ) if isinstance(typ, list) else typ, tuple(sorted(body.get("flags", ()))), body.get("map"))


def element_command(verb: str, family: str, name: str, elems: list[Any]) -> Json:
    return {verb: {"element": {"family": family, "table": TABLE, "name": name, "elem": elems}}}


def element_key(elem: Any) -> str:
    """A canonical text for an element; elements are always built the same way, so repr is."""
    return repr(elem)


def element_index(elems: list[Any]) -> dict[str, Any]:
    """{canonical text: element}, sorted: the form Rendered.elements keeps for diffing."""
    return dict(sorted((repr(e), e) for e in elems))


def empty_document() -> Json:
    """A transaction that removes both ``kumo`` tables whether or not they exist."""
    cmds: list[Json] = [{"metainfo": {"json_schema_version": 1}}]
    for fam in FAMILIES:
        tbl = {"table": {"family": fam, "name": TABLE}}
        cmds += [{"add": tbl}, {"delete": tbl}]
    return {"nftables": cmds}


class _Builder:
    def __init__(self) -> None:
        self.skeleton: list[Json] = []
        self.elements: dict[tuple[str, str], dict[str, Any]] = {}
        self.rules: dict[tuple[str, str], int] = {}
        self.chains: dict[tuple[str, str], Any] = {}

    def add(self, obj: str, **fields: Any) -> None:
        self.skeleton.append({"add": {obj: {"table": TABLE, **fields}}})

    def table(self, fam: str) -> None:
        self.skeleton.append({"add": {"table": {"family": fam, "name": TABLE}}})

    def chain(self, fam: str, name: str, hook: str | None = None, prio: int = 0) -> None:
        if hook:
            self.add("chain", family=fam, name=name, type="filter", hook=hook, prio=prio, policy="accept")
            self.chains[(fam, name)] = [hook, prio, "accept"]
        else:
            self.add("chain", family=fam, name=name)
            self.chains[(fam, name)] = None
        self.rules[(fam, name)] = 0

    def rule(self, fam: str, chain: str, expr: list[Json]) -> None:
        self.add("rule", family=fam, chain=chain, expr=expr)
        self.rules[(fam, chain)] += 1

    def set(self, fam: str, name: str, typ: Any, elems: list[Any], *, interval: bool = True,
            vmap: bool = False) -> None:
        fields: dict[str, Any] = {"family": fam, "name": name, "type": typ}
        if interval:
            fields["flags"] = ["interval"]
        if vmap:
            fields["map"] = "verdict"
        self.add("map" if vmap else "set", **fields)
        self.elements[(fam, name)] = element_index(elems)


def render(fw: HostFirewall) -> Rendered:
    """The whole owned ruleset for ``fw`` (pure; deterministic)."""
    b = _Builder()
    ports = sorted(fw.ports, key=lambda p: p.tap)
    jump = lambda target: {"jump": {"target": target}}  # noqa: E731

    # bridge family: anti-spoofing, all data in sets keyed on the tap
    b.table("bridge")
    b.chain("bridge", "prerouting", "prerouting", -300)
    b.chain("bridge", "guard")
    b.set("bridge", "taps", "ifname", [p.tap for p in ports], interval=False)
    b.set("bridge", "port_mac", ["ifname", "ether_addr"], [_cat(p.tap, p.mac) for p in ports], interval=False)
    b.set("bridge", "port_arp", ["ifname", "ether_addr", "ipv4_addr"],
          [_cat(p.tap, p.mac, str(p.ipv4)) for p in ports], interval=False)
    b.set("bridge", "port_ip", ["ifname", "ipv4_addr"], [_cat(p.tap, str(p.ipv4)) for p in ports],
          interval=False)
    b.rule("bridge", "prerouting", [_match(_meta("iifname"), "@taps"), jump("guard")])
    if fw.tap_prefix is not None:  # an unknown tap with our prefix: default deny ("*" = nft wildcard)
        b.chain("bridge", "forward", "forward", -300)
        for key in ("iifname", "oifname"):
            chain = "prerouting" if key == "iifname" else "forward"
            b.rule("bridge", chain, [_match(_meta(key), "@taps", "!="),
                                     _match(_meta(key), fw.tap_prefix + "*"), {"drop": None}])
    for expr in _guard():
        b.rule("bridge", "guard", expr)

    # inet family: zones and security groups
    b.table("inet")
    b.chain("inet", "zone", "prerouting", -300)
    b.chain("inet", "forward", "forward", 0)
    combos = sorted({tuple(sorted(p.group_ids)) for p in ports})
    for combo in combos:
        b.chain("inet", f"out-{combo_name(combo)}")
        b.chain("inet", f"in-{combo_name(combo)}")
    used = sorted({g for p in ports for g in p.group_ids})
    peers = sorted({peer for g in used for d in DIRS for peer in group_peers(fw.groups[g], d)})
    for gid in peers:
        b.set("inet", f"m-{gid}", "ipv4_addr", [str(a) for a in sorted(fw.groups[gid].members)],
              interval=False)
    for gid in used:
        for name, (typ, elems, interval) in group_sets(fw.groups[gid]).items():
            b.set("inet", name, typ, elems, interval=interval)
    b.set("inet", "egress", ["ifname", "ipv4_addr"],
          [[_cat(p.bridge, str(p.ipv4)), jump(f"out-{combo_name(p.group_ids)}")] for p in ports],
          interval=False, vmap=True)
    b.set("inet", "ingress", ["ifname", "ipv4_addr"],
          [[_cat(p.bridge, str(p.ipv4)), jump(f"in-{combo_name(p.group_ids)}")] for p in ports],
          interval=False, vmap=True)

    zones = sorted({(p.bridge, p.zone) for p in ports})
    if zones:
        zone_map = {"map": {"key": _meta("iifname"), "data": {"set": [[br, z] for br, z in zones]}}}
        b.rule("inet", "zone", [{"mangle": {"key": _ct("zone"), "value": zone_map}}])
    b.rule("inet", "forward", [_match(_ct("state"), ["established", "related"], "in"), {"accept": None}])
    b.rule("inet", "forward", [_match(_payload("ip", "daddr"), METADATA_IP),
                               _match(_payload("tcp", "dport"), METADATA_PORT), {"accept": None}])
    b.rule("inet", "forward", [{"vmap": {"key": _cat(_meta("iifname"), _payload("ip", "saddr")),
                                         "data": "@egress"}}])
    b.rule("inet", "forward", [{"vmap": {"key": _cat(_meta("oifname"), _payload("ip", "daddr")),
                                         "data": "@ingress"}}])
    invalid = [_match(_ct("state"), "invalid", "in"), {"drop": None}]
    for combo in combos:
        for direction, chain, verdict in (("egress", f"out-{combo_name(combo)}", {"return": None}),
                                          ("ingress", f"in-{combo_name(combo)}", {"accept": None})):
            b.rule("inet", chain, invalid)
            for gid in combo:
                for expr in _lookups(fw.groups[gid], direction, verdict):
                    b.rule("inet", chain, expr)
            b.rule("inet", chain, [{"drop": None}])
    return Rendered(tuple(b.skeleton), b.elements, b.rules, b.chains)

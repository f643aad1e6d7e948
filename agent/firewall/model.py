"""Validated input of the firewall dataplane: what one host must enforce for its ports.

Owns the typed, frozen structures (HostFirewall, PortFirewall, SecurityGroup, Rule) and every
check on them. Everything that reaches nft is built from these validated values (ints, ipaddress
objects, identifiers matched against fixed patterns), never from user text. Bad input raises
FirewallInputError with a stable EC2-style code:

- InvalidParameterValue      malformed CIDR (``10.0.0.0/8 accept; flush ruleset``), IPv6 CIDR in an
                             IPv4 rule (``::/0``), bad ids, tap/bridge names, MAC or IPv4 address
- InvalidPermission.Malformed  unknown protocol, port outside 0..65535, from_port > to_port, ICMP
                             type/code outside -1..255, ports given for protocol ``all``
- InvalidPermission.Duplicate  the same rule_id twice in one group
- InvalidGroup.NotFound      a port's group or a rule's peer group is missing or in another VPC
- RulesPerSecurityGroupLimitExceeded, SecurityGroupsPerInstanceLimitExceeded   limits

Build from untrusted dicts with ``Rule.parse`` / ``PortFirewall.parse`` / ``HostFirewall.parse``;
the dataclass constructors validate too (``__post_init__``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any, Literal, Mapping

from agent import validators

GROUP_ID_RE = re.compile(r"^sg-[0-9a-f]{17}$")
RULE_ID_RE = re.compile(r"^sgr-[0-9a-f]{17}$")
TAP_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,7}$")
CIDR_TEXT_RE = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$")

MAX_GROUPS_PER_PORT = 5
# Dataplane ceiling (the controller enforces the smaller user-facing limits); the benchmark
# needs 10,000 rules in one group.
MAX_RULES_PER_GROUP = 20_000
MAX_ZONE = 65535

Direction = Literal["ingress", "egress"]
Protocol = Literal["tcp", "udp", "icmp", "all"]
_PROTOCOL_ALIASES = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp",
                     "all": "all", "-1": "all"}


class FirewallInputError(ValueError):
    """Invalid firewall input. ``code`` is a stable EC2-style code; ``field`` names the input."""

    def __init__(self, code: str, message: str, *, field: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


def _bad(code: str, message: str, field_name: str | None = None) -> FirewallInputError:
    return FirewallInputError(code, message, field=field_name)


def parse_group_id(value: Any, field_name: str = "group_id") -> str:
    if not isinstance(value, str) or not GROUP_ID_RE.match(value):
        raise _bad("InvalidParameterValue", f"invalid security group id {value!r}", field_name)
    return value


def parse_ifname(value: Any, field_name: str) -> str:
    try:
        return validators.ifname(value)
    except ValueError:
        raise _bad("InvalidParameterValue", f"invalid interface name {value!r} (1-15 of A-Za-z0-9_.-)",
                   field_name) from None


def parse_ipv4_cidr(value: Any, field_name: str = "cidr") -> IPv4Network:
    """An IPv4 CIDR from text; anything but digits, dots and one prefix length is refused."""
    if isinstance(value, IPv4Network):
        return value
    if not isinstance(value, str):
        raise _bad("InvalidParameterValue", f"CIDR must be a string, got {type(value).__name__}", field_name)
    if ":" in value:
        raise _bad("InvalidParameterValue", f"IPv6 CIDR {value!r} is not allowed in an IPv4 rule", field_name)
    if not CIDR_TEXT_RE.match(value):
        raise _bad("InvalidParameterValue", f"CIDR block {value!r} is malformed", field_name)
    try:
        return IPv4Network(value, strict=True)
    except ValueError as exc:
        raise _bad("InvalidParameterValue", f"CIDR block {value!r} is malformed: {exc}", field_name) from None


def parse_ipv4(value: Any, field_name: str = "ipv4") -> IPv4Address:
    if isinstance(value, IPv4Address):
        addr = value
    else:
        if not isinstance(value, str) or not re.match(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$", value):
            raise _bad("InvalidParameterValue", f"invalid IPv4 address {value!r}", field_name)
        try:
            addr = IPv4Address(value)
        except ValueError:
            raise _bad("InvalidParameterValue", f"invalid IPv4 address {value!r}", field_name) from None
    if addr.is_multicast or addr.is_unspecified or addr == IPv4Address("255.255.255.255"):
        raise _bad("InvalidParameterValue", f"{addr} cannot be an instance address", field_name)
    return addr


def _int(value: Any, field_name: str, lo: int, hi: int, code: str = "InvalidPermission.Malformed") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.match(r"^-?[0-9]{1,6}$", value):
            value = int(value)
        else:
            raise _bad(code, f"{field_name} must be an integer, got {value!r}", field_name)
    if not lo <= value <= hi:
        raise _bad(code, f"invalid value {value} for {field_name} (allowed {lo}..{hi})", field_name)
    return value


@dataclass(frozen=True)
class Rule:
    """One security group rule. Ports for tcp/udp; ICMP type/code (-1 = any) for icmp.

    The peer is exactly one of ``cidr`` (IPv4 only) and ``peer_group`` (a group of the same VPC).
    """

    rule_id: str
    direction: Direction
    protocol: Protocol
    from_port: int | None = None
    to_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    cidr: IPv4Network | None = None
    peer_group: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rule_id, str) or not RULE_ID_RE.match(self.rule_id):
            raise _bad("InvalidParameterValue", f"invalid rule id {self.rule_id!r}", "rule_id")
        if self.direction not in ("ingress", "egress"):
            raise _bad("InvalidParameterValue", f"invalid direction {self.direction!r}", "direction")
        if self.protocol not in ("tcp", "udp", "icmp", "all"):
            raise _bad("InvalidPermission.Malformed", f"unknown protocol {self.protocol!r}", "protocol")
        if (self.cidr is None) == (self.peer_group is None):
            raise _bad("InvalidPermission.Malformed", "a rule needs exactly one of cidr and peer_group", "peer")
        if self.cidr is not None and not isinstance(self.cidr, IPv4Network):
            raise _bad("InvalidParameterValue", f"cidr must be an IPv4 network, got {self.cidr!r}", "cidr")
        if self.peer_group is not None:
            parse_group_id(self.peer_group, "peer_group")
        if self.protocol in ("tcp", "udp"):
            if self.from_port is None or self.to_port is None:
                raise _bad("InvalidPermission.Malformed", "tcp/udp rules need from_port and to_port", "from_port")
            _int(self.from_port, "from_port", 0, 65535)
            _int(self.to_port, "to_port", 0, 65535)
            if self.from_port > self.to_port:
                raise _bad("InvalidPermission.Malformed",
                           f"from_port {self.from_port} is greater than to_port {self.to_port}", "from_port")
            if self.icmp_type is not None or self.icmp_code is not None:
                raise _bad("InvalidPermission.Malformed", "icmp type/code only for protocol icmp", "icmp_type")
        elif self.protocol == "icmp":
            if self.from_port is not None or self.to_port is not None:
                raise _bad("InvalidPermission.Malformed", "use icmp_type/icmp_code for icmp", "from_port")
            t = -1 if self.icmp_type is None else _int(self.icmp_type, "icmp_type", -1, 255)
            c = -1 if self.icmp_code is None else _int(self.icmp_code, "icmp_code", -1, 255)
            if t == -1 and c != -1:
                raise _bad("InvalidPermission.Malformed", "icmp_code needs a specific icmp_type", "icmp_code")
        else:
            if any(v is not None for v in (self.from_port, self.to_port, self.icmp_type, self.icmp_code)):
                raise _bad("InvalidPermission.Malformed", "protocol all takes no ports or icmp type", "protocol")

    @property
    def port_range(self) -> tuple[int, int]:
        assert self.from_port is not None and self.to_port is not None
        return self.from_port, self.to_port

    @property
    def icmp_ranges(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(type range, code range); -1 means the whole 0..255 range."""
        t = -1 if self.icmp_type is None else self.icmp_type
        c = -1 if self.icmp_code is None else self.icmp_code
        return ((0, 255) if t == -1 else (t, t)), ((0, 255) if c == -1 else (c, c))

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "Rule":
        """Build from untrusted JSON-like data. ``peer`` may be a CIDR string or a group id."""
        if not isinstance(data, Mapping):
            raise _bad("InvalidPermission.Malformed", "a rule must be an object")
        proto_raw = str(data.get("protocol", "")).lower()
        protocol = _PROTOCOL_ALIASES.get(proto_raw)
        if protocol is None:
            raise _bad("InvalidPermission.Malformed", f"unknown protocol {data.get('protocol')!r}", "protocol")
        peer = data.get("peer")
        cidr = data.get("cidr")
        group = data.get("peer_group")
        if peer is not None:
            if isinstance(peer, str) and peer.startswith("sg-"):
                group = peer
            else:
                cidr = peer
        ints = {}
        for name in ("from_port", "to_port", "icmp_type", "icmp_code"):
            value = data.get(name)
            if value is not None:
                lo = -1 if name.startswith("icmp") else 0
                hi = 255 if name.startswith("icmp") else 65535
                ints[name] = _int(value, name, lo, hi)
        return cls(
            rule_id=data.get("rule_id"),  # type: ignore[arg-type]
            direction=data.get("direction"),  # type: ignore[arg-type]
            protocol=protocol,  # type: ignore[arg-type]
            cidr=None if cidr is None else parse_ipv4_cidr(cidr),
            peer_group=None if group is None else parse_group_id(group, "peer_group"),
            **ints,
        )


@dataclass(frozen=True)
class SecurityGroup:
    """A group as the dataplane needs it: its VPC's conntrack zone, its rules, its members' IPs."""

    group_id: str
    zone: int
    rules: tuple[Rule, ...] = ()
    members: frozenset[IPv4Address] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        parse_group_id(self.group_id)
        _int(self.zone, "zone", 1, MAX_ZONE, code="InvalidParameterValue")
        if len(self.rules) > MAX_RULES_PER_GROUP:
            raise _bad("RulesPerSecurityGroupLimitExceeded",
                       f"{len(self.rules)} rules in {self.group_id} (max {MAX_RULES_PER_GROUP})", "rules")
        seen: set[str] = set()
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise _bad("InvalidPermission.Malformed", "rules must be Rule objects", "rules")
            if rule.rule_id in seen:
                raise _bad("InvalidPermission.Duplicate", f"rule {rule.rule_id} appears twice", "rules")
            seen.add(rule.rule_id)
        for m in self.members:
            if not isinstance(m, IPv4Address):
                raise _bad("InvalidParameterValue", f"member {m!r} is not an IPv4 address", "members")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "SecurityGroup":
        return cls(
            group_id=parse_group_id(data.get("group_id")),
            zone=_int(data.get("zone"), "zone", 1, MAX_ZONE, code="InvalidParameterValue"),
            rules=tuple(Rule.parse(r) for r in data.get("rules", ())),
            members=frozenset(parse_ipv4(m, "members") for m in data.get("members", ())),
        )


@dataclass(frozen=True)
class PortFirewall:
    """One guest NIC: its tap on ``bridge`` (the VPC's bridge on this host), MAC, IPv4, zone, groups."""

    tap: str
    bridge: str
    mac: str
    ipv4: IPv4Address
    zone: int
    group_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        parse_ifname(self.tap, "tap")
        parse_ifname(self.bridge, "bridge")
        if not isinstance(self.mac, str) or not validators.MAC_RE.fullmatch(self.mac):
            raise _bad("InvalidParameterValue", f"invalid MAC {self.mac!r} (lowercase aa:bb:..)", "mac")
        try:
            validators.unicast_mac(self.mac)
        except ValueError:
            raise _bad("InvalidParameterValue", f"MAC {self.mac} is not a unicast address", "mac") from None
        parse_ipv4(self.ipv4)
        _int(self.zone, "zone", 1, MAX_ZONE, code="InvalidParameterValue")
        if not 1 <= len(self.group_ids) <= MAX_GROUPS_PER_PORT:
            raise _bad("SecurityGroupsPerInstanceLimitExceeded",
                       f"a port needs 1..{MAX_GROUPS_PER_PORT} security groups, got {len(self.group_ids)}",
                       "group_ids")
        for g in self.group_ids:
            parse_group_id(g, "group_ids")
        if len(set(self.group_ids)) != len(self.group_ids):
            raise _bad("InvalidParameterValue", "duplicate security group on one port", "group_ids")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "PortFirewall":
        mac = data.get("mac")
        return cls(
            tap=parse_ifname(data.get("tap"), "tap"),
            bridge=parse_ifname(data.get("bridge"), "bridge"),
            mac=mac.lower() if isinstance(mac, str) else mac,  # type: ignore[arg-type]
            ipv4=parse_ipv4(data.get("ipv4")),
            zone=_int(data.get("zone"), "zone", 1, MAX_ZONE, code="InvalidParameterValue"),
            group_ids=tuple(parse_group_id(g, "group_ids") for g in data.get("group_ids", ())),
        )


@dataclass(frozen=True)
class HostFirewall:
    """Everything one host enforces. ``groups`` holds every group its ports use or name as peers.

    ``tap_prefix``: when set, every port's tap must start with it, and frames from any OTHER
    interface whose name starts with it are dropped: a guest tap that is not (or no longer) in
    the firewall gets nothing through instead of being unfiltered.
    """

    ports: tuple[PortFirewall, ...] = ()
    groups: Mapping[str, SecurityGroup] = field(default_factory=dict)
    tap_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.tap_prefix is not None and not (isinstance(self.tap_prefix, str)
                                                and TAP_PREFIX_RE.match(self.tap_prefix)):
            raise _bad("InvalidParameterValue", f"invalid tap prefix {self.tap_prefix!r}", "tap_prefix")
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))
        object.__setattr__(self, "ports", tuple(self.ports))
        for gid, group in self.groups.items():
            if not isinstance(group, SecurityGroup) or group.group_id != gid:
                raise _bad("InvalidParameterValue", f"groups[{gid!r}] does not hold group {gid}", "groups")
            for rule in group.rules:
                if rule.peer_group is not None:
                    peer = self.groups.get(rule.peer_group)
                    if peer is None or peer.zone != group.zone:
                        raise _bad("InvalidGroup.NotFound",
                                   f"peer group {rule.peer_group} of rule {rule.rule_id} is not in the VPC "
                                   f"of {gid}", "peer_group")
        taps: set[str] = set()
        addrs: set[tuple[str, IPv4Address]] = set()
        bridge_zone: dict[str, int] = {}
        for port in self.ports:
            if not isinstance(port, PortFirewall):
                raise _bad("InvalidParameterValue", "ports must be PortFirewall objects", "ports")
            if self.tap_prefix is not None and not port.tap.startswith(self.tap_prefix):
                raise _bad("InvalidParameterValue", f"tap {port.tap} does not start with {self.tap_prefix}", "tap")
            if port.tap in taps:
                raise _bad("InvalidParameterValue", f"tap {port.tap} appears twice", "tap")
            taps.add(port.tap)
            if (port.bridge, port.ipv4) in addrs:
                raise _bad("InvalidParameterValue", f"{port.ipv4} used twice on {port.bridge}", "ipv4")
            addrs.add((port.bridge, port.ipv4))
            if bridge_zone.setdefault(port.bridge, port.zone) != port.zone:
                raise _bad("InvalidParameterValue", f"bridge {port.bridge} carries two VPC zones", "zone")
            for gid in port.group_ids:
                group = self.groups.get(gid)
                if group is None or group.zone != port.zone:
                    raise _bad("InvalidGroup.NotFound", f"security group {gid} not found in the port's VPC",
                               "group_ids")
        if taps & set(bridge_zone):
            raise _bad("InvalidParameterValue", "a name is used both as tap and as bridge", "bridge")

    def with_group(self, group: SecurityGroup) -> "HostFirewall":
        """A copy with ``group`` replaced, checking only what that can break (its peers, its zone):
        the rest was validated already. Used by the applier's fast paths."""
        prev = self.groups.get(group.group_id)
        if prev is None or prev.zone != group.zone:
            return HostFirewall(self.ports, {**self.groups, group.group_id: group}, self.tap_prefix)  # full checks
        for rule in group.rules:
            if rule.peer_group is not None:
                peer = self.groups.get(rule.peer_group)
                if peer is None or peer.zone != group.zone:
                    raise _bad("InvalidGroup.NotFound", f"peer group {rule.peer_group} of rule {rule.rule_id} "
                               f"is not in the VPC of {group.group_id}", "peer_group")
        new = object.__new__(HostFirewall)
        object.__setattr__(new, "tap_prefix", self.tap_prefix)
        object.__setattr__(new, "ports", self.ports)
        object.__setattr__(new, "groups", MappingProxyType({**self.groups, group.group_id: group}))
        return new

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "HostFirewall":
        groups = [SecurityGroup.parse(g) for g in data.get("groups", ())]
        return cls(ports=tuple(PortFirewall.parse(p) for p in data.get("ports", ())),
                   groups={g.group_id: g for g in groups}, tap_prefix=data.get("tap_prefix"))

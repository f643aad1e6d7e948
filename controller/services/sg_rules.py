"""Pure checks of security-group input (no database): group names and descriptions, one rule
(protocol, ports or ICMP type/code, peer), its canonical duplicate key, the limits (rules per
group and direction, groups per VPC and per instance; `Limits`), and the 1..5 groups an
instance may have.

Every refusal is a KumoError with a stable EC2 code, raised before anything is written:
- InvalidParameterValue       bad name/description characters, malformed or IPv6 CIDR
                              (``10.0.0.0/8 accept; flush ruleset``, ``::/0``), host bits set
- InvalidPermission.Malformed unknown protocol, port outside 0..65535, from_port > to_port, ports
                              missing for tcp/udp or given for icmp/all, ICMP type/code outside
                              -1..255, not exactly one peer
- InvalidPermission.Duplicate the same rule twice in one request
- RulesPerSecurityGroupLimitExceeded, SecurityGroupsPerInstanceLimitExceeded, InvalidGroup.NotFound
The values kept are ints, canonical protocol names and ipaddress-normalized CIDRs, so whatever
later reaches the dataplane never carries user text (agent/firewall/model.py re-validates).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any, Iterable, Mapping, Optional, Sequence

from controller.errors import InvalidParameter, KumoError

DIRECTIONS = ("ingress", "egress")
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp",
             "all": "all", "-1": "all"}
GROUP_ID_RE = re.compile(r"^sg-[0-9a-f]{17}$")
RULE_ID_RE = re.compile(r"^sgr-[0-9a-f]{17}$")
# EC2's alphabet for VPC security group names and descriptions; no control characters, quotes,
# backslashes or angle brackets.
_TEXT_CHARS = r"A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*"
NAME_RE = re.compile(rf"^[{_TEXT_CHARS}]{{1,255}}$")
DESCRIPTION_RE = re.compile(rf"^[{_TEXT_CHARS}]{{0,255}}$")
CIDR_TEXT_RE = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$")
MAX_GROUPS_PER_INSTANCE = 5


class LimitExceeded(KumoError):
    status = 400


@dataclass(frozen=True)
class Limits:
    """The deployment's security-group limits (settings KUMO_SG_*, KUMO_SECURITY_GROUPS_*)."""

    ingress: int = 60
    egress: int = 60
    per_vpc: int = 2500
    per_instance: int = MAX_GROUPS_PER_INSTANCE

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.sg_ingress_rules_limit, settings.sg_egress_rules_limit,
                   settings.security_groups_per_vpc, settings.security_groups_per_instance)

    def rules(self, direction: str) -> int:
        return self.ingress if direction == "ingress" else self.egress


def malformed(message: str) -> InvalidParameter:
    return InvalidParameter(message, code="InvalidPermission.Malformed")


def group_not_found(group_id: str) -> KumoError:
    return KumoError(f"security group {group_id!r} not found", code="InvalidGroup.NotFound",
                     status=404)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidParameter("group name must be 1-255 characters of a-z A-Z 0-9 spaces and "
                               "._-:/()#,@[]+=&;{}!$*")
    if name.lower().startswith("sg-"):
        raise InvalidParameter("group name cannot start with 'sg-'")
    return name


def check_description(text: Optional[str], what: str = "description") -> str:
    text = "" if text is None else text
    if not isinstance(text, str) or not DESCRIPTION_RE.match(text):
        raise InvalidParameter(f"{what} must be at most 255 characters of a-z A-Z 0-9 spaces and "
                               "._-:/()#,@[]+=&;{}!$*")
    return text


def parse_protocol(value: Any) -> str:
    proto = PROTOCOLS.get(str(value).strip().lower()) if isinstance(value, (str, int)) else None
    if proto is None or isinstance(value, bool):
        raise malformed(f"unknown protocol {value!r} (tcp, udp, icmp, all or -1)")
    return proto


def parse_cidr_ipv4(text: Any) -> str:
    """An IPv4 network in CIDR notation, without host bits; returned in canonical form."""
    if not isinstance(text, str):
        raise InvalidParameter(f"CIDR block {text!r} is malformed")
    if ":" in text:
        raise InvalidParameter(f"IPv6 CIDR {text!r} is not allowed in an IPv4 rule (cidr_ipv4)")
    if not CIDR_TEXT_RE.match(text):
        raise InvalidParameter(f"CIDR block {text!r} is malformed")
    try:
        return str(IPv4Network(text, strict=True))
    except ValueError as e:
        raise InvalidParameter(f"CIDR block {text!r} is malformed: {e}") from None


def _port(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise malformed(f"invalid {name} {value!r} (allowed 0..65535)")
    return value


def _icmp(value: Any, name: str) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 255:
        raise malformed(f"invalid {name} {value!r} (allowed -1..255; -1 = any)")
    return value


@dataclass(frozen=True)
class RuleSpec:
    """One validated rule. Ports for tcp/udp; ICMP type/code (-1 = any) for icmp; neither for
    all. Exactly one peer: cidr_ipv4 or peer_group_id."""
    direction: str
    protocol: str
    from_port: Optional[int] = None
    to_port: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    cidr_ipv4: Optional[str] = None
    peer_group_id: Optional[str] = None
    description: str = ""

    @property
    def key(self) -> str:
        """Everything but the description: two rules with one key are duplicates (as in EC2)."""
        peer = f"cidr:{self.cidr_ipv4}" if self.cidr_ipv4 is not None else f"sg:{self.peer_group_id}"
        nums = (self.from_port, self.to_port, self.icmp_type, self.icmp_code)
        return "|".join([self.direction, self.protocol, *("" if n is None else str(n) for n in nums),
                         peer])

    def summary(self) -> str:
        if self.protocol in ("tcp", "udp"):
            what = f"{self.protocol} {self.from_port}-{self.to_port}"
        elif self.protocol == "icmp":
            what = f"icmp type {self.icmp_type} code {self.icmp_code}"
        else:
            what = "all traffic"
        peer = self.cidr_ipv4 or self.peer_group_id
        return f"{self.direction} {what} {'from' if self.direction == 'ingress' else 'to'} {peer}"


def parse_rule(direction: str, data: Mapping[str, Any]) -> RuleSpec:
    """A RuleSpec from a client's permission (RuleRequest.model_dump() or a plain dict)."""
    if direction not in DIRECTIONS:
        raise InvalidParameter(f"invalid direction {direction!r} (ingress or egress)")
    protocol = parse_protocol(data.get("protocol"))
    from_port, to_port = data.get("from_port"), data.get("to_port")
    icmp_type, icmp_code = data.get("icmp_type"), data.get("icmp_code")
    if protocol in ("tcp", "udp"):
        if from_port is None or to_port is None:
            raise malformed(f"{protocol} rules need from_port and to_port")
        from_port, to_port = _port(from_port, "from_port"), _port(to_port, "to_port")
        if from_port > to_port:
            raise malformed(f"from_port {from_port} is greater than to_port {to_port}")
        if icmp_type is not None or icmp_code is not None:
            raise malformed("icmp_type and icmp_code are only for protocol icmp")
    elif protocol == "icmp":
        if from_port is not None or to_port is not None:
            raise malformed("icmp rules take icmp_type and icmp_code, not ports")
        icmp_type, icmp_code = _icmp(icmp_type, "icmp_type"), _icmp(icmp_code, "icmp_code")
        if icmp_type == -1 and icmp_code != -1:
            raise malformed("icmp_code needs a specific icmp_type")
    else:
        # EC2 reports -1 for the ports of an all-traffic rule: accept that, refuse anything else.
        if any(v not in (None, -1) for v in (from_port, to_port)) or \
                icmp_type is not None or icmp_code is not None:
            raise malformed("protocol all takes no ports and no icmp type/code")
        from_port = to_port = None
    cidr, peer = data.get("cidr_ipv4"), data.get("peer_group_id")
    if (cidr is None) == (peer is None):
        raise malformed("a rule needs exactly one peer: cidr_ipv4 or peer_group_id")
    if cidr is not None:
        cidr = parse_cidr_ipv4(cidr)
    elif not isinstance(peer, str) or not GROUP_ID_RE.match(peer):
        raise group_not_found(str(peer))
    return RuleSpec(direction=direction, protocol=protocol, from_port=from_port, to_port=to_port,
                    icmp_type=icmp_type, icmp_code=icmp_code, cidr_ipv4=cidr, peer_group_id=peer,
                    description=check_description(data.get("description"), "rule description"))


def parse_rules(direction: str, items: Iterable[Mapping[str, Any]]) -> list[RuleSpec]:
    """Several rules of one request: each valid, none twice."""
    out, seen = [], set()
    for data in items:
        spec = parse_rule(direction, data)
        if spec.key in seen:
            raise InvalidParameter(f"the rule {spec.summary()} appears twice in the request",
                                   code="InvalidPermission.Duplicate", status=409)
        seen.add(spec.key)
        out.append(spec)
    return out


def check_rule_limit(group_id: str, direction: str, existing: int, adding: int, limit: int) -> None:
    if existing + adding > limit:
        raise LimitExceeded(f"{group_id} would have {existing + adding} {direction} rules "
                            f"(limit {limit} per direction)",
                            code="RulesPerSecurityGroupLimitExceeded")


def validate_instance_groups(groups: Sequence[str],
                             limit: int = MAX_GROUPS_PER_INSTANCE) -> tuple[str, ...]:
    """The security group ids an instance asks for: 1..limit well-formed ids, duplicates folded
    (order kept). Resolution to rows of the instance's VPC is
    security_group_rows.resolve_instance_groups()."""
    if isinstance(groups, str):
        raise InvalidParameter("security groups must be a list of group ids")
    ids = tuple(dict.fromkeys(groups))
    if not ids:
        raise InvalidParameter("an instance needs at least one security group")
    if len(ids) > limit:
        raise LimitExceeded(f"{len(ids)} security groups requested; an instance may have at most "
                            f"{limit}", code="SecurityGroupsPerInstanceLimitExceeded")
    for gid in ids:
        if not isinstance(gid, str) or not GROUP_ID_RE.match(gid):
            raise group_not_found(str(gid))
    return ids

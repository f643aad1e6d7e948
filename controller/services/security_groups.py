"""Security groups (controller side): create, describe, delete; authorize and revoke ingress and
egress rules; each VPC's default group; the limits; instance group resolution ready for launch;
and host_firewall_groups(), the groups rendered as the agent's firewall model parses them.

EC2 semantics: a VPC's default group ("default") lets in traffic from its own members and lets
everything out; a new group lets nothing in and everything out (egress 0.0.0.0/0 all). A rule's
peer is an IPv4 CIDR or a group of the same VPC and account. A rule equal to an existing one
(description aside) is InvalidPermission.Duplicate. A group is deleted only while no instance
and no other group's rule uses it; the default group goes with its VPC. Input is validated in
full (controller/services/sg_rules.py) before the first write, and each request is one
transaction, so a refused request changes nothing. Every change is in the event log
(resource types `security-group` and `security-group-rule`).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, KumoError
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import (DefaultVpcMarker, Instance, InstanceSecurityGroup, SecurityGroup,
                               SecurityGroupRule, Vpc)
from controller.models.security_group import (RuleChange, SecurityGroupCreate,
                                              SecurityGroupPublic, SecurityGroupRulePublic)
from controller.services import sg_rules, vpcs
from controller.services.sg_rules import RuleSpec

NOT_FOUND = "InvalidGroup.NotFound"
DEFAULT_NAME = "default"
ALL_IPV4 = "0.0.0.0/0"
MAX_ZONE = 65535  # conntrack zones are 16 bit (agent/firewall/model.py)


@dataclass(frozen=True)
class Limits:
    ingress: int = 60
    egress: int = 60
    per_vpc: int = 2500
    per_instance: int = sg_rules.MAX_GROUPS_PER_INSTANCE

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.sg_ingress_rules_limit, settings.sg_egress_rules_limit,
                   settings.security_groups_per_vpc, settings.security_groups_per_instance)

    def rules(self, direction: str) -> int:
        return self.ingress if direction == "ingress" else self.egress


# -- rows ---------------------------------------------------------------------------------------
def _add_rule(s: Session, group: SecurityGroup, spec: RuleSpec, reason: str) -> SecurityGroupRule:
    row = SecurityGroupRule(rule_id=new_id("sgr"), group_id=group.group_id,
                            direction=spec.direction, protocol=spec.protocol,
                            from_port=spec.from_port, to_port=spec.to_port,
                            icmp_type=spec.icmp_type, icmp_code=spec.icmp_code,
                            cidr_ipv4=spec.cidr_ipv4, peer_group_id=spec.peer_group_id,
                            description=spec.description, rule_key=spec.key, created_at=utcnow())
    s.add(row)
    record(s, "security-group-rule", row.rule_id, group.account_id, None, "authorized",
           f"{group.group_id} {reason}: {spec.summary()}")
    return row


def _insert_group(s: Session, vpc: Vpc, name: str, description: str, *,
                  is_default: bool) -> SecurityGroup:
    group = SecurityGroup(group_id=new_id("sg"), account_id=vpc.account_id, vpc_id=vpc.vpc_id,
                          group_name=name, description=description, is_default=is_default,
                          created_at=utcnow())
    s.add(group)
    s.flush()
    record(s, "security-group", group.group_id, vpc.account_id, None, "available",
           f"{'default group' if is_default else 'created'} in {vpc.vpc_id}")
    if is_default:
        _add_rule(s, group, RuleSpec("ingress", "all", peer_group_id=group.group_id), "default")
    _add_rule(s, group, RuleSpec("egress", "all", cidr_ipv4=ALL_IPV4), "default")
    s.flush()
    return group


def create_default(s: Session, vpc: Vpc) -> SecurityGroup:
    """The VPC's default group, in the VPC's creating transaction (services/vpcs.py)."""
    return _insert_group(s, vpc, DEFAULT_NAME, "default VPC security group", is_default=True)


def vpc_dependencies(s: Session, vpc_id: str) -> list[str]:
    """What blocks deleting the VPC on the security-group side: its non-default groups."""
    ids = sorted(s.exec(select(SecurityGroup.group_id).where(
        SecurityGroup.vpc_id == vpc_id, SecurityGroup.is_default == False)))  # noqa: E712
    return [f"security groups {', '.join(ids)}"] if ids else []


def delete_for_vpc(s: Session, vpc: Vpc) -> None:
    """Remove the default group with its VPC (vpc_dependencies() was empty)."""
    for group in s.exec(select(SecurityGroup).where(SecurityGroup.vpc_id == vpc.vpc_id)).all():
        _delete_rows(s, group, f"VPC {vpc.vpc_id} deleted")


def _delete_rows(s: Session, group: SecurityGroup, reason: str) -> None:
    for row in s.exec(select(SecurityGroupRule).where(SecurityGroupRule.group_id == group.group_id)):
        s.delete(row)
    for row in s.exec(select(InstanceSecurityGroup).where(
            InstanceSecurityGroup.group_id == group.group_id)):
        s.delete(row)
    s.flush()
    s.delete(group)
    record(s, "security-group", group.group_id, group.account_id, "available", "deleted", reason)


# -- reads --------------------------------------------------------------------------------------
def get(s: Session, caller, group_id: str) -> SecurityGroup:
    return vpcs.owned(s, caller, SecurityGroup, group_id, NOT_FOUND, "security group")


def list_groups(s: Session, caller, vpc_id: str | None = None,
                group_name: str | None = None) -> list[SecurityGroup]:
    q = vpcs.scoped(select(SecurityGroup), SecurityGroup, caller)
    if vpc_id:
        q = q.where(SecurityGroup.vpc_id == vpc_id)
    if group_name:
        q = q.where(SecurityGroup.group_name == group_name)
    return list(s.exec(q.order_by(SecurityGroup.created_at, SecurityGroup.group_id)))


def _rules(s: Session, group_id: str) -> list[SecurityGroupRule]:
    return list(s.exec(select(SecurityGroupRule).where(SecurityGroupRule.group_id == group_id)
                       .order_by(SecurityGroupRule.created_at, SecurityGroupRule.rule_id)))


def rule_public(row: SecurityGroupRule) -> SecurityGroupRulePublic:
    return SecurityGroupRulePublic(
        rule_id=row.rule_id, group_id=row.group_id, direction=row.direction,
        protocol=row.protocol, from_port=row.from_port, to_port=row.to_port,
        icmp_type=row.icmp_type, icmp_code=row.icmp_code, cidr_ipv4=row.cidr_ipv4,
        peer_group_id=row.peer_group_id, description=row.description)


def to_public(s: Session, group: SecurityGroup) -> SecurityGroupPublic:
    rules = [rule_public(r) for r in _rules(s, group.group_id)]
    return SecurityGroupPublic(
        group_id=group.group_id, group_name=group.group_name, description=group.description,
        vpc_id=group.vpc_id, account_id=group.account_id, is_default=group.is_default,
        ingress_rules=[r for r in rules if r.direction == "ingress"],
        egress_rules=[r for r in rules if r.direction == "egress"], created_at=group.created_at)


# -- create / delete ------------------------------------------------------------------------------
def _target_vpc(s: Session, caller, vpc_id: str | None) -> Vpc:
    if vpc_id:
        return vpcs.get(s, caller, vpc_id)
    marker = s.get(DefaultVpcMarker, caller.account_id)
    vpc = s.get(Vpc, marker.vpc_id) if marker else None
    if vpc is None:
        raise InvalidParameter("no default VPC: name a vpc_id", code="VPCIdNotSpecified")
    return vpc


def create(db: Database, caller, body: SecurityGroupCreate, limits: Limits) -> SecurityGroup:
    name = sg_rules.check_name(body.group_name)
    description = sg_rules.check_description(body.description)
    if name == DEFAULT_NAME:
        raise InvalidParameter("the name 'default' is reserved for the VPC's default group",
                               code="InvalidGroup.Reserved")
    vpcs.ensure_default(db, caller.account_id)
    with db.session() as s:
        vpc = _target_vpc(s, caller, body.vpc_id)
        if s.exec(select(SecurityGroup.group_id).where(SecurityGroup.vpc_id == vpc.vpc_id,
                                                       SecurityGroup.group_name == name)).first():
            raise Conflict(f"a security group named {name!r} already exists in {vpc.vpc_id}",
                           code="InvalidGroup.Duplicate")
        count = s.exec(select(func.count()).select_from(SecurityGroup).where(
            SecurityGroup.vpc_id == vpc.vpc_id)).one()
        if count >= limits.per_vpc:
            raise sg_rules.LimitExceeded(f"{vpc.vpc_id} already has {count} security groups "
                                         f"(limit {limits.per_vpc})",
                                         code="SecurityGroupLimitExceeded")
        try:
            with s.begin_nested():
                group = _insert_group(s, vpc, name, description, is_default=False)
        except IntegrityError:  # a concurrent create with the same name won
            raise Conflict(f"a security group named {name!r} already exists in {vpc.vpc_id}",
                           code="InvalidGroup.Duplicate") from None
    return group


def _users(s: Session, group_id: str) -> tuple[list[str], list[str]]:
    """(other groups whose rules name this one, live instances that are members)."""
    groups = sorted(set(s.exec(select(SecurityGroupRule.group_id).where(
        SecurityGroupRule.peer_group_id == group_id, SecurityGroupRule.group_id != group_id))))
    instances = sorted(s.exec(
        select(Instance.instance_id).join(
            InstanceSecurityGroup, InstanceSecurityGroup.instance_id == Instance.instance_id)
        .where(InstanceSecurityGroup.group_id == group_id, Instance.state != "terminated")))
    return groups, instances


def delete(db: Database, caller, group_id: str) -> SecurityGroupPublic:
    with db.session() as s:
        group = get(s, caller, group_id)
        if group.is_default:
            raise InvalidParameter(f"{group_id} is the default group of {group.vpc_id}; it goes "
                                   "with its VPC", code="CannotDelete")
        groups, instances = _users(s, group_id)
        reasons = ([f"referenced by rules of {', '.join(groups)}"] if groups else []) + \
                  ([f"used by instances {', '.join(instances)}"] if instances else [])
        if reasons:
            raise vpcs.dependency(f"security group {group_id} is in use: " + "; ".join(reasons))
        out = to_public(s, group)
        _delete_rows(s, group, "deleted")
    return out


# -- rules ----------------------------------------------------------------------------------------
def _check_peers(s: Session, group: SecurityGroup, specs: list[RuleSpec]) -> None:
    for spec in specs:
        if spec.peer_group_id is None:
            continue
        peer = s.get(SecurityGroup, spec.peer_group_id)
        # Another account's or another VPC's group is answered exactly like a missing one.
        if peer is None or peer.account_id != group.account_id or peer.vpc_id != group.vpc_id:
            raise sg_rules.group_not_found(spec.peer_group_id)


def _spec_of(row: SecurityGroupRule) -> RuleSpec:
    return RuleSpec(row.direction, row.protocol, row.from_port, row.to_port, row.icmp_type,
                    row.icmp_code, row.cidr_ipv4, row.peer_group_id, row.description)


def _duplicate(spec: RuleSpec) -> KumoError:
    return Conflict(f"the rule {spec.summary()} already exists",
                    code="InvalidPermission.Duplicate")


def authorize(db: Database, caller, group_id: str, direction: str, rules: list[dict],
              limits: Limits) -> RuleChange:
    specs = sg_rules.parse_rules(direction, rules)
    with db.session() as s:
        group = get(s, caller, group_id)
        _check_peers(s, group, specs)
        existing = {r.rule_key for r in _rules(s, group_id) if r.direction == direction}
        for spec in specs:
            if spec.key in existing:
                raise _duplicate(spec)
        sg_rules.check_rule_limit(group_id, direction, len(existing), len(specs),
                                  limits.rules(direction))
        try:
            with s.begin_nested():
                rows = [_add_rule(s, group, spec, "authorized") for spec in specs]
                s.flush()
        except IntegrityError:  # the unique (group_id, rule_key) decided a concurrent race
            raise _duplicate(specs[0]) from None
        return RuleChange(group_id=group_id, direction=direction,
                          rules=[rule_public(r) for r in rows])


def revoke(db: Database, caller, group_id: str, direction: str, rule_ids: list[str] | None,
           rules: list[dict] | None) -> RuleChange:
    if (rule_ids is None) == (rules is None):
        raise InvalidParameter("give either rule_ids or rules", code="InvalidParameterCombination")
    specs = sg_rules.parse_rules(direction, rules) if rules is not None else []
    with db.session() as s:
        group = get(s, caller, group_id)
        current = [r for r in _rules(s, group_id) if r.direction == direction]
        by_id = {r.rule_id: r for r in current}
        by_key = {r.rule_key: r for r in current}
        doomed: dict[str, SecurityGroupRule] = {}
        for rid in rule_ids or []:
            row = by_id.get(rid)
            if row is None:
                raise KumoError(f"{group_id} has no {direction} rule {rid!r}",
                                code="InvalidPermission.NotFound", status=404)
            doomed[rid] = row
        for spec in specs:
            row = by_key.get(spec.key)
            if row is None:
                raise KumoError(f"{group_id} has no rule {spec.summary()}",
                                code="InvalidPermission.NotFound", status=404)
            doomed[row.rule_id] = row
        out = RuleChange(group_id=group_id, direction=direction,
                         rules=[rule_public(r) for r in doomed.values()])
        for row in doomed.values():
            s.delete(row)
            record(s, "security-group-rule", row.rule_id, group.account_id, "authorized",
                   "revoked", f"{group_id} revoked: {_spec_of(row).summary()}")
    return out


# -- for the launch and dataplane integration -------------------------------------------------------
def default_group(s: Session, vpc_id: str) -> SecurityGroup | None:
    return s.exec(select(SecurityGroup).where(SecurityGroup.vpc_id == vpc_id,
                                              SecurityGroup.is_default == True)).first()  # noqa: E712


def resolve_instance_groups(s: Session, account_id: str, vpc_id: str, group_ids: list[str],
                            limits: Limits = Limits()) -> list[SecurityGroup]:
    """The groups an instance launched into `vpc_id` by `account_id` gets: the VPC's default
    group when none are named, else 1..limit groups, each of that account and VPC (anything
    else: InvalidGroup.NotFound). Not wired into run-instances yet."""
    if not group_ids:
        group = default_group(s, vpc_id)
        if group is None:
            raise sg_rules.group_not_found(DEFAULT_NAME)
        return [group]
    out = []
    for gid in sg_rules.validate_instance_groups(group_ids, limits.per_instance):
        row = s.get(SecurityGroup, gid)
        if row is None or row.account_id != account_id or row.vpc_id != vpc_id:
            raise sg_rules.group_not_found(gid)
        out.append(row)
    return out


def _firewall_rule(row: SecurityGroupRule) -> dict:
    rule = {"rule_id": row.rule_id, "direction": row.direction, "protocol": row.protocol}
    for name in ("from_port", "to_port", "icmp_type", "icmp_code"):
        if getattr(row, name) is not None:
            rule[name] = getattr(row, name)
    if row.cidr_ipv4 is not None:
        rule["cidr"] = row.cidr_ipv4
    else:
        rule["peer_group"] = row.peer_group_id
    return rule


def host_firewall_groups(session: Session, group_ids: list[str]) -> list[dict]:
    """The groups `group_ids` and every group their rules name as peers (transitively), as plain
    dicts agent.firewall.model.SecurityGroup.parse accepts: {"group_id", "zone" (the VPC's VNI,
    its conntrack zone), "rules": [Rule.parse dicts], "members": []}. Members (the instances'
    addresses) are filled in by the launch/dataplane integration. Unknown ids are skipped."""
    out, seen, queue = [], set(), list(group_ids)
    while queue:
        gid = queue.pop(0)
        if gid in seen:
            continue
        seen.add(gid)
        group = session.get(SecurityGroup, gid)
        if group is None:
            continue
        vpc = session.get(Vpc, group.vpc_id)
        if not 1 <= vpc.vni <= MAX_ZONE:
            raise KumoError(f"VNI {vpc.vni} of {vpc.vpc_id} is not a valid conntrack zone")
        rules = _rules(session, gid)
        out.append({"group_id": gid, "zone": vpc.vni,
                    "rules": [_firewall_rule(r) for r in rules], "members": []})
        queue.extend(r.peer_group_id for r in rules if r.peer_group_id is not None)
    return out

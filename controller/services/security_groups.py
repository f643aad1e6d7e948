"""Security groups, the user operations: create, describe and list, delete; authorize and
revoke ingress and egress rules. The rows these build on (default groups, launch resolution,
host firewall documents) are services/security_group_rows.py.

EC2 semantics: a rule's peer is an IPv4 CIDR or a group of the same VPC and account. A rule
equal to an existing one (description aside) is InvalidPermission.Duplicate. A group is deleted
only while no instance and no other group's rule uses it; the default group goes with its VPC.
Input is validated in full (controller/services/sg_rules.py) before the first write, and each
request is one transaction, so a refused request changes nothing. Listing or describing groups
creates the caller's default VPC (and so its default group) the first time, like VPCs do.
"""
from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, KumoError
from controller.events import record
from controller.models import (Instance, InstanceSecurityGroup, SecurityGroup, SecurityGroupRule,
                               Vpc)
from controller.models.security_group import (RuleChange, SecurityGroupCreate,
                                              SecurityGroupPublic, SecurityGroupRulePublic)
from controller.services import pagination, security_group_rows as sg_rows, sg_rules, vpcs
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import dependency, owned, scoped
from controller.services.sg_rules import Limits, RuleSpec
from controller.settings import Settings

NOT_FOUND = "InvalidGroup.NotFound"
ORDER = pagination.Order(SecurityGroup.created_at, SecurityGroup.group_id)


# -- reads --------------------------------------------------------------------------------------
def get(s: Session, caller, group_id: str) -> SecurityGroup:
    return owned(s, caller, SecurityGroup, group_id, NOT_FOUND, "security group")


def _visible(caller, vpc_id: str | None, group_name: str | None):
    """The query of the groups the caller sees, optionally of one VPC or with one name."""
    q = scoped(select(SecurityGroup), SecurityGroup, caller)
    if vpc_id:
        q = q.where(SecurityGroup.vpc_id == vpc_id)
    if group_name:
        q = q.where(SecurityGroup.group_name == group_name)
    return q


def list_page(db: Database, caller, page: PageRequest, vpc_id: str | None = None,
              group_name: str | None = None) -> Page[SecurityGroupPublic]:
    vpcs.ensure_default(db, caller.account_id)
    with db.session() as s:
        return pagination.list_page(s, _visible(caller, vpc_id, group_name), ORDER, page,
                                    lambda groups: [to_public(s, g) for g in groups])


def describe(db: Database, caller, group_id: str) -> SecurityGroupPublic:
    vpcs.ensure_default(db, caller.account_id)
    with db.session() as s:
        return to_public(s, get(s, caller, group_id))


def rule_public(row: SecurityGroupRule) -> SecurityGroupRulePublic:
    return SecurityGroupRulePublic(
        rule_id=row.rule_id, group_id=row.group_id, direction=row.direction,
        protocol=row.protocol, from_port=row.from_port, to_port=row.to_port,
        icmp_type=row.icmp_type, icmp_code=row.icmp_code, cidr_ipv4=row.cidr_ipv4,
        peer_group_id=row.peer_group_id, description=row.description)


def to_public(s: Session, group: SecurityGroup) -> SecurityGroupPublic:
    group_rules = [rule_public(r) for r in sg_rows.rules(s, group.group_id)]
    return SecurityGroupPublic(
        group_id=group.group_id, group_name=group.group_name, description=group.description,
        vpc_id=group.vpc_id, account_id=group.account_id, is_default=group.is_default,
        ingress_rules=[r for r in group_rules if r.direction == "ingress"],
        egress_rules=[r for r in group_rules if r.direction == "egress"],
        created_at=group.created_at)


# -- create / delete ------------------------------------------------------------------------------
def _target_vpc(s: Session, caller, vpc_id: str | None) -> Vpc:
    if vpc_id:
        return vpcs.get(s, caller, vpc_id)
    vpc = vpcs.default_vpc(s, caller.account_id)
    if vpc is None:
        raise InvalidParameter("no default VPC: name a vpc_id", code="VPCIdNotSpecified")
    return vpc


def create(db: Database, settings: Settings, caller, body: SecurityGroupCreate) -> SecurityGroup:
    limits = Limits.from_settings(settings)
    name = sg_rules.check_name(body.group_name)
    description = sg_rules.check_description(body.description)
    if name == sg_rows.DEFAULT_NAME:
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
                group = sg_rows.insert_group(s, vpc, name, description, is_default=False)
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
            raise dependency(f"security group {group_id} is in use: " + "; ".join(reasons))
        out = to_public(s, group)
        sg_rows.delete_group(s, group, "deleted")
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


def authorize(db: Database, settings: Settings, caller, group_id: str, direction: str,
              rules: list[dict]) -> RuleChange:
    limits = Limits.from_settings(settings)
    specs = sg_rules.parse_rules(direction, rules)
    with db.session() as s:
        group = get(s, caller, group_id)
        _check_peers(s, group, specs)
        existing = {r.rule_key for r in sg_rows.rules(s, group_id) if r.direction == direction}
        for spec in specs:
            if spec.key in existing:
                raise _duplicate(spec)
        sg_rules.check_rule_limit(group_id, direction, len(existing), len(specs),
                                  limits.rules(direction))
        try:
            with s.begin_nested():
                added = [sg_rows.add_rule(s, group, spec, "authorized") for spec in specs]
                s.flush()
        except IntegrityError:  # the unique (group_id, rule_key) decided a concurrent race
            raise _duplicate(specs[0]) from None
        return RuleChange(group_id=group_id, direction=direction,
                          rules=[rule_public(r) for r in added])


def revoke(db: Database, caller, group_id: str, direction: str, rule_ids: list[str] | None,
           rules: list[dict] | None) -> RuleChange:
    if (rule_ids is None) == (rules is None):
        raise InvalidParameter("give either rule_ids or rules", code="InvalidParameterCombination")
    specs = sg_rules.parse_rules(direction, rules) if rules is not None else []
    with db.session() as s:
        group = get(s, caller, group_id)
        current = [r for r in sg_rows.rules(s, group_id) if r.direction == direction]
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

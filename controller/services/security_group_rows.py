"""The security-group rows other services build on, below the user operations of
security_groups.py: inserting a group and its rules, each VPC's default group (made in the VPC's
creating transaction and removed with the VPC, services/vpcs.py), the groups an instance gets
(services/instance_network.py), and the groups as the host firewall documents carry them
(services/host_networks.py).

A VPC's default group ("default") lets in traffic from its own members and lets everything out;
any other group starts with egress to 0.0.0.0/0 only. Every row change is in the event log
(resource types `security-group` and `security-group-rule`).
"""
from __future__ import annotations

from sqlmodel import Session, select

from controller.db import delete_all
from controller.errors import KumoError
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import InstanceSecurityGroup, SecurityGroup, SecurityGroupRule, Vpc
from controller.services import sg_rules
from controller.services.sg_rules import Limits, RuleSpec

DEFAULT_NAME = "default"
ALL_IPV4 = "0.0.0.0/0"
MAX_ZONE = 65535  # conntrack zones are 16 bit (agent/firewall/model.py)


# -- writes -------------------------------------------------------------------------------------
def add_rule(s: Session, group: SecurityGroup, spec: RuleSpec, reason: str) -> SecurityGroupRule:
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


def insert_group(s: Session, vpc: Vpc, name: str, description: str, *,
                 is_default: bool) -> SecurityGroup:
    """A new group of `vpc` with its starting rules (see the module docstring)."""
    group = SecurityGroup(group_id=new_id("sg"), account_id=vpc.account_id, vpc_id=vpc.vpc_id,
                          group_name=name, description=description, is_default=is_default,
                          created_at=utcnow())
    s.add(group)
    s.flush()
    record(s, "security-group", group.group_id, vpc.account_id, None, "available",
           f"{'default group' if is_default else 'created'} in {vpc.vpc_id}")
    if is_default:
        add_rule(s, group, RuleSpec("ingress", "all", peer_group_id=group.group_id), "default")
    add_rule(s, group, RuleSpec("egress", "all", cidr_ipv4=ALL_IPV4), "default")
    s.flush()
    return group


def create_default(s: Session, vpc: Vpc) -> SecurityGroup:
    """The VPC's default group, in the VPC's creating transaction (services/vpcs.py)."""
    return insert_group(s, vpc, DEFAULT_NAME, "default VPC security group", is_default=True)


def vpc_dependencies(s: Session, vpc_id: str) -> list[str]:
    """What blocks deleting the VPC on the security-group side: its non-default groups."""
    ids = sorted(s.exec(select(SecurityGroup.group_id).where(
        SecurityGroup.vpc_id == vpc_id, SecurityGroup.is_default == False)))  # noqa: E712
    return [f"security groups {', '.join(ids)}"] if ids else []


def delete_for_vpc(s: Session, vpc: Vpc) -> None:
    """Remove the default group with its VPC (vpc_dependencies() was empty)."""
    for group in s.exec(select(SecurityGroup).where(SecurityGroup.vpc_id == vpc.vpc_id)).all():
        delete_group(s, group, f"VPC {vpc.vpc_id} deleted")


def delete_group(s: Session, group: SecurityGroup, reason: str) -> None:
    """The group, its rules and its memberships (the caller checked nothing uses it)."""
    delete_all(s, select(SecurityGroupRule).where(SecurityGroupRule.group_id == group.group_id))
    delete_all(s, select(InstanceSecurityGroup).where(
        InstanceSecurityGroup.group_id == group.group_id))
    s.flush()
    s.delete(group)
    record(s, "security-group", group.group_id, group.account_id, "available", "deleted", reason)


# -- reads --------------------------------------------------------------------------------------
def rules(s: Session, group_id: str) -> list[SecurityGroupRule]:
    """The group's rules in the order they were authorized."""
    return list(s.exec(select(SecurityGroupRule).where(SecurityGroupRule.group_id == group_id)
                       .order_by(SecurityGroupRule.created_at, SecurityGroupRule.rule_id)))


def default_group(s: Session, vpc_id: str) -> SecurityGroup | None:
    return s.exec(select(SecurityGroup).where(SecurityGroup.vpc_id == vpc_id,
                                              SecurityGroup.is_default == True)).first()  # noqa: E712


def resolve_instance_groups(s: Session, account_id: str, vpc_id: str, group_ids: list[str],
                            limits: Limits = Limits()) -> list[SecurityGroup]:
    """The groups an instance launched into `vpc_id` by `account_id` gets: the VPC's default
    group when none are named, else 1..limit groups, each of that account and VPC (anything
    else: InvalidGroup.NotFound)."""
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
    addresses) are filled in by services/host_networks.py. Unknown ids are skipped."""
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
        group_rules = rules(session, gid)
        out.append({"group_id": gid, "zone": vpc.vni,
                    "rules": [_firewall_rule(r) for r in group_rules], "members": []})
        queue.extend(r.peer_group_id for r in group_rules if r.peer_group_id is not None)
    return out

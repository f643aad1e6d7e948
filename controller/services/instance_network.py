"""An instance's place in its VPC: the subnet it launches into, its private address (IPAM), its
MAC, its auto-assigned public IP, its security groups; and giving all of it back at termination.

Everything runs inside the caller's launch or transition transaction, so a launch that fails a
later check leaves no address, MAC or public IP behind. Uniqueness under concurrent launches is
the database's word (ipam's (subnet_id, address) constraint, elastic_ip.public_ip unique).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlmodel import Session, select

from controller.db import delete_all
from controller.errors import InvalidParameter, NotFound
from controller.models import (ElasticIp, Instance, InstanceSecurityGroup, SecurityGroup, Subnet,
                               Vpc)
from controller.services import elastic_ips, ipam, metering, security_group_rows, subnets, vpcs

#: EC2's code when there is no default VPC to launch into and no subnet was named.
NO_DEFAULT_VPC = "VPCIdNotSpecified"
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")


@dataclass(frozen=True)
class Placement:
    """Where in the VPC a launch goes: resolved once per run-instances call."""

    vpc: Vpc
    subnet: Subnet
    groups: tuple[SecurityGroup, ...]
    public_ip: bool


def resolve(s: Session, caller, subnet_id: str | None, group_ids: list[str],
            associate_public_ip: bool | None, limits) -> Placement:
    """Where a launch goes: the named subnet, else the caller's default subnet (the launch
    made sure its default VPC exists, services/vpcs.py ensure_default)."""
    subnet = (subnets.get(s, caller, subnet_id) if subnet_id
              else vpcs.default_subnet(s, caller.account_id))
    if subnet is None:
        raise InvalidParameter("no default VPC subnet for this account; name a subnet_id",
                               code=NO_DEFAULT_VPC)
    vpc = s.get(Vpc, subnet.vpc_id)
    if vpc is None:  # a subnet outlives its VPC never; a broken row is a 404, not a 500
        raise NotFound(f"subnet {subnet.subnet_id} has no VPC", code=subnets.NOT_FOUND)
    groups = security_group_rows.resolve_instance_groups(s, subnet.account_id, vpc.vpc_id,
                                                         list(group_ids), limits)
    public = (subnet.map_public_ip_on_launch if associate_public_ip is None
              else associate_public_ip)
    return Placement(vpc=vpc, subnet=subnet, groups=tuple(groups), public_ip=public)


def new_mac(taken: set[str]) -> str:
    """A random locally-unique MAC in QEMU's 52:54:00 range, not in `taken` (which it joins)."""
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            taken.add(mac)
            return mac


def taken_macs(s: Session, vpc_id: str) -> set[str]:
    return {m for m in s.exec(select(Instance.mac).where(
        Instance.vpc_id == vpc_id, Instance.state.in_(LIVE_STATES))) if m}


def attach(s: Session, inst: Instance, where: Placement, pool: str, macs: set[str],
           requested_ip: str | None = None) -> None:
    """Give a new (flushed) instance its address, MAC, groups and, if asked, a public IP."""
    inst.vpc_id, inst.subnet_id = where.vpc.vpc_id, where.subnet.subnet_id
    inst.private_ip = ipam.allocate(s, where.subnet, "instance", inst.instance_id, requested_ip)
    inst.mac = new_mac(macs)
    inst.hostname = "ip-" + inst.private_ip.replace(".", "-")
    for g in where.groups:
        s.add(InstanceSecurityGroup(instance_id=inst.instance_id, group_id=g.group_id))
    if where.public_ip:
        eip = elastic_ips.allocate_in(s, inst.account_id, pool, auto_assigned=True)
        eip.association_id = elastic_ips.new_association_id()
        eip.instance_id, eip.private_ip = inst.instance_id, inst.private_ip
        s.add(eip)


def set_groups(s: Session, inst: Instance, group_ids: list[str], limits) -> list[str]:
    """Replace the instance's security groups (EC2 ModifyInstanceAttribute groupSet): 1-5 groups
    of its own VPC and account. Hosts get the change with their next network document."""
    groups = security_group_rows.resolve_instance_groups(s, inst.account_id, inst.vpc_id,
                                                         list(group_ids), limits)
    wanted = [g.group_id for g in groups]
    current = {row.group_id: row for row in s.exec(select(InstanceSecurityGroup).where(
        InstanceSecurityGroup.instance_id == inst.instance_id))}
    for gid, row in current.items():
        if gid not in wanted:
            s.delete(row)
    for gid in wanted:
        if gid not in current:
            s.add(InstanceSecurityGroup(instance_id=inst.instance_id, group_id=gid))
    return sorted(wanted)


def release(s: Session, inst: Instance) -> None:
    """At termination: the private address goes back to the subnet, an auto-assigned public IP
    back to the pool, an elastic IP stays allocated but unassociated, the memberships go."""
    ipam.release_owner(s, inst.instance_id)
    for eip in s.exec(select(ElasticIp).where(ElasticIp.instance_id == inst.instance_id)):
        if eip.auto_assigned:
            metering.address_released(s, eip)
            s.delete(eip)
        else:
            elastic_ips.unlink(s, eip, f"instance {inst.instance_id} terminated")
    delete_all(s, select(InstanceSecurityGroup).where(
        InstanceSecurityGroup.instance_id == inst.instance_id))


def public_ips(s: Session, instance_ids: list[str]) -> dict[str, str]:
    """instance id -> its public address (an elastic IP wins over an auto-assigned one)."""
    out: dict[str, str] = {}
    if not instance_ids:
        return out
    rows = s.exec(select(ElasticIp).where(ElasticIp.instance_id.in_(instance_ids))
                  .order_by(ElasticIp.auto_assigned.desc()))
    for eip in rows:  # auto-assigned first, so an elastic IP overwrites it
        out[eip.instance_id] = eip.public_ip
    return out


def group_ids(s: Session, instance_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not instance_ids:
        return out
    for row in s.exec(select(InstanceSecurityGroup).where(
            InstanceSecurityGroup.instance_id.in_(instance_ids))
            .order_by(InstanceSecurityGroup.group_id)):
        out.setdefault(row.instance_id, []).append(row.group_id)
    return out


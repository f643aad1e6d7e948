"""Subnets: create inside the VPC's CIDR (/16../28, never overlapping another subnet of the VPC),
describe and list (with the free-address count and whether the subnet is public; both create
the caller's default VPC the first time), modify the map-public-IP-on-launch flag, delete
(refused while addresses are allocated in it)."""
from __future__ import annotations

from ipaddress import IPv4Network

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import InvalidParameter
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import IpAllocation, NatGateway, RouteTableAssociation, Subnet
from controller.models.vpc import SubnetCreate, SubnetPublic
from controller.services import ipam, pagination, route_tables, vpcs
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import dependency, owned, scoped

NOT_FOUND = "InvalidSubnetID.NotFound"
ORDER = pagination.Order(Subnet.created_at, Subnet.subnet_id)


def get(s: Session, caller, subnet_id: str) -> Subnet:
    return owned(s, caller, Subnet, subnet_id, NOT_FOUND, "subnet")


def describe(db: Database, caller, subnet_id: str) -> SubnetPublic:
    vpcs.ensure_default(db, caller.account_id)
    with db.session() as s:
        return to_public(s, get(s, caller, subnet_id))


def list_page(db: Database, caller, page: PageRequest,
              vpc_id: str | None = None) -> Page[SubnetPublic]:
    vpcs.ensure_default(db, caller.account_id)
    q = scoped(select(Subnet), Subnet, caller)
    if vpc_id:
        q = q.where(Subnet.vpc_id == vpc_id)
    with db.session() as s:
        return pagination.list_page(s, q, ORDER, page,
                                    lambda rows: [to_public(s, x) for x in rows])


def to_public(s: Session, subnet: Subnet) -> SubnetPublic:
    rtb = route_tables.effective_table(s, subnet)
    return SubnetPublic(subnet_id=subnet.subnet_id, vpc_id=subnet.vpc_id,
                        account_id=subnet.account_id, cidr_block=subnet.cidr_block,
                        state="available", default_for_az=subnet.default_for_az,
                        map_public_ip_on_launch=subnet.map_public_ip_on_launch,
                        available_ip_address_count=ipam.available_count(s, subnet),
                        route_table_id=rtb.route_table_id if rtb else "",
                        public=route_tables.is_public(s, subnet), created_at=subnet.created_at)


def create(db: Database, caller, body: SubnetCreate) -> Subnet:
    net = ipam.parse_cidr(body.cidr_block, range_code="InvalidSubnet.Range", what="subnet")
    vpcs.ensure_default(db, caller.account_id)
    with db.session() as s:
        vpc = vpcs.get(s, caller, body.vpc_id)
        vnet = IPv4Network(vpc.cidr_block)
        if not net.subnet_of(vnet):
            raise InvalidParameter(f"subnet {net} is not inside VPC {vpc.vpc_id} ({vnet})",
                                   code="InvalidSubnet.Range")
        for other in s.exec(select(Subnet).where(Subnet.vpc_id == vpc.vpc_id)):
            if net.overlaps(IPv4Network(other.cidr_block)):
                raise InvalidParameter(f"subnet {net} overlaps {other.subnet_id} "
                                       f"({other.cidr_block})", code="InvalidSubnet.Conflict",
                                       status=409)
        subnet = Subnet(subnet_id=new_id("subnet"), account_id=vpc.account_id, vpc_id=vpc.vpc_id,
                        cidr_block=str(net), map_public_ip_on_launch=body.map_public_ip_on_launch,
                        created_at=utcnow())
        s.add(subnet)
        record(s, "subnet", subnet.subnet_id, vpc.account_id, None, "available",
               f"created in {vpc.vpc_id}")
    return subnet


def modify(db: Database, caller, subnet_id: str, map_public_ip_on_launch: bool) -> Subnet:
    with db.session() as s:
        subnet = get(s, caller, subnet_id)
        if subnet.map_public_ip_on_launch != map_public_ip_on_launch:
            subnet.map_public_ip_on_launch = map_public_ip_on_launch
            s.add(subnet)
            record(s, "subnet", subnet_id, subnet.account_id, "available", "available",
                   f"map_public_ip_on_launch={str(map_public_ip_on_launch).lower()}")
    return subnet


def delete(db: Database, caller, subnet_id: str) -> SubnetPublic:
    with db.session() as s:
        subnet = get(s, caller, subnet_id)
        holders = sorted({f"{a.owner_type} {a.owner_id}" for a in s.exec(
            select(IpAllocation).where(IpAllocation.subnet_id == subnet_id))})
        nats = list(s.exec(select(NatGateway.nat_gateway_id).where(
            NatGateway.subnet_id == subnet_id, NatGateway.state != "deleted")))
        holders += [f"nat-gateway {n}" for n in nats if f"nat-gateway {n}" not in holders]
        if holders:
            raise dependency(f"subnet {subnet_id} has dependencies and cannot be deleted: "
                             + ", ".join(holders))
        out = to_public(s, subnet)
        out.state = "deleted"
        for assoc in s.exec(select(RouteTableAssociation).where(
                RouteTableAssociation.subnet_id == subnet_id)):
            s.delete(assoc)
            record(s, "route-table", assoc.route_table_id, subnet.account_id, "available",
                   "available", f"disassociated {subnet_id} (subnet deleted)")
        s.flush()
        s.delete(subnet)
        record(s, "subnet", subnet_id, subnet.account_id, "available", "deleted", "deleted")
    return out

"""Route tables: the VPC's main table (made with the VPC) and custom ones; routes to `local`, an
internet gateway or a NAT gateway; explicit subnet associations; and the derived facts other
services need: a subnet's effective table and whether the subnet is public (its table sends
0.0.0.0/0 to an internet gateway attached to its VPC).
"""
from __future__ import annotations

from ipaddress import IPv4Network

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, NotFound
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import (InternetGateway, NatGateway, Route, RouteTable,
                               RouteTableAssociation, Subnet)
from controller.models.vpc import (RouteCreate, RoutePublic, RouteTableAssociationPublic,
                                   RouteTablePublic)
from controller.services import ipam, pagination, vpcs
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import dependency, owned, scoped

NOT_FOUND = "InvalidRouteTableID.NotFound"
ASSOC_NOT_FOUND = "InvalidAssociationID.NotFound"
DEFAULT_ROUTE = "0.0.0.0/0"
ORDER = pagination.Order(RouteTable.created_at, RouteTable.route_table_id)


def get(s: Session, caller, route_table_id: str) -> RouteTable:
    return owned(s, caller, RouteTable, route_table_id, NOT_FOUND, "route table")


def describe(db: Database, caller, route_table_id: str) -> RouteTablePublic:
    with db.session() as s:
        return to_public(s, get(s, caller, route_table_id))


def list_page(db: Database, caller, page: PageRequest,
              vpc_id: str | None = None) -> Page[RouteTablePublic]:
    q = scoped(select(RouteTable), RouteTable, caller)
    if vpc_id:
        q = q.where(RouteTable.vpc_id == vpc_id)
    with db.session() as s:
        return pagination.list_page(s, q, ORDER, page,
                                    lambda rows: [to_public(s, r) for r in rows])


def routes(s: Session, route_table_id: str) -> list[Route]:
    return list(s.exec(select(Route).where(Route.route_table_id == route_table_id)
                       .order_by(Route.id)))


def effective_table(s: Session, subnet: Subnet) -> RouteTable | None:
    assoc = s.exec(select(RouteTableAssociation).where(
        RouteTableAssociation.subnet_id == subnet.subnet_id)).first()
    if assoc is not None:
        return s.get(RouteTable, assoc.route_table_id)
    return vpcs.main_table(s, subnet.vpc_id)


def route_state(s: Session, vpc_id: str, target: str) -> str:
    if target == "local":
        return "active"
    if target.startswith("igw-"):
        igw = s.get(InternetGateway, target)
        return "active" if igw is not None and igw.vpc_id == vpc_id else "blackhole"
    nat = s.get(NatGateway, target)
    return "active" if nat is not None and nat.state in ("pending", "available") else "blackhole"


def default_target(s: Session, subnet: Subnet) -> str:
    """Where the subnet's table sends 0.0.0.0/0, as the dataplane's SubnetNet.route wants it:
    "igw" (active internet gateway), "nat" (active NAT gateway) or "local" (nowhere)."""
    rtb = effective_table(s, subnet)
    if rtb is None:
        return "local"
    row = s.exec(select(Route).where(Route.route_table_id == rtb.route_table_id,
                                     Route.destination_cidr_block == DEFAULT_ROUTE)).first()
    if row is None or route_state(s, rtb.vpc_id, row.target) != "active":
        return "local"
    return "igw" if row.target.startswith("igw-") else "nat" if row.target.startswith("nat-") \
        else "local"


def is_public(s: Session, subnet: Subnet) -> bool:
    return default_target(s, subnet) == "igw"


def to_public(s: Session, rtb: RouteTable) -> RouteTablePublic:
    assocs = s.exec(select(RouteTableAssociation).where(
        RouteTableAssociation.route_table_id == rtb.route_table_id)
        .order_by(RouteTableAssociation.association_id))
    return RouteTablePublic(
        route_table_id=rtb.route_table_id, vpc_id=rtb.vpc_id, account_id=rtb.account_id,
        main=rtb.main,
        routes=[RoutePublic(destination_cidr_block=r.destination_cidr_block, target=r.target,
                            state=route_state(s, rtb.vpc_id, r.target))
                for r in routes(s, rtb.route_table_id)],
        associations=[RouteTableAssociationPublic(association_id=a.association_id,
                                                  subnet_id=a.subnet_id) for a in assocs],
        created_at=rtb.created_at)


def create(db: Database, caller, vpc_id: str) -> RouteTable:
    with db.session() as s:
        vpc = vpcs.get(s, caller, vpc_id)
        rtb = RouteTable(route_table_id=new_id("rtb"), account_id=vpc.account_id,
                         vpc_id=vpc.vpc_id, main=False, created_at=utcnow())
        s.add(rtb)
        s.flush()
        s.add(Route(route_table_id=rtb.route_table_id, destination_cidr_block=vpc.cidr_block,
                    target="local"))
        record(s, "route-table", rtb.route_table_id, vpc.account_id, None, "available", "created")
    return rtb


def _target(s: Session, rtb: RouteTable, body: RouteCreate) -> str:
    if bool(body.gateway_id) == bool(body.nat_gateway_id):
        raise InvalidParameter("give exactly one of gateway_id or nat_gateway_id")
    if body.gateway_id:
        igw = s.get(InternetGateway, body.gateway_id)
        if igw is None or igw.account_id != rtb.account_id:
            raise NotFound(f"internet gateway {body.gateway_id!r} not found",
                           code="InvalidGatewayID.NotFound")
        if igw.vpc_id != rtb.vpc_id:
            raise InvalidParameter(f"route table {rtb.route_table_id} and internet gateway "
                                   f"{igw.internet_gateway_id} belong to different networks")
        return igw.internet_gateway_id
    nat = s.get(NatGateway, body.nat_gateway_id)
    if nat is None or nat.account_id != rtb.account_id or nat.state == "deleted":
        raise NotFound(f"NAT gateway {body.nat_gateway_id!r} not found",
                       code="NatGatewayNotFound")
    if nat.vpc_id != rtb.vpc_id:
        raise InvalidParameter(f"route table {rtb.route_table_id} and NAT gateway "
                               f"{nat.nat_gateway_id} belong to different networks")
    return nat.nat_gateway_id


def add_route(db: Database, caller, route_table_id: str, body: RouteCreate) -> RouteTable:
    dest = ipam.parse_destination(body.destination_cidr_block)
    with db.session() as s:
        rtb = get(s, caller, route_table_id)
        target = _target(s, rtb, body)
        for r in routes(s, route_table_id):
            if IPv4Network(r.destination_cidr_block) == dest:
                raise Conflict(f"route {dest} already exists in {route_table_id}",
                               code="RouteAlreadyExists")
            if r.target == "local" and dest.subnet_of(IPv4Network(r.destination_cidr_block)):
                raise InvalidParameter(f"route {dest} is inside the VPC's local range "
                                       f"{r.destination_cidr_block}")
        s.add(Route(route_table_id=route_table_id, destination_cidr_block=str(dest), target=target))
        record(s, "route-table", route_table_id, rtb.account_id, "available", "available",
               f"route {dest} -> {target} added")
    return rtb


def delete_route(db: Database, caller, route_table_id: str, destination: str) -> RouteTable:
    dest = ipam.parse_destination(destination)
    with db.session() as s:
        rtb = get(s, caller, route_table_id)
        row = s.exec(select(Route).where(Route.route_table_id == route_table_id,
                                         Route.destination_cidr_block == str(dest))).first()
        if row is None:
            raise NotFound(f"no route to {dest} in {route_table_id}",
                           code="InvalidRoute.NotFound")
        if row.target == "local":
            raise InvalidParameter(f"the local route {dest} cannot be deleted")
        s.delete(row)
        record(s, "route-table", route_table_id, rtb.account_id, "available", "available",
               f"route {dest} -> {row.target} deleted")
    return rtb


def associate(db: Database, caller, route_table_id: str, subnet_id: str) -> RouteTableAssociation:
    with db.session() as s:
        rtb = get(s, caller, route_table_id)
        subnet = s.get(Subnet, subnet_id)
        if subnet is None or subnet.account_id != rtb.account_id:
            raise NotFound(f"subnet {subnet_id!r} not found", code="InvalidSubnetID.NotFound")
        if subnet.vpc_id != rtb.vpc_id:
            raise InvalidParameter(f"route table {route_table_id} and subnet {subnet_id} belong "
                                   "to different networks")
        existing = s.exec(select(RouteTableAssociation).where(
            RouteTableAssociation.subnet_id == subnet_id)).first()
        if existing is not None:
            raise Conflict(f"subnet {subnet_id} is already associated with "
                           f"{existing.route_table_id} ({existing.association_id})",
                           code="Resource.AlreadyAssociated")
        assoc = RouteTableAssociation(association_id=new_id("rtbassoc"),
                                      route_table_id=route_table_id, subnet_id=subnet_id)
        s.add(assoc)
        record(s, "route-table", route_table_id, rtb.account_id, "available", "available",
               f"associated {subnet_id} ({assoc.association_id})")
    return assoc


def disassociate(db: Database, caller, association_id: str) -> RouteTableAssociation:
    with db.session() as s:
        assoc = s.get(RouteTableAssociation, association_id)
        rtb = s.get(RouteTable, assoc.route_table_id) if assoc else None
        if rtb is None or (rtb.account_id != caller.account_id and not caller.is_admin):
            raise NotFound(f"association {association_id!r} not found", code=ASSOC_NOT_FOUND)
        s.delete(assoc)
        record(s, "route-table", rtb.route_table_id, rtb.account_id, "available", "available",
               f"disassociated {assoc.subnet_id} ({association_id})")
    return assoc


def delete(db: Database, caller, route_table_id: str) -> RouteTablePublic:
    with db.session() as s:
        rtb = get(s, caller, route_table_id)
        if rtb.main:
            raise dependency(f"{route_table_id} is the main route table of {rtb.vpc_id}")
        assocs = list(s.exec(select(RouteTableAssociation.subnet_id).where(
            RouteTableAssociation.route_table_id == route_table_id)))
        if assocs:
            raise dependency(f"{route_table_id} is associated with subnets "
                             f"{', '.join(sorted(assocs))}")
        out = to_public(s, rtb)
        for r in routes(s, route_table_id):
            s.delete(r)
        s.flush()
        s.delete(rtb)
        record(s, "route-table", route_table_id, rtb.account_id, "available", "deleted", "deleted")
    return out

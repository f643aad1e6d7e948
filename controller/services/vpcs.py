"""VPCs: create (CIDR /16../28, a main route table with its local route, a unique VNI), describe,
delete (refused while anything still lives in it; the default security group is made and
removed with it), and each account's default VPC.

Default VPC: created lazily, the first time an account touches VPC networking (any list or
describe of VPCs, subnets or security groups, or a create or launch that needs it; each of those
services calls ensure_default), like EC2's default VPC: 172.31.0.0/16,
one default subnet 172.31.0.0/20 that maps public IPs on launch, an attached internet gateway and
a main route table sending 0.0.0.0/0 to it. A marker row per account makes this happen once: a
deleted default VPC is not re-created behind the user's back.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database, delete_all
from controller.errors import Conflict
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import (DefaultVpcMarker, InternetGateway, NatGateway, Route, RouteTable,
                               RouteTableAssociation, Subnet, Vpc)
from controller.models.vpc import VpcPublic
from controller.services import ipam, pagination, security_group_rows
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import dependency, owned, scoped

NOT_FOUND = "InvalidVpcID.NotFound"
DEFAULT_CIDR = "172.31.0.0/16"
DEFAULT_SUBNET_CIDR = "172.31.0.0/20"
MIN_VNI = 1  # agent/network/names.py: 0 is not a valid VXLAN id
#: The VNI is also the VPC's conntrack zone in the firewall, and zones are 16 bits.
MAX_VNI = 65535
ORDER = pagination.Order(Vpc.created_at, Vpc.vpc_id)


def _next_vni(s: Session) -> int:
    top = s.exec(select(func.max(Vpc.vni))).one()
    vni = max(MIN_VNI, (top or 0) + 1)
    if vni > MAX_VNI:
        # Ids of deleted VPCs are not reused yet: past 65,535 creations this needs a free-list.
        raise Conflict(f"no VXLAN network identifier left (max {MAX_VNI})",
                       code="VpcLimitExceeded")
    return vni


def _insert_vpc(s: Session, account_id: str, net: IPv4Network, *, is_default: bool,
                reason: str) -> tuple[Vpc, RouteTable]:
    now = utcnow()
    for _ in range(16):
        vpc = Vpc(vpc_id=new_id("vpc"), account_id=account_id, cidr_block=str(net),
                  is_default=is_default, vni=_next_vni(s), created_at=now)
        try:
            with s.begin_nested():
                s.add(vpc)
                s.flush()
            break
        except IntegrityError:
            continue  # a concurrent create took this VNI; take the next one
    else:
        raise Conflict("could not allocate a VNI, retry", code="ConcurrentModification",
                       retryable=True)
    rtb = RouteTable(route_table_id=new_id("rtb"), account_id=account_id, vpc_id=vpc.vpc_id,
                     main=True, created_at=now)
    s.add(rtb)
    s.flush()
    s.add(Route(route_table_id=rtb.route_table_id, destination_cidr_block=str(net), target="local"))
    record(s, "vpc", vpc.vpc_id, account_id, None, "available", reason)
    record(s, "route-table", rtb.route_table_id, account_id, None, "available",
           f"main route table of {vpc.vpc_id}")
    security_group_rows.create_default(s, vpc)
    return vpc, rtb


def create(db: Database, caller, cidr_block: str) -> Vpc:
    net = ipam.parse_cidr(cidr_block, range_code="InvalidVpc.Range", what="VPC")
    ensure_default(db, caller.account_id)
    with db.session() as s:
        vpc, _ = _insert_vpc(s, caller.account_id, net, is_default=False, reason="created")
    return vpc


def ensure_default(db: Database, account_id: str) -> None:
    """Create the account's default VPC the first time (see the module docstring): the one
    entry point of every service that needs the default VPC to exist."""
    with db.session() as s:
        if s.get(DefaultVpcMarker, account_id) is not None:
            return
    try:
        with db.session() as s:
            if s.get(DefaultVpcMarker, account_id) is not None:
                return
            now = utcnow()
            vpc, rtb = _insert_vpc(s, account_id, IPv4Network(DEFAULT_CIDR), is_default=True,
                                   reason="default VPC")
            s.add(DefaultVpcMarker(account_id=account_id, vpc_id=vpc.vpc_id, created_at=now))
            subnet = Subnet(subnet_id=new_id("subnet"), account_id=account_id, vpc_id=vpc.vpc_id,
                            cidr_block=DEFAULT_SUBNET_CIDR, default_for_az=True,
                            map_public_ip_on_launch=True, created_at=now)
            igw = InternetGateway(internet_gateway_id=new_id("igw"), account_id=account_id,
                                  vpc_id=vpc.vpc_id, created_at=now)
            s.add(subnet)
            s.add(igw)
            s.flush()
            s.add(Route(route_table_id=rtb.route_table_id, destination_cidr_block="0.0.0.0/0",
                        target=igw.internet_gateway_id))
            record(s, "subnet", subnet.subnet_id, account_id, None, "available", "default subnet")
            record(s, "internet-gateway", igw.internet_gateway_id, account_id, None, "attached",
                   f"default VPC {vpc.vpc_id}")
            s.flush()
    except IntegrityError:
        return  # a concurrent request created it (the marker's primary key decided)


def default_vpc(s: Session, account_id: str) -> Vpc | None:
    """The account's default VPC; None before ensure_default() or after its deletion."""
    marker = s.get(DefaultVpcMarker, account_id)
    return s.get(Vpc, marker.vpc_id) if marker is not None else None


def default_subnet(s: Session, account_id: str) -> Subnet | None:
    """The default VPC's default subnet, where launches naming no subnet go."""
    vpc = default_vpc(s, account_id)
    if vpc is None:
        return None
    return s.exec(select(Subnet).where(Subnet.vpc_id == vpc.vpc_id,
                                       Subnet.default_for_az == True)  # noqa: E712
                  .order_by(Subnet.created_at)).first()


def get(s: Session, caller, vpc_id: str) -> Vpc:
    return owned(s, caller, Vpc, vpc_id, NOT_FOUND, "VPC")


def describe(db: Database, caller, vpc_id: str) -> VpcPublic:
    ensure_default(db, caller.account_id)
    with db.session() as s:
        return to_public(s, get(s, caller, vpc_id))


def list_page(db: Database, caller, page: PageRequest) -> Page[VpcPublic]:
    ensure_default(db, caller.account_id)
    with db.session() as s:
        return pagination.list_page(s, scoped(select(Vpc), Vpc, caller), ORDER, page,
                                    lambda rows: [to_public(s, v) for v in rows])


def main_table(s: Session, vpc_id: str) -> RouteTable | None:
    return s.exec(select(RouteTable).where(RouteTable.vpc_id == vpc_id,
                                           RouteTable.main == True)).first()  # noqa: E712


def attached_igw(s: Session, vpc_id: str) -> InternetGateway | None:
    return s.exec(select(InternetGateway).where(InternetGateway.vpc_id == vpc_id)).first()


def to_public(s: Session, vpc: Vpc) -> VpcPublic:
    main = main_table(s, vpc.vpc_id)
    igw = attached_igw(s, vpc.vpc_id)
    return VpcPublic(vpc_id=vpc.vpc_id, account_id=vpc.account_id, cidr_block=vpc.cidr_block,
                     state="available", is_default=vpc.is_default,
                     main_route_table_id=main.route_table_id if main else None,
                     internet_gateway_id=igw.internet_gateway_id if igw else None,
                     created_at=vpc.created_at)


def delete(db: Database, caller, vpc_id: str) -> VpcPublic:
    with db.session() as s:
        vpc = get(s, caller, vpc_id)
        reasons = []
        subnets = list(s.exec(select(Subnet.subnet_id).where(Subnet.vpc_id == vpc_id)))
        if subnets:
            reasons.append(f"subnets {', '.join(sorted(subnets))}")
        igw = attached_igw(s, vpc_id)
        if igw is not None:
            reasons.append(f"internet gateway {igw.internet_gateway_id} attached")
        tables = list(s.exec(select(RouteTable.route_table_id).where(
            RouteTable.vpc_id == vpc_id, RouteTable.main == False)))  # noqa: E712
        if tables:
            reasons.append(f"route tables {', '.join(sorted(tables))}")
        nats = list(s.exec(select(NatGateway.nat_gateway_id).where(
            NatGateway.vpc_id == vpc_id, NatGateway.state != "deleted")))
        if nats:
            reasons.append(f"NAT gateways {', '.join(sorted(nats))}")
        reasons.extend(security_group_rows.vpc_dependencies(s, vpc_id))
        if reasons:
            raise dependency(f"VPC {vpc_id} has dependencies and cannot be deleted: "
                             + "; ".join(reasons))
        out = to_public(s, vpc)
        out.state = "deleted"
        for rtb in s.exec(select(RouteTable).where(RouteTable.vpc_id == vpc_id)).all():
            delete_all(s, select(Route).where(Route.route_table_id == rtb.route_table_id))
            delete_all(s, select(RouteTableAssociation).where(
                RouteTableAssociation.route_table_id == rtb.route_table_id))
            s.flush()
            s.delete(rtb)
            record(s, "route-table", rtb.route_table_id, vpc.account_id, "available", "deleted",
                   f"VPC {vpc_id} deleted")
        security_group_rows.delete_for_vpc(s, vpc)  # the default group goes with its VPC
        s.flush()
        s.delete(vpc)
        record(s, "vpc", vpc_id, vpc.account_id, "available", "deleted", "deleted")
    return out

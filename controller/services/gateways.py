"""Internet gateways (create, attach to one VPC, detach, delete) and NAT gateways (create in a
public subnet with an elastic IP, delete).

NAT gateway states: pending -> available -> deleting -> deleted. "available" means its private
address and elastic IP are bound; host_networks.place_nat_gateways then gives it a live host (one
already carrying the VPC when there is one; a gateway whose host goes down moves) and the
reconciler pushes it to that host's dataplane and, as a route target, to every host of the VPC.
A VPC has at most one live NAT gateway (NatGatewayLimitExceeded).
"""
from __future__ import annotations

from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, InvalidParameter, KumoError, NotFound
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import ElasticIp, InternetGateway, NatGateway, Vpc
from controller.models.vpc import InternetGatewayPublic, NatGatewayPublic
from controller.services import ipam, metering, pagination, route_tables, subnets, vpcs
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import dependency, owned, scoped

IGW_NOT_FOUND = "InvalidInternetGatewayID.NotFound"
NAT_NOT_FOUND = "NatGatewayNotFound"
NAT_CONFIGURED = "address and elastic IP bound; carried by a host of the VPC"
#: A NAT gateway that is (or is becoming) a route target.
NAT_LIVE = ("pending", "available")
IGW_ORDER = pagination.Order(InternetGateway.created_at, InternetGateway.internet_gateway_id)
NAT_ORDER = pagination.Order(NatGateway.created_at, NatGateway.nat_gateway_id)


class NatGatewayLimitExceeded(KumoError):
    """One live NAT gateway per VPC: the dataplane sends every subnet routed to a NAT gateway
    through the VPC's one gateway, so a second one would be a route target that is not honoured
    (traffic would leave through the first with its address)."""
    code, status = "NatGatewayLimitExceeded", 400


# -- internet gateways -------------------------------------------------------------------------
def igw_get(s: Session, caller, igw_id: str) -> InternetGateway:
    return owned(s, caller, InternetGateway, igw_id, IGW_NOT_FOUND, "internet gateway")


def igw_list_page(db: Database, caller, page: PageRequest) -> Page[InternetGatewayPublic]:
    q = scoped(select(InternetGateway), InternetGateway, caller)
    with db.session() as s:
        return pagination.list_page(s, q, IGW_ORDER, page,
                                    lambda rows: [igw_public(g) for g in rows])


def igw_public(igw: InternetGateway) -> InternetGatewayPublic:
    return InternetGatewayPublic(internet_gateway_id=igw.internet_gateway_id,
                                 account_id=igw.account_id, vpc_id=igw.vpc_id,
                                 state="attached" if igw.vpc_id else "available",
                                 created_at=igw.created_at)


def igw_create(db: Database, caller) -> InternetGateway:
    with db.session() as s:
        igw = InternetGateway(internet_gateway_id=new_id("igw"), account_id=caller.account_id,
                              created_at=utcnow())
        s.add(igw)
        record(s, "internet-gateway", igw.internet_gateway_id, caller.account_id, None,
               "available", "created")
    return igw


def igw_attach(db: Database, caller, igw_id: str, vpc_id: str) -> InternetGateway:
    with db.session() as s:
        igw = igw_get(s, caller, igw_id)
        vpc = s.get(Vpc, vpc_id)
        if vpc is None or vpc.account_id != igw.account_id:
            raise NotFound(f"VPC {vpc_id!r} not found", code=vpcs.NOT_FOUND)
        if igw.vpc_id is not None:
            raise Conflict(f"{igw_id} is already attached to {igw.vpc_id}",
                           code="Resource.AlreadyAssociated")
        other = vpcs.attached_igw(s, vpc_id)
        if other is not None:
            raise Conflict(f"{vpc_id} already has internet gateway {other.internet_gateway_id}",
                           code="Resource.AlreadyAssociated")
        igw.vpc_id = vpc_id
        s.add(igw)
        record(s, "internet-gateway", igw_id, igw.account_id, "available", "attached",
               f"attached to {vpc_id}")
    return igw


def igw_detach(db: Database, caller, igw_id: str, vpc_id: str) -> InternetGateway:
    with db.session() as s:
        igw = igw_get(s, caller, igw_id)
        vpc = s.get(Vpc, vpc_id)
        if vpc is None or vpc.account_id != igw.account_id:
            raise NotFound(f"VPC {vpc_id!r} not found", code=vpcs.NOT_FOUND)
        if igw.vpc_id != vpc_id:
            raise InvalidParameter(f"{igw_id} is not attached to {vpc_id}",
                                   code="Gateway.NotAttached")
        nats = list(s.exec(select(NatGateway.nat_gateway_id).where(
            NatGateway.vpc_id == vpc_id, NatGateway.state != "deleted")))
        if nats:
            raise dependency(f"{vpc_id} has mapped public addresses (NAT gateways "
                             f"{', '.join(sorted(nats))}); delete them first")
        igw.vpc_id = None
        s.add(igw)
        record(s, "internet-gateway", igw_id, igw.account_id, "attached", "available",
               f"detached from {vpc_id}")
    return igw


def igw_delete(db: Database, caller, igw_id: str) -> InternetGatewayPublic:
    with db.session() as s:
        igw = igw_get(s, caller, igw_id)
        if igw.vpc_id is not None:
            raise dependency(f"{igw_id} is attached to {igw.vpc_id}; detach it first")
        out = igw_public(igw)
        out.state = "deleted"
        s.delete(igw)
        record(s, "internet-gateway", igw_id, igw.account_id, "available", "deleted", "deleted")
    return out


# -- NAT gateways ------------------------------------------------------------------------------
def nat_get(s: Session, caller, nat_id: str) -> NatGateway:
    return owned(s, caller, NatGateway, nat_id, NAT_NOT_FOUND, "NAT gateway")


def nat_list_page(db: Database, caller, page: PageRequest,
                  vpc_id: str | None = None) -> Page[NatGatewayPublic]:
    q = scoped(select(NatGateway), NatGateway, caller)
    if vpc_id:
        q = q.where(NatGateway.vpc_id == vpc_id)
    with db.session() as s:
        return pagination.list_page(s, q, NAT_ORDER, page,
                                    lambda rows: [nat_public(n) for n in rows])


def nat_public(nat: NatGateway) -> NatGatewayPublic:
    return NatGatewayPublic.model_validate(nat, from_attributes=True)


def nat_create(db: Database, caller, subnet_id: str, allocation_id: str) -> NatGateway:
    with db.session() as s:
        subnet = subnets.get(s, caller, subnet_id)
        eip = s.get(ElasticIp, allocation_id)
        if eip is None or eip.account_id != subnet.account_id:
            raise NotFound(f"allocation {allocation_id!r} not found",
                           code="InvalidAllocationID.NotFound")
        if eip.association_id is not None or eip.nat_gateway_id is not None:
            raise Conflict(f"{allocation_id} is already associated "
                           f"({eip.instance_id or eip.nat_gateway_id})",
                           code="Resource.AlreadyAssociated")
        if not route_tables.is_public(s, subnet):
            raise InvalidParameter(f"subnet {subnet_id} is not public (its route table does not "
                                   "send 0.0.0.0/0 to an attached internet gateway)")
        live = s.exec(select(NatGateway).where(NatGateway.vpc_id == subnet.vpc_id,
                                               NatGateway.state.in_(NAT_LIVE))).first()
        if live is not None:  # writers are serialised (db.py), so check-then-insert is race-free
            raise NatGatewayLimitExceeded(f"{subnet.vpc_id} already has NAT gateway "
                                          f"{live.nat_gateway_id}; a VPC has at most one")
        nat = NatGateway(nat_gateway_id=new_id("nat"), account_id=subnet.account_id,
                         vpc_id=subnet.vpc_id, subnet_id=subnet_id, allocation_id=allocation_id,
                         public_ip=eip.public_ip, state="pending", created_at=utcnow())
        nat.private_ip = ipam.allocate(s, subnet, "nat-gateway", nat.nat_gateway_id)
        eip.nat_gateway_id = nat.nat_gateway_id
        eip.association_id = new_id("eipassoc")
        eip.private_ip = nat.private_ip
        s.add(eip)
        s.add(nat)
        metering.nat_created(s, nat, nat.created_at)
        record(s, "nat-gateway", nat.nat_gateway_id, nat.account_id, None, "pending",
               f"created in {subnet_id} with {allocation_id}")
        record(s, "elastic-ip", allocation_id, eip.account_id, "allocated", "associated",
               f"NAT gateway {nat.nat_gateway_id}")
    with db.session() as s:
        nat = s.get(NatGateway, nat.nat_gateway_id)
        if nat.state == "pending":  # not if a delete got in between
            nat.state, nat.state_message = "available", NAT_CONFIGURED
            s.add(nat)
            record(s, "nat-gateway", nat.nat_gateway_id, nat.account_id, "pending", "available",
                   NAT_CONFIGURED)
    return nat


def nat_delete(db: Database, caller, nat_id: str) -> NatGateway:
    """Idempotent: deleting a deleted NAT gateway returns it unchanged (EC2 keeps them listed)."""
    with db.session() as s:
        nat = nat_get(s, caller, nat_id)
        if nat.state == "deleted":
            return nat
        record(s, "nat-gateway", nat_id, nat.account_id, nat.state, "deleting", "delete requested")
        ipam.release_owner(s, nat_id)
        eip = s.get(ElasticIp, nat.allocation_id) if nat.allocation_id else None
        if eip is not None and eip.nat_gateway_id == nat_id:
            eip.nat_gateway_id = eip.association_id = eip.private_ip = None
            s.add(eip)
            record(s, "elastic-ip", eip.allocation_id, eip.account_id, "associated", "allocated",
                   f"NAT gateway {nat_id} deleted")
        nat.state, nat.state_message, nat.deleted_at = "deleted", None, utcnow()
        metering.nat_deleted(s, nat, nat.deleted_at)
        s.add(nat)
        record(s, "nat-gateway", nat_id, nat.account_id, "deleting", "deleted", "deleted")
    return nat

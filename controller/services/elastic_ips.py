"""Elastic IPs: allocate from the deployment's public pool (settings.public_pool), associate with
an instance of the same account (optionally naming its private address), disassociate, release.

EC2 semantics: releasing an associated address fails with InvalidIPAddress.InUse; associating an
address that is already associated needs allow_reassociation; another account's instance answers
InvalidInstanceID.NotFound. Terminating an instance unlinks its elastic IPs
(instance_network.release); an association whose instance vanished otherwise is dropped when this
service next looks at the address.

Auto-assigned public IPs (run-instances in a subnet that maps public IPs on launch) are rows of
the same table with auto_assigned set, so one unique constraint keeps the pool consistent. They
are not the user's to see or release: describe-addresses hides them; associating an elastic IP
with the instance replaces its auto-assigned address (as in EC2), and termination frees it.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import Database
from controller.errors import Conflict, IncorrectState, InvalidParameter, KumoError, NotFound
from controller.events import record
from controller.ids import new_id, utcnow
from controller.models import ElasticIp, Instance
from controller.models.vpc import AddressAssociate, ElasticIpPublic
from controller.services import metering, pagination
from controller.services.spec_generation import bump
from controller.services.pagination import Page, PageRequest
from controller.services.scoping import owned, scoped

NOT_FOUND = "InvalidAllocationID.NotFound"
INSTANCE_NOT_FOUND = "InvalidInstanceID.NotFound"
GONE_STATES = ("shutting-down", "terminated")
ORDER = pagination.Order(ElasticIp.created_at, ElasticIp.allocation_id)


class AddressLimitExceeded(KumoError):
    code, status = "AddressLimitExceeded", 400


def pool_addresses(pool: str) -> list[str]:
    """The allocatable addresses of the pool, lowest first."""
    net = IPv4Network(pool, strict=True)
    skip = {net.network_address, net.broadcast_address, net.network_address + 1}
    return [str(a) for a in (IPv4Address(n) for n in range(int(net.network_address),
                                                           int(net.broadcast_address) + 1))
            if a not in skip]


def new_association_id() -> str:
    return new_id("eipassoc")


def _republish(s: Session, instance_id: str | None) -> None:
    """The instance's public address changed: push its spec again, so the metadata service
    (meta-data/public-ipv4, the network interface's public address) says so at once."""
    inst = s.get(Instance, instance_id) if instance_id else None
    if inst is not None and inst.state not in GONE_STATES:
        bump(inst)
        s.add(inst)


def unlink(s: Session, eip: ElasticIp, reason: str) -> None:
    _republish(s, eip.instance_id)
    if eip.auto_assigned:  # never an allocation of its own: back to the pool
        metering.address_released(s, eip)
        s.delete(eip)
        return
    eip.association_id = eip.instance_id = eip.private_ip = None
    s.add(eip)
    record(s, "elastic-ip", eip.allocation_id, eip.account_id, "associated", "allocated", reason)


def _drop_stale(s: Session, eip: ElasticIp) -> None:
    if eip.instance_id is None:
        return
    inst = s.get(Instance, eip.instance_id)
    if inst is None or inst.state in GONE_STATES:
        unlink(s, eip, f"instance {eip.instance_id} terminated")


def _fresh(s: Session, eip: ElasticIp) -> ElasticIp:
    _drop_stale(s, eip)
    return eip


def to_public(eip: ElasticIp) -> ElasticIpPublic:
    return ElasticIpPublic.model_validate(eip, from_attributes=True)


def get(s: Session, caller, allocation_id: str) -> ElasticIp:
    eip = owned(s, caller, ElasticIp, allocation_id, NOT_FOUND, "allocation")
    if eip.auto_assigned:
        raise NotFound(f"allocation {allocation_id!r} not found", code=NOT_FOUND)
    _drop_stale(s, eip)
    return eip


def list_page(db: Database, caller, page: PageRequest) -> Page[ElasticIpPublic]:
    """The caller's elastic IPs (auto-assigned public IPs are not the user's to see); a listed
    address whose instance is gone loses the association first."""
    q = (scoped(select(ElasticIp), ElasticIp, caller)
         .where(ElasticIp.auto_assigned == False))  # noqa: E712
    with db.session() as s:
        return pagination.list_page(s, q, ORDER, page,
                                    lambda rows: [to_public(_fresh(s, e)) for e in rows])


def allocate(db: Database, caller, pool: str) -> ElasticIp:
    with db.session() as s:
        return allocate_in(s, caller.account_id, pool)


def allocate_in(s: Session, account_id: str, pool: str, auto_assigned: bool = False) -> ElasticIp:
    """Take the lowest free pool address inside the caller's transaction."""
    taken = set(s.exec(select(ElasticIp.public_ip)))
    for addr in pool_addresses(pool):
        if addr in taken:
            continue
        eip = ElasticIp(allocation_id=new_id("eipalloc"), account_id=account_id,
                        public_ip=addr, auto_assigned=auto_assigned, created_at=utcnow())
        try:
            with s.begin_nested():
                s.add(eip)
                s.flush()
        except IntegrityError:
            continue  # taken concurrently: the unique public_ip decided; try the next
        metering.address_allocated(s, eip, eip.created_at)  # billed idle or in use
        record(s, "elastic-ip", eip.allocation_id, account_id, None, "allocated",
               f"{'auto-assigned' if auto_assigned else 'allocated'} {addr}")
        return eip
    raise AddressLimitExceeded(f"the public pool {pool} has no free address left")


def associate(db: Database, caller, allocation_id: str, body: AddressAssociate) -> ElasticIp:
    with db.session() as s:
        eip = get(s, caller, allocation_id)
        inst = s.get(Instance, body.instance_id)
        if inst is None or inst.account_id != eip.account_id:
            raise NotFound(f"instance {body.instance_id!r} not found", code=INSTANCE_NOT_FOUND)
        if inst.state in GONE_STATES:
            raise IncorrectState(f"instance {inst.instance_id} is {inst.state}")
        if inst.private_ip is None:
            raise IncorrectState(f"instance {inst.instance_id} has no private address yet")
        if body.private_ip is not None:
            try:
                wanted = str(IPv4Address(body.private_ip))
            except ValueError:
                raise InvalidParameter(f"invalid IPv4 address {body.private_ip!r}") from None
            if wanted != inst.private_ip:
                raise InvalidParameter(f"{wanted} is not a private address of "
                                       f"{inst.instance_id}")
        if eip.nat_gateway_id is not None:
            raise Conflict(f"{allocation_id} is used by NAT gateway {eip.nat_gateway_id}",
                           code="Resource.AlreadyAssociated")
        if eip.instance_id == inst.instance_id:
            return eip  # already exactly this association: nothing to change
        mapped = [e for e in s.exec(select(ElasticIp).where(
            ElasticIp.instance_id == inst.instance_id)) if e.allocation_id != allocation_id]
        for e in [e for e in mapped if e.auto_assigned]:
            unlink(s, e, f"replaced by elastic IP {allocation_id}")  # EC2 frees it silently
        other = [e for e in mapped if not e.auto_assigned]
        if (eip.instance_id is not None or other) and not body.allow_reassociation:
            raise Conflict(f"{allocation_id} or {inst.instance_id} is already associated; pass "
                           "allow_reassociation to move it", code="Resource.AlreadyAssociated")
        for e in other:
            unlink(s, e, f"moved: {allocation_id} associated with {inst.instance_id}")
        if eip.instance_id is not None:
            unlink(s, eip, f"reassociated to {inst.instance_id}")
        eip.association_id = new_association_id()
        eip.instance_id, eip.private_ip = inst.instance_id, inst.private_ip
        s.add(eip)
        _republish(s, inst.instance_id)
        record(s, "elastic-ip", allocation_id, eip.account_id, "allocated", "associated",
               f"{eip.public_ip} -> {inst.instance_id} ({inst.private_ip}) {eip.association_id}")
    return eip


def disassociate(db: Database, caller, allocation_id: str) -> ElasticIp:
    with db.session() as s:
        eip = get(s, caller, allocation_id)
        if eip.nat_gateway_id is not None:
            raise Conflict(f"{allocation_id} belongs to NAT gateway {eip.nat_gateway_id}; delete "
                           "the NAT gateway instead", code="InvalidIPAddress.InUse")
        if eip.instance_id is None:
            raise NotFound(f"{allocation_id} is not associated",
                           code="InvalidAssociationID.NotFound")
        unlink(s, eip, f"disassociated from {eip.instance_id}")
    return eip


def release(db: Database, caller, allocation_id: str) -> ElasticIpPublic:
    with db.session() as s:
        eip = get(s, caller, allocation_id)
        if eip.association_id is not None:
            raise Conflict(f"{eip.public_ip} is associated with "
                           f"{eip.instance_id or eip.nat_gateway_id}; disassociate it first",
                           code="InvalidIPAddress.InUse")
        out = to_public(eip)
        metering.address_released(s, eip)
        s.delete(eip)
        record(s, "elastic-ip", allocation_id, eip.account_id, "allocated", "released",
               f"released {eip.public_ip}")
    return out

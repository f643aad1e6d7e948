"""IPAM: CIDR rules for VPCs and subnets, and private-address allocation inside a subnet.

The pure part (parse_cidr, reserved, usable_count, check_requested, pick) has no database and is
unit-tested on its own. allocate()/release() run inside the caller's transaction; the unique
constraint on (subnet_id, address) is the final word, so two concurrent allocations can never
hand out one address: a conflicting insert is rolled back to a savepoint and the next free
address is tried.
"""
from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import delete_all
from controller.errors import InvalidParameter, KumoError
from controller.ids import utcnow
from controller.models import IpAllocation, Subnet

MIN_PREFIX, MAX_PREFIX = 16, 28
#: AWS reserves the network address, .1 (router), .2 (DNS), .3 (future use) and the broadcast.
RESERVED_LOW = 4
CONFLICT_RETRIES = 64


class AddressExhausted(KumoError):
    code, status, retryable = "InsufficientFreeAddressesInSubnet", 409, False


def parse_cidr(text: str, *, range_code: str, what: str) -> IPv4Network:
    """A /16../28 IPv4 network written exactly (no host bits). Malformed -> InvalidParameterValue;
    a well-formed prefix outside the range -> `range_code` (InvalidVpc.Range/InvalidSubnet.Range)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise InvalidParameter(f"invalid {what} CIDR {text!r}: {e}") from None
    if not isinstance(net, IPv4Network) or "/" not in text:
        raise InvalidParameter(f"invalid {what} CIDR {text!r}: an IPv4 network with a prefix length "
                               "is required")
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise InvalidParameter(f"{what} CIDR {net} must be between /{MIN_PREFIX} and /{MAX_PREFIX}",
                               code=range_code)
    return net


def parse_destination(text: str) -> IPv4Network:
    """A route destination: any IPv4 network (0.0.0.0/0 included), written without host bits."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise InvalidParameter(f"invalid destination CIDR {text!r}: {e}") from None
    if not isinstance(net, IPv4Network) or "/" not in text:
        raise InvalidParameter(f"invalid destination CIDR {text!r}: IPv4 network with prefix length")
    return net


def router_ip(net: IPv4Network) -> IPv4Address:
    return net.network_address + 1


def reserved(net: IPv4Network) -> set[IPv4Address]:
    base = net.network_address
    return {base + i for i in range(RESERVED_LOW)} | {net.broadcast_address}


def usable_count(net: IPv4Network) -> int:
    return net.num_addresses - RESERVED_LOW - 1


def check_requested(net: IPv4Network, text: str, used: Iterable[str]) -> str:
    """Validate a requested address: well-formed, inside the subnet, not reserved, not used."""
    try:
        addr = IPv4Address(text.strip())
    except ValueError:
        raise InvalidParameter(f"invalid IPv4 address {text!r}") from None
    if addr not in net:
        raise InvalidParameter(f"address {addr} is not in subnet {net}")
    if addr in reserved(net):
        raise InvalidParameter(f"address {addr} is reserved in subnet {net}")
    if str(addr) in set(used):
        raise InvalidParameter(f"address {addr} is already in use", code="InvalidIPAddress.InUse",
                               status=409)
    return str(addr)


def pick(net: IPv4Network, used: Iterable[str]) -> str | None:
    """The lowest free, non-reserved address of `net`, or None when the subnet is full."""
    taken = set(used)
    first = int(net.network_address) + RESERVED_LOW
    last = int(net.broadcast_address) - 1
    for n in range(first, last + 1):
        text = str(IPv4Address(n))
        if text not in taken:
            return text
    return None


# -- database-bound ----------------------------------------------------------------------------
def used_addresses(s: Session, subnet_id: str) -> set[str]:
    return set(s.exec(select(IpAllocation.address).where(IpAllocation.subnet_id == subnet_id)))


def allocate(s: Session, subnet: Subnet, owner_type: str, owner_id: str,
             requested: str | None = None) -> str:
    """Take one address of `subnet` for (owner_type, owner_id) inside the caller's transaction."""
    net = IPv4Network(subnet.cidr_block)
    used = used_addresses(s, subnet.subnet_id)
    if requested is not None:
        candidates = [check_requested(net, requested, used)]
    else:
        candidates = None
    for _ in range(CONFLICT_RETRIES):
        if candidates is not None:
            if not candidates:
                raise InvalidParameter(f"address {requested} is already in use",
                                       code="InvalidIPAddress.InUse", status=409)
            addr = candidates.pop()
        else:
            addr = pick(net, used)
            if addr is None:
                raise AddressExhausted(f"no free address left in subnet {subnet.subnet_id} "
                                       f"({net})")
        row = IpAllocation(subnet_id=subnet.subnet_id, address=addr, owner_type=owner_type,
                           owner_id=owner_id, created_at=utcnow())
        try:
            with s.begin_nested():
                s.add(row)
                s.flush()
            return addr
        except IntegrityError:
            # Someone committed this address between our read and our insert: try the next.
            used.add(addr)
    raise AddressExhausted(f"could not allocate in subnet {subnet.subnet_id}: too much contention",
                           retryable=True)


def release(s: Session, subnet_id: str, address: str) -> bool:
    row = s.exec(select(IpAllocation).where(IpAllocation.subnet_id == subnet_id,
                                            IpAllocation.address == address)).first()
    if row is None:
        return False
    s.delete(row)
    return True


def release_owner(s: Session, owner_id: str) -> int:
    return delete_all(s, select(IpAllocation).where(IpAllocation.owner_id == owner_id))


def available_count(s: Session, subnet: Subnet) -> int:
    return usable_count(IPv4Network(subnet.cidr_block)) - len(used_addresses(s, subnet.subnet_id))

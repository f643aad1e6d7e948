"""Deterministic kernel names and MAC addresses derived from VPC ids and VNIs.

Every interface Kumo's dataplane creates is `k<role>-<vni as 6 hex digits>` (9 characters, under
Linux's 15-character limit), so ownership is recognisable from the name alone and two VPCs never
collide on one host. Router MACs are derived from ids (not random) so every host presents the same
router MAC for a VPC: a guest's ARP cache stays valid wherever the router answers.
"""
from __future__ import annotations

import hashlib
import re

from agent import validators

#: Roles: b bridge, x vxlan, q bridge side of the router veth, r router side (in the VPC
#: router namespace), t host side of the transit veth, u router side of it, g bridge side of the
#: NAT gateway veth, n its router side.
ROLES = "bxqrtugn"
OWNED_LINK_RE = re.compile(r"^k[bxqrtugn]-[0-9a-f]{6}$")
HOST_LINK_RE = re.compile(r"^k[bxqtg]-[0-9a-f]{6}$")
IFNAME_RE = validators.IFNAME_RE  # one definition of a safe interface name
NETNS_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
MAX_VNI = (1 << 24) - 1
#: Reserved VNIs are never handed to a VPC (0 is invalid in VXLAN).
MIN_VNI = 1

#: Router-namespace addresses of the transit link (host side / router side): link-local, the same
#: in every VPC because each transit veth is a separate point-to-point link.
TRANSIT_HOST_IP = "169.254.0.1"
TRANSIT_ROUTER_IP = "169.254.0.2"
#: Policy routing tables inside a VPC router namespace.
TABLE_IGW = 100
TABLE_NAT = 101
RULE_PRIORITY = 1000
#: Route protocol number marking Kumo's routes in the host namespace (see /etc/iproute2/rt_protos).
RTPROT_KUMO = 0x4B
VXLAN_PORT = 4789
NFT_TABLE = "kumo_nat"


def link_name(role: str, vni: int) -> str:
    if len(role) != 1 or role not in ROLES:
        raise ValueError(f"unknown link role {role!r}")
    if not MIN_VNI <= vni <= MAX_VNI:
        raise ValueError(f"VNI {vni} out of range")
    return f"k{role}-{vni:06x}"


def bridge(vni: int) -> str:
    return link_name("b", vni)


def vxlan(vni: int) -> str:
    return link_name("x", vni)


def vni_of(name: str) -> int | None:
    """The VNI encoded in an owned link name, None for foreign names."""
    if not OWNED_LINK_RE.match(name):
        return None
    return int(name[3:], 16)


def router_netns(host_tag: str, vni: int) -> str:
    """Name of the VPC router namespace of `vni` on the host tagged `host_tag`.

    Namespace names are global on a machine, and the lab runs several hosts on one machine, so
    the host's tag is part of the name."""
    if not NETNS_TAG_RE.match(host_tag):
        raise ValueError(f"bad host tag {host_tag!r}")
    return f"{host_tag}-kvr-{vni:06x}"


def router_netns_prefix(host_tag: str) -> str:
    return f"{host_tag}-kvr-"


def _mac(kind: str, ident: str) -> str:
    digest = hashlib.sha256(f"kumo-{kind}:{ident}".encode()).digest()
    # 0x02: locally administered, unicast. Second byte marks the kind so the spaces never meet.
    tag = {"router": 0xA0, "natgw": 0xA1, "bridge": 0xA2}[kind]
    octets = [0x02, tag, *digest[:4]]
    return ":".join(f"{o:02x}" for o in octets)


def router_mac(vpc_id: str) -> str:
    return _mac("router", vpc_id)


def natgw_mac(nat_gateway_id: str) -> str:
    return _mac("natgw", nat_gateway_id)


def bridge_mac(underlay_ip: str, vni: int) -> str:
    """The fixed MAC of a host's VPC bridge. A bridge left to itself takes the lowest MAC of its
    ports and changes it whenever that port leaves (a NAT gateway leg moving away, a guest's tap
    going), and the kernel flushes every neighbour entry of a device whose address changes,
    permanent ones too (NETDEV_CHANGEADDR -> neigh_changeaddr): the pushed entries for remote
    guests and routers would vanish until the next full resync. An address set explicitly is
    kept (br_stp_recalculate_bridge_id leaves NET_ADDR_SET alone). It never leaves the host (the
    bridge has no address of its own), so it only needs to be stable."""
    return _mac("bridge", f"{underlay_ip}/{vni}")

"""The interim flat network (until VPCs): one bridge per host and a per-host /24 slice of
10.200.0.0/16. Host k owns 10.200.k.0/24 with its router at .1; instances get .10 and up.
MACs are 52:54:00:xx:xx:xx, unique among live instances. Allocation runs inside the caller's
placement transaction, so two launches can never take the same address.
"""
from __future__ import annotations

import ipaddress
import secrets

from sqlmodel import Session, select

from controller.errors import InsufficientCapacity
from controller.models import Host, Instance

BRIDGE = "kumobr0"
POOL = ipaddress.IPv4Network("10.200.0.0/16")
FIRST_HOST_OCTET = 10
MAX_HOST_INDEX = 255


def host_subnet(net_index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.200.{net_index}.0/24")


def router(net_index: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"10.200.{net_index}.1/24")


def next_host_index(s: Session) -> int:
    used = set(s.exec(select(Host.net_index)))
    for k in range(1, MAX_HOST_INDEX + 1):
        if k not in used:
            return k
    raise RuntimeError("no free host network slice left in 10.200.0.0/16")


def _live(s: Session):
    return s.exec(select(Instance.private_ip, Instance.mac, Instance.host_id)
                  .where(Instance.state != "terminated"))


def allocate(s: Session, host: Host, taken_ips: set[str], taken_macs: set[str]) -> tuple[str, str]:
    """An unused (ip, mac) on `host`; the sets carry allocations not yet flushed by the caller."""
    for ip, mac, _ in _live(s):
        if ip:
            taken_ips.add(ip)
        if mac:
            taken_macs.add(mac)
    net = host_subnet(host.net_index)
    ip = None
    for addr in net.hosts():
        if int(addr) - int(net.network_address) < FIRST_HOST_OCTET:
            continue
        if str(addr) not in taken_ips:
            ip = str(addr)
            break
    if ip is None:
        raise InsufficientCapacity(f"no free address on host {host.host_id}")
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken_macs:
            break
    taken_ips.add(ip)
    taken_macs.add(mac)
    return ip, mac


def hostname_for(ip: str) -> str:
    return "ip-" + ip.replace(".", "-")


def nic_fields(inst: Instance, host: Host) -> dict:
    """Fields of the agent's NicSpec for this instance's single NIC."""
    return {
        "device": "eth0", "mac": inst.mac, "bridge": BRIDGE,
        "address": f"{inst.private_ip}/24", "gateway": str(router(host.net_index).ip),
        "nameservers": [], "router": str(router(host.net_index)),
    }

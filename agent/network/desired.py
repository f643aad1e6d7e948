"""Pure translation of a HostNetwork into the set of kernel records one host must carry.

Layout per VPC (VNI n, names from agent.network.names), chosen because this kernel has no VRF
support (`ip link add x type vrf` -> "Unknown device type"), so each VPC's L3 lives in its own
router namespace, the way Neutron's qrouter namespaces do it:

  host namespace (L2 only, no VPC address):
    kb-n  bridge with a fixed MAC (names.bridge_mac: one that follows its ports would flush the
          neighbours below whenever a port leaves); guest taps join it
    kx-n  vxlan VNI n, local = underlay IP, dev = underlay, dstport 4789, nolearning; bridge port
          with learning off and neigh_suppress on; static fdb: 00:00:00:00:00:00 -> every remote
          host of the VPC (BUM), MAC -> host per remote port, plus master static entries
    kq-n  bridge side of the router veth (static fdb for the router MAC, neigh_suppress on)
    kt-n  host side of the transit veth, 169.254.0.1/32; public /32 routes point through it
    kg-n  bridge side of the NAT gateway veth (only on the NAT gateway's host)
    permanent neighbours on kb-n for remote ports, router and NAT gateway addresses: with
    neigh_suppress the bridge answers guests' ARP locally instead of flooding it to every host
    proxy ARP entries on the uplink for this host's public IPs
  router namespace <host-tag>-kvr-n (L3 of the VPC):
    kr-n  router MAC (same on every host), every subnet's router address: distributed router
    ku-n  transit, 169.254.0.2/32
    kn-n  the NAT gateway's private address /32 and MAC (only on its host)
    tables 100 (igw) and 101 (nat): throw VPC CIDR + default; rules "from subnet" select them
    permanent neighbours for every port of the VPC; nft table ip kumo_nat (agent.network.nat)
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from agent.network import names
from agent.network.model import HostNetwork, VpcNet
from agent.network.nat import public_mappings, render_nat_json
from agent.network.records import (
    HOST, Addr, BrPort, Fdb, Link, Mac, Master, Neigh, Netns, NftTable, ProxyNeigh, Record,
    Route, Rule, Sysctl, Up,
)

ZERO_MAC = "00:00:00:00:00:00"
DEFAULT = IPv4Network("0.0.0.0/0")
MAIN_TABLE = 254

HOST_SYSCTLS = (("net.ipv4.ip_forward", "1"),)
ROUTER_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    # Traffic from remote hosts' routers towards the NAT gateway enters on kn and its replies
    # leave on kr: strict reverse-path filtering would drop it.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    # Guests of two subnets share the VPC's L2: the router forwards between them on one
    # interface and must not tell them to talk directly.
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    # The router MAC is the same on every host, so would be its IPv6 link-local address: DAD and
    # MLD from identical routers would flood the VPC and fail. The VPC is IPv4-only.
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)


def host_public_ips(host: HostNetwork, vpc: VpcNet) -> list[IPv4Address]:
    """Public addresses this host answers for on its uplink for `vpc`."""
    ips = [public for public, _ in public_mappings(vpc)]
    ng = vpc.nat_gateway
    if ng is not None and ng.host_underlay_ip == host.underlay_ip:
        ips.append(ng.public_ip)
    return ips


def vpc_records(host: HostNetwork, vpc: VpcNet, host_tag: str) -> set[Record]:
    n = vpc.vni
    kb, kx, kq, kr, kt, ku, kg, kn = (names.link_name(r, n) for r in "bxqrtugn")
    rns = names.router_netns(host_tag, n)
    ng = vpc.nat_gateway
    local_nat = ng is not None and ng.host_underlay_ip == host.underlay_ip
    rmac = names.router_mac(vpc.vpc_id)
    recs: set[Record] = {Netns(rns)}
    recs |= {Sysctl(rns, k, v) for k, v in ROUTER_SYSCTLS}

    # L2 in the host namespace.
    recs |= {
        Link(HOST, kb, "bridge"),
        Link(HOST, kx, "vxlan", (n, str(host.underlay_ip), host.underlay_dev, names.VXLAN_PORT)),
        Link(HOST, kq, "veth", peer=kr, peer_ns=rns),
        Link(HOST, kt, "veth", peer=ku, peer_ns=rns),
        Link(rns, kr, "veth", created_by_peer=True),
        Link(rns, ku, "veth", created_by_peer=True),
        Master(HOST, kx, kb), Master(HOST, kq, kb),
        BrPort(HOST, kx, False, True), BrPort(HOST, kq, False, True),
        Fdb(HOST, kq, rmac),
        Addr(HOST, kt, IPv4Interface(f"{names.TRANSIT_HOST_IP}/32")),
        Addr(rns, ku, IPv4Interface(f"{names.TRANSIT_ROUTER_IP}/32")),
        Mac(HOST, kb, names.bridge_mac(str(host.underlay_ip), n)),
        Mac(rns, kr, rmac),
    }
    recs |= {Up(HOST, d) for d in (kb, kx, kq, kt)} | {Up(rns, d) for d in ("lo", kr, ku)}
    for p in vpc.ports:
        recs.add(Master(HOST, p.tap, kb))
    remote_hosts = {r.host_underlay_ip for r in vpc.remote_ports}
    remotes = [(r.mac, r.ip, r.host_underlay_ip) for r in vpc.remote_ports]
    if ng is not None and not local_nat:
        remote_hosts.add(ng.host_underlay_ip)
        remotes.append((names.natgw_mac(ng.nat_gateway_id), ng.private_ip, ng.host_underlay_ip))
    for h in remote_hosts:
        recs.add(Fdb(HOST, kx, ZERO_MAC, h))
    for mac, ip, h in remotes:
        recs |= {Fdb(HOST, kx, mac, h), Fdb(HOST, kx, mac), Neigh(HOST, kb, ip, mac),
                 Neigh(rns, kr, ip, mac)}
    for s in vpc.subnets:
        recs.add(Neigh(HOST, kb, s.router_ip, rmac))
        recs.add(Addr(rns, kr, IPv4Interface(f"{s.router_ip}/{s.cidr.prefixlen}")))
    for p in vpc.ports:
        recs.add(Neigh(rns, kr, p.ip, p.mac))

    # The NAT gateway's own leg, on its host only.
    if local_nat:
        gmac = names.natgw_mac(ng.nat_gateway_id)
        recs |= {
            Link(HOST, kg, "veth", peer=kn, peer_ns=rns), Link(rns, kn, "veth", created_by_peer=True),
            Master(HOST, kg, kb), BrPort(HOST, kg, False, True), Fdb(HOST, kg, gmac),
            Neigh(HOST, kb, ng.private_ip, gmac), Up(HOST, kg), Up(rns, kn), Mac(rns, kn, gmac),
            Addr(rns, kn, IPv4Interface(f"{ng.private_ip}/32")),
        }

    # Routing towards outside, per subnet route table.
    transit_gw = IPv4Address(names.TRANSIT_HOST_IP)
    routes = {s.subnet_id: vpc.effective_route(s) for s in vpc.subnets}
    if "igw" in routes.values():
        recs |= {Route(rns, names.TABLE_IGW, vpc.cidr, "throw"),
                 Route(rns, names.TABLE_IGW, DEFAULT, "unicast", transit_gw, ku)}
    if "nat" in routes.values():
        gw, dev = (transit_gw, ku) if local_nat else (ng.private_ip, kr)
        recs |= {Route(rns, names.TABLE_NAT, vpc.cidr, "throw"),
                 Route(rns, names.TABLE_NAT, DEFAULT, "unicast", gw, dev)}
    for s in vpc.subnets:
        table = {"igw": names.TABLE_IGW, "nat": names.TABLE_NAT}.get(routes[s.subnet_id])
        if table is not None:
            recs.add(Rule(rns, names.RULE_PRIORITY, s.cidr, table))
    for ip in host_public_ips(host, vpc):
        recs.add(Route(HOST, MAIN_TABLE, IPv4Network(f"{ip}/32"), "unicast",
                       IPv4Address(names.TRANSIT_ROUTER_IP), kt))
        recs.add(ProxyNeigh(HOST, host.underlay_dev, ip))
    recs.add(NftTable(rns, render_nat_json(vpc, local_nat)))
    return recs


def host_records(host: HostNetwork, host_tag: str) -> set[Record]:
    """Everything the host must carry for `host` (the whole desired state)."""
    recs: set[Record] = {Sysctl(HOST, k, v) for k, v in HOST_SYSCTLS}
    for vpc in host.vpcs:
        recs |= vpc_records(host, vpc, host_tag)
    return recs

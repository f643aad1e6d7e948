"""The VPC dataplane each host must carry, computed from the database (the controller's side of
the agent contract's "vpc-network" extension).

A host carries a VPC when an instance of it has a live port there (pending, running, stopping)
or when the VPC's NAT gateway lives there. For each such VPC the document lists every subnet
with where its route table sends 0.0.0.0/0, the host's own ports (with their public IPs), the
ports on other hosts (static VXLAN forwarding: no flood-and-learn), the internet gateway and the
NAT gateway. With it go the security groups of the host's ports (and the groups their rules name
as peers), each with the private addresses of all its members wherever they run, so a membership
change anywhere updates every host that filters on that group.

refresh() rebuilds every host's document and, where its digest changed, bumps that host's
network_generation; the reconciler pushes hosts whose acknowledged generation lags. So any change
(an instance placed or gone, an elastic IP moved, a gateway attached, a route changed) reaches
exactly the hosts it affects, within one reconciler tick of the API call that made it.

inputs_fingerprint() hashes exactly the rows refresh() reads (plain column tuples, no ORM
objects), so the reconciler rebuilds only when one of them changed: building the documents costs
O(hosts x ports) model objects, the fingerprint a scan of the input columns.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from ipaddress import IPv4Network

from sqlalchemy import select as core_select
from sqlmodel import Session, select

from agent.contract.v1 import (NatGatewayWire, NetworkSpec, PortWire, RemotePortWire,
                               SecurityGroupWire, SubnetWire, VpcWire)
from controller.models import (ElasticIp, Host, Instance, InstanceSecurityGroup, InternetGateway,
                               NatGateway, Route, RouteTable, RouteTableAssociation, SecurityGroup,
                               SecurityGroupRule, Subnet, Vpc)
from controller.services import ipam, route_tables, security_group_rows
from controller.services.gateways import NAT_LIVE

#: Instance states whose NIC is (or is about to be) plugged in on its host.
PORT_STATES = ("pending", "running", "stopping")


#: The inputs of build_all(). Whole rows of the network tables (users change them, rarely); of
#: hosts and instances only the columns the documents use (heartbeats and state changes touch the
#: rest all the time). A new input of build_all() must be added here, or its changes wait for the
#: reconciler's periodic full rebuild.
_WHOLE_TABLES = (Vpc, Subnet, InternetGateway, RouteTable, Route, RouteTableAssociation, ElasticIp,
                 NatGateway, SecurityGroup, SecurityGroupRule, InstanceSecurityGroup)
_HOST_COLUMNS = (Host.host_id, Host.underlay_ip, Host.state, Host.enabled)
_PORT_COLUMNS = (Instance.instance_id, Instance.host_id, Instance.vpc_id, Instance.subnet_id,
                 Instance.mac, Instance.private_ip)


def inputs_fingerprint(s: Session) -> str:
    """A digest of every row build_all() reads (see _WHOLE_TABLES): equal digests, equal documents."""
    h = hashlib.sha256()
    queries = [core_select(*_HOST_COLUMNS).order_by(Host.host_id),
               core_select(*_PORT_COLUMNS).where(Instance.state.in_(PORT_STATES),
                                                 Instance.vpc_id.is_not(None),
                                                 Instance.host_id.is_not(None))
               .order_by(Instance.instance_id)]
    queries += [core_select(m.__table__).order_by(*m.__table__.primary_key.columns) for m in _WHOLE_TABLES]
    for q in queries:
        for row in s.execute(q):
            h.update(repr(tuple(row)).encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class _Port:
    instance_id: str
    host_id: str
    mac: str
    ip: str
    subnet_id: str
    public_ip: str | None
    group_ids: tuple[str, ...] = ()


def _ready_hosts(s: Session) -> dict[str, Host]:
    return {h.host_id: h for h in s.exec(select(Host)) if h.underlay_ip}


def place_nat_gateways(s: Session, hosts: dict[str, Host], ports_by_vpc: dict) -> None:
    """Give each live NAT gateway a host that is up: keep a live one, else prefer a host that
    already carries the VPC, else the host with the fewest NAT gateways (a down host's gateways
    move: the NAT gateway survives its host)."""
    # A disabled host (no new instances) keeps what it carries; only a host that is down loses
    # its gateways. New placements go to enabled hosts when there are any.
    up = {hid: h for hid, h in hosts.items() if h.state == "up"}
    nats = list(s.exec(select(NatGateway).where(NatGateway.state.in_(NAT_LIVE))))
    load: dict[str, int] = defaultdict(int)
    for n in nats:
        if n.host_id in up:
            load[n.host_id] += 1
    candidates = {hid for hid, h in up.items() if h.enabled} or set(up)
    for n in nats:
        if n.host_id in up:
            continue
        if not candidates:
            continue
        carrying = {p.host_id for p in ports_by_vpc.get(n.vpc_id, ())} & candidates
        pool = sorted(carrying or candidates, key=lambda h: (load[h], h))
        n.host_id = pool[0]
        load[n.host_id] += 1
        s.add(n)


@dataclass
class HostDoc:
    vpcs: list[VpcWire]
    groups: list[SecurityGroupWire]


def build_all(s: Session) -> dict[str, HostDoc]:
    """host_id -> what it must carry, for every host with an underlay address."""
    hosts = _ready_hosts(s)
    # Plain column rows, not Instance objects: loading whole instances (JSON columns decoded)
    # was a quarter of a rebuild.
    insts = list(s.execute(core_select(*_PORT_COLUMNS).where(Instance.state.in_(PORT_STATES),
                                                            Instance.vpc_id.is_not(None),
                                                            Instance.host_id.is_not(None))))
    pubs: dict[str, str] = {}
    for eip in s.exec(select(ElasticIp).where(ElasticIp.instance_id.is_not(None))
                      .order_by(ElasticIp.auto_assigned.desc())):
        pubs[eip.instance_id] = eip.public_ip  # an elastic IP overrides an auto-assigned one
    memberships: dict[str, list[str]] = defaultdict(list)
    ids = [i.instance_id for i in insts]
    for k in range(0, len(ids), 500):  # bounded IN lists
        for row in s.exec(select(InstanceSecurityGroup).where(
                InstanceSecurityGroup.instance_id.in_(ids[k:k + 500]))):
            memberships[row.instance_id].append(row.group_id)
    ports_by_vpc: dict[str, list[_Port]] = defaultdict(list)
    members: dict[str, set[str]] = defaultdict(set)
    for i in insts:
        groups = tuple(sorted(memberships.get(i.instance_id, ())))
        if i.private_ip:
            for g in groups:
                members[g].add(i.private_ip)
        if i.host_id in hosts and i.mac and i.private_ip and i.subnet_id:
            ports_by_vpc[i.vpc_id].append(_Port(i.instance_id, i.host_id, i.mac, i.private_ip,
                                                i.subnet_id, pubs.get(i.instance_id), groups))
    place_nat_gateways(s, hosts, ports_by_vpc)
    nat_by_vpc: dict[str, NatGateway] = {}
    for n in s.exec(select(NatGateway).where(NatGateway.state.in_(NAT_LIVE))
                    .order_by(NatGateway.created_at, NatGateway.nat_gateway_id)):
        if n.host_id in hosts and n.private_ip and n.public_ip:
            nat_by_vpc.setdefault(n.vpc_id, n)
    out: dict[str, HostDoc] = {hid: HostDoc([], []) for hid in hosts}
    for vpc_id in sorted(set(ports_by_vpc) | set(nat_by_vpc)):
        vpc = s.get(Vpc, vpc_id)
        if vpc is None:
            continue
        for hid, wire in _vpc_for_hosts(s, vpc, ports_by_vpc.get(vpc_id, []),
                                        nat_by_vpc.get(vpc_id), hosts).items():
            out[hid].vpcs.append(wire)
    cache: dict[str, SecurityGroupWire] = {}
    for hid, doc in out.items():
        used = sorted({g for v in doc.vpcs for p in v.ports for g in p.security_group_ids})
        doc.groups = _groups(s, used, members, cache)
    return out


def _groups(s: Session, group_ids: list[str], members: dict[str, set[str]],
            cache: dict[str, SecurityGroupWire]) -> list[SecurityGroupWire]:
    """The wire groups for `group_ids` plus their peers, with members' addresses."""
    out = []
    for g in security_group_rows.host_firewall_groups(s, group_ids):
        gid = g["group_id"]
        if gid not in cache:
            g["members"] = sorted(members.get(gid, ()), key=lambda a: tuple(map(int, a.split("."))))
            cache[gid] = SecurityGroupWire.model_validate(g)
        out.append(cache[gid])
    return sorted(out, key=lambda w: w.group_id)


def _vpc_for_hosts(s: Session, vpc: Vpc, ports: list[_Port], nat: NatGateway | None,
                   hosts: dict[str, Host]) -> dict[str, VpcWire]:
    subnets = list(s.exec(select(Subnet).where(Subnet.vpc_id == vpc.vpc_id)
                          .order_by(Subnet.cidr_block)))
    subnet_wires = []
    for sub in subnets:
        route = route_tables.default_target(s, sub)
        net = IPv4Network(sub.cidr_block)
        if nat is not None and sub.subnet_id == nat.subnet_id and route == "nat":
            route = "local"  # the gateway's own subnet cannot route to it (a loop)
        subnet_wires.append(SubnetWire(subnet_id=sub.subnet_id, cidr=net,
                                       router_ip=ipam.router_ip(net), route=route))
    if nat is None:
        subnet_wires = [w if w.route != "nat" else w.model_copy(update={"route": "local"})
                        for w in subnet_wires]
    internet = s.exec(select(InternetGateway).where(
        InternetGateway.vpc_id == vpc.vpc_id)).first() is not None
    nat_wire = None
    if nat is not None:
        nat_wire = NatGatewayWire(nat_gateway_id=nat.nat_gateway_id, subnet_id=nat.subnet_id,
                                  private_ip=nat.private_ip, public_ip=nat.public_ip,
                                  host_underlay_ip=hosts[nat.host_id].underlay_ip)
    carriers = {p.host_id for p in ports} | ({nat.host_id} if nat is not None else set())
    ports = sorted(ports, key=lambda p: p.instance_id)
    # A port is remote on every other carrier: validate its wire form once, share it (the
    # documents are read-only), instead of once per host.
    remote_wire = {p.instance_id: RemotePortWire(mac=p.mac, ip=p.ip,
                                                 host_underlay_ip=hosts[p.host_id].underlay_ip)
                   for p in ports} if len(carriers) > 1 else {}
    out = {}
    for hid in sorted(carriers):
        local = [PortWire(port_id=p.instance_id, mac=p.mac, ip=p.ip, subnet_id=p.subnet_id,
                          public_ip=p.public_ip, security_group_ids=list(p.group_ids))
                 for p in ports if p.host_id == hid]
        remote = [remote_wire[p.instance_id] for p in ports if p.host_id != hid]
        out[hid] = VpcWire(vpc_id=vpc.vpc_id, vni=vpc.vni, cidr=IPv4Network(vpc.cidr_block),
                           subnets=subnet_wires, ports=local, remote_ports=remote,
                           internet=internet, nat_gateway=nat_wire)
    return out


def digest(doc: HostDoc) -> str:
    body = {"vpcs": [v.model_dump(mode="json") for v in doc.vpcs],
            "security_groups": [g.model_dump(mode="json") for g in doc.groups]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def refresh(s: Session) -> dict[str, NetworkSpec]:
    """Rebuild every host's document; bump the generation of those that changed. Returns the
    current NetworkSpec of every host with an underlay address."""
    docs = build_all(s)
    specs = {}
    for hid, doc in docs.items():
        host = s.get(Host, hid)
        d = digest(doc)
        if host.network_digest != d or host.network_generation == 0:
            host.network_generation += 1
            host.network_digest = d
            s.add(host)
        specs[hid] = NetworkSpec(generation=host.network_generation, vpcs=doc.vpcs,
                                 security_groups=doc.groups)
    return specs

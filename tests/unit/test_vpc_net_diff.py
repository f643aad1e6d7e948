"""agent.network.desired and diff: the pure translation of desired state into kernel records
and the plan that turns observed into desired without touching what is already right."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from agent.network import HostNetwork, NatGatewayNet, PortNet, RemotePort, SubnetNet, VpcNet
from agent.network import names
from agent.network.desired import host_records
from agent.network.diff import diff
from agent.network.records import (
    HOST, ADD_ORDER, Addr, Fdb, Link, Mac, Master, Neigh, Netns, NftTable, ProxyNeigh, Route, Rule,
    Sysctl,
)

S1, S2 = "subnet-00000000000000001", "subnet-00000000000000002"
TAG = "kt-h1"
RNS = names.router_netns(TAG, 42)


def host(underlay: str = "172.31.0.11", natgw_on: str = "172.31.0.11", public: str | None = "203.0.113.5",
         vni: int = 42, ports: int = 1) -> HostNetwork:
    v = VpcNet(
        vpc_id="vpc-0123456789abcdef0", vni=vni, cidr="10.0.0.0/16", internet=True,
        subnets=[SubnetNet(subnet_id=S1, cidr="10.0.1.0/24", router_ip="10.0.1.1", route="igw"),
                 SubnetNet(subnet_id=S2, cidr="10.0.2.0/24", router_ip="10.0.2.1", route="nat")],
        ports=[PortNet(port_id=f"eni-{i:017x}", tap=f"tap{i}", mac=f"52:54:00:00:01:{i:02x}",
                       ip=f"10.0.1.{10 + i}", subnet_id=S1,
                       public_ip=public if i == 0 else None) for i in range(ports)],
        remote_ports=[RemotePort(mac="52:54:00:00:00:09", ip="10.0.2.9", host_underlay_ip="172.31.0.12")],
        nat_gateway=NatGatewayNet(nat_gateway_id="nat-00000000000000001", subnet_id=S1,
                                  private_ip="10.0.1.200", public_ip="203.0.113.9",
                                  host_underlay_ip=natgw_on))
    return HostNetwork(underlay_ip=underlay, underlay_dev="uplink0", vpcs=[v])


def test_desired_records_of_the_nat_gateway_host() -> None:
    recs = host_records(host(), TAG)
    kx = names.vxlan(42)
    assert Link(HOST, kx, "vxlan", (42, "172.31.0.11", "uplink0", 4789)) in recs
    assert Fdb(HOST, kx, "00:00:00:00:00:00", IPv4Address("172.31.0.12")) in recs
    assert Fdb(HOST, kx, "52:54:00:00:00:09", IPv4Address("172.31.0.12")) in recs
    assert Fdb(HOST, kx, "52:54:00:00:00:09") in recs  # master static: no unknown-unicast flood
    assert Neigh(HOST, names.bridge(42), IPv4Address("10.0.1.1"), names.router_mac(
        "vpc-0123456789abcdef0")) in recs  # ARP for the router answered by the local bridge
    assert Master(HOST, "tap0", names.bridge(42)) in recs
    assert {r.ip for r in recs if isinstance(r, ProxyNeigh)} == {IPv4Address("203.0.113.5"),
                                                                  IPv4Address("203.0.113.9")}
    assert Addr(RNS, names.link_name("n", 42), __import__("ipaddress").IPv4Interface("10.0.1.200/32")) in recs
    assert Rule(RNS, 1000, IPv4Network("10.0.1.0/24"), names.TABLE_IGW) in recs
    nat_default = [r for r in recs if isinstance(r, Route) and r.table == names.TABLE_NAT
                   and r.kind == "unicast"]
    assert [(str(r.gateway), r.dev) for r in nat_default] == [("169.254.0.1", names.link_name("u", 42))]


def test_desired_records_elsewhere_route_to_the_nat_gateway() -> None:
    recs = host_records(host(underlay="172.31.0.13", public=None), "kt-h3")
    rns = names.router_netns("kt-h3", 42)
    gmac = names.natgw_mac("nat-00000000000000001")
    nat_default = [r for r in recs if isinstance(r, Route) and r.table == names.TABLE_NAT
                   and r.kind == "unicast"]
    assert [(str(r.gateway), r.dev) for r in nat_default] == [("10.0.1.200", names.link_name("r", 42))]
    assert Neigh(rns, names.link_name("r", 42), IPv4Address("10.0.1.200"), gmac) in recs
    assert Fdb(HOST, names.vxlan(42), gmac, IPv4Address("172.31.0.11")) in recs
    assert not any(isinstance(r, ProxyNeigh) for r in recs)
    assert not any(isinstance(r, Link) and r.name == names.link_name("g", 42) for r in recs)


def test_from_empty_everything_is_added_in_dependency_order() -> None:
    want = host_records(host(), TAG)
    plan = diff(want, set())
    assert plan.remove == [] and set(plan.add) == want
    order = [ADD_ORDER.index(type(r)) for r in plan.add]
    assert order == sorted(order)
    assert isinstance(plan.add[0], Netns) and isinstance(plan.add[-1], NftTable)
    links = [r for r in plan.add if isinstance(r, Link)]
    assert links[0].kind == "bridge"


def test_converged_state_plans_nothing() -> None:
    want = host_records(host(), TAG)
    assert diff(want, want).empty


def test_one_port_change_touches_only_that_port() -> None:
    before = host_records(host(ports=3), TAG)
    after = host_records(host(ports=4), TAG)
    plan = diff(after, before)
    assert plan.remove == []
    kinds = sorted(type(r).__name__ for r in plan.add)
    assert kinds == ["Master", "Neigh"]  # tap3 joins; the router learns its address; no nft reload


def test_public_ip_move_between_hosts() -> None:
    had = host_records(host(), TAG)
    lost = host_records(host(public=None), TAG)
    plan = diff(lost, had)
    removed = {type(r).__name__ for r in plan.remove}
    assert removed == {"ProxyNeigh", "Route"}
    assert [type(r).__name__ for r in plan.add] == ["NftTable"]


def test_changed_vxlan_is_recreated_with_everything_on_it() -> None:
    have = host_records(host(), TAG)
    kx = names.vxlan(42)
    old = next(r for r in have if isinstance(r, Link) and r.name == kx)
    stale = (have - {old}) | {Link(HOST, kx, "vxlan", (42, "172.31.0.99", "uplink0", 4789))}
    plan = diff(have, stale)
    assert [r for r in plan.remove if isinstance(r, Link)] == [
        Link(HOST, kx, "vxlan", (42, "172.31.0.99", "uplink0", 4789))]
    readded = {type(r).__name__ for r in plan.add}
    assert {"Link", "Master", "BrPort", "Up", "Fdb"} <= readded
    assert all(getattr(r, "dev", kx) == kx or getattr(r, "name", kx) == kx for r in plan.add)


def test_lost_router_namespace_recreates_veth_pairs() -> None:
    want = host_records(host(), TAG)
    observed = {r for r in want if r.ns == HOST}  # the router namespace vanished
    plan = diff(want, observed)
    host_veths = {r.name for r in plan.remove if isinstance(r, Link)}
    assert host_veths == {names.link_name(c, 42) for c in "qtg"}
    assert {r.name for r in plan.add if isinstance(r, Link) and r.ns == HOST} == host_veths


def test_removed_vpc_goes_with_its_namespace() -> None:
    have = host_records(host(), TAG)
    plan = diff(set(), have)
    assert plan.add == []
    assert Netns(RNS) in plan.remove
    assert not [r for r in plan.remove if r.ns == RNS]  # deleted with the namespace
    assert {r.name for r in plan.remove if isinstance(r, Link)} == {
        names.link_name(c, 42) for c in "bxqtg"}
    assert isinstance(plan.remove[0], ProxyNeigh)  # stop answering ARP before unrouting


def test_bridge_has_a_fixed_mac_and_setting_it_readds_its_neighbours() -> None:
    """The bridge's MAC is pinned (one that follows its ports changes when a port leaves, and
    the kernel then flushes the bridge's permanent neighbours). A host from before the pin (the
    bridge MAC is whatever its ports gave it) gets the MAC set and, since setting it flushes the
    bridge's neighbours, every neighbour of that bridge re-added after it, and nothing else."""
    want = host_records(host(), TAG)
    kb = names.bridge(42)
    pinned = Mac(HOST, kb, names.bridge_mac("172.31.0.11", 42))
    assert pinned in want
    assert names.bridge_mac("172.31.0.12", 42) != pinned.mac != names.bridge_mac("172.31.0.11", 43)
    before_pin = (want - {pinned}) | {Mac(HOST, kb, "fe:54:00:12:34:56")}
    plan = diff(want, before_pin)
    assert plan.remove == []
    bridge_neigh = {r for r in want if isinstance(r, Neigh) and r.dev == kb}
    assert len(bridge_neigh) == 4  # two subnet routers, a remote guest, the NAT gateway
    assert set(plan.add) == {pinned} | bridge_neigh
    assert plan.add[0] == pinned  # before the neighbours it would flush


def test_moved_tap_is_not_detached_first() -> None:
    a = host_records(host(vni=42), TAG)
    b = host_records(host(vni=43), TAG)
    plan = diff(b, a)
    assert not [r for r in plan.remove if isinstance(r, Master) and r.dev == "tap0"]
    assert Master(HOST, "tap0", names.bridge(43)) in plan.add


def _as_netlink_reads_it(recs: set) -> set:
    """What a fresh Kernel.observe returns for a host that carries `recs`: links without the
    creation-only fields (peer, peer_ns, created_by_peer), and no write-only records."""
    out = set()
    for r in recs:
        if isinstance(r, (Sysctl, NftTable)):
            continue
        out.add(Link(r.ns, r.name, r.kind, r.sig) if isinstance(r, Link) else r)
    return out


def test_restart_on_a_converged_host_recreates_nothing() -> None:
    """A restarted agent (fresh Dataplane: nothing remembered) on a host that carries its spec,
    NAT gateway leg included, only rewrites the write-only state it cannot read back."""
    want = host_records(host(), TAG)
    assert Link(HOST, names.link_name("g", 42), "veth") in want  # the NAT leg is in it
    plan = diff(want, _as_netlink_reads_it(want))
    assert plan.remove == []
    assert {type(r).__name__ for r in plan.add} == {"Sysctl", "NftTable"}

"""agent.network.model and names: strict validation of a host's desired VPC network and the
deterministic names derived from it."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.network import HostNetwork, NatGatewayNet, PortNet, RemotePort, SubnetNet, VpcNet
from agent.network import names

VPC = "vpc-0123456789abcdef0"
S1, S2 = "subnet-00000000000000001", "subnet-00000000000000002"


def subnet(i: int, route: str = "local", sid: str | None = None) -> SubnetNet:
    return SubnetNet(subnet_id=sid or f"subnet-{i:017x}", cidr=f"10.0.{i}.0/24",
                     router_ip=f"10.0.{i}.1", route=route)


def port(n: int, ip: str, sub: str = S1, **kw) -> PortNet:
    return PortNet(port_id=f"eni-{n:017x}", tap=f"tap{n}", mac=f"52:54:00:00:00:{n:02x}", ip=ip,
                   subnet_id=sub, **kw)


def vpc(**kw) -> VpcNet:
    base = dict(vpc_id=VPC, vni=42, cidr="10.0.0.0/16", subnets=[subnet(1), subnet(2)])
    base.update(kw)
    return VpcNet(**base)


def test_valid_vpc_and_effective_routes() -> None:
    v = vpc(subnets=[subnet(1, "igw"), subnet(2, "nat")], ports=[port(1, "10.0.1.5")],
            remote_ports=[RemotePort(mac="52:54:00:00:00:09", ip="10.0.2.9",
                                     host_underlay_ip="172.31.0.12")])
    # igw without an attached gateway, nat without a NAT gateway: blackholes, i.e. local.
    assert [v.effective_route(s) for s in v.subnets] == ["local", "local"]
    v2 = vpc(subnets=[subnet(1, "igw"), subnet(2, "nat")], internet=True,
             nat_gateway=NatGatewayNet(nat_gateway_id="nat-00000000000000001", subnet_id=S1,
                                       private_ip="10.0.1.200", public_ip="203.0.113.9",
                                       host_underlay_ip="172.31.0.11"))
    assert [v2.effective_route(s) for s in v2.subnets] == ["igw", "nat"]


@pytest.mark.parametrize("kw,needle", [
    (dict(cidr="10.0.0.0/8"), "must be /16 to /28"),
    (dict(subnets=[subnet(1), SubnetNet(subnet_id=S2, cidr="10.1.0.0/24", router_ip="10.1.0.1")]),
     "outside VPC"),
    (dict(subnets=[subnet(1), SubnetNet(subnet_id=S2, cidr="10.0.1.0/25", router_ip="10.0.1.2")]),
     "overlap"),
    (dict(subnets=[subnet(1), subnet(1)]), "duplicate subnet"),
    (dict(ports=[port(1, "10.0.2.5")]), "not a host address"),
    (dict(ports=[port(1, "10.0.1.255")]), "not a host address"),
    (dict(ports=[port(1, "10.0.1.1")]), "already used by router"),
    (dict(ports=[port(1, "10.0.1.5"), port(2, "10.0.1.5")]), "already used"),
    (dict(ports=[port(1, "10.0.1.5", sub="subnet-000000000000000ff")]), "unknown subnet"),
    (dict(remote_ports=[RemotePort(mac="52:54:00:00:00:01", ip="10.9.0.5",
                                   host_underlay_ip="172.31.0.12")]), "in no subnet"),
    (dict(vni=0), "greater than or equal"),
    (dict(vni=1 << 24), "less than or equal"),
    (dict(vpc_id="vpc-XYZ"), "bad resource id"),
    (dict(subnets=[subnet(1, "nat")], nat_gateway=NatGatewayNet(
        nat_gateway_id="nat-00000000000000001", subnet_id="subnet-00000000000000001",
        private_ip="10.0.1.200", public_ip="203.0.113.9", host_underlay_ip="172.31.0.11")),
     "cannot route to it"),
])
def test_bad_vpc_is_refused(kw: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        vpc(**kw)


@pytest.mark.parametrize("field,value", [
    ("tap", "x" * 16), ("tap", "tap 1"), ("tap", "a/b"), ("mac", "01:00:5e:00:00:01"),
    ("mac", "00:00:00:00:00:00"), ("mac", "02:a0:00:00:00:01"), ("mac", "zz"), ("ip", "10.0.1.x"),
])
def test_bad_port_fields(field: str, value: str) -> None:
    kw = dict(port_id="eni-00000000000000001", tap="tap1", mac="52:54:00:00:00:01", ip="10.0.1.5",
              subnet_id=S1)
    kw[field] = value
    with pytest.raises(ValidationError):
        PortNet(**kw)


def test_host_level_rules() -> None:
    a = vpc(ports=[port(1, "10.0.1.5", public_ip="203.0.113.5")])
    b = vpc(vpc_id="vpc-0123456789abcdef1", vni=43, ports=[port(2, "10.0.1.5", public_ip="203.0.113.5")])
    with pytest.raises(ValidationError, match="mapped twice"):
        HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[a, b])
    with pytest.raises(ValidationError, match="duplicate VPC"):
        HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[vpc(), vpc()])
    c = vpc(vpc_id="vpc-0123456789abcdef1", vni=43, ports=[port(1, "10.0.1.6")])
    with pytest.raises(ValidationError, match="tap tap1 reused"):
        HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0",
                    vpcs=[vpc(ports=[port(1, "10.0.1.5")]), c])
    bad_tap = vpc(ports=[PortNet(port_id="eni-00000000000000001", tap="kb-00002a",
                                 mac="52:54:00:00:00:01", ip="10.0.1.5", subnet_id=S1)])
    with pytest.raises(ValidationError, match="reserved"):
        HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[bad_tap])
    remote_here = vpc(remote_ports=[RemotePort(mac="52:54:00:00:00:09", ip="10.0.1.9",
                                               host_underlay_ip="172.31.0.11")])
    with pytest.raises(ValidationError, match="points at this host"):
        HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[remote_here])
    # Two VPCs with the same CIDR and the same addresses are fine on one host.
    ok = HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0",
                     vpcs=[vpc(ports=[port(1, "10.0.1.5")]), c.model_copy(update={
                         "ports": (port(3, "10.0.1.5"),)})])
    assert len(ok.vpcs) == 2


def test_names_are_short_deterministic_and_owned() -> None:
    for vni in (1, 42, 0xABCDEF, names.MAX_VNI):
        for role in names.ROLES:
            n = names.link_name(role, vni)
            assert len(n) <= 15 and names.OWNED_LINK_RE.match(n) and names.vni_of(n) == vni
    assert names.bridge(42) == "kb-00002a" and names.vxlan(42) == "kx-00002a"
    assert names.vni_of("eth0") is None and names.vni_of("kb-00002") is None
    for bad in (0, 1 << 24):
        with pytest.raises(ValueError):
            names.bridge(bad)
    with pytest.raises(ValueError):
        names.link_name("z", 1)
    assert names.router_netns("kt1-h1", 42) == "kt1-h1-kvr-00002a"
    with pytest.raises(ValueError):
        names.router_netns("../etc", 1)


def test_macs_are_stable_unicast_and_distinct() -> None:
    m = names.router_mac(VPC)
    assert m == names.router_mac(VPC) and m != names.router_mac("vpc-0123456789abcdef1")
    assert m.startswith("02:a0:") and names.natgw_mac("nat-00000000000000001").startswith("02:a1:")
    assert names.bridge_mac("172.31.0.11", 42).startswith("02:a2:")
    assert int(m[:2], 16) & 1 == 0

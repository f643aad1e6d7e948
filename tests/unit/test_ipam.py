"""IPAM's pure rules: CIDR parsing and ranges for VPCs and subnets, route destinations, AWS's five
reserved addresses, usable counts, requested-address validation and lowest-free picking."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from controller.errors import KumoError
from controller.services import ipam
from controller.services.elastic_ips import pool_addresses


def _code(fn, *args, **kw) -> str:
    with pytest.raises(KumoError) as exc:
        fn(*args, **kw)
    assert 400 <= exc.value.status < 500
    return exc.value.code


@pytest.mark.parametrize("text", ["10.0.0.0/16", "172.31.0.0/20", "192.168.1.0/28",
                                  " 10.1.0.0/24 "])
def test_good_cidrs(text):
    net = ipam.parse_cidr(text, range_code="InvalidVpc.Range", what="VPC")
    assert net == IPv4Network(text.strip())


@pytest.mark.parametrize("text,code", [
    ("10.0.0.0/8", "InvalidVpc.Range"), ("10.0.0.0/15", "InvalidVpc.Range"),
    ("10.0.0.0/29", "InvalidVpc.Range"), ("10.0.0.0/32", "InvalidVpc.Range"),
    ("0.0.0.0/0", "InvalidVpc.Range"),
    ("10.0.0.1/16", "InvalidParameterValue"), ("10.0.0.0/33", "InvalidParameterValue"),
    ("10.0.0.0", "InvalidParameterValue"), ("fd00::/64", "InvalidParameterValue"),
    ("", "InvalidParameterValue"), ("10.0.0.0/16; rm -rf /", "InvalidParameterValue"),
    ("10.0.0.256/24", "InvalidParameterValue"),
])
def test_bad_vpc_cidrs(text, code):
    assert _code(ipam.parse_cidr, text, range_code="InvalidVpc.Range", what="VPC") == code


def test_subnet_range_code():
    assert _code(ipam.parse_cidr, "10.0.0.0/29", range_code="InvalidSubnet.Range",
                 what="subnet") == "InvalidSubnet.Range"


def test_destinations():
    assert ipam.parse_destination("0.0.0.0/0") == IPv4Network("0.0.0.0/0")
    assert ipam.parse_destination("8.8.8.8/32") == IPv4Network("8.8.8.8/32")
    for bad in ("0.0.0.1/0", "8.8.8.8", "::/0", "x/0"):
        assert _code(ipam.parse_destination, bad) == "InvalidParameterValue"


@pytest.mark.parametrize("cidr,count", [("10.0.0.0/28", 11), ("10.0.0.0/24", 251),
                                        ("10.0.0.0/16", 65531), ("10.0.0.0/20", 4091)])
def test_usable_count(cidr, count):
    assert ipam.usable_count(IPv4Network(cidr)) == count


def test_reserved_are_network_router_dns_future_broadcast():
    net = IPv4Network("10.0.1.0/24")
    assert ipam.reserved(net) == {IPv4Address(a) for a in (
        "10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255")}
    assert ipam.router_ip(net) == IPv4Address("10.0.1.1")


def test_pick_lowest_free_and_exhaustion():
    net = IPv4Network("10.0.0.16/28")
    used: set[str] = set()
    out = []
    while (addr := ipam.pick(net, used)) is not None:
        assert addr not in used
        used.add(addr)
        out.append(addr)
    assert out == [f"10.0.0.{n}" for n in range(20, 31)]
    assert ipam.pick(net, {"10.0.0.20", "10.0.0.22"}) == "10.0.0.21"


def test_check_requested():
    net = IPv4Network("10.0.0.0/24")
    assert ipam.check_requested(net, "10.0.0.4", set()) == "10.0.0.4"
    assert ipam.check_requested(net, " 10.0.0.254 ", set()) == "10.0.0.254"
    assert _code(ipam.check_requested, net, "10.0.0.4", {"10.0.0.4"}) == "InvalidIPAddress.InUse"
    for bad in ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.255", "10.0.1.4",
                "10.0.0", "10.0.0.4/32", "nope"):
        assert _code(ipam.check_requested, net, bad, set()) == "InvalidParameterValue", bad


def test_public_pool_addresses():
    pool = pool_addresses("198.51.100.0/29")
    assert pool == [f"198.51.100.{n}" for n in range(2, 7)]
    assert len(pool_addresses("203.0.113.0/24")) == 253

"""agent/validators.py, and that the contract, the dataplane model and the firewall model agree
with it (they use it rather than patterns of their own)."""
from __future__ import annotations

from ipaddress import IPv4Address

from pydantic import TypeAdapter, ValidationError

from agent import validators
from agent.contract.v1 import IfName as WireIfName, MacAddress as WireMac
from agent.firewall.model import FirewallInputError, PortFirewall, parse_ifname
from agent.network.model import IfName as NetIfName, Mac as NetMac

GOOD_MACS = ["52:54:00:00:00:01", "02:00:00:0a:0b:0c", "fe:ff:ff:ff:ff:fe"]
BAD_MACS = ["", "52:54:00:00:00", "52:54:00:00:00:01:02", "52-54-00-00-00-01", "5254.0000.0001",
            "52:54:00:00:00:0g", " 52:54:00:00:00:01", "52:54:00:00:00:01\n"]
GOOD_IFNAMES = ["kb-00002a", "tap1", "eth0", "a", "br_x.1", "x" * 15]
BAD_IFNAMES = ["", ".", "..", "-x", "_x", "a/b", "a b", "a'b", "x" * 16, "tap\n"]


def _ok(fn, value) -> bool:
    try:
        fn(value)
        return True
    except (ValueError, ValidationError, FirewallInputError):
        return False


def _fw_port(m):
    return PortFirewall("tap1", "kb-00002a", m, IPv4Address("10.0.0.5"), 1, ("sg-00000000000000001",))


def _agree(values, reference, *validators_):
    for v in values:
        want = _ok(reference, v)
        assert [_ok(f, v) for f in validators_] == [want] * len(validators_), v


def test_mac():
    for m in GOOD_MACS:
        assert validators.mac(m) == m and validators.mac(m.upper()) == m
    for m in BAD_MACS + [None, 1]:
        assert not _ok(validators.mac, m), m


def test_unicast_and_guest_mac():
    for m in ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"]:
        assert not _ok(validators.unicast_mac, m) and not _ok(validators.guest_mac, m)
    for m in ["02:a0:00:00:00:01", "02:A1:00:00:00:01"]:
        assert validators.unicast_mac(m) == m.lower() and not _ok(validators.guest_mac, m)
    assert validators.guest_mac("52:54:00:00:00:01") == "52:54:00:00:00:01"


def test_ifname():
    for n in GOOD_IFNAMES:
        assert validators.ifname(n) == n
    for n in BAD_IFNAMES + [None]:
        assert not _ok(validators.ifname, n), n


def test_everyone_agrees_on_interface_names():
    _agree(GOOD_IFNAMES + BAD_IFNAMES, validators.ifname, TypeAdapter(WireIfName).validate_python,
           TypeAdapter(NetIfName).validate_python, lambda v: parse_ifname(v, "bridge"))


def test_everyone_agrees_on_macs():
    """Same syntax everywhere; the wire and the firewall want lower case as given, the dataplane
    model lower-cases and also refuses multicast, zero and Kumo's reserved MACs."""
    wire, net, fw = TypeAdapter(WireMac), TypeAdapter(NetMac), _fw_port
    _agree(GOOD_MACS + BAD_MACS, validators.mac, wire.validate_python, net.validate_python, fw)
    assert _ok(net.validate_python, "52:54:00:00:00:AA")
    assert not _ok(wire.validate_python, "52:54:00:00:00:AA")
    assert not _ok(fw, "52:54:00:00:00:AA")
    for m in ["01:00:5e:00:00:01", "00:00:00:00:00:00"]:
        assert not _ok(net.validate_python, m) and not _ok(fw, m)
    assert not _ok(net.validate_python, "02:a0:00:00:00:01")


def test_resource_id():
    for good in ["vpc-0000002a", "subnet-0123456789abcdef0", "i-0123456789abcdef0"]:
        assert validators.resource_id(good) == good
    for bad in ["vpc-2a", "VPC-0000002a", "vpc-0000002A", "toolongprefix-0000002a",
                "vpc-0000002a\n", None]:
        assert not _ok(validators.resource_id, bad), bad

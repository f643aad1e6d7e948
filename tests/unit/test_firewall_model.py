"""Validation of firewall input: bad rules are refused with stable codes before anything renders."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from agent.firewall.model import FirewallInputError, HostFirewall, PortFirewall, Rule, SecurityGroup
from agent.firewall.samples import G1, G2, basic, rid

BASE = {"rule_id": rid(1), "direction": "ingress", "protocol": "tcp", "from_port": 22, "to_port": 22,
        "peer": "10.0.0.0/8"}


def parse(**changes):
    data = {**BASE, **changes}
    return Rule.parse({k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize("changes, code, field", [
    ({"peer": "10.0.0.0/8 accept; flush ruleset"}, "InvalidParameterValue", "cidr"),
    ({"peer": "10.0.0.0/8\n"}, "InvalidParameterValue", "cidr"),
    ({"peer": "10.0.0.0/33"}, "InvalidParameterValue", "cidr"),
    ({"peer": "10.0.0.1/8"}, "InvalidParameterValue", "cidr"),
    ({"peer": "300.0.0.0/8"}, "InvalidParameterValue", "cidr"),
    ({"peer": "::/0"}, "InvalidParameterValue", "cidr"),
    ({"peer": "example.com"}, "InvalidParameterValue", "cidr"),
    ({"peer": "sg-xyz; drop"}, "InvalidParameterValue", "peer_group"),
    ({"to_port": 65536}, "InvalidPermission.Malformed", "to_port"),
    ({"from_port": -1}, "InvalidPermission.Malformed", "from_port"),
    ({"from_port": 80, "to_port": 79}, "InvalidPermission.Malformed", "from_port"),
    ({"from_port": "22; flush"}, "InvalidPermission.Malformed", "from_port"),
    ({"protocol": "gre"}, "InvalidPermission.Malformed", "protocol"),
    ({"protocol": "tcp accept"}, "InvalidPermission.Malformed", "protocol"),
    ({"direction": "sideways"}, "InvalidParameterValue", "direction"),
    ({"rule_id": "sgr-1"}, "InvalidParameterValue", "rule_id"),
    ({"protocol": "icmp", "from_port": None, "to_port": None, "icmp_type": 256}, "InvalidPermission.Malformed",
     "icmp_type"),
    ({"protocol": "icmp", "from_port": None, "to_port": None, "icmp_type": -1, "icmp_code": 3},
     "InvalidPermission.Malformed", "icmp_code"),
    ({"protocol": "all"}, "InvalidPermission.Malformed", "protocol"),
])
def test_bad_rules_are_refused_with_stable_codes(changes, code, field):
    with pytest.raises(FirewallInputError) as exc:
        parse(**changes)
    assert exc.value.code == code
    assert exc.value.field == field


def test_good_rules_parse_to_typed_values():
    r = parse(protocol="6", peer="0.0.0.0/0")
    assert r.protocol == "tcp" and str(r.cidr) == "0.0.0.0/0" and r.port_range == (22, 22)
    icmp = parse(protocol="icmp", from_port=None, to_port=None, icmp_type=8)
    assert icmp.icmp_ranges == ((8, 8), (0, 255))
    anyp = parse(protocol="-1", from_port=None, to_port=None, peer=G1)
    assert anyp.protocol == "all" and anyp.peer_group == G1 and anyp.cidr is None


@pytest.mark.parametrize("changes, code", [
    ({"tap": "tap0; nft flush"}, "InvalidParameterValue"),
    ({"tap": "a" * 16}, "InvalidParameterValue"),
    ({"mac": "03:00:00:00:00:01"}, "InvalidParameterValue"),
    ({"mac": "02:00:00:00:00"}, "InvalidParameterValue"),
    ({"ipv4": "10.0.0.1/24"}, "InvalidParameterValue"),
    ({"ipv4": "224.0.0.1"}, "InvalidParameterValue"),
    ({"zone": 0}, "InvalidParameterValue"),
    ({"zone": 65536}, "InvalidParameterValue"),
    ({"group_ids": []}, "SecurityGroupsPerInstanceLimitExceeded"),
    ({"group_ids": ["sg-%017x" % i for i in range(6)]}, "SecurityGroupsPerInstanceLimitExceeded"),
    ({"group_ids": ["default"]}, "InvalidParameterValue"),
])
def test_bad_ports_are_refused(changes, code):
    data = {"tap": "tap1", "bridge": "br0", "mac": "02:00:00:00:00:01", "ipv4": "10.0.0.5", "zone": 3,
            "group_ids": [G1], **changes}
    with pytest.raises(FirewallInputError) as exc:
        PortFirewall.parse(data)
    assert exc.value.code == code


def test_peer_group_of_another_vpc_is_not_found():
    fw = basic()
    other = SecurityGroup(G2, 8, (), frozenset())  # zone 8: another VPC
    with pytest.raises(FirewallInputError) as exc:
        HostFirewall(fw.ports, {**fw.groups, G2: other})
    assert exc.value.code == "InvalidGroup.NotFound"


def test_port_group_missing_and_duplicates():
    fw = basic()
    with pytest.raises(FirewallInputError) as exc:
        HostFirewall(fw.ports, {G1: fw.groups[G1]})  # tap2 uses G2, and G1 names G2 as a peer
    assert exc.value.code == "InvalidGroup.NotFound"
    with pytest.raises(FirewallInputError) as exc:
        HostFirewall(fw.ports + fw.ports[:1], fw.groups)
    assert exc.value.code == "InvalidParameterValue"
    r = fw.groups[G1].rules[0]
    with pytest.raises(FirewallInputError) as exc:
        SecurityGroup(G1, 7, (r, r))
    assert exc.value.code == "InvalidPermission.Duplicate"
    with pytest.raises(FirewallInputError) as exc:  # one bridge, two VPC zones
        HostFirewall((PortFirewall("t1", "br0", "02:00:00:00:00:01", IPv4Address("10.0.0.1"), 1, (G1,)),
                      PortFirewall("t2", "br0", "02:00:00:00:00:02", IPv4Address("10.0.0.2"), 2, (G2,))),
                     {G1: SecurityGroup(G1, 1), G2: SecurityGroup(G2, 2)})
    assert exc.value.code == "InvalidParameterValue"


def test_host_firewall_parse_from_json_like_data():
    fw = HostFirewall.parse({
        "ports": [{"tap": "tap1", "bridge": "br0", "mac": "02:AA:00:00:00:01", "ipv4": "10.0.0.5", "zone": 3,
                   "group_ids": [G1]}],
        "groups": [{"group_id": G1, "zone": 3, "members": ["10.0.0.5"], "rules": [BASE]}],
    })
    assert fw.ports[0].mac == "02:aa:00:00:00:01"
    assert fw.groups[G1].members == frozenset({IPv4Address("10.0.0.5")})


def test_tap_prefix_is_validated_and_ports_must_use_it():
    fw = basic()
    assert HostFirewall(fw.ports, fw.groups, tap_prefix="tap").tap_prefix == "tap"
    for bad in ("", "tap*", "t p", "a" * 9):
        with pytest.raises(FirewallInputError) as exc:
            HostFirewall(fw.ports, fw.groups, tap_prefix=bad)
        assert exc.value.code == "InvalidParameterValue"
    with pytest.raises(FirewallInputError) as exc:
        HostFirewall(fw.ports, fw.groups, tap_prefix="vnet")
    assert exc.value.field == "tap"

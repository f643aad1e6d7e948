"""Pure security-group input checks (controller/services/sg_rules.py): every bad rule, name and
group list is refused with its stable code, good rules are normalized, duplicates share a key."""
from __future__ import annotations

import pytest

from controller.errors import KumoError
from controller.services import sg_rules
from controller.services.sg_rules import parse_rule, parse_rules, validate_instance_groups

SG = "sg-0123456789abcdef0"
SG2 = "sg-0123456789abcdef1"


def code_of(fn, *args, **kw) -> str:
    with pytest.raises(KumoError) as info:
        fn(*args, **kw)
    assert 400 <= info.value.status < 500
    return info.value.code


def test_tcp_rule_normalized():
    r = parse_rule("ingress", {"protocol": "TCP", "from_port": 22, "to_port": 22,
                               "cidr_ipv4": "10.0.0.0/8", "description": "ssh"})
    assert (r.protocol, r.from_port, r.to_port, r.cidr_ipv4, r.peer_group_id) == \
        ("tcp", 22, 22, "10.0.0.0/8", None)
    assert r.key == "ingress|tcp|22|22|||cidr:10.0.0.0/8"
    assert parse_rule("ingress", {"protocol": "6", "from_port": 22, "to_port": 22,
                                  "cidr_ipv4": "10.0.0.0/8"}).key == r.key


@pytest.mark.parametrize("proto,expected", [("udp", "udp"), ("17", "udp"), (17, "udp"),
                                            ("icmp", "icmp"), ("1", "icmp"), ("all", "all"),
                                            ("-1", "all"), (-1, "all")])
def test_protocol_aliases(proto, expected):
    assert sg_rules.parse_protocol(proto) == expected


def test_icmp_and_all_rules():
    any_icmp = parse_rule("ingress", {"protocol": "icmp", "peer_group_id": SG})
    assert (any_icmp.icmp_type, any_icmp.icmp_code, any_icmp.from_port) == (-1, -1, None)
    echo = parse_rule("ingress", {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0,
                                  "cidr_ipv4": "0.0.0.0/0"})
    assert (echo.icmp_type, echo.icmp_code) == (8, 0)
    allr = parse_rule("egress", {"protocol": "-1", "from_port": -1, "to_port": -1,
                                 "cidr_ipv4": "0.0.0.0/0"})
    assert (allr.protocol, allr.from_port, allr.to_port) == ("all", None, None)
    assert allr.key == "egress|all|||||cidr:0.0.0.0/0"


BASE = {"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr_ipv4": "10.0.0.0/8"}


@pytest.mark.parametrize("change,code", [
    ({"cidr_ipv4": "10.0.0.0/8 accept; flush ruleset"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "::/0"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "fd00::/8"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "10.0.0.1/8"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "10.0.0.0/33"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "10.0.0.0"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "300.0.0.0/8"}, "InvalidParameterValue"),
    ({"cidr_ipv4": "10.0.0.0/8\n"}, "InvalidParameterValue"),
    ({"to_port": 65536}, "InvalidPermission.Malformed"),
    ({"from_port": -1}, "InvalidPermission.Malformed"),
    ({"from_port": 90, "to_port": 80}, "InvalidPermission.Malformed"),
    ({"to_port": None}, "InvalidPermission.Malformed"),
    ({"from_port": True}, "InvalidPermission.Malformed"),
    ({"protocol": "gre"}, "InvalidPermission.Malformed"),
    ({"protocol": "tcp; drop"}, "InvalidPermission.Malformed"),
    ({"protocol": ""}, "InvalidPermission.Malformed"),
    ({"protocol": None}, "InvalidPermission.Malformed"),
    ({"icmp_type": 8}, "InvalidPermission.Malformed"),
    ({"protocol": "icmp"}, "InvalidPermission.Malformed"),  # ports on icmp
    ({"protocol": "all"}, "InvalidPermission.Malformed"),  # ports on all
    ({"cidr_ipv4": None}, "InvalidPermission.Malformed"),  # no peer
    ({"peer_group_id": SG}, "InvalidPermission.Malformed"),  # two peers
    ({"cidr_ipv4": None, "peer_group_id": "sg-nope"}, "InvalidGroup.NotFound"),
    ({"cidr_ipv4": None, "peer_group_id": "default"}, "InvalidGroup.NotFound"),
    ({"description": "bad\x00desc"}, "InvalidParameterValue"),
    ({"description": "x" * 256}, "InvalidParameterValue"),
])
def test_bad_rules(change, code):
    assert code_of(parse_rule, "ingress", {**BASE, **change}) == code


@pytest.mark.parametrize("icmp,code", [({"icmp_type": 256}, "InvalidPermission.Malformed"),
                                       ({"icmp_type": -2}, "InvalidPermission.Malformed"),
                                       ({"icmp_code": 0}, "InvalidPermission.Malformed"),
                                       ({"icmp_type": 3, "icmp_code": 300},
                                        "InvalidPermission.Malformed")])
def test_bad_icmp(icmp, code):
    assert code_of(parse_rule, "ingress", {"protocol": "icmp", "cidr_ipv4": "0.0.0.0/0",
                                           **icmp}) == code


def test_bad_direction():
    assert code_of(parse_rule, "sideways", BASE) == "InvalidParameterValue"


def test_duplicates_in_one_request_and_description_ignored():
    assert code_of(parse_rules, "ingress", [BASE, {**BASE, "description": "again"}]) == \
        "InvalidPermission.Duplicate"
    assert len(parse_rules("ingress", [BASE, {**BASE, "to_port": 81}])) == 2
    # The same permission in the other direction is a different rule.
    assert parse_rule("ingress", BASE).key != parse_rule("egress", BASE).key


@pytest.mark.parametrize("name", ["web", "web servers", "a" * 255, "db_[prod]-1:x/y"])
def test_good_names(name):
    assert sg_rules.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 256, "bad\nname", "tab\tname", "nul\x00", "bell\x07",
                                  "sg-123", "quote'", 'dq"', "back`tick", "<xml>", "ünï"])
def test_bad_names(name):
    assert code_of(sg_rules.check_name, name) == "InvalidParameterValue"


def test_rule_limit():
    sg_rules.check_rule_limit(SG, "ingress", 59, 1, 60)
    assert code_of(sg_rules.check_rule_limit, SG, "ingress", 60, 1, 60) == \
        "RulesPerSecurityGroupLimitExceeded"


def test_validate_instance_groups():
    assert validate_instance_groups([SG]) == (SG,)
    assert validate_instance_groups([SG, SG2, SG]) == (SG, SG2)
    five = [f"sg-0123456789abcdef{i}" for i in range(5)]
    assert validate_instance_groups(five) == tuple(five)
    six = five + ["sg-0123456789abcdefa"]
    assert code_of(validate_instance_groups, six) == "SecurityGroupsPerInstanceLimitExceeded"
    assert code_of(validate_instance_groups, []) == "InvalidParameterValue"
    assert code_of(validate_instance_groups, SG) == "InvalidParameterValue"
    assert code_of(validate_instance_groups, [SG, "sg-x"]) == "InvalidGroup.NotFound"
    assert code_of(validate_instance_groups, [SG, SG2], limit=1) == \
        "SecurityGroupsPerInstanceLimitExceeded"

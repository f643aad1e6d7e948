"""Sample HostFirewall inputs (pure data) shared by the firewall tests, lab test and benchmark."""
from __future__ import annotations

from ipaddress import IPv4Address

from agent.firewall.model import HostFirewall, PortFirewall, Rule, SecurityGroup

G1 = "sg-0123456789abcdef0"
G2 = "sg-00000000000000002"
G3 = "sg-00000000000000003"


def rid(i: int) -> str:
    return "sgr-%017x" % i


def rule(i: int, direction: str, protocol: str, peer: str, **kw) -> Rule:
    return Rule.parse({"rule_id": rid(i), "direction": direction, "protocol": protocol, "peer": peer, **kw})


def basic() -> HostFirewall:
    rules = (
        rule(1, "ingress", "tcp", "0.0.0.0/0", from_port=22, to_port=22),
        rule(2, "ingress", "tcp", "10.1.0.0/16", from_port=20, to_port=30),
        rule(3, "ingress", "icmp", G1),
        rule(4, "egress", "all", "0.0.0.0/0"),
        rule(5, "ingress", "udp", G2, from_port=53, to_port=53),
        rule(6, "ingress", "all", G2),
        rule(7, "ingress", "icmp", "192.168.0.0/24", icmp_type=8, icmp_code=0),
    )
    return HostFirewall(
        ports=(PortFirewall("tap1", "br-vpc1", "02:00:00:00:00:01", IPv4Address("10.0.0.5"), 7, (G1,)),
               PortFirewall("tap2", "br-vpc1", "02:00:00:00:00:02", IPv4Address("10.0.0.6"), 7, (G1, G2))),
        groups={G1: SecurityGroup(G1, 7, rules, frozenset({IPv4Address("10.0.0.5"), IPv4Address("10.0.0.6")})),
                G2: SecurityGroup(G2, 7, (), frozenset({IPv4Address("10.0.0.9")}))},
    )


def two_vpcs() -> HostFirewall:
    """Two VPCs with the same CIDR on one host: separate bridges and conntrack zones."""
    a = SecurityGroup(G1, 1, (rule(1, "ingress", "tcp", "0.0.0.0/0", from_port=80, to_port=80),
                              rule(2, "egress", "all", "0.0.0.0/0")), frozenset())
    b = SecurityGroup(G3, 2, (rule(3, "ingress", "tcp", "10.0.0.0/24", from_port=443, to_port=443),),
                      frozenset())
    return HostFirewall(
        ports=(PortFirewall("tapa", "br-a", "02:00:00:00:0a:01", IPv4Address("10.0.0.5"), 1, (G1,)),
               PortFirewall("tapb", "br-b", "02:00:00:00:0b:01", IPv4Address("10.0.0.5"), 2, (G3,))),
        groups={G1: a, G3: b},
        tap_prefix="tap",
    )


def many_rules(n_rules: int, n_ports: int) -> HostFirewall:
    """One group with ``n_rules`` distinct ingress TCP rules (one /32 and one port each) on
    ``n_ports`` ports, plus all-outbound and ICMP among members. TCP port 9 is never allowed."""
    rules = [rule(i + 1, "ingress", "tcp", f"172.16.{(i // 250) % 256}.{i % 250 + 1}/32",
                  from_port=10000 + i % 50000, to_port=10000 + i % 50000) for i in range(n_rules)]
    rules.append(rule(n_rules + 1, "egress", "all", "0.0.0.0/0"))
    rules.append(rule(n_rules + 2, "ingress", "icmp", G1))  # members ping each other
    ports = tuple(PortFirewall(f"kt{i}", "br-bench", "02:00:00:%02x:%02x:01" % (i // 256, i % 256),
                               IPv4Address(f"10.9.{i // 200}.{i % 200 + 10}"), 9, (G1,))
                  for i in range(n_ports))
    return HostFirewall(ports=ports, groups={G1: SecurityGroup(G1, 9, tuple(rules),
                                                              frozenset(p.ipv4 for p in ports))})


CASES = {"basic": basic, "two_vpcs": two_vpcs, "empty": lambda: HostFirewall(),
         "many_rules_small": lambda: many_rules(20, 3)}

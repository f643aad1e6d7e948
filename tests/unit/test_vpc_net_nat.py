"""agent.network.nat: the router namespace's nft table rendered as a pure function, and the
gratuitous ARP frame builder."""
from __future__ import annotations

import json
from ipaddress import IPv4Address

from agent.network import NatGatewayNet, PortNet, SubnetNet, VpcNet
from agent.network.garp import garp_frame
from agent.network.nat import delete_table_json, render_nat, render_nat_json

S1, S2, S3 = ("subnet-00000000000000001", "subnet-00000000000000002", "subnet-00000000000000003")


def vpc(internet: bool = True, natgw: bool = True) -> VpcNet:
    subnets = [SubnetNet(subnet_id=S1, cidr="10.0.1.0/24", router_ip="10.0.1.1", route="igw"),
               SubnetNet(subnet_id=S2, cidr="10.0.2.0/24", router_ip="10.0.2.1", route="nat"),
               SubnetNet(subnet_id=S3, cidr="10.0.3.0/24", router_ip="10.0.3.1")]
    ports = [PortNet(port_id="eni-00000000000000001", tap="t1", mac="52:54:00:00:00:01",
                     ip="10.0.1.5", subnet_id=S1, public_ip="203.0.113.5"),
             PortNet(port_id="eni-00000000000000002", tap="t2", mac="52:54:00:00:00:02",
                     ip="10.0.1.6", subnet_id=S1),
             # A public IP on a port in a private subnet has no effect (no route to an IGW).
             PortNet(port_id="eni-00000000000000003", tap="t3", mac="52:54:00:00:00:03",
                     ip="10.0.3.7", subnet_id=S3, public_ip="203.0.113.7")]
    ng = NatGatewayNet(nat_gateway_id="nat-00000000000000001", subnet_id=S1,
                       private_ip="10.0.1.200", public_ip="203.0.113.9",
                       host_underlay_ip="172.31.0.11") if natgw else None
    return VpcNet(vpc_id="vpc-0123456789abcdef0", vni=42, cidr="10.0.0.0/16", subnets=subnets,
                  ports=ports, internet=internet, nat_gateway=ng)


def rules(doc: dict, chain: str) -> list[list]:
    return [c["add"]["rule"]["expr"] for c in doc["nftables"]
            if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]


def test_table_has_three_base_chains() -> None:
    # The whole table; how it is loaded (in place, one transaction) is tests/unit/test_nat_render.py's.
    cmds = render_nat(vpc(), True)["nftables"]
    assert cmds[0] == {"add": {"table": {"family": "ip", "name": "kumo_nat"}}}
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})}
    assert chains["prerouting"]["hook"] == "prerouting" and chains["prerouting"]["type"] == "nat"
    assert chains["postrouting"]["prio"] == 100 and chains["forward"]["type"] == "filter"


def test_one_to_one_nat_only_for_public_subnets() -> None:
    doc = render_nat(vpc(), True)
    pre = rules(doc, "prerouting")
    assert len(pre) == 1
    assert pre[0] == [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "ku-00002a"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": "203.0.113.5"}},
        {"dnat": {"addr": "10.0.1.5"}}]
    post = rules(doc, "postrouting")
    assert post[0][-1] == {"snat": {"addr": "203.0.113.5"}}
    assert post[0][1]["match"]["right"] == "10.0.1.5"
    assert "203.0.113.7" not in json.dumps(doc)


def test_nat_gateway_only_on_its_host() -> None:
    here = rules(render_nat(vpc(), True), "postrouting")
    assert here[-1][-1] == {"snat": {"addr": "203.0.113.9"}}
    assert here[-1][1]["match"]["right"] == {"set": [{"prefix": {"addr": "10.0.2.0", "len": 24}}]}
    elsewhere = rules(render_nat(vpc(), False), "postrouting")
    assert all(r[-1] != {"snat": {"addr": "203.0.113.9"}} for r in elsewhere)


def test_forward_filter_lets_only_mapped_sources_out() -> None:
    fwd = rules(render_nat(vpc(), True), "forward")
    # The first two only count (the NAT gateway's data processed; no verdict): tests/unit/test_nat_render.py.
    assert [list(r[-1])[0] for r in fwd[:2]] == ["counter", "counter"]
    fwd = fwd[2:]
    verdicts = [(r[0]["match"]["left"]["meta"]["key"], list(r[-1])[0]) for r in fwd]
    assert verdicts == [("iifname", "accept"), ("iifname", "accept"), ("iifname", "drop"),
                        ("oifname", "accept"), ("oifname", "drop")]
    allowed = fwd[3][1]["match"]["right"]["set"]
    assert allowed == ["10.0.1.5", {"prefix": {"addr": "10.0.2.0", "len": 24}}]
    # No IGW, no NAT gateway: nothing may leave or enter at all.
    closed = rules(render_nat(vpc(internet=False, natgw=False), False), "forward")
    assert [list(r[-1])[0] for r in closed] == ["accept", "accept", "drop", "drop"]
    assert rules(render_nat(vpc(internet=False, natgw=False), False), "prerouting") == []


def test_json_is_deterministic() -> None:
    assert render_nat_json(vpc(), True) == render_nat_json(vpc(), True)
    assert json.loads(delete_table_json())["nftables"][1] == {
        "delete": {"table": {"family": "ip", "name": "kumo_nat"}}}


def test_garp_frame() -> None:
    f = garp_frame("02:4b:4c:00:00:01", IPv4Address("203.0.113.5"))
    assert len(f) == 42
    assert f[:6] == b"\xff" * 6 and f[6:12] == bytes.fromhex("024b4c000001") and f[12:14] == b"\x08\x06"
    arp = f[14:]
    assert arp[6:8] == b"\x00\x01"  # request
    assert arp[14:18] == arp[24:28] == bytes([203, 0, 113, 5])  # sender IP == target IP

"""The nft table `ip kumo_nat` of one VPC router namespace, rendered by a pure function.

It holds the VPC's whole edge policy towards the outside (the transit link to the host):
- 1:1 NAT for public IPs of ports on this host: dnat public->private in prerouting, snat
  private->public in postrouting;
- the NAT gateway (only on the host that holds it): snat of the subnets routed to it behind its
  public IP (masquerade behind the elastic IP);
- a forward filter: from outside only replies and dnat'ed flows enter; towards outside only the
  sources with a public mapping or behind the NAT gateway leave. Nothing else crosses, so a
  private subnet gets nothing from outside and never leaks its private source addresses.

Rendered as nft's JSON (never text templates), loaded in one `nft -j -f -` transaction that
deletes and re-adds the table: rule changes are atomic and leave conntrack entries alone.
"""
from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterable

from agent.network import names
from agent.network.model import VpcNet

FAMILY = "ip"


def _match(left: dict, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _iif(name: str) -> dict:
    return _match({"meta": {"key": "iifname"}}, name)


def _oif(name: str) -> dict:
    return _match({"meta": {"key": "oifname"}}, name)


def _addr(field: str, value: IPv4Address) -> dict:
    return _match({"payload": {"protocol": "ip", "field": field}}, str(value))


def _addr_set(field: str, values: Iterable[IPv4Address | IPv4Network]) -> dict:
    elems: list[Any] = []
    for v in sorted(values, key=str):
        if isinstance(v, IPv4Network):
            elems.append({"prefix": {"addr": str(v.network_address), "len": v.prefixlen}})
        else:
            elems.append(str(v))
    return _match({"payload": {"protocol": "ip", "field": field}}, {"set": elems})


def public_mappings(vpc: VpcNet) -> list[tuple[IPv4Address, IPv4Address]]:
    """(public, private) pairs this host NATs 1:1: ports with a public IP in a subnet whose
    default route is an attached internet gateway."""
    out = []
    for p in vpc.ports:
        if p.public_ip is not None and vpc.effective_route(vpc.subnet(p.subnet_id)) == "igw":
            out.append((p.public_ip, p.ip))
    return sorted(out)


def nat_subnets(vpc: VpcNet) -> list[IPv4Network]:
    return sorted((s.cidr for s in vpc.subnets if vpc.effective_route(s) == "nat"), key=str)


def render_nat(vpc: VpcNet, local_nat_gateway: bool) -> dict:
    """The complete `ip kumo_nat` table of the router namespace of `vpc`, as an nft JSON batch."""
    ku = names.link_name("u", vpc.vni)
    tbl = {"family": FAMILY, "name": names.NFT_TABLE}
    cmds: list[dict] = [{"add": {"table": tbl}}, {"delete": {"table": tbl}}, {"add": {"table": tbl}}]

    def chain(name: str, ctype: str, hook: str, prio: int) -> None:
        cmds.append({"add": {"chain": {"family": FAMILY, "table": names.NFT_TABLE, "name": name,
                                        "type": ctype, "hook": hook, "prio": prio,
                                        "policy": "accept"}}})

    def rule(chain_name: str, *expr: dict) -> None:
        cmds.append({"add": {"rule": {"family": FAMILY, "table": names.NFT_TABLE,
                                       "chain": chain_name, "expr": list(expr)}}})

    chain("prerouting", "nat", "prerouting", -100)
    chain("postrouting", "nat", "postrouting", 100)
    chain("forward", "filter", "forward", 0)
    mappings = public_mappings(vpc)
    for public, private in mappings:
        rule("prerouting", _iif(ku), _addr("daddr", public), {"dnat": {"addr": str(private)}})
    for public, private in mappings:
        rule("postrouting", _oif(ku), _addr("saddr", private), {"snat": {"addr": str(public)}})
    behind_nat = nat_subnets(vpc) if local_nat_gateway and vpc.nat_gateway is not None else []
    if behind_nat:
        rule("postrouting", _oif(ku), _addr_set("saddr", behind_nat),
             {"snat": {"addr": str(vpc.nat_gateway.public_ip)}})
    # Why a filter as well as routes: the routes decide where a subnet's traffic goes; the filter
    # guarantees that nothing without a public mapping crosses the edge in either direction.
    rule("forward", _iif(ku), _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
         {"accept": None})
    rule("forward", _iif(ku), _match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None})
    rule("forward", _iif(ku), {"drop": None})
    allowed: list[IPv4Address | IPv4Network] = [private for _, private in mappings]
    allowed += behind_nat
    if allowed:
        rule("forward", _oif(ku), _addr_set("saddr", allowed), {"accept": None})
    rule("forward", _oif(ku), {"drop": None})
    return {"nftables": cmds}


def render_nat_json(vpc: VpcNet, local_nat_gateway: bool) -> str:
    return json.dumps(render_nat(vpc, local_nat_gateway), sort_keys=True, separators=(",", ":"))


def delete_table_json() -> str:
    tbl = {"family": FAMILY, "name": names.NFT_TABLE}
    return json.dumps({"nftables": [{"add": {"table": tbl}}, {"delete": {"table": tbl}}]})

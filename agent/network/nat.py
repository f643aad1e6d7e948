"""The nft table `ip kumo_nat` of one VPC router namespace: rendered whole by a pure function and
loaded in one atomic, in-place transaction by the agent's one nft loader (agent/firewall/load.py).

It holds the VPC's whole edge policy towards the outside (the transit link to the host):
- 1:1 NAT for public IPs of ports on this host: dnat public->private in prerouting, snat
  private->public in postrouting;
- the NAT gateway (only on the host that holds it): snat of the subnets routed to it behind its
  public IP (masquerade behind the elastic IP);
- a forward filter: from outside only replies and dnat'ed flows enter; towards outside only the
  sources with a public mapping or behind the NAT gateway leave. Nothing else crosses, so a
  private subnet gets nothing from outside and never leaks its private source addresses.
- the NAT gateway's data processed (per-GiB billing): one named counter object
  `natgw-<nat gateway id>` fed by two rules at the head of the forward chain, the subnets
  behind it leaving and the replies (established/related) coming back to them. A named object,
  not a per-rule counter, because every load flushes and re-adds the rules (a rule's counter
  would start again at each reload) while `add counter` on an existing object keeps its value
  and `flush table` leaves objects alone. `read_counters` reads them back (nft -j list). When the
  gateway leaves this host its counter is no longer fed; it stays until the router namespace
  goes (or a load rebuilt from the table read back deletes it). Either way the controller's base
  for (gateway, host) stays right: a kept counter continues, a new one is smaller (a reset).
- A gateway's last count (issue 13: bytes after the last heartbeat of a gateway deleted or moved
  away): the dataplane (agent.network.apply) reads the counters of a router namespace right
  after a load that stopped feeding a gateway's counter (the in-place load removes its counting
  rules; the named object stays), so the read is exact, then deletes the counter objects it
  read (drop_counters_document). Before removing a router namespace it seals the forward chain
  first (seal_document: counters stop, nothing forwarded), then reads. The read cannot be in
  the same transaction as the delete (nft's counter reads are netlink gets outside the commit
  batch), hence "stop feeding, then read, then delete": nothing is forwarded uncounted.
  Residual: a load the kernel refused (the table changed by hand) is rebuilt from the table
  read back and deletes stale counters in its transaction; their bytes since the last heartbeat
  are then lost (that path is for hand-made drift only).

Rendering (pure, deterministic): `render_nat` gives the whole table as nft JSON `add` commands,
never text templates. Every value is checked again on its way in, whatever validated it before:
addresses and prefixes through ipaddress, the transit interface name through
agent.validators.ifname (so no set reference, wildcard or variable can be smuggled in); a bad
one raises NatInputError.

Loading: `render_nat_json` is the payload of the dataplane's NftTable record, `load.in_place` of
that table: ONE transaction that keeps the table and its three base chains (their hooks stay
registered), flushes their rules and adds the new ones. The kernel swaps generations at commit,
so the forward filter (the boundary of private subnets) is never missing or empty, and conntrack
entries (NAT bindings of live flows) are left alone. Never `delete table` + `add table`: the new
base chains' hooks would go live before the commit fills them. `load_table` loads a payload into
a router namespace (load.load_in_place: as rendered first; when the kernel refuses that because
the table was changed by hand, it is read back and loaded again with the stale objects deleted in
the same transaction).
"""
from __future__ import annotations

import json
import re
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterable, Optional

from agent import validators
from agent.firewall import load
from agent.network import names
from agent.network.model import VpcNet

FAMILY = "ip"
TABLES = ((FAMILY, names.NFT_TABLE),)
#: (name, type, hook, priority) of the table's base chains, all with policy accept (rules decide).
BASE_CHAINS = (("prerouting", "nat", "prerouting", -100), ("postrouting", "nat", "postrouting", 100),
               ("forward", "filter", "forward", 0))


class NatInputError(ValueError):
    """A value that must not reach nft (not an IPv4 address/prefix, not an interface name)."""

    code = "InvalidParameterValue"


#: Named counters of NAT gateways: this prefix + the gateway's id (checked by NATGW_ID_RE).
COUNTER_PREFIX = "natgw-"
#: The contract's ResourceId: letters, a hyphen, hex digits; nothing nft could read otherwise.
NATGW_ID_RE = re.compile(r"^[a-z]{1,8}-[0-9a-f]{8,17}$")


def counter_name(nat_gateway_id: Any) -> str:
    """The named counter of a NAT gateway; the id is checked again (it becomes an nft name)."""
    if not isinstance(nat_gateway_id, str) or not NATGW_ID_RE.match(nat_gateway_id):
        raise NatInputError(f"not a NAT gateway id: {nat_gateway_id!r}")
    return COUNTER_PREFIX + nat_gateway_id


def _ip(value: Any) -> str:
    if not isinstance(value, (str, IPv4Address)):
        raise NatInputError(f"not an IPv4 address: {value!r}")
    try:
        return str(IPv4Address(value))
    except ValueError as e:
        raise NatInputError(f"not an IPv4 address: {value!r}") from e


def _net(value: Any) -> IPv4Network:
    if not isinstance(value, (str, IPv4Network)):
        raise NatInputError(f"not an IPv4 prefix: {value!r}")
    try:
        return IPv4Network(value)
    except ValueError as e:
        raise NatInputError(f"not an IPv4 prefix: {value!r}") from e


def _ifname(value: Any) -> str:
    try:
        return validators.ifname(value)
    except ValueError as e:
        raise NatInputError(str(e)) from e


def _match(left: dict, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _iif(name: str) -> dict:
    return _match({"meta": {"key": "iifname"}}, _ifname(name))


def _oif(name: str) -> dict:
    return _match({"meta": {"key": "oifname"}}, _ifname(name))


def _addr(field: str, value: IPv4Address) -> dict:
    return _match({"payload": {"protocol": "ip", "field": field}}, _ip(value))


def _addr_set(field: str, values: Iterable[IPv4Address | IPv4Network]) -> dict:
    elems: list[Any] = []
    for v in sorted(values, key=str):
        if isinstance(v, IPv4Network):
            net = _net(v)
            elems.append({"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
        else:
            elems.append(_ip(v))
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
    """The complete `ip kumo_nat` table of the router namespace of `vpc`: nft JSON `add`
    commands (table, base chains, rules), pure. Raises NatInputError."""
    ku = names.link_name("u", vpc.vni)
    cmds: list[dict] = [{"add": {"table": {"family": FAMILY, "name": names.NFT_TABLE}}}]
    for name, ctype, hook, prio in BASE_CHAINS:
        cmds.append({"add": {"chain": {"family": FAMILY, "table": names.NFT_TABLE, "name": name,
                                        "type": ctype, "hook": hook, "prio": prio, "policy": "accept"}}})

    def rule(chain_name: str, *expr: dict) -> None:
        cmds.append({"add": {"rule": {"family": FAMILY, "table": names.NFT_TABLE,
                                       "chain": chain_name, "expr": list(expr)}}})

    mappings = public_mappings(vpc)
    for public, private in mappings:
        rule("prerouting", _iif(ku), _addr("daddr", public), {"dnat": {"addr": _ip(private)}})
    for public, private in mappings:
        rule("postrouting", _oif(ku), _addr("saddr", private), {"snat": {"addr": _ip(public)}})
    behind_nat = nat_subnets(vpc) if local_nat_gateway and vpc.nat_gateway is not None else []
    if behind_nat:
        rule("postrouting", _oif(ku), _addr_set("saddr", behind_nat),
             {"snat": {"addr": _ip(vpc.nat_gateway.public_ip)}})
    if local_nat_gateway and vpc.nat_gateway is not None:
        # Declared whenever the gateway is here (even with no subnet routed to it yet), so its
        # count never restarts when routes come and go. Counting rules first: no verdict, so
        # the filter below decides as before; inbound only replies (what the gateway forwards).
        counter = counter_name(vpc.nat_gateway.nat_gateway_id)
        cmds.insert(1, {"add": {"counter": {"family": FAMILY, "table": names.NFT_TABLE,
                                            "name": counter}}})
        if behind_nat:
            rule("forward", _oif(ku), _addr_set("saddr", behind_nat), {"counter": counter})
            rule("forward", _iif(ku), _addr_set("daddr", behind_nat),
                 _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                 {"counter": counter})
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
    """The NftTable payload: the in-place transaction (load.in_place) of `render_nat`, as the
    canonical JSON text (equal inputs give equal text, so the dataplane's diff sees no change)."""
    return json.dumps(load.in_place(render_nat(vpc, local_nat_gateway)), sort_keys=True,
                      separators=(",", ":"))


def load_table(netns: Optional[str], payload: str, backend: Optional[load.Backend] = None) -> None:
    """Load a `render_nat_json` payload into router namespace `netns` in one in-place transaction
    (the nft CLI entered into it unless `backend` is given). Raises load.FirewallApplyError
    (nothing changed)."""
    document = json.loads(payload)
    own = backend is None
    if own:
        backend = load.backend_for(netns)
    try:
        load.load_in_place(backend, lambda existing: load.in_place(document, existing),
                           load.declared(document), TABLES)
    finally:
        if own:
            load.close_backend(backend)


def counters_in(listing: list[dict]) -> dict[str, int]:
    """{NAT gateway id: bytes} of the NAT gateway counters in an `nft -j list` output."""
    out: dict[str, int] = {}
    for obj in listing:
        body = obj.get("counter") if isinstance(obj, dict) else None
        if not isinstance(body, dict) or body.get("family") != FAMILY \
                or body.get("table") != names.NFT_TABLE:
            continue
        name = body.get("name", "")
        if name.startswith(COUNTER_PREFIX) and NATGW_ID_RE.match(name[len(COUNTER_PREFIX):]):
            out[name[len(COUNTER_PREFIX):]] = int(body.get("bytes", 0))
    return out


def read_counters(netns: Optional[str], backend: Optional[load.Backend] = None) -> dict[str, int]:
    """{NAT gateway id: bytes forwarded} read from router namespace `netns` (the nft CLI entered
    into it unless `backend` is given). Raises load.FirewallApplyError."""
    own = backend is None
    if own:
        backend = load.backend_for(netns)
    try:
        return counters_in(backend.list_ruleset())
    finally:
        if own:
            load.close_backend(backend)


def seal_document() -> dict:
    """ONE transaction for a router namespace about to be removed: the forward chain loses its
    rules (the counting ones with them) and drops everything. Its counters stop moving, so the
    value read next is the last one (no window between the read and the namespace's end), and
    nothing crosses unfiltered meanwhile (the chain is never empty of a verdict: the flush and
    the drop commit together). The VPC is leaving this host: its traffic has nowhere to go."""
    chain = {"family": FAMILY, "table": names.NFT_TABLE, "name": "forward"}
    return {"nftables": [{"flush": {"chain": chain}},
                         {"add": {"rule": {**chain, "chain": "forward", "expr": [{"drop": None}]}}}]}


def drop_counters_document(nat_gateway_ids: Iterable[str]) -> dict:
    """ONE transaction deleting the named counters of these gateways (read for the last time:
    no rule references them any more). Ids are checked again (counter_name)."""
    return {"nftables": [{"delete": {"counter": {"family": FAMILY, "table": names.NFT_TABLE,
                                                 "name": counter_name(i)}}}
                         for i in sorted(nat_gateway_ids)]}


class CounterIO:
    """The nft calls the dataplane makes around a NAT gateway's last read (final counters,
    agent.network.nat_finals): read, seal (seal_document) and drop (drop_counters_document),
    each in router namespace `netns` through the nft CLI entered into it, or through `backend`
    (tests). Each raises load.FirewallApplyError or OSError."""

    def __init__(self, backend: Optional[load.Backend] = None):
        self.backend = backend

    def _run(self, netns: Optional[str], fn: Any) -> Any:
        if self.backend is not None:
            return fn(self.backend)
        backend = load.backend_for(netns)
        try:
            return fn(backend)
        finally:
            load.close_backend(backend)

    def read(self, netns: Optional[str]) -> dict[str, int]:
        return self._run(netns, lambda b: counters_in(b.list_ruleset()))

    def seal(self, netns: Optional[str]) -> None:
        self._run(netns, lambda b: b.load(seal_document()))

    def drop(self, netns: Optional[str], nat_gateway_ids: Iterable[str]) -> None:
        doc = drop_counters_document(nat_gateway_ids)
        if doc["nftables"]:
            self._run(netns, lambda b: b.load(doc))


def delete_table_json() -> str:
    tbl = {"family": FAMILY, "name": names.NFT_TABLE}
    return json.dumps({"nftables": [{"add": {"table": tbl}}, {"delete": {"table": tbl}}]})

"""The VPC router's NAT table (agent.network.nat) as the agent's one nft loader loads it
(agent.firewall.load): the pure render of the whole table, its in-place transaction (no delete of
the table or a base chain, one document per reload), the retry from a read-back table, the checks
that keep user-derived values out of nft, and the dataplane calling the loader."""
from __future__ import annotations

import copy
import json

import pytest

from agent.firewall import load
from agent.network import Dataplane, HostNetwork, PortNet, SubnetNet, VpcNet, nat
from agent.network.records import NftTable
from tests.unit.test_vpc_net_apply import FakeKernel
from tests.unit.test_vpc_net_nat import S1, vpc

KU = "ku-00002a"
NATGW_COUNTER = "natgw-nat-00000000000000001"
TABLE = {"family": "ip", "name": "kumo_nat"}


def iif(name=KU):
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": name}}


def oif(name=KU):
    return {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": name}}


def saddr(right):
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": right}}


def verbs(document: dict) -> list[tuple[str, str, str]]:
    """(verb, kind, chain or object name) per command, metainfo included."""
    out = []
    for cmd in document["nftables"]:
        verb, body = next(iter(cmd.items()))
        if verb == "metainfo":
            out.append(("metainfo", "", ""))
            continue
        kind, obj = next(iter(body.items()))
        out.append((verb, kind, obj.get("chain", obj.get("name"))))
    return out


class FakeBackend:
    """Records loaded documents; refuses the next `refuse` loads as nft does when the table was
    changed by hand; list_ruleset() returns `listing`."""

    def __init__(self, listing=None, refuse: int = 0):
        self.loaded: list[dict] = []
        self.listing = listing or []
        self.refuse = refuse
        self.lists = 0

    def load(self, document, *, check=False):
        if self.refuse:
            self.refuse -= 1
            raise load.FirewallApplyError("Could not process rule: Operation not supported")
        self.loaded.append(copy.deepcopy(document))

    def list_ruleset(self):
        self.lists += 1
        return self.listing


def test_whole_table_golden() -> None:
    doc = nat.render_nat(vpc(), True)
    assert verbs(doc) == [
        ("add", "table", "kumo_nat"), ("add", "counter", NATGW_COUNTER),
        ("add", "chain", "prerouting"), ("add", "chain", "postrouting"), ("add", "chain", "forward"),
        ("add", "rule", "prerouting"), ("add", "rule", "postrouting"), ("add", "rule", "postrouting"),
        *[("add", "rule", "forward")] * 7]
    chains = [c["add"]["chain"] for c in doc["nftables"] if "chain" in c["add"]]
    assert [(c["name"], c["type"], c["hook"], c["prio"], c["policy"]) for c in chains] == [
        ("prerouting", "nat", "prerouting", -100, "accept"),
        ("postrouting", "nat", "postrouting", 100, "accept"),
        ("forward", "filter", "forward", 0, "accept")]
    # The forward filter: the boundary of every private subnet, rule by rule.
    fwd = [c["add"]["rule"]["expr"] for c in doc["nftables"]
           if "rule" in c["add"] and c["add"]["rule"]["chain"] == "forward"]
    behind = {"set": [{"prefix": {"addr": "10.0.2.0", "len": 24}}]}
    assert fwd == [
        # the NAT gateway's data processed: out from the subnets behind it, and their replies
        [oif(), saddr(behind), {"counter": NATGW_COUNTER}],
        [iif(), {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": behind}},
         {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
         {"counter": NATGW_COUNTER}],
        [iif(), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
         {"accept": None}],
        [iif(), {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": None}],
        [iif(), {"drop": None}],
        [oif(), saddr({"set": ["10.0.1.5", {"prefix": {"addr": "10.0.2.0", "len": 24}}]}), {"accept": None}],
        [oif(), {"drop": None}]]


def test_reload_is_one_in_place_transaction_without_any_delete() -> None:
    tx = json.loads(nat.render_nat_json(vpc(), True))
    assert verbs(tx)[:7] == [("metainfo", "", ""), ("add", "table", "kumo_nat"), ("flush", "table", "kumo_nat"),
                             ("add", "counter", NATGW_COUNTER),
                             ("add", "chain", "prerouting"), ("add", "chain", "postrouting"),
                             ("add", "chain", "forward")]
    assert {v for v, _, _ in verbs(tx)[7:]} == {"add"}
    assert not [c for c in tx["nftables"] if "delete" in c]
    # the same rules as the whole table, in the same order, after the flush
    whole = nat.render_nat(vpc(), True)["nftables"]
    assert [c for c in tx["nftables"] if "rule" in c.get("add", {})] == [c for c in whole if "rule" in c["add"]]


def test_rerender_of_the_same_input_is_identical() -> None:
    a = nat.render_nat_json(vpc(), True)
    assert nat.render_nat_json(vpc(), True) == a
    v = vpc()
    shuffled = v.model_copy(update={"ports": tuple(reversed(v.ports)), "subnets": tuple(reversed(v.subnets))})
    assert nat.render_nat_json(shuffled, True) == a
    # the payload is its own in-place transaction (building it again changes nothing)
    assert load.in_place(json.loads(a)) == json.loads(a)
    assert nat.render_nat_json(vpc(), False) != a


def test_load_table_sends_the_payload_as_one_transaction() -> None:
    be = FakeBackend()
    payload = nat.render_nat_json(vpc(), True)
    for _ in range(3):  # every reload: one document, no read-back, no delete
        nat.load_table("kvn-x-h1-kvr-00002a", payload, backend=be)
    assert be.loaded == [json.loads(payload)] * 3 and be.lists == 0


def test_refused_load_is_rebuilt_from_the_table_read_back() -> None:
    """Someone re-declared the forward chain by hand and added a set: the kernel refuses the
    payload (atomic: nothing changed); the loader reads the table and loads once more, deleting
    only what is declared differently or not wanted, never the table."""
    listing = [
        {"table": dict(TABLE)},
        {"chain": {**TABLE, "table": "kumo_nat", "name": "prerouting", "type": "nat", "hook": "prerouting",
                   "prio": -100, "policy": "accept"}},
        {"chain": {**TABLE, "table": "kumo_nat", "name": "forward", "type": "filter", "hook": "forward",
                   "prio": 10, "policy": "drop"}},
        {"set": {**TABLE, "table": "kumo_nat", "name": "junk", "type": "ipv4_addr"}},
        {"chain": {"family": "inet", "table": "other", "name": "forward", "type": "filter", "hook": "forward",
                   "prio": 0, "policy": "accept"}},  # not ours: never touched
    ]
    be = FakeBackend(listing, refuse=1)
    nat.load_table("kvn-x-h1-kvr-00002a", nat.render_nat_json(vpc(), True), backend=be)
    assert be.lists == 1 and len(be.loaded) == 1
    v = verbs(be.loaded[0])
    assert [x for x in v if x[0] == "delete"] == [("delete", "set", "junk"), ("delete", "chain", "forward")]
    assert v.index(("flush", "table", "kumo_nat")) < v.index(("delete", "set", "junk"))
    assert v.index(("delete", "chain", "forward")) < v.index(("add", "chain", "forward"))
    assert ("delete", "table", "kumo_nat") not in v and ("delete", "chain", "prerouting") not in v


@pytest.mark.parametrize("field,value", [
    ("public_ip", "203.0.113.5 accept; flush ruleset"),
    ("public_ip", "@allowed"),
    ("ip", "$ip"),
    ("public_ip", 3405803781),
])
def test_values_that_are_not_addresses_never_reach_nft(field: str, value) -> None:
    v = vpc()
    bad = v.ports[0].model_copy(update={field: value})  # model_copy skips validation, as a bug would
    with pytest.raises(nat.NatInputError) as e:
        nat.render_nat(v.model_copy(update={"ports": (bad, *v.ports[1:])}), True)
    assert e.value.code == "InvalidParameterValue"


def test_interface_names_are_checked() -> None:
    for bad in ("ku-*", "ku x", "@set", "", "a" * 16):
        with pytest.raises(nat.NatInputError):
            nat._iif(bad)
    with pytest.raises(nat.NatInputError):
        nat._addr_set("saddr", ["10.0.0.0/33"])
    with pytest.raises(nat.NatInputError):
        nat._addr_set("saddr", ["10.0.0.1/24"])  # host bits set: not a prefix


def test_cli_backend_enters_the_namespace_with_netns_exec_argv() -> None:
    assert load.Nft("kvn-x-h1")._argv("list", "ruleset") == [
        "nsenter", "--net=/run/netns/kvn-x-h1", "--", "nft", "-j", "list", "ruleset"]
    assert load.Nft()._argv("-f", "-") == ["nft", "-j", "-f", "-"]
    with pytest.raises(ValueError):
        load.Nft("../etc")
    backend = load.backend_for("kvn-no-such-namespace")  # not this process's: the CLI
    assert isinstance(backend, load.Nft) and backend.netns == "kvn-no-such-namespace"


def host(public_ip=None) -> HostNetwork:
    v = VpcNet(vpc_id="vpc-0123456789abcdef0", vni=42, cidr="10.0.0.0/16", internet=True,
               subnets=[SubnetNet(subnet_id=S1, cidr="10.0.1.0/24", router_ip="10.0.1.1", route="igw")],
               ports=[PortNet(port_id="eni-00000000000000001", tap="tap0", mac="52:54:00:00:00:01",
                              ip="10.0.1.10", subnet_id=S1, public_ip=public_ip)])
    return HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[v])


def test_dataplane_reloads_the_nat_table_through_the_loader(monkeypatch) -> None:
    monkeypatch.setattr("agent.network.apply.send_garp", lambda *a: None)
    loads: list[tuple[str, str]] = []
    kernel = FakeKernel()
    dp = Dataplane("kvn-x-h1", kernel=kernel, nat_loader=lambda ns, payload: loads.append((ns, payload)))
    assert dp.ensure(host()).ok
    assert dp.ensure(host("203.0.113.5")).ok  # a public IP: the table changes
    assert dp.ensure(host("203.0.113.5")).ok  # nothing changes: no reload
    assert [ns for ns, _ in loads] == ["kvn-x-h1-kvr-00002a"] * 2
    for _, payload in loads:
        tx = json.loads(payload)
        assert not [c for c in tx["nftables"] if "delete" in c]
        assert ("flush", "table", "kumo_nat") in verbs(tx)
    assert "203.0.113.5" in loads[1][1] and "203.0.113.5" not in loads[0][1]
    assert not [c for c in kernel.calls if isinstance(c[1], NftTable)]
    # Without an injected kernel, the real loader is the one (agent.firewall.load, via nat).
    assert Dataplane("kvn-x-h1").nat_loader is nat.load_table

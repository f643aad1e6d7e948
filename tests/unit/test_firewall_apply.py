"""Applier policy on a fake nft: full vs incremental transactions, verify/ensure, clear pairs."""
from __future__ import annotations

import copy
import dataclasses
from ipaddress import IPv4Address

import pytest

from agent.firewall.apply import FirewallApplier, FirewallApplyError, listing_fingerprint
from agent.firewall.model import FirewallInputError
from agent.firewall.render import render
from agent.firewall.samples import G1, G2, basic, rule


class FakeNft:
    """Records loaded documents; list_ruleset() returns a listing built from the last render."""

    def __init__(self):
        self.loaded: list[dict] = []
        self.listing: list[dict] = []
        self.fail = False

    def load(self, document, *, check=False):
        if self.fail:
            raise FirewallApplyError("boom")
        self.loaded.append(copy.deepcopy(document))

    def list_ruleset(self):
        return self.listing


def listing_of(rendered) -> list[dict]:
    """What `nft -j list ruleset` would show for a render (objects with their elements)."""
    out = []
    for cmd in rendered.document()["nftables"]:
        verb, body = next(iter(cmd.items()))
        if verb != "add":
            continue
        kind, obj = next(iter(body.items()))
        obj = dict(obj)
        if kind in ("set", "map"):
            obj["elem"] = list(rendered.elements[(obj["family"], obj["name"])].values())
        if kind != "element":
            out.append({kind: obj})
    return out


def test_setup_is_one_atomic_transaction_that_recreates_both_tables():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    res = ap.setup(basic())
    assert res.mode == "full" and len(nft.loaded) == 1
    cmds = nft.loaded[0]["nftables"]
    assert [next(iter(c)) for c in cmds[1:5]] == ["add", "delete", "add", "delete"]


def test_membership_change_is_a_single_element_transaction():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    fw = basic()
    ap.setup(fw)
    g = fw.groups[G2]
    res = ap.update_group(dataclasses.replace(g, members=g.members | {IPv4Address("10.0.0.10")}))
    assert res.mode == "incremental" and (res.elements_added, res.elements_deleted) == (1, 0)
    cmds = nft.loaded[-1]["nftables"][1:]
    assert cmds == [{"add": {"element": {"family": "inet", "table": "kumo", "name": f"m-{G2}",
                                         "elem": ["10.0.0.10"]}}}]
    res = ap.update_group(g)
    assert nft.loaded[-1]["nftables"][1:][0]["delete"]["element"]["elem"] == ["10.0.0.10"]


def test_isolated_cidr_rule_is_one_element_and_overlapping_rule_rerenders_the_set():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    ap.setup(basic())
    lone = rule(50, "ingress", "tcp", "172.20.0.0/16", from_port=8080, to_port=8080)
    res = ap.change_rules(G1, add=(lone,))
    assert res.mode == "incremental" and res.elements_added == 1 and len(nft.loaded[-1]["nftables"]) == 2
    # state equals a fresh render of the same rules
    assert ap._rendered.fingerprint() == render(ap.current).fingerprint()
    assert ap._rendered.elements == render(ap.current).elements
    over = rule(51, "ingress", "tcp", "10.1.2.0/24", from_port=25, to_port=40)  # overlaps rule 2
    res = ap.change_rules(G1, add=(over,))
    assert res.mode == "incremental"
    assert ap._rendered.elements == render(ap.current).elements
    res = ap.change_rules(G1, remove=(lone.rule_id, over.rule_id))
    assert ap._rendered.elements == render(basic()).elements
    exact = rule(52, "ingress", "tcp", "172.21.0.5/32", from_port=9000, to_port=9000)
    res = ap.change_rules(G1, add=(exact,))
    cmd = nft.loaded[-1]["nftables"][1]["add"]["element"]
    assert res.mode == "incremental" and cmd["name"] == f"{G1}-in-net-l4x"  # exact: the hash set
    assert cmd["elem"] == [{"concat": ["172.21.0.5", 6, 9000]}]
    assert ap._rendered.elements == render(ap.current).elements
    twin = dataclasses.replace(exact, rule_id="sgr-%017x" % 53)  # same match, another id
    ap.change_rules(G1, add=(twin,))
    ap.change_rules(G1, remove=(exact.rule_id,))
    assert ap._rendered.elements == render(ap.current).elements
    assert {"concat": ["172.21.0.5", 6, 9000]} in ap._rendered.elements[("inet", f"{G1}-in-net-l4x")].values()


def test_new_peer_group_changes_the_layout_and_goes_full():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    ap.setup(basic())
    res = ap.change_rules(G1, add=(rule(60, "egress", "tcp", G2, from_port=1, to_port=2),))
    assert res.mode == "full"


def test_bad_change_touches_nothing():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    ap.setup(basic())
    before = len(nft.loaded)
    with pytest.raises(FirewallInputError):
        ap.change_rules(G1, add=(rule(1, "ingress", "tcp", "10.0.0.0/8", from_port=1, to_port=1),))  # dup id
    assert len(nft.loaded) == before


def test_verify_and_ensure_restore_after_a_flush():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    fw = basic()
    ap.setup(fw)
    nft.listing = listing_of(render(fw))
    assert listing_fingerprint(nft.listing) == render(fw).fingerprint()
    assert ap.verify().ok
    nft.listing = [o for o in nft.listing if "rule" not in o]  # `nft flush table`
    result = ap.verify()
    assert not result.ok and any("rules inet forward" in d for d in result.differences)
    n = len(nft.loaded)
    ap.ensure()
    assert len(nft.loaded) == n + 1 and nft.loaded[-1] == render(fw).document()


def test_clear_and_failed_apply_keep_state_consistent():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    ap.setup(basic())
    nft.fail = True
    with pytest.raises(FirewallApplyError):
        ap.setup(basic())
    nft.fail = False
    ap.clear()
    assert ap.current is None
    nft.listing = []
    assert ap.verify().ok

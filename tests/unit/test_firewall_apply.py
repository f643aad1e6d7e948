"""Applier policy on a fake nft: full vs incremental transactions, verify/ensure, clear pairs."""
from __future__ import annotations

import copy
import dataclasses
from ipaddress import IPv4Address

import pytest

from agent.firewall.apply import FirewallApplier, FirewallApplyError, listing_declarations, listing_fingerprint
from agent.firewall.model import FirewallInputError
from agent.firewall.render import render
from agent.firewall.samples import G1, G2, G3, basic, many_rules, rule, two_vpcs


class FakeNft:
    """Records loaded documents; list_ruleset() returns a listing built from the last render."""

    def __init__(self):
        self.loaded: list[dict] = []
        self.listing: list[dict] = []
        self.fail = False
        self.fail_next = 0  # refuse this many loads (then accept), as nft does when the tables changed by hand
        self.refused: list[dict] = []
        self.lists = 0

    def load(self, document, *, check=False):
        if self.fail:
            raise FirewallApplyError("boom")
        if self.fail_next:
            self.fail_next -= 1
            self.refused.append(copy.deepcopy(document))
            raise FirewallApplyError("No such file or directory")
        self.loaded.append(copy.deepcopy(document))

    def list_ruleset(self):
        self.lists += 1
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


def verbs(document) -> list[tuple[str, str, str]]:
    """(verb, kind, name) per command (name: the table's family for tables)."""
    out = []
    for cmd in document["nftables"][1:]:
        verb, body = next(iter(cmd.items()))
        kind, obj = next(iter(body.items()))
        out.append((verb, kind, obj.get("name") if kind != "table" else obj["family"]))
    return out


BASE_CHAINS = {"prerouting", "forward", "zone"}


def test_setup_is_one_atomic_in_place_transaction_that_deletes_no_table_or_base_chain():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    res = ap.setup(basic())
    assert res.mode == "full" and len(nft.loaded) == 1 and nft.lists == 1  # fresh: read the kernel first
    v = verbs(nft.loaded[0])
    assert v[:4] == [("add", "table", "inet"), ("add", "table", "bridge"),
                     ("flush", "table", "inet"), ("flush", "table", "bridge")]
    assert not [c for c in v if c[0] == "delete"]  # nothing existed
    # every wanted set/map is declared then flushed; elements come after all chains, rules last
    for verb, kind, name in v:
        if verb == "add" and kind in ("set", "map"):
            assert ("flush", kind, name) in v
    last_chain = max(i for i, c in enumerate(v) if c[1] == "chain")
    first_elem = min(i for i, c in enumerate(v) if c[1] == "element")
    first_rule = min(i for i, c in enumerate(v) if c[1] == "rule")
    assert last_chain < first_elem < first_rule and all(c[1] == "rule" for c in v[first_rule:])
    # the same again (as after an agent restart reading basic() back): no delete at all
    ap.setup(basic())
    assert nft.lists == 1 and not [c for c in verbs(nft.loaded[-1]) if c[0] == "delete"]
    assert sum(c[1] == "rule" for c in verbs(nft.loaded[-1])) == sum(render(basic()).rules_per_chain.values())


def test_objects_no_longer_wanted_are_deleted_after_their_references_are_flushed():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    ap.setup(two_vpcs())  # tap_prefix: a bridge forward base chain; G1 and G3 chains and sets
    ap.setup(many_rules(3, 2))
    v = verbs(nft.loaded[-1])
    deleted = {(k, n) for verb, k, n in v if verb == "delete"}
    assert ("chain", "forward") in deleted  # bridge forward: gone with tap_prefix
    assert ("chain", f"in-{G3}") in deleted and ("set", f"{G3}-in-net-l4") in deleted
    assert not any(k == "table" for k, _ in deleted)
    assert not any(k == "chain" and n in ("prerouting", "zone") for k, n in deleted)
    # deleted after both tables' rules are flushed; chains also after the verdict maps jumping to them
    assert all(i > v.index(("flush", "table", "bridge")) for i, c in enumerate(v) if c[0] == "delete")
    assert v.index(("delete", "chain", f"in-{G3}")) > max(v.index(("flush", "map", "egress")),
                                                         v.index(("flush", "map", "ingress")))
    # deleted before any add of the same name (a set re-declared differently is deleted, then added)
    for i, (verb, kind, name) in enumerate(v):
        if verb == "delete":
            assert not any(c[0] == "add" and c[2] == name and c[1] != "element" for c in v[:i])
    assert nft.lists == 1


def test_a_base_chain_declared_differently_is_replaced_and_the_rest_kept():
    nft = FakeNft()
    nft.listing = listing_of(render(basic()))
    for obj in nft.listing:
        if "chain" in obj and obj["chain"]["name"] == "forward" and obj["chain"]["family"] == "inet":
            obj["chain"]["policy"] = "drop"
    FirewallApplier(nft).setup(basic())
    v = verbs(nft.loaded[-1])
    assert [c for c in v if c[0] == "delete"] == [("delete", "chain", "forward")]
    i = v.index(("delete", "chain", "forward"))
    assert ("add", "chain", "forward") in v[i:]


def test_a_refused_transaction_is_rebuilt_from_the_kernels_listing():
    nft = FakeNft()
    ap = FirewallApplier(nft)
    ap.setup(basic())
    nft.listing = listing_of(render(two_vpcs()))  # someone else loaded another ruleset
    nft.fail_next = 1  # our transaction (built for basic) is refused: nothing changed
    ap.setup(many_rules(3, 2))
    assert len(nft.refused) == 1 and nft.lists == 2
    assert nft.loaded[-1] == render(many_rules(3, 2)).transaction(listing_declarations(nft.listing))
    deleted = {(k, n) for verb, k, n in verbs(nft.loaded[-1]) if verb == "delete"}
    assert ("set", f"{G3}-in-net-l4") in deleted  # known only from the listing
    nft.fail_next = 2
    with pytest.raises(FirewallApplyError):
        ap.setup(basic())
    assert ap.current == many_rules(3, 2)


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
    n, lists = len(nft.loaded), nft.lists
    ap.ensure()
    assert len(nft.loaded) == n + 1 and nft.lists == lists + 1  # the listing verify read is reused
    assert nft.loaded[-1] == render(fw).transaction(listing_declarations(nft.listing))
    assert not [c for c in verbs(nft.loaded[-1]) if c[0] == "delete"]  # chains and sets are still there


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

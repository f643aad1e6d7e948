"""The pure nft renderer: golden JSON documents (KUMO_REGEN_GOLDEN=1 rewrites them) and the interval
decomposition. Loading the goldens and the transactions into a real kernel (root, nft, a throw-away
network namespace) is tests/lab/test_firewall_render_kernel.py."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from agent.firewall.intervals import canonical, covers, decompose
from agent.firewall.render import render
from agent.firewall.samples import CASES, G1, basic

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "firewall"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    doc = render(CASES[name]()).document()
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / f"{name}.json"
    if os.environ.get("KUMO_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with KUMO_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from {path} (KUMO_REGEN_GOLDEN=1 to accept)"


def test_render_is_deterministic_and_pure():
    assert render(basic()).document() == render(basic()).document()
    doc = json.dumps(render(basic()).document())
    assert "flush ruleset" not in doc


def test_user_text_never_reaches_the_document():
    # only validated values: the CIDRs appear as prefixes/ranges built from ints
    doc = render(basic()).document()
    cmds = doc["nftables"]
    assert cmds[1] == {"add": {"table": {"family": "inet", "name": "kumo"}}}
    assert cmds[2] == {"delete": {"table": {"family": "inet", "name": "kumo"}}}
    fp = render(basic()).fingerprint()
    assert fp["rules"]["inet forward"] == 4  # established, metadata, egress and ingress maps
    assert fp["sets"][f"inet {G1}-in-net-l4"] == 3  # 0/0:22 and 10.1/16:20-30, made disjoint


def test_cost_does_not_grow_with_rules():
    from agent.firewall.samples import many_rules
    small, big = render(many_rules(10, 2)), render(many_rules(2000, 2))
    assert small.rules_per_chain == big.rules_per_chain
    assert small.skeleton == big.skeleton


@pytest.mark.parametrize("seed", range(10))
def test_decompose_is_exact_and_disjoint(seed):
    rnd = random.Random(seed)
    boxes = []
    for _ in range(rnd.randint(1, 12)):
        box = []
        for _d in range(3):
            lo = rnd.randint(0, 30)
            box.append((lo, lo + rnd.randint(0, 10)))
        boxes.append(tuple(box))
    for fn in (decompose, canonical):
        _check_exact(fn, boxes)


def test_canonical_keeps_isolated_boxes():
    a, b, c = ((0, 9), (5, 5)), ((20, 29), (5, 5)), ((25, 40), (1, 9))
    assert canonical([a, b]) == [a, b]  # no overlap: one element per box, nothing merged
    out = canonical([a, b, c])
    assert a in out and b not in out and len(out) > 2
    assert canonical([c, b, a, a]) == out


def _check_exact(fn, boxes):
    out = fn(boxes)
    for x in range(0, 42, 4):
        for y in range(0, 42, 3):
            for z in range(0, 42, 2):
                p = (x, y, z)
                assert covers(out, p) == covers(boxes, p)
                assert sum(covers([b], p) for b in out) <= 1
    assert fn(list(reversed(boxes))) == out  # order-independent: diffable

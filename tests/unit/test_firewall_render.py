"""The pure nft renderer: golden JSON documents (KUMO_REGEN_GOLDEN=1 rewrites them), each also loaded
with `nft -j --check -f` in a throw-away network namespace; and the interval decomposition."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import uuid
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


def _nft_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not shutil.which("nft") or not shutil.which("ip"):
        return "needs nft and ip"
    return None


@pytest.fixture(scope="module")
def scratch_netns():
    reason = _nft_usable()
    if reason:
        pytest.skip(reason)
    name = f"kfw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_loads_in_nft(name, scratch_netns):
    path = GOLDEN / f"{name}.json"
    res = subprocess.run(["ip", "netns", "exec", scratch_netns, "nft", "-j", "--check", "-f", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # and a real load + replace twice (the add/delete/add prologue works with and without the table)
    for _ in range(2):
        res = subprocess.run(["ip", "netns", "exec", scratch_netns, "nft", "-j", "-f", str(path)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


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
    assert fp["rules"]["inet forward"] == 3
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


def _nft_json(ns: str, *args: str) -> list[dict]:
    res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", *args], capture_output=True, text=True,
                         input=None)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["nftables"] if res.stdout.strip() else []


def _load(ns: str, doc: dict) -> None:
    res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=json.dumps(doc),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_transaction_moves_between_every_pair_in_place(scratch_netns):
    """Rendered.transaction in a real kernel: from each case to each other (existing known from the
    last render, and read back from the kernel), the tables and the base chains that stay keep their
    handles (never deleted), and the result lists exactly as the target render."""
    from agent.firewall.apply import listing_declarations, listing_fingerprint
    ns = scratch_netns
    _load(ns, {"nftables": [{"metainfo": {"json_schema_version": 1}},
                            *[{c: {"table": {"family": f, "name": "kumo"}}} for f in ("inet", "bridge")
                              for c in ("add", "delete")]]})
    names = sorted(CASES)
    prev = None
    for a in names:
        for b in names:
            for target, from_listing in ((a, False), (b, True), (b, False)):
                r = render(CASES[target]())
                listing = _nft_json(ns, "list", "ruleset")
                existing = listing_declarations(listing) if from_listing or prev is None else prev.declarations()
                handles = {(k, o["family"], o["name"]): o["handle"] for obj in listing for k, o in obj.items()
                           if k == "table" or (k == "chain" and "hook" in o)}
                _load(ns, r.transaction(existing))
                after = _nft_json(ns, "list", "ruleset")
                assert listing_fingerprint(after) == r.fingerprint(), (prev, target)
                for obj in after:
                    for k, o in obj.items():
                        key = (k, o.get("family"), o.get("name"))
                        if key in handles:
                            assert o["handle"] == handles[key], f"{key} was re-created ({target})"
                prev = r
    _load(ns, {"nftables": [{"metainfo": {"json_schema_version": 1}},
                            *[{c: {"table": {"family": f, "name": "kumo"}}} for f in ("inet", "bridge")
                              for c in ("add", "delete")]]})

"""The pure nft renderer's documents in a real kernel (moved from tests/unit/test_firewall_render.py:
they need root, nft and a network namespace): every golden JSON document loads with
`nft -j --check -f` and for real in a throw-away namespace, and Rendered.transaction moves between
every pair of cases in place. Nothing is loaded outside that namespace, which is always deleted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.firewall.render import render
from agent.firewall.samples import CASES

pytestmark = pytest.mark.lab

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "firewall"


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

"""Applier: moves the kernel's ``kumo`` tables to rendered rulesets, atomically, and checks they stay.

Owns the firewall's apply policy; loading itself (the nft CLI entered into a named namespace, or
libnftables in process, and the in-place retry policy) is agent/firewall/load.py's, shared with
the VPC routers' NAT tables:

- ``setup(fw)`` moves both ``kumo`` tables to ``fw``'s ruleset in ONE transaction (``nft -j -f -``,
  ``Rendered.transaction``) IN PLACE: tables and base chains that exist are kept (their hooks stay
  registered), their rules flushed and re-added; only regular chains, sets and maps no longer
  wanted are deleted, after the rules and map elements referencing them are flushed. The kernel
  swaps the old generation for the new one at commit, so there is no moment without protection
  (deleting and re-creating the tables let a few packets through the new, not yet committed base
  chains). What exists is taken from the last applied render; when there is none (a fresh
  applier, e.g. after an agent restart, or after ``clear()``) or the kernel refused it (someone
  changed the tables by hand: the transaction is atomic, nothing changed), it is read back with
  ``nft list ruleset`` and the transaction built again from that (``load.load_in_place``).
- ``update(fw)`` renders again; when only set elements differ from what was last applied (rules,
  members, ports joining or leaving with groups already in use) it sends just ``delete element`` /
  ``add element`` commands, again in one transaction; otherwise it falls back to ``setup``.
- ``update_group(group)`` re-renders one group's sets only; ``change_rules(group_id, add, remove)``
  adds or deletes the one element of a CIDR rule that overlaps no other rule without rendering
  anything (the < 10 ms paths; everything else falls back to the broader path).
- Backends (agent/firewall/load.py): ``load.Nft`` (the CLI, per call; re-exported here),
  ``libnft.LibNft`` (libnftables in process, no fork+exec; what the agent should use).
- ``clear()`` removes both tables (and succeeds when they are already gone); pair it with setup.
- ``verify()`` reads the ruleset back (``nft -j list ruleset``) and compares a structural
  fingerprint (base chains, rule count per chain, element count per set/map) with the last
  applied render; ``ensure()`` re-applies on drift (e.g. someone ran ``nft flush table``), from the
  listing it just read (which may create a table that was deleted by hand).

Agent restart: start with ``setup(fw)`` (it reads what is loaded and moves it to ``fw`` in place, in
one transaction), never with ``clear()``, so a restarting agent opens nothing.

Established connections when a rule is removed: like EC2, tracked flows are kept. The forward
chain accepts ``ct state established,related`` before any rule lookup and the conntrack entries
are not touched, so a removed rule stops NEW connections only; existing ones live until they
close or time out.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field, replace
from typing import Any

from agent import netns as netns_mod
from agent.firewall import load
from agent.firewall.intervals import intersects
from agent.firewall.load import FirewallApplyError, Nft
from agent.firewall.model import HostFirewall, Rule, SecurityGroup
from agent.firewall.render import (CIDR_SETS, DIRS, FAMILIES, TABLE, Rendered, element_command,
                                   element_index, element_key, empty_document, group_peers, group_sets, is_exact,
                                   render, rule_boxes, set_element)


#: Both tables the firewall owns, as (family, name).
TABLES = tuple((fam, TABLE) for fam in FAMILIES)
__all__ = ["ApplyResult", "FirewallApplier", "FirewallApplyError", "Nft", "VerifyResult", "bridge_netfilter_enabled",
           "listing_declarations", "listing_fingerprint"]


def bridge_netfilter_enabled(netns: str | None = None) -> bool:
    """True when bridged IPv4 traverses the inet hooks (br_netfilter loaded and
    ``net.bridge.bridge-nf-call-iptables=1``) in the namespace: without it the ``inet kumo`` table
    never sees guest-to-guest traffic, so security groups would not be enforced. The agent must
    refuse to report the firewall ready when this is False (on stock Debian: modprobe
    br_netfilter; sysctl net.bridge.bridge-nf-call-iptables=1)."""
    path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    proc = subprocess.run(netns_mod.exec_argv(netns, ["cat", path]), capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "1"


def listing_fingerprint(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The same structure as ``Rendered.fingerprint()``, from ``nft -j list ruleset`` output."""
    chains: dict[str, Any] = {}
    rules: dict[str, int] = {}
    sets: dict[str, int] = {}
    for obj in objects:
        kind, body = next(iter(obj.items()))
        if not isinstance(body, dict) or body.get("table") != TABLE or body.get("family") not in FAMILIES:
            continue
        key = f"{body['family']} {body.get('chain', body.get('name'))}"
        if kind == "chain":
            chains[key] = [body["hook"], body["prio"], body["policy"]] if "hook" in body else None
            rules.setdefault(key, 0)
        elif kind == "rule":
            rules[key] = rules.get(key, 0) + 1
        elif kind in ("set", "map"):
            sets[key] = len(body.get("elem", []))
    return {"chains": dict(sorted(chains.items())), "rules": dict(sorted(rules.items())),
            "sets": dict(sorted(sets.items()))}


def listing_declarations(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    """The kernel's ``kumo`` chains, sets and maps as ``Rendered.declarations()`` gives a render's
    (what ``Rendered.transaction`` needs to know exists), from ``nft -j list ruleset`` output."""
    return load.listing_declarations(objects, TABLES)


@dataclass
class ApplyResult:
    mode: str  # "full" | "incremental" | "noop"
    seconds: float  # wall clock
    elements_added: int = 0
    elements_deleted: int = 0
    cpu_seconds: float = 0.0  # this process's CPU time (user + system: libnftables and the netlink commit)


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def result(self, mode: str, added: int = 0, deleted: int = 0) -> ApplyResult:
        return ApplyResult(mode, time.perf_counter() - self.wall, added, deleted, time.process_time() - self.cpu)


@dataclass
class VerifyResult:
    ok: bool
    differences: list[str] = field(default_factory=list)


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    out = []
    for section in ("chains", "rules", "sets"):
        e, a = expected[section], actual[section]
        for key in sorted(set(e) | set(a)):
            if e.get(key, "<missing>") != a.get(key, "<missing>"):
                out.append(f"{section} {key}: expected {e.get(key, '<missing>')}, found {a.get(key, '<missing>')}")
    return out


class FirewallApplier:
    """Keeps the host's ``kumo`` tables equal to the last HostFirewall given to setup/update."""

    def __init__(self, nft: Nft | None = None):
        self.nft = nft or Nft()
        self.current: HostFirewall | None = None
        self._rendered: Rendered | None = None
        # per CIDR set: rule_id -> box, for change_rules' overlap check (dropped on every re-render)
        self._boxes: dict[tuple[str, str], dict[str, Any]] = {}

    def setup(self, fw: HostFirewall, *, listing: list[dict[str, Any]] | None = None) -> ApplyResult:
        """Move the whole owned ruleset to ``fw``'s, atomically and in place (tables and base chains
        are kept). ``listing``: the kernel's ruleset just read (``nft -j list ruleset``), if at hand."""
        clock = _Clock()
        rendered = render(fw)
        self._replace(rendered, listing)
        self.current, self._rendered, self._boxes = fw, rendered, {}
        return clock.result("full")

    def _replace(self, rendered: Rendered, listing: list[dict[str, Any]] | None = None) -> None:
        """Load ``rendered.transaction(existing)``; ``existing`` from ``listing``, else from the last
        applied render, else (none, or the kernel refused: it is not what we applied) read back."""
        known = self._rendered.declarations() if self._rendered is not None else None
        load.load_in_place(self.nft, rendered.transaction, known, TABLES, listing)

    def update(self, fw: HostFirewall) -> ApplyResult:
        """Move to ``fw`` with element deltas when the skeleton is unchanged, else a full setup."""
        clock = _Clock()
        old = self._rendered
        new = render(fw)
        if old is None or old.skeleton != new.skeleton:
            self._replace(new)
            self.current, self._rendered, self._boxes = fw, new, {}
            return clock.result("full")
        deletes, adds = [], []
        n_add = n_del = 0
        for key in sorted(set(old.elements) | set(new.elements)):
            before, after = set(old.elements.get(key, ())), set(new.elements.get(key, ()))
            if before == after:
                continue
            gone = [old.elements[key][k] for k in sorted(before - after)]
            came = [new.elements[key][k] for k in sorted(after - before)]
            if gone:
                deletes.append(element_command("delete", key[0], key[1], gone))
                n_del += len(gone)
            if came:
                adds.append(element_command("add", key[0], key[1], came))
                n_add += len(came)
        if deletes or adds:
            # one transaction: deletes and adds are committed together
            self.nft.load({"nftables": [{"metainfo": {"json_schema_version": 1}}, *deletes, *adds]})
        self.current, self._rendered, self._boxes = fw, new, {}
        return clock.result("incremental" if (deletes or adds) else "noop",
                           n_add, n_del)

    def update_group(self, group: SecurityGroup) -> ApplyResult:
        """Fast path for one group's rules or members changing: re-renders only that group's
        sets (and its member set) and sends the element deltas; full update if the layout moves."""
        clock = _Clock()
        old, fw = self._rendered, self.current
        if old is None or fw is None or group.group_id not in fw.groups:
            raise FirewallApplyError("update_group needs a current ruleset holding the group")
        prev = fw.groups[group.group_id]
        new_fw = fw.with_group(group)
        used = any(group.group_id in p.group_ids for p in fw.ports)
        same_peers = all(group_peers(prev, d) == group_peers(group, d) for d in DIRS)
        if not same_peers or (not used and prev.rules != group.rules):
            return self.update(new_fw)
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        if used and prev.rules != group.rules:
            for name, (_typ, elems, _interval) in group_sets(group).items():
                wanted[("inet", name)] = element_index(elems)
        member_key = ("inet", f"m-{group.group_id}")
        if member_key in old.elements and prev.members != group.members:
            wanted[member_key] = element_index([str(a) for a in sorted(group.members)])
        cmds, n_add, n_del = [], 0, 0
        for key, after_idx in sorted(wanted.items()):
            before_idx = old.elements.get(key, {})
            gone = [before_idx[k] for k in before_idx if k not in after_idx]
            came = [after_idx[k] for k in after_idx if k not in before_idx]
            if gone:  # deletes first: one transaction, committed together with the adds
                cmds.insert(0, element_command("delete", key[0], key[1], gone))
                n_del += len(gone)
            if came:
                cmds.append(element_command("add", key[0], key[1], came))
                n_add += len(came)
        if cmds:
            self.nft.load({"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]})
        elements = {**old.elements, **wanted}
        self.current, self._boxes = new_fw, {}
        self._rendered = Rendered(old.skeleton, elements, old.rules_per_chain, old.chains)
        return clock.result("incremental" if cmds else "noop", n_add, n_del)

    def change_rules(self, group_id: str, add: tuple[Rule, ...] = (), remove: tuple[str, ...] = ()) -> ApplyResult:
        """Authorize/revoke rules of one group. A single CIDR rule that overlaps no other rule of
        its set is exactly one set element, so it is added or deleted without re-rendering
        (the < 10 ms path); anything else goes through ``update_group``."""
        clock = _Clock()
        fw, old = self.current, self._rendered
        if fw is None or old is None or group_id not in fw.groups:
            raise FirewallApplyError("change_rules needs a current ruleset holding the group")
        group = fw.groups[group_id]
        gone = {r.rule_id for r in group.rules if r.rule_id in remove}
        new_group = replace(group, rules=tuple(r for r in group.rules if r.rule_id not in gone) + tuple(add))
        changed = [r for r in group.rules if r.rule_id in gone] + list(add)
        used = any(group_id in p.group_ids for p in fw.ports)
        if len(changed) != 1 or changed[0].cidr is None or not used:
            return self.update_group(new_group)
        r = changed[0]
        kind = {"tcp": "l4", "udp": "l4", "icmp": "icmp", "all": "any"}[r.protocol]
        index = ("inet", f"{group_id}-{DIRS[r.direction]}-net-{kind}")
        boxes = self._boxes.get(index)
        if boxes is None:  # rule boxes of this kind (exact and ranged), kept up to date from here on
            same = [o for o in group.rules if o.direction == r.direction and o.cidr is not None]
            boxes = self._boxes[index] = {o.rule_id: b for o in same
                                          for b in rule_boxes([o], with_addr=True)[kind]}
        box = rule_boxes([r], with_addr=True)[kind][0]
        key = ("inet", index[1] + "x") if kind == "l4" and is_exact(box) else index
        (blo, bhi) = box[0]
        near = [o for rid, o in boxes.items() if rid != r.rule_id and o[0][0] <= bhi and blo <= o[0][1]]
        if any(intersects(box, o) for o in near):
            self._boxes.pop(index, None)
            return self.update_group(new_group)
        new_fw = fw.with_group(new_group)  # validate before nft
        elem = set_element(box, CIDR_SETS[f"net-{kind}"][1])
        text = element_key(elem)
        self.nft.load({"nftables": [{"metainfo": {"json_schema_version": 1}},
                                    element_command("delete" if gone else "add", "inet", key[1], [elem])]})
        idx = dict(old.elements[key])
        if gone:
            idx.pop(text, None)
            boxes.pop(r.rule_id, None)
        else:
            idx[text] = elem
            boxes[r.rule_id] = box
        self.current = new_fw
        self._rendered = Rendered(old.skeleton, {**old.elements, key: dict(sorted(idx.items()))},
                                  old.rules_per_chain, old.chains)
        return clock.result("incremental", 0 if gone else 1, 1 if gone else 0)

    def clear(self) -> None:
        """Remove both owned tables; succeeds when they are already gone."""
        self.nft.load(empty_document())
        self.current, self._rendered, self._boxes = None, None, {}

    def verify(self) -> VerifyResult:
        """Compare the kernel's ``kumo`` tables with the last applied render (structure and sizes)."""
        return self._verify(self.nft.list_ruleset())

    def _verify(self, listing: list[dict[str, Any]]) -> VerifyResult:
        actual = listing_fingerprint(listing)
        if self._rendered is None:
            empty = not (actual["chains"] or actual["sets"])
            return VerifyResult(empty, [] if empty else ["kumo tables present but nothing applied"])
        diffs = _diff(self._rendered.fingerprint(), actual)
        return VerifyResult(not diffs, diffs)

    def ensure(self) -> VerifyResult:
        """verify(); on drift, re-apply the last HostFirewall. Returns the verify result seen first."""
        listing = self.nft.list_ruleset()
        result = self._verify(listing)
        if not result.ok:
            if self.current is None:
                self.clear()
            else:
                self.setup(self.current, listing=listing)
        return result

"""In-memory fakes of the agent's drivers (Hypervisor, Storage, Network) and of the VPC
dataplane (FakeDataplane) and firewall (FakeFirewall) for fast tests. The network fakes take the
model the NetworkService converted (HostNetwork, HostFirewall) through production's pure
renderers and keep the result instead of programming the kernel.

They keep the Protocols' promises (idempotent deletes, no-op starts of running domains, power
states) and add test handles: `fail()`, `calls`, ... FakeHypervisor lives in fake_hypervisor.py
(imported here, so every fake comes from this module). FakeStorage keeps its bookkeeping in
memory but writes small placeholder files under a root directory, so paths, instance
directories and console logs are real files the agent can look at.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from agent.contract.v1 import INSTANCE_ID_RE
from agent.drivers.base import DriverError
from agent.drivers.fake_hypervisor import FakeDomain, FakeHypervisor  # noqa: F401 (re-export)
from agent.drivers.faults import Faults
from agent.firewall.render import render
from agent.network.desired import host_records
from agent.network.records import HOST, Link, Master


class FakeStorage:
    """Storage with placeholder files under `root`; sizes and seeds are kept in memory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.images: dict[str, Path] = {}
        self.disk_sizes: dict[str, int] = {}
        self.seeds: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self._faults = Faults()
        self._lock = threading.RLock()

    def fail(self, op: str, key: str | None = None, error: Exception | None = None,
             times: int = -1) -> None:
        """Make `op` (for an image id / instance id `key`, or any) raise `error`."""
        self._faults.set(op, key, error or DriverError(f"injected {op} failure"), times)

    def clear_faults(self) -> None:
        self._faults.clear()

    def cached_image(self, image_id: str, url: str, sha256: str) -> Path:
        with self._lock:
            self._faults.check("cached_image", image_id)
            self.calls.append(("cached_image", image_id))
            path = self.root / "images" / f"{image_id}.qcow2"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"fake image {sha256}\n")
            self.images[image_id] = path
            return path

    def instance_dir(self, instance_id: str) -> Path:
        if not INSTANCE_ID_RE.match(instance_id):
            raise DriverError(f"bad instance id {instance_id!r}", code="InvalidInstanceID",
                              retryable=False)
        return self.root / "instances" / instance_id

    def ensure_root_disk(self, instance_id: str, base: Path, size_bytes: int) -> Path:
        with self._lock:
            self._faults.check("ensure_root_disk", instance_id)
            self.calls.append(("ensure_root_disk", instance_id))
            path = self.instance_dir(instance_id) / "root.qcow2"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text(f"overlay of {base}\n")
            self.disk_sizes[instance_id] = max(self.disk_sizes.get(instance_id, 0), size_bytes)
            return path

    def write_seed(self, instance_id: str, meta_data: dict, user_data: bytes,
                   network_config: dict | None) -> Path:
        with self._lock:
            self._faults.check("write_seed", instance_id)
            self.calls.append(("write_seed", instance_id))
            content = {"meta_data": meta_data, "user_data": user_data.decode("utf-8", "replace"),
                       "network_config": network_config}
            path = self.instance_dir(instance_id) / "seed.iso"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, sort_keys=True))
            self.seeds[instance_id] = content
            return path

    def remove_instance(self, instance_id: str) -> None:
        with self._lock:
            self._faults.check("remove_instance", instance_id)
            self.calls.append(("remove_instance", instance_id))
            d = self.instance_dir(instance_id)
            if d.exists():
                for p in sorted(d.rglob("*"), reverse=True):
                    p.rmdir() if p.is_dir() else p.unlink()
                d.rmdir()
            self.disk_sizes.pop(instance_id, None)
            self.seeds.pop(instance_id, None)

    def list_instance_dirs(self) -> list[str]:
        d = self.root / "instances"
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and INSTANCE_ID_RE.match(p.name))

    def prune_images(self, keep: Collection[tuple[str, str]], *,
                     recheck: Callable[[], Collection[tuple[str, str]]] | None = None,
                     ) -> list[tuple[str, str]]:
        """The Storage rule on placeholder files: an image (its sha256 is the file's text) not
        in `keep` nor in `recheck()` and named by no overlay ("overlay of <base>") goes."""
        with self._lock:  # the lock cached_image and ensure_root_disk take
            self._faults.check("prune_images", None)
            keep = set(keep)
            wanted = set(recheck()) if recheck is not None else set()
            overlays = {p.read_text() for p in (self.root / "instances").glob("i-*/root.qcow2")}
            removed = []
            for path in sorted((self.root / "images").glob("*.qcow2")):
                image_id = path.stem
                text = path.read_text()
                sha = text.removeprefix("fake image ").strip()
                key = (image_id, sha)
                if key in keep or key in wanted or f"overlay of {path}\n" in overlays:
                    continue
                # Recorded before the file goes: a test that waits for the file to vanish
                # then reads `calls` (another thread) must find the record there.
                self.calls.append(("prune_image", image_id))
                self.images.pop(image_id, None)
                path.unlink()
                removed.append(key)
            return removed


class FakeNetwork:
    """Bridges as a set of names (for agents without a network service)."""

    capabilities = frozenset({"bridge"})

    def __init__(self) -> None:
        self.bridges: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def bridge_ready(self, name: str) -> bool:
        with self._lock:
            return name in self.bridges

    def ensure_bridge(self, name: str) -> None:
        with self._lock:
            self.calls.append(("ensure_bridge", name))
            self.bridges.add(name)


@dataclass
class FakeEnsureResult:
    """Shaped like agent.network.apply.EnsureResult: `failed` holds (record, detail) pairs."""

    failed: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


class FakeDataplane:
    """The VPC dataplane (agent.network.apply.Dataplane) in memory. ensure() renders the
    HostNetwork into the kernel records production would program (agent.network.desired
    .host_records, the same pure function, so a network production cannot render fails here
    too) and keeps them instead of programming them: `last` (the HostNetwork), `records`.
    Test handles: `missing_taps` (taps that "do not exist yet": their bridge-port records fail
    like a tap libvirt has not created), fail() (the next ensure raises), `ensures`,
    `nat_bytes` (what the NAT gateways' counters show)."""

    def __init__(self, host_tag: str = "fake") -> None:
        self.host_tag = host_tag
        self.last = None  # the last HostNetwork ensured
        self.records: frozenset = frozenset()  # its kernel records
        self.ensures = 0
        self.missing_taps: set[str] = set()
        #: NAT gateway id -> bytes its counter shows (nat_counters); tests set it.
        self.nat_bytes: dict[str, int] = {}
        self.closed = False
        self._faults = Faults()
        self._lock = threading.Lock()

    def fail(self, error: Exception | None = None, times: int = 1) -> None:
        self._faults.set("ensure", None, error or DriverError("injected ensure failure"), times)

    def ensure(self, host) -> FakeEnsureResult:
        with self._lock:
            self.ensures += 1
            self._faults.check("ensure", None)
            want = frozenset(host_records(host, self.host_tag))
            self.last, self.records = host, want
            failed = [(r, f"no device {r.dev}") for r in want
                      if isinstance(r, Master) and r.ns == HOST and r.dev in self.missing_taps]
            return FakeEnsureResult(failed=sorted(failed, key=str))

    def nat_counters(self, host) -> dict[str, int]:
        """Dataplane.nat_counters in memory: `nat_bytes` (set by tests) of the NAT gateways
        `host` places on this host."""
        local = {v.nat_gateway.nat_gateway_id for v in host.vpcs if v.nat_gateway is not None
                 and v.nat_gateway.host_underlay_ip == host.underlay_ip}
        with self._lock:
            return {k: v for k, v in self.nat_bytes.items() if k in local}

    def bridges(self) -> set[str]:
        """Names of the VPC bridges the last ensure would have created."""
        with self._lock:
            return {r.name for r in self.records
                    if isinstance(r, Link) and r.ns == HOST and r.kind == "bridge"}

    def link_up(self, name: str) -> bool:
        return name in self.bridges()

    def close(self) -> None:
        self.closed = True


class FakeFirewall:
    """The host firewall (agent.network.firewall_sync.FirewallSync) in memory: apply() renders
    the HostFirewall as production does (agent.firewall.render.render, the pure renderer the
    applier loads), records it (`last`, `rendered`) and what a real sync would have done
    ("setup" first, then "update" on a change, "ensure" otherwise) in `calls`; check() counts
    `checks`. fail() makes the next apply raise (default: a FirewallApplyError, as nft refusing
    a transaction)."""

    def __init__(self) -> None:
        self.last = None
        self.rendered = None
        self.calls: list[str] = []
        self.checks = 0
        self.closed = False
        self._faults = Faults()
        self._lock = threading.Lock()

    def fail(self, error: Exception | None = None, times: int = 1) -> None:
        if error is None:
            from agent.firewall.apply import FirewallApplyError
            error = FirewallApplyError("injected firewall failure")
        self._faults.set("apply", None, error, times)

    def apply(self, fw) -> str:
        with self._lock:
            self._faults.check("apply", None)
            what = "setup" if self.last is None else ("update" if fw != self.last else "ensure")
            if what != "ensure":
                self.rendered = render(fw)
            self.last = fw
            self.calls.append(what)
            return what

    def check(self) -> None:
        with self._lock:
            self.checks += 1

    def close(self) -> None:
        self.closed = True

"""agent.network.apply.Dataplane on an injected fake kernel: when it reads the kernel, what it
applies, how failures are retried, and the refusal to program its own namespace."""
from __future__ import annotations

import os
import pytest

from agent.network import Dataplane, DataplaneError, HostNetwork, PortNet, SubnetNet, VpcNet
from agent.network.desired import host_records
from agent.network.netlink import NetlinkOpError
from agent.network.records import Master, ProxyNeigh

S1 = "subnet-00000000000000001"


class FakeKernel:
    """Holds records as 'the kernel'; counts full reads; can fail chosen records."""

    def __init__(self) -> None:
        self.state: set = set()
        self.reads = 0
        self.fail: set = set()
        self.calls: list = []

    def list_router_netns(self, tag: str) -> list[str]:
        return sorted(r.name for r in self.state if type(r).__name__ == "Netns")

    def observe(self, underlay_dev: str, rns: list[str]) -> set:
        self.reads += 1
        return {r for r in self.state if type(r).__name__ not in ("Sysctl", "NftTable")}

    def add(self, rec) -> None:
        self.calls.append(("add", rec))
        if rec in self.fail:
            raise NetlinkOpError(rec, "no device")
        self.state.add(rec)

    def remove(self, rec) -> None:
        self.calls.append(("remove", rec))
        self.state.discard(rec)

    def set_sysctls(self, ns, pairs) -> None:
        self.calls.append(("sysctl", ns, tuple(pairs)))

    def link_mac(self, ns, dev) -> str:
        return "02:00:00:00:00:01"

    def close(self) -> None:
        pass


def host(ports: int = 1, public: bool = False) -> HostNetwork:
    v = VpcNet(vpc_id="vpc-0123456789abcdef0", vni=42, cidr="10.0.0.0/16", internet=True,
               subnets=[SubnetNet(subnet_id=S1, cidr="10.0.1.0/24", router_ip="10.0.1.1", route="igw")],
               ports=[PortNet(port_id=f"eni-{i:017x}", tap=f"tap{i}", mac=f"52:54:00:00:00:{i + 1:02x}",
                              ip=f"10.0.1.{10 + i}", subnet_id=S1,
                              public_ip="203.0.113.5" if public and i == 0 else None)
                      for i in range(ports)])
    return HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[v])


@pytest.fixture
def dp(monkeypatch: pytest.MonkeyPatch):
    sent: list = []
    monkeypatch.setattr("agent.network.apply.send_garp", lambda *a: sent.append(a))
    d = Dataplane(netns="kvn-x-h1", kernel=FakeKernel(), resync_seconds=30)
    d.sent = sent
    return d


def test_refuses_its_own_namespace() -> None:
    with pytest.raises(DataplaneError) as e:
        Dataplane(netns=None)
    assert e.value.code == "RootNamespaceRefused"


def test_first_ensure_reads_then_changes_use_the_fast_path(dp) -> None:
    k = dp.kernel
    r = dp.ensure(host(1))
    assert r.ok and r.full_read and k.reads == 1
    n = len(k.calls)
    r = dp.ensure(host(2))
    assert r.ok and not r.full_read and k.reads == 1
    assert sorted(type(c[1]).__name__ for c in k.calls[n:]) == ["Master", "Neigh"]
    assert dp.ensure(host(2)).plan.empty


def test_failure_forces_a_full_read_and_is_retried(dp) -> None:
    k = dp.kernel
    dp.ensure(host(1))
    missing = Master("", "tap1", "kb-00002a")
    k.fail.add(missing)
    r = dp.ensure(host(2))
    assert [rec for rec, _ in r.failed] == [missing]
    with pytest.raises(DataplaneError, match="DataplaneApplyFailed|1 dataplane"):
        r.raise_for_failures()
    k.fail.clear()  # libvirt created the tap
    r = dp.ensure(host(2))
    assert r.full_read and r.ok and [type(x).__name__ for x in r.plan.add] == ["Master"]


def test_resync_period_and_explicit_full(dp) -> None:
    k = dp.kernel
    dp.ensure(host(1))
    k.state.discard(next(iter(r for r in k.state if type(r).__name__ == "Fdb")))  # drift
    assert dp.ensure(host(1)).plan.empty  # fast path cannot see drift...
    r = dp.ensure(host(1), full=True)  # ...a full read repairs it
    assert [type(x).__name__ for x in r.plan.add] == ["Fdb"]
    dp._last_full -= 31
    assert dp.ensure(host(1)).full_read


def test_public_ip_is_announced_once(dp) -> None:
    dp.ensure(host(1, public=True))
    assert len(dp.sent) == 1 and [str(ip) for ip in dp.sent[0][3]] == ["203.0.113.5"]
    dp.ensure(host(1, public=True))
    assert len(dp.sent) == 1
    assert any(isinstance(r, ProxyNeigh) for r in host_records(host(1, public=True), "kvn-x-h1"))


def test_a_leftover_netns_file_is_not_a_namespace(tmp_path):
    """An empty /run/netns entry whose mount is gone (its mount namespace died) must be re-created,
    not entered: agent.netns.is_live tells the two apart by the nsfs device."""
    from agent.netns import drop_stale, is_live
    (tmp_path / "kumo-h1-kvr-000001").write_text("")
    assert not is_live("kumo-h1-kvr-000001", str(tmp_path))
    drop_stale("kumo-h1-kvr-000001", str(tmp_path))
    assert not (tmp_path / "kumo-h1-kvr-000001").exists()
    os.symlink("/proc/self/ns/net", tmp_path / "live")
    assert is_live("live", str(tmp_path))

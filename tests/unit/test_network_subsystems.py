"""NetworkService's subsystem registry (agent/network/subsystems.py): the built-in order (firewall,
dataplane, DHCP), each subsystem's own status in NetworkObserved.subsystems, the one `error` kept
as before (dataplane first, then firewall, then the others), skipping what needs the dataplane's
HostNetwork when it failed, prepare hooks before the dataplane, register() for the next
subsystem, and the contract field's compatibility with documents that lack it."""
from __future__ import annotations

import pytest

from agent.contract.v1 import ErrorInfo, HeartbeatRequest, NetworkObserved
from agent.drivers.base import DriverError
from agent.drivers.fake import FakeDataplane, FakeFirewall
from agent.firewall.apply import FirewallApplyError
from agent.network.dhcp import DhcpError
from agent.network.service import NetworkService
from agent.network.subsystems import PassContext, Subsystem
from tests.unit.test_network_firewall_sync import sg_spec
from tests.unit.test_network_service import UNDERLAY


class StubDhcp:
    """DhcpSync's interface to the service: prune(host), ensure(host) -> [(vni, error)]."""

    def __init__(self, order: list[str]):
        self.order, self.errors, self.closed = order, [], False

    def prune(self, host):
        self.order.append("dhcp-prune")
        return []

    def ensure(self, host):
        self.order.append("dhcp")
        return list(self.errors)

    def close(self):
        self.closed = True


def build(tmp_path, firewall=True, dhcp=True):
    order: list[str] = []
    fw, dp = FakeFirewall(), FakeDataplane()
    fw_apply, dp_ensure = fw.apply, dp.ensure
    fw.apply = lambda f: (order.append("firewall"), fw_apply(f))[1]
    dp.ensure = lambda h: (order.append("dataplane"), dp_ensure(h))[1]
    stub = StubDhcp(order)
    svc = NetworkService(tmp_path, dataplane=dp, underlay=lambda: UNDERLAY, link_up=dp.link_up,
                         firewall=fw if firewall else None, dhcp=stub if dhcp else None)
    return svc, fw, dp, stub, order


def statuses(svc) -> dict:
    return {s.name: (s.ok, s.error.code if s.error else None, s.applied_generation)
            for s in svc.observed().subsystems}


def test_built_in_order_and_statuses(tmp_path):
    svc, fw, dp, dhcp, order = build(tmp_path)
    assert [s.name for s in svc.observed().subsystems] == ["firewall", "dataplane", "dhcp"]
    assert statuses(svc) == {"firewall": (True, None, 0), "dataplane": (True, None, 0),
                             "dhcp": (True, None, 0)}
    svc.accept(sg_spec(1))
    assert svc.run_once() is False
    assert order == ["firewall", "dhcp-prune", "dataplane", "dhcp"]
    assert statuses(svc) == {"firewall": (True, None, 1), "dataplane": (True, None, 1),
                             "dhcp": (True, None, 1)}
    assert svc.observed().applied_generation == 1 and svc.observed().error is None
    svc.stop()
    assert fw.closed and dp.closed and dhcp.closed
    # Parts the agent runs without are not listed.
    bare, *_ = build(tmp_path / "bare", firewall=False, dhcp=False)
    assert [s.name for s in bare.observed().subsystems] == ["dataplane"]


def test_each_failure_is_its_subsystems_status_and_error_keeps_its_order(tmp_path):
    svc, fw, dp, dhcp, order = build(tmp_path)
    svc.accept(sg_spec(1))
    svc.run_once()
    svc.accept(sg_spec(2, port_groups=((), (), ())))
    fw.fail(times=1)
    dhcp.errors = [(0x2A, DhcpError("DhcpStartFailed", "boom"))]
    assert svc.run_once() is True
    st = statuses(svc)
    assert st == {"firewall": (False, "FirewallApplyFailed", 1), "dataplane": (True, None, 2),
                  "dhcp": (False, "DhcpStartFailed", 1)}
    obs = svc.observed()
    assert obs.applied_generation == 1
    # The one error is as before: the first failure (firewall before DHCP), naming the others.
    assert obs.error.code == "FirewallApplyFailed" and "also: DhcpStartFailed" in obs.error.message
    dhcp_status = next(s for s in obs.subsystems if s.name == "dhcp")
    assert dhcp_status.error.message == "DHCP server of VNI 42: boom"
    assert dhcp_status.error.retryable
    # The dataplane's error comes first although the firewall runs before it; DHCP, which
    # needs the dataplane's HostNetwork, is skipped (no error of its own).
    fw.fail(times=1)
    dp.fail(DriverError("kernel on fire"), times=1)
    order.clear()
    assert svc.run_once() is True
    assert order == ["firewall", "dhcp-prune", "dataplane"]
    st = statuses(svc)
    assert st["dataplane"][:2] == (False, "InternalError") and st["dhcp"] == (True, None, 1)
    assert svc.observed().error.code == "InternalError"
    assert "also: FirewallApplyFailed" in svc.observed().error.message
    dhcp.errors = []
    assert svc.run_once() is False
    assert statuses(svc) == {"firewall": (True, None, 2), "dataplane": (True, None, 2),
                             "dhcp": (True, None, 2)}


def test_the_check_between_passes_updates_only_the_firewall(tmp_path):
    fw, nft = FakeFirewall(), {"gone": False}

    def check():
        if nft["gone"]:
            raise FirewallApplyError("nft gone")
    fw.check = check
    svc = NetworkService(tmp_path, dataplane=FakeDataplane(), underlay=lambda: UNDERLAY,
                         link_up=lambda n: False, firewall=fw)
    assert svc.check_subsystems() is False  # nothing accepted yet
    svc.accept(sg_spec(1))
    svc.run_once()
    changes = []
    svc.on_change = lambda: changes.append(1)
    nft["gone"] = True
    assert svc.check_subsystems() is True and len(changes) == 1
    assert statuses(svc) == {"firewall": (False, "FirewallApplyFailed", 1),
                             "dataplane": (True, None, 1)}
    assert svc.check_subsystems() is True and len(changes) == 1  # unchanged: no new heartbeat
    nft["gone"] = False
    assert svc.check_firewall() is False and statuses(svc)["firewall"] == (True, None, 1)


def test_register_a_fourth_subsystem(tmp_path):
    svc, fw, dp, dhcp, order = build(tmp_path)
    seen: list = []

    def metadata(ctx: PassContext):
        order.append("metadata")
        seen.append(ctx.host)
        return ErrorInfo(code="MetadataUnavailable", message="no socket", retryable=False)

    svc.register(Subsystem("metadata", metadata, needs_host=True,
                           prepare=lambda host: order.append("metadata-prepare")),
                 before="dhcp")
    with pytest.raises(ValueError):
        svc.register(Subsystem("dhcp", metadata))
    assert [s.name for s in svc.observed().subsystems] == ["firewall", "dataplane", "metadata",
                                                           "dhcp"]
    svc.accept(sg_spec(1))
    assert svc.run_once() is False  # its error is not retryable: no quick retry for it
    assert order == ["firewall", "metadata-prepare", "dhcp-prune", "dataplane", "metadata", "dhcp"]
    assert seen[0] is not None and seen[0].vpcs[0].vni == 0x2A
    st = statuses(svc)
    assert st["metadata"] == (False, "MetadataUnavailable", 0) and st["dhcp"] == (True, None, 1)
    assert svc.observed().error.code == "MetadataUnavailable"
    assert svc.observed().applied_generation == 0  # every subsystem must succeed

    def crash(ctx):
        raise RuntimeError("bug")
    svc.register(Subsystem("crashy", crash))
    svc.run_once()  # a subsystem that raises is reported; the others still ran
    assert statuses(svc)["crashy"][:2] == (False, "InternalError")
    assert statuses(svc)["dhcp"] == (True, None, 1)


def test_network_observed_without_subsystems_still_parses():
    old = {"generation": 3, "applied_generation": 3, "failed": 0, "applied_at": 1.0,
           "error": None}
    obs = NetworkObserved.model_validate(old)
    assert obs.subsystems == []
    new = obs.model_copy(update={"subsystems": []})
    assert NetworkObserved.model_validate_json(new.model_dump_json()) == obs
    full = NetworkObserved.model_validate(
        old | {"subsystems": [{"name": "dhcp", "ok": False, "applied_generation": 2,
                               "error": {"code": "DhcpStartFailed", "message": "x"}}]})
    assert full.subsystems[0].error.code == "DhcpStartFailed"
    with pytest.raises(ValueError):
        NetworkObserved.model_validate(old | {"subsystems": [{"name": "Bad Name"}]})
    hb = {"host": {"host_id": "h1", "agent_url": "http://x", "hypervisor": "qemu",
                   "architecture": "x86_64", "vcpus": 1, "memory_mib": 1, "disk_bytes": 1},
          "instances": [], "network": old, "sent_at": 1.0}
    assert HeartbeatRequest.model_validate(hb).network.subsystems == []

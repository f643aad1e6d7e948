"""NetworkService (agent/network/service.py) on the fake dataplane: wire -> HostNetwork conversion
(tap names equal to the ones libvirt domains get), generation rules, persistence and reload,
observed state and failure reporting, the background thread; plus the VpcNetwork driver and the
settings of the VPC dataplane."""
from __future__ import annotations

import json
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.contract.v1 import NetworkSpec
from agent.drivers.base import DomainNic, DomainPlan, DriverError
from agent.drivers.disks import instance_disks
from agent.drivers.fake import FakeDataplane
from agent.libvirt.designer import design_domain
from agent.network.apply import DataplaneError
from agent.network.driver import VpcNetwork
from agent.network.model import HostNetwork
from agent.network.host import Underlay, fake_underlay_ip, own_netns_name, resolve_namespace
from agent.network.service import NetworkService, NetworkSpecRejected, host_network
from agent.settings import AgentSettings

VPC = "vpc-0000000000000000a"
SUB = "subnet-00000000000000001"
SUB2 = "subnet-00000000000000002"
I1, I2 = "i-00000000000000001", "i-00000000000000002"
UNDERLAY = Underlay(IPv4Address("172.31.0.11"), "uplink0")


def spec_doc(generation: int = 1, ports=None, **vpc_over) -> dict:
    vpc = {
        "vpc_id": VPC, "vni": 0x2A, "cidr": "10.0.0.0/16",
        "subnets": [{"subnet_id": SUB, "cidr": "10.0.1.0/24", "router_ip": "10.0.1.1",
                     "route": "igw"},
                    {"subnet_id": SUB2, "cidr": "10.0.2.0/24", "router_ip": "10.0.2.1"}],
        "ports": ports if ports is not None else [
            {"port_id": I1, "mac": "52:54:00:00:00:01", "ip": "10.0.1.10", "subnet_id": SUB,
             "public_ip": "203.0.113.10"},
            {"port_id": I1, "device": "eth1", "mac": "52:54:00:00:00:02", "ip": "10.0.2.10",
             "subnet_id": SUB2}],
        "remote_ports": [{"mac": "52:54:00:00:01:01", "ip": "10.0.1.20",
                          "host_underlay_ip": "172.31.0.12"}],
        "internet": True,
        "nat_gateway": {"nat_gateway_id": "nat-0000000000000001", "subnet_id": SUB,
                        "private_ip": "10.0.1.5", "public_ip": "203.0.113.5",
                        "host_underlay_ip": "172.31.0.11"},
    }
    vpc.update(vpc_over)
    return {"generation": generation, "vpcs": [vpc]}


def spec(generation: int = 1, **kw) -> NetworkSpec:
    return NetworkSpec.model_validate(spec_doc(generation, **kw))


def service(tmp_path: Path, dp=None, **kw) -> NetworkService:
    dp = dp or FakeDataplane()
    return NetworkService(tmp_path, dataplane=dp, underlay=lambda: UNDERLAY, link_up=dp.link_up,
                          **kw)


# -- conversion -------------------------------------------------------------------------------

def test_conversion_to_host_network():
    host = host_network(spec(), UNDERLAY.ip, UNDERLAY.dev)
    assert isinstance(host, HostNetwork)
    assert (host.underlay_ip, host.underlay_dev) == (UNDERLAY.ip, "uplink0")
    (vpc,) = host.vpcs
    assert (vpc.vpc_id, vpc.vni, str(vpc.cidr), vpc.internet) == (VPC, 0x2A, "10.0.0.0/16", True)
    assert [(s.subnet_id, s.route) for s in vpc.subnets] == [(SUB, "igw"), (SUB2, "local")]
    p0, p1 = vpc.ports
    assert (p0.port_id, p0.mac, str(p0.ip), str(p0.public_ip)) == (
        I1, "52:54:00:00:00:01", "10.0.1.10", "203.0.113.10")
    assert p1.public_ip is None and p0.tap != p1.tap
    # Two NICs of one instance in one VPC: eth0 keeps the instance id, eth1 a derived port id.
    assert p1.port_id.startswith("eni-") and p1.port_id == host_network(
        spec(), UNDERLAY.ip, UNDERLAY.dev).vpcs[0].ports[1].port_id
    assert vpc.remote_ports[0].host_underlay_ip == IPv4Address("172.31.0.12")
    assert vpc.nat_gateway.public_ip == IPv4Address("203.0.113.5")


def test_tap_names_equal_the_domain_taps():
    """PortWire(port_id, device ethN) must name the tap libvirt creates for NIC N of the domain."""
    host = host_network(spec(), UNDERLAY.ip, UNDERLAY.dev)
    d = Path("/var/lib/kumo/agent/instances") / I1
    plan = DomainPlan(name=I1, vcpus=1, memory_mib=128,
                      disks=instance_disks(d / "root.qcow2", None), console_log=d / "console.log",
                      nics=(DomainNic("52:54:00:00:00:01", "kb-00002a"),
                            DomainNic("52:54:00:00:00:02", "kb-00002a")))
    root = design_domain(plan, "qemu").to_element()
    taps = [i.find("target").get("dev") for i in root.findall("devices/interface")]
    assert taps == [p.tap for p in host.vpcs[0].ports]


@pytest.mark.parametrize("over", [
    {"cidr": "10.0.0.0/30"},                                  # VPC too small for the dataplane
    {"subnets": [{"subnet_id": SUB, "cidr": "10.9.0.0/24", "router_ip": "10.9.0.1"}]},
    {"remote_ports": [{"mac": "52:54:00:00:01:01", "ip": "10.0.1.20",
                       "host_underlay_ip": "172.31.0.11"}]},  # a "remote" port on this host
])
def test_specs_the_dataplane_cannot_carry_are_refused(over):
    with pytest.raises(NetworkSpecRejected) as e:
        host_network(spec(**over), UNDERLAY.ip, UNDERLAY.dev)
    assert (e.value.status, e.value.code) == (400, "InvalidParameterValue")


def test_the_same_nic_twice_is_refused():
    nic = {"port_id": I1, "mac": "52:54:00:00:00:01", "ip": "10.0.1.10", "subnet_id": SUB}
    with pytest.raises(NetworkSpecRejected):
        host_network(spec(ports=[nic, nic | {"mac": "52:54:00:00:00:09", "ip": "10.0.1.11"}]),
                     UNDERLAY.ip, UNDERLAY.dev)


def test_wire_rejects_bad_devices():
    with pytest.raises(ValidationError):
        spec(ports=[{"port_id": I1, "device": "tap0", "mac": "52:54:00:00:00:01",
                     "ip": "10.0.1.10", "subnet_id": SUB}])


# -- generation rules ---------------------------------------------------------------------------

def test_generation_rules(tmp_path):
    dp = FakeDataplane()
    svc = service(tmp_path, dp)
    assert svc.observed().generation == 0 and svc.spec() is None
    assert svc.accept(spec(2)).generation == 2
    assert svc.accept(spec(2)).generation == 2  # same content: a no-op
    with pytest.raises(NetworkSpecRejected) as e:
        svc.accept(spec(1))
    assert (e.value.status, e.value.code) == (409, "StaleGeneration")
    with pytest.raises(NetworkSpecRejected) as e:
        svc.accept(spec(2, internet=False))
    assert (e.value.status, e.value.code) == (409, "IdempotentParameterMismatch")
    assert svc.spec() == spec(2)
    svc.accept(spec(3, internet=False))
    assert svc.spec().generation == 3 and dp.ensures == 0  # the thread applies, not accept()


def test_invalid_spec_is_refused_and_keeps_the_old(tmp_path):
    svc = service(tmp_path)
    svc.accept(spec(1))
    with pytest.raises(NetworkSpecRejected) as e:
        svc.accept(spec(2, cidr="10.0.0.0/30"))
    assert e.value.code == "InvalidParameterValue"
    assert svc.spec().generation == 1
    assert json.loads(svc.path.read_text())["generation"] == 1


# -- applying, observed state -------------------------------------------------------------------

def test_run_once_applies_and_records(tmp_path):
    dp = FakeDataplane()
    changes = []
    svc = service(tmp_path, dp, on_change=lambda: changes.append(1))
    assert svc.run_once() is False and dp.ensures == 0  # nothing accepted: hands off
    svc.accept(spec(1))
    assert svc.observed().applied_generation == 0
    assert svc.run_once() is False
    obs = svc.observed()
    assert (obs.generation, obs.applied_generation, obs.failed, obs.error) == (1, 1, 0, None)
    assert obs.applied_at is not None
    assert dp.last == host_network(spec(1), UNDERLAY.ip, UNDERLAY.dev)
    n = len(changes)
    svc.run_once()  # nothing changed: no heartbeat kick
    assert len(changes) == n and dp.ensures == 2


def test_missing_taps_are_reported_and_retried(tmp_path):
    dp = FakeDataplane()
    host = host_network(spec(1), UNDERLAY.ip, UNDERLAY.dev)
    dp.missing_taps = {p.tap for p in host.vpcs[0].ports}
    svc = service(tmp_path, dp)
    svc.accept(spec(1))
    assert svc.run_once() is False  # no quick retry: the tap joins its bridge via libvirt
    obs = svc.observed()
    assert (obs.generation, obs.applied_generation, obs.failed) == (1, 0, 2)
    assert obs.error.code == "WaitingForTaps" and obs.error.retryable
    dp.missing_taps.clear()
    assert svc.run_once() is False
    assert svc.observed().applied_generation == 1 and svc.observed().error is None


def test_dataplane_errors_are_recorded(tmp_path):
    dp = FakeDataplane()
    svc = service(tmp_path, dp)
    svc.accept(spec(1))
    dp.fail(DriverError("boom"))
    assert svc.run_once() is True
    assert svc.observed().error.code == "InternalError"
    assert svc.run_once() is False and svc.observed().applied_generation == 1


def test_refused_namespace_is_reported_not_retried(tmp_path):
    def refuse():
        raise DataplaneError("RootNamespaceRefused", "no")
    svc = NetworkService(tmp_path, dataplane=refuse, underlay=lambda: UNDERLAY,
                         link_up=lambda n: False)
    svc.accept(spec(1))
    assert svc.run_once() is False
    err = svc.observed().error
    assert (err.code, err.retryable) == ("RootNamespaceRefused", False)


# -- persistence -------------------------------------------------------------------------------

def test_spec_survives_a_restart(tmp_path):
    svc = service(tmp_path)
    svc.accept(spec(4))
    again = FakeDataplane()
    svc2 = service(tmp_path, again)
    assert svc2.spec() == spec(4) and svc2.observed().generation == 4
    assert svc2.observed().applied_generation == 0
    svc2.run_once()
    assert again.last == host_network(spec(4), UNDERLAY.ip, UNDERLAY.dev)
    assert svc2.observed().applied_generation == 4
    with pytest.raises(NetworkSpecRejected):
        svc2.accept(spec(3))


def test_a_corrupt_spec_file_is_set_aside(tmp_path):
    svc = service(tmp_path)
    svc.accept(spec(1))
    svc.path.write_text("{not json")
    svc2 = service(tmp_path)
    assert svc2.spec() is None and svc2.observed().generation == 0
    assert list(svc.path.parent.glob("spec.json.corrupt-*"))
    svc2.accept(spec(1))


# -- the thread -------------------------------------------------------------------------------

def wait_for(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (v := fn()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return v


def test_thread_applies_on_kick_retries_and_survives_errors(tmp_path):
    dp = FakeDataplane()
    svc = service(tmp_path, dp, resync_interval=30.0, retry_interval=0.05)
    svc.start()
    try:
        svc.accept(spec(1))
        wait_for(lambda: svc.observed().applied_generation == 1)  # kicked, not the 30 s resync
        dp.fail(RuntimeError("kernel on fire"), times=2)
        svc.accept(spec(2, internet=False))
        wait_for(lambda: svc.observed().applied_generation == 2)
        assert dp.ensures >= 4 and svc._thread.is_alive()
    finally:
        svc.stop()
    assert svc._thread is None and dp.closed


def test_bridge_helpers(tmp_path):
    dp = FakeDataplane()
    svc = service(tmp_path, dp, resync_interval=30.0)
    svc.start()
    try:
        assert not svc.bridge_ready("kb-00002a")
        assert not svc.wait_bridge("kb-00002a", 0.2)
        svc.accept(spec(1))
        assert svc.wait_bridge("kb-00002a", 2.0)
    finally:
        svc.stop()


# -- VpcNetwork driver ---------------------------------------------------------------------------

def test_vpc_network_driver(tmp_path):
    dp = FakeDataplane()
    svc = service(tmp_path, dp, resync_interval=30.0)
    drv = VpcNetwork(svc, wait=0.2)
    svc.start()
    try:
        assert not drv.bridge_ready("kb-00002a")
        with pytest.raises(DriverError) as e:
            drv.ensure_bridge("kb-00002a")
        assert (e.value.code, e.value.retryable) == ("NetworkNotReady", True)
        svc.accept(spec(1))
        drv.ensure_bridge("kb-00002a")
        assert drv.bridge_ready("kb-00002a")
        # Other names are no bridges of Kumo's: never ready, never created.
        assert not drv.bridge_ready("kumobr0")
        with pytest.raises(DriverError) as e:
            drv.ensure_bridge("kumobr0")
        assert (e.value.code, e.value.retryable) == ("NetworkNotReady", False)
    finally:
        svc.stop()


# -- settings and namespaces -----------------------------------------------------------------

def test_network_settings(monkeypatch):
    assert AgentSettings(host_id="h").network_mode() == "vpc"
    assert AgentSettings(host_id="h", driver="fake").network_mode() == "fake"
    with pytest.raises(ValidationError):  # the flat-bridge mode is gone
        AgentSettings(host_id="h", network="bridge")
    s = AgentSettings(host_id="h")
    assert (s.netns, s.underlay_dev, s.underlay_ip, s.network_resync_interval) == (
        None, None, None, 5.0)
    for k, v in {"NETNS": "kumo-h1", "UNDERLAY_DEV": "uplink0", "UNDERLAY_IP": "172.31.0.11",
                 "NETWORK_RESYNC_INTERVAL": "2", "NETWORK": "vpc"}.items():
        monkeypatch.setenv(f"KUMO_AGENT_{k}", v)
    s = AgentSettings(host_id="h")
    assert (s.netns, s.underlay_dev, s.underlay_ip, s.network_resync_interval) == (
        "kumo-h1", "uplink0", IPv4Address("172.31.0.11"), 2.0)
    for field, bad in [("netns", "-x"), ("netns", "a b"), ("underlay_dev", "x;y"),
                       ("underlay_ip", "nope"), ("network_resync_interval", 0)]:
        with pytest.raises(ValidationError):
            AgentSettings(host_id="h", **{field: bad})


def test_fake_underlay_ip_is_stable_test_net():
    a = fake_underlay_ip("host-a")
    assert a == fake_underlay_ip("host-a") and str(a).startswith("192.0.2.")
    assert a not in (IPv4Address("192.0.2.0"), IPv4Address("192.0.2.255"))
    assert len({fake_underlay_ip(f"h{i}") for i in range(20)}) > 10


def test_resolve_namespace():
    assert resolve_namespace("kumo-h1", "h1", False).netns == "kumo-h1"
    assert resolve_namespace("kumo-h1", "h1", False).host_tag == "kumo-h1"
    if own_netns_name() is None:
        from agent.netns import in_private_netns
        if not in_private_netns():  # the machine's own namespace: refused unless allowed
            with pytest.raises(DataplaneError) as e:
                resolve_namespace(None, "h1", False)
            assert e.value.code == "RootNamespaceRefused"
        ns = resolve_namespace(None, "h1", True)
        assert (ns.netns, ns.host_tag) == (None, "h1")

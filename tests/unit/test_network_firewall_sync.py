"""Security groups and DHCP in NetworkService (agent/network/firewall_sync.py, dhcp_sync.py):
NetworkSpec -> HostFirewall (ports without groups left out, zones, members, tap/bridge names),
invalid groups refused at accept(), the pass order and error reporting with FakeFirewall, the
FirewallSync call sequence over a stub nft backend, and DhcpSync's choices over stub servers."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from agent.contract.v1 import ErrorInfo, NetworkSpec
from agent.drivers.fake import FakeDataplane, FakeFirewall
from agent.firewall.apply import FirewallApplyError
from agent.firewall.model import FirewallInputError
from agent.libvirt.names import tap_name
from agent.network.dhcp_sync import DhcpSync
from agent.network.firewall_sync import TAP_PREFIX, FirewallSync, host_firewall
from agent.network.service import NetworkService, NetworkSpecRejected
from agent.network.wire import combine_errors
from tests.unit.test_network_service import I1, I2, SUB, SUB2, UNDERLAY, spec_doc

SG1, SG2 = "sg-0000000000000000a", "sg-0000000000000000b"
R = "sgr-000000000000000{:02x}"


def rule(n: int, **kw) -> dict:
    return {"rule_id": R.format(n), "direction": "ingress", **kw}


def sg_doc(generation: int = 1, groups=None, port_groups=((SG1,), (SG1, SG2), ())) -> dict:
    doc = spec_doc(generation, ports=[
        {"port_id": I1, "mac": "52:54:00:00:00:01", "ip": "10.0.1.10", "subnet_id": SUB},
        {"port_id": I2, "mac": "52:54:00:00:00:02", "ip": "10.0.1.11", "subnet_id": SUB},
        {"port_id": I2, "device": "eth1", "mac": "52:54:00:00:00:03", "ip": "10.0.2.11",
         "subnet_id": SUB2}])
    for p, g in zip(doc["vpcs"][0]["ports"], port_groups):
        p["security_group_ids"] = list(g)
    doc["security_groups"] = groups if groups is not None else [
        {"group_id": SG1, "zone": 0x2A, "members": ["10.0.1.10", "10.0.1.11", "10.0.1.20"],
         "rules": [rule(1, protocol="tcp", from_port=22, to_port=22, cidr="0.0.0.0/0"),
                   rule(2, protocol="icmp", peer_group=SG1),
                   {"rule_id": R.format(3), "direction": "egress", "protocol": "all",
                    "cidr": "0.0.0.0/0"}]},
        {"group_id": SG2, "zone": 0x2A, "members": ["10.0.1.11"], "rules": []}]
    return doc


def sg_spec(generation: int = 1, **kw) -> NetworkSpec:
    return NetworkSpec.model_validate(sg_doc(generation, **kw))


def test_conversion_to_host_firewall():
    fw = host_firewall(sg_spec())
    assert fw.tap_prefix == TAP_PREFIX and tap_name(I1, 0).startswith(TAP_PREFIX)
    # the third port has no groups: not in the firewall (its tap gets nothing through)
    assert [(p.tap, p.bridge, p.mac, str(p.ipv4), p.zone, p.group_ids) for p in fw.ports] == [
        (tap_name(I1, 0), "kb-00002a", "52:54:00:00:00:01", "10.0.1.10", 0x2A, (SG1,)),
        (tap_name(I2, 0), "kb-00002a", "52:54:00:00:00:02", "10.0.1.11", 0x2A, (SG1, SG2))]
    g1 = fw.groups[SG1]
    assert g1.zone == 0x2A and IPv4Address("10.0.1.20") in g1.members and len(g1.members) == 3
    r1, r2, r3 = g1.rules
    assert (r1.protocol, r1.port_range, r1.cidr) == ("tcp", (22, 22), IPv4Network("0.0.0.0/0"))
    assert (r2.protocol, r2.peer_group, r2.icmp_type) == ("icmp", SG1, None)
    assert (r3.direction, r3.protocol) == ("egress", "all")
    assert fw.groups[SG2].rules == ()


def test_no_groups_no_ports():
    fw = host_firewall(NetworkSpec.model_validate(spec_doc(1)))
    assert fw.ports == () and dict(fw.groups) == {} and fw.tap_prefix == TAP_PREFIX
    assert host_firewall(NetworkSpec(generation=1)).ports == ()


@pytest.mark.parametrize("groups,code", [
    ([], "InvalidGroup.NotFound"),  # ports name groups the spec does not carry
    ([{"group_id": SG1, "zone": 7, "rules": []},  # another VPC's zone
      {"group_id": SG2, "zone": 0x2A, "rules": []}], "InvalidGroup.NotFound"),
    ([{"group_id": SG1, "zone": 0x2A, "rules": [rule(1, protocol="icmp", peer_group=SG2)]}],
     "InvalidGroup.NotFound"),
    ([{"group_id": SG1, "zone": 0x2A, "rules": [rule(1, protocol="tcp", cidr="0.0.0.0/0")]}],
     "InvalidPermission.Malformed"),  # tcp without ports
    ([{"group_id": SG1, "zone": 0x2A, "rules": [rule(1, protocol="tcp", from_port=90,
                                                      to_port=80, cidr="0.0.0.0/0")]}],
     "InvalidPermission.Malformed"),
    ([{"group_id": SG1, "zone": 0x2A, "rules": [rule(1, protocol="all")]}],
     "InvalidPermission.Malformed"),  # no peer
    ([{"group_id": SG1, "zone": 0x2A, "rules": [rule(1, protocol="all", cidr="0.0.0.0/0")] * 2}],
     "InvalidPermission.Duplicate"),
    ([{"group_id": SG1, "zone": 0x2A, "rules": []}] * 2, "InvalidParameterValue"),
])
def test_invalid_groups(groups, code):
    # ports use SG2 only when the case carries it (or carries no group at all)
    has_sg2 = not groups or any(g["group_id"] == SG2 for g in groups)
    kw = {} if has_sg2 else {"port_groups": ((SG1,), (SG1,), ())}
    with pytest.raises(FirewallInputError) as e:
        host_firewall(sg_spec(groups=groups, **kw))
    assert e.value.code == code


def service(tmp_path, fw=None, dp=None, **kw):
    dp = dp or FakeDataplane()
    return NetworkService(tmp_path, dataplane=dp, underlay=lambda: UNDERLAY, link_up=dp.link_up,
                          firewall=fw if fw is not None else FakeFirewall(), **kw)


def test_accept_refuses_invalid_groups_and_changes_nothing(tmp_path):
    svc = service(tmp_path)
    svc.accept(sg_spec(1))
    with pytest.raises(NetworkSpecRejected) as e:
        svc.accept(sg_spec(2, groups=[]))
    assert (e.value.status, e.value.code) == (400, "InvalidGroup.NotFound")
    assert svc.spec() == sg_spec(1) and svc.observed().generation == 1
    assert NetworkService(tmp_path, dataplane=FakeDataplane(), underlay=lambda: UNDERLAY,
                          link_up=lambda n: False).spec() == sg_spec(1)


def test_passes_apply_the_firewall_before_the_dataplane(tmp_path):
    order = []
    fw, dp = FakeFirewall(), FakeDataplane()
    fw_apply, dp_ensure = fw.apply, dp.ensure
    fw.apply = lambda f: (order.append("firewall"), fw_apply(f))[1]
    dp.ensure = lambda h: (order.append("dataplane"), dp_ensure(h))[1]
    svc = service(tmp_path, fw=fw, dp=dp)
    assert svc.run_once() is False  # no spec: nothing touched
    assert fw.last is None and order == []
    svc.accept(sg_spec(1))
    svc.run_once()
    assert order == ["firewall", "dataplane"]
    assert fw.last == host_firewall(sg_spec(1)) and svc.observed().applied_generation == 1
    svc.run_once()
    svc.accept(sg_spec(2, port_groups=((SG1,), (SG1,), (SG2,))))
    svc.run_once()
    assert fw.calls == ["setup", "ensure", "update"]
    assert len(fw.last.ports) == 3
    assert svc.check_firewall() is False and fw.checks == 1


def test_firewall_failure_is_reported_and_the_dataplane_still_runs(tmp_path):
    fw, dp = FakeFirewall(), FakeDataplane()
    svc = service(tmp_path, fw=fw, dp=dp)
    svc.accept(sg_spec(1))
    fw.fail(times=1)
    assert svc.run_once() is True  # quick retry
    obs = svc.observed()
    assert obs.applied_generation == 0 and obs.error.code == "FirewallApplyFailed"
    assert obs.error.retryable and dp.ensures == 1 and dp.last is not None
    assert svc.run_once() is False
    assert svc.observed().applied_generation == 1 and svc.observed().error is None


def test_firewall_check_failure_shows_in_observed(tmp_path):
    class Flaky(FakeFirewall):
        broken = False

        def check(self):
            if self.broken:
                raise FirewallApplyError("nft gone")
    fw = Flaky()
    svc = service(tmp_path, fw=fw)
    svc.accept(sg_spec(1))
    svc.run_once()
    fw.broken = True
    assert svc.check_firewall() is True
    assert svc.observed().error.code == "FirewallApplyFailed"
    assert svc.observed().applied_generation == 1
    fw.broken = False
    assert svc.check_firewall() is False and svc.observed().error is None


def test_combine_errors_puts_waiting_for_taps_last():
    wait = ErrorInfo(code="WaitingForTaps", message="2 taps")
    fw = ErrorInfo(code="FirewallApplyFailed", message="nft")
    assert combine_errors([None, None, None]) is None
    assert combine_errors([wait, None, None]) == wait
    got = combine_errors([wait, fw, None])
    assert got.code == "FirewallApplyFailed" and "also: WaitingForTaps" in got.message


class StubNft:
    def __init__(self):
        self.loads = 0

    def load(self, document, check=False):
        self.loads += 1

    def list_ruleset(self):
        return []  # as after `nft flush ruleset`


def test_firewall_sync_sequence_over_a_stub_backend():
    nft = StubNft()
    sync = FirewallSync("some-ns", backend=lambda: nft, check_netfilter=False)
    sync.check()  # nothing applied yet: nothing to verify
    assert nft.loads == 0
    fw1, fw2 = host_firewall(sg_spec(1)), host_firewall(sg_spec(2, port_groups=((SG2,), (), ())))
    assert sync.apply(fw1) == "setup"
    assert sync.apply(fw1) == "ensure" and sync.repairs == 1  # the stub lists nothing: restored
    assert sync.apply(fw2) == "update" and sync.applier.current == fw2
    sync.check()
    assert sync.repairs == 2
    sync.close()
    assert sync.applier is None


class StubServers:
    def __init__(self, running=()):
        self.running = set(running)
        self.ensured, self.removed = [], []

    def owned(self):
        return sorted(self.running)

    def remove(self, vni):
        self.removed.append(vni)
        self.running.discard(vni)

    def ensure(self, vni, ns, iface, subnets, ports):
        self.ensured.append((vni, ns, iface, len(subnets), sorted(str(p.ip) for p in ports)))
        self.running.add(vni)
        return "started"

    def pid(self, vni):
        return 4242


def test_dhcp_sync(tmp_path):
    from agent.network.service import host_network
    servers = StubServers(running={7})
    sync = DhcpSync(tmp_path / "dhcp", "h1", factory=lambda: servers)
    host = host_network(sg_spec(1), UNDERLAY.ip, UNDERLAY.dev)
    assert sync.prune(host) == [] and servers.removed == [7]
    assert sync.ensure(host) == []
    assert servers.ensured == [(0x2A, "h1-kvr-00002a", "kr-00002a", 2,
                                ["10.0.1.10", "10.0.1.11", "10.0.2.11"])]
    assert sync.pids() == {0x2A: 4242}
    # a VPC without local ports needs no server; an empty spec stops them all
    no_ports = host_network(NetworkSpec.model_validate(spec_doc(2, ports=[])), UNDERLAY.ip,
                            UNDERLAY.dev)
    assert DhcpSync.wanted(no_ports) == {}
    sync.prune(None)
    assert servers.removed == [7, 0x2A] and servers.running == set()

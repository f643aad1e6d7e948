"""NAT gateways' last counts, agent side (issue 13: bytes after the last heartbeat of a gateway
that is deleted or moves away): the persisted bookkeeping (agent.network.nat_finals), the
dataplane reading a counter when it stops feeding it (after the NAT table load; sealed before a
router namespace goes) and the service/heartbeat reporting finals until delivered."""
from __future__ import annotations

import json

import httpx

from agent.contract.v1 import NatProcessed, NetworkObserved
from agent.firewall import load
from agent.heartbeat import Heartbeat
from agent.network import Dataplane, HostNetwork, nat, nat_finals
from agent.network.nat_finals import NatFinals
from agent.network.netlink import NetlinkOpError
from agent.network.records import Netns, NftTable
from agent.settings import AgentSettings
from tests.unit.test_nat_render import FakeBackend, verbs
from tests.unit.test_vpc_net_apply import FakeKernel
from tests.unit.test_vpc_net_nat import vpc

NG = "nat-00000000000000001"
NG2 = "nat-00000000000000002"
RNS = "kvn-x-h1-kvr-00002a"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the store ---------------------------------------------------------------------------------

def test_finals_persist_and_survive_a_restart(tmp_path) -> None:
    f = NatFinals(tmp_path)
    f.record({NG: 5000})
    assert NatFinals(tmp_path).pending() == {NG: 5000}  # a restarted agent still has it
    assert json.loads((tmp_path / "network" / "nat-finals.json").read_text())[NG]["bytes"] == 5000


def test_delivered_drops_after_the_bound_and_only_for_the_value_sent(tmp_path) -> None:
    f = NatFinals(tmp_path)
    f.record({NG: 5000, NG2: 7})
    f.delivered([(NG, 4999)])  # an older value: not this final
    for _ in range(nat_finals.DELIVERIES - 1):
        f.delivered([(NG, 5000)])
    assert f.pending() == {NG: 5000, NG2: 7}
    f.delivered([(NG, 5000)])
    assert f.pending() == {NG2: 7}
    assert NatFinals(tmp_path).pending() == {NG2: 7}  # the drop is persisted


def test_reading_the_same_final_again_does_not_restart_its_deliveries(tmp_path) -> None:
    f = NatFinals(tmp_path)
    f.record({NG: 5000})
    f.delivered([(NG, 5000)])
    f.record({NG: 5000})  # e.g. the counter's delete failed and it was read again
    for _ in range(nat_finals.DELIVERIES - 1):
        f.delivered([(NG, 5000)])
    assert f.pending() == {}
    f.record({NG: 6000})  # a later final replaces it (later cumulative value)
    assert f.pending() == {NG: 6000}


def test_finals_expire_and_stay_bounded(tmp_path, monkeypatch) -> None:
    clock = Clock()
    f = NatFinals(tmp_path, clock=clock)
    f.record({NG: 1})
    clock.t += nat_finals.MAX_AGE + 1
    assert f.pending() == {}
    monkeypatch.setattr(nat_finals, "MAX_ENTRIES", 2)
    for i in range(3):
        clock.t += 1
        f.record({f"nat-{i:017x}": i})
    assert sorted(f.pending()) == ["nat-00000000000000001", "nat-00000000000000002"]


def test_unreadable_file_starts_empty(tmp_path) -> None:
    (tmp_path / "network").mkdir()
    (tmp_path / "network" / "nat-finals.json").write_text("{not json")
    assert NatFinals(tmp_path).pending() == {}


def test_merge_final_first_then_the_live_counter_of_a_gateway_back_here(tmp_path) -> None:
    f = NatFinals(tmp_path)
    f.record({NG: 5000})
    assert f.merge({NG2: 3}) == {NG: 5000, NG2: 3}
    # NG placed here again with a new counter (100): the final goes first, until delivered once
    assert f.merge({NG: 100}) == {NG: 5000}
    f.delivered([(NG, 5000)])
    assert f.merge({NG: 100}) == {NG: 100}
    assert f.pending() == {}


# -- the dataplane -----------------------------------------------------------------------------

class FakeIO:
    """nat.CounterIO over a dict per namespace; records calls."""

    def __init__(self, counters: dict[str, dict[str, int]]) -> None:
        self.counters = counters
        self.calls: list[tuple] = []

    def read(self, ns):
        self.calls.append(("read", ns))
        if ns not in self.counters:
            raise load.FirewallApplyError("no such table")
        return dict(self.counters[ns])

    def seal(self, ns):
        self.calls.append(("seal", ns))

    def drop(self, ns, ids):
        self.calls.append(("drop", ns, sorted(ids)))
        for i in ids:
            self.counters[ns].pop(i, None)


def hosts():
    here = HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[vpc()])
    # The gateway is deleted, the VPC stays (its subnets' route is gone too).
    gone = HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0",
                       vpcs=[vpc(natgw=False)])
    return here, gone


class NoGarpKernel(FakeKernel):
    """FakeKernel whose uplink has no MAC: the dataplane then sends no gratuitous ARP (a real
    socket in a namespace that pyroute2 would create)."""

    def link_mac(self, ns, dev):
        raise NetlinkOpError(None, "no uplink in a unit test")


def dataplane(io, sink):
    loads: list[tuple] = []
    dp = Dataplane("kvn-x-h1", host_tag="kvn-x-h1", kernel=NoGarpKernel(),
                   nat_loader=lambda ns, payload: loads.append((ns, payload)), nat_io=io)
    dp.on_nat_final = sink
    return dp, loads


def test_gateway_deleted_counter_read_after_the_load_then_deleted() -> None:
    io = FakeIO({RNS: {NG: 4000}})
    got: list[dict] = []
    dp, loads = dataplane(io, got.append)
    here, gone = hosts()
    assert dp.ensure(here).ok
    assert got == [] and ("drop", RNS, [NG]) not in io.calls  # its own, live gateway: kept
    io.counters[RNS][NG] = 9000  # bytes after the last heartbeat
    io.calls.clear()
    assert dp.ensure(gone).ok
    assert got == [{NG: 9000}]
    # read after the load that removed its counting rules (exact), then deleted
    assert [c[0] for c in io.calls] == ["read", "drop"]
    assert loads[-1][0] == RNS
    assert io.counters[RNS] == {}


def test_router_namespace_removed_sealed_then_read_before_it_goes() -> None:
    io = FakeIO({RNS: {NG: 4000}})
    got: list[dict] = []
    dp, _ = dataplane(io, got.append)
    here, _gone = hosts()
    assert dp.ensure(here).ok
    io.counters[RNS][NG] = 12345
    io.calls.clear()
    kernel = dp.kernel
    empty = HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[])
    assert dp.ensure(empty).ok
    assert got == [{NG: 12345}]
    assert io.calls == [("seal", RNS), ("read", RNS)]
    assert not [r for r in kernel.state if isinstance(r, Netns)]


def test_teardown_reads_final_counters_too_and_a_failed_read_blocks_nothing() -> None:
    io = FakeIO({RNS: {NG: 77}})
    got: list[dict] = []
    dp, _ = dataplane(io, got.append)
    here, _ = hosts()
    dp.ensure(here)
    dp.teardown("uplink0")
    assert got == [{NG: 77}]
    # a namespace whose counters cannot be read still goes
    io2 = FakeIO({})
    dp2, _ = dataplane(io2, got.append)
    dp2.ensure(here)
    empty = HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[])
    assert dp2.ensure(empty).ok and len(got) == 1


def test_no_hook_no_reads() -> None:
    io = FakeIO({RNS: {NG: 1}})
    dp, _ = dataplane(io, None)
    here, gone = hosts()
    dp.ensure(here)
    dp.ensure(gone)
    assert io.calls == []
    # with an injected kernel and no nat_io there is nothing to read with
    assert Dataplane("kvn-x-h1", kernel=FakeKernel(), nat_loader=lambda *a: None).nat_io is None
    assert not [r for r in dp.kernel.state if isinstance(r, NftTable)]  # loads went to the loader


# -- the nft documents -------------------------------------------------------------------------

def test_counter_io_documents() -> None:
    be = FakeBackend(listing=[{"counter": {"family": "ip", "table": "kumo_nat",
                                           "name": "natgw-" + NG, "bytes": 42}}])
    io = nat.CounterIO(backend=be)
    assert io.read(RNS) == {NG: 42}
    io.seal(RNS)
    io.drop(RNS, [NG])
    io.drop(RNS, [])  # nothing: no load
    seal, drop = be.loaded
    assert verbs(seal) == [("flush", "chain", "forward"), ("add", "rule", "forward")]
    assert seal["nftables"][1]["add"]["rule"]["expr"] == [{"drop": None}]
    assert verbs(drop) == [("delete", "counter", "natgw-" + NG)]
    try:
        nat.drop_counters_document(["nat-x\"; flush ruleset"])
    except nat.NatInputError:
        pass
    else:
        raise AssertionError("an id that is not one reached nft")


# -- service and heartbeat ---------------------------------------------------------------------

def test_heartbeat_reports_finals_until_delivered(tmp_path) -> None:
    finals = NatFinals(tmp_path)
    finals.record({NG: 9000})
    bodies: list[dict] = []
    fail = {"n": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if fail["n"]:
            fail["n"] -= 1
            return httpx.Response(503)
        return httpx.Response(200, json={"interval": 5, "nat_processed": True})

    hb = Heartbeat(AgentSettings(host_id="h1", state_dir=tmp_path, controller_url="http://c"),
                   host=lambda: _host_info(), instances=lambda: [],
                   network=lambda: NetworkObserved(generation=1),
                   nat_processed=lambda: [NatProcessed(nat_gateway_id=k, bytes=v)
                                          for k, v in finals.merge({}).items()],
                   nat_delivered=lambda sent: finals.delivered(
                       (x.nat_gateway_id, x.bytes) for x in sent))
    hb._client = httpx.Client(base_url="http://c", transport=httpx.MockTransport(handler))
    hb.send_nat = True
    try:
        hb.send_once()
    except httpx.HTTPStatusError:
        pass  # the answer was lost: not a delivery
    assert finals.pending() == {NG: 9000}
    for _ in range(nat_finals.DELIVERIES):
        hb.send_once()
    assert finals.pending() == {}
    sent = [b["network"].get("nat_processed") for b in bodies]
    assert sent == [[{"nat_gateway_id": NG, "bytes": 9000}]] * (1 + nat_finals.DELIVERIES)
    hb.send_once()
    assert "nat_processed" not in bodies[-1]["network"] or bodies[-1]["network"]["nat_processed"] == []


def _host_info():
    from agent.contract.v1 import CONTRACT_VERSION, HostInfo
    return HostInfo(host_id="h1", agent_url="http://a", hypervisor="qemu", architecture="x86_64",
                    vcpus=1, memory_mib=1, disk_bytes=1, extensions=[], versions={},
                    contract=CONTRACT_VERSION)


def test_service_hooks_the_dataplane_and_reports_finals_until_delivered(tmp_path) -> None:
    from tests.unit.test_network_service import UNDERLAY, FakeDataplane

    class Hooked(FakeDataplane):
        on_nat_final = None

    made: list = []

    def factory():
        made.append(Hooked())
        return made[-1]

    from agent.network.service import NetworkService
    svc = NetworkService(tmp_path, dataplane=factory, underlay=lambda: UNDERLAY,
                         link_up=lambda n: False)
    assert svc._dataplane() is made[0]
    made[0].on_nat_final({NG: 9000})  # what Dataplane does when the gateway goes
    assert svc.nat_processed() == [NatProcessed(nat_gateway_id=NG, bytes=9000)]
    # a restarted agent (new service over the same state dir) still reports it
    svc2 = NetworkService(tmp_path, dataplane=Hooked(), underlay=lambda: UNDERLAY,
                          link_up=lambda n: False)
    sent = svc2.nat_processed()
    assert sent == [NatProcessed(nat_gateway_id=NG, bytes=9000)]
    for _ in range(nat_finals.DELIVERIES):
        svc2.nat_delivered(sent)
    assert svc2.nat_processed() == []


def test_reload_keeping_the_counter_pays_no_read() -> None:
    io = FakeIO({RNS: {NG: 1}})
    dp, loads = dataplane(io, lambda f: None)
    here, _ = hosts()
    dp.ensure(here)
    assert io.calls == [("read", RNS)]  # first load here: nothing known of the table before
    v = here.vpcs[0]
    moved = here.model_copy(update={"vpcs": [v.model_copy(update={"ports": [
        p.model_copy(update={"public_ip": None}) for p in v.ports]})]})
    n = len(loads)
    dp.ensure(moved)  # e.g. an elastic IP moved: the table changes, the counter stays
    assert len(loads) == n + 1 and io.calls == [("read", RNS)]

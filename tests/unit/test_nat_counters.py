"""The NAT gateway's data processed, agent side (issue 13): the named counter the router's NAT
table declares and its counting rules (agent.network.nat), the loader keeping a counter across
reloads and deleting one no longer rendered (agent.firewall.load), the read-back of `nft -j list`
output, the dataplane's per-host read, the contract's version-skew rules (fields left out at
their defaults) and the heartbeat sending counters only once the controller asked."""
from __future__ import annotations

import json

import pytest

from agent.contract.v1 import (EXTENSIONS, HeartbeatResponse, NatProcessed, NetworkObserved)
from agent.firewall import load
from agent.network import Dataplane, HostNetwork, nat
from tests.unit.test_nat_render import FakeBackend, verbs
from tests.unit.test_vpc_net_nat import vpc

NG = "nat-00000000000000001"
COUNTER = "natgw-" + NG
REF = {"family": "ip", "table": "kumo_nat", "name": COUNTER}


def test_counter_declared_only_where_the_gateway_lives() -> None:
    here = nat.render_nat(vpc(), True)["nftables"]
    assert {"add": {"counter": REF}} in here
    counting = [c["add"]["rule"] for c in here if "rule" in c["add"]
                and {"counter": COUNTER} in c["add"]["rule"]["expr"]]
    assert [r["chain"] for r in counting] == ["forward", "forward"]
    elsewhere = json.dumps(nat.render_nat(vpc(), False))
    assert "counter" not in elsewhere
    # Gateway here but no subnet routed to it (yet): the counter stays declared (its count
    # survives a route coming and going), nothing feeds it.
    v = vpc()
    unrouted = v.model_copy(update={"subnets": tuple(s.model_copy(update={"route": None})
                                                     if s.route == "nat" else s for s in v.subnets)})
    cmds = nat.render_nat(unrouted, True)["nftables"]
    assert {"add": {"counter": REF}} in cmds
    assert not [c for c in cmds if "rule" in c["add"] and {"counter": COUNTER} in c["add"]["rule"]["expr"]]


@pytest.mark.parametrize("bad", ["nat-XYZ", "nat-0000\"; flush ruleset", "", None, 5,
                                 "NAT-00000000000000001", "nat-00000000000000001 "])
def test_counter_name_refuses_anything_but_an_id(bad) -> None:
    with pytest.raises(nat.NatInputError):
        nat.counter_name(bad)
    assert nat.counter_name(NG) == COUNTER


def test_reload_keeps_the_counter_and_deletes_a_stale_one() -> None:
    tx = json.loads(nat.render_nat_json(vpc(), True))
    v = verbs(tx)
    # declared with `add` (kept with its value by the kernel), never deleted, before any rule
    assert ("add", "counter", COUNTER) in v and ("delete", "counter", COUNTER) not in v
    assert v.index(("add", "counter", COUNTER)) < v.index(("add", "rule", "forward"))
    # The gateway moved away: the table read back still has its counter -> deleted, after the
    # flush that removes the rules using it, in the same transaction.
    listing = [{"table": {"family": "ip", "name": "kumo_nat"}},
               {"counter": {**REF, "handle": 3, "packets": 10, "bytes": 4000}}]
    be = FakeBackend(listing=listing, refuse=1)
    nat.load_table("kvn-x-h1-kvr-00002a", nat.render_nat_json(vpc(), False), backend=be)
    (loaded,) = be.loaded
    lv = verbs(loaded)
    assert ("delete", "counter", COUNTER) in lv
    assert lv.index(("flush", "table", "kumo_nat")) < lv.index(("delete", "counter", COUNTER))
    # still wanted: not deleted when read back
    be = FakeBackend(listing=listing, refuse=1)
    nat.load_table("kvn-x-h1-kvr-00002a", nat.render_nat_json(vpc(), True), backend=be)
    assert ("delete", "counter", COUNTER) not in verbs(be.loaded[0])


def test_counters_read_back_from_a_listing() -> None:
    listing = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "kumo_nat"}},
               {"counter": {**REF, "handle": 3, "packets": 10, "bytes": 4000}},
               {"counter": {**REF, "name": "other", "bytes": 7}},
               {"counter": {**REF, "table": "kumo", "name": "natgw-nat-00000000000000002", "bytes": 9}},
               {"counter": {**REF, "name": "natgw-bad id", "bytes": 9}}]
    assert nat.counters_in(listing) == {NG: 4000}
    assert nat.read_counters("kvn-x", backend=FakeBackend(listing=listing)) == {NG: 4000}


def test_dataplane_reads_the_counters_of_its_own_gateways_only() -> None:
    seen: list[str] = []

    def reader(ns):
        seen.append(ns)
        return {NG: 123, "nat-00000000000000099": 5}

    dp = Dataplane("kvn-x-h1", kernel=object(), nat_loader=lambda *a: None)
    here = HostNetwork(underlay_ip="172.31.0.11", underlay_dev="uplink0", vpcs=[vpc()])
    assert dp.nat_counters(here, reader=reader) == {NG: 123}
    assert seen == ["kvn-x-h1-kvr-00002a"]
    other = HostNetwork(underlay_ip="172.31.0.12", underlay_dev="uplink0", vpcs=[vpc()])
    assert dp.nat_counters(other, reader=reader) == {}

    def broken(ns):
        raise load.FirewallApplyError("no such namespace")

    assert dp.nat_counters(here, reader=broken) == {}  # cumulative: the next read has it all


def test_contract_leaves_the_new_fields_out_at_their_defaults() -> None:
    assert "nat-processed" in EXTENSIONS
    assert "nat_processed" not in NetworkObserved().model_dump(mode="json")
    assert "nat_processed" not in HeartbeatResponse().model_dump(mode="json")
    obs = NetworkObserved(nat_processed=[NatProcessed(nat_gateway_id=NG, bytes=5)])
    assert obs.model_dump(mode="json")["nat_processed"] == [{"nat_gateway_id": NG, "bytes": 5}]
    assert HeartbeatResponse(nat_processed=True).model_dump(mode="json")["nat_processed"] is True
    with pytest.raises(ValueError):
        NatProcessed(nat_gateway_id=NG, bytes=-1)


def test_heartbeat_sends_counters_only_after_the_controller_asked(tmp_path) -> None:
    import httpx

    from agent.contract.v1 import HostInfo
    from agent.heartbeat import Heartbeat
    from agent.settings import AgentSettings

    sent: list[dict] = []
    answer = {"interval": 1.0}

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=answer)

    settings = AgentSettings(state_dir=tmp_path, controller_url="http://controller")
    info = HostInfo(host_id="h1", agent_url="http://h1", hypervisor="qemu", architecture="x86_64",
                    vcpus=1, memory_mib=1, disk_bytes=1, extensions=list(EXTENSIONS))
    reads: list[int] = []

    def counters():
        reads.append(1)
        return [NatProcessed(nat_gateway_id=NG, bytes=42)]

    hb = Heartbeat(settings, host=lambda: info, instances=lambda: [],
                   network=lambda: NetworkObserved(generation=1), nat_processed=counters)
    hb._client = httpx.Client(base_url="http://controller", transport=httpx.MockTransport(handler))
    hb.send_once()  # an old controller's answer (no nat_processed): never send them
    hb.send_once()
    assert all("nat_processed" not in b["network"] for b in sent) and not reads
    answer["nat_processed"] = True
    hb.send_once()  # this answer asks; the next heartbeat carries them
    hb.send_once()
    assert "nat_processed" not in sent[2]["network"]
    assert sent[3]["network"]["nat_processed"] == [{"nat_gateway_id": NG, "bytes": 42}]
    hb._client.close()


def test_network_service_reports_its_local_gateways_counters(tmp_path) -> None:
    from agent.drivers.fake import FakeDataplane
    from tests.unit.test_network_service import service, spec

    dp = FakeDataplane()
    svc = service(tmp_path, dp)
    assert svc.nat_processed() == []  # no spec yet
    svc.accept(spec(1))
    svc.run_once()
    dp.nat_bytes = {"nat-0000000000000001": 1234, "nat-0000000000000009": 5}  # 9: not here
    assert svc.nat_processed() == [NatProcessed(nat_gateway_id="nat-0000000000000001", bytes=1234)]
    # The gateway on another host: nothing reported by this one.
    elsewhere = spec(2, nat_gateway={"nat_gateway_id": "nat-0000000000000001", "subnet_id":
                                     "subnet-00000000000000001", "private_ip": "10.0.1.5",
                                     "public_ip": "203.0.113.5", "host_underlay_ip": "172.31.0.12"})
    svc.accept(elsewhere)
    assert svc.nat_processed() == []

"""A fake-driver agent (KUMO_AGENT_DRIVER=fake) takes its network through what production does:
the NetworkService converts the accepted NetworkSpec (agent.network.wire.host_network,
agent.network.firewall_sync.host_firewall), FakeDataplane renders the HostNetwork with
production's agent.network.desired.host_records and FakeFirewall the HostFirewall with
agent.firewall.render.render. Before, the fakes only stored the models, so a functional test
saw bridges (and "ready" NICs) derived by the fake's own rule, never what production renders."""
from __future__ import annotations

from ipaddress import IPv4Address

from agent.contract.v1 import NetworkSpec
from agent.drivers.fake import FakeDataplane
from agent.firewall.render import render
from agent.libvirt.names import tap_name
from agent.network.desired import host_records
from agent.network.records import HOST, Link, Master, NftTable
from agent.network.wire import host_network
from tests.functional.agent_harness import wait_for
from tests.functional.test_agent_network_api import UNDERLAY, agent_app
from tests.unit.test_network_firewall_sync import sg_doc
from tests.unit.test_network_service import I1


def _applied(client, generation: int) -> None:
    wait_for(lambda: client.get("/v1/network").json()["applied_generation"] == generation)


def test_fake_dataplane_holds_what_production_renders(tmp_path):
    dp = FakeDataplane()
    doc = sg_doc(1)
    with agent_app(tmp_path, dataplane=dp) as client:
        assert client.put("/v1/network", json=doc).status_code == 200
        _applied(client, 1)
        # Production's Dataplane would want exactly these records for this document.
        want = host_records(host_network(NetworkSpec.model_validate(doc), IPv4Address(UNDERLAY),
                                         "uplink0"), dp.host_tag)
        assert dp.records == want
        assert Link(HOST, "kb-00002a", "bridge") in dp.records
        assert Master(HOST, tap_name(I1, 0), "kb-00002a") in dp.records
        assert any(isinstance(r, NftTable) and r.ns == f"{dp.host_tag}-kvr-00002a"
                   for r in dp.records)  # the VPC's NAT table, rendered
        assert dp.bridges() == {"kb-00002a"} and dp.link_up("kb-00002a")
        fw = client.app_.state.network.firewall
        assert fw.rendered is not None and fw.rendered == render(fw.last)
        # An empty document: nothing rendered, no bridge left "up".
        assert client.put("/v1/network", json={"generation": 2, "vpcs": []}).status_code == 200
        _applied(client, 2)
        assert dp.records == host_records(dp.last, dp.host_tag) and not dp.link_up("kb-00002a")


def test_missing_taps_fail_the_rendered_bridge_port_records(tmp_path):
    dp = FakeDataplane()
    tap = tap_name(I1, 0)
    dp.missing_taps = {tap}
    with agent_app(tmp_path, dataplane=dp, network_resync_interval=0.2) as client:
        client.put("/v1/network", json=sg_doc(1))
        obs = wait_for(lambda: (o := client.get("/v1/network").json())["failed"] and o)
        assert obs["error"]["code"] == "WaitingForTaps" and obs["applied_generation"] == 0
    result = dp.ensure(dp.last)
    assert [rec for rec, _ in result.failed] == [Master(HOST, tap, "kb-00002a")]
    assert all(rec in dp.records for rec, _ in result.failed)

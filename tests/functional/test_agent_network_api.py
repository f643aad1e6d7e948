"""The agent's VPC network API (extension vpc-network) on fake drivers: PUT/GET /v1/network with
its generation rules and errors, the heartbeat carrying NetworkObserved and underlay_ip (and
being kicked when it changes), a restarted agent re-applying the persisted spec, and an
instance whose NIC joins a VPC bridge waiting for the network spec; security groups (extension
security-groups): invalid rules answered 400 with the firewall's code and nothing changed, and the
FakeFirewall recording the HostFirewall the agent derived."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from agent.app import create_app
from agent.drivers.fake import FakeDataplane, FakeHypervisor, FakeStorage
from tests.functional.agent_harness import AUTH, make_spec, settings_for, wait_for
from tests.unit.test_network_firewall_sync import SG1, SG2, sg_doc
from tests.unit.test_network_service import I1, spec_doc

UNDERLAY = "172.31.0.11"


class Controller:
    """A loopback HTTP server recording heartbeats."""

    def __init__(self):
        self.beats: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.beats.append(json.loads(body))
                out = json.dumps({"interval": 30}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def agent_app(tmp_path, dataplane=None, hv=None, storage=None, **over):
    over.setdefault("underlay_ip", UNDERLAY)
    settings = settings_for(tmp_path, **over)
    dataplane = dataplane if dataplane is not None else FakeDataplane()
    hv = hv or FakeHypervisor()
    storage = storage or FakeStorage(tmp_path)
    app = create_app(settings, hv, storage, dataplane=dataplane)
    with TestClient(app, headers=AUTH) as client:
        client.dp, client.hv, client.app_ = dataplane, hv, app
        yield client


@pytest.fixture
def agent(tmp_path):
    with agent_app(tmp_path) as client:
        yield client


def net(client) -> dict:
    r = client.get("/v1/network")
    assert r.status_code == 200, r.text
    return r.json()


def test_put_get_network(agent):
    assert net(agent) == {"generation": 0, "applied_generation": 0, "failed": 0,
                          "applied_at": None, "error": None,
                          "subsystems": [{"name": n, "ok": True, "error": None,
                                          "applied_generation": 0}
                                         for n in ("firewall", "dataplane")]}
    r = agent.put("/v1/network", json=spec_doc(1))
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == 1
    obs = wait_for(lambda: (o := net(agent))["applied_generation"] == 1 and o)
    assert obs["failed"] == 0 and obs["error"] is None and obs["applied_at"] > 0
    assert [(x["name"], x["ok"], x["applied_generation"]) for x in obs["subsystems"]] == [
        ("firewall", True, 1), ("dataplane", True, 1)]
    host = agent.dp.last
    assert str(host.underlay_ip) == UNDERLAY and host.underlay_dev == "uplink0"
    assert [v.vni for v in host.vpcs] == [0x2A] and len(host.vpcs[0].ports) == 2
    # Replacing the spec: an empty one removes every VPC.
    assert agent.put("/v1/network", json={"generation": 2, "vpcs": []}).status_code == 200
    wait_for(lambda: net(agent)["applied_generation"] == 2)
    assert agent.dp.last.vpcs == ()


def test_generation_errors(agent):
    assert agent.put("/v1/network", json=spec_doc(3)).status_code == 200
    r = agent.put("/v1/network", json=spec_doc(2))
    assert r.status_code == 409
    assert r.json()["error"] == {"code": "StaleGeneration", "retryable": False,
                                 "message": r.json()["error"]["message"]}
    r = agent.put("/v1/network", json=spec_doc(3, internet=False))
    assert r.status_code == 409 and r.json()["error"]["code"] == "IdempotentParameterMismatch"
    r = agent.put("/v1/network", json=spec_doc(3))  # an identical re-send
    assert r.status_code == 200 and r.json()["generation"] == 3


@pytest.mark.parametrize("body", [
    {"generation": 0, "vpcs": []},
    {"vpcs": []},
    spec_doc(1) | {"extra": 1},
    spec_doc(1, vni=0),
    spec_doc(1, cidr="10.0.0.0/30"),  # valid on the wire, impossible for the dataplane
])
def test_invalid_specs_answer_400(agent, body):
    r = agent.put("/v1/network", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "InvalidParameterValue"
    assert net(agent)["generation"] == 0


def test_network_api_needs_the_token(agent):
    for method in ("GET", "PUT"):
        r = agent.request(method, "/v1/network", headers={"Authorization": "Bearer nope"},
                          json=spec_doc(1) if method == "PUT" else None)
        assert r.status_code == 401
    assert net(agent)["generation"] == 0


def test_host_info_has_underlay(agent):
    host = agent.get("/v1/host").json()
    assert host["underlay_ip"] == UNDERLAY and "vpc-network" in host["extensions"]


def test_fake_underlay_default_is_derived_from_host_id(tmp_path):
    with agent_app(tmp_path, underlay_ip=None) as client:
        ip = client.get("/v1/host").json()["underlay_ip"]
        assert ip.startswith("192.0.2.")
    with agent_app(tmp_path, underlay_ip=None) as client:
        assert client.get("/v1/host").json()["underlay_ip"] == ip


def test_without_vpc_dataplane(tmp_path):
    settings = settings_for(tmp_path, network="none")
    with TestClient(create_app(settings, FakeHypervisor(), FakeStorage(tmp_path)),
                    headers=AUTH) as client:
        r = client.put("/v1/network", json=spec_doc(1))
        assert r.status_code == 501 and r.json()["error"]["code"] == "UnsupportedOperation"
        assert client.get("/v1/network").status_code == 501
        host = client.get("/v1/host").json()
        assert host["underlay_ip"] is None and "vpc-network" not in host["extensions"]


def test_heartbeat_carries_network_and_is_kicked(tmp_path):
    ctl = Controller()
    try:
        # A 30 s heartbeat interval: any heartbeat after the first one is a kick.
        with agent_app(tmp_path, controller_url=ctl.url, heartbeat_interval=30) as client:
            first = wait_for(lambda: ctl.beats and ctl.beats[0])
            assert first["host"]["underlay_ip"] == UNDERLAY
            assert first["network"]["generation"] == 0
            assert client.put("/v1/network", json=spec_doc(1)).status_code == 200
            beat = wait_for(lambda: next((b for b in ctl.beats
                                          if b["network"]["applied_generation"] == 1), None))
            assert beat["network"]["generation"] == 1 and beat["network"]["failed"] == 0
    finally:
        ctl.close()


def test_missing_taps_show_in_observed(tmp_path):
    dp = FakeDataplane()
    from agent.libvirt.names import tap_name
    dp.missing_taps = {tap_name(I1, 0)}
    with agent_app(tmp_path, dataplane=dp, network_resync_interval=0.2) as client:
        client.put("/v1/network", json=spec_doc(1))
        obs = wait_for(lambda: (o := net(client))["failed"] and o)
        assert obs["applied_generation"] == 0 and obs["error"]["code"] == "WaitingForTaps"
        dp.missing_taps.clear()  # libvirt created the tap: the next resync picks it up
        wait_for(lambda: net(client)["applied_generation"] == 1)
        assert net(client)["error"] is None


def test_restart_reapplies_the_persisted_spec(tmp_path):
    with agent_app(tmp_path) as client:
        client.put("/v1/network", json=spec_doc(5))
        wait_for(lambda: net(client)["applied_generation"] == 5)
        before = client.dp.last
    fresh = FakeDataplane()
    with agent_app(tmp_path, dataplane=fresh) as client:
        assert net(client)["generation"] == 5
        wait_for(lambda: net(client)["applied_generation"] == 5)
        assert fresh.last == before  # rebuilt from the agent's own state, no controller
        assert client.put("/v1/network", json=spec_doc(4)).status_code == 409


def test_instance_nic_on_a_vpc_bridge_waits_for_the_network(tmp_path):
    nic = {"mac": "52:54:00:00:00:01", "bridge": "kb-00002a", "address": "10.0.1.10/24",
           "gateway": "10.0.1.1"}
    ispec = make_spec(1, instance_id=I1, nics=[nic])
    with agent_app(tmp_path, network="vpc", max_backoff=0.2) as client:
        assert client.put(f"/v1/instances/{I1}", json=ispec).status_code == 200
        err = wait_for(lambda: client.get(f"/v1/instances/{I1}").json()["error"])
        assert err["code"] == "NetworkNotReady" and err["retryable"]
        assert client.hv.domains == {}  # no domain before its bridge exists
        client.put("/v1/network", json=spec_doc(1))
        wait_for(lambda: client.get(f"/v1/instances/{I1}").json()["power"] == "running",
                 timeout=10)
        assert client.hv.domains[I1].plan.nics[0].bridge == "kb-00002a"


def test_security_groups_reach_the_firewall(agent):
    fw = agent.app_.state.network.firewall
    assert agent.put("/v1/network", json=sg_doc(1)).status_code == 200
    wait_for(lambda: net(agent)["applied_generation"] == 1)
    assert fw.last is not None and fw.calls[0] == "setup"
    assert [p.group_ids for p in fw.last.ports] == [(SG1,), (SG1, SG2)]  # no groups: left out
    assert fw.last.tap_prefix == "tap"
    # Adding a rule: the next pass updates the firewall.
    doc = sg_doc(2)
    doc["security_groups"][1]["rules"] = [{"rule_id": "sgr-00000000000000009",
                                           "direction": "ingress", "protocol": "udp",
                                           "from_port": 53, "to_port": 53, "cidr": "10.0.0.0/16"}]
    assert agent.put("/v1/network", json=doc).status_code == 200
    wait_for(lambda: net(agent)["applied_generation"] == 2)
    assert len(fw.last.groups[SG2].rules) == 1 and "update" in fw.calls


@pytest.mark.parametrize("mutate,code", [
    (lambda d: d.update(security_groups=[]), "InvalidGroup.NotFound"),
    (lambda d: d["security_groups"][0]["rules"].append(
        {"rule_id": "sgr-00000000000000009", "direction": "ingress", "protocol": "tcp",
         "from_port": 90, "to_port": 80, "cidr": "0.0.0.0/0"}), "InvalidPermission.Malformed"),
    (lambda d: d["security_groups"][0]["rules"].append(
        d["security_groups"][0]["rules"][0]), "InvalidPermission.Duplicate"),
    (lambda d: d["security_groups"][0].update(zone=7), "InvalidGroup.NotFound"),
    (lambda d: d["security_groups"][0]["rules"].append(  # schema level (pydantic)
        {"rule_id": "sgr-00000000000000009", "direction": "ingress", "protocol": "gre",
         "cidr": "0.0.0.0/0"}), "InvalidParameterValue"),
    (lambda d: d["security_groups"][0]["rules"].append(
        {"rule_id": "sgr-00000000000000009", "direction": "ingress", "protocol": "all",
         "cidr": "10.0.0.0/8; flush ruleset"}), "InvalidParameterValue"),
])
def test_invalid_security_groups_answer_400_and_change_nothing(agent, mutate, code):
    assert agent.put("/v1/network", json=sg_doc(1)).status_code == 200
    wait_for(lambda: net(agent)["applied_generation"] == 1)
    before = agent.app_.state.network.firewall.last
    doc = sg_doc(2)
    mutate(doc)
    r = agent.put("/v1/network", json=doc)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code and not r.json()["error"]["retryable"]
    assert net(agent)["generation"] == 1
    assert agent.app_.state.network.spec().generation == 1
    assert agent.app_.state.network.firewall.last == before


def test_firewall_failure_in_observed(tmp_path):
    with agent_app(tmp_path, network_resync_interval=0.2) as client:
        fw = client.app_.state.network.firewall
        fw.fail(times=2)
        client.put("/v1/network", json=sg_doc(1))
        obs = wait_for(lambda: (o := net(client))["error"] and o)
        assert obs["error"]["code"] == "FirewallApplyFailed" and obs["error"]["retryable"]
        assert obs["applied_generation"] == 0 and client.dp.last is not None  # dataplane ran
        wait_for(lambda: net(client)["applied_generation"] == 1)
        assert net(client)["error"] is None


def test_firewall_can_be_turned_off(tmp_path):
    with agent_app(tmp_path, firewall=False) as client:
        assert client.app_.state.network.firewall is None
        assert client.put("/v1/network", json=sg_doc(1)).status_code == 200
        wait_for(lambda: net(client)["applied_generation"] == 1)


def test_the_agent_starts_and_stops_its_loops_off_the_event_loop(tmp_path, monkeypatch):
    """Starting the dataplane reads netlink, and pyroute2's synchronous IPRoute runs an asyncio
    loop of its own: inside uvicorn's running loop it fails ("This event loop is already
    running") and the first heartbeat went without the underlay. So the lifespan runs every
    start and stop in a worker thread."""
    import asyncio

    from agent.network.service import NetworkService
    seen: dict[str, bool] = {}

    def in_loop_thread() -> bool:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    for name in ("start", "stop"):
        original = getattr(NetworkService, name)

        def spy(self, *a, _name=name, _original=original, **kw):
            seen[_name] = in_loop_thread()
            return _original(self, *a, **kw)
        monkeypatch.setattr(NetworkService, name, spy)
    with agent_app(tmp_path, dataplane=FakeDataplane()):
        pass
    assert seen == {"start": False, "stop": False}

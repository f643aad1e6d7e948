"""The real agent app (on fake drivers) behind the real controller app: the wire contract end
to end. The controller's agent client talks to the agent app in process; heartbeats are sent by
hand from the agent's own host info and observed state."""
from __future__ import annotations

import time
from contextlib import ExitStack

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.app import create_app as create_agent_app
from agent.contract.v1 import HeartbeatRequest
from agent.drivers.fake import FakeHypervisor, FakeNetwork, FakeStorage
from agent.heartbeat import host_info
from agent.settings import AgentSettings

fake_agent = pytest.importorskip("tests.functional.fake_agent")


class RealAgent:
    """One host: the agent app over fake drivers, its API client and test handles."""

    def __init__(self, tmp_path, host_id: str, stack: ExitStack):
        self.settings = AgentSettings(
            host_id=host_id, state_dir=tmp_path / host_id, token=fake_agent.AGENT_TOKEN, auth="token",
            driver="fake", advertise_url=f"http://{host_id}.test:8788", resync_interval=0.05,
            shutdown_timeout=0.1, max_backoff=0.3)
        self.url = self.settings.agent_url()
        self.hv = FakeHypervisor()
        self.app = create_agent_app(self.settings, self.hv, FakeStorage(self.settings.state_dir),
                                    FakeNetwork())
        self.client = stack.enter_context(TestClient(
            self.app, headers={"Authorization": f"Bearer {fake_agent.AGENT_TOKEN}"}))

    @property
    def specs(self):
        return self.app.state.store.specs()

    def observed(self, iid):
        return self.app.state.reconciler.observed(iid)

    def heartbeat_request(self) -> HeartbeatRequest:
        return HeartbeatRequest(host=host_info(self.settings, self.hv),
                                instances=self.app.state.reconciler.observed_all(),
                                sent_at=time.time())


class RealCloud(fake_agent.Cloud):
    def __init__(self, tmp_path):
        self.stack = ExitStack()
        super().__init__(tmp_path)

    def _http(self, url, token, timeout) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return TestClient(self.agents[url].app, base_url=url, headers=headers)

    def add_host(self, host_id: str, **capacity) -> RealAgent:
        agent = RealAgent(self.tmp, host_id, self.stack)
        self.agents[agent.url] = agent
        self.heartbeat(agent)
        return agent

    def close(self):
        super().close()
        self.stack.close()


def wait_for(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (v := fn()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return v


@pytest.fixture
def cloud(tmp_path):
    c = RealCloud(tmp_path)
    c.image()
    yield c
    c.close()


def test_launch_ready_stop_start_reboot_terminate(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    r = cloud.run(user)
    assert r.status_code == 201, r.text
    iid = r.json()["instances"][0]["instance_id"]
    assert cloud.tick()["pushed"] == 1
    assert agent.specs[iid].generation == 1
    wait_for(lambda: agent.observed(iid).power == "running")
    cloud.heartbeat()
    assert cloud.instance(user, iid)["state"] == "running"
    assert cloud.instance(user, iid)["instance_status"] == "initializing"
    agent.hv.write_console(iid, f"KUMO-READY instance-id={iid}")
    wait_for(lambda: agent.observed(iid).booted)
    cloud.heartbeat()
    assert cloud.instance(user, iid)["instance_status"] == "ok"
    assert cloud.tick()["pushed"] == 0  # the agent acknowledged the generation
    console = user.get(f"/v1/instances/{iid}/console").json()
    assert "KUMO-READY" in console["output"]

    assert user.post(f"/v1/instances/{iid}/stop").status_code == 200
    cloud.tick()
    wait_for(lambda: agent.observed(iid).power == "shutoff")
    cloud.converge()
    assert cloud.instance(user, iid)["state"] == "stopped"

    assert user.post(f"/v1/instances/{iid}/start").status_code == 200
    cloud.tick()
    wait_for(lambda: agent.observed(iid).power == "running")
    cloud.converge()
    assert cloud.instance(user, iid)["state"] == "running"

    agent.hv.boot_lines[iid] = ["KUMO-READY"]
    boots = agent.observed(iid).boot_count
    assert user.post(f"/v1/instances/{iid}/reboot").status_code == 200
    cloud.tick()
    wait_for(lambda: agent.observed(iid).boot_count == boots + 1 and agent.observed(iid).booted)
    cloud.converge()
    assert cloud.instance(user, iid)["instance_status"] == "ok"

    assert user.post(f"/v1/instances/{iid}/terminate").status_code == 200
    cloud.tick()
    assert iid not in agent.specs and iid not in agent.hv.domains
    cloud.converge()
    assert cloud.instance(user, iid)["state"] == "terminated"


def test_guest_poweroff_is_reported_and_the_controller_agrees(cloud):
    agent = cloud.add_host("host-1")
    user = cloud.account("alice")
    iid = cloud.run(user).json()["instances"][0]["instance_id"]
    cloud.tick()
    wait_for(lambda: agent.observed(iid).power == "running")
    cloud.heartbeat()
    assert cloud.instance(user, iid)["state"] == "running"
    agent.hv.crash(iid, power="shutoff")
    wait_for(lambda: agent.observed(iid).power == "shutoff")
    cloud.heartbeat()
    assert cloud.instance(user, iid)["state"] == "stopped"
    cloud.converge()
    time.sleep(0.2)
    assert agent.hv.calls.count(("start", iid)) == 1  # never restarted behind anyone's back

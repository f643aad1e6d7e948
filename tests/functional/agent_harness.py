"""Shared harness for the agent's functional tests: a spec factory, an agent app on fake drivers
served through TestClient, a polling helper and the instance API calls the tests make."""
from __future__ import annotations

import base64
import time
from contextlib import contextmanager

from fastapi.testclient import TestClient

from agent.app import create_app
from agent.drivers.fake import FakeHypervisor, FakeNetwork, FakeStorage
from agent.settings import AgentSettings

TOKEN = "agent-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_spec(n: int = 1, **over) -> dict:
    spec = {
        "instance_id": f"i-{n:017x}", "generation": 1, "power": "running",
        "vcpus": 1, "memory_mib": 128, "root_disk_bytes": 2 << 30,
        "image": {"image_id": f"ami-{n:017x}", "url": "file:///nonexistent/img.qcow2",
                  "sha256": "ab" * 32, "virtual_size": 1 << 30, "ready_marker": "KUMO-READY"},
        "hostname": f"web-{n}", "user_data_b64": base64.b64encode(b"#cloud-config\n").decode(),
        "ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nza test@kumo"],
        "nics": [{"mac": f"52:54:00:00:00:{n:02x}", "bridge": "br-sub1",
                  "address": f"10.0.0.{10 + n}/24", "gateway": "10.0.0.1"}],
    }
    spec.update(over)
    return spec


def settings_for(tmp_path, **over) -> AgentSettings:
    kw = dict(host_id="test-host", state_dir=tmp_path, token=TOKEN, auth="token", driver="fake",
              resync_interval=0.05, heartbeat_interval=0.2, shutdown_timeout=0.1, max_backoff=0.3)
    kw.update(over)
    return AgentSettings(**kw)


@contextmanager
def running_agent(tmp_path, hv=None, storage=None, network=None, **over):
    """An agent app on fake drivers (pass the same drivers again to simulate an agent restart)."""
    hv = hv or FakeHypervisor()
    storage = storage or FakeStorage(tmp_path)
    network = network or FakeNetwork()
    app = create_app(settings_for(tmp_path, **over), hv, storage, network)
    with TestClient(app, headers=AUTH) as client:
        client.hv, client.storage, client.network, client.app_ = hv, storage, network, app
        yield client


def wait_for(fn, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(0.02)


def obs(client, iid) -> dict:
    return client.get(f"/v1/instances/{iid}").json()


def put(client, spec) -> dict:
    r = client.put(f"/v1/instances/{spec['instance_id']}", json=spec)
    assert r.status_code == 200, r.text
    return r.json()


def until(client, iid, **want) -> dict:
    """Wait until the instance's observed state has every field of `want`; return it."""
    def check():
        o = obs(client, iid)
        return o if all(o.get(k) == v for k, v in want.items()) else None
    return wait_for(check)

"""End to end over real processes: `python -m controller` and `python -m agent` (fake drivers),
talking over unix sockets only, as in the lab. Checks registration by heartbeat, a launch pushed
by the reconciler, stop and terminate, the event log, and that both exit cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.contract import transport

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _wait(pred, timeout=20.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def procs(tmp_path):
    started: list[subprocess.Popen] = []

    def start(env: dict, module: str, log: Path) -> subprocess.Popen:
        full = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
        full.update(env)
        p = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=full,
                             stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_controller_and_agent_processes(tmp_path, procs):
    ctl_sock = tmp_path / "controller.sock"
    agent_sock = tmp_path / "agent.sock"
    image = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    ctl = procs({"KUMO_STATE_DIR": str(tmp_path / "ctl"), "KUMO_LISTEN": "127.0.0.1:0",
                 "KUMO_AGENT_SOCKET": str(ctl_sock), "KUMO_AGENT_TOKEN": "secret", "KUMO_AGENT_AUTH": "token",
                 "KUMO_RECONCILE_INTERVAL_S": "0.2"}, "controller", tmp_path / "ctl.log")
    _wait(ctl_sock.exists, what="controller socket")
    agent = procs({"KUMO_AGENT_HOST_ID": "host-1", "KUMO_AGENT_STATE_DIR": str(tmp_path / "agent"),
                   "KUMO_AGENT_LISTEN": f"unix:{agent_sock}",
                   "KUMO_AGENT_CONTROLLER_URL": f"unix:{ctl_sock}",
                   "KUMO_AGENT_TOKEN": "secret", "KUMO_AGENT_AUTH": "token", "KUMO_AGENT_DRIVER": "fake",
                   "KUMO_AGENT_HEARTBEAT_INTERVAL": "0.3"}, "agent", tmp_path / "agent.log")
    key = (tmp_path / "ctl" / "admin.key").read_text().strip()
    assert oct((tmp_path / "ctl" / "admin.key").stat().st_mode & 0o777) == "0o600"
    with transport.client(f"unix:{ctl_sock}", key) as api:
        hosts = _wait(lambda: api.get("/v1/hosts").json()["items"], what="host registration")
        assert hosts[0]["host_id"] == "host-1" and hosts[0]["state"] == "up"
        r = api.post("/v1/images", json={"name": "kumo-tiny", "path": str(image),
                                         "public": True, "ready_marker": "KUMO-READY"})
        assert r.status_code == 201, r.text
        r = api.post("/v1/instances", json={"image": "kumo-tiny", "instance_type": "t3.nano"})
        assert r.status_code == 201, r.text
        iid = r.json()["instances"][0]["instance_id"]
        _wait(lambda: api.get(f"/v1/instances/{iid}").json()["state"] == "running",
              what="running")
        assert api.post(f"/v1/instances/{iid}/stop").status_code == 200
        _wait(lambda: api.get(f"/v1/instances/{iid}").json()["state"] == "stopped",
              what="stopped")
        assert api.post(f"/v1/instances/{iid}/terminate").status_code == 200
        _wait(lambda: api.get(f"/v1/instances/{iid}").json()["state"] == "terminated",
              what="terminated")
        events = api.get("/v1/events", params={"resource_id": iid,
                                               "resource_type": "instance"}).json()["items"]
        assert [e["to_state"] for e in events] == ["pending", "running", "stopping", "stopped",
                                                   "shutting-down", "terminated"]
    for p in (agent, ctl):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    assert not ctl_sock.exists()

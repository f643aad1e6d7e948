"""Heartbeats reach the controller with host facts and observed instances, carry the agent
token, and a controller that is down does not stop the agent (it retries)."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fastapi.testclient import TestClient

from agent.app import create_app
from agent.contract.v1 import HeartbeatRequest
from agent.drivers.fake import FakeHypervisor, FakeNetwork, FakeStorage
from agent.settings import AgentSettings


class _Controller:
    """A loopback HTTP server that records heartbeats."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.headers.get("Authorization"), json.loads(body)))
                out = json.dumps({"interval": 0.3}).encode() if self.path == \
                    "/v1/agent/heartbeat" else b"{}"
                self.send_response(200 if self.path == "/v1/agent/heartbeat" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def wait_for(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (v := fn()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec():
    return {"instance_id": "i-00000000000000001", "generation": 1, "power": "running",
            "vcpus": 1, "memory_mib": 128, "root_disk_bytes": 1 << 30, "hostname": "web",
            "user_data_b64": base64.b64encode(b"").decode(),
            "image": {"image_id": "ami-0000000000000000a", "url": "file:///x",
                      "sha256": "a" * 64, "virtual_size": 1 << 30}}


def _agent(tmp_path, url):
    s = AgentSettings(host_id="hb-host", state_dir=tmp_path, token="tok", auth="token", driver="fake",
                      controller_url=url, heartbeat_interval=0.3, resync_interval=0.05)
    return create_app(s, FakeHypervisor(), FakeStorage(tmp_path), FakeNetwork())


def test_heartbeats_carry_host_and_instances(tmp_path):
    with _Controller() as ctl:
        app = _agent(tmp_path, ctl.url)
        with TestClient(app, headers={"Authorization": "Bearer tok"}) as c:
            wait_for(lambda: ctl.received)
            auth, first = ctl.received[0]
            assert auth == "Bearer tok"
            hb = HeartbeatRequest.model_validate(first)
            assert hb.host.host_id == "hb-host" and hb.host.hypervisor == "qemu"
            assert hb.host.memory_mib > 0 and hb.host.vcpus >= 1 and hb.host.disk_bytes > 0
            assert c.put("/v1/instances/i-00000000000000001", json=_spec()).status_code == 200
            # A state change is reported without waiting for the next tick.
            hb = wait_for(lambda: next((HeartbeatRequest.model_validate(b) for _, b in
                                        reversed(ctl.received)
                                        if b["instances"] and
                                        b["instances"][0]["power"] == "running"), None))
            assert hb.instances[0].instance_id == "i-00000000000000001"
            # The periodic beat continues at the configured interval (0.3 s): two more arrive,
            # and no more than the interval allows (a loaded machine may only delay them).
            n, t0 = len(ctl.received), time.monotonic()
            wait_for(lambda: len(ctl.received) - n >= 2)
            assert len(ctl.received) - n <= (time.monotonic() - t0) / 0.3 + 2


def test_controller_down_is_retried_and_the_agent_keeps_working(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    app = _agent(tmp_path, url)
    with TestClient(app, headers={"Authorization": "Bearer tok"}) as c:
        hb = app.state.heartbeat
        wait_for(lambda: hb.failures >= 2)
        assert c.put("/v1/instances/i-00000000000000001", json=_spec()).status_code == 200
        wait_for(lambda: c.get("/v1/instances/i-00000000000000001").json()["power"] == "running")
        assert hb.sent == 0 and hb.last_error

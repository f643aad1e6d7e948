"""The lab's controller over mutual TLS (docs/security.md) with real agent processes: an agent
joined with a one-time token heartbeats; once its host is removed (certificates revoked) it is
refused and stays removed; an agent whose certificate comes from another CA never gets in.

The extra agents run `python -m agent` with the fake driver and no network (nothing is touched)
inside a lab host namespace, reaching the controller across the fabric (TLS over TCP) as the lab's
agents do; the test's own calls to that listener are made from inside that namespace too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.contract import tls, transport
from agent.contract.v1 import CONTRACT_VERSION
from agent.identity import AgentIdentity, _key_pem, new_key
from controller.services.cloud_ca import CloudCA
from lab import naming as nm
from lab import network, services
from lab.testing import end_process, until
from tests.lab.net_support import admin_api, call

pytestmark = pytest.mark.skipif(services.agent_auth() != "mtls",
                                reason="the lab runs with KUMO_LAB_AGENT_AUTH=token")


def _start_agent(lab, host_id: str, state: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
    env.update({"KUMO_AGENT_HOST_ID": host_id, "KUMO_AGENT_STATE_DIR": str(state),
                "KUMO_AGENT_LISTEN": f"unix:{state / 'agent.sock'}",
                "KUMO_AGENT_CONTROLLER_URL": services.controller_agent_url(),
                "KUMO_AGENT_AUTH": "mtls", "KUMO_AGENT_DRIVER": "fake",
                "KUMO_AGENT_NETWORK": "none", "KUMO_AGENT_METRICS_INTERVAL": "0",
                "KUMO_AGENT_HEARTBEAT_INTERVAL": "0.5", "PYTHONPATH": str(services.REPO_ROOT)})
    log = open(state / "agent.log", "w")
    return subprocess.Popen(["ip", "netns", "exec", nm.host_netns(lab.prefix, "h1"),
                             sys.executable, "-m", "agent"], env=env, cwd=services.REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def _host(api, host_id: str) -> dict | None:
    r = api.get(f"/v1/hosts/{host_id}")
    return r.json() if r.status_code == 200 else None


def test_revoked_agent_is_refused_and_foreign_ca_cannot_connect(lab, tmp_path):
    tmp_path.chmod(0o755)
    ctl_url = services.controller_agent_url()
    h1 = nm.host_netns(lab.prefix, "h1")
    with admin_api(lab) as api:
        # A real agent joined with a one-time token (the production join code).
        state = tmp_path / "hz1"
        tok = call(api, "POST", "/v1/hosts/join-tokens", json={"host_id": "hz1"})
        ident = AgentIdentity(state, "hz1")
        ident.join(lab.url, tok["token"], ca_sha256=tok["ca_sha256"])
        proc = _start_agent(lab, "hz1", state)
        try:
            until(lambda: (_host(api, "hz1") or {}).get("state") == "up", 30, "hz1 up")
            removed = call(api, "DELETE", "/v1/hosts/hz1")
            assert removed["revoked_serials"]
            first = _host(api, "hz1")
            time.sleep(3)  # six heartbeat periods
            after = _host(api, "hz1")
            assert after["state"] == "removed"
            assert after["last_heartbeat"] == first["last_heartbeat"]
            assert proc.poll() is None  # still trying: refused, not crashed
            def heartbeat():
                with transport.client(ctl_url, tls=ident.client) as c:
                    return c.post("/v1/agent/heartbeat", json={"host": {
                        "host_id": "hz1", "agent_url": "unix:/x", "hypervisor": "qemu",
                        "architecture": "x86_64", "vcpus": 1, "memory_mib": 1,
                        "disk_bytes": 1, "contract": CONTRACT_VERSION, "extensions": [],
                        "versions": {}}, "instances": [], "sent_at": time.time()})
            r = network.call_in(h1, heartbeat)
            assert (r.status_code, r.json()["error"]["code"]) == (401, "CertificateRevoked")
        finally:
            end_process(proc)

        # An agent with a certificate from another CA (trusting the real one): the handshake
        # fails, the host never registers.
        state2 = tmp_path / "hz2"
        (state2 / "tls").mkdir(parents=True)
        other, key = CloudCA.generate(), new_key()
        issued = other.sign(key.public_key(), "hz2", tls.host_uri("hz2"))
        (state2 / "tls" / "host.pem").write_bytes(_key_pem(key) + issued.pem)
        (state2 / "tls" / "ca.crt").write_bytes(
            (services.controller_dir(lab.state_dir) / "cloud-ca.crt").read_bytes())
        proc2 = _start_agent(lab, "hz2", state2)
        try:
            time.sleep(4)
            assert proc2.poll() is None
            assert _host(api, "hz2") is None
            log = (state2 / "agent.log").read_text()
            assert "heartbeat to" in log and "failed" in log, log[-2000:]
            forged = tls.client_context(
                (services.controller_dir(lab.state_dir) / "cloud-ca.crt").read_bytes(),
                str(state2 / "tls" / "host.pem"))

            def healthz():
                with transport.client(ctl_url, tls=forged) as c:
                    c.get("/healthz").raise_for_status()
            with pytest.raises(httpx.HTTPError):
                network.call_in(h1, healthz)
        finally:
            end_process(proc2)

        # The lab's own agents are unaffected.
        ups = [h["host_id"] for h in call(api, "GET", "/v1/hosts")["items"]
               if h["state"] == "up"]
        assert {"h1", "h2"} <= set(ups)

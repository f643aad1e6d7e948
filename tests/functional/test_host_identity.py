"""Controller <-> agent mutual TLS (docs/security.md), through the real listeners: the controller
app's agent-facing server (uvicorn over a unix socket, TLS requiring a client certificate) and
an agent app served the same way, with fake agents built from AgentIdentity.

Join (one-time, expiring tokens), heartbeats only for the certificate's own host, removal
revoking a host, forged / expired / missing certificates refused at the handshake, renewal, and
the agent refusing anything but the controller's certificate.
"""
from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from agent.app import create_app as create_agent_app
from agent.contract import tls, transport
from agent.contract.v1 import CONTRACT_VERSION
from agent.identity import AgentIdentity, IdentityError, make_csr, new_key
from agent.settings import AgentSettings
from controller.agents import AgentError
from controller.app import close_app, create_app
from controller.models import HostJoinToken
from controller.services import cloud_ca
from controller.settings import Settings


class _Thread:
    """A uvicorn server for `app` on a unix socket with TLS, in a thread."""

    def __init__(self, app, sock, ctx):
        self.server = uvicorn.Server(uvicorn.Config(app, uds=str(sock), lifespan="off",
                                                    log_level="warning", **tls.uvicorn_tls(ctx)))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()),
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def ctl(tmp_path):
    settings = Settings(state_dir=tmp_path / "controller", reconcile_interval_s=0,
                        agent_auth="mtls", heartbeat_timeout_s=30)
    app = create_app(settings)
    sock = tmp_path / "ctl.sock"
    srv = _Thread(app, sock, app.state.agent_tls.server)
    api = TestClient(app)
    key = (settings.state_dir / "admin.key").read_text().strip()
    api.headers["Authorization"] = f"Bearer {key}"
    yield type("Ctl", (), dict(app=app, api=api, sock=sock, url=f"unix:{sock}",
                                settings=settings, tmp=tmp_path))
    srv.stop()
    close_app(app)


def _join(ctl, host_id: str) -> AgentIdentity:
    tok = ctl.api.post("/v1/hosts/join-tokens", json={"host_id": host_id})
    assert tok.status_code == 201, tok.text
    ident = AgentIdentity(ctl.tmp / host_id, host_id)
    ident.join("unused", tok.json()["token"], ca_sha256=tok.json()["ca_sha256"], http=ctl.api)
    return ident


def _heartbeat(host_id: str) -> dict:
    return {"host": {"host_id": host_id, "agent_url": f"unix:/nonexistent/{host_id}.sock",
                     "hypervisor": "qemu", "architecture": "x86_64", "vcpus": 4,
                     "memory_mib": 4096, "disk_bytes": 10 << 30, "contract": CONTRACT_VERSION,
                     "extensions": [], "versions": {}},
            "instances": [], "sent_at": time.time()}


def _code(resp: httpx.Response) -> str:
    return resp.json()["error"]["code"]


def test_join_then_heartbeat_over_mutual_tls(ctl):
    ident = _join(ctl, "h1")
    cert = ident.certificate()
    assert tls.identity(cert).host_id == "h1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=31)
    assert oct((ident.dir / "host.pem").stat().st_mode & 0o777) == "0o600"
    assert oct((ctl.settings.state_dir / cloud_ca.CA_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    with transport.client(ctl.url, tls=ident.client) as c:
        r = c.post("/v1/agent/heartbeat", json=_heartbeat("h1"))
        assert r.status_code == 200, r.text
    host = ctl.api.get("/v1/hosts/h1").json()
    assert host["state"] == "up"


def test_join_token_is_one_time_and_expires(ctl):
    tok = ctl.api.post("/v1/hosts/join-tokens", json={"host_id": "h1"}).json()["token"]
    csr = make_csr(new_key(), "h1")
    assert ctl.api.post("/v1/agent/join", json={"csr": csr, "join_token": tok}).status_code == 201
    again = ctl.api.post("/v1/agent/join", json={"csr": make_csr(new_key(), "h1"),
                                                 "join_token": tok})
    assert (again.status_code, _code(again)) == (409, "JoinTokenUsed")
    bad = ctl.api.post("/v1/agent/join", json={"csr": csr, "join_token": tok + "x"})
    assert (bad.status_code, _code(bad)) == (401, "JoinTokenInvalid")
    # An expired one.
    tok2 = ctl.api.post("/v1/hosts/join-tokens", json={"host_id": "h2"}).json()
    with ctl.app.state.kumo.db.session() as s:
        row = s.get(HostJoinToken, tok2["token_id"])
        row.expires_at = row.expires_at - timedelta(hours=2)
        s.add(row)
    old = ctl.api.post("/v1/agent/join", json={"csr": make_csr(new_key(), "h2"),
                                               "join_token": tok2["token"]})
    assert (old.status_code, _code(old)) == (401, "JoinTokenExpired")
    # A host id that could not name a certificate or a host is refused, and makes no token.
    for bad_id in ("Bad_Host", "-h", "h" * 64, "h1;rm"):
        r = ctl.api.post("/v1/hosts/join-tokens", json={"host_id": bad_id})
        assert (r.status_code, _code(r)) == (400, "InvalidParameterValue"), (bad_id, r.text)
    # Only the hash is stored; a non-admin cannot make tokens.
    with ctl.app.state.kumo.db.session() as s:
        assert tok2["token"].split(".")[1] not in s.get(HostJoinToken, tok2["token_id"]) \
            .secret_sha256


def test_csr_must_name_the_tokens_host(ctl):
    tok = ctl.api.post("/v1/hosts/join-tokens", json={"host_id": "h1"}).json()["token"]
    r = ctl.api.post("/v1/agent/join", json={"csr": make_csr(new_key(), "h2"), "join_token": tok})
    assert (r.status_code, _code(r)) == (400, "CsrNameMismatch")
    # The refused CSR did not use the token up.
    ok = ctl.api.post("/v1/agent/join", json={"csr": make_csr(new_key(), "h1"), "join_token": tok})
    assert ok.status_code == 201


def test_a_host_cannot_act_as_another(ctl):
    h1, _ = _join(ctl, "h1"), _join(ctl, "h2")
    with transport.client(ctl.url, tls=h1.client) as c:
        r = c.post("/v1/agent/heartbeat", json=_heartbeat("h2"))
        assert (r.status_code, _code(r)) == (403, "HostIdentityMismatch")
        m = c.post("/v1/agent/metrics", json={"host_id": "h2", "samples": [],
                                                 "sent_at": time.time()})
        assert m.status_code == 403
    # The shared-token scheme is not accepted at all in mtls mode.
    r = ctl.api.post("/v1/agent/heartbeat", json=_heartbeat("h1"))
    assert r.status_code == 401


def test_removed_host_is_revoked(ctl):
    h1 = _join(ctl, "h1")
    with transport.client(ctl.url, tls=h1.client) as c:
        assert c.post("/v1/agent/heartbeat", json=_heartbeat("h1")).status_code == 200
    gone = ctl.api.delete("/v1/hosts/h1")
    assert gone.status_code == 200 and gone.json()["revoked_serials"]
    assert ctl.api.get("/v1/hosts/h1").json()["state"] == "removed"
    with transport.client(ctl.url, tls=h1.client) as c:
        r = c.post("/v1/agent/heartbeat", json=_heartbeat("h1"))
        assert (r.status_code, _code(r)) == (401, "CertificateRevoked")
        r = c.post("/v1/agent/certificate", json={"csr": make_csr(new_key(), "h1")})
        assert r.status_code == 401
    assert ctl.api.get("/v1/hosts/h1").json()["state"] == "removed"
    # Joining again with a new token brings it back.
    h1b = _join(ctl, "h1")
    with transport.client(ctl.url, tls=h1b.client) as c:
        assert c.post("/v1/agent/heartbeat", json=_heartbeat("h1")).status_code == 200
    assert ctl.api.get("/v1/hosts/h1").json()["state"] == "up"


def test_forged_expired_and_missing_certificates_fail_the_handshake(ctl):
    h1 = _join(ctl, "h1")
    # Another CA issuing a certificate naming h1.
    other = cloud_ca.CloudCA.generate()
    forged_dir = ctl.tmp / "forged"
    forged_dir.mkdir()
    key = new_key()
    issued = other.sign(key.public_key(), "h1", tls.host_uri("h1"))
    (forged_dir / "host.pem").write_bytes(cloud_ca._key_pem(key) + issued.pem)
    forged = tls.client_context(cloud_ca.load(ctl.settings.state_dir).cert_pem,
                                str(forged_dir / "host.pem"))
    # An expired one from the right CA (recorded, so only expiry refuses it).
    ca = cloud_ca.load(ctl.settings.state_dir)
    key2 = new_key()
    old = ca.sign(key2.public_key(), "h1", tls.host_uri("h1"), days=1,
                  now=tls.utcnow() - timedelta(days=3))
    (forged_dir / "old.pem").write_bytes(cloud_ca._key_pem(key2) + old.pem)
    expired = tls.client_context(ca.cert_pem, str(forged_dir / "old.pem"))
    no_cert = __import__("ssl").create_default_context(cadata=ca.cert_pem.decode())
    no_cert.check_hostname = False
    for ctx in (forged, expired, no_cert):
        with transport.client(ctl.url, tls=ctx) as c:
            with pytest.raises(httpx.HTTPError):
                c.post("/v1/agent/heartbeat", json=_heartbeat("h1")).raise_for_status()
    with transport.client(ctl.url, tls=h1.client) as c:
        assert c.post("/v1/agent/heartbeat", json=_heartbeat("h1")).status_code == 200


def test_rotation_over_the_current_certificate(ctl):
    h1 = _join(ctl, "h1")
    first = h1.certificate()
    assert not h1.renewal_due()
    assert h1.renewal_due(first.not_valid_after_utc - timedelta(days=5))
    with transport.client(ctl.url, tls=h1.client) as c:
        h1.renew(c)
    second = h1.certificate()
    assert second.serial_number != first.serial_number
    assert second.public_key().public_numbers() != first.public_key().public_numbers()
    with transport.client(ctl.url, tls=h1.client) as c:  # the reloaded context
        assert c.post("/v1/agent/heartbeat", json=_heartbeat("h1")).status_code == 200
    # Renewal cannot name another host.
    with transport.client(ctl.url, tls=h1.client) as c:
        r = c.post("/v1/agent/certificate", json={"csr": make_csr(new_key(), "h2")})
        assert (r.status_code, _code(r)) == (400, "CsrNameMismatch")


def test_agent_accepts_only_the_controllers_certificate(ctl, tmp_path):
    h1 = _join(ctl, "h1")
    settings = AgentSettings(host_id="h1", state_dir=tmp_path / "h1", driver="fake",
                             auth="mtls", heartbeat_interval=60)
    agent = create_agent_app(settings)
    assert agent.state.identity.usable()
    sock = tmp_path / "agent.sock"
    srv = _Thread(agent, sock, agent.state.identity.server)
    try:
        pool = ctl.app.state.kumo.pool
        assert pool.for_url(f"unix:{sock}", "h1").get_network() is not None
        # The controller meant h2 but reached h1's agent: refused in the handshake.
        with pytest.raises(AgentError) as e:
            pool.for_url(f"unix:{sock}", "h2").get_network()
        assert "names kumo:host:h1, not kumo:host:h2" in str(e.value)
        # A host's own client talks to the controller only, never to another host's server.
        with transport.client(f"unix:{sock}", tls=h1.client) as c:
            with pytest.raises(httpx.ConnectError, match="not kumo:controller"):
                c.get("/v1/host")
        # And a host's certificate without that check is refused by the agent's server.
        unpinned = tls.client_context(h1.ca_path.read_bytes(), str(h1.pem_path))
        with transport.client(f"unix:{sock}", tls=unpinned) as c:
            r = c.get("/v1/host")
            assert (r.status_code, _code(r)) == (403, "NotController")
    finally:
        srv.stop()


def test_agent_join_errors_are_stable(ctl):
    ident = AgentIdentity(ctl.tmp / "hx", "hx")
    with pytest.raises(IdentityError) as e:
        ident.join("unused", "kjt-0.nothing", http=ctl.api)
    assert e.value.code == "JoinTokenInvalid"
    assert not ident.exists()
    tok = ctl.api.post("/v1/hosts/join-tokens", json={"host_id": "hx"}).json()
    with pytest.raises(IdentityError) as e:  # a pinned CA that is not the controller's
        ident.join("unused", tok["token"], ca_sha256="00" * 32, http=ctl.api)
    assert e.value.code == "CaMismatch"
    assert not ident.exists()

"""The storage node's certificate renewal over real mutual-TLS connections: the real storage
node app (agent/storage_node/app.py over FakeVolumeBackend, as `python -m agent.storage_node`
builds it: uvicorn with tls.uvicorn_tls on a unix socket, its server context from its TLS dir)
and the controller's renewal (controller/storage_cert_renewal.py), by hand and as the leader's
loop of a real controller app.
- A certificate with fewer days left than storage_cert_renew_days is replaced: new handshakes
  present the new one at once (no restart), a connection opened before keeps working, the files
  hold the new pair (key 0600); the next check finds it fresh and does nothing.
- A host's certificate cannot install one over TLS (403 NotController).
- The node as a process (`python -m agent.storage_node`, per-host NBD TLS, loopback): the API
  presents the new certificate at once; an NBD daemon started after the renewal serves it, one
  started before still serves the old one (QEMU reads its credentials once).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from agent.contract import storage_tls, tls, transport
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node.app import create_storage_app
from controller import storage_cert_renewal as renewal
from controller.agent_tls import ControllerTls
from controller.app import close_app, create_app
from controller.services import cloud_ca
from controller.settings import Settings
from lab.testing import end_process, free_port, until

ROOT = Path(__file__).resolve().parents[2]


class _Node:
    """The storage node's app over TLS on a unix socket, in a thread."""

    def __init__(self, tmp_path, days: float):
        self.state, self.dir = tmp_path / "ctl", tmp_path / "sn-tls"
        self.first = cloud_ca.storage_node_files(self.state, "sn1", ["100.64.0.250"],
                                                 self.dir, days=days)
        d = self.dir
        self.ctx = tls.server_context((d / "ca-cert.pem").read_bytes(),
                                      str(d / "server-cert.pem"), str(d / "server-key.pem"))
        app = create_storage_app(FakeVolumeBackend(host="100.64.0.250"), node_id="sn1",
                                 token=None, auth="mtls", tls_dirs=[d], tls_context=self.ctx)
        self.sock = tmp_path / "sn.sock"
        self.url = f"unix:{self.sock}"
        self.server = uvicorn.Server(uvicorn.Config(app, uds=str(self.sock), lifespan="on",
                                                    log_level="warning",
                                                    **tls.uvicorn_tls(self.ctx)))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()),
                                       daemon=True)
        self.thread.start()
        until(lambda: self.server.started, 10, "the node's server", every=0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def node(tmp_path):
    n = _Node(tmp_path, days=20)
    yield n
    n.stop()


def test_renewal_reloads_the_api_and_is_not_repeated(node):
    ctx = ControllerTls(node.state).storage_client
    with transport.client(node.url, None, 10, tls=ctx) as before:
        assert before.get("/v1/storage").status_code == 200  # a connection from before
        out = renewal.check_once(node.url, ctx, node.state, renew_days=30)
        assert out.renewed and out.node_id == "sn1" and out.serial != node.first.serial
        # New handshakes present the new certificate, no restart; the open one still works.
        assert renewal.presented(node.url, ctx).serial_number == out.serial
        assert (out.not_after - node.first.not_after).days > 300
        assert before.get("/v1/storage").status_code == 200
    on_disk = x509.load_pem_x509_certificate((node.dir / "server-cert.pem").read_bytes())
    assert on_disk.serial_number == out.serial
    assert (node.dir / "server-key.pem").stat().st_mode & 0o777 == 0o600
    again = renewal.check_once(node.url, ctx, node.state, renew_days=30)
    assert not again.renewed and again.serial == out.serial


def test_a_hosts_certificate_cannot_install_one(node, tmp_path):
    ca = cloud_ca.load(node.state)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "h1.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
                    + ca.sign(key.public_key(), "h1", tls.host_uri("h1")).pem)
    host_ctx = tls.client_context(ca.cert_pem, str(pem), peer_uri=tls.ANY_STORAGE)
    current = renewal.presented(node.url, host_ctx)
    issued, key_pem = renewal.reissue(node.state, current, renewal.utcnow())
    body = {"certificate_pem": issued.pem.decode(), "key_pem": key_pem}  # a valid one
    with transport.client(node.url, None, 10, tls=host_ctx) as c:
        r = c.put(storage_tls.PATH, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "NotController")
    assert renewal.presented(node.url, host_ctx).serial_number == node.first.serial


def test_the_leader_renews_it(node, tmp_path):
    settings = Settings(state_dir=node.state, storage_url=node.url, storage_mtls=True,
                        reconcile_interval_s=0, storage_cert_check_interval_s=0.2,
                        storage_cert_renew_days=30)
    app = create_app(settings)
    try:
        with TestClient(app):
            until(lambda: x509.load_pem_x509_certificate(
                (node.dir / "server-cert.pem").read_bytes()).serial_number != node.first.serial,
                20, "the leader's renewal", every=0.1)
    finally:
        close_app(app)
    ctx = ControllerTls(node.state).storage_client
    now = renewal.presented(node.url, ctx)
    assert now.serial_number != node.first.serial
    assert not renewal.due(now.not_valid_after_utc, renewal.utcnow(), 30)


def _nbd_server_certificate(port: int, client_ctx: ssl.SSLContext) -> x509.Certificate:
    """The certificate a qemu-storage-daemon's NBD server presents: the NBD newstyle handshake
    up to NBD_OPT_STARTTLS, then TLS with a host's client certificate (loopback only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.read(16) == b"NBDMAGICIHAVEOPT"
        f.read(2)  # handshake flags
        s.sendall(struct.pack(">I", 1))  # NBD_FLAG_C_FIXED_NEWSTYLE
        s.sendall(b"IHAVEOPT" + struct.pack(">II", 5, 0))  # NBD_OPT_STARTTLS, no data
        magic, option, reply, length = struct.unpack(">QIII", f.read(20))
        assert (magic, option, reply, length) == (0x3E889045565A9, 5, 1, 0)  # NBD_REP_ACK
        with client_ctx.wrap_socket(s) as t:
            return x509.load_der_x509_certificate(t.getpeercert(True))


def test_the_node_process_installs_it_and_new_nbd_daemons_serve_it(tmp_path):
    """`python -m agent.storage_node` with per-host NBD TLS: the renewal reaches its API at
    once; the daemon of a host exported before keeps the old certificate, a daemon started
    after serves the new one (docs/security.md: QEMU reads its credentials at start)."""
    state, tls_dir, sock = tmp_path / "ctl", tmp_path / "sn-tls", tmp_path / "sn.sock"
    first = cloud_ca.storage_node_files(state, "sn1", ["127.0.0.1"], tls_dir, days=20)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUMO_")}
    env.update(PYTHONPATH=str(ROOT), KUMO_STORAGE_STATE_DIR=str(tmp_path / "node"),
               KUMO_STORAGE_LISTEN=f"unix:{sock}", KUMO_STORAGE_NBD_HOST="127.0.0.1",
               KUMO_STORAGE_NBD_PORT=str(port), KUMO_STORAGE_NBD_TLS_DIR=str(tls_dir),
               KUMO_STORAGE_API_TLS_DIR=str(tls_dir))
    proc = subprocess.Popen([sys.executable, "-m", "agent.storage_node"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url, ctl_ctx = f"unix:{sock}", ControllerTls(state).storage_client
    ca = cloud_ca.load(state)
    try:
        until(lambda: proc.poll() is not None or sock.exists(), 30, "the node", every=0.05)
        assert proc.poll() is None, proc.stdout.read()

        def export(vid: str, host: str) -> int:
            with transport.client(url, None, 30, tls=ctl_ctx) as c:
                r = c.put(f"/v1/volumes/{vid}", json={"volume_id": vid, "size_bytes": 1 << 20,
                                                       "exported": True, "host": host})
            assert r.status_code == 200, r.text
            return r.json()["source"]["port"]

        def host_ctx(host: str) -> ssl.SSLContext:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = tmp_path / f"{host}.pem"
            pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
                            + ca.sign(key.public_key(), host, tls.host_uri(host)).pem)
            return tls.client_context(ca.cert_pem, str(pem), peer_uri=tls.ANY_STORAGE)

        old_port = export("vol-00000000000000a01", "h1")
        assert _nbd_server_certificate(old_port, host_ctx("h1")).serial_number == first.serial
        out = renewal.check_once(url, ctl_ctx, state, renew_days=30)
        assert out.renewed and out.serial != first.serial
        assert renewal.presented(url, ctl_ctx).serial_number == out.serial  # the API: at once
        new_port = export("vol-00000000000000a02", "h2")  # a daemon started after the renewal
        assert _nbd_server_certificate(new_port, host_ctx("h2")).serial_number == out.serial
        assert _nbd_server_certificate(old_port, host_ctx("h1")).serial_number == first.serial
    finally:
        end_process(proc)
        for pid_file in (tmp_path / "node").glob("hosts/*/qsd.pid"):  # left running on purpose
            with contextlib.suppress(ValueError, ProcessLookupError):
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the daemon's end")

"""The storage node's certificate renewal, the parts without sockets: the controller's decision
and re-issue (controller/storage_cert_renewal.py), and the node's route and checks
(agent/storage_node/app.py PUT /v1/tls/server-certificate, cert_install.py): only the
controller's certificate may install one, and only a certificate from the node's CA, naming
this node, matching its key and ending later; the files are replaced with a 0600 key.
Over real TLS connections: tests/functional/test_storage_cert_renewal.py."""
from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from agent.contract import storage_tls, tls
from agent.drivers.fake_volumes import FakeVolumeBackend
from agent.storage_node.app import create_storage_app
from controller import storage_cert_renewal as renewal
from controller.services import cloud_ca

NOW = datetime(2026, 12, 6, tzinfo=timezone.utc)


def _der(pem_path) -> bytes:
    data = pem_path.read_bytes()
    start = data.index(b"-----BEGIN CERTIFICATE-----")
    return x509.load_pem_x509_certificate(data[start:]).public_bytes(serialization.Encoding.DER)


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def node(tmp_path):
    """A cloud CA, a storage node's TLS dir with a certificate of 20 days, and the node's app
    behind a wrapper that plays the TLS listener (puts a client certificate into the scope)."""
    state, out = tmp_path / "ctl", tmp_path / "sn-tls"
    cloud_ca.storage_node_files(state, "sn1", ["100.64.0.250"], out, days=20)
    app = create_storage_app(FakeVolumeBackend(host="100.64.0.250"), node_id="sn1", token=None,
                             auth="mtls", tls_dirs=[out])
    ca = cloud_ca.load(state)
    host_key = ec.generate_private_key(ec.SECP256R1())
    host = ca.sign(host_key.public_key(), "h1", tls.host_uri("h1"))

    def client(der: bytes | None) -> TestClient:
        async def listener(scope, receive, send):
            if scope["type"] == "http" and der:
                scope[tls.SCOPE_KEY] = der
            await app(scope, receive, send)
        return TestClient(listener)

    controller_der = _der(cloud_ca.controller_certificate(state))
    host_der = host.certificate.public_bytes(serialization.Encoding.DER)
    return type("Node", (), dict(state=state, dir=out, ca=ca, client=client,
                                 controller=controller_der, host=host_der))


def _new(node, days=365, node_id="sn1", ips=("100.64.0.250",), ca=None):
    key = ec.generate_private_key(ec.SECP256R1())
    issued = (ca or node.ca).sign(key.public_key(), f"kumo-storage-{node_id}",
                                  tls.storage_uri(node_id), days, ips=ips)
    return {"certificate_pem": issued.pem.decode(), "key_pem": _key_pem(key)}, issued


def test_due_decision():
    end = NOW + timedelta(days=30)
    assert not renewal.due(end, NOW - timedelta(seconds=1), 30)
    assert renewal.due(end, NOW + timedelta(seconds=1), 30)
    assert renewal.due(end, end + timedelta(days=1), 30)  # expired: renewed too
    assert not renewal.due(NOW + timedelta(days=365), NOW, 30)


def test_reissue_keeps_the_nodes_names_with_a_new_key(tmp_path):
    state = tmp_path / "ctl"
    old = cloud_ca.storage_node_files(state, "sn1", ["100.64.0.250", "fd00::5"], tmp_path / "o")
    issued, key_pem = renewal.reissue(state, old.certificate, NOW)
    cert = issued.certificate
    assert tls.identity(cert).node_id == "sn1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("100.64.0.250"),
                                                       ipaddress.ip_address("fd00::5")]
    assert cert.not_valid_after_utc - NOW == timedelta(days=cloud_ca.STORAGE_CERT_DAYS)
    cert.verify_directly_issued_by(cloud_ca.load(state).cert)
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert key.public_key() == cert.public_key() != old.certificate.public_key()
    host = cloud_ca.load(state).sign(ec.generate_private_key(ec.SECP256R1()).public_key(), "h1",
                                     tls.host_uri("h1"))
    with pytest.raises(renewal.RenewalError) as e:  # never turns a host's into a node's
        renewal.reissue(state, host.certificate, NOW)
    assert e.value.code == "NotStorageNode"


def test_only_the_controller_may_install(node):
    body, _ = _new(node)
    before = (node.dir / "server-cert.pem").read_bytes()
    for der, status, code in ((None, 401, "AuthFailure"), (node.host, 403, "NotController")):
        r = node.client(der).put(storage_tls.PATH, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert (node.dir / "server-cert.pem").read_bytes() == before


def test_install_writes_the_files_and_refuses_wrong_certificates(node, tmp_path):
    api = node.client(node.controller)
    other_ca = cloud_ca.load(tmp_path / "other")
    wrong = {
        "CertificateNameMismatch": _new(node, node_id="sn2")[0],
        "InvalidCertificate": _new(node, ca=other_ca)[0],
        "CertificateNotNewer": _new(node, days=10)[0],
    }
    mismatched = dict(_new(node)[0], key_pem=_new(node)[0]["key_pem"])
    for code, body in [*wrong.items(), ("InvalidCertificate", mismatched),
                       ("InvalidCertificate", {**mismatched, "certificate_pem": "junk"})]:
        r = api.put(storage_tls.PATH, json=body)
        assert r.status_code in (400, 409) and r.json()["error"]["code"] == code, (code, r.text)
    body, issued = _new(node)
    r = api.put(storage_tls.PATH, json=body)
    assert r.status_code == 200, r.text
    got = storage_tls.NodeCertificateInstalled.model_validate(r.json())
    assert got.serial == f"{issued.serial:x}" and got.on_next_start == ["nbd"]
    assert (node.dir / "server-cert.pem").read_text() == body["certificate_pem"]
    assert (node.dir / "server-key.pem").read_text() == body["key_pem"]
    assert (node.dir / "server-key.pem").stat().st_mode & 0o777 == 0o600
    assert api.put(storage_tls.PATH, json=body).status_code == 200  # a retry: a no-op
    assert api.put(storage_tls.PATH, json=wrong["CertificateNotNewer"]).status_code == 409


def test_a_node_without_tls_refuses(node):
    app = create_storage_app(FakeVolumeBackend(), node_id="sn1", token=None, auth="mtls")

    async def listener(scope, receive, send):
        if scope["type"] == "http":
            scope[tls.SCOPE_KEY] = node.controller
        await app(scope, receive, send)
    r = TestClient(listener).put(storage_tls.PATH, json=_new(node)[0])
    assert (r.status_code, r.json()["error"]["code"]) == (409, "TlsNotConfigured")

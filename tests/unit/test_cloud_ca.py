"""The cloud CA (controller/services/cloud_ca.py) and the names in its certificates
(agent/contract/tls.py): files and modes, issuance, CSR checks, expiry, the controller's
certificate and its re-issue, the agent identity's renewal rule."""
from __future__ import annotations

import ssl
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.contract import tls
from agent.identity import AgentIdentity, make_csr, new_key
from controller.errors import InvalidParameter
from controller.services import cloud_ca


def _csr(key, cn: str, uris: list[str] | None = None) -> str:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if uris is not None:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def ca():
    return cloud_ca.CloudCA.generate()


def test_ca_files_are_made_once_with_a_private_key_mode(tmp_path):
    a = cloud_ca.load(tmp_path / "c")
    assert (tmp_path / "c" / cloud_ca.CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert a is cloud_ca.load(tmp_path / "c")
    cloud_ca._cas.clear()  # a new process: loaded from the files, same CA
    b = cloud_ca.load(tmp_path / "c")
    assert b.cert_pem == a.cert_pem
    assert b.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_issue_names_the_host_and_is_short_lived(ca):
    issued = ca.issue_host(make_csr(new_key(), "h1"), "h1")
    ident = tls.identity(issued.certificate)
    assert (ident.kind, ident.host_id, ident.serial) == ("host", "h1", issued.serial)
    life = issued.not_after - issued.not_before
    assert timedelta(days=29) < life <= timedelta(days=cloud_ca.HOST_CERT_DAYS, minutes=5)
    issued.certificate.verify_directly_issued_by(ca.cert)
    # A CSR without SAN is fine too: the certificate is built from the host id.
    assert tls.identity(ca.issue_host(_csr(new_key(), "h1"), "h1").certificate).host_id == "h1"


def test_csr_name_must_match_the_host(ca):
    with pytest.raises(InvalidParameter) as e:
        ca.issue_host(make_csr(new_key(), "h2"), "h1")
    assert e.value.code == "CsrNameMismatch"
    with pytest.raises(InvalidParameter) as e:
        ca.issue_host(_csr(new_key(), "h1", [tls.host_uri("h1"), tls.CONTROLLER_URI]), "h1")
    assert e.value.code == "CsrNameMismatch"
    with pytest.raises(InvalidParameter) as e:
        ca.issue_host(_csr(new_key(), "h1", [tls.host_uri("h2")]), "h1")
    assert e.value.code == "CsrNameMismatch"


def test_csr_key_must_be_the_hosts_own(ca):
    key = new_key()
    fp = cloud_ca.key_fingerprint(key.public_key())
    with pytest.raises(InvalidParameter) as e:  # certified for another host already
        ca.issue_host(make_csr(key, "h1"), "h1", forbidden_keys={fp})
    assert e.value.code == "CsrKeyRejected"
    with pytest.raises(InvalidParameter) as e:  # the CA's own key
        ca.issue_host(make_csr(ca.key, "h1"), "h1")
    assert e.value.code == "CsrKeyRejected"
    with pytest.raises(InvalidParameter) as e:  # too weak
        ca.issue_host(_csr(rsa.generate_private_key(65537, 1024), "h1"), "h1")
    assert e.value.code == "CsrKeyRejected"
    with pytest.raises(InvalidParameter) as e:
        ca.issue_host(_csr(ec.generate_private_key(ec.SECP521R1()), "h1"), "h1")
    assert e.value.code == "CsrKeyRejected"


def test_csr_must_be_signed_by_its_key(ca):
    good = x509.load_pem_x509_csr(make_csr(new_key(), "h1").encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # corrupt the signature
    bad = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidParameter) as e:
        ca.issue_host(bad, "h1")
    assert e.value.code == "CsrInvalid"
    with pytest.raises(InvalidParameter) as e:
        ca.issue_host("not a csr", "h1")
    assert e.value.code == "CsrInvalid"


def test_identity_reads_only_kumo_names(ca):
    c = ca.sign(new_key().public_key(), tls.CONTROLLER_CN, tls.CONTROLLER_URI).certificate
    assert tls.identity(c).kind == "controller"
    # CN and SAN disagreeing: no identity.
    odd = ca.sign(new_key().public_key(), "h2", tls.host_uri("h1")).certificate
    assert tls.identity(odd) is None
    assert tls.identity(ca.cert) is None


def test_controller_certificate_is_reissued_near_expiry(tmp_path):
    path = cloud_ca.controller_certificate(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    first = x509.load_pem_x509_certificate(path.read_bytes())
    assert tls.identity(first).kind == "controller"
    assert cloud_ca.controller_certificate(tmp_path) == path
    assert x509.load_pem_x509_certificate(path.read_bytes()).serial_number == first.serial_number
    later = first.not_valid_after_utc - timedelta(days=5)
    cloud_ca.controller_certificate(tmp_path, now=later)
    second = x509.load_pem_x509_certificate(path.read_bytes())
    assert second.serial_number != first.serial_number
    # Both contexts load it (key + certificate in one file).
    ca_pem = cloud_ca.load(tmp_path).cert_pem
    assert tls.client_context(ca_pem, str(path)).verify_mode == ssl.CERT_REQUIRED
    assert tls.server_context(ca_pem, str(path)).verify_mode == ssl.CERT_REQUIRED


def test_agent_identity_renewal_rule(tmp_path, ca):
    key = new_key()
    issued = ca.issue_host(make_csr(key, "h1"), "h1")
    ident = AgentIdentity(tmp_path, "h1")
    ident._store(key, {"certificate": issued.pem.decode(),
                       "ca_certificate": ca.cert_pem.decode(), "serial": "x"})
    assert ident.usable() and not ident.renewal_due()
    assert ident.renewal_due(issued.not_after - timedelta(days=9))
    assert not ident.usable(issued.not_after + timedelta(seconds=1))
    assert not AgentIdentity(tmp_path, "h2").usable()  # a certificate for another host
    # An answer for another key is refused and changes nothing.
    other = ca.issue_host(make_csr(new_key(), "h1"), "h1")
    with pytest.raises(Exception):
        ident._store(key, {"certificate": other.pem.decode(),
                           "ca_certificate": ca.cert_pem.decode()})
    assert ident.certificate().serial_number == issued.serial

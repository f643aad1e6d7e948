"""The identity document's signatures, checked in Python and with the openssl CLI users run."""
from __future__ import annotations

import base64
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.metadata import tree
from agent.metadata.identity import (IdentitySigner, identity_document, verify_pkcs7_openssl,
                                     verify_signature)
from tests.unit.test_metadata_document import sample

SIGNER = IdentitySigner.generate()
OTHER = IdentitySigner.generate()
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


def served(leaf: str, doc=None) -> bytes:
    answer = tree.resolve(doc or sample(), f"/latest/dynamic/instance-identity/{leaf}", SIGNER)
    assert answer.status == 200
    return answer.body


def test_signature_verifies_and_rejects_changes():
    document, signature = served("document"), served("signature")
    assert document == identity_document(sample())
    assert verify_signature(document, signature, SIGNER.certificate)
    assert not verify_signature(document.replace(b"t3.micro", b"t3.large"), signature,
                                SIGNER.certificate)
    assert not verify_signature(document, signature, OTHER.certificate)
    assert not verify_signature(document, b"not base64 !!", SIGNER.certificate)


def test_served_base64_has_no_armour_and_short_lines():
    for leaf in ("signature", "pkcs7", "rsa2048"):
        body = served(leaf).decode()
        assert "-----" not in body
        assert all(len(line) <= 64 for line in body.split("\n"))
        base64.b64decode(body)


def test_pkcs7_is_detached_without_certificates():
    der = base64.b64decode(served("pkcs7"))
    with pytest.raises(ValueError, match="no certificate"):
        pkcs7.load_der_pkcs7_certificates(der)
    assert b"instanceId" not in der  # detached: the document is not inside


def test_signer_round_trips_through_pem():
    again = IdentitySigner.from_pem(SIGNER.key_pem(), SIGNER.certificate_pem)
    document = identity_document(sample())
    assert verify_signature(document, again.signature(document), SIGNER.certificate)
    with pytest.raises(ValueError):
        IdentitySigner.from_pem(OTHER.key_pem(), SIGNER.certificate_pem)


@needs_openssl
def test_pkcs7_verifies_with_openssl_smime():
    document, p7 = served("document"), served("pkcs7")
    assert verify_pkcs7_openssl(document, p7, SIGNER.certificate_pem)
    assert verify_pkcs7_openssl(document, served("rsa2048"), SIGNER.certificate_pem)
    assert not verify_pkcs7_openssl(document + b" ", p7, SIGNER.certificate_pem)
    assert not verify_pkcs7_openssl(document, p7, OTHER.certificate_pem)


@needs_openssl
def test_pkcs7_verifies_with_openssl_cms(tmp_path):
    document, p7 = served("document"), served("pkcs7")
    (tmp_path / "doc").write_bytes(document)
    (tmp_path / "sig").write_bytes(b"-----BEGIN PKCS7-----\n" + p7 + b"\n-----END PKCS7-----\n")
    (tmp_path / "cert").write_bytes(SIGNER.certificate_pem)
    done = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "PEM", "-in", str(tmp_path / "sig"),
         "-content", str(tmp_path / "doc"), "-certfile", str(tmp_path / "cert"),
         "-noverify", "-binary", "-out", "/dev/null"],
        capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@needs_openssl
def test_signature_verifies_with_openssl_dgst(tmp_path):
    (tmp_path / "doc").write_bytes(served("document"))
    (tmp_path / "sig").write_bytes(base64.b64decode(served("signature")))
    (tmp_path / "cert").write_bytes(SIGNER.certificate_pem)
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(tmp_path / "cert")],
                         capture_output=True, timeout=30, check=True).stdout
    (tmp_path / "pub").write_bytes(pub)
    done = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub"),
                           "-signature", str(tmp_path / "sig"), str(tmp_path / "doc")],
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 0 and b"Verified OK" in done.stdout

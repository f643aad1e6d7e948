"""The signed instance identity document: its JSON, its RSA-SHA256 signature and its PKCS#7.

This module owns `dynamic/instance-identity/{document,signature,pkcs7,rsa2048}`. The cloud
publishes one certificate (IdentitySigner.certificate_pem); a guest (or a service it talks to)
checks that a document came from the cloud with that certificate, as users do on EC2:

    (echo '-----BEGIN PKCS7-----'; curl .../pkcs7; echo; echo '-----END PKCS7-----') > sig.p7
    openssl smime -verify -inform PEM -in sig.p7 -content document -certfile kumo.crt -noverify

Choices, and why:
- The JSON is laid out like EC2's (two-space indent, " : " separators, EC2's key order, nulls for
  the fields Kumo has no notion of), because tools compare it textually and parse it with
  json. It is produced by json.dumps, never by formatting strings.
- The PKCS#7 is detached, DER, SHA-256, without certificates (EC2 ships none: the verifier brings
  the published one) and signed as binary (no MIME CRLF canonicalisation), so the bytes curl
  saves are exactly the bytes signed. It is served base64 in 64-character lines, no PEM armour.
- `rsa2048` serves the same PKCS#7 (on EC2 it is the variant signed with an RSA-2048 key; Kumo's
  only key is RSA).
- Signatures are cached per document: documents change rarely, RSA signing is the costly part.
- Verifying a PKCS#7 is done with the openssl CLI (verify_pkcs7_openssl): `cryptography` signs
  PKCS#7 but does not verify it, and the CLI is what users run anyway.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import tempfile
import textwrap
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from agent.metadata.document import InstanceDocument

#: The identity document's "version" field, as EC2 serves it today.
DOCUMENT_VERSION = "2017-09-30"


def identity_document(doc: InstanceDocument) -> bytes:
    """The instance identity document as EC2 lays it out (UTF-8 JSON)."""
    fields = {
        "accountId": doc.owner_id,
        "architecture": doc.architecture,
        "availabilityZone": doc.availability_zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": doc.ami_id,
        "instanceId": doc.instance_id,
        "instanceType": doc.instance_type,
        "kernelId": None,
        "pendingTime": doc.pending_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privateIp": str(doc.local_ipv4),
        "ramdiskId": None,
        "region": doc.region,
        "version": DOCUMENT_VERSION,
    }
    return json.dumps(fields, indent=2, separators=(",", " : ")).encode()


def _b64_lines(data: bytes) -> bytes:
    return "\n".join(textwrap.wrap(base64.b64encode(data).decode("ascii"), 64)).encode("ascii")


class IdentitySigner:
    """A signing key and the cloud's published self-signed certificate for it."""

    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> None:
        if certificate.public_key().public_numbers() != key.public_key().public_numbers():
            raise ValueError("the certificate does not belong to the key")
        self._key = key
        self._cert = certificate
        # Per-instance caches: bounded so a host with many instances cannot grow them forever.
        self.signature = lru_cache(maxsize=1024)(self._signature)
        self.pkcs7 = lru_cache(maxsize=1024)(self._pkcs7)

    @classmethod
    def generate(cls, common_name: str = "Kumo instance identity", days: int = 3650,
                 key_size: int = 2048) -> "IdentitySigner":
        """A new key and self-signed certificate (deployment set-up, and tests)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @classmethod
    def from_pem(cls, key_pem: bytes, certificate_pem: bytes) -> "IdentitySigner":
        """Load the deployment's key (unencrypted PEM) and certificate."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the identity key must be an RSA key")
        return cls(key, x509.load_pem_x509_certificate(certificate_pem))

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def certificate_pem(self) -> bytes:
        """The certificate to publish (guests verify against it)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (to persist what generate() made)."""
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def _signature(self, document: bytes) -> bytes:
        """`signature`: base64 (64-char lines) of RSA PKCS#1 v1.5 SHA-256 over the document."""
        return _b64_lines(self._key.sign(document, padding.PKCS1v15(), hashes.SHA256()))

    def _pkcs7(self, document: bytes) -> bytes:
        """`pkcs7`: base64 (64-char lines, no armour) of a detached DER PKCS#7 over the document."""
        der = (pkcs7.PKCS7SignatureBuilder()
               .set_data(document)
               .add_signer(self._cert, self._key, hashes.SHA256())
               .sign(serialization.Encoding.DER,
                     [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary,
                      pkcs7.PKCS7Options.NoCerts]))
        return _b64_lines(der)


def verify_signature(document: bytes, signature_b64: bytes | str,
                     certificate: x509.Certificate) -> bool:
    """True when `signature` (as served) is the certificate key's RSA-SHA256 over `document`."""
    try:
        sig = base64.b64decode(signature_b64)
        certificate.public_key().verify(sig, document, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_pkcs7_openssl(document: bytes, pkcs7_b64: bytes | str, certificate_pem: bytes,
                         openssl: str = "openssl") -> bool:
    """Verify a served `pkcs7` the way users do: armour it, `openssl smime -verify -noverify`.

    -noverify skips the certificate *chain* check (the certificate is self-signed and given with
    -certfile); the signature over the document is still checked.
    """
    body = pkcs7_b64.decode("ascii") if isinstance(pkcs7_b64, bytes) else pkcs7_b64
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "sig.p7").write_text(f"-----BEGIN PKCS7-----\n{body.strip()}\n-----END PKCS7-----\n")
        (d / "document").write_bytes(document)
        (d / "cert.pem").write_bytes(certificate_pem)
        done = subprocess.run(
            [openssl, "smime", "-verify", "-inform", "PEM", "-in", str(d / "sig.p7"),
             "-content", str(d / "document"), "-certfile", str(d / "cert.pem"), "-noverify",
             "-out", str(d / "out")],
            capture_output=True, timeout=30, check=False)
        return done.returncode == 0 and (d / "out").read_bytes() == document

"""Installing a renewed server certificate on the storage node (agent/contract/storage_tls.py):
check it, write it into the node's TLS directories, and load it into the API's TLS context.

Checks before anything is written: the PEMs parse, the key is the certificate's, the cloud CA
the node already trusts (its ca-cert.pem) signed it, it names this node (and nothing else of
Kumo's), it is valid now and ends later than the installed one (never a step back; the
installed one again is a no-op).

Writing: server-key.pem (0600 from its first byte) then server-cert.pem, each replaced
atomically (agent/fsutil.py), in every distinct directory (KUMO_STORAGE_API_TLS_DIR and
KUMO_STORAGE_NBD_TLS_DIR, usually one). Between the two renames a reader could see the new key
with the old certificate; the only reader is a qemu-storage-daemon starting in that instant,
which then fails to start and is started again by the ensure loop's next pass.

What serves the new certificate: the API at once (SSLContext.load_cert_chain in place: new
handshakes present it, open connections finish with the old one); the NBD servers when their
daemons next start (QEMU reads tls-creds-x509 once; qemu-storage-daemon 7.2 has no reload, and
restarting a daemon would cut its host's connected disks).
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from agent.contract import tls
from agent.fsutil import atomic_write

CA_FILE, CERT_FILE, KEY_FILE = "ca-cert.pem", "server-cert.pem", "server-key.pem"


@dataclass
class Refused(Exception):
    """Why a certificate is not installed: HTTP status and stable code."""

    status: int
    code: str
    message: str


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def check(dirs: Sequence[Path], node_id: str, cert_pem: str, key_pem: str,
          now: datetime | None = None) -> tuple[x509.Certificate, bool]:
    """The certificate if it may replace the installed one, and whether every directory has it
    already (a retry, or one after a write cut short: then the rest is written); else
    Refused."""
    if not dirs:
        raise Refused(409, "TlsNotConfigured", "this storage node serves no TLS")
    now = now or datetime.now(timezone.utc)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise Refused(400, "InvalidCertificate", f"not a PEM certificate and key: {e}") from None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise Refused(400, "InvalidCertificate", "the key is not the certificate's")
    ca = x509.load_pem_x509_certificate((Path(dirs[0]) / CA_FILE).read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise Refused(400, "InvalidCertificate",
                      "the certificate is not issued by this node's cloud CA") from None
    who = tls.identity(cert)
    if who is None or who.kind != "storage" or who.node_id != node_id:
        raise Refused(400, "CertificateNameMismatch",
                      f"the certificate does not name storage node {node_id}")
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise Refused(400, "InvalidCertificate", "the certificate is not valid now")
    installed = [x509.load_pem_x509_certificate((Path(d) / CERT_FILE).read_bytes())
                 for d in dirs]
    if all(c.serial_number == cert.serial_number for c in installed):
        return cert, True
    if any(c.serial_number != cert.serial_number
           and cert.not_valid_after_utc <= c.not_valid_after_utc for c in installed):
        raise Refused(409, "CertificateNotNewer",
                      "the certificate does not end later than the installed one")
    return cert, False


def install(dirs: Sequence[Path], node_id: str, cert_pem: str, key_pem: str,
            api_context: ssl.SSLContext | None, now: datetime | None = None) -> x509.Certificate:
    """Check, write into every directory of `dirs` and load into `api_context` (the API's
    server context, when it serves TLS from dirs[0]); the installed certificate."""
    cert, same = check(dirs, node_id, cert_pem, key_pem, now)
    if not same:
        for d in dict.fromkeys(Path(p) for p in dirs):  # distinct, in order
            atomic_write(d / KEY_FILE, lambda f: f.write(key_pem.encode()), 0o600)
            atomic_write(d / CERT_FILE, lambda f: f.write(cert_pem.encode()), 0o644)
    if api_context is not None and not same:
        d = Path(dirs[0])
        api_context.load_cert_chain(str(d / CERT_FILE), str(d / KEY_FILE))
    return cert

"""The cloud CA (docs/security.md): the controller's own certificate authority for controller <->
agent mutual TLS, and the controller's certificate from it.

Generated at first use into the controller's state dir, like the metadata identity key
(services/instance_metadata.py) but a separate key: `cloud-ca.key` (mode 0600) and
`cloud-ca.crt` (ECDSA P-256, 10 years); `controller-tls.pem` (0600: key + certificate, CN
`kumo-controller`, SAN URI `kumo:controller`, HOST_CERT_DAYS, re-issued when a third of its
life is left). Several controllers sharing a database must share these files (deploy copies
them; docs/security.md).

`issue_host` signs a host's CSR after `check_csr`: a valid self-signature (the requester holds
the key), a key of an accepted kind that is not the CA's or the controller's, and a subject that
names exactly the expected host (CN = host id; SAN, when present, only `kumo:host:<id>`). The
certificate is built here from the host id, never copied from the CSR.

`storage_node_files` issues a storage node's server certificate (CN `kumo-storage-<node id>`,
SAN URI `kumo:storage:<node id>` and the IP addresses hosts dial its NBD servers on) with a key
made for it, and writes the three files QEMU's tls-creds-x509 reads (docs/security.md
"Storage access").
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.contract import tls as names
from agent.fsutil import write_file
from controller.errors import InvalidParameter

CA_KEY_FILE = "cloud-ca.key"
CA_CERT_FILE = "cloud-ca.crt"
CONTROLLER_FILE = "controller-tls.pem"
CA_DAYS = 3650
#: Lifetime of a host's (and the controller's) certificate; agents renew at a third left.
HOST_CERT_DAYS = 30
_BACKDATE = timedelta(minutes=5)  # clock skew between controller and hosts


def _now() -> datetime:
    return datetime.now(timezone.utc)




def key_fingerprint(public_key) -> str:
    """sha256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    certificate: x509.Certificate
    pem: bytes
    serial: int
    not_before: datetime
    not_after: datetime
    key_sha256: str


class CloudCA:
    """The CA key and certificate; issues host and controller certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.key, self.cert = key, cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    def fingerprint(self) -> str:
        """sha256 (hex) of the CA certificate's DER (what agents may pin: ca_sha256)."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @classmethod
    def generate(cls, now: datetime | None = None) -> "CloudCA":
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kumo"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "Kumo cloud CA")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - _BACKDATE).not_valid_after(now + timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def sign(self, public_key, common_name: str, uri: str, days: float = HOST_CERT_DAYS,
             now: datetime | None = None, ips: tuple = ()) -> Issued:
        """A leaf certificate for `public_key` (client and server auth) naming `uri` (and the
        IP addresses `ips`, for a server dialled by address)."""
        now = now or _now()
        not_before, not_after = now - _BACKDATE, now + timedelta(days=days)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject).public_key(public_key).serial_number(serial)
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                      ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(uri)]
                    + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        return Issued(cert, cert.public_bytes(serialization.Encoding.PEM), serial,
                      not_before, not_after, key_fingerprint(public_key))

    def check_csr(self, csr_pem: str | bytes, host_id: str,
                  forbidden_keys: set[str] = frozenset()) -> x509.CertificateSigningRequest:
        """The CSR, when it may become `host_id`'s certificate; else InvalidParameter with a
        stable code (CsrInvalid, CsrKeyRejected, CsrNameMismatch)."""
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
            signed = csr.is_signature_valid
        except Exception as exc:  # malformed PEM or DER, unknown algorithm
            raise InvalidParameter(f"the CSR cannot be read: {exc}", code="CsrInvalid") from None
        if not signed:
            raise InvalidParameter("the CSR's signature does not match its key",
                                   code="CsrInvalid")
        key = csr.public_key()
        ok = (isinstance(key, ec.EllipticCurvePublicKey)
              and key.curve.name in ("secp256r1", "secp384r1")) or \
             (isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048)
        if not ok:
            raise InvalidParameter("the CSR's key must be ECDSA P-256/P-384 or RSA >= 2048 bits",
                                   code="CsrKeyRejected")
        fp = key_fingerprint(key)
        if fp in forbidden_keys or fp == key_fingerprint(self.key.public_key()):
            raise InvalidParameter("the CSR's key is not this host's own", code="CsrKeyRejected")
        cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [host_id]:
            raise InvalidParameter(f"the CSR must name host {host_id!r} (CN), not {cns}",
                                   code="CsrNameMismatch")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None and list(san) != [x509.UniformResourceIdentifier(
                names.host_uri(host_id))]:
            raise InvalidParameter(f"the CSR's subject alternative names must be only "
                                   f"{names.host_uri(host_id)}", code="CsrNameMismatch")
        return csr

    def issue_host(self, csr_pem: str | bytes, host_id: str,
                   forbidden_keys: set[str] = frozenset(), days: float = HOST_CERT_DAYS,
                   now: datetime | None = None) -> Issued:
        csr = self.check_csr(csr_pem, host_id, forbidden_keys)
        return self.sign(csr.public_key(), host_id, names.host_uri(host_id), days, now)


# -- files ---------------------------------------------------------------------------------

_cas: dict[Path, CloudCA] = {}
_lock = threading.Lock()


def load(state_dir: Path) -> CloudCA:
    """The cloud CA of `state_dir`: loaded, or generated there at first use."""
    state_dir = Path(state_dir).absolute()
    with _lock:
        got = _cas.get(state_dir)
        if got is not None:
            return got
        key_path, cert_path = state_dir / CA_KEY_FILE, state_dir / CA_CERT_FILE
        if key_path.exists() and cert_path.exists():
            got = CloudCA(serialization.load_pem_private_key(key_path.read_bytes(), None),
                          x509.load_pem_x509_certificate(cert_path.read_bytes()))
        else:
            got = CloudCA.generate()
            state_dir.mkdir(parents=True, exist_ok=True)
            write_file(key_path, _key_pem(got.key), 0o600)
            write_file(cert_path, got.cert_pem, 0o644)
        _cas[state_dir] = got
        return got


def controller_certificate(state_dir: Path, now: datetime | None = None) -> Path:
    """`controller-tls.pem` (key + certificate) in state_dir, issued again when missing, not
    from this CA, or with a third of its life left. Returns its path."""
    now = now or _now()
    ca = load(state_dir)
    path = Path(state_dir).absolute() / CONTROLLER_FILE
    with _lock:
        if path.exists():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
                life = cert.not_valid_after_utc - cert.not_valid_before_utc
                if cert.issuer == ca.cert.subject and \
                        cert.not_valid_after_utc - now > life / 3:
                    return path
            except ValueError:
                pass
        key = ec.generate_private_key(ec.SECP256R1())
        issued = ca.sign(key.public_key(), names.CONTROLLER_CN, names.CONTROLLER_URI, now=now)
        write_file(path, _key_pem(key) + issued.pem, 0o600)
        return path


def controller_not_after(path: Path) -> datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


#: Lifetime of a storage node's certificate: issued by an admin, not renewed automatically.
STORAGE_CERT_DAYS = 365
_NODE_ID_RE = r"[a-z0-9][a-z0-9-]{0,62}"


def storage_node_files(state_dir: Path, node_id: str, addresses: list[str], out_dir: Path,
                       days: float = STORAGE_CERT_DAYS, now: datetime | None = None) -> Issued:
    """A new key and a server certificate for storage node `node_id`, reachable at `addresses`
    (IPv4/IPv6 literals), written into `out_dir` as ca-cert.pem, server-cert.pem and
    server-key.pem (0600): what KUMO_STORAGE_NBD_TLS_DIR (and KUMO_STORAGE_API_TLS_DIR) point
    at. identity() calls it kind "storage": no agent or controller takes it as a client."""
    if not re.fullmatch(_NODE_ID_RE, node_id):
        raise InvalidParameter(f"storage node id {node_id!r} is not [a-z0-9-]",
                               code="InvalidParameterValue")
    try:
        ips = tuple(str(ipaddress.ip_address(a)) for a in addresses)
    except ValueError as exc:
        raise InvalidParameter(str(exc), code="InvalidParameterValue") from None
    if not ips:
        raise InvalidParameter("a storage node needs the address hosts dial",
                               code="MissingParameter")
    issued, key_pem = issue_storage_node(state_dir, node_id, ips, days, now)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_file(out_dir / "ca-cert.pem", load(state_dir).cert_pem, 0o644)
    write_file(out_dir / "server-key.pem", key_pem.encode(), 0o600)
    write_file(out_dir / "server-cert.pem", issued.pem, 0o644)
    return issued


def issue_storage_node(state_dir: Path, node_id: str, ips: tuple[str, ...],
                       days: float = STORAGE_CERT_DAYS,
                       now: datetime | None = None) -> tuple[Issued, str]:
    """A new P-256 key and the storage node's server certificate for it (CN
    kumo-storage-<node id>, SAN URI kumo:storage:<node id> and `ips`): (issued, key PEM).
    The first issue (storage_node_files) and every renewal (controller/storage_cert_renewal.py)
    make it here."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = load(state_dir).sign(key.public_key(), f"kumo-storage-{node_id}",
                                  names.storage_uri(node_id), days, now, ips=ips)
    return issued, _key_pem(key).decode()

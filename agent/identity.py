"""This host's identity towards the controller (docs/security.md): a key made here that never
leaves the host, the certificate the cloud CA issued for it, and the CA certificate.

Files under `<state_dir>/tls/`: `host.pem` (mode 0600: key + certificate, replaced atomically
so the pair always matches) and `ca.crt`.

- `join(url, token)`: POST /v1/agent/join on the controller's API with a one-time join token and
  a CSR (CN = host id, SAN URI `kumo:host:<host id>`); the answer's CA is checked against
  `ca_sha256` when one is pinned.
- `renew(client)`: POST /v1/agent/certificate over the current mutual-TLS client with a CSR for a
  new key; done by the heartbeat loop once a third of the certificate's life is left.
- `client` / `server`: one SSL context each, reloaded in place after a renewal (new connections
  present the new certificate).
- `nbd_dir` (`<state_dir>/tls/nbd/`): the same key, certificate and CA as the files QEMU's NBD
  client reads (ca-cert.pem, client-cert.pem, client-key.pem): libvirt's qemu.conf points
  `nbd_tls_x509_cert_dir` there, so this host's QEMUs dial storage nodes with its own
  certificate (docs/security.md "Storage access"). Rewritten with every new certificate, and
  brought up to date when the contexts are first loaded (an identity stored before).
"""
from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
from datetime import datetime, timezone
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.contract import tls, transport
from agent.fsutil import write_file

log = logging.getLogger(__name__)


class IdentityError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key, host_id: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(tls.host_uri(host_id))]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())




def _qemu_gid() -> int | None:
    """The group libvirt runs QEMU with on Debian (libvirt-qemu), when it exists and this
    process may give files to it (root); None otherwise."""
    import grp

    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam("libvirt-qemu").gr_gid
    except KeyError:
        return None


def _error_of(resp: httpx.Response) -> IdentityError:
    try:
        err = resp.json()["error"]
        return IdentityError(err["code"], err["message"])
    except Exception:
        return IdentityError(f"HTTP{resp.status_code}", resp.text[:300])


class AgentIdentity:
    def __init__(self, state_dir: Path, host_id: str):
        self.dir = Path(state_dir) / "tls"
        self.host_id = host_id
        self.pem_path, self.ca_path = self.dir / "host.pem", self.dir / "ca.crt"
        self.nbd_dir = self.dir / "nbd"
        self._client: ssl.SSLContext | None = None
        self._server: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    # -- state -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.pem_path.exists() and self.ca_path.exists()

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem_path.read_bytes())

    def usable(self, now: datetime | None = None) -> bool:
        """A certificate for this host id that has not expired."""
        if not self.exists():
            return False
        try:
            cert = self.certificate()
        except ValueError:
            return False
        ident = tls.identity(cert)
        now = now or datetime.now(timezone.utc)
        return ident is not None and ident.host_id == self.host_id and \
            cert.not_valid_after_utc > now

    def renewal_due(self, now: datetime | None = None) -> bool:
        """True once a third of the certificate's life is left."""
        cert = self.certificate()
        now = now or datetime.now(timezone.utc)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - now <= life / 3

    @property
    def client(self) -> ssl.SSLContext:
        with self._lock:
            if self._client is None:
                self.write_nbd_files()
                # Only the controller: every host's certificate chains to the same CA.
                self._client = tls.client_context(self.ca_path.read_bytes(), str(self.pem_path),
                                                  peer_uri=tls.CONTROLLER_URI)
            return self._client

    @property
    def server(self) -> ssl.SSLContext:
        with self._lock:
            if self._server is None:
                self._server = tls.server_context(self.ca_path.read_bytes(), str(self.pem_path))
            return self._server

    def write_nbd_files(self) -> bool:
        """Copy the identity into nbd_dir in QEMU's names when they differ; True if written."""
        if not self.exists():
            return False
        pem, ca_pem = self.pem_path.read_bytes(), self.ca_path.read_bytes()
        key = serialization.load_pem_private_key(pem, None)
        cert_pem = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.PEM)
        want = {"ca-cert.pem": (ca_pem, 0o644), "client-cert.pem": (cert_pem, 0o644),
                "client-key.pem": (_key_pem(key), 0o600)}
        try:
            same = all((self.nbd_dir / n).read_bytes() == data for n, (data, _) in want.items())
        except OSError:
            same = False
        if same:
            return False
        # QEMU reads them as the user libvirt runs it as: Debian's libvirt-qemu, whose group
        # gets read access (the key 0640, the directory 0750); root and nobody else otherwise.
        gid = _qemu_gid()
        self.nbd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if gid is not None:
            os.chown(self.nbd_dir, -1, gid)
            self.nbd_dir.chmod(0o750)
            self.dir.chmod(0o711)  # QEMU passes through tls/ (no listing; host.pem stays 0600)
        # The key last: QEMU reads the three when it makes a TLS object, and a key that does
        # not match the certificate fails loudly, never silently as another host.
        for name in ("ca-cert.pem", "client-cert.pem", "client-key.pem"):
            data, mode = want[name]
            path = self.nbd_dir / name
            write_file(path, data, mode if gid is None else mode | 0o040)
            if gid is not None:
                os.chown(path, -1, gid)
        return True

    def _store(self, key, answer: dict, ca_sha256: str | None = None) -> None:
        cert_pem, ca_pem = answer["certificate"].encode(), answer["ca_certificate"].encode()
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        if ca_sha256 and hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest() \
                != ca_sha256.lower().replace(":", ""):
            raise IdentityError("CaMismatch", "the controller's CA is not the pinned one")
        ident = tls.identity(cert)
        if ident is None or ident.host_id != self.host_id or \
                cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise IdentityError("CertificateMismatch", "the controller answered a certificate "
                                "that is not for this host and key")
        if self.ca_path.exists() and self.ca_path.read_bytes() != ca_pem and self._client:
            raise IdentityError("CaMismatch", "the controller's CA changed")
        self.pem_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(self.ca_path, ca_pem, 0o644)
        write_file(self.pem_path, _key_pem(key) + cert_pem, 0o600)
        self.write_nbd_files()
        with self._lock:
            for ctx in (self._client, self._server):
                if ctx is not None:
                    ctx.load_cert_chain(str(self.pem_path))
        log.info("certificate %s for host %s, valid until %s", answer.get("serial"),
                 self.host_id, cert.not_valid_after_utc.isoformat())

    # -- the two ways to a certificate ----------------------------------------------------
    def join(self, url: str, token: str, ca_sha256: str | None = None,
             timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        """Exchange a one-time join token at the controller's API `url` (or over `http`) for a
        certificate."""
        key = new_key()
        body = {"csr": make_csr(key, self.host_id), "join_token": token}
        if http is not None:
            resp = http.post("/v1/agent/join", json=body)
        else:
            with transport.client(url, timeout=timeout) as c:
                resp = c.post("/v1/agent/join", json=body)
        if resp.status_code >= 400:
            raise _error_of(resp)
        self._store(key, resp.json(), ca_sha256)

    def renew(self, client: httpx.Client) -> None:
        """A new key and certificate, asked over `client` (mutual TLS with the current one)."""
        key = new_key()
        resp = client.post("/v1/agent/certificate", json={"csr": make_csr(key, self.host_id)})
        if resp.status_code >= 400:
            raise _error_of(resp)
        self._store(key, resp.json())

"""Mutual TLS between the controller and the host agents (docs/security.md): the names in the
cloud CA's certificates, TLS contexts for either side, and how a server learns its peer.

Names (both sides rely on them, so they live in the contract):
- a host's certificate: subject CN = the host id, SAN URI `kumo:host:<host id>`;
- the controller's certificate (its client certificate towards agents and the server
  certificate of its agent-facing listener): CN `kumo-controller`, SAN URI `kumo:controller`.

Hostnames are not checked (`check_hostname` off: agents are reached over unix sockets or
addresses that change); the chain to the cloud CA is (CERT_REQUIRED both ways), each server
checks the peer's SAN URI itself (`identity`), and each client checks that the server is the
peer it meant to reach (`client_context(peer_uri=...)`): the controller for agents, the host
with that id for the controller.

uvicorn does not hand the client certificate to the app, so servers run with `uvicorn_tls()`:
an h11 protocol that puts the peer's DER certificate into the ASGI scope (`peer_certificate`).
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509

HOST_URI_PREFIX = "kumo:host:"
CONTROLLER_URI = "kumo:controller"
CONTROLLER_CN = "kumo-controller"
#: Where the peer's DER certificate is put in the ASGI scope.
SCOPE_KEY = "kumo.peer_cert"


#: A storage node's certificate (docs/security.md "Storage access"): CN `kumo-storage-<node id>`,
#: SAN URI `kumo:storage:<node id>` plus the IP addresses hosts dial (QEMU's NBD client checks
#: the server's name against the address it dials). identity() says kind "storage": it is no
#: host and no controller, so it opens nothing on agents or the controller; the controller's
#: storage client checks the node's API presents it (peer_uri ANY_STORAGE).
STORAGE_URI_PREFIX = "kumo:storage:"
#: client_context(peer_uri=ANY_STORAGE): the server must be a storage node (any node id).
ANY_STORAGE = STORAGE_URI_PREFIX + "*"


def host_uri(host_id: str) -> str:
    return HOST_URI_PREFIX + host_id


def storage_uri(node_id: str) -> str:
    return STORAGE_URI_PREFIX + node_id


def nbd_client_dn(host_id: str) -> str:
    """The distinguished name of a host's certificate as QEMU (GnuTLS) prints it: what a
    storage node's per-host NBD server admits."""
    return f"CN={host_id}"


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: kind "host" (with host_id), "controller" or "storage" (with
    node_id)."""

    kind: str
    host_id: str | None
    serial: int
    not_after: datetime
    node_id: str | None = None

    def uri(self) -> str:
        if self.kind == "controller":
            return CONTROLLER_URI
        if self.kind == "storage":
            return storage_uri(self.node_id or "")
        return host_uri(self.host_id or "")


def identity(cert: x509.Certificate | bytes) -> Identity | None:
    """The Kumo identity a certificate (object or DER) carries, None when it carries none or
    several. The caller has verified the chain (the TLS handshake did)."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("kumo:")]
    if len(uris) != 1:
        return None
    after = cert.not_valid_after_utc
    if uris[0] == CONTROLLER_URI:
        return Identity("controller", None, cert.serial_number, after)
    if uris[0].startswith(STORAGE_URI_PREFIX):
        node_id = uris[0][len(STORAGE_URI_PREFIX):]
        cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        if node_id and cns == ["kumo-storage-" + node_id]:
            return Identity("storage", None, cert.serial_number, after, node_id)
        return None
    if uris[0].startswith(HOST_URI_PREFIX):
        host_id = uris[0][len(HOST_URI_PREFIX):]
        cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        if host_id and cns == [host_id]:
            return Identity("host", host_id, cert.serial_number, after)
    return None


def _context(purpose: ssl.Purpose, ca_pem: bytes, certfile: str,
             keyfile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cadata=ca_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class PeerMismatch(ssl.SSLCertVerificationError):
    """The server's certificate is from the cloud CA but names someone else than expected."""


def _peer_checking_socket(peer_uri: str) -> type[ssl.SSLSocket]:
    class PeerCheckingSocket(ssl.SSLSocket):
        # Checked right after the handshake, before the client sends a byte of its request: a
        # spec (user data, keys) must never reach a host that is not the one it is meant for.
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True)
            who = identity(der) if der else None
            named = None if who is None else who.uri()
            if peer_uri == ANY_STORAGE and who is not None and who.kind == "storage":
                return
            if named != peer_uri:
                raise PeerMismatch(f"the server's certificate names {named or 'no Kumo peer'},"
                                   f" not {peer_uri}")
    return PeerCheckingSocket


def client_context(ca_pem: bytes, certfile: str, keyfile: str | None = None, *,
                   peer_uri: str | None = None) -> ssl.SSLContext:
    """A client context presenting `certfile` (key in it or in `keyfile`) and trusting only the
    cloud CA. Calling load_cert_chain on it again (a renewal) affects new connections.

    `peer_uri` (CONTROLLER_URI, host_uri(id) or ANY_STORAGE): the server must also be that
    peer. Every host
    holds a certificate from the same CA, so the chain alone would let one host answer for
    another (or for the controller) once it gets hold of an address."""
    ctx = _context(ssl.Purpose.SERVER_AUTH, ca_pem, certfile, keyfile)
    if peer_uri is not None:
        ctx.sslsocket_class = _peer_checking_socket(peer_uri)
    return ctx


def server_context(ca_pem: bytes, certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server context requiring a client certificate from the cloud CA (expired or
    foreign ones fail the handshake)."""
    return _context(ssl.Purpose.CLIENT_AUTH, ca_pem, certfile, keyfile)


def peer_certificate(scope: dict) -> bytes | None:
    """The DER client certificate of the connection serving this request (None: no TLS)."""
    return scope.get(SCOPE_KEY)


#: Seconds a TLS server's graceful stop waits for open connections (see uvicorn_tls).
GRACEFUL_SHUTDOWN_S = 3


def controller_refusal(scope: dict, what: str) -> tuple[int, str, str] | None:
    """Why a request on a mutual-TLS listener that only the controller may call is refused
    (status, stable code, message), None when its client certificate is the controller's.
    `what` names the listener's owner in the message ("this agent", "this storage node")."""
    der = peer_certificate(scope)
    if not der:
        return 401, "AuthFailure", "a client certificate is required"
    who = identity(der)
    if who is None or who.kind != "controller":
        return 403, "NotController", f"only the controller's certificate may call {what}"
    return None


def uvicorn_tls(ctx: ssl.SSLContext) -> dict[str, Any]:
    """uvicorn.Config keyword arguments serving TLS with `ctx` and passing the client
    certificate to the app (works for TCP and unix-socket servers alike)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class PeerCertProtocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sslobj = transport.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            inner = self.app

            async def app(scope, receive, send):
                scope[SCOPE_KEY] = der
                await inner(scope, receive, send)
            self.app = app

    # A graceful stop waits for every connection to close. Over TLS an idle keep-alive
    # connection in the peer's pool closes only when the peer answers close_notify, which an
    # idle httpx pool never reads: asyncio then waits its ssl_shutdown_timeout (30 s) per
    # connection, so a SIGTERM'd agent took 30 s to exit. Requests here are short: give them
    # GRACEFUL_SHUTDOWN_S, then cancel.
    return dict(http=PeerCertProtocol, ssl_context_factory=lambda _config, _default: ctx,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)

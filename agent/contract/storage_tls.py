"""The storage node's certificate renewal on the wire (docs/security.md "Storage access"):
the controller, holding the cloud CA, re-issues the node's NBD/API server certificate before it
expires and installs it over the node's mutual-TLS API.

  PUT /v1/tls/server-certificate  <- NodeCertificate -> NodeCertificateInstalled
      only a client presenting the controller's certificate (`kumo:controller`) may call it,
      whatever the node's API auth: none 401 AuthFailure, a host's 403 NotController. The
      certificate must be from the CA the node already trusts (ca-cert.pem; the CA is not
      rotated, so it is not sent), name this node (`kumo:storage:<node id>`, 400
      CertificateNameMismatch), match the key (400 InvalidCertificate), be valid now and end
      later than the one installed (409 CertificateNotNewer; the installed one again answers
      200, so a retry after a lost answer is harmless). A node without TLS directories answers
      409 TlsNotConfigured.

The key travels once, over the mutual-TLS connection to a server the controller checked is a
storage node; the node writes it 0600.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

#: The route (one PUT: the full desired certificate, idempotent).
PATH = "/v1/tls/server-certificate"


class NodeCertificate(BaseModel):
    """What the controller installs on the node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The node's new server certificate, PEM, issued by the cloud CA.
    certificate_pem: str = Field(max_length=16384)
    #: Its private key, PEM (PKCS#8, unencrypted), made by the controller for this renewal.
    key_pem: str = Field(max_length=16384, repr=False)


class NodeCertificateInstalled(BaseModel):
    """What the node now has."""

    model_config = ConfigDict(frozen=True)

    #: The installed certificate's serial, lowercase hex.
    serial: str
    #: When it expires (UTC).
    not_after: datetime
    #: What serves it already: "api" (new TLS handshakes of this API, loaded in place).
    reloaded: list[str]
    #: What picks it up when it next starts: "nbd" (each per-host qemu-storage-daemon reads
    #: its credentials once, at start; QEMU 7.2 cannot reload them live).
    on_next_start: list[str]

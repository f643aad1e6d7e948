"""Host identity (docs/security.md): one-time join tokens (stored hashed) and every certificate
the cloud CA issued to a host, with its revocation. Rules: controller/services/host_identity.py."""
from __future__ import annotations

from datetime import datetime

from pydantic import Field as PField
from sqlmodel import Field, SQLModel

from controller.db import UtcDateTime


class JoinTokenCreate(SQLModel):
    #: The host id the token joins (its certificate will name it).
    # pydantic's own Field: SQLModel's `regex=` is silently ignored under pydantic 2.
    host_id: str = PField(max_length=63, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    #: Seconds the token stays usable (default 1 hour, at most 7 days).
    ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)


class JoinTokenPublic(SQLModel):
    token_id: str
    host_id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


class JoinTokenCreated(JoinTokenPublic):
    #: The secret token, shown once (only its sha256 is stored): `<token_id>.<secret>`.
    token: str
    #: sha256 (hex) of the cloud CA certificate (DER): the agent's KUMO_AGENT_CA_SHA256, so
    #: the join trusts only this controller's CA.
    ca_sha256: str


class HostJoinToken(SQLModel, table=True):
    __tablename__ = "host_join_token"

    token_id: str = Field(primary_key=True, max_length=32)
    host_id: str = Field(max_length=63, index=True)
    #: sha256 (hex) of the secret part.
    secret_sha256: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class HostCertificate(SQLModel, table=True):
    """A certificate issued to a host; an agent request is accepted only when its certificate's
    serial is here, for that host, and not revoked."""
    __tablename__ = "host_certificate"

    #: The certificate's serial number, as lowercase hex.
    serial: str = Field(primary_key=True, max_length=40)
    host_id: str = Field(max_length=63, index=True)
    #: sha256 (hex) of the certificate's public key (a key is never certified for two hosts).
    key_sha256: str = Field(max_length=64, index=True)
    #: "join" or "renew".
    reason: str = Field(max_length=8)
    issued_at: datetime = Field(sa_type=UtcDateTime)
    not_after: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class AgentCertificateRequest(SQLModel):
    """POST /v1/agent/join (with `join_token`) and POST /v1/agent/certificate (renewal over the
    agent's current certificate, no token)."""
    csr: str = Field(max_length=16384)
    join_token: str | None = Field(default=None, max_length=200)


class AgentCertificate(SQLModel):
    host_id: str
    #: PEM of the host's new certificate and of the cloud CA.
    certificate: str
    ca_certificate: str
    serial: str
    not_after: datetime

"""Host identity (docs/security.md): join tokens, certificate issuance and renewal, host removal
with revocation, and the check of every agent request's client certificate.

- `create_join_token`: an admin names the host; the token `<token_id>.<secret>` is answered once
  and only sha256(secret) is stored. Usable once, until it expires.
- `join`: the token + a CSR made with the host's own key -> the host's certificate and the CA.
  A used token: 409 JoinTokenUsed; expired: 401 JoinTokenExpired; unknown or wrong secret:
  401 JoinTokenInvalid. A host that was removed is registered again (state "down" until its
  first heartbeat).
- `renew`: over the agent's current (valid, unrevoked) certificate, a CSR for the same host.
- `remove_host`: revokes every certificate of the host, drops its unused join tokens, marks it
  "removed" (not scheduled, not sent work, heartbeats refused) and its instances host-down.
- `authenticate`: the peer certificate (chain and expiry already checked by TLS) must name a
  host or the controller, be recorded here for that host and not be revoked.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlmodel import Session, select

from agent.contract import tls as names
from controller.db import Database
from controller.errors import AuthFailure, KumoError, NotFound
from controller.events import record
from controller.ids import utcnow
from controller.models import (AgentCertificate, Host, HostCertificate, HostJoinToken, Instance,
                               JoinTokenCreate, JoinTokenCreated)
from controller.services import lifecycle
from controller.services.cloud_ca import CloudCA, Issued

REMOVED = "removed"


class JoinTokenUsed(KumoError):
    code, status = "JoinTokenUsed", 409


class HostIdentityMismatch(KumoError):
    code, status = "HostIdentityMismatch", 403


class HostRemoved(KumoError):
    code, status = "HostRemoved", 403


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_join_token(db: Database, req: JoinTokenCreate, ca: CloudCA) -> JoinTokenCreated:
    now = utcnow()
    token_id, secret = "kjt-" + secrets.token_hex(8), secrets.token_urlsafe(32)
    row = HostJoinToken(token_id=token_id, host_id=req.host_id, secret_sha256=_sha(secret),
                        created_at=now, expires_at=now + timedelta(seconds=req.ttl_s))
    with db.session(notify=False) as s:
        s.add(row)
        record(s, "host", req.host_id, None, None, None, f"join token {token_id} created")
    return JoinTokenCreated(token_id=token_id, host_id=req.host_id, created_at=now,
                            expires_at=row.expires_at, token=f"{token_id}.{secret}",
                            ca_sha256=ca.fingerprint())


def _redeem(s: Session, token: str) -> HostJoinToken:
    token_id, _, secret = token.strip().partition(".")
    row = s.get(HostJoinToken, token_id) if token_id and secret else None
    if row is None or not hmac.compare_digest(row.secret_sha256, _sha(secret)):
        raise AuthFailure("the join token is not valid", code="JoinTokenInvalid")
    if row.used_at is not None:
        raise JoinTokenUsed(f"join token {token_id} was used at {row.used_at.isoformat()}")
    if row.expires_at <= utcnow():
        raise AuthFailure(f"join token {token_id} expired at {row.expires_at.isoformat()}",
                          code="JoinTokenExpired")
    return row


def _other_hosts_keys(s: Session, host_id: str) -> set[str]:
    return set(s.exec(select(HostCertificate.key_sha256).where(
        HostCertificate.host_id != host_id)))


def _record(s: Session, host_id: str, issued: Issued, reason: str) -> HostCertificate:
    row = HostCertificate(serial=format(issued.serial, "x"), host_id=host_id,
                          key_sha256=issued.key_sha256, reason=reason, issued_at=utcnow(),
                          not_after=issued.not_after)
    s.add(row)
    return row


def _answer(ca: CloudCA, host_id: str, issued: Issued) -> AgentCertificate:
    return AgentCertificate(host_id=host_id, certificate=issued.pem.decode(),
                            ca_certificate=ca.cert_pem.decode(),
                            serial=format(issued.serial, "x"), not_after=issued.not_after)


def join(db: Database, ca: CloudCA, token: str | None, csr_pem: str) -> AgentCertificate:
    if not token:
        raise AuthFailure("a join token is required", code="JoinTokenInvalid")
    with db.session(notify=False) as s:
        row = _redeem(s, token)
        issued = ca.issue_host(csr_pem, row.host_id, _other_hosts_keys(s, row.host_id))
        row.used_at = utcnow()
        s.add(row)
        _record(s, row.host_id, issued, "join")
        host = s.get(Host, row.host_id)
        if host is not None and host.state == REMOVED:
            record(s, "host", host.host_id, None, REMOVED, "down", "joined again")
            host.state, host.enabled = "down", True
            s.add(host)
        record(s, "host", row.host_id, None, None, None,
               f"joined with token {row.token_id}: certificate {format(issued.serial, 'x')}")
        return _answer(ca, row.host_id, issued)


def renew(db: Database, ca: CloudCA, host_id: str, csr_pem: str) -> AgentCertificate:
    with db.session(notify=False) as s:
        issued = ca.issue_host(csr_pem, host_id, _other_hosts_keys(s, host_id))
        _record(s, host_id, issued, "renew")
        return _answer(ca, host_id, issued)


def remove_host(db: Database, host_id: str) -> list[str]:
    """Revoke every certificate of `host_id` and mark it removed; the revoked serials."""
    now = utcnow()
    with db.session() as s:
        host = s.get(Host, host_id)
        certs = list(s.exec(select(HostCertificate).where(HostCertificate.host_id == host_id)))
        if host is None and not certs:
            raise NotFound(f"host {host_id} not found", code="InvalidHostID.NotFound")
        revoked = []
        for c in certs:
            if c.revoked_at is None:
                c.revoked_at = now
                s.add(c)
                revoked.append(c.serial)
        for t in s.exec(select(HostJoinToken).where(HostJoinToken.host_id == host_id,
                                                    HostJoinToken.used_at.is_(None))):
            s.delete(t)
        if host is not None and host.state != REMOVED:
            record(s, "host", host_id, None, host.state, REMOVED,
                   f"removed by an admin; {len(revoked)} certificate(s) revoked")
            host.state, host.enabled = REMOVED, False
            s.add(host)
            for inst in s.exec(select(Instance).where(Instance.host_id == host_id,
                                                      Instance.state != "terminated")):
                lifecycle.set_system_status(s, inst, "host-down")
        return revoked


def authenticate(db: Database, der: bytes | None) -> names.Identity:
    """The identity of an agent request's client certificate, or AuthFailure."""
    if not der:
        raise AuthFailure("a client certificate from the cloud CA is required")
    ident = names.identity(der)
    if ident is None or ident.kind != "host":
        raise AuthFailure("the client certificate names no host")
    with db.session(notify=False) as s:
        row = s.get(HostCertificate, format(ident.serial, "x"))
        if row is None or row.host_id != ident.host_id:
            raise AuthFailure("the client certificate was not issued by this cloud",
                              code="CertificateUnknown")
        if row.revoked_at is not None:
            raise AuthFailure(f"certificate {row.serial} of host {row.host_id} is revoked",
                              code="CertificateRevoked")
    return ident


def check_not_removed(db: Database, host_id: str) -> None:
    with db.session(notify=False) as s:
        host = s.get(Host, host_id)
        if host is not None and host.state == REMOVED:
            raise HostRemoved(f"host {host_id} was removed; join it again with a new token")

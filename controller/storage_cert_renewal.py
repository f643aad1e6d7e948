"""Renewing the storage node's server certificate (docs/security.md "Storage access"): the
leader checks, every `storage_cert_check_interval_s`, the certificate the node presents on a
new mutual-TLS connection to its API; once fewer than `storage_cert_renew_days` of it are left
it issues a new key and certificate from the cloud CA (the same node id and IP addresses, 365
days) and installs them over that API (PUT /v1/tls/server-certificate,
agent/contract/storage_tls.py). The node loads the new certificate into its API at once and its
NBD servers when their daemons next start (agent/storage_node/cert_install.py says why).

Why the presented certificate and not a record: it is the truth (an admin may have installed
one by hand with `python -m controller.storage_node_cert`), it survives database restores, and
a fresh connection shows whether the installation took (a pooled one would still show the old).
Only the leader runs it (a loop of the app's start_loops), so two controllers never renew at
once; a renewal both sides lost track of is harmless: the node takes only a certificate that
ends later, and the same one again is a no-op.
"""
from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509

from agent.contract import storage_tls, tls, transport
from controller.ids import utcnow
from controller.periodic import every
from controller.services import cloud_ca
from controller.services.cloud_ca import STORAGE_CERT_DAYS

log = logging.getLogger(__name__)


class RenewalError(Exception):
    """A check or renewal that did not happen (stable code; the next check tries again)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Outcome:
    """One check: `renewed` or not, and the certificate the node presents afterwards."""

    renewed: bool
    node_id: str
    serial: int
    not_after: datetime


def due(not_after: datetime, now: datetime, renew_days: float) -> bool:
    """Whether a certificate ending at `not_after` is renewed at `now`: fewer than
    `renew_days` days left (an expired one too)."""
    return not_after - now < timedelta(days=renew_days)


def presented(url: str, ctx: ssl.SSLContext, timeout: float = 10.0) -> x509.Certificate:
    """The certificate the node's API presents on a new connection (the client context checks
    the chain and that it names a storage node)."""
    try:
        with transport.client(url, None, timeout, tls=ctx) as c:
            resp = c.get("/v1/storage")
            sslobj = resp.extensions["network_stream"].get_extra_info("ssl_object")
            # positional: httpcore may hand the C-level _ssl._SSLSocket (no keywords)
            der = sslobj.getpeercert(True) if sslobj is not None else None
    except httpx.HTTPError as e:
        raise RenewalError("StorageUnreachable", f"{type(e).__name__}: {e}") from e
    if not der:
        raise RenewalError("StorageNotTls", f"{url} does not serve TLS")
    return x509.load_der_x509_certificate(der)


def reissue(state_dir: Path, current: x509.Certificate, now: datetime,
            days: float = STORAGE_CERT_DAYS) -> tuple[cloud_ca.Issued, str]:
    """A new key and certificate from the cloud CA naming what `current` names (the node id,
    its IP addresses); (issued, key PEM)."""
    who = tls.identity(current)
    if who is None or who.kind != "storage":
        raise RenewalError("NotStorageNode", "the certificate does not name a storage node")
    try:
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = tuple(str(ipaddress.ip_address(a)) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        ips = ()
    if not ips:  # hosts dial an address and QEMU checks it against the certificate
        raise RenewalError("NoAddress", "the node's certificate names no IP address")
    return cloud_ca.issue_storage_node(state_dir, who.node_id, ips, days, now)


def check_once(url: str, ctx: ssl.SSLContext, state_dir: Path, renew_days: float, *,
               now: datetime | None = None, timeout: float = 10.0,
               days: float = STORAGE_CERT_DAYS) -> Outcome:
    """Check the node's certificate and renew it when due (see the module docstring)."""
    now = now or utcnow()
    current = presented(url, ctx, timeout)
    who = tls.identity(current)
    if who is None or who.kind != "storage":
        raise RenewalError("NotStorageNode", "the node's certificate does not name a node")
    if not due(current.not_valid_after_utc, now, renew_days):
        return Outcome(False, who.node_id, current.serial_number, current.not_valid_after_utc)
    issued, key_pem = reissue(state_dir, current, now, days)
    body = storage_tls.NodeCertificate(certificate_pem=issued.pem.decode(), key_pem=key_pem)
    try:
        with transport.client(url, None, timeout, tls=ctx) as c:
            resp = c.put(storage_tls.PATH, json=body.model_dump(mode="json"))
    except httpx.HTTPError as e:
        raise RenewalError("StorageUnreachable", f"{type(e).__name__}: {e}") from e
    if resp.status_code != 200:
        try:
            err = resp.json()["error"]
            raise RenewalError(str(err["code"]), str(err["message"]))
        except (ValueError, KeyError, TypeError):
            raise RenewalError(f"HTTP{resp.status_code}", resp.text[:300]) from None
    answer = storage_tls.NodeCertificateInstalled.model_validate(resp.json())
    log.info("storage node %s: certificate %x (until %s) replaced by %s (until %s); API "
             "reloaded, NBD servers take it when they next start", who.node_id,
             current.serial_number, current.not_valid_after_utc, answer.serial,
             answer.not_after)
    after = presented(url, ctx, timeout)
    if after.serial_number != issued.serial:  # installed, but the API did not reload it
        log.warning("storage node %s still presents certificate %x after installing %x",
                    who.node_id, after.serial_number, issued.serial)
    return Outcome(True, who.node_id, after.serial_number, after.not_valid_after_utc)


async def run_forever(url: str, ctx: ssl.SSLContext, state_dir: Path, renew_days: float,
                      interval_s: float, timeout: float = 10.0) -> None:
    """The leader's loop: check_once every `interval_s` (failures logged, retried next time)."""
    await every(interval_s, lambda: check_once(url, ctx, state_dir, renew_days,
                                               timeout=timeout),
                "storage node certificate check")

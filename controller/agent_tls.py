"""The controller's side of controller <-> agent mutual TLS (docs/security.md): one client
context (towards agents) and one server context (its agent-facing listeners), both presenting
`controller-tls.pem` from the cloud CA (controller/services/cloud_ca.py) and trusting only it.

Towards agents, `client_for(host_id)` gives a context per host that also checks the agent's
certificate names that host (a host holds a certificate from the same CA as every other one).
Towards the storage node's API, `storage_client` checks the server is a storage node (SAN
`kumo:storage:<node id>`; docs/security.md "Storage access").

`maybe_refresh()` (called by the agent pool, at most every REFRESH_EVERY_S) re-issues the
controller's certificate when a third of its life is left and loads it into every context in
place: new connections present the new one, open ones finish with the old.
"""
from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

from agent.contract import tls
from controller.services import cloud_ca

REFRESH_EVERY_S = 3600.0


class ControllerTls:
    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        ca = cloud_ca.load(self.state_dir)
        self.ca_pem = ca.cert_pem
        self.path = cloud_ca.controller_certificate(self.state_dir)
        self.client = tls.client_context(self.ca_pem, str(self.path))
        self.server = tls.server_context(self.ca_pem, str(self.path))
        self._per_host: dict[str, ssl.SSLContext] = {}
        self.storage_client = tls.client_context(self.ca_pem, str(self.path),
                                                 peer_uri=tls.ANY_STORAGE)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def client_for(self, host_id: str) -> ssl.SSLContext:
        """The client context for reaching the agent of `host_id` (and no other host)."""
        with self._lock:
            ctx = self._per_host.get(host_id)
            if ctx is None:
                ctx = self._per_host[host_id] = tls.client_context(
                    self.ca_pem, str(self.path), peer_uri=tls.host_uri(host_id))
            return ctx

    def maybe_refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._checked < REFRESH_EVERY_S:
                return
            self._checked = time.monotonic()
            before = self.path.stat().st_mtime_ns
            cloud_ca.controller_certificate(self.state_dir)
            if self.path.stat().st_mtime_ns != before:
                for ctx in (self.client, self.server, self.storage_client,
                            *self._per_host.values()):
                    ctx.load_cert_chain(str(self.path))

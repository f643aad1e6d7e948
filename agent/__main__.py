"""`python -m agent`: run one host agent (HTTP API + reconcile loop + heartbeat) under uvicorn.

Listens on KUMO_AGENT_LISTEN (`unix:/path.sock` or `host:port`), and on the host-local unix
socket KUMO_AGENT_LOCAL_SOCKET too when set, over mutual TLS with the host's
certificate (KUMO_AGENT_AUTH=mtls, the default; a host without one joins first with
KUMO_AGENT_JOIN_TOKEN, docs/security.md). SIGTERM/SIGINT stop the
server; the lifespan stops the loop between steps and leaves every guest as it is.
"""
from __future__ import annotations

import logging
import os
import sys

import httpx

from agent.app import create_app
from agent.identity import AgentIdentity, IdentityError
from agent.serving import serve
from agent.settings import AgentSettings


log = logging.getLogger("agent")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("KUMO_AGENT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AgentSettings()
    if settings.auth == "mtls":
        identity = AgentIdentity(settings.state_dir, settings.host_id)
        if not identity.usable():
            url = settings.join_url or settings.controller_url
            if not (settings.join_token and url):
                log.error("no usable certificate in %s and no KUMO_AGENT_JOIN_TOKEN (with "
                          "KUMO_AGENT_JOIN_URL): cannot serve over mutual TLS", identity.dir)
                return 2
            try:
                identity.join(url, settings.join_token, settings.ca_sha256)
            except (IdentityError, httpx.HTTPError) as e:
                log.error("joining at %s failed: %s", url, e)
                return 2
    app = create_app(settings)
    identity = app.state.identity  # its server context is the one renewals reload
    local = str(settings.local_socket) if settings.local_socket else None
    return serve(app, settings, identity.server if identity is not None else None, local)


if __name__ == "__main__":
    sys.exit(main())

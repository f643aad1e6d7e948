"""`python -m controller`: serve the app on KUMO_LISTEN (or on the inherited listening socket
KUMO_LISTEN_FD) and, when KUMO_AGENT_SOCKET (a unix socket)
or KUMO_AGENT_LISTEN (host:port) is set, the same app there for agents too (TLS with client
certificates when KUMO_AGENT_AUTH is mtls), in one process.

The servers run under agent/contract/serving.py's serve_all, the loop the agent and the storage
node use too: one SIGTERM/SIGINT stops every server gracefully and the process exits 0 (a second
SIGINT forces the exit); its plain signal handlers are the safe kind (see there).
"""
from __future__ import annotations

import logging
import os
import socket
import sys

import uvicorn

from agent.contract import tls
from agent.contract.serving import clear_stale_socket, serve_all
from controller.app import close_app, create_app
from controller.settings import Settings


def serve(settings: Settings) -> int:
    """Build the app, serve it on every configured listener until stopped; the exit status."""
    sock = str(settings.agent_socket) if settings.agent_socket else None
    if sock:
        # Before anything else: a live socket there is another controller's, and this start
        # must neither take it over nor, on its way out, delete it.
        settings.agent_socket.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_socket(sock)
    app = create_app(settings)
    host, port = settings.listen_host_port()
    configs = [uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on")]
    # The API's inherited socket (family and address detected from the descriptor: uvicorn's
    # own fd= would take it for a unix socket).
    sockets = [[socket.socket(fileno=settings.listen_fd)] if settings.listen_fd is not None
               else None]
    # The agent-facing listeners: TLS requiring a client certificate from the cloud CA when
    # agent_auth is "mtls" (docs/security.md); lifespan only on the first server: one
    # reconciler per process.
    agent_kw = dict(log_level="info", lifespan="off")
    if app.state.agent_tls is not None:
        agent_kw.update(tls.uvicorn_tls(app.state.agent_tls.server))
    try:
        if sock:
            configs.append(uvicorn.Config(app, uds=sock, **agent_kw))
        if settings.agent_listen:
            a_host, _, a_port = settings.agent_listen.rpartition(":")
            configs.append(uvicorn.Config(app, host=a_host.strip("[]") or "127.0.0.1",
                                          port=int(a_port), **agent_kw))
        return serve_all(configs, sockets)
    finally:
        close_app(app)
        if sock and os.path.exists(sock):
            os.unlink(sock)


def main() -> None:
    logging.basicConfig(level=os.environ.get("KUMO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(serve(Settings()))


if __name__ == "__main__":
    main()

"""Serving an agent-side ASGI app under uvicorn, the one way the host agent (`python -m agent`)
and the storage node (`python -m agent.storage_node`) listen: on a unix socket or host:port,
optionally with a host-local unix socket next to it serving the same app (one event loop).

A socket file left by a previous process is removed first, but never a live one or a
non-socket (clear_stale_socket, in agent/contract/serving.py); on exit the socket file is removed
(uvicorn leaves it, and a stale socket would only confuse clients). SIGTERM stops the server gracefully (lifespan stop) and exits with status 0.
Several listeners run under agent/contract/serving.py's serve_all, shared with the controller.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Protocol

import uvicorn

from agent.contract.serving import clear_stale_socket, serve_all


class Listen(Protocol):
    """Where to listen (the agent's and the storage node's settings both are one)."""

    def listen_socket(self) -> str | None: ...

    def listen_host_port(self) -> tuple[str, int]: ...


def serve(app, listen: Listen, tls_context=None, local_socket: str | None = None) -> int:
    """Run `app` until SIGTERM/SIGINT on listen's unix socket, or else its host:port; 0.
    `tls_context`: serve TLS with it (client certificates as it requires; the app sees the
    peer's, agent/contract/tls.py). `local_socket`: a unix socket serving the same app the same
    way too (host-local administration next to a TCP listener)."""
    sock = listen.listen_socket()
    common = dict(log_level="info", lifespan="on", access_log=False)
    if tls_context is not None:
        from agent.contract.tls import uvicorn_tls
        common.update(uvicorn_tls(tls_context))
    if sock:
        os.makedirs(os.path.dirname(sock) or "/", exist_ok=True)
        clear_stale_socket(sock)
        config = uvicorn.Config(app, uds=sock, **common)
    else:
        host, port = listen.listen_host_port()
        config = uvicorn.Config(app, host=host, port=port, **common)
    if local_socket:
        os.makedirs(os.path.dirname(local_socket) or "/", exist_ok=True)
        clear_stale_socket(local_socket)
        local = uvicorn.Config(app, uds=local_socket, **{**common, "lifespan": "off"})
        try:
            return serve_all([config, local])
        finally:
            for path in (sock, local_socket):
                if path and os.path.exists(path):
                    os.unlink(path)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM (graceful shutdown, lifespan stop), then re-raises it with the
    # handler that was installed before: make that one a normal exit, so a stop is status 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    finally:
        if sock and os.path.exists(sock):
            os.unlink(sock)  # uvicorn leaves it; a stale socket would only confuse clients
    return 0

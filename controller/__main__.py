"""`python -m controller`: serve the app on KUMO_LISTEN (or on the inherited listening socket
KUMO_LISTEN_FD) and, when KUMO_AGENT_SOCKET (a unix socket)
or KUMO_AGENT_LISTEN (host:port) is set, the same app there for agents too (TLS with client
certificates when KUMO_AGENT_AUTH is mtls), in one process (uvicorn servers under
asyncio.gather).

Signals are handled here, not by each uvicorn server: one SIGTERM/SIGINT stops both servers
gracefully and the process exits 0 (a second SIGINT forces the exit).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

import uvicorn

from agent.contract import tls
from controller.app import close_app, create_app
from controller.settings import Settings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # _serve owns the process's signal handling


async def _serve(settings: Settings) -> None:
    app = create_app(settings)
    host, port = settings.listen_host_port()
    servers = [_Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                      lifespan="on"))]
    # The API's inherited socket (family and address detected from the descriptor).
    api_sockets = [socket.socket(fileno=settings.listen_fd)] if settings.listen_fd is not None \
        else None
    # The agent-facing listeners: TLS requiring a client certificate from the cloud CA when
    # agent_auth is "mtls" (docs/security.md); lifespan only on the first server: one
    # reconciler per process.
    agent_kw = dict(log_level="info", lifespan="off")
    if app.state.agent_tls is not None:
        agent_kw.update(tls.uvicorn_tls(app.state.agent_tls.server))
    sock = str(settings.agent_socket) if settings.agent_socket else None
    if sock:
        settings.agent_socket.parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(sock):
            os.unlink(sock)
        servers.append(_Server(uvicorn.Config(app, uds=sock, **agent_kw)))
    if settings.agent_listen:
        a_host, _, a_port = settings.agent_listen.rpartition(":")
        servers.append(_Server(uvicorn.Config(app, host=a_host.strip("[]") or "127.0.0.1",
                                              port=int(a_port), **agent_kw)))

    def stop(sig: int) -> None:
        for s in servers:
            if s.should_exit and sig == signal.SIGINT:
                s.force_exit = True
            s.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await asyncio.gather(servers[0].serve(sockets=api_sockets),
                             *(s.serve() for s in servers[1:]))
    finally:
        close_app(app)
        if sock and os.path.exists(sock):
            os.unlink(sock)


def main() -> None:
    logging.basicConfig(level=os.environ.get("KUMO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(Settings()))


if __name__ == "__main__":
    main()

"""`python -m controller`: serve the app on KUMO_LISTEN and, when KUMO_AGENT_SOCKET is set, the
same app on that unix socket too, in one process (two uvicorn servers under asyncio.gather).

Signals are handled here, not by each uvicorn server: one SIGTERM/SIGINT stops both servers
gracefully and the process exits 0 (a second SIGINT forces the exit).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import uvicorn

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
    sock = str(settings.agent_socket) if settings.agent_socket else None
    if sock:
        settings.agent_socket.parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(sock):
            os.unlink(sock)
        # Lifespan only on the first server: one reconciler per process.
        servers.append(_Server(uvicorn.Config(app, uds=sock, log_level="info", lifespan="off")))

    def stop(sig: int) -> None:
        for s in servers:
            if s.should_exit and sig == signal.SIGINT:
                s.force_exit = True
            s.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await asyncio.gather(*(s.serve() for s in servers))
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

"""`python -m agent`: run one host agent (HTTP API + reconcile loop + heartbeat) under uvicorn.

Listens on KUMO_AGENT_LISTEN (`unix:/path.sock` or `host:port`). SIGTERM/SIGINT stop the
server; the lifespan stops the loop between steps and leaves every guest as it is.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys

import uvicorn

from agent.app import create_app
from agent.settings import AgentSettings


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous agent, but never a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        s.close()
    raise SystemExit(f"another process is listening on {path}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("KUMO_AGENT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AgentSettings()
    app = create_app(settings)
    sock = settings.listen_socket()
    if sock:
        os.makedirs(os.path.dirname(sock) or "/", exist_ok=True)
        _clear_stale_socket(sock)
        config = uvicorn.Config(app, uds=sock, log_level="info", lifespan="on",
                                access_log=False)
    else:
        host, port = settings.listen_host_port()
        config = uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on",
                                access_log=False)
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


if __name__ == "__main__":
    sys.exit(main())

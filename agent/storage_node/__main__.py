"""`python -m agent.storage_node`: run one storage node (the storage_v1 HTTP API over the NBD
backend, and its ensure loop) under uvicorn. Configuration: agent/storage_node/settings.py.

It runs inside the storage node's own network namespace (the lab starts it with `ip netns exec`),
so the qemu-storage-daemon it supervises is started right here, in the same namespace.

On exit (SIGTERM/SIGINT) the API and the ensure loop stop, but the qemu-storage-daemon is left
running on purpose: hosts' guests hold their volumes open over NBD, and a restart or upgrade of
this control service must not pull disks from under running guests. The next storage node adopts
the daemon by its pid file (agent/supervisor.py) and carries on. Whoever removes the node for good
ends the daemon too: the lab's `down` ends every process in the lab's namespaces, the daemon
included.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys

import uvicorn

from agent.storage_node.app import create_storage_app
from agent.storage_node.backend import NbdBackend
from agent.storage_node.settings import StorageSettings


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous node, but never a live one or a non-socket."""
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
    logging.basicConfig(level=os.environ.get("KUMO_STORAGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = StorageSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # netns None: this process already runs in the node's namespace (see the docstring).
    backend = NbdBackend(settings.state_dir, str(settings.nbd_host), settings.nbd_port,
                         max_size=settings.max_size)
    app = create_storage_app(backend, node_id=settings.node_id, token=settings.token or None,
                             ensure_interval=settings.ensure_interval)
    sock = settings.listen_socket()
    common = dict(log_level="info", lifespan="on", access_log=False)
    if sock:
        os.makedirs(os.path.dirname(sock) or "/", exist_ok=True)
        _clear_stale_socket(sock)
        config = uvicorn.Config(app, uds=sock, **common)
    else:
        host, port = settings.listen_host_port()
        config = uvicorn.Config(app, host=host, port=port, **common)
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

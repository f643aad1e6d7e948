"""`python -m agent.storage_node`: run one storage node (the storage_v1 HTTP API over the NBD or
the RBD backend, KUMO_STORAGE_BACKEND, and its ensure loop) under uvicorn, over mutual TLS with
the node's certificate when KUMO_STORAGE_API_TLS_DIR is set. Configuration:
agent/storage_node/settings.py; the backend is built by backends.py. A configuration hosts could
not use (e.g. RBD with cephx) ends it at once with exit status 2 and the reason in the log.

It runs inside the storage node's own network namespace (the lab starts it with `ip netns exec`),
so the qemu-storage-daemon it supervises is started right here, in the same namespace.

On RBD the Ceph cluster is the serving process: it is neither started nor stopped here.

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
import sys

from agent.contract import tls
from agent.serving import serve
from agent.storage_node.app import create_storage_app
from agent.storage_node.backends import UnsupportedStorageConfig, build_backend
from agent.storage_node.settings import StorageSettings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("KUMO_STORAGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = StorageSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        backend = build_backend(settings)
    except UnsupportedStorageConfig as e:
        logging.getLogger("agent.storage_node").error("not starting: %s", e)
        return 2
    ctx = None
    if settings.api_tls_dir is not None:  # mutual TLS: the controller's certificate only
        d = settings.api_tls_dir
        ctx = tls.server_context((d / "ca-cert.pem").read_bytes(), str(d / "server-cert.pem"),
                                 str(d / "server-key.pem"))
    # Where a renewed certificate goes (PUT /v1/tls/server-certificate), the API's first.
    tls_dirs = [d for d in (settings.api_tls_dir, settings.nbd_tls_dir) if d is not None]
    app = create_storage_app(backend, node_id=settings.node_id, token=settings.token or None,
                             ensure_interval=settings.ensure_interval,
                             auth="token" if ctx is None else "mtls",
                             tls_dirs=tls_dirs, tls_context=ctx)
    local = str(settings.local_socket) if settings.local_socket else None
    return serve(app, settings, tls_context=ctx, local_socket=local)


if __name__ == "__main__":
    sys.exit(main())
